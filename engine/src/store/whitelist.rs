//! appc `pathWhitelist`: when an image lists paths, its rendered rootfs holds exactly
//! those paths and the directories leading to them; everything else its
//! dependencies brought is removed.
//!
//! Applied after all layers are extracted (not per entry) so that a whitelisted hard
//! link whose target is not whitelisted still finds its target while extracting.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, fstatat, futimens};
use nix::sys::time::TimeSpec;
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::{IoContext, StoreError, dirfd};

struct Whitelist {
    keep: HashSet<PathBuf>,
    ancestors: HashSet<PathBuf>,
}

impl Whitelist {
    fn new(paths: &[String]) -> Result<Self, StoreError> {
        let mut keep = HashSet::new();
        let mut ancestors = HashSet::new();
        for raw in paths {
            let mut rel = PathBuf::new();
            for component in Path::new(raw).components() {
                match component {
                    Component::Normal(name) => rel.push(name),
                    Component::RootDir | Component::CurDir => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(StoreError::InvalidManifest(format!(
                            "pathWhitelist: {raw:?} contains `..`"
                        )));
                    }
                }
            }
            ancestors.extend(rel.ancestors().skip(1).map(Path::to_path_buf));
            keep.insert(rel);
        }
        Ok(Self { keep, ancestors })
    }

    fn keeps(&self, rel: &Path) -> bool {
        self.keep.contains(rel) || self.ancestors.contains(rel)
    }
}

/// Prunes the tree rooted at `rootfs` (open as `root`) down to `paths`; a no-op when
/// `paths` is empty.
pub(super) fn prune(rootfs: &Path, root: BorrowedFd<'_>, paths: &[String]) -> Result<(), StoreError> {
    if paths.is_empty() {
        return Ok(());
    }
    let whitelist = Whitelist::new(paths)?;
    let dir = openat(
        root,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("open {}", rootfs.display()))?;
    prune_dir(rootfs, dir, Path::new(""), &whitelist)
}

fn prune_dir(rootfs: &Path, dir: OwnedFd, rel: &Path, whitelist: &Whitelist) -> Result<(), StoreError> {
    let shown = || rootfs.join(rel).display().to_string();
    let before = nix::sys::stat::fstat(&dir).ctx(|| format!("stat {}", shown()))?;
    let mut removed = false;
    for name in dirfd::names(dir.as_fd()).ctx(|| format!("list {}", shown()))? {
        let child = rel.join(OsStr::from_bytes(name.to_bytes()));
        let st = match fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                return Err(StoreError::io(
                    format!("stat {}", rootfs.join(&child).display()),
                    e.into(),
                ));
            }
        };
        let is_dir = dirfd::is_dir(&st);
        if whitelist.keeps(&child) {
            if is_dir {
                let sub = openat(
                    &dir,
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .ctx(|| format!("open {}", rootfs.join(&child).display()))?;
                prune_dir(rootfs, sub, &child, whitelist)?;
            }
            continue;
        }
        removed = true;
        if is_dir {
            // Every component of `child` was checked to be a real directory on the
            // way down, and nobody else writes this private render directory, so
            // the path names exactly what was just examined.
            let path = rootfs.join(&child);
            crate::fsutil::remove_tree(&path).ctx(|| format!("remove {}", path.display()))?;
        } else {
            unlinkat(&dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                .ctx(|| format!("remove {}", rootfs.join(&child).display()))?;
        }
    }
    if removed {
        // Pruning is not a change the image made: keep the directory's own mtime.
        let atime = TimeSpec::new(before.st_atime, before.st_atime_nsec);
        let mtime = TimeSpec::new(before.st_mtime, before.st_mtime_nsec);
        futimens(&dir, &atime, &mtime).ctx(|| format!("restore mtime of {}", shown()))?;
    }
    Ok(())
}
