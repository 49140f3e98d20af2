//! Apps' stdout and stderr, relayed line by line: a line reaches the pod's
//! stdout/stderr (rkt run's) whole, never interleaved with another app's half
//! line, and is appended to the app's log in the pod directory.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rkt_engine::pod::applog;

/// Longest partial line held back; a longer one is passed on in pieces.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One app's pipe of one stream.
pub struct Relay {
    pub app: usize,
    pub stream: Stream,
    pipe: Option<OwnedFd>,
    pending: Vec<u8>,
}

impl Relay {
    pub fn new(app: usize, stream: Stream, pipe: OwnedFd) -> Self {
        Relay {
            app,
            stream,
            pipe: Some(pipe),
            pending: Vec::new(),
        }
    }

    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.as_fd())
    }

    /// Reads what is there; complete lines go to `out` and `log`. At EOF the
    /// rest is flushed and the pipe closed. Returns false once closed.
    pub fn pump(&mut self, out: &mut dyn Write, log: Option<&mut File>) -> bool {
        let Some(pipe) = &self.pipe else { return false };
        let mut buf = [0u8; 16 * 1024];
        let n = match nix::unistd::read(pipe, &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => return true,
            Err(_) => 0,
        };
        if n == 0 {
            self.pipe = None;
            let rest = std::mem::take(&mut self.pending);
            emit(&rest, self.stream, true, out, log);
            return false;
        }
        self.pending.extend_from_slice(&buf[..n]);
        let cut = match self.pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() >= MAX_LINE => self.pending.len(),
            None => return true,
        };
        let lines: Vec<u8> = self.pending.drain(..cut).collect();
        emit(&lines, self.stream, false, out, log);
        true
    }
}

/// To `out` as the app wrote it; to the log as CRI records (`pod::applog`).
fn emit(bytes: &[u8], stream: Stream, eof: bool, out: &mut dyn Write, log: Option<&mut File>) {
    if bytes.is_empty() {
        return;
    }
    // Nobody reading rkt's output (a closed pipe) must not stop the pod.
    let _ = out.write_all(bytes).and_then(|()| out.flush());
    if let Some(log) = log {
        let stream = match stream {
            Stream::Stdout => applog::LogStream::Stdout,
            Stream::Stderr => applog::LogStream::Stderr,
        };
        let mut records = Vec::with_capacity(bytes.len() + 40);
        applog::encode(std::time::SystemTime::now(), stream, bytes, eof, &mut records);
        let _ = log.write_all(&records);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_lines_pass_until_eof() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relay = Relay::new(0, Stream::Stdout, r);
        let mut out = Vec::new();
        nix::unistd::write(&w, b"one\ntw").unwrap();
        assert!(relay.pump(&mut out, None));
        assert_eq!(out, b"one\n");
        nix::unistd::write(&w, b"o\nthr").unwrap();
        assert!(relay.pump(&mut out, None));
        assert_eq!(out, b"one\ntwo\n");
        drop(w);
        assert!(!relay.pump(&mut out, None));
        assert_eq!(out, b"one\ntwo\nthr");
        assert!(relay.fd().is_none());
    }
}
