//! `rkt cri-service`: the Kubernetes CRI v1 (`runtime.v1`) RuntimeService and
//! ImageService on one unix socket, so the kubelet (or crictl) can run pods with rkt-rs, as
//! rktlet did for rkt. Pod sandboxes are rkt's mutable pods (see
//! `sandboxes`); the service keeps no state but `--dir`.
//!
//! Served: Version, Status, the pod sandbox calls, the container calls
//! (Create/Start/Stop/Remove/List/ContainerStatus on the sandbox's apps, see
//! `containers`) and ExecSync; the ImageService over rkt's store and finders
//! (see `images`); container stats, resource updates and ReopenContainerLog
//! (see `stats`). The streaming calls (Exec, Attach, PortForward) and every
//! call left out of our proto (sandbox stats, checkpoints, events) answer
//! Unimplemented.

// tonic::Status is what every handler must return; boxing it in between buys nothing.
#![allow(clippy::result_large_err)]

pub mod containers;
pub mod images;
pub mod sandboxes;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

pub mod runtime_v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

use containers::{ContainerError, ContainerRecord, ContainerSpec, ContainerView, Phase};
use runtime_v1::runtime_service_client::RuntimeServiceClient;
use runtime_v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use runtime_v1::*;
use sandboxes::{Engine, Readiness, Record, SandboxError, SandboxSpec};

/// The CRI version this service implements.
pub const CRI_API_VERSION: &str = "v1";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the service runs pods with and where it listens.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub engine: Engine,
    /// The CNI network config directory NetworkReady is judged by.
    pub cni_conf_dir: PathBuf,
    /// How the ImageService fetches.
    pub images: images::ImageServiceConfig,
}

/// Binds the unix socket at `socket` (replacing a stale one), tells
/// `on_listening`, and serves until SIGINT or SIGTERM; the socket is removed
/// on the way out.
pub fn serve(config: ServiceConfig, socket: &Path, on_listening: impl FnOnce(&Path)) -> Result<(), CriError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| CriError::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(|source| CriError::Io {
            context: format!("cannot create {}", parent.display()),
            source,
        })?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CriError::Io {
                context: format!("cannot replace {}", socket.display()),
                source,
            });
        }
    }
    let result = runtime.block_on(async move {
        let listener = tokio::net::UnixListener::bind(socket).map_err(|source| CriError::Io {
            context: format!("cannot listen on {}", socket.display()),
            source,
        })?;
        on_listening(socket);
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let service = CriService {
            config: Arc::new(config),
        };
        // Kubelets keep their connections open for good: a graceful shutdown
        // would wait for them forever, so a signal drops them instead.
        let server = tonic::transport::Server::builder()
            .add_service(images::Images::server(
                &service.config.engine.dir,
                service.config.images.clone(),
            ))
            .add_service(RuntimeServiceServer::new(service))
            .serve_with_incoming(incoming);
        tokio::select! {
            served = server => served?,
            () = shutdown() => {}
        }
        Ok(())
    });
    let _ = std::fs::remove_file(socket);
    result
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// A channel to the service's unix socket, for either service's client.
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is required by tonic and never used: the connector dials the socket.
    Endpoint::from_static("http://rkt-cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// A RuntimeService client over the unix socket at `socket`.
pub async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>, CriError> {
    Ok(RuntimeServiceClient::new(unix_channel(socket).await?))
}

struct CriService {
    config: Arc<ServiceConfig>,
}

fn status_of(e: SandboxError) -> Status {
    match e {
        SandboxError::Invalid(m) => Status::invalid_argument(m),
        SandboxError::NotFound(_) => Status::not_found(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn container_status_of(e: ContainerError) -> Status {
    match e {
        ContainerError::NotFound(_) => Status::not_found(e.to_string()),
        ContainerError::Invalid(m) => Status::invalid_argument(m),
        ContainerError::Precondition(m) => Status::failed_precondition(m),
        ContainerError::Timeout(m) => Status::deadline_exceeded(m),
        ContainerError::Sandbox(e) => status_of(e),
    }
}

/// [`blocking`] for container work.
async fn blocking_container<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(container_status_of)
}

/// Runs engine work (which forks and waits) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(status_of)
}

fn state_of(readiness: Readiness) -> PodSandboxState {
    match readiness {
        Readiness::Ready => PodSandboxState::SandboxReady,
        Readiness::NotReady => PodSandboxState::SandboxNotready,
    }
}

fn metadata_of(record: &Record) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: record.name.clone(),
        uid: record.uid.clone(),
        namespace: record.namespace.clone(),
        attempt: record.attempt,
    }
}

