//! From a pod manifest and an app's rootfs to a launch plan: the exact argv,
//! environment, credentials, working directory and bind mounts of one app.
//!
//! One definition shared by every stage1 (fly in stage0's child, the stage1 init
//! inside nspawn pods and VMs), so an app starts the same way everywhere.
//!
//! SKELETON: types are fixed; resolution is being filled in.

use std::path::PathBuf;

/// A fully resolved app, ready for a stage1 to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLaunch {
    pub name: String,
    /// argv[0] is the program as the image names it; resolved against PATH at exec.
    pub argv: Vec<String>,
    /// Final environment, in a stable order, with rkt's precedence applied.
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub supplementary_gids: Vec<u32>,
    /// Absolute path inside the app's rootfs.
    pub working_directory: String,
    pub binds: Vec<VolumeBind>,
}

/// A volume bound into the app: `source` on the host, `target` inside the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub volume: String,
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    pub recursive: bool,
}
