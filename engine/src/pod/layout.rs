//! What lives inside a pod directory: one definition shared by stage0, every stage1
//! and gc, so the contract between them is written down once.

use std::path::{Path, PathBuf};

/// The pod manifest (JSON).
pub const POD_MANIFEST: &str = "pod";
/// Empty file whose mtime is the pod's creation time.
pub const POD_CREATED: &str = "pod-created";
/// Pid of the pod's first process (stage1); its mtime is the pod's start time.
pub const PID: &str = "pid";
/// Pid of the process that waits for the pod (rkt's ppid file).
pub const PPID: &str = "ppid";
/// `{"stage1": NAME, "config": {...}}`: which backend runs this pod, with its config.
pub const STAGE1: &str = "stage1.json";
/// Networks set up for the pod, as recorded by the Networker.
pub const NET_INFO: &str = "net-info.json";
/// When the pod was marked garbage (mtime); gc's grace period counts from here.
pub const GC_MARKED: &str = "gc-marked";

pub fn manifest(pod: &Path) -> PathBuf {
    pod.join(POD_MANIFEST)
}

pub fn appsinfo(pod: &Path, app: &str) -> PathBuf {
    pod.join("appsinfo").join(app)
}

/// The app's image manifest as it was at prepare time.
pub fn app_image_manifest(pod: &Path, app: &str) -> PathBuf {
    appsinfo(pod, app).join("manifest")
}

/// The tree-store entry the app's rootfs is rendered from (overlay lower dir).
pub fn app_tree_id(pod: &Path, app: &str) -> PathBuf {
    appsinfo(pod, app).join("treeStoreID")
}

pub fn stage1_rootfs(pod: &Path) -> PathBuf {
    pod.join("stage1").join("rootfs")
}

pub fn app_dir(pod: &Path, app: &str) -> PathBuf {
    stage1_rootfs(pod).join("opt").join("stage2").join(app)
}

pub fn app_rootfs(pod: &Path, app: &str) -> PathBuf {
    app_dir(pod, app).join("rootfs")
}

/// Overlay upper and work directories of an app (absent with --no-overlay).
pub fn overlay_upper(pod: &Path, app: &str) -> PathBuf {
    pod.join("overlay").join(app).join("upper")
}

pub fn overlay_work(pod: &Path, app: &str) -> PathBuf {
    pod.join("overlay").join(app).join("work")
}

/// Where `kind=empty` volumes live; shared by every app that mounts them.
pub fn empty_volume(pod: &Path, volume: &str) -> PathBuf {
    pod.join("volumes").join(volume)
}

pub fn status_dir(pod: &Path) -> PathBuf {
    stage1_rootfs(pod).join("rkt").join("status")
}

/// The app's exit code in decimal, written by stage1 when the app ends.
pub fn app_status(pod: &Path, app: &str) -> PathBuf {
    status_dir(pod).join(app)
}

/// How an app's rootfs comes to exist at run time, written by stage0 at prepare
/// time to `appsinfo/<app>/rootfs.json` and read by whichever stage1 runs the pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum AppRootfs {
    /// Mount an overlay at `app_rootfs` (inside the pod's own mount namespace):
    /// the tree store's rendered rootfs below, the pod's upper/work dirs on top.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    /// `--no-overlay`: `app_rootfs` already holds a private copy of the tree.
    Copy,
}

pub fn app_rootfs_spec(pod: &Path, app: &str) -> PathBuf {
    appsinfo(pod, app).join("rootfs.json")
}
