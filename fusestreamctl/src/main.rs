//! `fusestreamctl`: the FuseStream control plane (`serve`) and the command-line client
//! that talks to it.

mod cli;
mod config;
mod power;
mod serve;
mod sources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fusestream_shared::paths;
use fusestream_shared::telemetry::{self, LogTarget};

use cli::{Client, Failure};

#[derive(Debug, Parser)]
#[command(
    name = "fusestreamctl",
    version,
    about = "Stage remote and local files into the FuseStream mount"
)]
struct Cli {
    /// The control plane's socket.
    #[arg(long, global = true, env = paths::CONTROL_SOCKET_ENV, default_value_os_t = paths::default_control_socket())]
    socket: PathBuf,
    /// Talk to the control plane over TCP at this loopback address (its `serve --listen`)
    /// instead of the socket; the API token is read from the file next to the socket.
    /// Before the subcommand.
    #[arg(long, env = "FUSESTREAM_TCP", value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (as the user whose files and credentials it uses).
    Serve {
        /// The mount daemon's socket.
        #[arg(long, env = paths::MOUNTD_SOCKET_ENV, default_value_os_t = paths::default_mountd_socket())]
        mountd_socket: PathBuf,
        /// Also serve the Control API on this TCP address (loopback only), e.g. 127.0.0.1:7450;
        /// port 0 picks a free port and prints `listening on ADDR`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Lifetime in seconds of the temp URLs issued for local files.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(4..))]
        url_lifetime: u64,
        /// Seconds between proactive renewals of those URLs (default: a quarter of their
        /// lifetime). A URL the remote refuses is renewed at once regardless.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        renew_interval: Option<u64>,
        /// Write logs to this file instead of stderr.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Config file with the remotes (default: $XDG_CONFIG_HOME/fusestream/config.toml,
        /// if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the staged entries are saved across restarts
        /// (default: $XDG_STATE_HOME/fusestream, ~/.local/state/fusestream).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Serve Prometheus metrics on this loopback address (GET /metrics), e.g. 127.0.0.1:9465.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Seconds sleep (idle or asked for) stays inhibited after the last file of the mount
        /// is closed.
        #[arg(long, default_value_t = 30)]
        sleep_grace: u64,
        /// Do not keep the machine from sleeping while files of the mount are open.
        #[arg(long)]
        no_inhibit_sleep: bool,
    },
    /// Set the TempURL key of a Swift remote's account (random unless --key-stdin).
    SwiftSetTempUrlKey {
        /// A Swift remote of the config (`[remotes.NAME]`).
        remote: String,
        /// Read the key from the first line of stdin (never from the command line, where
        /// other users see it in `ps`); without it a random key is set and never shown.
        #[arg(long)]
        key_stdin: bool,
    },
    /// Stage local files, http(s) URLs or remote objects (REMOTE:path); prints the path of
    /// each in the mount. With -r, folders and remote prefixes too; skips and failures are
    /// reported on stderr, with a summary "N staged, M skipped, K failed" (exit 1 if any
    /// failed).
    Stage {
        /// Each a local file (relative paths are fine), an http:// or https:// URL, or
        /// REMOTE:path, an object of a remote of the config (Swift: REMOTE:container/object,
        /// S3: REMOTE:bucket/key, HTTP: REMOTE:path under its base URL). With -r, a local
        /// folder or REMOTE:container[/prefix/].
        #[arg(required = true)]
        sources: Vec<String>,
        /// Name in the mount (may contain '/'); only with a single source. For a folder
        /// or prefix, the name of its top: `stage -r --name pics ~/photos` gives pics/...
        #[arg(long)]
        name: Option<String>,
        /// Stage the regular files under local folders (keeping their paths under the
        /// folder's name; symlinks and special files are skipped) and the objects under
        /// remote prefixes. With --replace, a second run adds what is new and replaces
        /// what changed.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Output format: `table` (paths on stdout) or `json` (one object per entry, then
        /// one with the counts).
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
        /// Replace an entry already staged under the same name.
        #[arg(long)]
        replace: bool,
        /// Who may read it besides you: `private` (mode 0400, the default), `group` (0440,
        /// your primary group) or `all` (0444, every local user who can reach the mount).
        #[arg(long, value_enum, default_value_t = Share::Private)]
        share: Share,
    },
    /// Remove entries from the mount (open files keep reading until closed).
    Unstage {
        /// Names of staged entries, as `ls` shows them (with -r, folders).
        #[arg(required = true)]
        names: Vec<String>,
        /// Remove all of your entries under each folder NAME/ (never another user's).
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// List staged entries: name, size, bytes fetched, open handles, who may read it
    /// (private, group or all), source and state (`ok`, or why reads fail). With
    /// REMOTE:[container[/prefix/]], browse a remote instead: its containers (buckets), or
    /// the objects (size, modification time) and directories under a prefix.
    Ls {
        /// A remote location to browse, e.g. `archive:` or `archive:photos/2024/`.
        location: Option<String>,
        /// Everything under the prefix, not just one level.
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Output format: `table` or `json` (one object per line).
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Show the state of both daemons.
    Status,
    /// List the FUSE ops in flight, oldest first (a stalled op stands at the top).
    Ops {
        /// Refresh every second, like top.
        #[arg(long)]
        watch: bool,
        /// Output format.
        #[arg(long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
}

/// `stage --share`: who besides the stager may read a staged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Share {
    Private,
    Group,
    All,
}

impl From<Share> for fusestream_shared::api::Sharing {
    fn from(share: Share) -> Self {
        match share {
            Share::Private => Self::Private,
            Share::Group => Self::Group,
            Share::All => Self::All,
        }
    }
}

/// Lets a CLI command end as Unix tools do when its reader goes away (`fusestreamctl ls |
/// head`): killed by SIGPIPE, quietly, instead of panicking in `println!` (Rust ignores
/// SIGPIPE by default). Only for the CLI: the control plane's sockets must never kill it.
fn die_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            mountd_socket,
            listen,
            url_lifetime,
            renew_interval,
            log_file,
            config,
            state_dir,
            metrics_listen,
            sleep_grace,
            no_inhibit_sleep,
        } => {
            fusestream_shared::process::harden_or_report("fusestreamctl serve");
            let target = log_file.map_or(LogTarget::Stderr, LogTarget::File);
            let telemetry = match telemetry::init("fusestream-control", target, "info") {
                Ok(telemetry) => telemetry,
                Err(e) => return Failure::Request(format!("telemetry: {e}")).report(),
            };
            let config = serve::ServeConfig {
                socket: cli.socket,
                mountd_socket,
                listen,
                url_lifetime: Duration::from_secs(url_lifetime),
                renew_interval: Duration::from_secs(renew_interval.unwrap_or(url_lifetime / 4)),
                config: config.or_else(|| config::default_path().filter(|p| p.exists())),
                state_dir: state_dir.unwrap_or_else(paths::state_dir),
                metrics_listen,
                power: power::PowerConfig {
                    grace: (!no_inhibit_sleep).then(|| Duration::from_secs(sleep_grace)),
                },
            };
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(serve::run(config, &telemetry)));
            telemetry.shutdown();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => Failure::Request(format!("serve: {e}")).report(),
            }
        }
        command => {
            die_quietly_on_closed_stdout();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return Failure::Request(format!("runtime: {e}")).report(),
            };
            let result = runtime.block_on(async {
                let client = match Client::new(&cli.socket, cli.tcp) {
                    Ok(client) => client,
                    Err(failure) => return Err(failure),
                };
                match command {
                    Command::Stage {
                        sources,
                        name,
                        recursive,
                        output,
                        replace,
                        share,
                    } => {
                        let options = cli::StageOptions {
                            replace,
                            share: share.into(),
                            recursive,
                            json: output == "json",
                        };
                        client.stage(&sources, name, options).await
                    }
                    Command::Unstage { names, recursive } => {
                        client.unstage(&names, recursive).await
                    }
                    Command::Ls {
                        location: Some(location),
                        recursive,
                        output,
                    } => {
                        client
                            .ls_remote(&location, recursive, output == "json")
                            .await
                    }
                    Command::Ls {
                        location: None,
                        recursive: false,
                        output,
                    } if output == "table" => client.ls().await,
                    Command::Ls { .. } => Err(Failure::Usage(
                        "-r and --output need a REMOTE: location to browse".into(),
                    )),
                    Command::Status => client.status().await,
                    Command::Ops { watch, output } => client.ops(watch, output == "json").await,
                    Command::SwiftSetTempUrlKey { remote, key_stdin } => {
                        client.set_temp_url_key(&remote, key_stdin).await
                    }
                    Command::Serve { .. } => unreachable!("handled above"),
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => failure.report(),
            }
        }
    }
}