fn map_of(map: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn spec_of(request: RunPodSandboxRequest) -> Result<SandboxSpec, Status> {
    let config = request
        .config
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config.metadata is required"))?;
    if metadata.name.is_empty() || metadata.uid.is_empty() || metadata.namespace.is_empty() {
        return Err(Status::invalid_argument(
            "RunPodSandbox: metadata name, uid and namespace are required",
        ));
    }
    let mut ports = Vec::new();
    for p in &config.port_mappings {
        let flag = sandboxes::port_flag(
            p.protocol().as_str_name(),
            p.container_port,
            p.host_port,
            &p.host_ip,
        )
        .map_err(|e| Status::invalid_argument(format!("RunPodSandbox: {e}")))?;
        ports.extend(flag);
    }
    let host_network = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.network() == NamespaceMode::Node);
    let dns = config.dns_config.unwrap_or_default();
    Ok(SandboxSpec {
        record: Record {
            id: String::new(),
            name: metadata.name,
            uid: metadata.uid,
            namespace: metadata.namespace,
            attempt: metadata.attempt,
            labels: config.labels.into_iter().collect(),
            annotations: config.annotations.into_iter().collect(),
            runtime_handler: request.runtime_handler,
            host_network,
            created_at: now_nanos(),
            log_directory: config.log_directory,
        },
        hostname: config.hostname,
        dns_servers: dns.servers,
        dns_searches: dns.searches,
        dns_options: dns.options,
        ports,
    })
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn matches(filter: &PodSandboxFilter, record: &Record, readiness: Readiness) -> bool {
    (filter.id.is_empty() || record.id.starts_with(&filter.id))
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state() == state_of(readiness))
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| record.labels.get(k) == Some(v))
}

fn container_spec_of(request: CreateContainerRequest) -> Result<ContainerSpec, Status> {
    let fail = |m: String| Err(Status::invalid_argument(format!("CreateContainer: {m}")));
    if request.pod_sandbox_id.is_empty() {
        return fail("pod_sandbox_id is required".into());
    }
    let Some(config) = request.config else {
        return fail("config is required".into());
    };
    let Some(metadata) = config.metadata else {
        return fail("config.metadata is required".into());
    };
    if metadata.name.is_empty() {
        return fail("config.metadata.name is required".into());
    }
    let image = config.image.map(|i| i.image).unwrap_or_default();
    if image.trim().is_empty() {
        return fail("config.image.image is required".into());
    }
    let mut mounts = Vec::with_capacity(config.mounts.len());
    for m in &config.mounts {
        let what = format!("mount {:?} -> {:?}", m.host_path, m.container_path);
        if !m.container_path.starts_with('/') || !m.host_path.starts_with('/') {
            return fail(format!("{what}: both paths must be absolute"));
        }
        if m.container_path.contains(',') || m.host_path.contains(',') {
            return fail(format!("{what}: paths with a comma are not supported"));
        }
        if m.propagation != MountPropagation::PropagationPrivate as i32 {
            return fail(format!("{what}: only private propagation is supported"));
        }
        if let Err(e) = std::fs::metadata(&m.host_path) {
            return fail(format!("{what}: host path: {e}"));
        }
        if m.selinux_relabel {
            tracing::info!("CreateContainer: {what}: selinux_relabel ignored (no SELinux labels here)");
        }
        mounts.push(containers::HostMount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
        });
    }
    if config.tty || config.stdin {
        return Err(Status::unimplemented(
            "CreateContainer: tty and stdin containers need Attach, which rkt-rs does not serve",
        ));
    }
    if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
        return fail(format!("working_dir {:?} must be absolute", config.working_dir));
    }
    let mut env = Vec::new();
    for kv in config.envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return fail(format!("environment variable name {:?} is invalid", kv.key));
        }
        env.retain(|(k, _): &(String, String)| *k != kv.key);
        env.push((kv.key, kv.value));
    }
    let mut exec = config.command;
    exec.extend(config.args);
    if exec.iter().any(|a| a == "---") {
        return fail("\"---\" cannot be an argument (rkt's app separator)".into());
    }
    let linux = config.linux.unwrap_or_default();
    let resources = linux.resources.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let user = match (&security.run_as_user, security.run_as_username.as_str()) {
        (Some(_), name) if !name.is_empty() => {
            return fail("run_as_user and run_as_username are exclusive".into());
        }
        (Some(uid), _) if uid.value < 0 => return fail(format!("run_as_user {} is negative", uid.value)),
        (Some(uid), _) => Some(uid.value.to_string()),
        (None, "") => None,
        (None, name) => Some(name.to_string()),
    };
    let group = match &security.run_as_group {
        Some(_) if user.is_none() => {
            return fail("run_as_group needs run_as_user or run_as_username".into());
        }
        Some(gid) if gid.value < 0 => return fail(format!("run_as_group {} is negative", gid.value)),
        Some(gid) => Some(gid.value.to_string()),
        None => None,
    };
    if resources.memory_limit_in_bytes < 0 || resources.cpu_quota < -1 || resources.cpu_period < 0 {
        return fail("negative resource limits".into());
    }
    Ok(ContainerSpec {
        record: ContainerRecord {
            sandbox_id: request.pod_sandbox_id,
            name: metadata.name,
            attempt: metadata.attempt,
            image,
            labels: config.labels.into_iter().collect(),
            annotations: config.annotations.into_iter().collect(),
            log_path: config.log_path,
            memory_limit: resources.memory_limit_in_bytes,
            cpu_quota: resources.cpu_quota,
            cpu_period: resources.cpu_period,
            created_at: now_nanos(),
            ..ContainerRecord::default()
        },
        exec,
        env,
        working_dir: config.working_dir,
        user,
        group,
        cpu_shares: resources.cpu_shares,
        oom_score_adj: resources.oom_score_adj,
        readonly_rootfs: security.readonly_rootfs,
        mounts,
    })
}

