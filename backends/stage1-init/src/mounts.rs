//! Builds each app's view inside the pod: its rootfs (already in place at
//! `/opt/stage2/<app>/rootfs`) gets /dev, /proc, /sys (read-only), a tmpfs /tmp,
//! the pod's volumes and the pod's /etc/hosts and /etc/resolv.conf.
//!
//! Every mount goes through [`Mounter`], so the sequence is unit-tested without
//! root. Targets are created and resolved inside the app's root (openat2
//! RESOLVE_IN_ROOT) and mounted onto `/proc/self/fd/N`: an image's symlink can
//! never point a mount at the stage1 rootfs. These mounts live in the pod's mount
//! namespace (nspawn's) and vanish with it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use rkt_engine::fsutil;
use rkt_engine::pod::protocol::{self, EtcFile};
use rkt_engine::stage::launch::VolumeBind;

use crate::InitError;

pub trait Mounter {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
}

/// The kernel.
pub struct Kernel;

impl Mounter for Kernel {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
}

/// The pod's own kernel filesystems, bound into every app (recursively: /dev
/// carries pts, shm and mqueue, /proc nspawn's read-only overmounts).
const POD_BINDS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Assembles the app's root at `root_dir`. `binds` are the app's volumes as
/// planned; each one's source is the pod-side copy stage0 bound in
/// ([`protocol::volume`]).
pub fn assemble(sys: &dyn Mounter, root_dir: &Path, binds: &[VolumeBind]) -> Result<(), InitError> {
    let root = fsutil::open_dir(root_dir)
        .map_err(|e| InitError::io(format!("opening {}", root_dir.display()), e))?;
    // Resolved before anything is bound, so nothing below is ever created through
    // the pod's /dev, /proc or /sys.
    let mut pod_targets = Vec::with_capacity(POD_BINDS.len());
    for dir in POD_BINDS {
        pod_targets.push((dir, dir_in_root(root.as_fd(), dir, 0o755)?));
    }
    let tmp = dir_in_root(root.as_fd(), "/tmp", 0o1777)?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &fsutil::proc_fd_path(tmp.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| InitError::mount("a tmpfs on /tmp", e))?;
    drop(tmp);

    for bind in binds {
        let source = protocol::volume(&bind.volume).inside();
        let what = format!("volume {:?} on {}", bind.volume, bind.target);
        bind_into(
            sys,
            root.as_fd(),
            &source,
            Path::new(&bind.target),
            bind.recursive,
            bind.read_only,
            &what,
        )?;
    }
    for file in EtcFile::ALL {
        let source = protocol::etc_file(file).inside();
        // A volume the app mounts there or above wins (the kubelet's own
        // /etc/hosts), and nothing is made inside a volume.
        let covered = binds
            .iter()
            .any(|b| Path::new(file.app_path()).starts_with(Path::new(&b.target)));
        if source.exists() && !covered {
            bind_into(
                sys,
                root.as_fd(),
                &source,
                Path::new(file.app_path()),
                false,
                true,
                file.app_path(),
            )?;
        }
    }
    for (dir, target) in pod_targets {
        let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
        sys.mount(
            Some(Path::new(dir)),
            &fsutil::proc_fd_path(target.as_fd()),
            None,
            rbind,
            None,
        )
        .map_err(|e| InitError::mount(format!("the pod's {dir}"), e))?;
        if dir == "/sys" {
            remount_read_only(sys, root.as_fd(), Path::new(dir), "/sys")?;
        }
    }
    Ok(())
}

fn bind_into(
    sys: &dyn Mounter,
    root: BorrowedFd<'_>,
    source: &Path,
    target: &Path,
    recursive: bool,
    read_only: bool,
    what: &str,
) -> Result<(), InitError> {
    let is_dir = std::fs::metadata(source)
        .map_err(|e| InitError::io(format!("{what}: {}", source.display()), e))?
        .is_dir();
    let target_fd = if is_dir {
        fsutil::mkdir_all_in_root(root, target, Mode::from_bits_truncate(0o755))
    } else {
        file_in_root(root, target)
    }
    .map_err(|e| InitError::io(format!("{what}: creating the target"), e))?;
    let id = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    if id(root).ok() == id(target_fd.as_fd()).ok() {
        return Err(InitError::Invalid(format!(
            "{what}: the target resolves to the app's root directory"
        )));
    }
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    sys.mount(
        Some(source),
        &fsutil::proc_fd_path(target_fd.as_fd()),
        None,
        flags,
        None,
    )
    .map_err(|e| InitError::mount(what, e))?;
    drop(target_fd);
    if read_only {
        remount_read_only(sys, root, target, what)?;
    }
    Ok(())
}

