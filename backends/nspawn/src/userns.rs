//! `--private-users` on the stage0 side: the pod's files are shifted into its
//! uid range before nspawn starts it in a user namespace (`--private-users=
//! SHIFT:COUNT`), so root in the pod is an unprivileged host uid that owns the
//! pod's own files and nothing else.
//!
//! The walk never follows a symlink (every call is relative to an open
//! directory, with NOFOLLOW) and never leaves the file system it started on:
//! whatever is mounted below (nothing, at this point: the pod's mounts are made
//! later, in nspawn's private namespace) keeps its owners. Only ids inside
//! `0..COUNT` are shifted; ids already in the pod's range are left (a hard link
//! met twice, a pod run again), anything else is refused, as rkt did.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};
use rkt_engine::pod::layout;
use rkt_engine::schema::{PodManifest, VolumeKind};
use rkt_engine::userns::UidRange;

use crate::NspawnError;

/// Shifts everything the pod's processes own: the stage1 rootfs (the init's
/// files and each app's private rootfs copy) and the empty volumes.
pub fn shift_pod(pod: &Path, manifest: &PodManifest, range: UidRange) -> Result<u64, NspawnError> {
    let mut count = shift_tree(&layout::stage1_rootfs(pod), range)?;
    for volume in manifest.volumes.iter().filter(|v| v.kind == VolumeKind::Empty) {
        let dir = layout::empty_volume(pod, volume.name.as_str());
        if dir.exists() {
            count += shift_tree(&dir, range)?;
        }
    }
    Ok(count)
}

/// Shifts `root` and everything below it on the same device; the number of
/// entries changed.
pub fn shift_tree(root: &Path, range: UidRange) -> Result<u64, NspawnError> {
    let err = |what: &str, e: nix::Error| NspawnError::io(format!("{what} {}", root.display()), e.into());
    let fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("opening", e))?;
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| err("stat of", e))?;
    let mut walk = Walk {
        range,
        dev: st.st_dev,
        changed: 0,
        root,
    };
    walk.shift_fd(fd.as_fd(), &st)?;
    walk.dir(fd, Path::new(""))?;
    Ok(walk.changed)
}

struct Walk<'a> {
    range: UidRange,
    dev: u64,
    changed: u64,
    root: &'a Path,
}

