//! Networkers. `host` shares the host's network namespace (fly's only mode, and
//! `--net=host` everywhere); `cni` gives each pod its own network namespace and
//! attaches it to CNI networks through the real plugins (Debian's
//! containernetworking-plugins), driven by our own client.

mod chain;
mod client;
mod config;
mod netns;
mod ports;
mod record;
mod result;

use std::path::Path;

use async_trait::async_trait;
use rkt_engine::failpoint::failpoint;
use rkt_engine::pod::PodInfo;
use rkt_engine::stage::{BackendError, NetInfo, NetRequest, NetworkAttachment, Networker, Registration};

pub use config::NetworkList;
pub use ports::PortMapping;

/// One bare cycle as the benchmark measures it: a pinned namespace, ADD of
/// `network` (a built-in), DEL, namespace removed. No pod directory involved.
#[doc(hidden)]
pub fn bench_cycle(container_id: &str, network: NetworkList) -> Result<(), CniError> {
    let ns = netns::path_for(container_id);
    netns::create(&ns).map_err(|e| CniError::Io(format!("creating {}: {e}", ns.display())))?;
    let mut attachment = record::Attachment::new(network, "eth0", None, None);
    let added = chain::add(&attachment, container_id, Some(&ns));
    if let Ok(result) = &added {
        attachment.result = Some(result.clone());
    }
    let deleted = chain::del(&attachment, container_id, Some(&ns));
    netns::remove(&ns).map_err(|e| CniError::Io(format!("removing {}: {e}", ns.display())))?;
    added?;
    deleted.map_err(|mut errors| errors.remove(0))
}

/// For fuzz/ only: parses a plugin's stdout as a result of `config_version` the
/// way the client and the network record do, returning what rkt uses from it (the
/// pod's address and DNS settings).
#[doc(hidden)]
pub fn fuzz_parse_result(
    stdout: &[u8],
    config_version: &str,
) -> Result<(Option<String>, Option<rkt_engine::stage::DnsSettings>), CniError> {
    let value: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| CniError::BadResult {
        plugin: "fuzz".into(),
        reason: e.to_string(),
    })?;
    let result = result::CniResult::parse(&value, config_version)?;
    Ok((result.ip(), result.dns()))
}

/// A built-in network by name (`default`, `default-restricted`, `none`).
#[doc(hidden)]
pub fn builtin_network(name: &str) -> Option<NetworkList> {
    config::builtin(name)
}

/// Everything that can go wrong between us and the plugins.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("network configuration: {0}")]
    Config(String),
    #[error("CNI plugin {plugin:?} not found in {searched} (apt-get install containernetworking-plugins)")]
    MissingPlugin { plugin: String, searched: String },
    #[error("cannot run CNI plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} failed: {msg}{}{}", if details.is_empty() { String::new() } else { format!(" ({details})") }, if *code == 0 { String::new() } else { format!(" [code {code}]") })]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} gave a result we cannot read: {reason}")]
    BadResult { plugin: String, reason: String },
    #[error("CNI plugin {plugin} does not support CNI version {wanted} (it supports {supported})")]
    Version {
        plugin: String,
        wanted: String,
        supported: String,
    },
    #[error("host port {port} is already forwarded to pod {holder}")]
    PortTaken { port: String, holder: String },
    #[error("{0}")]
    Io(String),
}

impl From<CniError> for BackendError {
    fn from(e: CniError) -> Self {
        BackendError::Other(e.to_string())
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostNetworker {}

inventory::submit! {
    Registration::<dyn Networker> {
        name: "host",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<HostNetworker>(config)?)),
    }
}

#[async_trait]
impl Networker for HostNetworker {
    fn name(&self) -> &'static str {
        "host"
    }

    fn handles(&self, request: &NetRequest) -> bool {
        request.is_host()
    }

    async fn setup(&self, _pod: &PodInfo, _request: &NetRequest) -> Result<NetInfo, BackendError> {
        Ok(NetInfo::default())
    }

    async fn teardown(&self, _pod_dir: &Path) -> Result<(), BackendError> {
        Ok(())
    }

    fn needs_teardown(&self) -> bool {
        false
    }
}

/// Pod networks through CNI plugins.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniNetworker {}

inventory::submit! {
    Registration::<dyn Networker> {
        name: "cni",
        factory: |config| Ok(Box::new(erased_serde::deserialize::<CniNetworker>(config)?)),
    }
}

