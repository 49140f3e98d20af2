//! QEMU as stage0 runs it: in the pod's network namespace and a private mount
//! namespace holding the pod's mounts, killed with rkt, rkt's stop signals
//! forwarded to it.
//!
//! Assumption (as for fly and nspawn): the calling process is single-threaded
//! when it forks.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;
use nix::unistd::Pid;
pub use rkt_engine::stage::process::wait_exit;
use rkt_engine::stage::process::{SpawnError, Supervised, spawn_supervised};

use crate::KvmError;
use crate::setup::PodMounts;

pub struct Qemu(Supervised);

impl Qemu {
    pub fn pid(&self) -> Pid {
        self.0.pid
    }

    /// QEMU's exit code, or 128+signal.
    pub fn wait(self) -> Result<i32, KvmError> {
        self.0.wait().map_err(|e| KvmError::io("waiting for qemu", e))
    }
}

pub fn spawn(
    program: &Path,
    argv: &[OsString],
    netns: OwnedFd,
    mounts: &PodMounts,
) -> Result<Qemu, KvmError> {
    let mut cmd = Command::new(program);
    // The guest's console output arrives on the stdio QEMU inherits; nothing
    // reads QEMU's stdin.
    cmd.args(argv).stdin(Stdio::null());
    let mounts = mounts.clone();
    let setup = move || {
        nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("kvm: joining the pod's network namespace: {}", e.desc()))?;
        mounts.make()
    };
    match spawn_supervised(cmd, setup) {
        Ok(qemu) => Ok(Qemu(qemu)),
        Err(SpawnError::Start(e)) => Err(KvmError::io(format!("starting {}", program.display()), e)),
        Err(SpawnError::Setup(msg)) => Err(KvmError::Pod(msg)),
    }
}
