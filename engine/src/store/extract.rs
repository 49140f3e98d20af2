//! Unpacking an image's `rootfs/` into a directory without ever writing outside it.
//!
//! Images are untrusted. Names with `..` or a leading `/` are refused outright.
//! Everything else is resolved relative to a directory fd: every parent through
//! `openat2(RESOLVE_IN_ROOT)` (so a symlink planted by an earlier entry resolves
//! inside the root, wherever it points), and the entry itself created with `*at`
//! calls relative to that parent, with O_NOFOLLOW|O_EXCL, so nothing is written
//! through a symlink. Hard links are made from an fd of their target resolved the
//! same way, so they can only ever link to something inside the root.
//!
//! Device nodes are skipped: an image must not bring a raw handle to a host disk.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    Mode, SFlag, UtimensatFlags, fchmod, fstat, fstatat, futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

use super::xattr::{self, Xattrs};
use super::{IoContext, StoreError, dirfd};
use crate::fsutil::{mkdir_all_in_root, open_in_root};

const PATH_MAX: usize = libc::PATH_MAX as usize;
const NAME_MAX: usize = 255;
const ROOTFS: &[u8] = b"rootfs";
/// A layer entry named `.wh.NAME` deletes NAME from the layers below...
const WHITEOUT: &[u8] = b".wh.";
/// ...and `.wh..wh..opq` (what is left after `.wh.`) everything in its directory.
const OPAQUE: &[u8] = b".wh..opq";

/// Extracts the `rootfs/` entries of the tar `archive` into the directory `root`.
/// On error the directory is left half-filled: the caller owns it and throws it away.
pub(super) fn unpack(archive: impl Read, root: BorrowedFd<'_>) -> Result<(), StoreError> {
    unpack_as(archive, root, false)
}

/// Applies a Docker/OCI layer tar (names relative to the root, no `rootfs/`) on top
/// of what `root` holds, with the same guarantees, honouring whiteouts: `.wh.NAME`
/// removes NAME from the layers below, `.wh..wh..opq` empties its directory.
pub(super) fn unpack_layer(archive: impl Read, root: BorrowedFd<'_>) -> Result<(), StoreError> {
    unpack_as(archive, root, true)
}

fn unpack_as(archive: impl Read, root: BorrowedFd<'_>, layer: bool) -> Result<(), StoreError> {
    let mut extractor = Extractor::new(root, layer);
    let mut archive = tar::Archive::new(archive);
    let corrupt = |e: io::Error| StoreError::Corrupt(e.to_string());
    for entry in archive.entries().map_err(corrupt)? {
        extractor.entry(entry.map_err(corrupt)?)?;
    }
    extractor.finish();
    Ok(())
}

/// `unpack` fed one entry at a time, for a caller that walks the archive itself
/// (an import that renders the tree in the same pass). Entries outside `rootfs/`
/// are ignored; `finish` must follow the last entry.
pub(super) struct StreamingUnpack<'r>(Extractor<'r>);

impl<'r> StreamingUnpack<'r> {
    pub(super) fn new(root: BorrowedFd<'r>) -> Self {
        Self(Extractor::new(root, false))
    }

    /// Same guarantees and errors as `unpack`; after an error the directory is
    /// half-filled and the caller throws it away.
    pub(super) fn entry<R: Read>(&mut self, entry: tar::Entry<'_, R>) -> Result<(), StoreError> {
        self.0.entry(entry)
    }

    pub(super) fn finish(self) {
        self.0.finish()
    }
}

/// Where an archive entry lands below the rootfs (empty for `rootfs/` itself), or
/// None for entries outside `rootfs/` such as `manifest`. `.` components are
/// dropped; absolute names, `..` and over-long names are refused with the reason.
fn rootfs_path(raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let all: Vec<&[u8]> = raw
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if all.iter().any(|c| *c == b"..") {
        return Err("`..` component");
    }
    match all.split_first() {
        Some((first, rest)) if *first == ROOTFS => {
            if rest.iter().any(|c| c.len() > NAME_MAX) {
                return Err("a name longer than NAME_MAX (255 bytes)");
            }
            let rel = rest.join(&b'/');
            if rel.len() >= PATH_MAX {
                return Err("path longer than PATH_MAX (4096 bytes)");
            }
            Ok(Some(PathBuf::from(OsStr::from_bytes(&rel))))
        }
        _ => Ok(None),
    }
}

