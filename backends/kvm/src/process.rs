//! QEMU as stage0 runs it: in the pod's network namespace and a private mount
//! namespace holding the pod's mounts, killed with rkt, rkt's stop signals
//! forwarded to it.
//!
//! Assumption (as for fly and nspawn): the calling process is single-threaded
//! when it forks.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use rkt_engine::stage::signals::{Forwarding, HeldSignals};

use crate::KvmError;
use crate::setup::PodMounts;

pub struct Qemu {
    pub pid: Pid,
    child: Child,
    _forwarding: Forwarding,
}

impl Qemu {
    /// QEMU's exit code, or 128+signal.
    pub fn wait(mut self) -> Result<i32, KvmError> {
        let status = self
            .child
            .wait()
            .map_err(|e| KvmError::io("waiting for qemu", e))?;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

pub fn spawn(
    program: &Path,
    argv: &[OsString],
    netns: OwnedFd,
    mounts: &PodMounts,
) -> Result<Qemu, KvmError> {
    let (errors_read, errors_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| KvmError::io("creating a pipe", e.into()))?;
    let parent = nix::unistd::getpid();
    let mut cmd = Command::new(program);
    // The guest's console output arrives on the stdio QEMU inherits; nothing
    // reads QEMU's stdin.
    cmd.args(argv).stdin(Stdio::null());
    let mounts = mounts.clone();
    // SAFETY: rkt is single-threaded here (module docs); the hook makes system
    // calls and formats at most one error message before exec.
    unsafe {
        cmd.pre_exec(move || {
            // QEMU, and with it the pod, must not outlive a killed rkt.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&SigSet::empty()),
                None,
            )?;
            if nix::unistd::getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
            if let Err(e) = nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET) {
                let _ = nix::unistd::write(
                    &errors_write,
                    format!("kvm: joining the pod's network namespace: {}", e.desc()).as_bytes(),
                );
                return Err(e.into());
            }
            if let Err(msg) = mounts.make() {
                let _ = nix::unistd::write(&errors_write, msg.as_bytes());
                return Err(Errno::EINVAL.into());
            }
            Ok(())
        });
    }
    let held = HeldSignals::hold();
    let child = cmd.spawn();
    drop(cmd);
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            let mut msg = String::new();
            let _ = std::fs::File::from(errors_read).read_to_string(&mut msg);
            if msg.is_empty() {
                return Err(KvmError::io(format!("starting {}", program.display()), e));
            }
            return Err(KvmError::Pod(msg));
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    let forwarding = held.install(pid);
    Ok(Qemu {
        pid,
        child,
        _forwarding: forwarding,
    })
}

/// Waits up to `timeout` for `pid` to end (a pidfd polls readable when it
/// does); true when it has, or was already gone.
pub fn wait_exit(pid: Pid, timeout: std::time::Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Errno::last() == Errno::ESRCH;
    }
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&pidfd),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(millis)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(Errno::EINTR) if std::time::Instant::now() < deadline => continue,
            Err(_) => return false,
        }
    }
}
