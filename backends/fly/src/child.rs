//! What the forked child does between fork and exec: build the app's root in a
//! private mount namespace, pivot into it, take the app's credentials, exec.
//!
//! Every kernel call that changes mounts, roots or credentials goes through
//! [`Syscall`], so [`prepare_root`] is unit-tested without root by recording it.
//!
//! Every mount target below the app's root is created and resolved *inside* that
//! root (`fsutil::mkdir_all_in_root` / `open_in_root`, i.e. openat2
//! RESOLVE_IN_ROOT) and the mount is made onto `/proc/self/fd/N` of the resolved
//! directory: an image whose `/dev` is a symlink to `/etc` gets the host's /dev on
//! *its own* /etc, never on the host's.

use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::fmt::Display;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use rkt_engine::fsutil;
use rkt_engine::pod::layout::{self, AppRootfs};
use rkt_engine::schema::PodManifest;
use rkt_engine::stage::launch::{AppLaunch, VolumeBind, plan_app};

use crate::syscall::Syscall;

/// A failure before exec, as the one line the parent shows the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildError(pub String);

impl ChildError {
    pub fn new(what: impl Display, cause: impl Display) -> Self {
        ChildError(format!("fly: {what}: {cause}"))
    }

    /// Like `new`, with an I/O error shown as strerror only (no "(os error N)").
    pub fn io(what: impl Display, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Self::new(what, Errno::from_raw(n).desc()),
            None => Self::new(what, e),
        }
    }
}

/// What the child needs to build the app's root; all of it computed before fork.
#[derive(Debug, Clone, Copy)]
pub struct RootSpec<'a> {
    pub pod_dir: &'a Path,
    pub manifest: &'a PodManifest,
    pub app: &'a str,
    /// `layout::app_rootfs(pod_dir, app)`: where the app's root gets mounted.
    pub rootfs_dir: &'a Path,
    pub rootfs: &'a AppRootfs,
}

/// Host directories bound into every fly app, recursively (rkt fly's set).
const HOST_BINDS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Builds the app's root and pivots into it; returns the app's launch plan.
///
/// Order: unshare(NEWNS) -> / rslave -> app rootfs (overlay or self-bind) ->
/// plan_app -> /dev, /proc, /sys targets resolved -> tmpfs /tmp -> volume binds
/// (each read-only one remounted right after its bind) -> /dev, /proc, /sys
/// rbinds onto the targets resolved before -> chdir(root) ->
/// pivot_root(".", ".") -> umount2(".", MNT_DETACH) -> chdir("/").
///
/// No unmount is ever needed: every mount made here lives in the child's private
/// namespace, which dies with the app's last process, and `/` is a slave so
/// nothing propagates back to the host.
pub fn prepare_root(sys: &dyn Syscall, spec: &RootSpec<'_>) -> Result<AppLaunch, ChildError> {
    sys.unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| ChildError::new("unshare(CLONE_NEWNS)", e.desc()))?;
    // Slave, not private: host mount events (e.g. a USB disk below a host volume)
    // still reach the app, while nothing done here propagates back to the host.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None,
    )
    .map_err(|e| ChildError::new("making / a recursive slave mount", e.desc()))?;
    mount_rootfs(sys, spec)?;

    // Opened after the mount, so the fd is the root of the overlay / self-bind.
    let root = fsutil::open_dir(spec.rootfs_dir)
        .map_err(|e| ChildError::io(format_args!("opening {}", spec.rootfs_dir.display()), e))?;
    let plan = plan_app(spec.pod_dir, spec.manifest, spec.app, root.as_fd())
        .map_err(|e| ChildError(format!("fly: {e}")))?;

    // Every target is resolved (and created) while the root holds only the image,
    // the app's tmpfs and the volumes bound so far: never through the host's
    // /dev, /proc or /sys, where creating a missing directory would write to the
    // host's kernel filesystems (devtmpfs, cgroupfs, ...). So the host binds'
    // targets are resolved first and bound last.
    let mut host_targets = Vec::with_capacity(HOST_BINDS.len());
    for dir in HOST_BINDS {
        host_targets.push((
            dir,
            dir_in_root(root.as_fd(), dir, Mode::from_bits_truncate(0o755))?,
        ));
    }
    let tmp = dir_in_root(root.as_fd(), "/tmp", Mode::from_bits_truncate(0o1777))?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &fsutil::proc_fd_path(tmp.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| ChildError::new("mounting a tmpfs on /tmp", e.desc()))?;
    drop(tmp);

    for bind in &plan.binds {
        bind_volume(sys, root.as_fd(), bind)?;
    }
    for (dir, target) in host_targets {
        sys.mount(
            Some(Path::new(dir)),
            &fsutil::proc_fd_path(target.as_fd()),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(|e| ChildError::new(format_args!("binding the host's {dir} into the app"), e.desc()))?;
    }
    drop(root);

    // pivot_root(".", ".") stacks the old root on top of the new one at "."; the
    // detach then removes it, leaving no path back to the host's tree.
    sys.chdir(spec.rootfs_dir)
        .map_err(|e| ChildError::new(format_args!("chdir {}", spec.rootfs_dir.display()), e.desc()))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| ChildError::new("pivot_root into the app's rootfs", e.desc()))?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(|e| ChildError::new("detaching the old root", e.desc()))?;
    sys.chdir(Path::new("/"))
        .map_err(|e| ChildError::new("chdir /", e.desc()))?;
    Ok(plan)
}

