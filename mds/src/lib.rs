//! `rkt metadata-service`: the appc metadata service.
//!
//! Two listeners on one single-threaded tokio runtime: a unix socket where
//! `rkt run --mds-register` registers pods (root only), and a TCP port where
//! apps read their pod's metadata and sign with its identity. This is the only
//! place in rkt-rs with an async runtime for serving; `rkt run` talks to it with
//! blocking std I/O (`rkt_engine::mds`).
//!
//! HTTP is our own small HTTP/1.1 subset (`http`): the service answers a few
//! fixed GETs and form POSTs from local clients, one request per connection, so
//! a full HTTP stack (hyper and its dependencies) would add build time and
//! surface without adding anything these clients use.

pub mod http;
pub mod pods;
pub mod routes;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

use crate::http::{ReadError, Request, Response, read_request, write_response};
use crate::routes::Service;

/// A connection has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Manifests can be large (many annotations); app requests are small forms.
const MAX_REGISTRATION_BODY: usize = 8 << 20;
const MAX_PUBLIC_BODY: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where apps connect (`--listen-address`, `--listen-port`; port 0 picks one).
    pub listen: SocketAddr,
    /// Where `rkt run` registers pods.
    pub socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a metadata service is already listening on {0}")]
    AlreadyRunning(PathBuf),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let context = context.into();
    move |source| ServiceError::Io { context, source }
}

/// What the service bound, for the caller to announce.
#[derive(Debug, Clone)]
pub struct Bound {
    pub listen: SocketAddr,
    pub socket: PathBuf,
}

/// Binds both listeners, calls `ready` once they accept, then serves until
/// SIGINT or SIGTERM; removes its socket on the way out.
pub fn serve(config: &ServiceConfig, ready: impl FnOnce(&Bound)) -> Result<(), ServiceError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(io("cannot start the service's runtime"))?;
    runtime.block_on(serve_async(config, ready))
}

async fn serve_async(config: &ServiceConfig, ready: impl FnOnce(&Bound)) -> Result<(), ServiceError> {
    let key = hmac_key()?;
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("cannot listen on {}", config.listen)))?;
    let listen = tcp.local_addr().map_err(io("listening socket"))?;
    let unix = bind_registration_socket(&config.socket)?;
    let service = Arc::new(Service::new(key, listen.port()));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("cannot catch SIGTERM"))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io("cannot catch SIGINT"))?;
    ready(&Bound {
        listen,
        socket: config.socket.clone(),
    });
    let result = loop {
        tokio::select! {
            _ = terminate.recv() => break Ok(()),
            _ = interrupt.recv() => break Ok(()),
            accepted = tcp.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone();
                    tokio::spawn(handle(stream, MAX_PUBLIC_BODY, move |r| service.public(r)));
                }
                Err(e) => eprintln!("metadata-service: accepting a connection: {e}"),
            },
            accepted = unix.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone();
                    tokio::spawn(handle(stream, MAX_REGISTRATION_BODY, move |r| service.registration(r)));
                }
                Err(e) => break Err(io("accepting a registration")(e)),
            },
        }
    };
    let _ = std::fs::remove_file(&config.socket);
    result
}

/// One request, one answer, then close.
async fn handle<S>(mut stream: S, max_body: usize, route: impl FnOnce(&Request) -> Response)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream, max_body)).await {
        Err(_) | Ok(Err(ReadError::Gone)) => return,
        Ok(Err(ReadError::Bad(response))) => response,
        Ok(Ok(request)) => route(&request),
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write_response(&mut stream, &response)).await;
}

/// The registration socket, root's only. A socket file nobody answers on is
/// left over from a service that died: it is replaced. One that answers is
/// another running service, which is not.
fn bind_registration_socket(path: &Path) -> Result<UnixListener, ServiceError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServiceError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io(format!("cannot remove the stale {}", path.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(io(format!("cannot listen on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot restrict {}", path.display())))?;
    Ok(listener)
}

fn hmac_key() -> Result<[u8; 64], ServiceError> {
    let mut key = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io("cannot read an HMAC key from /dev/urandom"))?;
    Ok(key)
}
