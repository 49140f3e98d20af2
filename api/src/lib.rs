//! `rkt api-service`: rkt's read-only gRPC API (v1alpha) over one data
//! directory. It holds no state of its own: every call reads the pod and image
//! directories as the CLI does, so it stays right while pods come and go.
//! ListenEvents and GetLogs with `follow` poll the directories.
//!
//! tokio and tonic live in this crate only, so `rkt run` never starts a runtime.

// tonic::Status is what every handler must return; boxing it in between buys nothing.
#![allow(clippy::result_large_err)]

mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub mod v1alpha {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("v1alpha");
}

use v1alpha::public_api_server::{PublicApi, PublicApiServer};
use v1alpha::*;

/// How often ListenEvents and a followed GetLogs look at the directories.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the service reads and reports.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub dir: PathBuf,
    pub local_config: PathBuf,
    pub system_config: PathBuf,
    pub insecure_flags: String,
}

/// Binds `listen`, tells `on_listening` the bound address (port 0 picks a
/// free one), and serves until SIGINT or SIGTERM.
pub fn serve(
    config: ServiceConfig,
    listen: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ApiError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ApiError::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ApiError::Io {
                context: format!("cannot listen on {listen}"),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ApiError::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        on_listening(local);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(PublicApiServer::new(Service { config }))
            .serve_with_incoming_shutdown(incoming, shutdown())
            .await?;
        Ok(())
    })
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handling the default dispositions end the process.
        _ => std::future::pending::<()>().await,
    }
}

struct Service {
    config: ServiceConfig,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Runs directory reads off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

#[tonic::async_trait]
impl PublicApi for Service {
    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<GetInfoResponse>, Status> {
        let c = &self.config;
        Ok(Response::new(GetInfoResponse {
            info: Some(Info {
                rkt_version: env!("CARGO_PKG_VERSION").into(),
                appc_version: view::APPC_VERSION.into(),
                api_version: "1.0.0-alpha".into(),
                global_flags: Some(GlobalFlags {
                    dir: c.dir.display().to_string(),
                    system_config_dir: c.system_config.display().to_string(),
                    local_config_dir: c.local_config.display().to_string(),
                    user_config_dir: String::new(),
                    insecure_flags: c.insecure_flags.clone(),
                    trust_keys_from_https: false,
                }),
            }),
        }))
    }

    async fn list_pods(
        &self,
        request: Request<ListPodsRequest>,
    ) -> Result<Response<ListPodsResponse>, Status> {
        let dir = self.config.dir.clone();
        let request = request.into_inner();
        let pods = blocking(move || view::list_pods(&dir, &request.filters, request.detail)).await?;
        Ok(Response::new(ListPodsResponse { pods }))
    }

    async fn inspect_pod(
        &self,
        request: Request<InspectPodRequest>,
    ) -> Result<Response<InspectPodResponse>, Status> {
        let dir = self.config.dir.clone();
        let id = request.into_inner().id;
        let pod = blocking(move || view::inspect_pod(&dir, &id)).await?;
        Ok(Response::new(InspectPodResponse { pod: Some(pod) }))
    }

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let dir = self.config.dir.clone();
        let request = request.into_inner();
        let images = blocking(move || view::list_images(&dir, &request.filters, request.detail)).await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn inspect_image(
        &self,
        request: Request<InspectImageRequest>,
    ) -> Result<Response<InspectImageResponse>, Status> {
        let dir = self.config.dir.clone();
        let id = request.into_inner().id;
        let image = blocking(move || view::inspect_image(&dir, &id)).await?;
        Ok(Response::new(InspectImageResponse { image: Some(image) }))
    }

    type ListenEventsStream = BoxStream<ListenEventsResponse>;

    async fn listen_events(
        &self,
        request: Request<ListenEventsRequest>,
    ) -> Result<Response<Self::ListenEventsStream>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let dir = self.config.dir.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let first = {
            let dir = dir.clone();
            blocking(move || Ok(view::Snapshot::take(&dir))).await?
        };
        tokio::spawn(async move {
            let mut previous = first;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = tx.closed() => return,
                }
                let dir = dir.clone();
                let Ok(next) = tokio::task::spawn_blocking(move || view::Snapshot::take(&dir)).await else {
                    return;
                };
                let events: Vec<Event> = previous
                    .events_to(&next)
                    .into_iter()
                    .filter(|e| view::event_matches(e, &filter))
                    .collect();
                previous = next;
                if !events.is_empty() && tx.send(Ok(ListenEventsResponse { events })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type GetLogsStream = BoxStream<GetLogsResponse>;

    async fn get_logs(
        &self,
        request: Request<GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let request = request.into_inner();
        let dir = self.config.dir.clone();
        let (files, lines) = {
            let request = request.clone();
            blocking(move || view::log_start(&dir, &request)).await?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            if tx.send(Ok(GetLogsResponse { lines })).await.is_err() || !request.follow {
                return;
            }
            let mut files = files;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = tx.closed() => return,
                }
                let Ok((next, lines)) = tokio::task::spawn_blocking(move || view::log_more(files)).await
                else {
                    return;
                };
                files = next;
                if !lines.is_empty() && tx.send(Ok(GetLogsResponse { lines })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
