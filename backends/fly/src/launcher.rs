//! The parent side of a fly launch: fork, learn whether the child reached exec,
//! forward signals, wait, record the exit code.
//!
//! Assumption: the calling process is single-threaded when it forks (the rkt
//! binary is, on this path: no async runtime, no helper threads). The child runs
//! ordinary Rust between fork and exec (planning reads files and allocates),
//! which is only sound when no other thread could have held a lock at fork time.
//! glibc's malloc stays usable after fork even then, which is what lets the
//! multi-threaded test harness call [`launch`] too.

use rkt_engine::stage::process::{PidFileError, read_pid_file};
use rkt_engine::stage::signals::HeldSignals;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use rkt_engine::fsutil;
use rkt_engine::pod::layout::{self, AppRootfs};
use rkt_engine::schema::PodManifest;

use crate::FlyError;
use crate::child::{self, ChildError, ExecArgs, RootSpec, UntilExec};
use crate::syscall::{Nix, Syscall};

/// How the one app of a fly pod ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppExit {
    pub app: String,
    /// The exit status, or 128+signal when a signal killed it.
    pub code: i32,
}

/// Runs the single app of the pod at `pod_dir` to completion: the whole of
/// `Stage1::run` except the pod state transition, so it can be driven directly.
/// Writes `pid` (right after fork) and the app's status file (at exit).
pub fn launch(pod_dir: &Path) -> Result<AppExit, FlyError> {
    launch_with_env(pod_dir, &[])
}

/// `launch`, with variables stage0 adds to the app's planned environment
/// (`AC_METADATA_URL`), each replacing the app's own.
pub fn launch_with_env(pod_dir: &Path, extra_env: &[(String, String)]) -> Result<AppExit, FlyError> {
    let manifest = read_manifest(pod_dir)?;
    let app = single_app(&manifest)?.to_string();
    let rootfs = read_rootfs_spec(pod_dir, &app)?;
    let rootfs_dir = layout::app_rootfs(pod_dir, &app);
    let spec = RootSpec {
        pod_dir,
        manifest: &manifest,
        app: &app,
        rootfs_dir: &rootfs_dir,
        rootfs: &rootfs,
    };

    let held = HeldSignals::hold();
    let child = spawn(|parent| run_app(&Nix, &spec, extra_env, parent))?;
    // From here on the child is ours to reap, whatever else fails.
    let forwarding = held.install(child.pid);
    let status = child.wait_exec().and_then(|()| {
        rkt_engine::failpoint::failpoint("run.stage1-started");
        wait_exit(child.pid)
    });
    drop(forwarding);
    let code = status?;

    // The status is on the path between the app's exit and rkt's: it costs a
    // rename, not two disk flushes (a crash ends the pod either way).
    fsutil::replace_file(&layout::app_status(pod_dir, &app), code.to_string().as_bytes())
        .map_err(|e| FlyError::io(format!("writing the exit status of app {app:?}"), e))?;
    rkt_engine::failpoint::failpoint("run.exit-status-written");
    Ok(AppExit { app, code })
}

/// The child's whole life up to exec.
fn run_app(sys: &dyn Syscall, spec: &RootSpec<'_>, extra_env: &[(String, String)], parent: Pid) -> UntilExec {
    record_pid(spec.pod_dir)?;
    let mut plan = child::prepare_root(sys, spec)?;
    for (name, value) in extra_env {
        plan.env.retain(|(k, _)| k != name);
        plan.env.push((name.clone(), value.clone()));
    }
    let args = ExecArgs::from_plan(&plan)?;
    child::become_app(sys, &plan)?;
    // Changing the effective uid/gid clears the parent-death signal: set it again,
    // as the app's user, so a killed rkt never leaves the app behind.
    if plan.uid != 0 || plan.gid != 0 {
        arm_parent_death_signal(parent)?;
    }
    close_inherited_fds_at_exec()?;
    Err(child::exec(&args))
}

