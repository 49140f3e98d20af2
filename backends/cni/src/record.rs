//! What the pod directory records about its networks, so teardown (gc, a later
//! process, after a crash) can undo exactly what was done: `netns` (the pinned
//! namespace's path), `net/NN.json` per attachment (configuration, ifname, CNI
//! args, runtimeConfig, and the result once ADD succeeded) and `net/ports.json`.
//! Each is written by rename, before and after the step it describes.

use std::path::{Path, PathBuf};

use rkt_engine::fsutil;
use rkt_engine::pod::layout;
use rkt_engine::schema::PodManifest;
use serde_json::Value;

use crate::CniError;
use crate::config::NetworkList;
use crate::ports::PortMapping;
use crate::result::CniResult;

const NETNS: &str = "netns";
const NET_DIR: &str = "net";
const PORTS: &str = "ports.json";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub network: NetworkList,
    pub ifname: String,
    #[serde(default)]
    pub args: Option<String>,
    #[serde(default)]
    pub port_mappings: Option<Vec<PortMapping>>,
    /// The chain's final result; None until ADD succeeded.
    #[serde(default)]
    pub result: Option<Value>,
}

impl Attachment {
    pub fn new(
        network: NetworkList,
        ifname: &str,
        args: Option<String>,
        ports: Option<Vec<PortMapping>>,
    ) -> Self {
        Attachment {
            network,
            ifname: ifname.to_string(),
            args,
            port_mappings: ports,
            result: None,
        }
    }

    pub fn parsed_result(&self) -> Result<Option<CniResult>, CniError> {
        self.result
            .as_ref()
            .map(|r| CniResult::parse(r, &self.network.cni_version))
            .transpose()
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::Io(format!("{what}: {e}"))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    fsutil::replace_file(path, bytes).map_err(io(format!("writing {}", path.display())))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), CniError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| CniError::Io(e.to_string()))?;
    write(path, &bytes)
}

pub fn write_netns(dir: &Path, ns: &Path) -> Result<(), CniError> {
    write(&dir.join(NETNS), ns.as_os_str().as_encoded_bytes())
}

pub fn read_netns(dir: &Path) -> Result<Option<PathBuf>, CniError> {
    match std::fs::read_to_string(dir.join(NETNS)) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(PathBuf::from(s.trim()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::Io(format!(
            "reading {}: {e}",
            dir.join(NETNS).display()
        ))),
    }
}

pub fn remove_netns(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(NETNS));
}

fn net_dir(dir: &Path) -> Result<PathBuf, CniError> {
    let net = dir.join(NET_DIR);
    std::fs::create_dir_all(&net).map_err(io(format!("creating {}", net.display())))?;
    Ok(net)
}

pub fn write_attachment(dir: &Path, index: usize, attachment: &Attachment) -> Result<(), CniError> {
    write_json(&net_dir(dir)?.join(format!("{index:02}.json")), attachment)
}

/// The recorded attachments in the order they were added.
pub fn read_attachments(dir: &Path) -> Result<Vec<(PathBuf, Attachment)>, CniError> {
    let net = dir.join(NET_DIR);
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&net) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    && p.extension().is_some_and(|e| e == "json")
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CniError::Io(format!("reading {}: {e}", net.display()))),
    };
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        match serde_json::from_slice(&bytes) {
            Ok(a) => out.push((path, a)),
            // A record torn by a crash mid-write cannot be, as writes are renames.
            Err(e) => tracing::warn!("{}: {e}; skipping", path.display()),
        }
    }
    Ok(out)
}

pub fn write_ports(dir: &Path, mappings: &[PortMapping]) -> Result<(), CniError> {
    write_json(&net_dir(dir)?.join(PORTS), &mappings)
}

pub fn read_ports(dir: &Path) -> Result<Vec<PortMapping>, CniError> {
    match std::fs::read(dir.join(NET_DIR).join(PORTS)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CniError::Io(format!("{PORTS}: {e}"))),
        Err(_) => Ok(Vec::new()),
    }
}

pub fn remove_ports(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(NET_DIR).join(PORTS));
}

/// The pod's `ports` resolved to numbers: rkt's `--port NAME:[HOSTIP:]HOSTPORT`
/// against the ports its apps declare, `rkt app sandbox --port` (appc's
/// `podPort`) as given. An unspecified host address (0.0.0.0, ::) forwards
/// on every address, which portmap means by none.
pub fn port_mappings(dir: &Path) -> Result<Vec<PortMapping>, CniError> {
    let path = layout::manifest(dir);
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    let manifest =
        PodManifest::from_json(&bytes).map_err(|e| CniError::Config(format!("pod manifest: {e}")))?;
    let mut out = Vec::new();
    for exposed in &manifest.ports {
        let Some(host_port) = exposed.host_port else {
            continue;
        };
        let declared = match &exposed.pod_port {
            Some(port) => port,
            None => manifest
                .apps
                .iter()
                .filter_map(|a| a.app.as_ref())
                .flat_map(|a| a.ports.iter())
                .find(|p| p.name == exposed.name)
                .ok_or_else(|| {
                    CniError::Config(format!(
                        "--port {}: no app in the pod declares a port named {:?}",
                        exposed.name, exposed.name
                    ))
                })?,
        };
        let host_ip = exposed.host_ip.clone().filter(|ip| {
            ip.parse::<std::net::IpAddr>()
                .map_or(true, |ip| !ip.is_unspecified())
        });
        out.push(PortMapping {
            host_port,
            container_port: declared.port,
            protocol: declared.protocol.clone(),
            host_ip,
        });
    }
    Ok(out)
}
