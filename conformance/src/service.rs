//! A private `rkt metadata-service` for one check: its own registration socket
//! in the check's work directory and a port the kernel picks, so checks run in
//! parallel. Ready when it prints its listening line; killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::Rkt;

pub struct MetadataService {
    child: Child,
    pub socket: PathBuf,
    pub listen: SocketAddr,
}

impl MetadataService {
    /// Starts the service where the backend's pods reach it (127.0.0.1 on the
    /// host's network, else every address: pods on the CNI default network
    /// come from its gateway) and waits for its ready line.
    pub fn start(rkt: &Rkt) -> Result<Self, String> {
        Self::start_on(
            rkt,
            if rkt.host_network() {
                "127.0.0.1"
            } else {
                "0.0.0.0"
            },
        )
    }

    /// Starts the service listening on `address` (0.0.0.0 for pods on a CNI
    /// network, which reach the host at their gateway).
    pub fn start_on(rkt: &Rkt, address: &str) -> Result<Self, String> {
        let socket = rkt.work().join(format!("mds-{}.sock", std::process::id()));
        let log_path = rkt.work().join("metadata-service.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let mut child = rkt
            .command(&[
                "metadata-service",
                &format!("--listen-address={address}"),
                "--listen-port=0",
                &format!("--socket={}", socket.display()),
            ])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start rkt metadata-service: {e}"))?;
        let mut line = String::new();
        // The service prints one line once it accepts, or exits: no waiting on time.
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let listen = line
            .split_whitespace()
            .nth(4)
            .map(|a| a.trim_end_matches(','))
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match (read, listen) {
            (Some(Ok(_)), Some(listen)) => Ok(MetadataService {
                child,
                socket,
                listen,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
                Err(format!(
                    "rkt metadata-service did not start: stdout {line:?}, stderr {stderr:?}"
                ))
            }
        }
    }

    /// `--mds-register` and the socket flag for `rkt run`.
    pub fn run_flags(&self) -> [String; 2] {
        [
            "--mds-register".to_string(),
            format!("--mds-socket={}", self.socket.display()),
        ]
    }
}

impl Drop for MetadataService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET from the host: (status, content type, body). `flavor` adds the
/// `Metadata-Flavor: AppContainer` header.
pub fn get(url: &str, flavor: bool) -> Result<(u16, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url:?}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let header = if flavor {
        "Metadata-Flavor: AppContainer\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {authority}\r\n{header}Connection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    Ok((status, content_type, body.to_string()))
}
