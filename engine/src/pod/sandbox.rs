//! Mutable pods (`rkt app sandbox/add/start/stop/rm`): the requests stage0 sends
//! the stage1 init of a running sandbox, and what the init records about each app.
//!
//! Transport: the init listens on a unix socket in the stage1 rootfs
//! ([`socket`]); each request is one connection carrying one JSON line each way,
//! so a request that waits (stopping an app) blocks only its own caller, and an
//! init that dies closes the connection instead of leaving stage0 waiting. Every
//! message carries [`PROTOCOL_VERSION`]; a peer refuses a version it does not
//! speak. A stage1 that cannot share a unix socket with the host (a VM) serves
//! the same lines over its own channel: stage0 still connects to [`socket`],
//! where the stage1 relays each line over one virtio-serial port ([`VM_PORT`])
//! tagged with its connection's number ([`encode_frame`]).
//!
//! What the init knows about each app lives in [`app_state`] files (written
//! temp + rename), so `rkt app status` and `rkt app list` read them without
//! asking the init, also after the pod has exited.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::protocol::{AppIsolation, Stage1Path};
use crate::fsutil;
use crate::schema::PodManifest;

/// rkt's annotation on a pod manifest that `rkt app sandbox` made: the pod runs
/// with no apps and takes app requests.
pub const MUTABLE_ANNOTATION: &str = "coreos.com/rkt/stage1/mutable";

/// The request protocol's version; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

pub fn mutable_annotation() -> crate::schema::Annotation {
    crate::schema::Annotation {
        // A constant that is a valid identifier.
        name: crate::schema::ACIdentifier::new(MUTABLE_ANNOTATION)
            .unwrap_or_else(|_| unreachable!("{MUTABLE_ANNOTATION} is an AC identifier")),
        value: "true".into(),
    }
}

pub fn is_mutable(manifest: &PodManifest) -> bool {
    manifest
        .annotations
        .iter()
        .any(|a| a.name.as_str() == MUTABLE_ANNOTATION && a.value == "true")
}

/// The socket the init of a mutable pod listens on.
pub fn socket() -> Stage1Path {
    Stage1Path::new("rkt/sandbox.sock")
}

/// One app's [`AppState`] as JSON.
pub fn app_state(app: &str) -> Stage1Path {
    Stage1Path::new(Path::new("rkt/state").join(format!("{app}.json")))
}

/// What stage0 asks of the init. The app's rootfs and its entry in the pod
/// manifest (`rkt/pod`) are in place before `AddApp` is sent, and the init has
/// unmounted the app's rootfs before `RemoveApp` is answered, so stage0 can
/// delete it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "request")]
pub enum Request {
    /// Assemble the app's root (volumes, /dev, /proc...); it is not started.
    AddApp {
        app: String,
        #[serde(default)]
        isolation: Option<AppIsolation>,
    },
    /// Run the app's pre-start handler, then the app.
    StartApp { app: String },
    /// SIGTERM (or SIGKILL with `force`) to the app's process group; answered
    /// once the app has exited.
    StopApp { app: String, force: bool },
    /// Forget a created or exited app and unmount its root.
    RemoveApp { app: String },
}

/// The init's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "response")]
pub enum Response {
    Done,
    /// The app has exited with this code (128+signal when killed).
    Stopped {
        exit_code: i32,
    },
    /// The request was refused or failed; the one line rkt shows.
    Failed {
        message: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// Where an app is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppPhase {
    Created,
    Running,
    Exited,
}

impl AppPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            AppPhase::Created => "created",
            AppPhase::Running => "running",
            AppPhase::Exited => "exited",
        }
    }
}

/// What the init records about an app; times in nanoseconds since the epoch
/// (rkt's app times).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppState {
    pub state: AppPhase,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The app's pid in the pod's pid namespace while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

impl AppState {
    pub fn created() -> Self {
        AppState {
            state: AppPhase::Created,
            created_at: now_nanos(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            pid: None,
        }
    }

    /// Reads an app's state as stage0 sees it (`path` from [`app_state`]).
    pub fn read(path: &Path) -> Option<AppState> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes it so a reader sees the old or the new state, never a mixture.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        fsutil::replace_file(path, &bytes)
    }
}

pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
}

/// One request line (versioned).
pub fn encode_request(request: &Request) -> Vec<u8> {
    line(&Envelope {
        version: PROTOCOL_VERSION,
        body: request,
    })
}

/// One response line (versioned).
pub fn encode_response(response: &Response) -> Vec<u8> {
    line(&Envelope {
        version: PROTOCOL_VERSION,
        body: response,
    })
}

