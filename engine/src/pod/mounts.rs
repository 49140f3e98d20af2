//! The host-side mounts that give a pod its files: each app's overlay over its
//! tree and each volume bound where the stage1 expects it.
//!
//! Every stage1 that starts its pod from a private mount namespace (nspawn,
//! kvm) plans them here in the parent, so the forked child before exec only
//! makes system calls, and the mounts die with the pod's last process.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::pod::layout::{self, AppRootfs};
use crate::pod::protocol;
use crate::schema::{PodManifest, Volume, VolumeKind};

#[derive(Debug, thiserror::Error)]
pub enum PodMountError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One mount, computed in the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    pub source: CString,
    pub target: PathBuf,
    pub fstype: Option<&'static str>,
    pub flags: MsFlags,
    pub data: Option<String>,
    /// For error messages.
    pub what: String,
}

impl PlannedMount {
    /// A bind of `source` (a path that may not carry a NUL byte) onto `target`.
    pub fn bind(
        source: &Path,
        target: PathBuf,
        recursive: bool,
        what: String,
    ) -> Result<Self, PodMountError> {
        let source = CString::new(source.as_os_str().as_encoded_bytes())
            .map_err(|_| PodMountError::Invalid(format!("{what}: source contains a NUL byte")))?;
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        Ok(PlannedMount {
            source,
            target,
            fstype: None,
            flags,
            data: None,
            what,
        })
    }

    /// Makes an existing bind at `target` read-only, nosuid and nodev (a bind
    /// takes its flags only from a remount).
    pub fn remount_read_only(target: PathBuf, what: String) -> Self {
        PlannedMount {
            source: c"none".to_owned(),
            target,
            fstype: None,
            flags: MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            data: None,
            what,
        }
    }

    /// Makes the mount; the error names it. Async-signal-safe apart from the
    /// message, which is built only on failure.
    pub fn make(&self) -> Result<(), String> {
        nix::mount::mount(
            Some(self.source.as_c_str()),
            &self.target,
            self.fstype,
            self.flags,
            self.data.as_deref(),
        )
        .or_else(
            |e| match self.data.as_deref().and_then(|d| d.strip_suffix(VOLATILE)) {
                // Kernels before 5.10 do not know `volatile`.
                Some(plain) if e == nix::errno::Errno::EINVAL => nix::mount::mount(
                    Some(self.source.as_c_str()),
                    &self.target,
                    self.fstype,
                    self.flags,
                    Some(plain),
                ),
                _ => Err(e),
            },
        )
        .map_err(|e| format!("mounting {}: {}", self.what, e.desc()))
    }
}

/// Without it, the kernel syncs the whole filesystem under the upper dir (journal
/// commit, disk flush) when the pod's mount namespace goes away, on every pod exit.
/// An upper dir belongs to one run of one pod and is never mounted again, so losing
/// its unwritten pages in a host crash loses nothing rkt needs (fly does the same).
const VOLATILE: &str = ",volatile";

/// Lets the pod's overlays be mounted again after a process whose namespace
/// held them has ended and been waited for (a VM that failed to start, before
/// the pod boots it anew). A volatile overlay leaves `work/incompat/volatile`
/// in its work dir, and overlayfs refuses to mount that upper dir again until
/// it is removed: after a crash the upper dir may miss writes. Here the mount
/// ended with its namespace, nothing of it was lost.
pub fn allow_volatile_remount(pod: &Path, manifest: &PodManifest) -> std::io::Result<()> {
    for app in &manifest.apps {
        let marker = layout::overlay_work(pod, app.name.as_str()).join("work/incompat/volatile");
        if marker.exists() {
            crate::fsutil::remove_tree(&marker)?;
        }
    }
    Ok(())
}

/// The overlay of every app whose rootfs is one, then every volume bound at its
/// pod-side path (`protocol::volume`), in the manifest's order.
pub fn plan_pod_mounts(pod: &Path, manifest: &PodManifest) -> Result<Vec<PlannedMount>, PodMountError> {
    let mut mounts = Vec::new();
    for app in &manifest.apps {
        let name = app.name.as_str();
        let spec = layout::read_app_rootfs(pod, name).map_err(|source| PodMountError::Io {
            context: format!("reading {}", layout::app_rootfs_spec(pod, name).display()),
            source,
        })?;
        if let AppRootfs::Overlay { lower } = spec {
            let mut data = overlay_options(
                &lower,
                &layout::overlay_upper(pod, name),
                &layout::overlay_work(pod, name),
            )?;
            data.push_str(VOLATILE);
            mounts.push(PlannedMount {
                source: c"overlay".into(),
                target: layout::app_rootfs(pod, name),
                fstype: Some("overlay"),
                flags: MsFlags::empty(),
                data: Some(data),
                what: format!("the overlay of app {name:?}"),
            });
        }
    }
    for volume in &manifest.volumes {
        let name = volume.name.as_str();
        let source = match volume.kind {
            VolumeKind::Empty => layout::empty_volume(pod, name),
            VolumeKind::Host => match volume.source.as_deref() {
                Some(s) if !s.is_empty() => PathBuf::from(s),
                _ => {
                    return Err(PodMountError::Invalid(format!(
                        "host volume {name:?} has no source"
                    )));
                }
            },
        };
        let recursive = volume.recursive.unwrap_or(volume.kind == VolumeKind::Host);
        mounts.push(PlannedMount::bind(
            &source,
            protocol::volume(name).on_host(pod),
            recursive,
            format!("volume {name:?}"),
        )?);
    }
    Ok(mounts)
}

