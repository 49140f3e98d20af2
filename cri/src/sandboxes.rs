//! CRI pod sandboxes on rkt's mutable pods. A sandbox is an `rkt app
//! sandbox` process the service spawns and reaps; its ID is the pod's UUID.
//! What the CRI needs and rkt does not keep (metadata, labels, annotations,
//! the runtime handler) is a record in `<dir>/cri/sandboxes/<uuid>.json`,
//! written atomically; the sandbox's state comes from the pod itself. So a
//! restarted service finds every sandbox again from `--dir` alone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rkt_engine::fsutil;
use rkt_engine::pod::{PodError, PodState, PodsDir, layout};
use rkt_engine::runner::NetRecord;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How long RunPodSandbox and StopPodSandbox wait for the pod.
const WAIT: &str = "120s";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    Invalid(String),
    #[error("pod sandbox {0} not found")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Pod(#[from] PodError),
    #[error("{0}")]
    Rkt(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// How the service runs rkt for its sandboxes.
#[derive(Debug, Clone)]
pub struct Engine {
    /// rkt's `--dir`.
    pub dir: PathBuf,
    /// The rkt binary the sandboxes run under.
    pub rkt: PathBuf,
    /// Global flags every rkt child gets (`--dir`, `--insecure-options`, ...).
    pub global_args: Vec<String>,
    /// The stage1 for an empty runtime handler.
    pub stage1: String,
}

/// What the CRI asked for when it ran the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub host_network: bool,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// PodSandboxConfig.log_directory: container logs go under it.
    #[serde(default)]
    pub log_directory: String,
}

/// What RunPodSandbox hands to `rkt app sandbox`.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    pub record: Record,
    pub hostname: String,
    pub dns_servers: Vec<String>,
    pub dns_searches: Vec<String>,
    pub dns_options: Vec<String>,
    /// `rkt app sandbox --port` values, see [`port_flag`].
    pub ports: Vec<String>,
}

/// A CRI port mapping as `rkt app sandbox --port NAME:PROTO:PODPORT:HOSTIP:HOSTPORT`;
/// None for one without a host port, which forwards nothing. `protocol` is
/// the CRI's name (TCP, UDP, SCTP); portmap and appc know no SCTP.
pub fn port_flag(
    protocol: &str,
    container_port: i32,
    host_port: i32,
    host_ip: &str,
) -> Result<Option<String>, SandboxError> {
    if host_port == 0 {
        return Ok(None);
    }
    let proto = match protocol {
        "TCP" => "tcp",
        "UDP" => "udp",
        other => {
            return Err(SandboxError::Invalid(format!(
                "port mapping {host_port}->{container_port}: protocol {other} is not supported (TCP and UDP are)"
            )));
        }
    };
    let in_range = |p: i32| (1..=65535).contains(&p);
    if !in_range(host_port) || !in_range(container_port) {
        return Err(SandboxError::Invalid(format!(
            "port mapping {host_port}->{container_port}: ports must be in 1..=65535"
        )));
    }
    let host_ip = match host_ip {
        "" => "0.0.0.0".to_string(),
        ip => match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            Ok(v4) => v4.to_string(),
            Err(_) => {
                return Err(SandboxError::Invalid(format!(
                    "port mapping {host_port}->{container_port}: host_ip {ip:?} is not an IP address"
                )));
            }
        },
    };
    Ok(Some(format!(
        "{proto}-{container_port}-{host_port}:{proto}:{container_port}:{host_ip}:{host_port}"
    )))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
}

impl Engine {
    fn records_dir(&self) -> PathBuf {
        self.dir.join("cri").join("sandboxes")
    }

    fn record_path(&self, id: &Uuid) -> PathBuf {
        self.records_dir().join(format!("{id}.json"))
    }

    fn log_path(&self, id: &Uuid) -> PathBuf {
        self.records_dir().join(format!("{id}.log"))
    }

