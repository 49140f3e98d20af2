//! QEMU as stage0 runs it: in the pod's network namespace and a private mount
//! namespace holding the pod's mounts, killed with rkt, rkt's stop signals
//! forwarded to it.
//!
//! Assumption (as for fly and nspawn): the calling process is single-threaded
//! when it forks.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
pub use rkt_engine::stage::process::wait_exit;
use rkt_engine::stage::process::{SpawnError, Supervised, spawn_supervised};

use crate::KvmError;
use crate::setup::PodMounts;

pub struct Qemu {
    process: Supervised,
    console_relays: Vec<JoinHandle<()>>,
}

impl Qemu {
    pub fn pid(&self) -> Pid {
        self.process.pid
    }

    /// Ends a QEMU whose VM is of no use (a failed snapshot or restore).
    pub fn kill(self) {
        let _ = nix::sys::signal::kill(self.process.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.wait();
    }

    /// QEMU's exit code, or 128+signal; returns once the console output QEMU
    /// wrote has reached rkt's stdout and stderr.
    pub fn wait(self) -> Result<i32, KvmError> {
        let code = self
            .process
            .wait()
            .map_err(|e| KvmError::io("waiting for qemu", e))?;
        for relay in self.console_relays {
            let _ = relay.join();
        }
        Ok(code)
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
    let mut console_relays = Vec::new();
    if let Some((pipe, relay)) = console_relay(std::io::stdout())? {
        cmd.stdout(pipe);
        console_relays.push(relay);
    }
    if let Some((pipe, relay)) = console_relay(std::io::stderr())? {
        cmd.stderr(pipe);
        console_relays.push(relay);
    }
    let mounts = mounts.clone();
    let setup = move || {
        nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("kvm: joining the pod's network namespace: {}", e.desc()))?;
        mounts.make()
    };
    match spawn_supervised(cmd, setup) {
        Ok(process) => Ok(Qemu {
            process,
            console_relays,
        }),
        Err(SpawnError::Start(e)) => Err(KvmError::io(format!("starting {}", program.display()), e)),
        Err(SpawnError::Setup(msg)) => Err(KvmError::Pod(msg)),
    }
}

/// QEMU's chardevs take a path, so it opens `/proc/self/fd/N` anew and gets a
/// file offset of its own. Into a pipe or a terminal that changes nothing; into
/// a regular file opened without O_APPEND (`{ echo a; rkt run ...; echo b; } > log`)
/// QEMU's writes and the shell's would overwrite each other. Such a descriptor
/// gets a pipe instead, which a thread of rkt copies into it.
fn console_relay<T>(target: T) -> Result<Option<(OwnedFd, JoinHandle<()>)>, KvmError>
where
    T: AsFd + Send + 'static,
{
    let is_file =
        nix::sys::stat::fstat(target.as_fd()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    let appends = nix::fcntl::fcntl(target.as_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .is_ok_and(|flags| flags & libc::O_APPEND != 0);
    if !is_file || appends {
        return Ok(None);
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| KvmError::io("creating the console pipe", e.into()))?;
    let relay = std::thread::Builder::new()
        .name("kvm-console".into())
        .spawn(move || copy_until_eof(read, target.as_fd()))
        .map_err(|e| KvmError::io("starting the console relay", e))?;
    Ok(Some((write, relay)))
}

/// Copies until QEMU closes its end. A failing target (disk full) does not stop
/// the reading: a full pipe would stall the guest's console.
fn copy_until_eof(source: OwnedFd, target: BorrowedFd) {
    let mut buf = [0u8; 16 * 1024];
    let mut target_ok = true;
    loop {
        let n = match nix::unistd::read(&source, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let mut rest = &buf[..n];
        while target_ok && !rest.is_empty() {
            match nix::unistd::write(target, rest) {
                Ok(written) => rest = &rest[written..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => target_ok = false,
            }
        }
    }
}