/// Creates what each volume is bound over at its pod-side path: an empty file
/// for a host volume whose source is a file, a directory otherwise. A bind
/// mount needs its target to exist and be of the source's kind.
pub fn create_volume_targets(pod: &Path, manifest: &PodManifest) -> Result<(), PodMountError> {
    for volume in &manifest.volumes {
        create_volume_target(pod, volume)?;
    }
    Ok(())
}

/// One volume's pod-side path, as [`create_volume_targets`] makes it.
pub fn create_volume_target(pod: &Path, volume: &Volume) -> Result<(), PodMountError> {
    let target = protocol::volume(volume.name.as_str()).on_host(pod);
    let is_file = volume.kind == VolumeKind::Host
        && volume
            .source
            .as_deref()
            .and_then(|s| std::fs::metadata(s).ok())
            .is_some_and(|m| !m.is_dir());
    let made = if is_file {
        std::fs::write(&target, b"")
    } else {
        std::fs::create_dir_all(&target)
    };
    made.map_err(|source| PodMountError::Io {
        context: format!("creating {}", target.display()),
        source,
    })
}

/// In a forked child: a mount namespace of its own, a recursive slave of the
/// host's so nothing made in it propagates back.
pub fn enter_private_mount_namespace() -> Result<(), String> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {}", e.desc()))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("making / a recursive slave: {}", e.desc()))
}

/// `lowerdir=..,upperdir=..,workdir=..`; refuses paths the option syntax cannot
/// carry unescaped (`,` separates options, `:` lower layers, `\` escapes).
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> Result<String, PodMountError> {
    let mut data = String::with_capacity(64 + lower.as_os_str().len() * 3);
    for (key, path) in [("lowerdir", lower), ("upperdir", upper), ("workdir", work)] {
        let Some(s) = path.to_str().filter(|s| !s.contains([',', ':', '\\'])) else {
            return Err(PodMountError::Invalid(format!(
                "overlay {key} {path:?} contains a character overlayfs options cannot carry (',' ':' '\\' or non-UTF-8)"
            )));
        };
        if !data.is_empty() {
            data.push(',');
        }
        data.push_str(key);
        data.push('=');
        data.push_str(s);
    }
    Ok(data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_refuse_separators() {
        let ok = overlay_options(Path::new("/l"), Path::new("/u"), Path::new("/w")).unwrap();
        assert_eq!(ok, "lowerdir=/l,upperdir=/u,workdir=/w");
        assert!(overlay_options(Path::new("/l,x"), Path::new("/u"), Path::new("/w")).is_err());
        assert!(overlay_options(Path::new("/l"), Path::new("/u:x"), Path::new("/w")).is_err());
        assert!(overlay_options(Path::new("/l"), Path::new("/u"), Path::new("/w\\")).is_err());
    }

    #[test]
    fn binds_refuse_nul_bytes_and_name_the_mount() {
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/a\0b"));
        let err = PlannedMount::bind(bad, "/t".into(), false, "volume \"v\"".into()).unwrap_err();
        assert_eq!(err.to_string(), "volume \"v\": source contains a NUL byte");
        let ok = PlannedMount::bind(Path::new("/a"), "/t".into(), true, "v".into()).unwrap();
        assert_eq!(ok.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }

    #[test]
    fn overlays_are_planned_volatile() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path();
        let manifest: PodManifest = serde_json::from_value(serde_json::json!({
            "acVersion": "0.8.11", "acKind": "PodManifest",
            "apps": [{"name": "a", "image": {"id": format!("sha512-{}", "a".repeat(128))}}],
        }))
        .unwrap();
        std::fs::create_dir_all(layout::appsinfo(pod, "a")).unwrap();
        std::fs::write(
            layout::app_rootfs_spec(pod, "a"),
            r#"{"kind":"overlay","lower":"/cas/tree/x/rootfs"}"#,
        )
        .unwrap();
        let plan = plan_pod_mounts(pod, &manifest).unwrap();
        let data = plan[0].data.as_deref().unwrap();
        assert!(
            data.starts_with("lowerdir=/cas/tree/x/rootfs,") && data.ends_with(",volatile"),
            "{data}"
        );
    }
}