fn mount_rootfs(sys: &dyn Syscall, spec: &RootSpec<'_>) -> Result<(), ChildError> {
    let target = spec.rootfs_dir;
    match spec.rootfs {
        AppRootfs::Overlay { lower } => {
            let upper = layout::overlay_upper(spec.pod_dir, spec.app);
            let work = layout::overlay_work(spec.pod_dir, spec.app);
            let data = overlay_options(lower, &upper, &work)?;
            let mount = |data: &str| {
                sys.mount(
                    Some(Path::new("overlay")),
                    target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data),
                )
            };
            // Without `volatile`, the kernel syncs the whole filesystem under the
            // upper dir (ext4 journal commit, disk flush) when the pod's mount
            // namespace goes away: the largest single cost of a short fly pod.
            // The upper dir belongs to this one run of this pod and is never
            // mounted again, so losing its unwritten pages in a host crash loses
            // nothing rkt needs. Kernels before 5.10 do not know the option.
            match mount(&format!("{data},volatile")) {
                Err(Errno::EINVAL) => mount(&data),
                other => other,
            }
            .map_err(|e| {
                ChildError::new(
                    format_args!("mounting the app's overlay on {}", target.display()),
                    e.desc(),
                )
            })
        }
        // pivot_root needs the new root to be a mount point.
        AppRootfs::Copy => sys
            .mount(
                Some(target),
                target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(|e| ChildError::new(format_args!("binding {} onto itself", target.display()), e.desc())),
    }
}

/// The engine's overlay options, as the child's error.
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> Result<String, ChildError> {
    rkt_engine::pod::mounts::overlay_options(lower, upper, work).map_err(|e| ChildError(format!("fly: {e}")))
}

fn dir_in_root(root: BorrowedFd<'_>, path: &str, mode: Mode) -> Result<OwnedFd, ChildError> {
    fsutil::mkdir_all_in_root(root, Path::new(path), mode)
        .map_err(|e| ChildError::io(format_args!("creating {path} in the app's rootfs"), e))
}

