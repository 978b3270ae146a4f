//! The command-line client: one function per subcommand, each a call to the control
//! plane. Errors are printed as one line; the exit code says what kind of failure it was
//! (see [`Failure`]). The commands that stream many answers (`stage`, `ls REMOTE:`) are in
//! `many`.

mod many;

pub use many::StageOptions;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use fusestream_shared::api::{self, control_client::ControlClient};
use fusestream_shared::auth::Token;
use fusestream_shared::{grpc, http, paths};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// How a command failed, and so its exit code.
pub enum Failure {
    /// The request failed (exit 1).
    Request(String),
    /// The command line was wrong (exit 2).
    Usage(String),
    /// The control plane is not reachable (exit 3).
    Unreachable(String),
}

impl Failure {
    pub fn report(self) -> ExitCode {
        let (message, code) = match self {
            Failure::Request(m) => (m, 1),
            Failure::Usage(m) => (m, 2),
            Failure::Unreachable(m) => (m, 3),
        };
        eprintln!("fusestreamctl: {message}");
        ExitCode::from(code)
    }
}

/// Adds the API token to every call made over TCP (nothing over the Unix socket).
#[derive(Clone)]
pub struct Authorization(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Authorization {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub struct Client {
    control: ControlClient<InterceptedService<Channel, Authorization>>,
    socket: PathBuf,
    tcp: Option<SocketAddr>,
}

impl Client {
    /// A client of the control plane on `socket`, or on `tcp` with the API token from the
    /// file next to `socket`. The socket must be one of ours: a socket another user put
    /// there would receive our requests (and the URLs in them), so it is refused.
    pub fn new(socket: &Path, tcp: Option<SocketAddr>) -> Result<Client, Failure> {
        // Generous: staging resolves remote metadata; the server bounds its own calls.
        let timeout = Duration::from_secs(120);
        let (channel, authorization) = match tcp {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    return Err(Failure::Usage(format!(
                        "--tcp {addr}: only loopback addresses (the token would cross the \
                         network in plain text)"
                    )));
                }
                let token_file = paths::token_file(socket);
                let token = Token::read(&token_file).map_err(|e| {
                    Failure::Request(format!(
                        "API token {}: {e} (it is written by `fusestreamctl serve --listen`)",
                        token_file.display()
                    ))
                })?;
                let value = token
                    .header_value()
                    .parse()
                    .map_err(|_| Failure::Request("API token: not a header value".into()))?;
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| Failure::Usage(format!("--tcp {addr}: {e}")))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(timeout)
                    .connect_lazy();
                (channel, Authorization(Some(value)))
            }
            None => {
                check_socket_owner(socket)?;
                (grpc::own_unix_channel(socket, timeout), Authorization(None))
            }
        };
        Ok(Client {
            control: ControlClient::with_interceptor(channel, authorization),
            socket: socket.to_path_buf(),
            tcp,
        })
    }

    /// Turns a failed call into a one-line failure, `context` first.
    fn failure(&self, context: &str, status: tonic::Status) -> Failure {
        // The server itself also answers UNAVAILABLE (e.g. mount daemon down), so ask
        // the socket whether anyone is there.
        let transport_down = matches!(status.code(), Code::Unavailable | Code::Unknown)
            && match self.tcp {
                Some(addr) => std::net::TcpStream::connect(addr).is_err(),
                None => std::os::unix::net::UnixStream::connect(&self.socket).is_err(),
            };
        if transport_down {
            let at = match self.tcp {
                Some(addr) => addr.to_string(),
                None => self.socket.display().to_string(),
            };
            return Failure::Unreachable(format!(
                "control plane at {at} is not running (start it with `fusestreamctl serve`)"
            ));
        }
        Failure::Request(format!(
            "{context}: {}: {}",
            code_name(status.code()),
            status.message()
        ))
    }

    /// Unstages `names`; with `recursive`, each is a folder whose entries (the caller's
    /// own) all go, and how many is printed.
    pub async fn unstage(&self, names: &[String], recursive: bool) -> Result<(), Failure> {
        for name in names {
            let removed = self
                .control
                .clone()
                .unstage(api::UnstageRequest {
                    name: name.clone(),
                    recursive,
                })
                .await
                .map_err(|s| self.failure(&format!("unstage {name}"), s))?
                .into_inner()
                .removed;
            if recursive {
                println!("{name}: {removed} entries unstaged");
            }
        }
        Ok(())
    }

    pub async fn ls(&self) -> Result<(), Failure> {
        let entries = fusestream_shared::grpc::all_pages(|page_token| async {
            let page = self
                .control
                .clone()
                .list(api::ListRequest {
                    page_token,
                    page_size: fusestream_shared::limits::MAX_LIST_PAGE_SIZE as u32,
                })
                .await?
                .into_inner();
            Ok((page.entries, page.next_page_token))
        })
        .await
        .map_err(|s| self.failure("ls", s))?;
        let rows: Vec<[String; 7]> = entries
            .iter()
            .map(|e| {
                let state = if e.error.is_empty() {
                    "ok".to_string()
                } else {
                    e.error.clone()
                };
                [
                    e.name.clone(),
                    e.size.to_string(),
                    e.bytes_fetched.to_string(),
                    e.open_handles.to_string(),
                    readers(e.mode).to_string(),
                    e.source.clone(),
                    state,
                ]
            })
            .collect();
        print_table(
            [
                "NAME", "SIZE", "FETCHED", "OPEN", "READERS", "SOURCE", "STATE",
            ],
            &rows,
        );
        Ok(())
    }

    pub async fn set_temp_url_key(&self, remote: &str, key_stdin: bool) -> Result<(), Failure> {
        let key = if key_stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Failure::Usage(format!("--key-stdin: {e}")))?;
            let key = line.trim_end_matches(['\n', '\r']).to_string();
            if key.is_empty() {
                return Err(Failure::Usage("--key-stdin: stdin gave no key".into()));
            }
            key
        } else {
            String::new()
        };
        let request = api::SetTempUrlKeyRequest {
            remote: remote.to_string(),
            key,
        };
        self.control
            .clone()
            .set_temp_url_key(request)
            .await
            .map_err(|s| self.failure(&format!("set TempURL key of {remote}"), s))?;
        println!("TempURL key of remote {remote} set");
        Ok(())
    }

    /// Lists the FUSE ops in flight, oldest first; with `watch`, again every second.
    pub async fn ops(&self, watch: bool, json: bool) -> Result<(), Failure> {
        loop {
            let ops = self
                .control
                .clone()
                .list_ops(api::ListOpsRequest {})
                .await
                .map_err(|s| self.failure("ops", s))?
                .into_inner()
                .ops;
            if watch {
                print!("\x1b[H\x1b[2J"); // like top: redraw from the top left
            }
            if json {
                let list: Vec<serde_json::Value> = ops
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "op": o.op, "unique": o.unique, "pid": o.pid, "process": o.process,
                            "age_ms": o.age_ms, "stalled": o.stalled, "path": o.path,
                            "detail": o.detail, "waiting_for": o.waiting_for,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                let rows: Vec<[String; 8]> = ops
                    .iter()
                    .map(|o| {
                        [
                            format!("{:.1}s", o.age_ms as f64 / 1000.0),
                            if o.stalled { "STALLED" } else { "" }.to_string(),
                            o.op.clone(),
                            o.pid.to_string(),
                            o.process.clone(),
                            o.path.clone(),
                            o.detail.clone(),
                            o.waiting_for.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    [
                        "AGE",
                        "STATE",
                        "OP",
                        "PID",
                        "PROCESS",
                        "PATH",
                        "DETAIL",
                        "WAITING FOR",
                    ],
                    &rows,
                );
            }
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    pub async fn status(&self) -> Result<(), Failure> {
        let status = self
            .control
            .clone()
            .status(api::StatusRequest {})
            .await
            .map_err(|s| self.failure("status", s))?
            .into_inner();
        if let Some(c) = status.control {
            println!(
                "control plane: running (pid {}, version {}, up {}s)",
                c.pid, c.version, c.uptime_seconds
            );
            println!("  socket:        {}", c.socket);
            if !c.listen.is_empty() {
                println!("  listen:        {}", c.listen);
            }
            if !c.metrics_addr.is_empty() {
                println!("  metrics:       http://{}/metrics", c.metrics_addr);
            }
            println!("  local files:   served on {}", c.local_source_addr);
            if !c.config.is_empty() {
                println!("  config:        {}", c.config);
            }
            if !c.remotes.is_empty() {
                println!("  remotes:       {}", c.remotes.join(", "));
            }
            println!("  mount daemon:  {}", c.mountd_socket);
            if let Some(sleep) = &c.sleep {
                println!("  sleep:         {}", describe_sleep(sleep));
            }
        }
        match status.mount {
            Some(m) => {
                println!(
                    "mount daemon: running (pid {}, version {}, up {}s)",
                    m.pid, m.version, m.uptime_seconds
                );
                println!("  mount point:   {}", m.mountpoint);
                println!("  cache dir:     {}", m.cache_dir);
                println!("  entries:       {}", m.entries);
                println!("  open handles:  {}", m.open_handles);
                println!("  fetched:       {} bytes", m.bytes_fetched);
                let budget = match m.cache_max_bytes {
                    0 => "unlimited".to_string(),
                    max => format!("{max} bytes"),
                };
                println!(
                    "  cache:         {} bytes (budget {budget}, {} evictions)",
                    m.cache_bytes, m.evictions
                );
                println!("  reads waiting: {}", m.reads_waiting);
                if !m.metrics_addr.is_empty() {
                    println!("  metrics:       http://{}/metrics", m.metrics_addr);
                }
                Ok(())
            }
            None => Err(Failure::Request(format!(
                "mount daemon: {}",
                status.mount_error
            ))),
        }
    }
}

/// The sleep inhibitor in words, e.g. "inhibited (2 files open)".
fn describe_sleep(sleep: &api::SleepInhibition) -> String {
    use api::sleep_inhibition::State;
    let files = |n: u32| format!("{n} file{} open", if n == 1 { "" } else { "s" });
    match sleep.state() {
        State::Unspecified => "unknown".to_string(),
        State::Disabled => "not inhibited (--no-inhibit-sleep)".to_string(),
        State::Released => "released".to_string(),
        State::Acquiring => format!(
            "inhibiting ({}; waiting for the system)",
            files(sleep.open_files)
        ),
        State::Inhibited => format!("inhibited ({})", files(sleep.open_files)),
        State::Grace => format!(
            "in grace period, releasing in {} s",
            sleep.release_in_ms.div_ceil(1000)
        ),
        State::Unavailable => format!(
            "unavailable: {} ({})",
            sleep.reason,
            files(sleep.open_files)
        ),
    }
}

/// Refuses a control socket that belongs to another user (see [`Client::new`]); a missing
/// one is left for the connection to report.
fn check_socket_owner(socket: &Path) -> Result<(), Failure> {
    let Ok(meta) = std::fs::symlink_metadata(socket) else {
        return Ok(());
    };
    let me = paths::euid();
    if meta.uid() != me {
        return Err(Failure::Request(format!(
            "{} belongs to uid {}, not to you (uid {me}): refusing to send it requests",
            socket.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// The gRPC code in words, as the CLI prints it (e.g. "not found").
fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut words = String::new();
    for c in camel.chars() {
        if c.is_uppercase() && !words.is_empty() {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// Sources are sent to the control plane as absolute paths (it has its own working
/// directory), URLs, or REMOTE:path.
fn absolute_source(source: &str) -> Result<String, Failure> {
    if http::is_http_url(source) {
        return Ok(source.to_string());
    }
    // REMOTE:path, unless a local file of that name exists.
    if let Some((remote, _)) = source.split_once(':')
        && crate::config::is_remote_name(remote)
        && !std::path::Path::new(source).exists()
    {
        return Ok(source.to_string());
    }
    std::path::absolute(source)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Failure::Usage(format!("stage {source}: {e}")))
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    print!("{}", table(header, rows));
}

/// `cell` safe to print on a terminal: control characters (ESC and the like, which could
/// move the cursor, retitle the window or hide text) are shown escaped, e.g. `\u{1b}`.
/// Cells come from the daemons, and some from other processes (`/proc/PID/comm`).
fn printable(cell: &str) -> String {
    if !cell.chars().any(char::is_control) {
        return cell.to_string();
    }
    cell.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `rows` under `header`, in columns padded to the widest cell. Padded by hand: cells come
/// from the daemons and may be wider than `format!` widths go (u16::MAX).
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| printable(cell)))
        .collect();
    let rows = &rows[..];
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i + 1 == N {
                    c.to_string()
                } else {
                    format!("{c}{}", " ".repeat(w - c.chars().count()))
                }
            })
            .collect();
        padded.join("  ") + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Who may read an entry of mode `mode`, as `stage --share` names it.
fn readers(mode: u32) -> &'static str {
    match mode & 0o044 {
        0 => "private",
        0o040 => "group",
        _ => "all",
    }
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn terminal_escapes_in_cells_are_shown_not_sent() {
        let rows = [[
            "evil\x1b]0;pwned\x07\x1b[2J".to_string(),
            "a\tb".to_string(),
        ]];
        let out = table(["PROCESS", "PATH"], &rows);
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
        assert!(out.contains("evil\\u{1b}]0;pwned\\u{7}"), "{out}");
        assert!(out.contains("a\\tb"), "{out}");
    }

    #[test]
    fn tables_pad_columns_by_characters() {
        let rows = [["ü.bin".to_string(), "1".to_string()]];
        assert_eq!(table(["NAME", "SIZE"], &rows), "NAME   SIZE\nü.bin  1\n");
    }

    #[test]
    fn cells_wider_than_format_widths_do_not_panic() {
        let wide = "s".repeat(70_000);
        let rows = [
            [wide.clone(), "x".to_string()],
            ["a".to_string(), "y".to_string()],
        ];
        let out = table(["SOURCE", "STATE"], &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[2].len(), 70_000 + 2 + 1);
        assert!(lines[2].starts_with("a ") && lines[2].ends_with(" y"));
    }
}
