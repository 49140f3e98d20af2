//! What lives inside a pod directory: one definition shared by stage0, every stage1
//! and gc, so the contract between them is written down once.

use std::io;
use std::path::{Path, PathBuf};

use crate::schema::{PodManifest, VolumeKind};

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
/// The metadata service's registration socket, while the pod is registered
/// with it: gc unregisters a pod whose `rkt run` was killed before it could.
pub const MDS_REGISTRATION: &str = "mds-registration";
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
    /// the tree store's rendered rootfs below, the pod's `overlay_upper` and
    /// `overlay_work` on top. Those two are never recorded as paths: the pod
    /// directory moves between state directories, the tree store does not.
    Overlay { lower: PathBuf },
    /// `--no-overlay`: `app_rootfs` already holds a private copy of the tree.
    Copy,
}

pub fn app_rootfs_spec(pod: &Path, app: &str) -> PathBuf {
    appsinfo(pod, app).join("rootfs.json")
}

/// Reads an app's `rootfs.json`.
pub fn read_app_rootfs(pod: &Path, app: &str) -> io::Result<AppRootfs> {
    let bytes = std::fs::read(app_rootfs_spec(pod, app))?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Creates the host-side directories a pod's apps mount on or from: each overlay
/// app's mount point and upper/work dirs (as `rootfs.json` says), every empty
/// volume with its mode and owner, and the status directory stage1 reports into. stage0 does this once, at prepare; a stage1
/// only uses what is there, so a pod that moved on is never recreated behind it.
pub fn create_host_dirs(pod: &Path, manifest: &PodManifest) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(status_dir(pod))?;
    for app in &manifest.apps {
        let name = app.name.as_str();
        if let AppRootfs::Overlay { .. } = read_app_rootfs(pod, name)? {
            for dir in [
                app_rootfs(pod, name),
                overlay_upper(pod, name),
                overlay_work(pod, name),
            ] {
                std::fs::create_dir_all(dir)?;
            }
        }
    }
    for volume in manifest.volumes.iter().filter(|v| v.kind == VolumeKind::Empty) {
        let dir = empty_volume(pod, volume.name.as_str());
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(volume.mode_bits()))?;
        std::os::unix::fs::chown(&dir, Some(volume.uid_or_default()), Some(volume.gid_or_default()))?;
    }
    Ok(())
}
