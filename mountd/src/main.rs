//! `fusestream-mountd`: mounts the FuseStream filesystem and serves the Mount gRPC API on
//! a Unix socket until SIGINT/SIGTERM (or until the mount is unmounted from outside).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fusestream_mountd::api::{MountService, peer_check};
use fusestream_mountd::cache::Cache;
use fusestream_mountd::events::Events;
use fusestream_mountd::fetch::{FetchConfig, Fetcher};
use fusestream_mountd::fs::{Fs, FsConfig};
use fusestream_mountd::fuse::{FuseAdapter, NotifierCache};
use fusestream_mountd::metrics::MountMetrics;
use fusestream_mountd::mount;
use fusestream_mountd::ops::{OpKind, OpRegistry, StallPolicy};
use fusestream_mountd::timers::Timers;
use fusestream_mountd::watchdog;
use fusestream_shared::api::mount_server::MountServer;
use fusestream_shared::telemetry::{self, LogTarget, Telemetry};
use fusestream_shared::{grpc, metrics, paths, readiness};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(name = "fusestream-mountd", version, about = "FuseStream mount daemon")]
struct Args {
    /// Directory to mount on (created if missing; a stale mount there is cleaned up).
    #[arg(long)]
    mountpoint: PathBuf,
    /// Unix socket for the Mount gRPC API.
    #[arg(long, env = paths::MOUNTD_SOCKET_ENV, default_value_os_t = paths::default_mountd_socket())]
    socket: PathBuf,
    /// Directory for backing stores (unnamed sparse temp files). Default: the system temp dir.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Disk budget of the backing stores, in MiB (0: unlimited). Data of entries no one
    /// has open is evicted, least recently read first, to stay within it.
    #[arg(long, default_value_t = 8192)]
    cache_max_mib: u64,
    /// Backing stores of entries no one has open that are kept open (and so keep their
    /// fetched bytes), the most recently read ones. A staged entry holds no descriptor
    /// until it is first read; beyond this many, idle ones are closed and their cached
    /// bytes dropped.
    #[arg(long, default_value_t = fusestream_mountd::cache::DEFAULT_MAX_OPEN_STORES)]
    max_open_stores: usize,
    /// Memory, in MiB, for what sequential readers are about to read: their fetched
    /// chunks are kept there instead of the backing store until read (a file streamed once
    /// is never written to disk); beyond it, chunks go to the backing store.
    #[arg(long, default_value_t = 512)]
    stream_memory_mib: u64,
    /// Seconds a read may wait for data before failing with ETIMEDOUT.
    #[arg(long, default_value_t = 30)]
    read_timeout: u64,
    /// KiB at the start of each newly staged file fetched right away, so the first read of
    /// a staged file (file type sniffing, a player's probe, an upload's first block) does not
    /// wait for the network. Rounded up to whole 128 KiB chunks, at most 8 MiB; 0 turns it
    /// off. Done only when a fetch slot of the file's origin is free (at most 4 at once),
    /// and not while the origin's circuit breaker is open.
    #[arg(long, default_value_t = 128)]
    prefetch_head_kib: u64,
    /// Let users other than the mounting user access the mount (FUSE allow_other).
    #[arg(long)]
    allow_other: bool,
    /// Also accept API calls from this uid (root and the daemon's own uid always may).
    /// Repeatable. With any, the socket is world-connectable and checked by peer uid.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
    /// Also accept API calls from callers whose primary or a supplementary group is this
    /// gid. Repeatable. With exactly one (and no --allow-uid), the socket belongs to that
    /// group with mode 0660; else it is world-connectable. Every call is checked.
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gids: Vec<u32>,
    /// Kernel read-ahead for the mount, in KiB (needs root; 0 keeps the kernel default).
    #[arg(long, default_value_t = 16384)]
    kernel_readahead_kib: u32,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4)]
    fuse_threads: usize,
    /// Write logs to this file instead of stderr.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this loopback address (GET /metrics), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// A FUSE op in flight longer than this is reported as stalled (log, span, metrics).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    stall_threshold_ms: u64,
    /// The stall threshold of one kind of op, e.g. `read=5000`. Repeatable.
    #[arg(long = "op-stall-threshold-ms", value_name = "OP=MS", value_parser = watchdog::parse_kind_threshold)]
    op_stall_thresholds: Vec<(OpKind, Duration)>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    fusestream_shared::process::harden_or_report("fusestream-mountd");
    let target = args
        .log_file
        .clone()
        .map_or(LogTarget::Stderr, LogTarget::File);
    // fuser unmounts again when its session ends, after we did (a busy mount is detached
    // lazily, see mount.rs); its EINVAL warning about that is noise.
    let telemetry = match telemetry::init("fusestream-mountd", target, "info,fuser::session=error")
    {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("fusestream-mountd: telemetry: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fusestream-mountd: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args, &telemetry));
    runtime.shutdown_timeout(Duration::from_secs(2));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("fusestream-mountd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, telemetry: &Telemetry) -> Result<(), String> {
    let mountpoint = &args.mountpoint;
    mount::prepare(mountpoint).map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;
    let mountpoint = mount::retry_if_stale(mountpoint, || mountpoint.canonicalize())
        .map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(std::env::temp_dir);
    tempfile::tempfile_in(&cache_dir)
        .map_err(|e| format!("cache dir {} is not usable: {e}", cache_dir.display()))?;

    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // Who may connect at all; every call is checked by `peer_check` regardless.
    let (socket_mode, socket_group) = match (&args.allow_uids[..], &args.allow_gids[..]) {
        ([], []) => (0o600, None),
        ([], [gid]) => (0o660, Some(*gid)),
        _ => (0o666, None),
    };
    let listener = grpc::bind_unix(&args.socket, socket_mode)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(gid) = socket_group {
        std::os::unix::fs::chown(&args.socket, None, Some(gid))
            .map_err(|e| format!("socket {}: chown to gid {gid}: {e}", args.socket.display()))?;
    }

    let runtime = tokio::runtime::Handle::current();
    let cache_max = (args.cache_max_mib > 0).then_some(args.cache_max_mib << 20);
    let cache = Arc::new(Cache::new(
        &cache_dir,
        cache_max,
        args.max_open_stores,
        args.stream_memory_mib << 20,
    ));
    tokio::spawn(cache.clone().run());
    let events = Arc::new(Events::default());
    let timers = Timers::start().map_err(|e| format!("starting the timer thread: {e}"))?;
    let fetcher = Fetcher::http(
        runtime.clone(),
        FetchConfig::default(),
        cache.clone(),
        events.clone(),
    )
    .map_err(|e| e.to_string())?;
    let fs = Arc::new(Fs::new(
        FsConfig {
            mountpoint: mountpoint.clone(),
            read_timeout: Duration::from_secs(args.read_timeout),
            prefetch_head: args.prefetch_head_kib.saturating_mul(1024),
        },
        cache,
        fetcher,
        events.clone(),
        runtime,
        timers.handle().clone(),
    ));

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("fusestream".into()),
        fuser::MountOption::Subtype("fusestream".into()),
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoAtime,
        fuser::MountOption::DefaultPermissions,
    ];
    if args.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(args.fuse_threads.max(1));
    config.clone_fd = true;
    let ops = OpRegistry::new(StallPolicy {
        default: Duration::from_millis(args.stall_threshold_ms),
        per_kind: args.op_stall_thresholds.iter().copied().collect(),
    });
    let session = mount::retry_if_stale(&mountpoint, || {
        let adapter = FuseAdapter::new(fs.clone(), ops.clone());
        fuser::Session::new(adapter, &mountpoint, &config)
    })
    .map_err(|e| format!("mounting {}: {e}", mountpoint.display()))?;
    fs.set_kernel_cache(Arc::new(NotifierCache(session.notifier())));
    let (session_done_tx, session_done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = session_done_tx.send(result);
        })
        .map_err(|e| format!("starting the FUSE session: {e}"))?;
    tracing::info!(mountpoint = %mountpoint.display(), socket = %args.socket.display(), "mounted");
    if args.kernel_readahead_kib > 0
        && let Err(e) = mount::set_readahead(&mountpoint, args.kernel_readahead_kib)
    {
        tracing::info!("kernel read-ahead left at its default: {e}");
    }

    timers.handle().spawn(watchdog::run(ops.clone()));
    let metrics_addr = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default();
    if let Some(listener) = metrics_listener {
        let metrics = MountMetrics {
            fs: fs.clone(),
            ops: ops.clone(),
            telemetry: telemetry.stats.clone(),
        };
        tracing::info!(addr = metrics_addr, "serving metrics");
        tokio::spawn(metrics::serve(
            listener,
            Arc::new(move || metrics.render()),
            std::future::pending(),
        ));
    }

    let service = MountServer::new(MountService::new(fs.clone(), ops, events, metrics_addr));
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(service);
    let routes = grpc::with_standard_services(routes, &["fusestream.v1.Mount"])
        .await
        .map_err(|e| e.to_string())?;
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve(
        routes,
        listener,
        None,
        Some(peer_check(args.allow_uids, args.allow_gids)),
        async {
            let _ = grpc_stopped.await;
        },
    ));

    if let Err(e) = readiness::notify("READY=1") {
        tracing::warn!("readiness notification failed: {e}");
    }

    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok("SIGTERM"),
        _ = sigint.recv() => Ok("SIGINT"),
        result = session_done => Err(result),
    };
    match outcome {
        Ok(signal) => {
            tracing::info!(signal, "shutting down");
            let _ = readiness::notify("STOPPING=1");
            // umount can wait on the kernel (a busy mount): not on a runtime worker.
            let target = mountpoint.clone();
            match tokio::task::spawn_blocking(move || mount::unmount(&target)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("unmount: {e}"),
                Err(e) => tracing::error!("unmount: {e}"),
            }
        }
        Err(result) => tracing::warn!(?result, "FUSE session ended (unmounted from outside?)"),
    }
    // Clients (the control plane) keep connections open; do not wait long for them.
    let _ = stop_grpc.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
