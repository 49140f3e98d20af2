//! Filesystem primitives every other module leans on: crash-safe writes, mount-aware
//! tree removal, and path resolution that can never leave a root directory.
//!
//! Two rules live here so nobody has to remember them elsewhere:
//! - a file is never half-written: temp file, rename; plus fsync of the file and
//!   the parent when it must survive a crash on its own (`atomic_write`). Files that
//!   only mean something together (a pod being prepared) use `replace_file` and are
//!   made durable as a group with one `sync_filesystem` before the step that
//!   publishes them;
//! - a tree is never deleted across a mount point: unmount what /proc/self/mountinfo
//!   lists under it (deepest first), then walk it refusing to leave its device.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, fstatat};
use nix::unistd::UnlinkatFlags;

/// Writes `bytes` to `path` so that a reader sees either the old content or the new
/// one, never a mixture, even across a crash.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_via_temp(path, bytes, true)
}

/// Like `atomic_write` for concurrent readers (they see the old or the new file,
/// never a partial one), but not yet durable: after a crash the old content, or
/// no file, may be back. For files a later `sync_filesystem` publishes as a group.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_via_temp(path, bytes, false)
}

/// Flushes everything written to the filesystem holding `fd` (syncfs(2)): one call
/// where a group of files becomes durable together.
pub fn sync_filesystem(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::syncfs(fd).map_err(io::Error::from)
}

