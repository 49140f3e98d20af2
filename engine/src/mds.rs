//! Registering a pod with the metadata service (`rkt run --mds-register`).
//!
//! The service (`rkt metadata-service`) takes registrations as small HTTP/1.1
//! requests on a unix socket, as rkt's did: `PUT /pods/<uuid>?token=<token>` with
//! the pod manifest, `PUT /pods/<uuid>/<app>` with each app's image manifest, and
//! `DELETE /pods/<uuid>` when the pod has ended. Apps then reach the service over
//! TCP at `AC_METADATA_URL=http://<host-side ip>:<port>/<token>`.
//!
//! This side is plain blocking std I/O with timeouts: `rkt run` never starts an
//! async runtime, and a service that is missing or stuck is an error, not a hang.
//! The paths and header names live here so the service and `rkt run` share one
//! definition.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use crate::fsutil;
use crate::pod::layout;
use crate::schema::PodManifest;
use crate::stage::NetInfo;

/// rkt's registration socket.
pub const DEFAULT_SOCKET: &str = "/run/rkt/metadata-svc.sock";
/// rkt's public port.
pub const DEFAULT_PORT: u16 = 18112;
/// The header the service answers a registration with: its public TCP port, so
/// `rkt run` builds the URL without being told the port separately.
pub const PORT_HEADER: &str = "Rkt-Metadata-Port";
/// Every metadata request must carry `Metadata-Flavor: AppContainer`.
pub const FLAVOR_HEADER: &str = "Metadata-Flavor";
pub const FLAVOR: &str = "AppContainer";
/// The prefix of every public endpoint, after the token.
pub const API_PREFIX: &str = "/acMetadata/v1";

/// How long one registration exchange may take before `rkt run` gives up.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MdsError {
    #[error("--mds-register: no metadata service at {socket} (start `rkt metadata-service`): {source}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--mds-register: metadata service at {socket}: {message}")]
    Exchange { socket: PathBuf, message: String },
    #[error("--mds-register: {0}")]
    Invalid(String),
}

/// Where the service takes registrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdsRegistration {
    pub socket: PathBuf,
}