#[async_trait]
impl Networker for CniNetworker {
    fn name(&self) -> &'static str {
        "cni"
    }

    fn handles(&self, request: &NetRequest) -> bool {
        !request.networks.is_empty() && !request.is_host()
    }

    async fn setup(&self, pod: &PodInfo, request: &NetRequest) -> Result<NetInfo, BackendError> {
        Ok(setup(pod, request)?)
    }

    async fn teardown(&self, pod_dir: &Path) -> Result<(), BackendError> {
        Ok(teardown(pod_dir)?)
    }
}

fn setup(pod: &PodInfo, request: &NetRequest) -> Result<NetInfo, CniError> {
    let container_id = pod.uuid.to_string();
    let dir = &pod.path;
    // Everything is resolved before anything is created.
    let names: Vec<&(String, Option<String>)> = request.networks.iter().collect();
    let only_none = names.iter().all(|(n, _)| n == "none");
    if names.iter().any(|(n, _)| n == "none") && !only_none {
        return Err(CniError::Config(
            "--net=none cannot be combined with other networks".into(),
        ));
    }
    let mut networks = Vec::new();
    for (name, args) in &names {
        if name == "none" {
            continue;
        }
        networks.push((config::find(request.local_config.as_deref(), name)?, args.clone()));
    }
    let mappings = record::port_mappings(dir)?;
    if !mappings.is_empty() && !networks.iter().any(|(n, _)| n.maps_ports()) {
        return Err(CniError::Config(
            "--port needs a network whose plugins forward ports (portMappings), such as default".into(),
        ));
    }

    let ns = netns::path_for(&container_id);
    record::write_netns(dir, &ns)?;
    netns::create(&ns)
        .map_err(|e| CniError::Io(format!("creating network namespace {}: {e}", ns.display())))?;
    failpoint("net.netns-created");
    if !mappings.is_empty() {
        record::write_ports(dir, &mappings)?;
        ports::reserve(&container_id, &mappings)?;
    }

    // `lo` is already up (netns::create); older pods' records may still hold
    // a loopback attachment, which teardown deletes like any other.
    let mut attachments = Vec::new();
    for (i, (network, args)) in networks.into_iter().enumerate() {
        let runtime = network
            .maps_ports()
            .then(|| mappings.clone())
            .filter(|m| !m.is_empty());
        attachments.push(record::Attachment::new(
            network,
            &format!("eth{i}"),
            args,
            runtime,
        ));
    }
    let mut info = NetInfo {
        netns: Some(ns.clone()),
        ..NetInfo::default()
    };
    for (index, mut attachment) in attachments.into_iter().enumerate() {
        record::write_attachment(dir, index, &attachment)?;
        failpoint("net.before-add");
        let result = chain::add(&attachment, &container_id, Some(&ns))?;
        attachment.result = Some(result);
        record::write_attachment(dir, index, &attachment)?;
        failpoint("net.after-add");
        if attachment.ifname == "lo" {
            continue;
        }
        let parsed = attachment.parsed_result()?;
        if info.dns.is_none() {
            info.dns = parsed.as_ref().and_then(|r| r.dns());
        }
        info.networks.push(NetworkAttachment {
            name: attachment.network.name.clone(),
            ifname: attachment.ifname.clone(),
            ip: parsed.as_ref().and_then(|r| r.ip()).unwrap_or_default(),
            gateway: parsed.and_then(|r| r.gateway()),
        });
    }
    Ok(info)
}

/// DEL for every recorded network, last first; a failed DEL is logged and the
/// rest still run. The namespace goes last. Running it again is harmless.
fn teardown(dir: &Path) -> Result<(), CniError> {
    let Some(ns) = record::read_netns(dir)? else {
        return Ok(());
    };
    let container_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let netns_present = netns::is_pinned(&ns);
    let mut failures = Vec::new();
    for (path, attachment) in record::read_attachments(dir)?.into_iter().rev() {
        match chain::del(&attachment, &container_id, netns_present.then_some(ns.as_path())) {
            Ok(()) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!("pod {container_id}: network {}: {e}", attachment.network.name);
                    failures.push(e.to_string());
                }
            }
        }
    }
    let reserved = record::read_ports(dir)?;
    ports::release_keys(
        &container_id,
        &reserved.iter().map(PortMapping::key).collect::<Vec<_>>(),
    );
    record::remove_ports(dir);
    netns::remove(&ns)
        .map_err(|e| CniError::Io(format!("removing network namespace {}: {e}", ns.display())))?;
    record::remove_netns(dir);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::Io(failures.join("; ")))
    }
}