impl Walk<'_> {
    fn shifted(&self, id: u32, kind: &str, at: &Path) -> Result<u32, NspawnError> {
        if self.range.contains_host_id(id) {
            return Ok(id);
        }
        self.range.host_id(id).ok_or_else(|| {
            NspawnError::Invalid(format!(
                "--private-users: {} has {kind} {id}, outside the pod's {} ids",
                self.root.join(at).display(),
                self.range.count
            ))
        })
    }

    fn ids(&self, st: &FileStat, at: &Path) -> Result<Option<(u32, u32)>, NspawnError> {
        let uid = self.shifted(st.st_uid, "uid", at)?;
        let gid = self.shifted(st.st_gid, "gid", at)?;
        Ok(((uid, gid) != (st.st_uid, st.st_gid)).then_some((uid, gid)))
    }

    fn shift_fd(&mut self, fd: BorrowedFd<'_>, st: &FileStat) -> Result<(), NspawnError> {
        if let Some((uid, gid)) = self.ids(st, Path::new(""))? {
            nix::unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| NspawnError::io(format!("chown {}", self.root.display()), e.into()))?;
            self.changed += 1;
        }
        Ok(())
    }

    fn dir(&mut self, fd: OwnedFd, at: &Path) -> Result<(), NspawnError> {
        let io = |what: String, e: nix::Error| NspawnError::io(what, e.into());
        let mut dir = nix::dir::Dir::from_fd(fd)
            .map_err(|e| io(format!("reading {}", self.root.join(at).display()), e))?;
        let dirfd = dir.as_raw_fd();
        // SAFETY: `dir` owns the fd and outlives every use of this borrow below.
        let dirfd = unsafe { BorrowedFd::borrow_raw(dirfd) };
        let names: Vec<std::ffi::CString> = dir
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for name in names {
            let path = at.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                name.as_bytes(),
            ));
            let shown = || self.root.join(&path).display().to_string();
            let st = nix::sys::stat::fstatat(dirfd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io(format!("stat of {}", shown()), e))?;
            if st.st_dev != self.dev {
                // Another file system (a mount point): not the pod's to shift.
                continue;
            }
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if let Some((uid, gid)) = self.ids(&st, &path)? {
                nix::unistd::fchownat(
                    dirfd,
                    name.as_c_str(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io(format!("chown {}", shown()), e))?;
                self.changed += 1;
                // chown clears set-user-ID and set-group-ID, even for root.
                let special = st.st_mode & (libc::S_ISUID | libc::S_ISGID);
                if kind == SFlag::S_IFREG && special != 0 {
                    let file = nix::fcntl::openat(
                        dirfd,
                        name.as_c_str(),
                        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io(format!("opening {}", shown()), e))?;
                    let proc_path = rkt_engine::fsutil::proc_fd_path(file.as_fd());
                    std::fs::set_permissions(
                        &proc_path,
                        std::os::unix::fs::PermissionsExt::from_mode(st.st_mode & 0o7777),
                    )
                    .map_err(|e| NspawnError::io(format!("chmod {}", shown()), e))?;
                }
            }
            if kind == SFlag::S_IFDIR {
                let child = nix::fcntl::openat(
                    dirfd,
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io(format!("opening {}", shown()), e))?;
                self.dir(child, &path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_tree_is_shifted_without_following_symlinks_and_keeps_setuid() {
        if !root() {
            eprintln!("a_tree_is_shifted_without_following_symlinks: skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"host").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/su"), b"").unwrap();
        std::fs::set_permissions(tree.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::write(tree.join("user-file"), b"").unwrap();
        std::os::unix::fs::chown(tree.join("user-file"), Some(1000), Some(100)).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("escape")).unwrap();
        std::fs::hard_link(tree.join("user-file"), tree.join("bin/link")).unwrap();
        let range = UidRange {
            shift: 0x30000,
            count: 0x10000,
        };
        let changed = shift_tree(&tree, range).unwrap();
        assert!(changed >= 5, "{changed}");
        let meta = |p: &str| std::fs::symlink_metadata(tree.join(p)).unwrap();
        assert_eq!((meta("").uid(), meta("").gid()), (0x30000, 0x30000));
        assert_eq!(
            (meta("user-file").uid(), meta("user-file").gid()),
            (0x30000 + 1000, 0x30000 + 100)
        );
        assert_eq!(meta("bin/su").uid(), 0x30000);
        assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755, "set-user-ID survives");
        assert_eq!(meta("escape").uid(), 0x30000, "the link itself");
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0, "never its target");
        // Again: nothing left to do.
        assert_eq!(shift_tree(&tree, range).unwrap(), 0);
        // An id past the range is refused, naming the file.
        std::os::unix::fs::lchown(tree.join("user-file"), Some(70000), None).unwrap();
        let err = shift_tree(&tree, range).unwrap_err().to_string();
        assert!(err.contains("uid 70000"), "{err}");
    }

    /// Unmounts (lazily) when dropped, so a failing test leaves no mount.
    struct Mounted(std::path::PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn another_file_system_below_is_left_alone() {
        if !root() {
            eprintln!("another_file_system_below_is_left_alone: skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=755"),
        )
        .unwrap();
        let _mounted = Mounted(mnt.clone());
        std::fs::write(mnt.join("file"), b"").unwrap();
        let range = UidRange {
            shift: 0x40000,
            count: 0x10000,
        };
        // The temp dir itself only: the mount point and below are not walked.
        assert_eq!(shift_tree(dir.path(), range).unwrap(), 1);
        assert_eq!(std::fs::metadata(&mnt).unwrap().uid(), 0);
        assert_eq!(std::fs::metadata(mnt.join("file")).unwrap().uid(), 0);
    }
}