fn line<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain data with string keys: serialising cannot fail.
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, SandboxError> {
    #[derive(serde::Deserialize)]
    struct Version {
        version: u32,
    }
    let bytes = bytes.trim_ascii();
    let version: Version = serde_json::from_slice(bytes)
        .map_err(|e| SandboxError::Protocol(format!("malformed {what}: {e}")))?;
    if version.version != PROTOCOL_VERSION {
        return Err(SandboxError::Protocol(format!(
            "{what} speaks protocol version {}, this rkt speaks {PROTOCOL_VERSION}",
            version.version
        )));
    }
    let envelope: Envelope<T> = serde_json::from_slice(bytes)
        .map_err(|e| SandboxError::Protocol(format!("malformed {what}: {e}")))?;
    Ok(envelope.body)
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, SandboxError> {
    decode(bytes, "request")
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, SandboxError> {
    decode(bytes, "response")
}

/// Sends one request to the init of the running mutable pod at `pod_dir` and
/// waits for its answer.
pub fn send(pod_dir: &Path, request: &Request) -> Result<Response, SandboxError> {
    let path = socket().on_host(pod_dir);
    let io = |context: String| move |source| SandboxError::Io { context, source };
    // Through the directory's fd: a long --dir would exceed sun_path's 108 bytes.
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir = fsutil::open_dir(parent).map_err(io(format!("opening {}", parent.display())))?;
    let short: PathBuf = fsutil::proc_fd_path(std::os::fd::AsFd::as_fd(&dir)).join("sandbox.sock");
    let mut stream = UnixStream::connect(&short)
        .map_err(io(format!("connecting to the pod's init at {}", path.display())))?;
    stream
        .write_all(&encode_request(request))
        .map_err(io("sending a request to the pod's init".into()))?;
    let mut answer = Vec::new();
    BufReader::new(&stream)
        .read_until(b'\n', &mut answer)
        .map_err(io("reading the pod's answer".into()))?;
    if answer.is_empty() {
        return Err(SandboxError::Protocol(
            "the pod's init closed the connection without answering (did the pod stop?)".into(),
        ));
    }
    decode_response(&answer)
}

/// The virtio-serial port that carries a VM pod's requests and answers.
pub const VM_PORT: &str = "rkt.sandbox";

/// One request or answer on a VM's shared channel: `ID LINE\n`, where ID is
/// the number the host's relay gave the connection the request came on, so
/// answers (a stop's can come much later) find their way back.
pub fn encode_frame(id: u64, line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut frame = format!("{id} ").into_bytes();
    frame.extend_from_slice(line);
    frame.push(b'\n');
    frame
}

/// The connection number and the line of a frame (without its newline).
pub fn decode_frame(frame: &[u8]) -> Result<(u64, &[u8]), SandboxError> {
    let frame = frame.strip_suffix(b"\n").unwrap_or(frame);
    let bad = || SandboxError::Protocol(format!("malformed frame {:?}", String::from_utf8_lossy(frame)));
    let space = frame.iter().position(|b| *b == b' ').ok_or_else(bad)?;
    let id = std::str::from_utf8(&frame[..space])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((id, &frame[space + 1..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_with_their_version() {
        let requests = [
            Request::AddApp {
                app: "a".into(),
                isolation: None,
            },
            Request::StartApp { app: "a".into() },
            Request::StopApp {
                app: "a".into(),
                force: true,
            },
            Request::RemoveApp { app: "a".into() },
        ];
        for r in requests {
            let line = encode_request(&r);
            assert!(String::from_utf8_lossy(&line).contains("\"version\":1"));
            assert_eq!(decode_request(&line).unwrap(), r);
        }
        for r in [
            Response::Done,
            Response::Stopped { exit_code: 3 },
            Response::Failed { message: "x".into() },
        ] {
            assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
        }
    }

    #[test]
    fn another_version_or_garbage_is_refused_by_name() {
        let e = decode_request(br#"{"version":2,"request":"start-app","app":"a"}"#).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert!(decode_request(b"nonsense").is_err());
        assert!(decode_request(br#"{"version":1,"request":"fly"}"#).is_err());
    }

    #[test]
    fn frames_carry_a_line_and_its_connection() {
        let line = encode_request(&Request::StartApp { app: "a".into() });
        let frame = encode_frame(42, &line);
        assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
        let (id, back) = decode_frame(&frame).unwrap();
        assert_eq!(id, 42);
        assert_eq!(
            decode_request(back).unwrap(),
            Request::StartApp { app: "a".into() }
        );
        assert!(decode_frame(b"nonsense\n").is_err());
        assert!(decode_frame(b"x {}\n").is_err());
    }

    #[test]
    fn app_state_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let mut s = AppState::created();
        s.state = AppPhase::Exited;
        s.exit_code = Some(5);
        s.write(&path).unwrap();
        assert_eq!(AppState::read(&path), Some(s));
        assert_eq!(AppState::read(&dir.path().join("none")), None);
    }
}