/// The app gets stdin, stdout and stderr, nothing else: any descriptor rkt itself
/// inherited without O_CLOEXEC (from its caller's shell, a supervisor, a leaky
/// library) would otherwise reach the app, the way CVE-2019-5736 reached runc.
fn close_inherited_fds_at_exec() -> Result<(), ChildError> {
    // SAFETY: close_range only changes descriptor flags of this process; with
    // CLOSE_RANGE_CLOEXEC nothing is closed before exec, so no fd in use here
    // (the launch pipe, the rootfs handles) goes away early.
    let rc = unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(ChildError::io(
            "marking inherited descriptors close-on-exec",
            std::io::Error::last_os_error(),
        ))
    }
}

/// The app's process records its own pid before it can exec, so whoever sees
/// the app running (`status --wait-ready`, `stop`, `enter`) also finds its pid.
/// Not fsynced: after a crash the pod reads as exited and its pid means nothing.
fn record_pid(pod_dir: &Path) -> Result<(), ChildError> {
    let pid = nix::unistd::getpid().to_string();
    fsutil::replace_file(&pod_dir.join(layout::PID), pid.as_bytes())
        .map_err(|e| ChildError::io("writing the pod's pid file", e))
}

pub(crate) fn read_manifest(pod_dir: &Path) -> Result<PodManifest, FlyError> {
    let path = layout::manifest(pod_dir);
    let bytes = std::fs::read(&path).map_err(|e| FlyError::io(format!("reading {}", path.display()), e))?;
    PodManifest::from_json(&bytes).map_err(|e| FlyError::Invalid(format!("{}: {e}", path.display())))
}

pub(crate) fn single_app(manifest: &PodManifest) -> Result<&str, FlyError> {
    match manifest.apps.as_slice() {
        [one] => Ok(one.name.as_str()),
        apps => Err(FlyError::NotOneApp(apps.len())),
    }
}

fn read_rootfs_spec(pod_dir: &Path, app: &str) -> Result<AppRootfs, FlyError> {
    layout::read_app_rootfs(pod_dir, app).map_err(|e| {
        FlyError::io(
            format!("reading {}", layout::app_rootfs_spec(pod_dir, app).display()),
            e,
        )
    })
}

/// A forked child that either execs or reports why not through `errors`.
pub(crate) struct Child {
    pub pid: Pid,
    errors: std::fs::File,
}

/// Forks; the child arms its parent-death signal, then runs `until_exec`, and
/// sends its error (if it returns) through a CLOEXEC pipe the parent reads.
pub(crate) fn spawn(until_exec: impl FnOnce(Pid) -> UntilExec) -> Result<Child, FlyError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| FlyError::io("creating the launch pipe", e.into()))?;
    let parent = nix::unistd::getpid();
    // SAFETY: the child only runs our own code until exec or _exit (never returns
    // into the caller), and the process is single-threaded (module docs), so no
    // lock can be held by a thread that does not exist in the child.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(FlyError::io("fork", e.into())),
        Ok(ForkResult::Child) => {
            drop(read);
            // A panic must not unwind into the caller's frames in the child.
            let msg = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                arm_parent_death_signal(parent)?;
                reset_signals()?;
                until_exec(parent)
            })) {
                Ok(Err(ChildError(msg))) => msg,
                Ok(Ok(never)) => match never {},
                Err(_) => "fly: internal error (panic) before exec".to_string(),
            };
            child::report_and_exit(&write, &msg)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            Ok(Child {
                pid: child,
                errors: std::fs::File::from(read),
            })
        }
    }
}

/// The app starts with default signal dispositions and nothing blocked, whatever
/// rkt itself uses: Rust's runtime ignores SIGPIPE, and an ignored signal stays
/// ignored across exec (`yes | head` in the app would never end).
fn reset_signals() -> Result<(), ChildError> {
    // SAFETY: installs SIG_DFL, no handler code runs.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|e| ChildError::new("resetting SIGPIPE", e.desc()))?;
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    )
    .map_err(|e| ChildError::new("clearing the signal mask", e.desc()))
}

