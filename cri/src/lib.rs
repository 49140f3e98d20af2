//! `rkt cri-service`: the Kubernetes CRI v1 (`runtime.v1`) RuntimeService on
//! a unix socket, so the kubelet (or crictl) can run pods with rkt-rs, as
//! rktlet did for rkt. Pod sandboxes are rkt's mutable pods (see
//! `sandboxes`); the service keeps no state but `--dir`.
//!
//! Served so far: Version, Status, RunPodSandbox, StopPodSandbox,
//! RemovePodSandbox, PodSandboxStatus, ListPodSandbox. Every other CRI call
//! (containers, exec, images) answers Unimplemented.

// tonic::Status is what every handler must return; boxing it in between buys nothing.
#![allow(clippy::result_large_err)]

pub mod images;
pub mod sandboxes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

pub mod runtime_v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

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

/// A RuntimeService client over the unix socket at `socket`.
pub async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>, CriError> {
    let socket = socket.to_path_buf();
    // The URI is required by tonic and never used: the connector dials the socket.
    let channel = Endpoint::from_static("http://rkt-cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
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
    if config.port_mappings.iter().any(|p| p.host_port != 0) {
        return Err(Status::unimplemented(
            "RunPodSandbox: host port mappings are not supported yet",
        ));
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
        },
        hostname: config.hostname,
        dns_servers: dns.servers,
        dns_searches: dns.searches,
        dns_options: dns.options,
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
        let (record, readiness) = blocking(move || config.engine.status(&id)).await?;
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
                network: None,
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
}