fn write_via_temp(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp = dir.join(".tmp-");
    tmp.as_mut_os_string().push(name);
    tmp.as_mut_os_string()
        .push(format!("-{}-{}", std::process::id(), unique_suffix()));
    let result = (|| {
        let mut file = File::options().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable { fsync_dir(dir) } else { Ok(()) }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A suffix unique within this process, so concurrent writers never share a temp name.
pub fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos << 20) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// What identifies files' content without reading it: path, device, inode,
/// size, mtime and ctime of each (ctime moves on every write and cannot be set
/// back), plus `extra`; 32 hex digits. None when one cannot be stat'ed.
pub fn stat_key(paths: &[&Path], extra: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut text = extra.to_string();
    for path in paths {
        let m = std::fs::metadata(path).ok()?;
        text.push_str(&format!(
            "\n{}:{}:{}:{}:{}.{}:{}.{}",
            path.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ));
    }
    Some(hex::encode(&Sha256::digest(text.as_bytes())[..16]))
}

/// Makes a rename or a newly created entry in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// One line of /proc/self/mountinfo, reduced to what removal needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses mountinfo text (see proc(5)); lines it cannot read are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_id = fields.next()?.parse().ok()?;
            let parent_id = fields.next()?.parse().ok()?;
            let _dev = fields.next()?;
            let _root = fields.next()?;
            let mount_point = PathBuf::from(unescape_mountinfo(fields.next()?));
            let fs_type = fields.skip_while(|f| *f != "-").nth(1)?.to_string();
            Some(MountEntry {
                mount_id,
                parent_id,
                mount_point,
                fs_type,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// Mount points at or below `root`, deepest first (the order to unmount them in).
pub fn mounts_under(root: &Path) -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(select_mounts_under(&parse_mountinfo(&text), root))
}

fn select_mounts_under(entries: &[MountEntry], root: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = entries
        .iter()
        .filter(|e| e.mount_point.starts_with(root))
        .map(|e| e.mount_point.clone())
        .collect();
    // Deepest first; among equal depth, later mounts first (they stack on earlier ones).
    points.reverse();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// Unmounts everything mounted at or below `root`, deepest first. A mount that is
/// busy is detached lazily so it can no longer be reached through `root`.
pub fn unmount_all_under(root: &Path) -> io::Result<()> {
    let root = match std::fs::canonicalize(root) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    unmount_points(&mounts_under(&root)?)
}

/// Unmounts `points` (deepest first, as `mounts_under` lists them).
fn unmount_points(points: &[PathBuf]) -> io::Result<()> {
    for point in points {
        // Unmount exactly the directory mountinfo names: resolved without following
        // any symlink (one swapped into a path component could otherwise point the
        // unmount at a host mount), then unmounted through its fd.
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match openat2(nix::fcntl::AT_FDCWD, point.as_path(), how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                return Err(io::Error::other(format!(
                    "cannot open mount point {} without following symlinks: {e}",
                    point.display()
                )));
            }
        };
        let target = proc_fd_path(fd.as_fd());
        match nix::mount::umount2(&target, nix::mount::MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(Errno::EBUSY) => {
                nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)?;
            }
            Err(e) => return Err(io::Error::other(format!("unmount {}: {e}", point.display()))),
        }
    }
    Ok(())
}

/// Unmounts everything below `root`, then deletes it without ever descending into a
/// directory that lives on another device than `root` itself. Meeting one is an
/// error: it means something is still mounted there and deleting would wipe it.
pub fn remove_tree(root: &Path) -> io::Result<()> {
    unmount_all_under(root)?;
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(root);
    }
    use std::os::unix::fs::MetadataExt;
    let dev = meta.dev();
    let fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    remove_children(fd, dev, root)?;
    match std::fs::remove_dir(root) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Empties the directory `root_fd` (on device `dev`) depth first, holding at most
/// two descriptors whatever the depth: a tree an image or an app made arbitrarily
/// deep must neither exhaust descriptors nor the stack, or gc could never delete it.
/// Going back up re-opens `..` and checks it is the directory we came from (device
/// and inode): if the tree is moved under us, we stop rather than delete elsewhere.
fn remove_children(root_fd: OwnedFd, dev: u64, shown: &Path) -> io::Result<()> {
    // The way down: for each level, the name we entered it by and its parent's id.
    let mut path: Vec<(CString, (u64, u64))> = Vec::new();
    let mut dir = root_fd;
    loop {
        match remove_plain_children(dir.as_fd(), dev, shown, &path)? {
            Some(subdir) => {
                let here = dir_id(dir.as_fd())?;
                let child = match nix::fcntl::openat(
                    dir.as_fd(),
                    subdir.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                path.push((subdir, here));
                dir = child;
                crate::failpoint::failpoint("gc.deleting");
            }
            None => {
                let Some((name, parent_id)) = path.pop() else {
                    return Ok(());
                };
                let parent = nix::fcntl::openat(
                    dir.as_fd(),
                    "..",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io::Error::from)?;
                if dir_id(parent.as_fd())? != parent_id {
                    return Err(io::Error::other(format!(
                        "{} changed while it was being deleted; stopping",
                        shown.display()
                    )));
                }
                dir = parent;
                match nix::unistd::unlinkat(dir.as_fd(), name.as_c_str(), UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Deletes everything in `dir` but subdirectories and returns the first of those
/// (None: `dir` is empty). A subdirectory on another device is an error: something
/// is mounted there, and deleting would wipe it.
fn remove_plain_children(
    dir: BorrowedFd<'_>,
    dev: u64,
    shown: &Path,
    path: &[(CString, (u64, u64))],
) -> io::Result<Option<CString>> {
    let dup = nix::unistd::dup(dir).map_err(io::Error::from)?;
    let mut listing = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let mut names: Vec<CString> = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    drop(listing);
    let mut first_subdir = None;
    for name in names {
        let st = match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            match nix::unistd::unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        if st.st_dev != dev {
            let mut at = shown.to_path_buf();
            at.extend(path.iter().map(|(n, _)| OsStr::from_bytes(n.to_bytes())));
            at.push(OsStr::from_bytes(name.to_bytes()));
            return Err(io::Error::other(format!(
                "refusing to delete across a mount point at {}",
                at.display()
            )));
        }
        first_subdir.get_or_insert(name);
    }
    Ok(first_subdir)
}

fn dir_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    Ok((st.st_dev, st.st_ino))
}

/// Opens `path` as seen from inside `root`: `..`, absolute names and symlinks are
/// all resolved as if `root` were `/`, so the result can never lie outside it.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
    let rel = relative_to_root(path);
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match openat2(root, rel.as_path(), how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Strips leading `/` so a path can be resolved relative to a root fd; `.` for empty.
pub fn relative_to_root(path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

/// Creates every directory of `path` inside `root` (resolving each step inside the
/// root) and returns an `O_PATH` fd of the last one.
pub fn mkdir_all_in_root(root: BorrowedFd<'_>, path: &Path, mode: Mode) -> io::Result<OwnedFd> {
    let rel = relative_to_root(path);
    let mut prefix = PathBuf::new();
    let mut last: Option<OwnedFd> = None;
    for comp in rel.components() {
        let name = match comp {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            // `..` is resolved inside the root by openat2; keep it in the prefix.
            // The fd of the last name made is no longer what the path names.
            Component::ParentDir => {
                prefix.push("..");
                last = None;
                continue;
            }
            _ => continue,
        };
        let parent = open_in_root(
            root,
            if prefix.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &prefix
            },
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?;
        match nix::sys::stat::mkdirat(parent.as_fd(), name, mode) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        prefix.push(name);
        last = Some(open_in_root(
            root,
            &prefix,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?);
    }
    match last {
        Some(fd) => Ok(fd),
        None if prefix.as_os_str().is_empty() => open_in_root(
            root,
            Path::new("."),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        ),
        None => open_in_root(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()),
    }
}

/// `/proc/self/fd/N`: a path naming exactly the object behind `fd`, for syscalls
/// (mount) that take paths but must act on an already-resolved location.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens a directory as a plain fd, for use as the root of `open_in_root`.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_key_changes_when_a_file_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"one").expect("write");
        let before = stat_key(&[&file], "x").expect("key");
        assert_eq!(stat_key(&[&file], "x").expect("key"), before);
        assert_ne!(stat_key(&[&file], "y").expect("key"), before);
        std::fs::write(&file, b"two").expect("write");
        // Same size, same second: ctime's nanoseconds tell.
        assert_ne!(stat_key(&[&file], "x").expect("key"), before);
        assert_eq!(stat_key(&[&dir.path().join("missing")], "x"), None);
    }

    #[test]
    fn mountinfo_is_parsed_and_unescaped() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 36 0:5 / /mnt/with\\040space/sub rw - tmpfs tmpfs rw\n\
                    garbage line\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(entries[0].fs_type, "ext3");
        assert_eq!(entries[1].parent_id, 36);
    }

    #[test]
    fn mounts_are_ordered_deepest_first() {
        let text = "1 0 0:1 / /a rw - tmpfs t rw\n\
                    2 1 0:2 / /a/b rw - tmpfs t rw\n\
                    3 2 0:3 / /a/b/c rw - tmpfs t rw\n\
                    4 1 0:4 / /ab rw - tmpfs t rw\n";
        let got = select_mounts_under(&parse_mountinfo(text), Path::new("/a"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/a/b/c"),
                PathBuf::from("/a/b"),
                PathBuf::from("/a")
            ]
        );
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        atomic_write(&path, b"one").expect("write");
        atomic_write(&path, b"two").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn replace_file_replaces_content_without_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        replace_file(&path, b"one").expect("write");
        replace_file(&path, b"two").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp file left"
        );
        sync_filesystem(open_dir(dir.path()).expect("open").as_fd()).expect("syncfs");
    }

    #[test]
    fn open_in_root_cannot_escape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("../../..", root.join("up")).expect("symlink");
        let rootfd = open_dir(&root).expect("open root");
        let made = mkdir_all_in_root(
            rootfd.as_fd(),
            Path::new("/escape/inside"),
            Mode::from_bits_truncate(0o755),
        )
        .expect("mkdir through symlink");
        drop(made);
        assert!(
            root.join("etc/inside").is_dir(),
            "absolute symlink resolved inside the root"
        );
        assert!(!Path::new("/etc/inside").exists());
        let up =
            open_in_root(rootfd.as_fd(), Path::new("up/etc"), OFlag::O_PATH, Mode::empty()).expect("open");
        let target = std::fs::read_link(proc_fd_path(up.as_fd())).expect("readlink");
        assert_eq!(target, root.join("etc"));
    }

    /// The fd must name what `open_in_root` of the same path names: callers mount
    /// on it and later find the mount again by path (fly's read-only remount).
    #[test]
    fn mkdir_all_in_root_returns_the_directory_the_path_names() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfd = open_dir(dir.path()).expect("open root");
        for (path, names) in [("a/b/..", "a"), ("a/b/../..", ""), ("a/b/../c", "a/c")] {
            let fd = mkdir_all_in_root(rootfd.as_fd(), Path::new(path), Mode::from_bits_truncate(0o755))
                .expect("mkdir");
            let got = File::from(fd).metadata().expect("fstat").ino();
            let want = std::fs::metadata(dir.path().join(names)).expect("stat").ino();
            assert_eq!(got, want, "{path} should name {names:?}");
        }
    }

    #[test]
    fn remove_tree_handles_trees_deeper_than_the_descriptor_limit() {
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
        let depth = soft + 64;
        if depth > 200_000 {
            eprintln!("skipped: the descriptor limit ({soft}) is too high to exceed cheaply");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("deep");
        std::fs::create_dir(&root).expect("mkdir");
        // Built holding one descriptor at a time: the path is far beyond PATH_MAX.
        let mut fd = open_dir(&root).expect("open");
        for _ in 0..depth {
            nix::sys::stat::mkdirat(fd.as_fd(), "d", Mode::from_bits_truncate(0o755)).expect("mkdirat");
            fd = nix::fcntl::openat(
                fd.as_fd(),
                "d",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .expect("openat");
        }
        nix::fcntl::openat(
            fd.as_fd(),
            "leaf",
            OFlag::O_CREAT | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o644),
        )
        .expect("leaf");
        drop(fd);
        remove_tree(&root).expect("remove a tree deeper than the fd limit");
        assert!(!root.exists());
    }

    #[test]
    fn a_listed_mount_point_behind_a_symlink_is_refused_not_followed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let host_mount = dir.path().join("host-mount");
        std::fs::create_dir(&host_mount).expect("mkdir");
        nix::mount::mount(
            Some("tmpfs"),
            &host_mount,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount tmpfs");
        let _cleanup = Unmount(host_mount.clone());
        std::fs::write(host_mount.join("keep"), b"x").expect("write");
        // What a path read from mountinfo becomes if a component is swapped for a
        // symlink before it is unmounted: it now leads to another mount.
        let tree = dir.path().join("tree");
        std::os::unix::fs::symlink(dir.path(), &tree).expect("symlink");
        let listed = tree.join("host-mount");

        let result = unmount_points(&[listed]);
        assert!(result.is_err(), "a symlinked mount point must be refused");
        assert!(
            host_mount.join("keep").exists(),
            "the mount behind the symlink is untouched"
        );
    }

    /// Detaches a test mount even when an assertion fails.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn remove_tree_deletes_everything_on_one_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
        std::fs::write(root.join("a/b/c/f"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc", root.join("a/link")).expect("symlink");
        remove_tree(&root).expect("remove");
        assert!(!root.exists());
        assert!(
            Path::new("/etc/passwd").exists(),
            "a symlink is removed, never followed"
        );
    }
}
