//! The processes of an nspawn pod as stage0 sees them: systemd-nspawn started in
//! its private mount namespace with rkt's stop signals forwarded to it, the
//! init's report read from the FIFO, and `enter`'s process joining the pod.
//!
//! Assumption (as for fly): the calling process is single-threaded when it forks.

use rkt_engine::stage::process::{SpawnError, Supervised, pidfd_open, spawn_supervised};
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use rkt_engine::fsutil;
use rkt_engine::pod::protocol::{self, InitReport};
use rkt_engine::schema::PodManifest;
use rkt_engine::stage::launch::plan_app;

use crate::NspawnError;
use crate::setup::PodMounts;

/// A running systemd-nspawn; rkt's stop signals go to it until it is waited for.
pub struct Nspawn(Supervised);

impl Nspawn {
    pub fn pid(&self) -> Pid {
        self.0.pid
    }

    /// nspawn's exit code (the init's, i.e. the pod's), or 128+signal.
    pub fn wait(self) -> Result<i32, NspawnError> {
        self.0
            .wait()
            .map_err(|e| NspawnError::io("waiting for systemd-nspawn", e))
    }
}

/// Starts nspawn in a private mount namespace holding the pod's mounts.
pub fn spawn_nspawn(
    program: &Path,
    argv: &[OsString],
    env: &[(&str, &str)],
    mounts: &PodMounts,
) -> Result<Nspawn, NspawnError> {
    let mut cmd = Command::new(program);
    cmd.args(argv).envs(env.iter().copied());
    let mounts = mounts.clone();
    match spawn_supervised(cmd, move || mounts.make()) {
        Ok(nspawn) => Ok(Nspawn(nspawn)),
        Err(SpawnError::Start(e)) => Err(NspawnError::io(format!("starting {}", program.display()), e)),
        Err(SpawnError::Setup(msg)) => Err(NspawnError::Pod(msg)),
    }
}

/// The read end of the init's report FIFO, opened before nspawn starts so the
/// init's non-blocking open always finds a reader.
pub struct ReportReader {
    fifo: OwnedFd,
}

impl ReportReader {
    pub fn open(path: &Path) -> Result<Self, NspawnError> {
        let fifo = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| NspawnError::io(format!("opening {}", path.display()), e.into()))?;
        Ok(ReportReader { fifo })
    }

    /// Blocks until the init reports or nspawn exits without a report (None).
    /// A FIFO polls readable only once a writer has come: no busy loop.
    pub fn wait(&self, nspawn: &Nspawn) -> Option<InitReport> {
        let pidfd = pidfd_open(nspawn.pid()).ok()?;
        let mut line = Vec::new();
        loop {
            let mut fds = [
                PollFd::new(self.fifo.as_fd(), PollFlags::POLLIN),
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => return None,
            }
            let fifo_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            let exited = fds[1].revents().is_some_and(|r| !r.is_empty());
            if fifo_ready {
                let mut buf = [0u8; 4096];
                match nix::unistd::read(&self.fifo, &mut buf) {
                    Ok(0) => return InitReport::parse(&line),
                    Ok(n) => {
                        line.extend_from_slice(&buf[..n]);
                        if line.contains(&b'\n') {
                            return InitReport::parse(&line);
                        }
                    }
                    Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                    Err(_) => return None,
                }
            } else if exited {
                return None;
            }
        }
    }
}

/// The pod's init: nspawn's child (its intermediate child has exited by the
/// time the init can report).
pub fn init_of(nspawn: Pid) -> Option<Pid> {
    let children = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| is_namespace_init(*p))
        .map(Pid::from_raw)
}

/// Pid 1 in its innermost pid namespace (`NSpid: <host pid> 1`).
fn is_namespace_init(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|l| l.split_whitespace().last() == Some("1"))
        })
        .unwrap_or(false)
}