/// SIGKILL when rkt dies; then checks rkt did not die before that was armed
/// (we would have been reparented already and nobody is waiting for us).
fn arm_parent_death_signal(parent: Pid) -> Result<(), ChildError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| ChildError::new("prctl(PR_SET_PDEATHSIG)", e.desc()))?;
    if nix::unistd::getppid() != parent {
        child::exit_now(254);
    }
    Ok(())
}

impl Child {
    /// Blocks until the child has exec'd (Ok) or reported a failure (Err; the
    /// child is reaped). EOF with nothing read means exec closed the pipe.
    pub fn wait_exec(&self) -> Result<(), FlyError> {
        let mut msg = Vec::new();
        // read_to_end retries EINTR itself.
        if let Err(e) = (&self.errors).read_to_end(&mut msg) {
            self.kill_and_reap();
            return Err(FlyError::io("reading the launch pipe", e));
        }
        if msg.is_empty() {
            return Ok(());
        }
        let _ = wait_exit(self.pid);
        Err(FlyError::Child(
            String::from_utf8_lossy(&msg).trim_end().to_string(),
        ))
    }

    pub fn kill_and_reap(&self) {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        let _ = wait_exit(self.pid);
    }
}

/// Waits for `pid` to end; its exit status, or 128+signal.
pub(crate) fn wait_exit(pid: Pid) -> Result<i32, FlyError> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            // Stop/continue reports are not asked for; keep waiting.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(FlyError::io(format!("waiting for pid {pid}"), e.into())),
        }
    }
}

/// Makes sure `fd` does not survive exec (the pod's lock is a directory fd of
/// the pod: an app holding it could openat its way out of its root).
pub(crate) fn ensure_cloexec(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), FlyError> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags =
        fcntl(fd, FcntlArg::F_GETFD).map_err(|e| FlyError::io("fcntl(F_GETFD) on the pod lock", e.into()))?;
    let flags = FdFlag::from_bits_truncate(flags);
    if !flags.contains(FdFlag::FD_CLOEXEC) {
        fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))
            .map_err(|e| FlyError::io("fcntl(F_SETFD) on the pod lock", e.into()))?;
    }
    Ok(())
}

/// `rkt enter` for fly: a process in the app's mount namespace and root, with
/// the app's environment, as root; returns its exit code.
pub fn enter_app(pod_dir: &Path, app: &str, argv: &[String]) -> Result<i32, FlyError> {
    let manifest = read_manifest(pod_dir)?;
    if manifest.app(app).is_none() {
        return Err(FlyError::Invalid(format!("app {app:?} is not in this pod")));
    }
    if argv.is_empty() {
        return Err(FlyError::Invalid("enter: no command given".into()));
    }
    let pid = read_pid_file(pod_dir).map_err(|e| match e {
        PidFileError::Io { context, source } => FlyError::io(context, source),
        PidFileError::Invalid(msg) => FlyError::Invalid(msg),
    })?;
    // Opened (and the environment read) before fork: a failure is reported plainly.
    let ns = nix::fcntl::open(
        format!("/proc/{pid}/ns/mnt").as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| FlyError::io(format!("opening the mount namespace of pid {pid}"), e.into()))?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .map_err(|e| FlyError::io(format!("reading the environment of pid {pid}"), e))?;
    let args = ExecArgs::from_environ(argv, &environ).map_err(|e| FlyError::Child(e.0))?;
    // Resolved after setns, i.e. through the app's own /proc: its root, even if
    // the app has chrooted further.
    let root = PathBuf::from(format!("/proc/{pid}/root"));

    let held = HeldSignals::hold();
    let child = spawn(|_parent| {
        let sys = Nix;
        sys.setns(std::os::fd::AsFd::as_fd(&ns), nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| ChildError::new("setns into the app's mount namespace", e.desc()))?;
        sys.chroot(&root)
            .map_err(|e| ChildError::new(format_args!("chroot {}", root.display()), e.desc()))?;
        sys.chdir(Path::new("/"))
            .map_err(|e| ChildError::new("chdir /", e.desc()))?;
        Err(child::exec(&args))
    })?;
    let forwarding = held.install(child.pid);
    let code = child.wait_exec().and_then(|()| wait_exit(child.pid));
    drop(forwarding);
    code
}
