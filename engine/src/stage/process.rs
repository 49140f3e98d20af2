//! Processes as stage0 holds them: by pidfd, so a wait or a signal reaches the
//! process we looked at and never a later owner of its pid; and a stage1
//! program (systemd-nspawn, QEMU) started supervised: it dies with rkt, rkt's
//! stop signals are forwarded to it, and a failure in its pre-exec setup comes
//! back as the setup's own message rather than a bare errno.
//!
//! Assumption (as everywhere in stage0): the calling process is
//! single-threaded when it forks.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use super::signals::{Forwarding, HeldSignals};

/// A pidfd for `pid`; `ESRCH` when it is already gone.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no
    // memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the process behind `pidfd` ends (a pidfd polls readable when it
/// does), at most `timeout` (None: for ever); true when it has ended.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, Errno> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                PollTimeout::from(u16::try_from(left.as_millis()).unwrap_or(u16::MAX))
            }
        };
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, wait) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits up to `timeout` for `pid` to end; true when it has, or was already gone.
pub fn wait_exit(pid: Pid, timeout: Duration) -> bool {
    match pidfd_open(pid) {
        Ok(pidfd) => wait_pidfd(pidfd.as_fd(), Some(timeout)).unwrap_or(false),
        Err(e) => e == Errno::ESRCH,
    }
}

/// An exit status as a shell reports it: the code, or 128 + the signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Why a pod's pid file gave no pid.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<PidFileError> for super::BackendError {
    fn from(e: PidFileError) -> Self {
        match e {
            PidFileError::Io { context, source } => super::BackendError::Io { context, source },
            PidFileError::Invalid(msg) => super::BackendError::Other(msg),
        }
    }
}

/// The pid in the pod's pid file (`layout::PID`: fly's app, nspawn's init,
/// QEMU); refuses anything that is not a plain process id (kill(0) or
/// kill(-1) would hit far more than the pod).
pub fn read_pid_file(pod_dir: &std::path::Path) -> Result<Pid, PidFileError> {
    let path = pod_dir.join(crate::pod::layout::PID);
    let text = std::fs::read_to_string(&path).map_err(|source| PidFileError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(Pid::from_raw(pid)),
        _ => Err(PidFileError::Invalid(format!(
            "{}: {:?} is not a pid",
            path.display(),
            text.trim()
        ))),
    }
}

/// Why a supervised program did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}")]
    Start(#[source] std::io::Error),
    /// The pre-exec setup's own one-line message.
    #[error("{0}")]
    Setup(String),
}

/// A running stage1 program; rkt's stop signals go to it until it is waited for.
pub struct Supervised {
    pub pid: Pid,
    child: Child,
    _forwarding: Forwarding,
}

impl Supervised {
    /// The program's exit code, or 128+signal.
    pub fn wait(mut self) -> std::io::Result<i32> {
        self.child.wait().map(exit_code)
    }
}

/// Starts `cmd` supervised. `setup` runs in the child just before exec (after
/// the child is tied to rkt's life and its signal mask is cleared); its error
/// message is reported as [`SpawnError::Setup`].
pub fn spawn_supervised<F>(mut cmd: Command, mut setup: F) -> Result<Supervised, SpawnError>
where
    F: FnMut() -> Result<(), String> + Send + Sync + 'static,
{
    let (errors_read, errors_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Start(e.into()))?;
    let parent = nix::unistd::getpid();
    // SAFETY: stage0 is single-threaded here (module docs); the hook makes
    // system calls and formats at most one error message before exec.
    unsafe {
        cmd.pre_exec(move || {
            // The program, and with it the pod, must not outlive a killed rkt.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The forwarded signals are held (blocked) around the spawn; a mask
            // survives exec, and the program must see SIGTERM.
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            if nix::unistd::getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
            if let Err(msg) = setup() {
                let _ = nix::unistd::write(&errors_write, msg.as_bytes());
                return Err(Errno::EINVAL.into());
            }
            Ok(())
        });
    }
    let held = HeldSignals::hold();
    let child = cmd.spawn();
    // The child's copy of the pipe's write end goes with the command, so the
    // read below ends.
    drop(cmd);
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            let mut msg = String::new();
            let _ = std::fs::File::from(errors_read).read_to_string(&mut msg);
            return Err(if msg.is_empty() {
                SpawnError::Start(e)
            } else {
                SpawnError::Setup(msg)
            });
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    let forwarding = held.install(pid);
    Ok(Supervised {
        pid,
        child,
        _forwarding: forwarding,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_that_are_not_a_single_process_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["0", "-1", "1", "abc", ""] {
            std::fs::write(dir.path().join("pid"), bad).unwrap();
            assert!(read_pid_file(dir.path()).is_err(), "{bad:?}");
        }
        std::fs::write(dir.path().join("pid"), "4242\n").unwrap();
        assert_eq!(read_pid_file(dir.path()).unwrap().as_raw(), 4242);
    }

    #[test]
    fn a_setup_failure_comes_back_as_its_message() {
        let err = spawn_supervised(Command::new("/bin/true"), || Err("setup: no such volume".into()))
            .err()
            .expect("setup failed");
        assert!(
            matches!(err, SpawnError::Setup(ref m) if m == "setup: no such volume"),
            "{err:?}"
        );
    }

    #[test]
    fn exit_codes_and_waits_round_trip() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 3"]);
        let child = spawn_supervised(cmd, || Ok(())).expect("spawn");
        let pidfd = pidfd_open(child.pid).expect("pidfd");
        assert!(wait_pidfd(pidfd.as_fd(), None).expect("wait"));
        assert_eq!(child.wait().expect("wait"), 3);
    }

    #[test]
    fn a_wait_times_out_on_a_live_process() {
        let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().expect("sleep");
        let pid = Pid::from_raw(sleeper.id() as i32);
        assert!(!wait_exit(pid, Duration::from_millis(20)));
        sleeper.kill().expect("kill");
        sleeper.wait().expect("reap");
        assert!(wait_exit(pid, Duration::from_millis(20)), "a reaped pid is gone");
    }
}