/// Owner, permissions and mtime of an entry, as the header gives them.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    mtime: TimeSpec,
}

impl Meta {
    fn of(header: &tar::Header, shown: &str) -> Result<Self, StoreError> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{shown}: {what}: {e}"));
        let id = |v: io::Result<u64>, what: &str| -> Result<u32, StoreError> {
            let v = v.map_err(|e| bad(what, &e))?;
            u32::try_from(v).map_err(|e| bad(what, &e))
        };
        let mode = header.mode().map_err(|e| bad("mode", &e))?;
        let mtime = header.mtime().map_err(|e| bad("mtime", &e))?;
        Ok(Self {
            uid: Uid::from_raw(id(header.uid(), "uid")?),
            gid: Gid::from_raw(id(header.gid(), "gid")?),
            mode: Mode::from_bits_truncate(mode & 0o7777),
            mtime: TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0),
        })
    }
}

struct Extractor<'r> {
    /// A Docker/OCI layer: names are relative to the root and whiteouts apply.
    layer: bool,
    root: BorrowedFd<'r>,
    /// The parent directory of the previous entry: archives list siblings together,
    /// so most entries skip the in-root walk from the top.
    parent: Option<(PathBuf, OwnedFd)>,
    /// Set when an entry replaced something: a cached parent may have been resolved
    /// through what is gone, so it must be resolved again.
    parent_stale: bool,
    /// Directory mtimes, applied last: creating children would bump them.
    dir_times: Vec<(PathBuf, TimeSpec)>,
    /// Only root may give files away; unprivileged extraction keeps our own ids.
    chown: bool,
    buf: Vec<u8>,
}

impl<'r> Extractor<'r> {
    fn new(root: BorrowedFd<'r>, layer: bool) -> Self {
        Extractor {
            layer,
            root,
            parent: None,
            parent_stale: false,
            dir_times: Vec::new(),
            chown: nix::unistd::geteuid().is_root(),
            buf: vec![0; 256 << 10],
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), StoreError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = self.entry_path(&raw).map_err(|reason| StoreError::Unsafe {
            path: shown.clone(),
            reason: reason.into(),
        })?;
        let Some(rel) = rel else {
            return Ok(());
        };
        let meta = Meta::of(entry.header(), &shown)?;

        let (Some(parent_rel), Some(name)) = (rel.parent(), rel.file_name()) else {
            // The entry is `rootfs/` itself.
            if kind != EntryType::Directory {
                return Err(StoreError::Unsafe {
                    path: shown,
                    reason: "rootfs itself must be a directory".into(),
                });
            }
            let fd = openat(
                self.root,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ctx(|| format!("extract {shown}"))?;
            self.owner_and_mode(fd.as_fd(), &meta, &shown)?;
            self.dir_times.push((PathBuf::new(), meta.mtime));
            return Ok(());
        };
        let name = name.to_owned();

        if self.layer
            && let Some(whited_out) = name.as_bytes().strip_prefix(WHITEOUT)
        {
            return self.whiteout(parent_rel, OsStr::from_bytes(whited_out), &shown);
        }
        if matches!(kind, EntryType::Char | EntryType::Block) {
            tracing::warn!(path = %shown, "skipping device node in image");
            return Ok(());
        }
        let xattrs = xattr::of_entry(&mut entry, &shown)?;
        let parent = self.take_parent(parent_rel, &shown)?;
        let result = match kind {
            EntryType::Directory => self.directory(parent.as_fd(), &name, &rel, &meta, &xattrs, &shown),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(parent.as_fd(), &name, &mut entry, &meta, &xattrs, &shown)
            }
            EntryType::Symlink => match entry.link_name_bytes() {
                Some(target) => self.symlink(parent.as_fd(), &name, &target, &meta, &shown),
                None => Err(StoreError::Corrupt(format!("{shown}: symlink without a target"))),
            },
            EntryType::Link => match entry.link_name_bytes() {
                Some(target) => self.hardlink(parent.as_fd(), &name, &target, &shown),
                None => Err(StoreError::Corrupt(format!(
                    "{shown}: hard link without a target"
                ))),
            },
            EntryType::Fifo => self.fifo(parent.as_fd(), &name, &meta, &shown),
            other => {
                tracing::warn!(path = %shown, kind = ?other, "skipping archive entry of unsupported type");
                Ok(())
            }
        };
        if !std::mem::take(&mut self.parent_stale) {
            self.parent = Some((parent_rel.to_path_buf(), parent));
        }
        result
    }