fn bind_volume(sys: &dyn Syscall, root: BorrowedFd<'_>, bind: &VolumeBind) -> Result<(), ChildError> {
    let what = || {
        format!(
            "volume {:?} ({} on {})",
            bind.volume,
            bind.source.display(),
            bind.target
        )
    };
    // The source is a host path the user chose: resolving it on the host is intended.
    let source_is_dir = std::fs::metadata(&bind.source)
        .map_err(|e| ChildError::io(what(), e))?
        .is_dir();
    let target = Path::new(&bind.target);
    let target_fd = if source_is_dir {
        fsutil::mkdir_all_in_root(root, target, Mode::from_bits_truncate(0o755))
    } else {
        file_in_root(root, target)
    }
    .map_err(|e| ChildError::io(format_args!("creating the target of {}", what()), e))?;
    // Over the root, the volume would replace the whole image, and the read-only
    // remount below (resolved from the root fd, under the bind) would miss it.
    let id = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).map(|st| (st.st_dev, st.st_ino));
    let same = id(root)
        .and_then(|r| id(target_fd.as_fd()).map(|t| r == t))
        .map_err(|e| ChildError::new(format_args!("checking the target of {}", what()), e.desc()))?;
    if same {
        return Err(ChildError::new(
            what(),
            "the target resolves to the app's root directory",
        ));
    }

    if bind.read_only {
        return sys
            .bind_read_only(&bind.source, target_fd.as_fd(), bind.recursive)
            .map_err(|e| ChildError::new(format_args!("binding {} read-only", what()), e.desc()));
    }
    let mut flags = MsFlags::MS_BIND;
    if bind.recursive {
        flags |= MsFlags::MS_REC;
    }
    sys.mount(
        Some(&bind.source),
        &fsutil::proc_fd_path(target_fd.as_fd()),
        None,
        flags,
        None,
    )
    .map_err(|e| ChildError::new(format_args!("binding {}", what()), e.desc()))
}

/// A file to bind a file volume onto, created empty (with its parents) inside the
/// root when the image lacks it.
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

/// Takes the app's credentials (groups first: they need privilege we drop last)
/// and moves to its working directory, as the app's user.
pub fn become_app(sys: &dyn Syscall, plan: &AppLaunch) -> Result<(), ChildError> {
    sys.setgroups(&plan.supplementary_gids)
        .map_err(|e| ChildError::new("setgroups", e.desc()))?;
    sys.setresgid(plan.gid)
        .map_err(|e| ChildError::new(format_args!("setresgid({})", plan.gid), e.desc()))?;
    sys.setresuid(plan.uid)
        .map_err(|e| ChildError::new(format_args!("setresuid({})", plan.uid), e.desc()))?;
    sys.chdir(Path::new(&plan.working_directory)).map_err(|e| {
        ChildError::new(
            format_args!("chdir to working directory {:?}", plan.working_directory),
            e.desc(),
        )
    })
}

/// argv and envp as the C strings execve wants.
pub struct ExecArgs {
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// The PATH to search argv[0] in when it has no '/'.
    pub path: Option<CString>,
}

impl ExecArgs {
    pub fn from_plan(plan: &AppLaunch) -> Result<Self, ChildError> {
        let argv = plan
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ChildError::new("argv", e))?;
        let envp = plan
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
                kv.extend_from_slice(k.as_bytes());
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ChildError::new("environment", e))?;
        let path = plan.env_var("PATH").and_then(|p| CString::new(p).ok());
        Ok(ExecArgs { argv, envp, path })
    }

    /// From a raw `KEY=VALUE\0...` block such as /proc/PID/environ.
    pub fn from_environ(argv: &[String], environ: &[u8]) -> Result<Self, ChildError> {
        let argv = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ChildError::new("argv", e))?;
        let mut path = None;
        let mut envp = Vec::new();
        for var in environ.split(|b| *b == 0).filter(|v| !v.is_empty()) {
            if let Some(p) = var.strip_prefix(b"PATH=") {
                path = CString::new(p).ok();
            }
            // No NUL inside: the block was split on it.
            if let Ok(c) = CString::new(var) {
                envp.push(c);
            }
        }
        Ok(ExecArgs { argv, envp, path })
    }
}

