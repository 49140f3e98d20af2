//! Mutable VM pods (`rkt app sandbox --stage1=kvm`), the host's half of the
//! request channel. Stage0 speaks to a VM pod exactly as to an nspawn one: one
//! connection, one JSON line each way, on `pod::sandbox::socket()` in the
//! stage1 rootfs. Here, in the process that runs QEMU, a relay listens there
//! and carries each line, tagged with its connection's number
//! (`sandbox::encode_frame`), over one virtio-serial port to the guest's init,
//! and each answer back to the connection it belongs to. Many requests can be
//! in flight at once (a stop is answered only when its app has exited).
//!
//! QEMU gets its end of the channel as an inherited socket (`-chardev
//! socket,fd=N`): no path, no connect race, and the channel is connected from
//! QEMU's start, so the guest's reads block instead of seeing a closed port.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag};
use rkt_engine::fsutil;
use rkt_engine::pod::sandbox;

use crate::KvmError;

/// How long a client may take to send its one line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel before QEMU starts: QEMU's end stays open across exec (and
/// only QEMU is forked while it exists), ours is close-on-exec.
pub struct Channel {
    qemu_end: OwnedFd,
    ours: UnixStream,
}

impl Channel {
    pub fn new() -> Result<Self, KvmError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| KvmError::io("creating the sandbox channel", e))?;
        let qemu_end = OwnedFd::from(theirs);
        nix::fcntl::fcntl(&qemu_end, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| KvmError::io("passing the sandbox channel to qemu", e.into()))?;
        Ok(Channel { qemu_end, ours })
    }

    /// The descriptor number QEMU finds its end at.
    pub fn qemu_fd(&self) -> RawFd {
        self.qemu_end.as_raw_fd()
    }

    /// Once QEMU runs: drops QEMU's end here, listens where stage0 connects and
    /// relays until QEMU's end closes. The relay stops listening when the
    /// returned value is dropped.
    pub fn start(self, pod: &Path) -> Result<Relay, KvmError> {
        drop(self.qemu_end);
        let path = sandbox::socket().on_host(pod);
        let listener = listen(&path)?;
        let vm_reader = self.ours;
        let vm_writer = vm_reader
            .try_clone()
            .map_err(|e| KvmError::io("sandbox channel", e))?;
        let shared = Arc::new(Shared {
            waiting: Mutex::new(HashMap::new()),
            vm: Mutex::new(vm_writer),
            next: AtomicU64::new(1),
        });
        let accepting = listener
            .try_clone()
            .map_err(|e| KvmError::io("sandbox socket", e))?;
        let for_answers = shared.clone();
        std::thread::Builder::new()
            .name("sandbox-answers".into())
            .spawn(move || for_answers.answer_all(vm_reader))
            .map_err(|e| KvmError::io("starting the sandbox relay", e))?;
        std::thread::Builder::new()
            .name("sandbox-requests".into())
            .spawn(move || {
                for client in accepting.incoming() {
                    let Ok(client) = client else { break };
                    let shared = shared.clone();
                    // A client sends its line at its own pace; others go on.
                    let _ = std::thread::Builder::new()
                        .name("sandbox-request".into())
                        .spawn(move || shared.forward(client));
                }
            })
            .map_err(|e| KvmError::io("starting the sandbox relay", e))?;
        Ok(Relay { listener, path })
    }
}

/// Bound through the directory's fd: a long `--dir` would exceed sun_path.
fn listen(path: &Path) -> Result<UnixListener, KvmError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(|e| KvmError::io(format!("creating {}", parent.display()), e))?;
    let dir =
        fsutil::open_dir(parent).map_err(|e| KvmError::io(format!("opening {}", parent.display()), e))?;
    let name = path.file_name().unwrap_or_default();
    let short = fsutil::proc_fd_path(dir.as_fd()).join(name);
    let _ = std::fs::remove_file(&short);
    let listener = UnixListener::bind(&short)
        .map_err(|e| KvmError::io(format!("listening on {}", path.display()), e))?;
    // Only root (stage0) may drive the pod.
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| KvmError::io(format!("chmod {}", path.display()), e))?;
    Ok(listener)
}

