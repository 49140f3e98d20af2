//! `--no-overlay`: each app gets a private copy of its rendered tree.
//!
//! The copy works on directory fds and `*at` calls with O_NOFOLLOW throughout, so a
//! symlink in the source is copied as a symlink and never followed, and it refuses
//! to descend into another filesystem (something mounted inside the tree is not
//! part of the image). Hard links within the tree stay hard links.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat, futimens,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use super::{dirfd, xattr};

/// Copies a rendered tree (for --no-overlay), keeping modes, owners, times,
/// symlinks and device nodes, never following a symlink.
///
/// `dst` is created if missing (an existing empty directory is fine).
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let ro_dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let src_fd = nix::fcntl::open(src, ro_dir, Mode::empty()).map_err(|e| at(src, e.into()))?;
    let src_st = fstat(&src_fd).map_err(|e| at(src, e.into()))?;
    match std::fs::create_dir(dst) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(at(dst, e)),
        _ => {}
    }
    let dst_fd = nix::fcntl::open(dst, ro_dir, Mode::empty()).map_err(|e| at(dst, e.into()))?;
    let mut copier = Copier {
        dev: src_st.st_dev,
        dst_root: dst_fd.try_clone()?,
        links: HashMap::new(),
        chown: nix::unistd::geteuid().is_root(),
    };
    copier.dir(src_fd, dst_fd, src, Path::new(""))?;
    Ok(())
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

struct Copier {
    /// The source's device: an entry on any other is a mount point inside the tree.
    dev: u64,
    dst_root: OwnedFd,
    /// (dev, inode) of multiply-linked source files -> where their first copy went,
    /// relative to the destination root.
    links: HashMap<(u64, u64), PathBuf>,
    chown: bool,
}

impl Copier {
    /// Copies the contents of `src` into `dst`, then gives `dst` the source's owner,
    /// mode and times (last, so neither a read-only mode nor new children spoil them).
    fn dir(&mut self, src: OwnedFd, dst: OwnedFd, shown: &Path, rel: &Path) -> io::Result<()> {
        for name in dirfd::names(src.as_fd()).map_err(|e| at(shown, e))? {
            let child = shown.join(OsStr::from_bytes(name.to_bytes()));
            let st = match fstatat(&src, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(at(&child, e.into())),
            };
            if st.st_dev != self.dev {
                return Err(io::Error::other(format!(
                    "{}: refusing to copy across a mount point",
                    child.display()
                )));
            }
            let child_rel = rel.join(OsStr::from_bytes(name.to_bytes()));
            let copied = self.entry(src.as_fd(), dst.as_fd(), &name, &st, &child, &child_rel);
            // A directory's errors already name the entry they happened at.
            if dirfd::is_dir(&st) {
                copied?;
            } else {
                copied.map_err(|e| at(&child, e))?;
            }
        }
        let st = fstat(&src).map_err(|e| at(shown, e.into()))?;
        self.owner_mode(dst.as_fd(), &st)?;
        xattr::apply(dst.as_fd(), &xattr::read(src.as_fd())?)?;
        futimens(&dst, &atime(&st), &mtime(&st))?;
        Ok(())
    }

    fn entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        st: &FileStat,
        shown: &Path,
        rel: &Path,
    ) -> io::Result<()> {
        let kind = st.st_mode & libc::S_IFMT;
        let nofollow = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if kind == libc::S_IFDIR {
            let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | nofollow;
            let opened = mkdirat(dst, name, Mode::from_bits_truncate(0o700))
                .and_then(|()| openat(src, name, dir_flags, Mode::empty()))
                .and_then(|from| Ok((from, openat(dst, name, dir_flags, Mode::empty())?)));
            let (from, to) = opened.map_err(|e| at(shown, e.into()))?;
            return self.dir(from, to, shown, rel);
        }
        if kind != libc::S_IFLNK && st.st_nlink > 1 {
            let inode = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&inode) {
                linkat(&self.dst_root, first.as_path(), dst, name, AtFlags::empty())?;
                return Ok(());
            }
            self.links.insert(inode, rel.to_path_buf());
        }
        match kind {
            libc::S_IFREG => {
                let mut from = File::from(openat(src, name, OFlag::O_RDONLY | nofollow, Mode::empty())?);
                let mut to = File::from(openat(
                    dst,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | nofollow,
                    Mode::from_bits_truncate(0o600),
                )?);
                // std uses copy_file_range between two files: in-kernel, reflinks where
                // the filesystem can.
                io::copy(&mut from, &mut to)?;
                self.owner_mode(to.as_fd(), st)?;
                xattr::apply(to.as_fd(), &xattr::read(from.as_fd())?)?;
                futimens(&to, &atime(st), &mtime(st))?;
            }
            libc::S_IFLNK => {
                let target = readlinkat(src, name)?;
                symlinkat(target.as_os_str(), dst, name)?;
                self.owner_of_name(dst, name, st)?;
                utimensat(dst, name, &atime(st), &mtime(st), UtimensatFlags::NoFollowSymlink)?;
            }
            _ => {
                // FIFOs, sockets and device nodes: recreated, never opened (opening a
                // device or a FIFO has side effects).
                let sflag = SFlag::from_bits_truncate(kind);
                mknodat(dst, name, sflag, Mode::from_bits_truncate(0o600), st.st_rdev)?;
                self.owner_of_name(dst, name, st)?;
                // Following is harmless here: the name was just created as a node in a
                // directory only this copy writes to.
                fchmodat(dst, name, perms(st), FchmodatFlags::FollowSymlink)?;
                utimensat(dst, name, &atime(st), &mtime(st), UtimensatFlags::NoFollowSymlink)?;
            }
        }
        Ok(())
    }

    /// Owner of a name that must not be opened or followed (symlink, node).
    fn owner_of_name(&self, dir: BorrowedFd<'_>, name: &CStr, st: &FileStat) -> io::Result<()> {
        if self.chown {
            fchownat(
                dir,
                name,
                Some(uid(st)),
                Some(gid(st)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(())
    }

    /// chown before chmod: chown clears setuid/setgid bits.
    fn owner_mode(&self, fd: BorrowedFd<'_>, st: &FileStat) -> io::Result<()> {
        if self.chown {
            fchown(fd, Some(uid(st)), Some(gid(st)))?;
        }
        fchmod(fd, perms(st))?;
        Ok(())
    }
}

fn uid(st: &FileStat) -> Uid {
    Uid::from_raw(st.st_uid)
}

fn gid(st: &FileStat) -> Gid {
    Gid::from_raw(st.st_gid)
}

fn perms(st: &FileStat) -> Mode {
    Mode::from_bits_truncate(st.st_mode & 0o7777)
}

fn atime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_atime, st.st_atime_nsec)
}