/// execve with execvpe's search: argv[0] with a '/' is run as is, otherwise each
/// PATH entry is tried in order (an empty entry is the working directory). Returns
/// only on failure. Unlike glibc, a file without a recognised format (ENOEXEC) is
/// not retried with /bin/sh: the image's author named the program, not a script.
pub fn exec(args: &ExecArgs) -> ChildError {
    let Some(prog) = args.argv.first() else {
        return ChildError("fly: exec: empty argv".into());
    };
    let shown = String::from_utf8_lossy(prog.to_bytes());
    let fail = |e: Errno| ChildError::new(format_args!("exec {shown:?}"), e.desc());
    if prog.to_bytes().contains(&b'/') {
        return fail(execve(prog, args));
    }
    let search = args
        .path
        .as_deref()
        .map(CStr::to_bytes)
        .unwrap_or(rkt_engine::stage::launch::DEFAULT_PATH.as_bytes());
    let mut seen_eacces = false;
    let mut candidate = Vec::with_capacity(search.len() + prog.to_bytes().len() + 2);
    for dir in search.split(|b| *b == b':') {
        candidate.clear();
        if dir.is_empty() {
            candidate.extend_from_slice(b".");
        } else {
            candidate.extend_from_slice(dir);
        }
        candidate.push(b'/');
        candidate.extend_from_slice(prog.to_bytes());
        let Ok(path) = CString::new(candidate.as_slice()) else {
            continue;
        };
        match execve(&path, args) {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG | Errno::ELOOP | Errno::ESTALE => {}
            Errno::EACCES => seen_eacces = true,
            other => return fail(other),
        }
    }
    fail(if seen_eacces { Errno::EACCES } else { Errno::ENOENT })
}

