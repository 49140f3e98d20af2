//! A rendered tree's fingerprint: one SHA-512 over every entry's name, type,
//! owner, mode, mtime and content, in a fixed (sorted) order. A directory's
//! mtime is left out: parents an archive does not list, the root and directories
//! a later layer adds to get the time they were made, so two renders of one
//! image would differ (and `verify`, which renders again, would cry damage). Computed once when
//! a tree is built and recorded beside it; `rkt image verify` recomputes it, so a
//! file changed, added or lost in a tree that pods share shows up as damage.
//!
//! The walk never follows a symlink (links are hashed by their target text) and
//! opens regular files with O_NOFOLLOW, so a tree cannot make it read elsewhere.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::hashthread::ThreadedSha512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TreeDigest {
    /// `sha512-` + hex.
    pub hash: String,
    /// Bytes of regular-file content.
    pub size: u64,
}

pub(super) fn digest(rootfs: &Path) -> io::Result<TreeDigest> {
    let mut walk = Walk {
        hasher: ThreadedSha512::new(),
        size: 0,
    };
    walk.entry(rootfs, b"")?;
    Ok(TreeDigest {
        hash: format!("sha512-{}", hex::encode(walk.hasher.finish())),
        size: walk.size,
    })
}

/// Bytes of regular-file content under `rootfs`, from metadata alone (no file is
/// read): the size a tree records when it is published without a digest.
pub(super) fn content_size(rootfs: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(rootfs)?;
    if meta.is_file() {
        return Ok(meta.size());
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    let mut size = 0;
    for entry in std::fs::read_dir(rootfs)? {
        size += content_size(&entry?.path())?;
    }
    Ok(size)
}

struct Walk {
    /// Hashes on its own thread while the walk reads the next files.
    hasher: ThreadedSha512,
    size: u64,
}

impl Walk {
    fn entry(&mut self, path: &Path, rel: &[u8]) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        let kind = meta.file_type();
        let tag: u8 = if kind.is_dir() {
            b'd'
        } else if kind.is_file() {
            b'f'
        } else if kind.is_symlink() {
            b'l'
        } else {
            b'o'
        };
        self.hasher.update(rel);
        self.hasher.update([0, tag]);
        for n in [
            u64::from(meta.mode() & 0o7777),
            u64::from(meta.uid()),
            u64::from(meta.gid()),
            if kind.is_dir() {
                0
            } else {
                meta.mtime().cast_unsigned()
            },
        ] {
            self.hasher.update(n.to_le_bytes());
        }
        if kind.is_file() {
            let mut file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            self.hasher.update(meta.size().to_le_bytes());
            let copied = io::copy(&mut file, &mut self.hasher)?;
            self.size += copied;
        } else if kind.is_symlink() {
            self.hasher
                .update(std::fs::read_link(path)?.as_os_str().as_bytes());
            self.hasher.update([0]);
        } else if kind.is_dir() {
            let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()?;
            names.sort();
            for name in names {
                let mut child = rel.to_vec();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                self.entry(&path.join(&name), &child)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_moves_the_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/x"), b"hello").expect("write");
        std::os::unix::fs::symlink("etc/x", root.join("link")).expect("symlink");
        let first = digest(&root).expect("digest");
        assert_eq!(first.size, 5);
        assert_eq!(digest(&root).expect("again"), first, "stable");

        // Same size, other content; the mtime is put back so only content differs.
        let mtime = std::fs::metadata(root.join("etc/x"))
            .expect("stat")
            .modified()
            .expect("mtime");
        std::fs::write(root.join("etc/x"), b"jello").expect("rewrite");
        File::options()
            .write(true)
            .open(root.join("etc/x"))
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        let etc_mtime = std::fs::metadata(root.join("etc"))
            .expect("stat")
            .modified()
            .expect("mtime");
        let changed = digest(&root).expect("digest");
        assert_ne!(changed.hash, first.hash, "content");

        std::fs::remove_file(root.join("link")).expect("rm");
        std::os::unix::fs::symlink("etc/y", root.join("link")).expect("symlink");
        let relinked = digest(&root).expect("digest");
        assert_ne!(relinked.hash, changed.hash, "symlink target");

        std::fs::write(root.join("etc/new"), b"").expect("add");
        File::options()
            .read(true)
            .open(root.join("etc"))
            .and_then(|f| f.set_modified(etc_mtime))
            .expect("set dir mtime");
        assert_ne!(digest(&root).expect("digest").hash, relinked.hash, "added file");
        assert_eq!(
            content_size(&root).expect("size"),
            5,
            "the symlink's target is not counted"
        );

        // A directory's mtime says when it was made, not what the image holds.
        let before = digest(&root).expect("digest");
        File::options()
            .read(true)
            .open(root.join("etc"))
            .and_then(|f| f.set_modified(std::time::UNIX_EPOCH))
            .expect("set dir mtime");
        assert_eq!(digest(&root).expect("digest"), before, "directory mtime");
    }
}