/// The running relay; dropping it stops taking requests and removes the socket.
pub struct Relay {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // Wakes the accepting thread (accept fails on a shut-down listener).
        // SAFETY: shutdown(2) on a socket fd this value owns; no memory is passed.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

struct Shared {
    /// Connections whose request went to the guest, by their number.
    waiting: Mutex<HashMap<u64, UnixStream>>,
    vm: Mutex<UnixStream>,
    next: AtomicU64,
}

impl Shared {
    fn forward(&self, client: UnixStream) {
        let _ = client.set_read_timeout(Some(REQUEST_TIMEOUT));
        let mut line = Vec::new();
        let read = BufReader::new(&client).read_until(b'\n', &mut line);
        if read.is_err() || line.is_empty() {
            return;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let Ok(answer_to) = client.try_clone() else {
            return;
        };
        lock(&self.waiting).insert(id, answer_to);
        let sent = lock(&self.vm).write_all(&sandbox::encode_frame(id, &line));
        if sent.is_err() {
            // The VM is gone: the client sees its connection close unanswered.
            lock(&self.waiting).remove(&id);
        }
    }

    /// Each answer from the guest to its connection; when the guest's side
    /// ends, every waiting client's connection is closed.
    fn answer_all(&self, vm: UnixStream) {
        let mut reader = BufReader::new(vm);
        let mut frame = Vec::new();
        loop {
            frame.clear();
            match reader.read_until(b'\n', &mut frame) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let Ok((id, line)) = sandbox::decode_frame(&frame) else {
                tracing::warn!("kvm: dropping a malformed frame from the guest");
                continue;
            };
            if let Some(mut client) = lock(&self.waiting).remove(&id) {
                let mut answer = line.to_vec();
                answer.push(b'\n');
                // A client that went away is not the pod's problem.
                let _ = client.write_all(&answer);
            }
        }
        lock(&self.waiting).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A relay thread that panicked left plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rkt_engine::pod::sandbox::{Request, Response};

    /// The guest's side played by the test on QEMU's end of the channel:
    /// answers travel back to their own connection, out of order.
    #[test]
    fn answers_find_their_connections_in_any_order() {
        let pod = tempfile::tempdir().unwrap();
        let channel = Channel::new().unwrap();
        let guest = UnixStream::from(channel.qemu_end.try_clone().unwrap());
        let relay = channel.start(pod.path()).unwrap();
        let first = std::thread::spawn({
            let dir = pod.path().to_path_buf();
            move || {
                sandbox::send(
                    &dir,
                    &Request::StopApp {
                        app: "slow".into(),
                        force: false,
                    },
                )
            }
        });
        let mut frames = BufReader::new(guest.try_clone().unwrap());
        let mut frame = Vec::new();
        frames.read_until(b'\n', &mut frame).unwrap();
        let (stop_id, line) = sandbox::decode_frame(&frame).unwrap();
        assert!(matches!(
            sandbox::decode_request(line).unwrap(),
            Request::StopApp { .. }
        ));
        // A second request while the stop waits, answered first.
        let second = std::thread::spawn({
            let dir = pod.path().to_path_buf();
            move || sandbox::send(&dir, &Request::StartApp { app: "b".into() })
        });
        let mut frame = Vec::new();
        frames.read_until(b'\n', &mut frame).unwrap();
        let (start_id, _) = sandbox::decode_frame(&frame).unwrap();
        assert_ne!(start_id, stop_id);
        let mut out = guest.try_clone().unwrap();
        out.write_all(&sandbox::encode_frame(
            start_id,
            &sandbox::encode_response(&Response::Done),
        ))
        .unwrap();
        assert_eq!(second.join().unwrap().unwrap(), Response::Done);
        out.write_all(&sandbox::encode_frame(
            stop_id,
            &sandbox::encode_response(&Response::Stopped { exit_code: 7 }),
        ))
        .unwrap();
        assert_eq!(first.join().unwrap().unwrap(), Response::Stopped { exit_code: 7 });

        // The guest's end closing fails a waiting request instead of hanging it.
        let third = std::thread::spawn({
            let dir = pod.path().to_path_buf();
            move || sandbox::send(&dir, &Request::StartApp { app: "c".into() })
        });
        let mut frame = Vec::new();
        frames.read_until(b'\n', &mut frame).unwrap();
        drop((frames, out, guest));
        assert!(third.join().unwrap().is_err());
        let socket = sandbox::socket().on_host(pod.path());
        assert!(socket.exists());
        drop(relay);
        assert!(!socket.exists(), "the socket outlived the relay");
    }
}
