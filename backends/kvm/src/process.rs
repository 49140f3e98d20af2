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