fn execve(path: &CStr, args: &ExecArgs) -> Errno {
    match nix::unistd::execve(path, &args.argv, &args.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Writes `msg` to the parent's error pipe and ends the child without running
/// any destructor or atexit handler of the (forked) parent's state.
pub fn report_and_exit(pipe: &OwnedFd, msg: &str) -> ! {
    let mut bytes = msg.as_bytes();
    while !bytes.is_empty() {
        match nix::unistd::write(pipe, bytes) {
            Ok(0) => break,
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    exit_now(254)
}

/// _exit(2): ends the forked child without flushing stdio buffers or running
/// atexit handlers copied from the parent (that would duplicate the parent's
/// pending output).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// What a child's steps up to exec return: only ever a failure.
pub type UntilExec = Result<Infallible, ChildError>;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests build their own inputs; a panic is a failure report
mod launch_sequence_tests {
    use super::*;
    use crate::syscall::{Call, Recording};
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    fn show(path: &Path) -> String {
        String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        pod: PathBuf,
        rootfs_dir: PathBuf,
        host_ro: PathBuf,
        host_rw: PathBuf,
        host_file: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pod");
        let rootfs_dir = rkt_engine::pod::layout::app_rootfs(&pod, "web");
        std::fs::create_dir_all(rootfs_dir.join("etc")).unwrap();
        std::fs::write(rootfs_dir.join("etc/passwd"), "www:x:33:33::/var/www:/bin/sh\n").unwrap();
        // An image whose /dev is a symlink out of itself: must land inside.
        std::os::unix::fs::symlink("/etc", rootfs_dir.join("dev")).unwrap();
        let host_ro = dir.path().join("host-ro");
        let host_rw = dir.path().join("host-rw");
        let host_file = dir.path().join("host-file");
        std::fs::create_dir(&host_ro).unwrap();
        std::fs::create_dir(&host_rw).unwrap();
        std::fs::write(&host_file, "x").unwrap();
        Fixture {
            pod,
            rootfs_dir,
            host_ro,
            host_rw,
            host_file,
            _dir: dir,
        }
    }

    fn manifest(f: &Fixture) -> PodManifest {
        serde_json::from_value(serde_json::json!({
            "acVersion": "0.8.11",
            "acKind": "PodManifest",
            "apps": [{
                "name": "web",
                "image": {"id": "sha512-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
                "app": {"exec": ["/bin/web"], "user": "www", "group": "33"},
                "mounts": [
                    {"volume": "rw", "path": "/srv/rw"},
                    {"volume": "ro", "path": "/srv/ro"},
                    {"volume": "file", "path": "/etc/app.conf"},
                ],
            }],
            "volumes": [
                {"name": "rw", "kind": "host", "source": show(&f.host_rw)},
                {"name": "ro", "kind": "host", "source": show(&f.host_ro), "readOnly": true, "recursive": false},
                {"name": "file", "kind": "host", "source": show(&f.host_file), "readOnly": true},
            ],
        }))
        .unwrap()
    }

    fn mount(
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Call {
        Call::Mount {
            source: source.map(str::to_string),
            target: show(target),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        }
    }

    fn expected_after_rootfs(f: &Fixture) -> Vec<Call> {
        let r = &f.rootfs_dir;
        let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
        vec![
            mount(
                Some("tmpfs"),
                &r.join("tmp"),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            ),
            mount(Some(&show(&f.host_rw)), &r.join("srv/rw"), None, rbind, None),
            // Read-only volumes: cloned, made read-only while detached, then moved
            // onto the target; recursive ones with every submount.
            Call::BindReadOnly {
                source: show(&f.host_ro),
                target: show(&r.join("srv/ro")),
                recursive: false,
            },
            Call::BindReadOnly {
                source: show(&f.host_file),
                target: show(&r.join("etc/app.conf")),
                recursive: true,
            },
            // Bound last, onto targets resolved before any bind: nothing above was
            // resolved through the host's /dev, /proc or /sys. /dev is a symlink to
            // /etc in the image: resolved inside the rootfs.
            mount(Some("/dev"), &r.join("etc"), None, rbind, None),
            mount(Some("/proc"), &r.join("proc"), None, rbind, None),
            mount(Some("/sys"), &r.join("sys"), None, rbind, None),
            Call::Chdir(show(r)),
            Call::PivotRoot(".".into(), ".".into()),
            Call::Umount2(".".into(), MntFlags::MNT_DETACH),
            Call::Chdir("/".into()),
        ]
    }

    fn head() -> Vec<Call> {
        vec![
            Call::Unshare(CloneFlags::CLONE_NEWNS),
            mount(
                None,
                Path::new("/"),
                None,
                MsFlags::MS_REC | MsFlags::MS_SLAVE,
                None,
            ),
        ]
    }

    #[test]
    fn copy_rootfs_sequence_is_exact() {
        let f = fixture();
        let m = manifest(&f);
        let sys = Recording::default();
        let spec = RootSpec {
            pod_dir: &f.pod,
            manifest: &m,
            app: "web",
            rootfs_dir: &f.rootfs_dir,
            rootfs: &AppRootfs::Copy,
        };
        let plan = prepare_root(&sys, &spec).unwrap();
        assert_eq!((plan.uid, plan.gid), (33, 33));

        let mut want = head();
        want.push(mount(
            Some(&show(&f.rootfs_dir)),
            &f.rootfs_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ));
        want.extend(expected_after_rootfs(&f));
        assert_eq!(*sys.calls.borrow(), want);
        // The file target was created as an empty file inside the image.
        assert!(f.rootfs_dir.join("etc/app.conf").is_file());
    }

    #[test]
    fn overlay_rootfs_sequence_is_exact() {
        let f = fixture();
        let m = manifest(&f);
        let sys = Recording::default();
        let rootfs = AppRootfs::Overlay {
            lower: "/var/lib/rkt/cas/tree/deps-sha512-1/rootfs".into(),
        };
        let spec = RootSpec {
            pod_dir: &f.pod,
            manifest: &m,
            app: "web",
            rootfs_dir: &f.rootfs_dir,
            rootfs: &rootfs,
        };
        prepare_root(&sys, &spec).unwrap();
        let data = format!(
            "lowerdir=/var/lib/rkt/cas/tree/deps-sha512-1/rootfs,upperdir={},workdir={},volatile",
            show(&f.pod.join("overlay/web/upper")),
            show(&f.pod.join("overlay/web/work"))
        );
        let mut want = head();
        want.push(mount(
            Some("overlay"),
            &f.rootfs_dir,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        ));
        want.extend(expected_after_rootfs(&f));
        assert_eq!(*sys.calls.borrow(), want);
    }

    #[test]
    fn credentials_are_dropped_groups_first_then_cwd() {
        let f = fixture();
        let m = manifest(&f);
        let sys = Recording::default();
        let spec = RootSpec {
            pod_dir: &f.pod,
            manifest: &m,
            app: "web",
            rootfs_dir: &f.rootfs_dir,
            rootfs: &AppRootfs::Copy,
        };
        let mut plan = prepare_root(&sys, &spec).unwrap();
        plan.supplementary_gids = vec![4, 5];
        let sys = Recording::default();
        become_app(&sys, &plan).unwrap();
        assert_eq!(
            *sys.calls.borrow(),
            vec![
                Call::Setgroups(vec![4, 5]),
                Call::Setresgid(33),
                Call::Setresuid(33),
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn a_planning_error_stops_before_any_bind() {
        let f = fixture();
        let mut m = manifest(&f);
        m.apps[0].app.as_mut().unwrap().user = "nobody".into();
        let sys = Recording::default();
        let spec = RootSpec {
            pod_dir: &f.pod,
            manifest: &m,
            app: "web",
            rootfs_dir: &f.rootfs_dir,
            rootfs: &AppRootfs::Copy,
        };
        let err = prepare_root(&sys, &spec).unwrap_err();
        assert_eq!(
            err.0,
            r#"fly: app "web": user "nobody" not found in the image's /etc/passwd"#
        );
        assert_eq!(sys.calls.borrow().len(), 3, "unshare, rslave, rootfs only");
    }

    /// A volume bound over the app's root replaces the whole image, and the
    /// read-only remount (which re-resolves the target from the root fd, i.e. the
    /// directory *under* the bind) would hit the image instead of the volume: a
    /// read-only host volume would become the app's writable root.
    #[test]
    fn a_volume_target_resolving_to_the_root_is_refused() {
        let f = fixture();
        std::os::unix::fs::symlink("/", f.rootfs_dir.join("up")).unwrap();
        for target in ["/", "/srv/..", "/up"] {
            let mut m = manifest(&f);
            m.apps[0].mounts =
                vec![serde_json::from_value(serde_json::json!({"volume": "ro", "path": target})).unwrap()];
            let sys = Recording::default();
            let spec = RootSpec {
                pod_dir: &f.pod,
                manifest: &m,
                app: "web",
                rootfs_dir: &f.rootfs_dir,
                rootfs: &AppRootfs::Copy,
            };
            let err = prepare_root(&sys, &spec).unwrap_err();
            assert!(err.0.contains("the app's root directory"), "{target}: {}", err.0);
            assert!(
                !sys.calls.borrow().iter().any(|c| matches!(
                    c,
                    Call::Mount { source: Some(s), .. } | Call::BindReadOnly { source: s, .. }
                        if *s == show(&f.host_ro)
                )),
                "{target}: nothing bound"
            );
        }
    }

    #[test]
    fn overlay_options_refuse_separators() {
        let ok = overlay_options(Path::new("/l"), Path::new("/u"), Path::new("/w")).unwrap();
        assert_eq!(ok, "lowerdir=/l,upperdir=/u,workdir=/w");
        assert!(overlay_options(Path::new("/l,x"), Path::new("/u"), Path::new("/w")).is_err());
        assert!(overlay_options(Path::new("/l"), Path::new("/u:x"), Path::new("/w")).is_err());
    }

    #[test]
    fn exec_reports_a_missing_program_like_execvp() {
        let args = ExecArgs {
            argv: vec![CString::new("definitely-not-a-program-xyz").unwrap()],
            envp: vec![],
            path: Some(CString::new("/nonexistent-a:/nonexistent-b").unwrap()),
        };
        assert_eq!(
            exec(&args).0,
            r#"fly: exec "definitely-not-a-program-xyz": No such file or directory"#
        );
        let args = ExecArgs {
            argv: vec![CString::new("/bin/nope-xyz").unwrap()],
            envp: vec![],
            path: None,
        };
        assert_eq!(
            exec(&args).0,
            r#"fly: exec "/bin/nope-xyz": No such file or directory"#
        );
    }

    #[test]
    fn environ_blocks_are_split_and_path_found() {
        let a = ExecArgs::from_environ(&["sh".into()], b"A=1\0PATH=/x:/y\0\0B=2\0").unwrap();
        assert_eq!(a.envp.len(), 3);
        assert_eq!(a.path.unwrap().to_bytes(), b"/x:/y");
    }
}
