//! gRPC plumbing shared by both daemons: serving a set of routes on a Unix socket (and
//! optionally on TCP loopback) with `grpc.health.v1` and server reflection added, and
//! connecting a client over a Unix socket.
//!
//! Every request a server receives gets a span, child of the caller's trace context, and
//! passes [`guard`]: an optional check of the caller (peer credentials on the Unix socket,
//! the API token on TCP), and client-error status for requests the framework cannot decode.
//! Connections come through `listen` (per-uid caps, a deadline for the HTTP/2 preface,
//! accept back-off), and idle HTTP/2 connections must answer keepalive pings.
//!
//! Every daemon serves the same standard services so that `grpcurl list`, `describe` and
//! health checks work the same against either, without .proto files.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::{Channel, Endpoint, Server, Uri};

use crate::auth::Token;
use crate::listen::{self, Limits};
use crate::telemetry::propagation::{self, InjectContext};

mod guard;

use guard::Guard;
pub use guard::{Admit, client_error};

/// A client channel that carries the caller's trace context (see `telemetry::propagation`).
pub type TracedChannel = InterceptedService<Channel, InjectContext>;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("listen on {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("reflection: {0}")]
    Reflection(String),
}

/// Adds health (reporting `service_names` as serving) and reflection to `builder`.
pub async fn with_standard_services(
    mut builder: RoutesBuilder,
    service_names: &[&str],
) -> Result<Routes, ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in service_names {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Both reflection versions: v1 for current clients, v1alpha for older grpcurl.
    // Only the services served here are advertised (the descriptor set has both daemons').
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in service_names {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    builder
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha);
    Ok(builder.routes())
}

/// Binds a Unix socket at `path` with file mode `mode`, replacing a stale socket file
/// left by a process that is gone, but refusing to take over one that still answers. The
/// socket's directory is created 0700 if missing, and refused if another user could
/// replace the socket in it (`paths::safe_dir`).
pub async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        crate::paths::safe_dir(parent).map_err(err)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Binds a TCP listener (used for loopback only; callers check the address).
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Tcp { addr, source })
}

/// A TCP listener to serve on, and the token every call on it must carry.
#[derive(Debug)]
pub struct TcpServing {
    pub listener: TcpListener,
    pub token: Token,
}

/// How often an idle HTTP/2 connection is pinged, and how long its answer may take: a
/// peer that holds connections open without speaking HTTP/2 loses them.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent calls on one connection.
const MAX_STREAMS: u32 = 64;

fn server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS))
}

/// An [`Admit`] for a per-user daemon's socket: only its own uid (and root) may call.
pub fn owner_only() -> Admit {
    let me = crate::paths::euid();
    std::sync::Arc::new(move |extensions: &http::Extensions| {
        let uid = extensions
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid());
        match uid {
            Some(uid) if uid == me || uid == 0 => Ok(()),
            Some(uid) => Err(tonic::Status::permission_denied(format!(
                "uid {uid} may not use this control plane (it serves uid {me} only)"
            ))),
            None => Err(tonic::Status::permission_denied(
                "peer credentials unavailable",
            )),
        }
    })
}

/// Serves `routes` on `unix` and, if given, on `tcp`, until `shutdown` resolves. Every
/// request on `unix` must pass `admit`, if given; every request on `tcp` must carry its
/// token.
pub async fn serve(
    routes: Routes,
    unix: UnixListener,
    tcp: Option<TcpServing>,
    admit: Option<Admit>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tcp_task = tcp.map(|TcpServing { listener, token }| {
        let routes = routes.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            server()
                .trace_fn(propagation::server_span)
                .layer(Guard::layer(None, Some(std::sync::Arc::new(token))))
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    listen::tcp("gRPC (TCP)", listener, Limits::GRPC),
                    stopped(rx),
                )
                .await
        })
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let unix_result = server()
        .trace_fn(propagation::server_span)
        .layer(Guard::layer(admit, None))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            listen::unix("gRPC (Unix socket)", unix, Limits::GRPC),
            stopped(stop_rx),
        )
        .await;
    if let Some(task) = tcp_task
        && let Ok(Err(e)) = task.await
    {
        return Err(e);
    }
    unix_result
}

/// `channel`, with each request carrying the current span's trace context.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, InjectContext)
}

/// A channel to a gRPC server on a Unix socket. Connects lazily, so creating it never
/// fails or waits; each call fails with UNAVAILABLE while the server is down, and every
/// call is bounded by `timeout`.
pub fn unix_channel(path: &Path, timeout: Duration) -> Channel {
    channel_to(path, timeout, None)
}

/// [`unix_channel`] to a server that must run as our own uid (the kernel's peer
/// credentials of the listening end are checked on every connect): a per-user daemon's
/// socket, where a socket planted by someone else would receive our requests.
pub fn own_unix_channel(path: &Path, timeout: Duration) -> Channel {
    channel_to(path, timeout, Some(crate::paths::euid()))
}

fn channel_to(path: &Path, timeout: Duration, server_uid: Option<u32>) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = UnixStream::connect(&path).await?;
                if let Some(expected) = server_uid {
                    let uid = stream.peer_cred()?.uid();
                    if uid != expected {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "the server on {} runs as uid {uid}, not as us (uid {expected})",
                                path.display()
                            ),
                        ));
                    }
                }
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
}

/// Every item of a paged listing (Mount.ListEntries, Control.List: see
/// `limits::LIST_PAGE_SIZE`): `page(token)` fetches the page after `token` ("" for the
/// first) and returns its items and the next token, empty after the last page.
pub async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, tonic::Status>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}
