//! The seams between stage0 and the backends: `Stage1`, `Networker`, `ImageFinder`
//! and `Labeler`, and the registry that collects implementations at link time.
//!
//! A backend crate implements one of these traits and does one
//! `inventory::submit!`; nothing in the engine names a backend.

pub mod block_on;
pub mod isolation;
pub mod launch;
pub mod limits;
pub mod process;
pub mod registry;
pub mod signals;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::pod::{Pod, PodInfo, Running};
use crate::schema::ImageId;
use crate::store::Store;
use uuid::Uuid;

pub use registry::{Registration, RegistryError};

/// Errors a backend reports; the message is shown to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// What was asked for does not exist at its source (a registry's 404).
    #[error("{0}")]
    NotFound(String),
    /// The source wants credentials we lack, or refused ours (a registry's 401).
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What a stage1 can do, so stage0 can refuse a request before preparing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Stage1Capabilities {
    /// More than one app per pod.
    pub multi_app: bool,
    /// Runs the pod in its own network namespace (else: host network only).
    pub network_namespace: bool,
    /// Can share the host's network (`--net=host`); a VM cannot.
    pub host_network: bool,
    /// `--interactive`: the app gets the terminal.
    pub interactive: bool,
    /// Enforces appc isolators (cgroups, capabilities, seccomp).
    pub isolators: bool,
}

/// Whether a backend can run on this machine, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available,
    Unavailable(String),
}

/// Everything stage0 hands a stage1 besides the pod directory itself (which holds
/// the pod manifest and the prepared app rootfs).
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub interactive: bool,
    pub debug: bool,
    pub net: NetInfo,
    pub labels: Labels,
    /// `--hostname`; a stage1 with its own UTS namespace defaults to `rkt-<uuid>`.
    pub hostname: Option<String>,
    /// `--insecure-options` given to run or run-prepared: capabilities, paths
    /// and seccomp lift the matching default restrictions.
    pub insecure: InsecureOptions,
    pub dns: DnsMode,
    pub hosts: HostsMode,
    /// `AC_METADATA_URL` for every app, when the pod is registered with the
    /// metadata service (`--mds-register`).
    pub metadata_url: Option<String>,
}

/// How a pod ended, as `rkt run` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodExit {
    /// Each app's exit code (128+signal when killed by a signal), in manifest order.
    pub apps: Vec<(String, i32)>,
    /// `rkt run`'s own exit code: the first failing app's, 0 when all succeeded.
    pub code: i32,
}

/// Runs pods. Sync by design: fork/exec, no async runtime on this path.
pub trait Stage1: Send + Sync {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Stage1Capabilities;
    fn availability(&self) -> Availability;
    /// The backend's configuration, stored with the pod so gc, stop and enter
    /// reconstruct the same backend later.
    fn config(&self) -> &dyn erased_serde::Serialize;
    /// Runs the pod to completion. The pod's lock is held until every process of
    /// the pod has ended.
    fn run(&self, pod: Pod<Running>, cfg: &RunConfig) -> Result<PodExit, BackendError>;
    /// Runs `argv` inside a running pod's app; returns its exit code.
    fn enter(&self, pod: &PodInfo, app: &str, argv: &[String]) -> Result<i32, BackendError>;
    /// Asks a running pod to stop (SIGTERM), or forces it (SIGKILL).
    fn stop(&self, pod: &PodInfo, force: bool) -> Result<(), BackendError>;
    /// Releases whatever the backend left outside the pod directory. Idempotent.
    fn gc(&self, pod_dir: &Path) -> Result<(), BackendError>;
    /// Mutable pods (`rkt app sandbox`, then `rkt app add/start/stop/rm`): the
    /// stage1's init serves `pod::sandbox` requests.
    fn supports_mutable_pods(&self) -> bool {
        false
    }
    /// `rkt app add`, before the app is handed to the running pod's init: the
    /// backend makes what the app needs outside the pod (cgroups) and says how
    /// the init confines it. `manifest` already lists the app.
    fn prepare_added_app(
        &self,
        pod: &PodInfo,
        manifest: &crate::schema::PodManifest,
        app: &str,
        insecure: InsecureOptions,
    ) -> Result<Option<crate::pod::protocol::AppIsolation>, BackendError> {
        let _ = (pod, manifest, app, insecure);
        Err(BackendError::Unsupported(format!(
            "stage1 {} does not support mutable pods",
            self.name()
        )))
    }
}

/// The networks a pod asked for (`--net`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct NetRequest {
    /// Network names with optional CNI args; empty means the host's network.
    pub networks: Vec<(String, Option<String>)>,
    /// `--local-config`: named networks live in its `net.d/`.
    #[serde(default)]
    pub local_config: Option<PathBuf>,
}

impl NetRequest {
    pub fn host() -> Self {
        NetRequest {
            networks: vec![("host".into(), None)],
            local_config: None,
        }
    }
    pub fn is_host(&self) -> bool {
        self.networks.iter().any(|(n, _)| n == "host")
    }
}

/// What a Networker set up, recorded in the pod for list/status and teardown.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct NetInfo {
    /// Path of the pod's network namespace; None for the host's.
    pub netns: Option<PathBuf>,
    pub networks: Vec<NetworkAttachment>,
    /// DNS settings the networks' plugins returned (first non-empty wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSettings>,
}