    /// Where an entry lands below the root: after `rootfs/` in an ACI, as named in a layer.
    fn entry_path(&self, raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
        if !self.layer {
            return rootfs_path(raw);
        }
        let mut prefixed = ROOTFS.to_vec();
        prefixed.push(b'/');
        prefixed.extend_from_slice(raw);
        rootfs_path(&prefixed)
    }

    /// Removes what a whiteout names (`OPAQUE`: everything in the directory) from
    /// the layers below, without following symlinks and without leaving the root.
    fn whiteout(&mut self, parent_rel: &Path, name: &OsStr, shown: &str) -> Result<(), StoreError> {
        self.parent = None;
        let parent = match open_in_root(
            self.root,
            parent_rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Nothing below to hide (a symlink or file is not a directory to hide in).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)) => {
                return Ok(());
            }
            Err(e) => return Err(StoreError::io(format!("whiteout {shown}"), e)),
        };
        // `.wh..` and `.wh...` would name the directory itself or its parent.
        if name.is_empty() || name == "." || name == ".." {
            return Err(StoreError::Unsafe {
                path: shown.to_string(),
                reason: "whiteout of `.` or `..`".into(),
            });
        }
        let names: Vec<std::ffi::OsString> = if name.as_bytes() == OPAQUE {
            let listing = std::fs::read_dir(crate::fsutil::proc_fd_path(parent.as_fd()))
                .ctx(|| format!("whiteout {shown}"))?;
            listing.filter_map(|e| e.ok().map(|e| e.file_name())).collect()
        } else {
            vec![name.to_owned()]
        };
        for victim in names {
            match fstatat(&parent, victim.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if dirfd::is_dir(&st) => {
                    let path = crate::fsutil::proc_fd_path(parent.as_fd()).join(&victim);
                    crate::fsutil::remove_tree(&path).ctx(|| format!("whiteout {shown}"))?;
                }
                Ok(_) => unlinkat(&parent, victim.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .ctx(|| format!("whiteout {shown}"))?,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(StoreError::io(format!("whiteout {shown}"), e.into())),
            }
        }
        Ok(())
    }

    /// The parent directory of an entry, from the cache or resolved (and created)
    /// inside the root.
    fn take_parent(&mut self, parent_rel: &Path, shown: &str) -> Result<OwnedFd, StoreError> {
        if let Some((cached, fd)) = self.parent.take()
            && cached == parent_rel
        {
            return Ok(fd);
        }
        mkdir_all_in_root(self.root, parent_rel, Mode::from_bits_truncate(0o755))
            .ctx(|| format!("extract {shown}: parent directory"))
    }

    /// Runs `make`; if the name is taken, removes what is there (duplicate entries:
    /// the last one wins) and runs it again.
    fn create<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        shown: &str,
        mut make: impl FnMut() -> nix::Result<T>,
    ) -> Result<T, StoreError> {
        match make() {
            Err(Errno::EEXIST) => {
                self.remove_existing(parent, name, shown)?;
                make().ctx(|| format!("extract {shown}"))
            }
            other => other.ctx(|| format!("extract {shown}")),
        }
    }

    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        shown: &str,
    ) -> Result<(), StoreError> {
        self.parent_stale = true;
        match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => Err(StoreError::Unsafe {
                    path: shown.to_string(),
                    reason: "would replace a non-empty directory".into(),
                }),
                Err(e) => Err(StoreError::io(format!("extract {shown}: replace"), e.into())),
            },
            Err(e) => Err(StoreError::io(format!("extract {shown}: replace"), e.into())),
        }
    }

    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        xattrs: &Xattrs,
        shown: &str,
    ) -> Result<(), StoreError> {
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if dirfd::is_dir(&st) => {}
            Ok(_) => {
                self.remove_existing(parent, name, shown)?;
                mkdirat(parent, name, Mode::from_bits_truncate(0o700)).ctx(|| format!("extract {shown}"))?;
            }
            Err(Errno::ENOENT) => {
                mkdirat(parent, name, Mode::from_bits_truncate(0o700)).ctx(|| format!("extract {shown}"))?;
            }
            Err(e) => return Err(StoreError::io(format!("extract {shown}"), e.into())),
        }
        let fd = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("extract {shown}"))?;
        self.owner_and_mode(fd.as_fd(), meta, shown)?;
        xattr::apply(fd.as_fd(), xattrs).ctx(|| format!("extract {shown}: extended attributes"))?;
        self.dir_times.push((rel.to_path_buf(), meta.mtime));
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        data: &mut R,
        meta: &Meta,
        xattrs: &Xattrs,
        shown: &str,
    ) -> Result<(), StoreError> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = self.create(parent, name, shown, || {
            openat(parent, name, flags, Mode::from_bits_truncate(0o600))
        })?;
        let mut file = File::from(fd);
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Corrupt(format!("{shown}: {e}"))),
            };
            file.write_all(&self.buf[..n])
                .ctx(|| format!("extract {shown}"))?;
        }
        self.owner_and_mode(file.as_fd(), meta, shown)?;
        xattr::apply(file.as_fd(), xattrs).ctx(|| format!("extract {shown}: extended attributes"))?;
        futimens(&file, &meta.mtime, &meta.mtime).ctx(|| format!("extract {shown}: mtime"))
    }

    fn symlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &[u8],
        meta: &Meta,
        shown: &str,
    ) -> Result<(), StoreError> {
        // The target is stored verbatim, even `/etc` or `../..`: every later lookup
        // through it (ours and the pod's) is resolved inside the root.
        let target = OsStr::from_bytes(target);
        self.create(parent, name, shown, || symlinkat(target, parent, name))?;
        if self.chown {
            fchownat(
                parent,
                name,
                Some(meta.uid),
                Some(meta.gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .ctx(|| format!("extract {shown}: owner"))?;
        }
        utimensat(
            parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .ctx(|| format!("extract {shown}: mtime"))
    }

    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &[u8],
        shown: &str,
    ) -> Result<(), StoreError> {
        let unsafe_link = |reason: String| StoreError::Unsafe {
            path: shown.to_string(),
            reason,
        };
        let target_shown = String::from_utf8_lossy(target).into_owned();
        let target_rel = self
            .entry_path(target)
            .map_err(|reason| unsafe_link(format!("hard link target {target_shown:?}: {reason}")))?
            .ok_or_else(|| unsafe_link(format!("hard link target {target_shown:?} is outside rootfs/")))?;
        let target_fd = open_in_root(
            self.root,
            &target_rel,
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .ctx(|| format!("extract {shown}: hard link target {target_shown:?} inside the rootfs"))?;
        let st = fstat(&target_fd).ctx(|| format!("extract {shown}: hard link target"))?;
        if dirfd::is_dir(&st) {
            return Err(unsafe_link(format!("hard link to directory {target_shown:?}")));
        }
        self.create(parent, name, shown, || {
            linkat(&target_fd, "", parent, name, AtFlags::AT_EMPTY_PATH)
        })
    }

    fn fifo(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), StoreError> {
        self.create(parent, name, shown, || {
            mknodat(parent, name, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
        })?;
        // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        let fd = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("extract {shown}"))?;
        self.owner_and_mode(fd.as_fd(), meta, shown)?;
        futimens(&fd, &meta.mtime, &meta.mtime).ctx(|| format!("extract {shown}: mtime"))
    }

    /// chown before chmod: chown clears setuid/setgid bits.
    fn owner_and_mode(&self, fd: BorrowedFd<'_>, meta: &Meta, shown: &str) -> Result<(), StoreError> {
        if self.chown {
            fchown(fd, Some(meta.uid), Some(meta.gid)).ctx(|| format!("extract {shown}: owner"))?;
        }
        fchmod(fd, meta.mode).ctx(|| format!("extract {shown}: mode"))
    }

    /// Applies directory mtimes, deepest last-listed first. Best-effort: a directory
    /// later replaced by another entry simply has no mtime to restore.
    fn finish(self) {
        for (rel, mtime) in self.dir_times.iter().rev() {
            let path = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                rel.as_path()
            };
            let dir = open_in_root(
                self.root,
                path,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                Mode::empty(),
            );
            if let Err(e) = dir.and_then(|fd| futimens(&fd, mtime, mtime).map_err(io::Error::from)) {
                tracing::debug!(path = %rel.display(), error = %e, "directory mtime not restored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use serde_json::json;

    use super::*;
    use crate::store::testutil::{self, Aci, manifest};

    /// A target directory and, beside it, a canary directory with a file that no
    /// extraction may touch.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        canary: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("root");
            let canary = dir.path().join("canary");
            std::fs::create_dir(&root).expect("mkdir");
            std::fs::create_dir(&canary).expect("mkdir");
            std::fs::write(canary.join("secret"), b"untouched").expect("write");
            Self {
                _dir: dir,
                root,
                canary,
            }
        }

        fn unpack(&self, aci: Aci) -> Result<(), StoreError> {
            let fd = crate::fsutil::open_dir(&self.root).expect("open root");
            unpack(&aci.finish()[..], fd.as_fd())
        }

        fn assert_canary_untouched(&self) {
            assert_eq!(testutil::walk(&self.canary), vec![PathBuf::from("secret")]);
            assert_eq!(
                std::fs::read(self.canary.join("secret")).expect("read"),
                b"untouched"
            );
            assert_eq!(
                std::fs::metadata(self.canary.join("secret"))
                    .expect("stat")
                    .nlink(),
                1
            );
            let parent = self.root.parent().expect("parent");
            let beside: Vec<_> = testutil::walk(parent)
                .into_iter()
                .filter(|p| p.components().count() == 1)
                .collect();
            assert_eq!(beside, vec![PathBuf::from("canary"), PathBuf::from("root")]);
        }

        fn canary_str(&self) -> String {
            self.canary.to_str().expect("utf-8").to_string()
        }
    }

    fn aci() -> Aci {
        Aci::new(&manifest("example.com/app", &[], json!({})))
    }

    fn assert_unsafe(result: Result<(), StoreError>, reason: &str) {
        match result {
            Err(StoreError::Unsafe { reason: got, .. }) => assert!(got.contains(reason), "{got:?}"),
            other => panic!("expected Unsafe({reason}), got {other:?}"),
        }
    }

    /// A Docker/OCI layer: (name, kind, link target, data) entries, no manifest.
    fn layer(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind, target, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if *kind == EntryType::Symlink {
                tar.append_link(&mut h, name, target).expect("link");
            } else {
                tar.append_data(&mut h, name, *data).expect("entry");
            }
        }
        tar.into_inner().expect("tar")
    }

    #[test]
    fn layer_whiteouts_remove_only_inside_the_root() {
        let f = Fixture::new();
        let fd = crate::fsutil::open_dir(&f.root).expect("open root");
        let canary = f.canary_str();
        unpack_layer(
            &layer(&[
                ("a/", EntryType::Directory, "", b""),
                ("a/gone", EntryType::Regular, "", b"g"),
                ("a/kept", EntryType::Regular, "", b"k"),
                ("d/old/deep", EntryType::Regular, "", b"o"),
                ("escape", EntryType::Symlink, &canary, b""),
            ])[..],
            fd.as_fd(),
        )
        .expect("lower layer");
        unpack_layer(
            &layer(&[
                ("a/.wh.gone", EntryType::Regular, "", b""),
                ("d/.wh..wh..opq", EntryType::Regular, "", b""),
                ("d/new", EntryType::Regular, "", b"n"),
                // Through a symlink to the canary: resolved inside the root, finds nothing.
                ("escape/.wh.secret", EntryType::Regular, "", b""),
            ])[..],
            fd.as_fd(),
        )
        .expect("upper layer");
        assert!(!f.root.join("a/gone").exists());
        assert!(f.root.join("a/kept").exists());
        assert!(!f.root.join("d/old").exists());
        assert!(f.root.join("d/new").exists());
        assert!(!f.root.join("a/.wh.gone").exists(), "whiteouts are not files");
        for name in [".wh..", "a/.wh..."] {
            assert_unsafe(
                unpack_layer(&layer(&[(name, EntryType::Regular, "", b"")])[..], fd.as_fd()),
                "whiteout of",
            );
        }
        assert!(f.root.join("a/kept").exists());
        f.assert_canary_untouched();
    }

    #[test]
    fn dotdot_names_are_refused() {
        let f = Fixture::new();
        assert_unsafe(
            f.unpack(aci().raw(b"rootfs/../escape", EntryType::Regular, b"", b"x")),
            "`..`",
        );
        assert_unsafe(
            f.unpack(aci().raw(b"../escape", EntryType::Regular, b"", b"x")),
            "`..`",
        );
        assert_unsafe(
            f.unpack(aci().raw(b"rootfs/a/../../escape", EntryType::Directory, b"", b"")),
            "`..`",
        );
        f.assert_canary_untouched();
    }

    #[test]
    fn absolute_names_are_refused() {
        let f = Fixture::new();
        let name = format!("{}/abs", f.canary_str());
        assert_unsafe(
            f.unpack(aci().raw(name.as_bytes(), EntryType::Regular, b"", b"x")),
            "absolute",
        );
        f.assert_canary_untouched();
    }

    #[test]
    fn writing_through_a_planted_symlink_stays_inside() {
        let f = Fixture::new();
        // The symlink resolves inside the root, where its target does not exist.
        let err = f
            .unpack(
                aci()
                    .symlink("rootfs/evil", &f.canary_str())
                    .file("rootfs/evil/file", b"payload"),
            )
            .expect_err("dangling inside the root");
        assert!(err.to_string().contains("rootfs/evil/file"), "{err}");
        f.assert_canary_untouched();

        // Where the image itself provides the target, the write lands there.
        let f = Fixture::new();
        f.unpack(
            aci()
                .dir(&format!("rootfs{}", f.canary_str()), 0o755)
                .symlink("rootfs/evil", &f.canary_str())
                .file("rootfs/evil/file", b"payload")
                .dir("rootfs/evil/sub", 0o755)
                .symlink("rootfs/up", "../../../../../..")
                .file("rootfs/up/file2", b"payload"),
        )
        .expect("unpack");
        f.assert_canary_untouched();
        let inside = f.root.join(f.canary.strip_prefix("/").expect("abs"));
        assert_eq!(std::fs::read(inside.join("file")).expect("read"), b"payload");
        assert!(inside.join("sub").is_dir());
        assert_eq!(std::fs::read(f.root.join("file2")).expect("read"), b"payload");
        assert!(
            f.root
                .join("evil")
                .symlink_metadata()
                .expect("lstat")
                .is_symlink()
        );
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let f = Fixture::new();
        let target = format!("{}/secret", f.canary_str());
        f.unpack(aci().symlink("rootfs/l", &target).file("rootfs/l", b"evil"))
            .expect("unpack");
        f.assert_canary_untouched();
        assert_eq!(std::fs::read(f.root.join("l")).expect("read"), b"evil");
    }

    #[test]
    fn hard_links_cannot_reach_host_files() {
        let f = Fixture::new();
        let secret = format!("{}/secret", f.canary_str());
        // Absolute link target.
        assert_unsafe(
            f.unpack(aci().raw(b"rootfs/h", EntryType::Link, secret.as_bytes(), b"")),
            "absolute",
        );
        // `..` in the link target.
        assert_unsafe(
            f.unpack(aci().raw(b"rootfs/h", EntryType::Link, b"rootfs/../../canary/secret", b"")),
            "`..`",
        );
        // Outside rootfs/.
        assert_unsafe(
            f.unpack(aci().raw(b"rootfs/h", EntryType::Link, b"manifest", b"")),
            "outside rootfs",
        );
        // Through a symlink that points at the host: resolved inside the root,
        // where there is no such file.
        let err = f
            .unpack(
                aci()
                    .symlink("rootfs/c", &f.canary_str())
                    .hardlink("rootfs/h", "rootfs/c/secret"),
            )
            .expect_err("no such file inside the root");
        assert!(err.to_string().contains("rootfs/h"), "{err}");
        f.assert_canary_untouched();
        assert!(!f.root.join("h").exists());
    }

    #[test]
    fn hard_links_inside_the_root_work() {
        let f = Fixture::new();
        f.unpack(
            aci()
                .file("rootfs/bin/a", b"binary")
                .symlink("rootfs/lib", "/bin")
                .hardlink("rootfs/b", "rootfs/bin/a")
                .hardlink("rootfs/c", "rootfs/lib/a"),
        )
        .expect("unpack");
        let ino = |p: &str| std::fs::metadata(f.root.join(p)).expect("stat").ino();
        assert_eq!(ino("bin/a"), ino("b"));
        assert_eq!(ino("bin/a"), ino("c"));
        assert_unsafe(
            f.unpack(aci().dir("rootfs/d", 0o755).hardlink("rootfs/e", "rootfs/d")),
            "directory",
        );
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let f = Fixture::new();
        let err = f
            .unpack(
                aci()
                    .symlink("rootfs/a", "b")
                    .symlink("rootfs/b", "a")
                    .file("rootfs/a/x", b"x"),
            )
            .expect_err("loop");
        let msg = err.to_string();
        assert!(
            msg.contains("rootfs/a/x") && msg.contains("symbolic links"),
            "{msg}"
        );
        f.assert_canary_untouched();
    }

    #[test]
    fn device_nodes_are_skipped_fifos_created() {
        let f = Fixture::new();
        f.unpack(
            aci()
                .device("rootfs/dev/sda", EntryType::Block, 8, 0)
                .device("rootfs/dev/mem", EntryType::Char, 1, 1)
                .fifo("rootfs/run/pipe")
                .file("rootfs/after", b"still extracted"),
        )
        .expect("unpack");
        assert!(!f.root.join("dev/sda").exists());
        assert!(!f.root.join("dev/mem").exists());
        let fifo = std::fs::symlink_metadata(f.root.join("run/pipe")).expect("fifo");
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o640);
        assert!(f.root.join("after").exists());
    }

    #[test]
    fn duplicate_entries_last_wins_but_never_over_a_full_directory() {
        let f = Fixture::new();
        f.unpack(
            aci()
                .file("rootfs/f", b"first")
                .file("rootfs/f", b"second")
                .file("rootfs/g", b"file")
                .dir("rootfs/g", 0o750)
                .dir("rootfs/e", 0o755)
                .file("rootfs/e", b"replaces an empty dir")
                .dir("rootfs/d", 0o755)
                .dir("rootfs/d", 0o700),
        )
        .expect("unpack");
        assert_eq!(std::fs::read(f.root.join("f")).expect("read"), b"second");
        assert!(f.root.join("g").is_dir());
        assert_eq!(
            std::fs::read(f.root.join("e")).expect("read"),
            b"replaces an empty dir"
        );
        assert_eq!(
            std::fs::metadata(f.root.join("d")).expect("stat").mode() & 0o7777,
            0o700
        );
        assert_unsafe(
            f.unpack(aci().file("rootfs/full/x", b"x").file("rootfs/full", b"y")),
            "non-empty directory",
        );
    }

    #[test]
    fn over_long_paths_are_errors_long_names_work() {
        let f = Fixture::new();
        let long_ok = format!("rootfs/{}file", "abcdefghij/".repeat(30));
        f.unpack(aci().file(&long_ok, b"deep")).expect("330-byte path");
        assert_eq!(
            std::fs::read(f.root.join(long_ok.trim_start_matches("rootfs/"))).expect("read"),
            b"deep"
        );
        let too_long = format!("rootfs/{}f", "d/".repeat(2100));
        assert_unsafe(f.unpack(aci().file(&too_long, b"x")), "PATH_MAX");
        let long_name = format!("rootfs/{}", "n".repeat(300));
        assert_unsafe(f.unpack(aci().file(&long_name, b"x")), "NAME_MAX");
    }

    #[test]
    fn owners_modes_and_times_are_kept() {
        let f = Fixture::new();
        f.unpack(
            aci()
                .dir("rootfs/d", 0o751)
                .file_owned("rootfs/d/suid", b"#!", 0o4755, 1234, 5678, 1_000_000)
                .file_owned("rootfs/d/sgid", b"#!", 0o2711, 0, 42, 2_000_000),
        )
        .expect("unpack");
        let meta = |p: &str| std::fs::symlink_metadata(f.root.join(p)).expect("stat");
        let suid = meta("d/suid");
        assert_eq!(
            (suid.mode() & 0o7777, suid.uid(), suid.gid()),
            (0o4755, 1234, 5678)
        );
        assert_eq!(suid.mtime(), 1_000_000);
        assert_eq!(meta("d/sgid").mode() & 0o7777, 0o2711);
        let d = meta("d");
        assert_eq!(d.mode() & 0o7777, 0o751);
        assert_eq!(
            d.mtime(),
            testutil::MTIME as i64,
            "directory mtime survives its children"
        );
        assert_eq!(
            meta("").mode() & 0o7777,
            0o755,
            "rootfs/ entry applies to the root"
        );
    }

    #[test]
    fn rootfs_must_be_a_directory() {
        let f = Fixture::new();
        let m = manifest("example.com/app", &[], json!({}));
        assert_unsafe(
            f.unpack(
                Aci::bare()
                    .manifest(&m)
                    .raw(b"rootfs", EntryType::Regular, b"", b"x"),
            ),
            "must be a directory",
        );
    }

    #[test]
    fn entry_paths_are_normalised_or_refused() {
        let p = |s: &[u8]| rootfs_path(s).map(|o| o.map(|p| p.to_string_lossy().into_owned()));
        assert_eq!(p(b"rootfs/a/b").expect("ok"), Some("a/b".into()));
        assert_eq!(p(b"./rootfs//a/./b/").expect("ok"), Some("a/b".into()));
        assert_eq!(p(b"rootfs").expect("ok"), Some("".into()));
        assert_eq!(p(b"manifest").expect("ok"), None);
        assert_eq!(p(b"rootfsx/a").expect("ok"), None);
        assert!(p(b"/rootfs/a").is_err());
        assert!(p(b"rootfs/a/..").is_err());
    }

    fn raw_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let fd = std::fs::File::open(path).expect("open");
        let name = std::ffi::CString::new(name).expect("name");
        let mut buf = vec![0u8; 256];
        // SAFETY: `buf` is writable for its length, `name` NUL-terminated, `fd` open.
        let n = unsafe {
            libc::fgetxattr(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        usize::try_from(n).ok().map(|n| buf[..n].to_vec())
    }

    #[test]
    fn allowed_xattrs_are_kept_through_render_and_copy_and_trusted_ones_refused() {
        // A v2 file capability: effective, permitted CAP_NET_RAW (13).
        let cap: &[u8] = &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let f = Fixture::new();
        let archive = aci()
            .xattrs(&[
                ("user.origin", b"image"),
                ("security.capability", cap),
                ("trusted.overlay.opaque", b"y"),
            ])
            .file("rootfs/ping", b"#!/bin/true\n")
            .xattrs(&[("user.dir", b"d")])
            .dir("rootfs/etc", 0o755);
        f.unpack(archive).expect("unpack");
        let ping = f.root.join("ping");
        assert_eq!(raw_xattr(&ping, "user.origin").as_deref(), Some(&b"image"[..]));
        assert_eq!(raw_xattr(&ping, "security.capability").as_deref(), Some(cap));
        assert_eq!(
            raw_xattr(&ping, "trusted.overlay.opaque"),
            None,
            "trusted.* is the host's"
        );
        assert_eq!(
            raw_xattr(&f.root.join("etc"), "user.dir").as_deref(),
            Some(&b"d"[..])
        );

        let copy = f.root.parent().expect("parent").join("copy");
        crate::store::copy_tree(&f.root, &copy).expect("copy");
        assert_eq!(
            raw_xattr(&copy.join("ping"), "security.capability").as_deref(),
            Some(cap)
        );
        assert_eq!(
            raw_xattr(&copy.join("etc"), "user.dir").as_deref(),
            Some(&b"d"[..])
        );
    }
}
