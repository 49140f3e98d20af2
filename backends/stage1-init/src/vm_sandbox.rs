//! A mutable pod in a VM, the guest's half of the request channel. The
//! init's request loop ([`crate::sandbox`]) is the one nspawn pods run; only
//! its socket differs: the share is the host's directory, so the host's relay
//! listens at the usual path there, and the loop listens on an abstract socket
//! of the guest instead. A relay thread carries each framed request
//! (`sandbox::decode_frame`) from the virtio-serial port [`sandbox::VM_PORT`]
//! to that socket, one connection per request as stage0 makes them on nspawn,
//! and the answer back with the same number.
//!
//! An abstract socket has no permissions, so the loop admits only
//! connections from this process (the relay's threads).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rkt_engine::pod::sandbox::{self, Response};

/// The guest's socket for the request loop.
const ABSTRACT_NAME: &[u8] = b"rkt.sandbox";

/// How long the relay waits for the port's device; see [`crate::vm`].
const PORT_WAIT: Duration = Duration::from_secs(5);

/// Bound by [`start`] before the relay runs, taken by the request loop.
static LISTENER: Mutex<Option<UnixListener>> = Mutex::new(None);

/// For a mutable pod (stage0 said so in the VM config, sparing a read of
/// the manifest over the share): binds the loop's socket and starts the
/// relay thread. Called with the init's signals already blocked, so the
/// thread inherits the mask and every signal stays with the init's signalfd.
pub(crate) fn start(mutable: bool) {
    if !mutable {
        return;
    }
    let listener = match bind() {
        Ok(l) => l,
        Err(e) => {
            // The loop then binds its usual socket and no request arrives:
            // stage0 sees its requests unanswered when the pod stops.
            eprintln!("stage1: sandbox socket: {e}");
            return;
        }
    };
    *LISTENER.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    let started = std::thread::Builder::new()
        .name("sandbox-relay".into())
        .spawn(|| {
            if let Err(e) = relay() {
                eprintln!("stage1: sandbox relay: {e}");
            }
        });
    if let Err(e) = started {
        eprintln!("stage1: starting the sandbox relay: {e}");
    }
}

fn bind() -> std::io::Result<UnixListener> {
    let addr = SocketAddr::from_abstract_name(ABSTRACT_NAME)?;
    let listener = UnixListener::bind_addr(&addr)?;
    // The request loop accepts until it would block.
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The listener the request loop serves, when this is a VM.
pub(crate) fn take_listener() -> Option<UnixListener> {
    LISTENER.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Whether a connection on the abstract socket comes from this process.
pub(crate) fn admits(stream: &UnixStream) -> bool {
    // SAFETY: ucred is plain data; all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of `len` bytes at the pointer given,
    // both alive for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    rc == 0 && u32::try_from(cred.pid).is_ok_and(|pid| pid == std::process::id())
}

fn relay() -> std::io::Result<()> {
    let start = std::time::Instant::now();
    let dev = loop {
        if let Some(dev) = crate::vm::find_port(sandbox::VM_PORT) {
            break dev;
        }
        if start.elapsed() > PORT_WAIT {
            return Err(std::io::Error::other(format!(
                "the virtio-serial port {} did not appear",
                sandbox::VM_PORT
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let port = File::options().read(true).write(true).open(&dev)?;
    let answers = Arc::new(Mutex::new(port.try_clone()?));
    let mut frames = BufReader::new(port);
    let mut frame = Vec::new();
    loop {
        frame.clear();
        if frames.read_until(b'\n', &mut frame)? == 0 {
            // The port reads as closed until the host's side is announced
            // (at boot, racing the first read); QEMU holds it open for the
            // VM's life, so this is brief.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Ok((id, line)) = sandbox::decode_frame(&frame) else {
            eprintln!("stage1: sandbox relay: dropping a malformed frame");
            continue;
        };
        let line = line.to_vec();
        let answers = answers.clone();
        // Each request on its own connection: a parked stop holds only its own.
        let spawned = std::thread::Builder::new()
            .name("sandbox-request".into())
            .spawn(move || {
                let answer = ask(&line).unwrap_or_else(|e| {
                    sandbox::encode_response(&Response::Failed {
                        message: format!("stage1: {e}"),
                    })
                });
                let mut port = answers.lock().unwrap_or_else(|p| p.into_inner());
                let _ = port.write_all(&sandbox::encode_frame(id, &answer));
            });
        if let Err(e) = spawned {
            eprintln!("stage1: sandbox relay: {e}");
        }
    }
}

/// One request to the loop; its answer line.
fn ask(line: &[u8]) -> std::io::Result<Vec<u8>> {
    let addr = SocketAddr::from_abstract_name(ABSTRACT_NAME)?;
    let mut stream = UnixStream::connect_addr(&addr)?;
    stream.write_all(line)?;
    stream.write_all(b"\n")?;
    let mut answer = Vec::new();
    BufReader::new(&stream).read_until(b'\n', &mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::other(
            "the pod's init closed the request without answering",
        ));
    }
    Ok(answer)
}