/// rkt's path isolation of one app, after [`assemble`]: the root read-only
/// (a recursive bind of itself, so volumes stay writable), kernel tunables
/// read-only, kernel paths masked (directories by an empty read-only tmpfs,
/// files by /dev/null). Paths the app does not have are skipped.
pub fn confine(
    sys: &dyn Mounter,
    root_dir: &Path,
    read_only_rootfs: bool,
    read_only_paths: &[String],
    masked_paths: &[String],
) -> Result<(), InitError> {
    if read_only_rootfs {
        sys.mount(
            Some(root_dir),
            root_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(|e| InitError::mount("the app's root onto itself", e))?;
        sys.mount(
            None,
            root_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(root_dir),
            None,
        )
        .map_err(|e| InitError::mount("the app's root read-only", e))?;
    }
    if read_only_paths.is_empty() && masked_paths.is_empty() {
        return Ok(());
    }
    let root = fsutil::open_dir(root_dir)
        .map_err(|e| InitError::io(format!("opening {}", root_dir.display()), e))?;
    let open = |path: &str| match fsutil::open_in_root(
        root.as_fd(),
        Path::new(path),
        OFlag::O_PATH,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(InitError::io(format!("{path}: opening it in the app's root"), e)),
    };
    for path in read_only_paths {
        let Some(fd) = open(path)? else { continue };
        let target = fsutil::proc_fd_path(fd.as_fd());
        sys.mount(
            Some(&target),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(|e| InitError::mount(format!("{path} onto itself"), e))?;
        remount_read_only(sys, root.as_fd(), Path::new(path), path)?;
    }
    for path in masked_paths {
        let Some(fd) = open(path)? else { continue };
        let target = fsutil::proc_fd_path(fd.as_fd());
        let is_dir = nix::sys::stat::fstat(fd.as_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(false);
        let made = if is_dir {
            sys.mount(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=000"),
            )
        } else {
            sys.mount(
                Some(Path::new("/dev/null")),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )
        };
        made.map_err(|e| InitError::mount(format!("a mask over {path}"), e))?;
    }
    Ok(())
}

/// Remounts the mount now on top of `target` read-only: the target is resolved
/// again, so the fd names the new bind, not the directory beneath it.
fn remount_read_only(
    sys: &dyn Mounter,
    root: BorrowedFd<'_>,
    target: &Path,
    what: &str,
) -> Result<(), InitError> {
    let fd = fsutil::open_in_root(root, target, OFlag::O_PATH, Mode::empty())
        .map_err(|e| InitError::io(format!("{what}: reopening the target"), e))?;
    let path = fsutil::proc_fd_path(fd.as_fd());
    sys.mount(
        None,
        &path,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | locked_flags(&path),
        None,
    )
    .map_err(|e| InitError::mount(format!("{what} read-only"), e))
}

/// The flags of the mount at `path` a remount must repeat: in a user
/// namespace (`--private-users`) the kernel locks nosuid, nodev, noexec and
/// the atime flags of mounts it inherited, and refuses a remount that would
/// drop one (EPERM).
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| f.contains(*st))
    .fold(MsFlags::empty(), |m, (_, ms)| m | ms)
}

fn dir_in_root(root: BorrowedFd<'_>, path: &str, mode: u32) -> Result<OwnedFd, InitError> {
    fsutil::mkdir_all_in_root(root, Path::new(path), Mode::from_bits_truncate(mode))
        .map_err(|e| InitError::io(format!("creating {path} in the app's rootfs"), e))
}

fn file_in_root(root: BorrowedFd<'_>, target: &Path) -> std::io::Result<OwnedFd> {
    match fsutil::open_in_root(root, target, OFlag::O_PATH, Mode::empty()) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => return other,
    }
    if let Some(parent) = target.parent() {
        fsutil::mkdir_all_in_root(root, parent, Mode::from_bits_truncate(0o755))?;
    }
    fsutil::open_in_root(
        root,
        target,
        OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        Mode::from_bits_truncate(0o644),
    )
}

/// The pod's /dev as nspawn made it lacks `console` unless it gave the pod a
/// terminal; apps expect one, so it is /dev/null there.
pub fn ensure_console(sys: &dyn Mounter, dev: &Path) -> Result<(), InitError> {
    let console: PathBuf = dev.join("console");
    if console.exists() {
        return Ok(());
    }
    std::fs::File::create(&console).map_err(|e| InitError::io("creating /dev/console", e))?;
    sys.mount(Some(&dev.join("null")), &console, None, MsFlags::MS_BIND, None)
        .map_err(|e| InitError::mount("/dev/null on /dev/console", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// source, target (as the fd resolves), fstype, flags.
    type Call = (Option<String>, String, Option<String>, MsFlags);

    #[derive(Default)]
    struct Recording(RefCell<Vec<Call>>);

    impl Mounter for Recording {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            _data: Option<&str>,
        ) -> nix::Result<()> {
            let real = std::fs::read_link(target).unwrap_or_else(|_| target.to_path_buf());
            self.0.borrow_mut().push((
                source.map(|s| s.display().to_string()),
                real.display().to_string(),
                fstype.map(str::to_string),
                flags,
            ));
            Ok(())
        }
    }

    #[test]
    fn kernel_filesystems_are_resolved_first_and_bound_last_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // An image whose /dev points out of itself: the bind must land inside.
        std::os::unix::fs::symlink("/etc", root.join("dev")).unwrap();
        let sys = Recording::default();
        assemble(&sys, &root, &[]).unwrap();
        let calls = sys.0.borrow();
        let r = |p: &str| root.join(p).display().to_string();
        let targets: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(targets, [r("tmp"), r("etc"), r("proc"), r("sys"), r("sys")]);
        assert_eq!(calls[0].2.as_deref(), Some("tmpfs"));
        assert_eq!(calls[1].0.as_deref(), Some("/dev"));
        assert!(calls[4].3.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT));
    }

    #[test]
    fn a_volume_over_the_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        let sys = Recording::default();
        let rootfd = fsutil::open_dir(&root).unwrap();
        let err = bind_into(
            &sys,
            rootfd.as_fd(),
            dir.path(),
            Path::new("/.."),
            false,
            false,
            "v",
        )
        .unwrap_err();
        assert!(err.to_string().contains("app's root directory"), "{err}");
        assert!(sys.0.borrow().is_empty());
    }
}