fn container_state_of(phase: Phase) -> ContainerState {
    match phase {
        Phase::Created => ContainerState::ContainerCreated,
        Phase::Running => ContainerState::ContainerRunning,
        Phase::Exited => ContainerState::ContainerExited,
        Phase::Unknown => ContainerState::ContainerUnknown,
    }
}

fn container_metadata_of(record: &ContainerRecord) -> ContainerMetadata {
    ContainerMetadata {
        name: record.name.clone(),
        attempt: record.attempt,
    }
}

fn image_spec_of(record: &ContainerRecord) -> ImageSpec {
    ImageSpec {
        image: record.image.clone(),
        ..Default::default()
    }
}

fn container_matches(filter: &ContainerFilter, view: &ContainerView) -> bool {
    (filter.id.is_empty() || view.record.id.starts_with(&filter.id))
        && (filter.pod_sandbox_id.is_empty() || view.record.sandbox_id.starts_with(&filter.pod_sandbox_id))
        && filter
            .state
            .as_ref()
            .is_none_or(|s| s.state() == container_state_of(view.phase))
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| view.record.labels.get(k) == Some(v))
}

fn container_id_of(id: String, call: &str) -> Result<String, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{call}: container_id is required"
        )));
    }
    Ok(id)
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(&self, _: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "rkt".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let cni = self.config.cni_conf_dir.clone();
        let network_ready = sandboxes::cni_config_present(&cni);
        let network = RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: network_ready,
            reason: if network_ready {
                String::new()
            } else {
                "NetworkPluginNotReady".into()
            },
            message: if network_ready {
                String::new()
            } else {
                format!("no CNI network config in {}", cni.display())
            },
        };
        let runtime = RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info: HashMap::new(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let spec = spec_of(request.into_inner())?;
        let config = self.config.clone();
        let id = blocking(move || config.engine.run(spec)).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "StopPodSandbox: pod_sandbox_id is required",
            ));
        }
        let config = self.config.clone();
        blocking(move || config.engine.stop(&id)).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "RemovePodSandbox: pod_sandbox_id is required",
            ));
        }
        let config = self.config.clone();
        blocking(move || config.engine.remove(&id)).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let config = self.config.clone();
        let (record, readiness, addresses) = blocking(move || {
            let (record, readiness) = config.engine.status(&id)?;
            let addresses = match readiness {
                Readiness::Ready => config.engine.addresses(&id)?,
                Readiness::NotReady => Vec::new(),
            };
            Ok((record, readiness, addresses))
        })
        .await?;
        let network = addresses.split_first().map(|(ip, rest)| PodSandboxNetworkStatus {
            ip: ip.clone(),
            additional_ips: rest.iter().map(|ip| PodIp { ip: ip.clone() }).collect(),
        });
        let network_mode = if record.host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        };
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(PodSandboxStatus {
                id: record.id.clone(),
                metadata: Some(metadata_of(&record)),
                state: state_of(readiness).into(),
                created_at: record.created_at,
                network,
                linux: Some(LinuxPodSandboxStatus {
                    namespaces: Some(Namespace {
                        options: Some(NamespaceOption {
                            network: network_mode.into(),
                            pid: NamespaceMode::Pod.into(),
                            ipc: NamespaceMode::Pod.into(),
                            target_id: String::new(),
                        }),
                    }),
                }),
                labels: map_of(&record.labels),
                annotations: map_of(&record.annotations),
                runtime_handler: record.runtime_handler,
            }),
            info: HashMap::new(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let config = self.config.clone();
        let all = blocking(move || config.engine.list()).await?;
        let items = all
            .into_iter()
            .filter(|(record, readiness)| matches(&filter, record, *readiness))
            .map(|(record, readiness)| PodSandbox {
                id: record.id.clone(),
                metadata: Some(metadata_of(&record)),
                state: state_of(readiness).into(),
                created_at: record.created_at,
                labels: map_of(&record.labels),
                annotations: map_of(&record.annotations),
                runtime_handler: record.runtime_handler,
            })
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let spec = container_spec_of(request.into_inner())?;
        let config = self.config.clone();
        let container_id = blocking_container(move || config.engine.create_container(spec)).await?;
        Ok(Response::new(CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = container_id_of(request.into_inner().container_id, "StartContainer")?;
        let config = self.config.clone();
        blocking_container(move || config.engine.start_container(&id)).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let request = request.into_inner();
        let id = container_id_of(request.container_id, "StopContainer")?;
        let timeout = std::time::Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0));
        let config = self.config.clone();
        blocking_container(move || config.engine.stop_container(&id, timeout)).await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = container_id_of(request.into_inner().container_id, "RemoveContainer")?;
        let config = self.config.clone();
        blocking_container(move || config.engine.remove_container(&id)).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let config = self.config.clone();
        let all = blocking_container(move || config.engine.list_containers()).await?;
        let containers = all
            .into_iter()
            .filter(|view| container_matches(&filter, view))
            .map(|view| Container {
                id: view.record.id.clone(),
                pod_sandbox_id: view.record.sandbox_id.clone(),
                metadata: Some(container_metadata_of(&view.record)),
                image: Some(image_spec_of(&view.record)),
                image_ref: view.record.image_id.clone(),
                state: container_state_of(view.phase).into(),
                created_at: view.record.created_at,
                labels: map_of(&view.record.labels),
                annotations: map_of(&view.record.annotations),
                image_id: view.record.image_id.clone(),
            })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let id = container_id_of(request.into_inner().container_id, "ContainerStatus")?;
        let config = self.config.clone();
        let view = blocking_container(move || config.engine.container_status(&id)).await?;
        let record = &view.record;
        let reason = match view.phase {
            Phase::Exited if view.oom_killed => "OOMKilled",
            Phase::Exited if view.exit_code == 0 => "Completed",
            Phase::Exited => "Error",
            Phase::Unknown => "PodSandboxGone",
            _ => "",
        };
        Ok(Response::new(ContainerStatusResponse {
            status: Some(ContainerStatus {
                id: record.id.clone(),
                metadata: Some(container_metadata_of(record)),
                state: container_state_of(view.phase).into(),
                created_at: record.created_at,
                started_at: view.started_at,
                finished_at: view.finished_at,
                exit_code: view.exit_code,
                image: Some(image_spec_of(record)),
                image_ref: record.image_id.clone(),
                reason: reason.into(),
                message: String::new(),
                labels: map_of(&record.labels),
                annotations: map_of(&record.annotations),
                mounts: Vec::new(),
                log_path: record.log_path.clone(),
                resources: Some(ContainerResources {
                    linux: Some(LinuxContainerResources {
                        memory_limit_in_bytes: record.memory_limit,
                        cpu_quota: record.cpu_quota,
                        cpu_period: record.cpu_period,
                        ..Default::default()
                    }),
                }),
                image_id: record.image_id.clone(),
            }),
            info: HashMap::new(),
        }))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = container_id_of(request.into_inner().container_id, "ReopenContainerLog")?;
        let config = self.config.clone();
        blocking_container(move || config.engine.reopen_log(&id)).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let id = container_id_of(request.container_id, "UpdateContainerResources")?;
        let update = stats_rpc::update_of(request.linux.unwrap_or_default());
        let config = self.config.clone();
        blocking_container(move || config.engine.update_resources(&id, &update)).await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = container_id_of(request.into_inner().container_id, "ContainerStats")?;
        let config = self.config.clone();
        let usage = blocking_container(move || config.engine.container_usage(&id)).await?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(stats_rpc::stats_of(usage)),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let config = self.config.clone();
        let all = blocking_container(move || {
            config.engine.list_usage(|view| {
                container_matches(
                    &ContainerFilter {
                        id: filter.id.clone(),
                        pod_sandbox_id: filter.pod_sandbox_id.clone(),
                        state: None,
                        label_selector: filter.label_selector.clone(),
                    },
                    view,
                )
            })
        })
        .await?;
        Ok(Response::new(ListContainerStatsResponse {
            stats: all.into_iter().map(stats_rpc::stats_of).collect(),
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        // Pods' cgroups are made by rkt-rs itself below its own, not by systemd.
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: CgroupDriver::Cgroupfs.into(),
            }),
        }))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let id = container_id_of(request.container_id, "ExecSync")?;
        if request.cmd.is_empty() {
            return Err(Status::invalid_argument("ExecSync: cmd is required"));
        }
        let timeout = std::time::Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0));
        let (stdout, stderr, exit_code) = self
            .config
            .engine
            .exec_sync(&id, &request.cmd, timeout)
            .await
            .map_err(container_status_of)?;
        Ok(Response::new(ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        }))
    }

    async fn exec(&self, _: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        Err(Status::unimplemented(
            "Exec: streaming exec is not served by rkt-rs; use ExecSync",
        ))
    }

    async fn attach(&self, _: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        Err(Status::unimplemented(
            "Attach: streaming attach is not served by rkt-rs",
        ))
    }

    async fn port_forward(
        &self,
        _: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        Err(Status::unimplemented(
            "PortForward: streaming port forwarding is not served by rkt-rs",
        ))
    }
}