/// resolv.conf content: from `--dns*` flags or a network's result.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DnsSettings {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl DnsSettings {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    /// resolv.conf(5) text.
    pub fn to_resolv_conf(&self) -> String {
        let mut out = String::new();
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if let Some(domain) = &self.domain {
            out.push_str(&format!("domain {domain}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// `--dns*` and `--hosts-entry`, as rkt takes them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DnsMode {
    /// No flag: the network's DNS result, else the image's resolv.conf.
    #[default]
    Default,
    /// `--dns=host`: the host's resolv.conf.
    Host,
    /// `--dns=none`: no resolv.conf from rkt (the image's stays).
    None,
    /// `--dns=IP...` with `--dns-search`, `--dns-opt`, `--dns-domain`.
    Explicit(DnsSettings),
}

/// `--hosts-entry`: `host` (the host's /etc/hosts) or IP=HOST entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostsMode {
    #[default]
    Default,
    Host,
    Entries(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkAttachment {
    pub name: String,
    pub ifname: String,
    pub ip: String,
    /// The network's gateway for the pod: the host side of the link on ptp
    /// networks, where the pod reaches services on the host (the metadata service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[async_trait]
pub trait Networker: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether this networker serves the request (first match wins, by name order).
    fn handles(&self, request: &NetRequest) -> bool;
    async fn setup(&self, pod: &PodInfo, request: &NetRequest) -> Result<NetInfo, BackendError>;
    /// Undoes `setup`; must succeed when run twice or after a partial setup.
    async fn teardown(&self, pod_dir: &Path) -> Result<(), BackendError>;
    /// Whether `teardown` can have anything to undo. When it cannot (the host's
    /// network), the pod carries no record of the networker until `setup`
    /// returns something to show: one file fewer to create per pod.
    fn needs_teardown(&self) -> bool {
        true
    }
}

/// How a user named an image on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An image ID or unambiguous prefix (`sha512-...`).
    Id(String),
    /// A local file (`./x.aci`, `/x.aci`, `file:///x.aci`).
    Path(PathBuf),
    /// A URL with a scheme other than file (`https://`, `docker://`), or an OCI
    /// layout or archive (`oci:DIR[:TAG]`, `oci-archive:FILE`).
    Url(String),
    /// `name[:version]`, resolved through the store, then discovery.
    Name(String),
}

impl ImageRef {
    /// rkt's order: a hash, then a local file on disk, then a URL, then a name.
    pub fn parse(s: &str) -> ImageRef {
        if s.starts_with("sha512-") {
            return ImageRef::Id(s.to_string());
        }
        if let Some(path) = s.strip_prefix("file://") {
            return ImageRef::Path(PathBuf::from(path));
        }
        if s.contains("://") || s.starts_with("oci:") || s.starts_with("oci-archive:") {
            return ImageRef::Url(s.to_string());
        }
        if s.starts_with('/') || s.starts_with('.') || Path::new(s).exists() {
            return ImageRef::Path(PathBuf::from(s));
        }
        ImageRef::Name(s.to_string())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Id(s) | ImageRef::Url(s) | ImageRef::Name(s) => f.write_str(s),
            ImageRef::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `--pull-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Use the store when the image is there, fetch otherwise.
    #[default]
    New,
    /// Fetch when the remote changed.
    Update,
    /// The store only.
    Never,
}

/// `--insecure-options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InsecureOptions {
    pub image: bool,
    pub tls: bool,
    pub http: bool,
    pub pubkey: bool,
    pub capabilities: bool,
    pub paths: bool,
    pub seccomp: bool,
}

#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    pub pull: PullPolicy,
    pub insecure: InsecureOptions,
    /// `--signature`: a detached signature for a local image.
    pub signature: Option<PathBuf>,
    /// Where trusted keys (`trustedkeys/`) and registry credentials (`auth.d/`) live.
    pub config: ConfigDirs,
    /// `--trust-keys-from-https`: trust the keys a discovery answer names when they
    /// come over verified https.
    pub trust_keys_from_https: bool,
    /// Registry credentials that came with the request (the CRI's AuthConfig);
    /// they win over `auth.d`.
    pub registry_credentials: Option<RegistryCredentials>,
}

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub user: String,
    pub password: String,
}

/// Keeps the password out of debug output and logs.
impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// rkt's configuration directories: `--local-config` (the admin's, written by
/// `rkt trust`) and `--system-config` (the vendor's); local entries win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDirs {
    pub local: PathBuf,
    pub system: PathBuf,
}

impl Default for ConfigDirs {
    fn default() -> Self {
        ConfigDirs {
            local: PathBuf::from("/etc/rkt"),
            system: PathBuf::from("/usr/lib/rkt"),
        }
    }
}

#[async_trait]
pub trait ImageFinder: Send + Sync {
    fn name(&self) -> &'static str;
    fn handles(&self, reference: &ImageRef) -> bool;
    /// Whether `find` needs an async I/O runtime (network). Local finders say no,
    /// so `rkt run` of a local image never starts one.
    fn needs_runtime(&self) -> bool;
    async fn find(
        &self,
        store: &Store,
        reference: &ImageRef,
        policy: &FetchPolicy,
    ) -> Result<ImageId, BackendError>;
}

/// Security labels for a pod's processes and mounts (SELinux); empty when disabled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels {
    pub process: Option<String>,
    pub mount: Option<String>,
}

pub trait Labeler: Send + Sync {
    fn name(&self) -> &'static str;
    fn availability(&self) -> Availability;
    fn labels(&self, pod: &PodInfo) -> Result<Labels, BackendError>;
    /// Gives back what `labels` reserved for the pod (an MCS pair). Called by
    /// gc on every labeler once the pod's files are gone, so one that holds
    /// nothing for this pod must treat it as done.
    fn release(&self, _pod: &Uuid) -> Result<(), BackendError> {
        Ok(())
    }
}