/// `rkt enter`: a process in the pod's namespaces and the app's root, with the
/// app's environment, as root. A first child joins the namespaces (the pid
/// namespace applies to its children), a second one is the command.
pub fn enter(
    init: Pid,
    _pod_dir: &Path,
    manifest: &PodManifest,
    app: &str,
    argv: &[String],
) -> Result<i32, NspawnError> {
    let open = |path: String, flags: OFlag| {
        nix::fcntl::open(path.as_str(), flags | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| NspawnError::io(format!("opening {path}"), e.into()))
    };
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut namespaces = Vec::with_capacity(kinds.len() + 1);
    for (name, flag) in kinds {
        namespaces.push((open(format!("/proc/{init}/ns/{name}"), OFlag::O_RDONLY)?, flag));
    }
    // A --private-users pod: its user namespace last, while the host's root
    // may still join the others (the host's network among them), so what the
    // command creates belongs to the pod's root, not the host's.
    let ns_id = |path: String| {
        std::fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    if ns_id(format!("/proc/{init}/ns/user")) != ns_id("/proc/self/ns/user".to_string()) {
        namespaces.push((
            open(format!("/proc/{init}/ns/user"), OFlag::O_RDONLY)?,
            CloneFlags::CLONE_NEWUSER,
        ));
    }
    let root = open(format!("/proc/{init}/root"), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    let (errors_read, errors_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| NspawnError::io("creating a pipe", e.into()))?;

    // SAFETY: single-threaded (module docs); the child runs our code and ends
    // with _exit, never returning into the caller.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(NspawnError::io("fork", e.into())),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(errors_read);
            let code = match join_and_run(&namespaces, root.as_fd(), manifest, app, argv) {
                Ok(code) => code,
                Err(msg) => {
                    let _ = nix::unistd::write(&errors_write, msg.as_bytes());
                    254
                }
            };
            // SAFETY: _exit has no preconditions; nothing of the parent's state
            // may be flushed twice from this copy.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(errors_write);
            let mut msg = String::new();
            let _ = std::fs::File::from(errors_read).read_to_string(&mut msg);
            let code = loop {
                match nix::sys::wait::waitpid(child, None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => break c,
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => return Err(NspawnError::io("waiting for enter", e.into())),
                }
            };
            if msg.is_empty() {
                Ok(code)
            } else {
                Err(NspawnError::Pod(msg))
            }
        }
    }
}

fn join_and_run(
    namespaces: &[(OwnedFd, CloneFlags)],
    root: BorrowedFd<'_>,
    manifest: &PodManifest,
    app: &str,
    argv: &[String],
) -> Result<i32, String> {
    for (fd, flag) in namespaces {
        nix::sched::setns(fd, *flag).map_err(|e| format!("enter: setns {flag:?}: {}", e.desc()))?;
    }
    if namespaces.iter().any(|(_, f)| *f == CloneFlags::CLONE_NEWUSER) {
        // The host's root has no id in the pod's namespace: become the pod's.
        let root = |e: Errno| format!("enter: becoming the pod's root: {}", e.desc());
        nix::unistd::setgroups(&[]).map_err(root)?;
        nix::unistd::setresgid(0.into(), 0.into(), 0.into()).map_err(root)?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into()).map_err(root)?;
    }
    nix::unistd::fchdir(root).map_err(|e| format!("enter: fchdir to the pod's root: {}", e.desc()))?;
    nix::unistd::chroot(".").map_err(|e| format!("enter: chroot to the pod's root: {}", e.desc()))?;
    let app_root = protocol::app_rootfs(app).inside();
    let app_fd =
        fsutil::open_dir(&app_root).map_err(|e| format!("enter: opening {}: {e}", app_root.display()))?;
    let plan = plan_app(Path::new("/"), manifest, app, app_fd.as_fd()).map_err(|e| format!("enter: {e}"))?;
    drop(app_fd);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)));
    let dir = app_root.clone();
    // SAFETY: this forked child is single-threaded; chroot and chdir only.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(&dir)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| {
        let why = e
            .raw_os_error()
            .map(|n| Errno::from_raw(n).desc().to_string())
            .unwrap_or_else(|| e.to_string());
        format!("enter: exec {:?}: {why}", argv[0])
    })?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Makes sure `fd` does not survive exec: the pod's lock is a directory fd of
/// the pod, which nspawn and the pod have no business holding.
pub fn ensure_cloexec(fd: BorrowedFd<'_>) -> Result<(), NspawnError> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags =
        fcntl(fd, FcntlArg::F_GETFD).map_err(|e| NspawnError::io("fcntl on the pod lock", e.into()))?;
    let flags = FdFlag::from_bits_truncate(flags);
    if !flags.contains(FdFlag::FD_CLOEXEC) {
        fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))
            .map_err(|e| NspawnError::io("fcntl on the pod lock", e.into()))?;
    }
    let _ = fd.as_raw_fd();
    Ok(())
}