/// The wire side of `stats`: CRI messages to and from its plain types.
mod stats_rpc {
    use super::runtime_v1::*;
    use super::{container_metadata_of, map_of};
    use crate::stats::{ResourceUpdate, Usage};

    pub fn update_of(linux: LinuxContainerResources) -> ResourceUpdate {
        ResourceUpdate {
            memory_limit: linux.memory_limit_in_bytes,
            memory_swap_limit: linux.memory_swap_limit_in_bytes,
            cpu_quota: linux.cpu_quota,
            cpu_period: linux.cpu_period,
            cpu_shares: linux.cpu_shares,
            oom_score_adj: linux.oom_score_adj,
            cpuset_cpus: linux.cpuset_cpus,
            cpuset_mems: linux.cpuset_mems,
            unified: linux.unified.into_iter().collect(),
        }
    }

    fn value(v: Option<u64>) -> Option<UInt64Value> {
        v.map(|value| UInt64Value { value })
    }

    pub fn stats_of(usage: Usage) -> ContainerStats {
        let record = &usage.view.record;
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: record.id.clone(),
                metadata: Some(container_metadata_of(record)),
                labels: map_of(&record.labels),
                annotations: map_of(&record.annotations),
            }),
            cpu: usage.cpu_nanos.map(|nanos| CpuUsage {
                timestamp: usage.timestamp,
                usage_core_nano_seconds: value(Some(nanos)),
                usage_nano_cores: None,
            }),
            memory: usage.memory.map(|m| MemoryUsage {
                timestamp: usage.timestamp,
                working_set_bytes: value(Some(m.working_set)),
                available_bytes: value(m.limit.map(|l| l.saturating_sub(m.working_set))),
                usage_bytes: value(Some(m.usage)),
                rss_bytes: value(m.rss),
                page_faults: value(m.page_faults),
                major_page_faults: value(m.major_page_faults),
            }),
            writable_layer: None,
        }
    }
}
