//! `fusestreamctl serve`: the unprivileged control plane. It serves the
//! `fusestream.v1.Control` API, resolves sources into temp URLs with the user's rights,
//! hands entries to the mount daemon and renews the URLs it issued before they expire.
//!
//! Who may call it: on the Unix socket, only its own uid and root (peer credentials,
//! `grpc::owner_only`), the socket sitting in a directory no one else controls; on TCP
//! (`--listen`, loopback only), whoever shows the API token (`auth`), which only its user
//! can read.

mod browse;
mod control;
mod metrics;
mod state;
mod tracking;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fusestream_shared::api::control_server::ControlServer;
use fusestream_shared::auth::Token;
use fusestream_shared::telemetry::Telemetry;
use fusestream_shared::{grpc, paths, readiness};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::sources::Remotes;
use crate::sources::http::HttpSource;
use crate::sources::local::SignedUrlServer;
use control::ControlService;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub socket: PathBuf,
    pub mountd_socket: PathBuf,
    pub listen: Option<SocketAddr>,
    /// Lifetime of the temp URLs issued for local files.
    pub url_lifetime: Duration,
    /// How often those URLs are renewed ahead of expiry.
    pub renew_interval: Duration,
    /// The config file with the remotes, if there is one.
    pub config: Option<PathBuf>,
    /// Where the staged entries it renews are saved across restarts.
    pub state_dir: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere (loopback only).
    pub metrics_listen: Option<SocketAddr>,
    /// Sleep inhibition while files are open (see `power`).
    pub power: crate::power::PowerConfig,
}

pub async fn run(config: ServeConfig, telemetry: &Telemetry) -> Result<(), String> {
    if let Some(addr) = config.listen
        && !addr.ip().is_loopback()
    {
        return Err(format!(
            "--listen {addr}: only loopback addresses are allowed (plain-text gRPC)"
        ));
    }
    // The default socket's directory is ours alone; one given explicitly must at least be
    // one no one else can replace the socket (or the token) in.
    if let Some(dir) = config.socket.parent()
        && dir == paths::runtime_dir()
    {
        paths::private_dir(dir).map_err(|e| format!("runtime dir: {e}"))?;
    }
    paths::private_dir(&config.state_dir).map_err(|e| format!("state dir: {e}"))?;
    let unix = grpc::bind_unix(&config.socket, 0o600)
        .await
        .map_err(|e| e.to_string())?;
    let tcp = match config.listen {
        Some(addr) => {
            let token_file = paths::token_file(&config.socket);
            let token = Token::load_or_create(&token_file)
                .map_err(|e| format!("API token {}: {e}", token_file.display()))?;
            let listener = grpc::bind_tcp(addr).await.map_err(|e| e.to_string())?;
            Some(grpc::TcpServing { listener, token })
        }
        None => None,
    };
    let listen = tcp.as_ref().and_then(|t| t.listener.local_addr().ok());
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(fusestream_shared::metrics::bind(addr).await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let local = SignedUrlServer::start(config.url_lifetime)
        .await
        .map_err(|e| format!("local file server: {e}"))?;
    let http = HttpSource::new().map_err(|e| format!("HTTP client: {e}"))?;
    let remotes = match &config.config {
        Some(path) => {
            let loaded = Config::load(path, true).map_err(|e| e.to_string())?;
            Remotes::from_config(&loaded, http.credentialed_client(), &local)
                .map_err(|e| e.to_string())?
        }
        None => Remotes::default(),
    };
    let state_dir = config.state_dir.clone();
    let (store, saved) = tokio::task::spawn_blocking(move || state::Store::open(&state_dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mountd = grpc::unix_channel(&config.mountd_socket, Duration::from_secs(30));
    let service = Arc::new_cyclic(|me| {
        ControlService::new(
            config.clone(),
            control::Bound {
                listen,
                metrics: metrics_addr,
            },
            local,
            http,
            remotes,
            mountd,
            store,
        )
        .knowing(me)
    });
    service.adopt(saved).await;
    let renewal = tokio::spawn(service.clone().renew_urls());
    let events = tokio::spawn(service.clone().follow_events());
    if let Some(listener) = metrics_listener {
        let metrics = metrics::ControlMetrics {
            telemetry: telemetry.stats.clone(),
            power: service.power_state(),
        };
        tokio::spawn(fusestream_shared::metrics::serve(
            listener,
            Arc::new(move || metrics.render()),
            std::future::pending(),
        ));
    }

    let mut routes = tonic::service::Routes::builder();
    routes.add_service(ControlServer::from_arc(service));
    let routes = grpc::with_standard_services(routes, &["fusestream.v1.Control"])
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        socket = %config.socket.display(),
        listen = ?listen,
        mountd_socket = %config.mountd_socket.display(),
        "control plane serving"
    );
    if let Some(addr) = listen {
        // Machine-readable, for scripts that asked for an ephemeral port.
        println!("listening on {addr}");
    }
    if let Err(e) = readiness::notify("READY=1") {
        tracing::warn!("readiness notification failed: {e}");
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let result = grpc::serve(routes, unix, tcp, Some(grpc::owner_only()), shutdown).await;
    renewal.abort();
    events.abort();
    let _ = std::fs::remove_file(&config.socket);
    result.map_err(|e| e.to_string())
}
