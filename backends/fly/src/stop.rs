//! `rkt stop` for fly: signal the app through a pidfd, so the signal reaches the
//! process the pid file named when we looked, never a later owner of that pid.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rkt_engine::stage::BackendError;

/// A process held by a pidfd.
pub(crate) struct Pinned {
    pid: Pid,
    fd: OwnedFd,
}

impl Pinned {
    /// `None` when the process is already gone.
    pub fn open(pid: Pid) -> Result<Option<Pinned>, BackendError> {
        let fd = match rkt_engine::stage::process::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(Errno::ESRCH) => return Ok(None),
            Err(e) => return Err(BackendError::io(format!("fly: pidfd_open({pid})"), e.into())),
        };
        Ok(Some(Pinned { pid, fd }))
    }

    pub fn signal(&self, sig: Signal) -> Result<(), BackendError> {
        // SAFETY: pidfd_send_signal with a pidfd we own, a signal number, a null
        // siginfo (the kernel fills in a default one) and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        match Errno::last() {
            // Exited between pinning and signalling: stopped either way.
            Errno::ESRCH => Ok(()),
            e => Err(BackendError::io(
                format!("fly: signalling pid {}", self.pid),
                e.into(),
            )),
        }
    }
}

/// Whether someone holds the pod's lock, i.e. the pod still runs. A momentary
/// shared lock that succeeds means nobody holds it exclusively.
pub(crate) fn lock_held(pod_dir: &Path) -> Result<bool, BackendError> {
    let dir = match std::fs::File::open(pod_dir) {
        Ok(dir) => dir,
        // Moved on to garbage: it no longer runs.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(BackendError::io(format!("fly: opening {}", pod_dir.display()), e)),
    };
    match Flock::lock(dir, FlockArg::LockSharedNonblock) {
        Ok(_probe) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(BackendError::io(
            format!("fly: probing the lock of {}", pod_dir.display()),
            e.into(),
        )),
    }
}