    pub(crate) fn rkt(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.rkt);
        cmd.args(&self.global_args).args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs a short rkt command; its stderr is the error.
    pub(crate) fn rkt_ok(&self, args: &[&str]) -> Result<(), SandboxError> {
        let out = self
            .rkt(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io_err(format!("cannot run {}", self.rkt.display())))?;
        if out.status.success() {
            return Ok(());
        }
        Err(SandboxError::Rkt(format!(
            "rkt {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    /// Spawns `rkt app sandbox`, waits until the pod is running and records
    /// it. The rkt process stays a child of a reaper thread; it is in its own
    /// process group, so a signal meant for the service does not stop pods.
    pub fn run(&self, spec: SandboxSpec) -> Result<String, SandboxError> {
        let records = self.records_dir();
        std::fs::create_dir_all(&records).map_err(io_err(format!("cannot create {}", records.display())))?;
        let stage1 = if spec.record.runtime_handler.is_empty() {
            self.stage1.clone()
        } else {
            spec.record.runtime_handler.clone()
        };
        let mut args = vec![
            "app".to_string(),
            "sandbox".to_string(),
            format!("--stage1={stage1}"),
            if spec.record.host_network {
                "--net=host".to_string()
            } else {
                "--net=default".to_string()
            },
        ];
        if !spec.hostname.is_empty() {
            args.push(format!("--hostname={}", spec.hostname));
        }
        if !spec.record.host_network {
            // On the host's network the kubelet's mappings are the app's own ports.
            args.extend(spec.ports.iter().map(|p| format!("--port={p}")));
        }
        for (flag, values) in [
            ("--dns", &spec.dns_servers),
            ("--dns-search", &spec.dns_searches),
            ("--dns-opt", &spec.dns_options),
        ] {
            if !values.is_empty() {
                args.push(format!("{flag}={}", values.join(",")));
            }
        }
        let early_log = records.join(format!(".starting-{}.log", Uuid::new_v4()));
        let log = std::fs::File::create(&early_log)
            .map_err(io_err(format!("cannot create {}", early_log.display())))?;
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self
            .rkt(&argv)
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("cannot run {}", self.rkt.display())))?;
        let mut stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| SandboxError::Rkt("rkt app sandbox: no stdout".into()))?,
        );
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let uuid = match read.ok().and_then(|_| Uuid::parse_str(line.trim()).ok()) {
            Some(uuid) => uuid,
            None => {
                let status = child.wait();
                let err = std::fs::read_to_string(&early_log).unwrap_or_default();
                let _ = std::fs::remove_file(&early_log);
                return Err(SandboxError::Rkt(format!(
                    "rkt app sandbox ended before its pod ran ({}): {}",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    err.trim()
                )));
            }
        };
        let _ = std::fs::rename(&early_log, self.log_path(&uuid));
        std::thread::spawn(move || {
            // Drains whatever the pod prints, then reaps rkt.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            let _ = child.wait();
        });
        let id = uuid.to_string();
        if let Err(e) = self.rkt_ok(&["status", &format!("--wait-ready={WAIT}"), &id]) {
            let _ = self.rkt_ok(&["stop", "--force", &id]);
            return Err(e);
        }
        let record = Record {
            id: id.clone(),
            ..spec.record
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| SandboxError::Invalid(format!("cannot encode the sandbox record: {e}")))?;
        let path = self.record_path(&uuid);
        fsutil::atomic_write(&path, &bytes).map_err(io_err(format!("cannot write {}", path.display())))?;
        Ok(id)
    }

    /// Every recorded sandbox with its readiness.
    pub fn list(&self) -> Result<Vec<(Record, Readiness)>, SandboxError> {
        let dir = self.records_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("cannot read {}", dir.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(uuid) = Uuid::parse_str(id) else { continue };
            if let Some(record) = self.record(&uuid)? {
                let readiness = self.readiness(&uuid)?;
                out.push((record, readiness));
            }
        }
        out.sort_by(|a, b| a.0.created_at.cmp(&b.0.created_at).then(a.0.id.cmp(&b.0.id)));
        Ok(out)
    }

    /// One sandbox; NotFound if the CRI never ran it or removed it.
    pub fn status(&self, id: &str) -> Result<(Record, Readiness), SandboxError> {
        let uuid = Uuid::parse_str(id).map_err(|_| SandboxError::NotFound(id.to_string()))?;
        let record = self
            .record(&uuid)?
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        Ok((record, self.readiness(&uuid)?))
    }

    fn record(&self, uuid: &Uuid) -> Result<Option<Record>, SandboxError> {
        let path = self.record_path(uuid);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SandboxError::Invalid(format!("{}: {e}", path.display())))
    }

    pub(crate) fn pod_state(&self, uuid: &Uuid) -> Result<Option<PodState>, SandboxError> {
        match PodsDir::existing(&self.dir).info(uuid) {
            Ok(info) => Ok(Some(info.state)),
            Err(PodError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The pod's addresses, first network first, as its networker recorded
    /// them (`rkt status`'s `networks=`); none on the host's network.
    pub fn addresses(&self, id: &str) -> Result<Vec<String>, SandboxError> {
        let Ok(uuid) = Uuid::parse_str(id) else {
            return Ok(Vec::new());
        };
        let pod = match PodsDir::existing(&self.dir).info(&uuid) {
            Ok(pod) => pod,
            Err(PodError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let path = pod.path.join(layout::NET_INFO);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
        };
        let record: NetRecord = serde_json::from_slice(&bytes)
            .map_err(|e| SandboxError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(record
            .info
            .networks
            .into_iter()
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .collect())
    }

    fn readiness(&self, uuid: &Uuid) -> Result<Readiness, SandboxError> {
        Ok(match self.pod_state(uuid)? {
            Some(PodState::Running) => Readiness::Ready,
            _ => Readiness::NotReady,
        })
    }

    /// Kills the pod and waits until it has exited. A sandbox that is
    /// missing or already stopped is fine: the CRI requires that.
    pub fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let Ok(uuid) = Uuid::parse_str(id) else {
            return Ok(());
        };
        if self.pod_state(&uuid)? != Some(PodState::Running) {
            return Ok(());
        }
        self.rkt_ok(&["stop", "--force", id])?;
        self.rkt_ok(&["status", &format!("--wait={WAIT}"), id])
    }

    /// Stops the pod, removes it and forgets the sandbox; missing is fine.
    pub fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let Ok(uuid) = Uuid::parse_str(id) else {
            return Ok(());
        };
        self.stop(id)?;
        if self.pod_state(&uuid)?.is_some() {
            self.rkt_ok(&["rm", id])?;
        }
        self.forget_containers_of(id)?;
        for path in [self.record_path(&uuid), self.log_path(&uuid)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("cannot remove {}", path.display()))(e)),
            }
        }
        Ok(())
    }
}

/// Whether `dir` holds a CNI network config (`.conf`, `.conflist`, `.json`),
/// which is what the kubelet's NetworkReady means.
pub fn cni_config_present(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                e.path().is_file()
                    && (name.ends_with(".conf") || name.ends_with(".conflist") || name.ends_with(".json"))
            })
        })
        .unwrap_or(false)
}
