//! gRPC plumbing shared by both daemons: serving a set of routes on a Unix socket (and
//! optionally on TCP loopback) with `grpc.health.v1` and server reflection added, and
//! connecting a client over a Unix socket.
//!
//! Every request a server receives gets a span, child of the caller's trace context, and
//! passes [`guard`]: an optional check of the caller, and client-error status for requests
//! the framework cannot decode.
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
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::{Channel, Endpoint, Server, Uri};

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
/// left by a process that is gone, but refusing to take over one that still answers.
pub async fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if path.exists() {
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

/// Serves `routes` on `unix` and, if given, on `tcp`, until `shutdown` resolves. Every
/// request to any of them must pass `admit`, if given.
pub async fn serve(
    routes: Routes,
    unix: UnixListener,
    tcp: Option<TcpListener>,
    admit: Option<Admit>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let tcp_task = tcp.map(|listener| {
        let routes = routes.clone();
        let rx = stop_rx.clone();
        let admit = admit.clone();
        tokio::spawn(async move {
            Server::builder()
                .trace_fn(propagation::server_span)
                .layer(Guard::layer(admit))
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped(rx))
                .await
        })
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let unix_result = Server::builder()
        .trace_fn(propagation::server_span)
        .layer(Guard::layer(admit))
        .add_routes(routes)
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), stopped(stop_rx))
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
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
}