fn mtime(st: &FileStat) -> TimeSpec {
    TimeSpec::new(st.st_mtime, st.st_mtime_nsec)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::store::testutil;

    fn set_mtime(path: &Path, secs: u64) {
        let when = UNIX_EPOCH + Duration::new(secs, 123_456_789);
        File::open(path)
            .and_then(|f| f.set_modified(when))
            .expect("set mtime");
    }

    /// A tree with every kind of entry copy_tree must handle.
    fn source(base: &Path) -> PathBuf {
        let src = base.join("src");
        std::fs::create_dir_all(src.join("bin")).expect("mkdir");
        std::fs::create_dir_all(src.join("ro")).expect("mkdir");
        std::fs::write(src.join("bin/suid"), b"binary").expect("write");
        std::os::unix::fs::chown(src.join("bin/suid"), Some(1234), Some(5678)).expect("chown");
        std::fs::set_permissions(src.join("bin/suid"), std::fs::Permissions::from_mode(0o4750))
            .expect("chmod");
        set_mtime(&src.join("bin/suid"), 1_000_000);
        std::fs::hard_link(src.join("bin/suid"), src.join("ro/link")).expect("link");
        std::os::unix::fs::symlink("/etc", src.join("etc")).expect("symlink");
        std::os::unix::fs::symlink("../bin/suid", src.join("ro/rel")).expect("symlink");
        std::os::unix::fs::lchown(src.join("ro/rel"), Some(7), Some(8)).expect("lchown");
        nix::unistd::mkfifo(&src.join("ro/fifo"), Mode::from_bits_truncate(0o620)).expect("mkfifo");
        let _ = mknodat(
            nix::fcntl::AT_FDCWD,
            &src.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        );
        std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o555)).expect("chmod");
        set_mtime(&src.join("ro"), 2_000_000);
        set_mtime(&src.join("bin"), 3_000_000);
        src
    }

    #[test]
    fn everything_is_copied_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = source(dir.path());
        let dst = dir.path().join("dst");
        copy_tree(&src, &dst).expect("copy");
        let entries = testutil::walk(&src);
        assert_eq!(testutil::walk(&dst), entries);
        for rel in &entries {
            let (a, b) = (src.join(rel), dst.join(rel));
            let (ma, mb) = (
                std::fs::symlink_metadata(&a).expect("lstat"),
                std::fs::symlink_metadata(&b).expect("lstat"),
            );
            let shown = rel.display();
            assert_eq!(ma.mode(), mb.mode(), "{shown}: type and mode");
            assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{shown}: owner");
            assert_eq!(
                (ma.mtime(), ma.mtime_nsec()),
                (mb.mtime(), mb.mtime_nsec()),
                "{shown}: mtime"
            );
            assert_eq!(ma.rdev(), mb.rdev(), "{shown}: device");
            if ma.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(&a).expect("a"),
                    std::fs::read_link(&b).expect("b")
                );
            } else if ma.is_file() {
                assert_eq!(
                    std::fs::read(&a).expect("a"),
                    std::fs::read(&b).expect("b"),
                    "{shown}"
                );
            }
        }
        assert_eq!(
            std::fs::metadata(dst.join("bin/suid")).expect("stat").ino(),
            std::fs::metadata(dst.join("ro/link")).expect("stat").ino(),
            "hard links stay linked"
        );
        assert!(
            std::fs::symlink_metadata(dst.join("ro/fifo"))
                .expect("fifo")
                .file_type()
                .is_fifo()
        );
        assert!(
            dst.join("etc").symlink_metadata().expect("lstat").is_symlink(),
            "not followed"
        );
        if src.join("null").exists() {
            let null = std::fs::symlink_metadata(dst.join("null")).expect("device");
            assert!(null.file_type().is_char_device());
        } else {
            eprintln!("no device node tested: mknod is not permitted here");
        }
    }

    #[test]
    fn a_symlink_as_source_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = source(dir.path());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&src, &link).expect("symlink");
        assert!(copy_tree(&link, &dir.path().join("dst")).is_err());
    }

    #[test]
    fn a_mount_inside_the_tree_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = source(dir.path());
        let mnt = src.join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        if let Err(e) = nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ) {
            eprintln!("skipping: cannot mount tmpfs here ({e})");
            return;
        }
        let result = copy_tree(&src, &dir.path().join("dst"));
        nix::mount::umount(&mnt).expect("umount");
        let err = result.expect_err("crosses a mount");
        assert!(err.to_string().contains("mount point"), "{err}");
        assert!(err.to_string().contains("mnt"), "{err}");
    }
}