impl Default for MdsRegistration {
    fn default() -> Self {
        MdsRegistration {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// A pod the service knows; unregister it when the pod has ended.
#[derive(Debug)]
pub struct Registered {
    socket: PathBuf,
    uuid: Uuid,
    pod_dir: PathBuf,
    /// `AC_METADATA_URL` for the pod's apps.
    pub url: String,
}

impl MdsRegistration {
    /// Registers the pod at `pod_dir` (its manifest and each app's image
    /// manifest) under a fresh token and returns the apps' URL.
    pub fn register(&self, pod_dir: &Path, uuid: Uuid, net: &NetInfo) -> Result<Registered, MdsError> {
        let host = host_side_address(net)?;
        let manifest_path = layout::manifest(pod_dir);
        let manifest_bytes = std::fs::read(&manifest_path)
            .map_err(|e| MdsError::Invalid(format!("reading {}: {e}", manifest_path.display())))?;
        let manifest = PodManifest::from_json(&manifest_bytes)
            .map_err(|e| MdsError::Invalid(format!("{}: {e}", manifest_path.display())))?;
        let token = new_token().map_err(|e| MdsError::Invalid(format!("cannot make a token: {e}")))?;
        let answer = self.exchange("PUT", &format!("/pods/{uuid}?token={token}"), &manifest_bytes)?;
        let registered = Registered {
            socket: self.socket.clone(),
            uuid,
            pod_dir: pod_dir.to_path_buf(),
            url: String::new(),
        };
        // Recorded before anything else can fail, so whatever happens to this
        // process from here on, gc knows where to unregister the pod.
        let record = pod_dir.join(layout::MDS_REGISTRATION);
        if let Err(e) = fsutil::replace_file(&record, self.socket.as_os_str().as_bytes()) {
            registered.unregister();
            return Err(MdsError::Invalid(format!("writing {}: {e}", record.display())));
        }
        let apps = manifest.apps.iter().try_for_each(|app| {
            let name = app.name.as_str();
            let path = layout::app_image_manifest(pod_dir, name);
            let image = std::fs::read(&path)
                .map_err(|e| MdsError::Invalid(format!("reading {}: {e}", path.display())))?;
            self.exchange("PUT", &format!("/pods/{uuid}/{name}"), &image)
                .map(drop)
        });
        if let Err(e) = apps {
            registered.unregister();
            return Err(e);
        }
        let port = answer
            .header(PORT_HEADER)
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(DEFAULT_PORT);
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Registered {
            url: format!("http://{host}:{port}/{token}"),
            ..registered
        })
    }

    fn exchange(&self, method: &str, target: &str, body: &[u8]) -> Result<Answer, MdsError> {
        exchange(&self.socket, method, target, body)
    }
}

impl Registered {
    /// Forgets the pod; best effort (the service may be gone by now).
    pub fn unregister(&self) {
        unregister(&self.socket, self.uuid);
        let _ = std::fs::remove_file(self.pod_dir.join(layout::MDS_REGISTRATION));
    }
}

/// For gc: unregisters a pod whose `rkt run` ended without doing so (killed),
/// from the service its record names. Best effort, as at the end of a run.
pub fn unregister_recorded(pod_dir: &Path, uuid: Uuid) {
    let Ok(socket) = std::fs::read(pod_dir.join(layout::MDS_REGISTRATION)) else {
        return;
    };
    unregister(Path::new(std::ffi::OsStr::from_bytes(&socket)), uuid);
}

fn unregister(socket: &Path, uuid: Uuid) {
    if let Err(e) = exchange(socket, "DELETE", &format!("/pods/{uuid}"), b"") {
        tracing::warn!("unregistering pod {uuid} from the metadata service: {e}");
    }
}

/// The address an app uses to reach the host: 127.0.0.1 on the host's network,
/// else the host side of the pod's first network that has one (its gateway:
/// for ptp networks the host end of the veth pair).
pub fn host_side_address(net: &NetInfo) -> Result<String, MdsError> {
    if net.netns.is_none() {
        return Ok("127.0.0.1".into());
    }
    net.networks
        .iter()
        .find_map(|n| n.gateway.clone().filter(|g| !g.is_empty()))
        .ok_or_else(|| {
            let names: Vec<&str> = net.networks.iter().map(|n| n.name.as_str()).collect();
            MdsError::Invalid(format!(
                "no network of the pod ({}) has a host-side address to reach the metadata service on",
                names.join(", ")
            ))
        })
}

/// 256 bits from the kernel, hex: not guessable, not the pod's UUID.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

struct Answer {
    status: u16,
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// One request on a fresh connection (`Connection: close`), with every step
/// bounded by [`TIMEOUT`]; any status but 200 is an error naming it.
fn exchange(socket: &Path, method: &str, target: &str, body: &[u8]) -> Result<Answer, MdsError> {
    let unreachable = |source| MdsError::Unreachable {
        socket: socket.to_path_buf(),
        source,
    };
    let failed = |message: String| MdsError::Exchange {
        socket: socket.to_path_buf(),
        message,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| failed(e.to_string()))?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| failed(format!("{method} {target}: {e}")))?;
    let mut reply = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut reply)
        .map_err(|e| failed(format!("{method} {target}: no answer: {e}")))?;
    let text = String::from_utf8_lossy(&reply);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| failed(format!("{method} {target}: not an HTTP answer")))?;
    if status != 200 {
        let why = rest.trim();
        return Err(failed(format!("{method} {target}: status {status}: {why}")));
    }
    Ok(Answer {
        status,
        head: head.to_string(),
    })
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Answer({})", self.status)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stage::NetworkAttachment;

    #[test]
    fn host_network_uses_loopback_and_a_netns_its_gateway() {
        assert_eq!(host_side_address(&NetInfo::default()).unwrap(), "127.0.0.1");
        let mut net = NetInfo {
            netns: Some("/run/netns/x".into()),
            ..NetInfo::default()
        };
        assert!(host_side_address(&net).is_err());
        net.networks.push(NetworkAttachment {
            name: "default".into(),
            ifname: "eth0".into(),
            ip: "172.16.28.5".into(),
            gateway: Some("172.16.28.1".into()),
        });
        assert_eq!(host_side_address(&net).unwrap(), "172.16.28.1");
    }

    #[test]
    fn a_missing_service_is_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let err = exchange(&socket, "DELETE", "/pods/x", b"").unwrap_err();
        assert!(err.to_string().contains("none.sock"), "{err}");
    }

    #[test]
    fn a_service_that_never_answers_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stuck.sock");
        // Bound and listening (connect succeeds), but nobody ever reads or answers.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let started = std::time::Instant::now();
        let err = exchange(&socket, "DELETE", "/pods/x", b"").unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
        assert!(started.elapsed() < TIMEOUT * 3, "took {:?}", started.elapsed());
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
