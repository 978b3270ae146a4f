//! Test harness: real daemons on temp dirs, real FUSE mounts, real servers.
//!
//! - Binaries are the workspace's own build (`cargo build --bins` before `cargo test`).
//! - Readiness uses the daemons' `READY=1` notification (systemd's protocol) on a socket
//!   the harness owns: no sleeps, no polling of the mount.
//! - Teardown happens in `Drop`, so a failing (panicking) test still stops its daemons
//!   and leaves no mount behind.

pub mod browser;
pub mod faulty;
pub mod nginx;
pub mod otlp;
pub mod swift;
pub mod upload;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// How long a daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The script that installs every program the tests run (README: Tests).
pub const SETUP: &str = "tests/setup.sh";

/// The external program `name` the tests run (nginx, promtool, dbus-daemon, ...): the
/// first on PATH, else in /usr/sbin or /sbin (nginx lives there, and a user's PATH may not
/// reach them). A missing program fails the test, naming the script that installs it: with
/// that script run, no test lacks a program, so none is ever skipped for one.
pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("{name} is not installed: run {SETUP}, which installs everything the tests need")
    })
}

/// [`tool`], without failing.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Marks test `test` as skipped because of `reason`; the test then returns at once.
/// The line `SKIPPED: test: reason` goes straight to the process's stderr (libtest
/// captures only `print!`/`eprint!`), so it shows in `cargo test`'s output even though the
/// test counts as passed there, and `.ci/run` counts it as skipped, not passed.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let line = format!("\nSKIPPED: {test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// True, after reporting test `test` as skipped, unless the tests run as root: for the
/// few tests that need root whatever is installed (mounting a tmpfs, running a program as
/// another uid). CI runs as root, so there they all run.
pub fn skip_unless_root(test: &str) -> bool {
    let root = is_root();
    if !root {
        skip(test, "needs root (run the tests as root to include it)");
    }
    !root
}

/// True if the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Path of a binary built by this workspace.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// A daemon child process, started and waited for.
pub struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    exit: Option<std::process::ExitStatus>,
}

impl Daemon {
    /// Starts `command` and waits for its READY=1 notification.
    pub fn start(name: &'static str, command: Command, dir: &Path) -> Daemon {
        Daemon::start_with_env(name, command, dir, &[])
    }

    /// [`Daemon::start`], with `env` set last (so it overrides the harness's log filter).
    pub fn start_with_env(
        name: &'static str,
        mut command: Command,
        dir: &Path,
        env: &[(String, String)],
    ) -> Daemon {
        let notify_path = dir.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set timeout");
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("create log");
        let child = command
            .env("NOTIFY_SOCKET", &notify_path)
            .env("FUSESTREAM_LOG", "info,fusestream_mountd=debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut daemon = Daemon {
            name,
            child: Some(child),
            log,
            exit: None,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut buf = [0u8; 256];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) if buf[..n].starts_with(b"READY=1") => return daemon,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("{name}: notify socket: {e}"),
            }
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{name} exited with {status} before it was ready:\n{}",
                    daemon.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready in time:\n{}",
                daemon.logs()
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to exit (SIGKILL after 10 s).
    pub fn stop_with(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill() on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
                return;
            }
            if Instant::now() > deadline {
                eprintln!("{} ignored signal {signal}; killing it", self.name);
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if the process was stopped and exited with status 0 by itself.
    pub fn exited_cleanly(&self) -> bool {
        self.exit.is_some_and(|s| s.success())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_with(libc::SIGTERM);
    }
}

/// Both daemons on a private temp dir: mount point, sockets, logs.
pub struct FuseStream {
    pub dir: TempDir,
    pub mountpoint: PathBuf,
    pub mountd_socket: PathBuf,
    pub control_socket: PathBuf,
    pub mountd: Daemon,
    pub control: Daemon,
    /// TCP address of the Control API.
    pub listen: String,
    options: Options,
}

/// How to start the daemons.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--read-timeout` of the mount daemon, in seconds.
    pub read_timeout: u64,
    /// `--cache-max-mib` (0: the daemon's default).
    pub cache_max_mib: u64,
    /// `--cache-dir`; default: `cache/` in the instance's temp dir.
    pub cache_dir: Option<PathBuf>,
    /// The control plane's `--url-lifetime` (0: its default).
    pub url_lifetime: u64,
    /// The control plane's `--renew-interval` (0: its default).
    pub renew_interval: u64,
    /// The control plane's `--config`, and variables for its environment (secrets).
    pub config: Option<PathBuf>,
    pub control_env: Vec<(String, String)>,
    /// The mount daemon's `--allow-uid`s.
    pub allow_uids: Vec<u32>,
    /// More arguments and environment for the mount daemon, and arguments for the
    /// control plane's `serve` (after the harness's own).
    pub mountd_args: Vec<String>,
    pub mountd_env: Vec<(String, String)>,
    /// Let the control plane inhibit sleep (off by default, so tests never touch the
    /// machine's own logind).
    pub inhibit_sleep: bool,
    pub control_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            read_timeout: 20,
            cache_max_mib: 0,
            cache_dir: None,
            url_lifetime: 0,
            renew_interval: 0,
            config: None,
            control_env: Vec::new(),
            allow_uids: Vec::new(),
            mountd_args: Vec::new(),
            mountd_env: Vec::new(),
            inhibit_sleep: false,
            control_args: Vec::new(),
        }
    }
}

impl FuseStream {
    pub fn start() -> FuseStream {
        FuseStream::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> FuseStream {
        if !is_root() {
            // Any other user mounts through the setuid helper.
            tool("fusermount3");
        }
        let dir = tempfile::Builder::new()
            .prefix("fusestream-test-")
            .tempdir()
            .expect("temp dir");
        let mountpoint = dir.path().join("mnt");
        let mountd_socket = dir.path().join("mountd.sock");
        let control_socket = dir.path().join("control.sock");
        let mut options = options;
        let cache_dir = options
            .cache_dir
            .get_or_insert_with(|| dir.path().join("cache"));
        std::fs::create_dir_all(cache_dir).expect("cache dir");
        let mountd = start_mountd(dir.path(), &mountpoint, &mountd_socket, &options);
        let control = start_control(dir.path(), &control_socket, &mountd_socket, &options);
        let mut fs = FuseStream {
            dir,
            mountpoint,
            mountd_socket,
            control_socket,
            mountd,
            control,
            listen: String::new(),
            options,
        };
        let status = fs.ctl_ok(["status"]);
        fs.listen = status
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen:"))
            .map(|a| a.trim().to_string())
            .expect("status shows the listen address");
        fs
    }

    /// Kills the mount daemon with `signal` and starts a new one on the same mount point.
    pub fn restart_mountd(&mut self, signal: i32) {
        self.mountd.stop_with(signal);
        self.mountd = start_mountd(
            self.dir.path(),
            &self.mountpoint,
            &self.mountd_socket,
            &self.options,
        );
    }

    /// Kills the control plane with `signal` and starts a new one with the same options
    /// and state directory.
    pub fn restart_control(&mut self, signal: i32) {
        self.control.stop_with(signal);
        self.control = start_control(
            self.dir.path(),
            &self.control_socket,
            &self.mountd_socket,
            &self.options,
        );
    }

    /// Runs `fusestreamctl` against this instance.
    pub fn ctl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(bin("fusestreamctl"))
            .env("FUSESTREAM_SOCKET", &self.control_socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run fusestreamctl")
    }

    /// Runs `fusestreamctl`, asserts success and returns stdout.
    pub fn ctl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.ctl(&args);
        assert!(
            out.status.success(),
            "fusestreamctl {args:?} failed: {}\n--- mountd ---\n{}\n--- control ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.mountd.logs(),
            self.control.logs()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// A field of `fusestreamctl status` (e.g. "reads waiting"), as a number.
    pub fn status_number(&self, field: &str) -> u64 {
        let status = self.ctl_ok(["status"]);
        status
            .lines()
            .find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field:?} in status:\n{status}"))
    }

    /// The metrics endpoints `status` shows: (control plane's, mount daemon's).
    pub fn metrics_addrs(&self) -> (Option<String>, Option<String>) {
        let status = self.ctl_ok(["status"]);
        let (control, mount) = status
            .split_once("mount daemon: running")
            .expect("status shows the mount daemon");
        let addr = |section: &str| {
            section.lines().find_map(|l| {
                let url = l.trim().strip_prefix("metrics:")?.trim();
                Some(
                    url.strip_prefix("http://")?
                        .strip_suffix("/metrics")?
                        .to_string(),
                )
            })
        };
        (addr(control), addr(mount))
    }

    /// The mount daemon's metrics, scraped now (it must run with `--metrics-listen`).
    pub fn mountd_metrics(&self) -> String {
        let addr = self.metrics_addrs().1.expect("mountd serves metrics");
        http_get(&addr, "/metrics")
    }

    /// Waits (bounded) until `condition` holds, checking it every 50 ms.
    pub fn wait_until(&self, what: &str, condition: impl Fn(&FuseStream) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}\n--- mountd ---\n{}\n--- control ---\n{}",
                self.mountd.logs(),
                self.control.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the control plane's log contains `text`. Logging is queued and
    /// some lines are logged after what they report (a renewed URL is logged once handed
    /// over), so a line may reach the file after the test has seen its effect.
    pub fn wait_for_control_log(&self, text: &str) {
        self.wait_until(&format!("the control plane logs {text:?}"), |fs| {
            fs.control.logs().contains(text)
        });
    }

    pub fn cache_dir(&self) -> &Path {
        self.options
            .cache_dir
            .as_deref()
            .expect("set by start_with")
    }

    /// The mount daemon's open files inside the cache dir (its backing stores).
    pub fn open_store_files(&self) -> usize {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.mountd.pid())).expect("fd dir");
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(self.cache_dir()))
            .count()
    }

    /// The mount daemon's temp-URL expiry of entry `name`, in Unix seconds, as the Mount
    /// API reports it.
    pub fn url_expiry_of(&self, name: &str) -> u64 {
        let listing = grpcurl_ok(&[
            "-unix",
            "-plaintext",
            self.mountd_socket.to_str().expect("utf-8 path"),
            "fusestream.v1.Mount/ListEntries",
        ]);
        // Entries are printed one JSON object each; find `name`'s, then its expiry.
        let entry = listing
            .split("\"name\": ")
            .find(|e| e.starts_with(&format!("\"{name}\"")))
            .unwrap_or_else(|| panic!("no entry {name} in {listing}"));
        entry
            .split("\"urlExpiresUnix\": \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no expiry for {name} in {listing}"))
    }

    /// Waits until entry `name`'s temp URL has expired (by the wall clock), so the remote
    /// refuses it from then on.
    pub fn wait_for_url_expiry_of(&self, name: &str) {
        let expires = self.url_expiry_of(name);
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        self.wait_until("the temp URL has expired", |_| now() > expires);
    }

    /// The `authorization` header the Control API's TCP listener wants, as grpcurl's `-H`
    /// takes it (from the token file next to the control socket, as documented).
    pub fn auth_header(&self) -> String {
        let token = std::fs::read_to_string(self.control_socket.with_extension("token"))
            .expect("the control plane wrote its API token");
        format!("authorization: Bearer {}", token.trim())
    }

    /// A path for test input files (outside the mount).
    pub fn input(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("input");
        std::fs::create_dir_all(&dir).expect("input dir");
        dir.join(name)
    }
}

impl Drop for FuseStream {
    fn drop(&mut self) {
        self.control.stop_with(libc::SIGTERM);
        self.mountd.stop_with(libc::SIGTERM);
        // Whatever happened, leave no mount behind.
        if is_mounted(&self.mountpoint) {
            force_unmount(&self.mountpoint);
        }
    }
}

fn start_mountd(dir: &Path, mountpoint: &Path, socket: &Path, options: &Options) -> Daemon {
    let mut command = Command::new(bin("fusestream-mountd"));
    command
        .arg("--mountpoint")
        .arg(mountpoint)
        .arg("--socket")
        .arg(socket)
        .arg("--cache-dir")
        .arg(options.cache_dir.as_ref().expect("set by start_with"))
        .arg("--read-timeout")
        .arg(options.read_timeout.to_string());
    flag_unless_zero(&mut command, "--cache-max-mib", options.cache_max_mib);
    for uid in &options.allow_uids {
        command.arg("--allow-uid").arg(uid.to_string());
    }
    command.args(&options.mountd_args);
    Daemon::start_with_env("mountd", command, dir, &options.mountd_env)
}

fn start_control(dir: &Path, socket: &Path, mountd_socket: &Path, options: &Options) -> Daemon {
    let mut serve = Command::new(bin("fusestreamctl"));
    serve
        .arg("--socket")
        .arg(socket)
        .arg("serve")
        .arg("--mountd-socket")
        .arg(mountd_socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen", "127.0.0.1:0"]);
    flag_unless_zero(&mut serve, "--url-lifetime", options.url_lifetime);
    flag_unless_zero(&mut serve, "--renew-interval", options.renew_interval);
    if let Some(config) = &options.config {
        serve.arg("--config").arg(config);
    }
    if !options.inhibit_sleep {
        serve.arg("--no-inhibit-sleep");
    }
    serve.args(&options.control_args);
    Daemon::start_with_env("control", serve, dir, &options.control_env)
}

/// Passes `flag value`, unless `value` is 0 (meaning: the daemon's default).
fn flag_unless_zero(command: &mut Command, flag: &str, value: u64) {
    if value > 0 {
        command.arg(flag).arg(value.to_string());
    }
}

/// The names in directory `dir` (such as the mount point), sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// True if `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*path))
}

fn force_unmount(path: &Path) {
    let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// `GET path` from the HTTP server at `addr`: the status and the body.
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    http_exchange(addr, request.as_bytes(), Duration::from_secs(30))
}

/// `method path` with an optional JSON `body` to the HTTP/1.1 server at `addr` (one
/// request per connection; the response must not be chunked): the status and the body.
/// Fails if the server sends nothing for `timeout`.
pub fn try_http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        request += "Content-Type: application/json; charset=utf-8\r\n";
        request += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    } else {
        request += "Content-Length: 0\r\n\r\n";
    }
    http_exchange(addr, request.as_bytes(), timeout)
}

/// Sends `request` to `addr` and reads the response: its `Content-Length`, or else up to
/// EOF (some servers, chromedriver for one, say `Connection: close` and then wait for the
/// client to close). The status and the body.
fn http_exchange(addr: &str, request: &[u8], timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let not_http = |response: &[u8]| {
        let text = String::from_utf8_lossy(response);
        std::io::Error::other(format!("not an HTTP response: {text:?}"))
    };
    let (head, body_start) = loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break (
                String::from_utf8_lossy(&response[..end]).into_owned(),
                end + 4,
            );
        }
        match stream.read(&mut chunk)? {
            0 => return Err(not_http(&response)),
            n => response.extend_from_slice(&chunk[..n]),
        }
    };
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let value = value.trim().parse::<usize>().ok();
        value.filter(|_| name.trim().eq_ignore_ascii_case("content-length"))
    });
    let mut body = response.split_off(body_start);
    match length {
        Some(length) => {
            while body.len() < length {
                match stream.read(&mut chunk)? {
                    0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                    n => body.extend_from_slice(&chunk[..n]),
                }
            }
            body.truncate(length);
        }
        None => {
            stream.read_to_end(&mut body)?;
        }
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let body = String::from_utf8(body).map_err(std::io::Error::other)?;
    Ok((status, body))
}

/// The body of `GET path` from the HTTP server at `addr`, asserting a 200.
pub fn http_get(addr: &str, path: &str) -> String {
    match try_http_get(addr, path) {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET http://{addr}{path}: {status}: {body}"),
        Err(e) => panic!("GET http://{addr}{path}: {e}"),
    }
}

/// The value of the sample `series` (e.g. `x_total{op="read"}`) in a Prometheus text
/// exposition, if present.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// `size` random bytes.
pub fn random_bytes(size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size];
    getrandom::fill(&mut data).expect("random bytes");
    data
}

/// Writes `size` random bytes to `path` and returns them.
pub fn random_file(path: &Path, size: usize) -> Vec<u8> {
    let data = random_bytes(size);
    std::fs::write(path, &data).expect("write input");
    data
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// sha256 of a file, read in ordinary 1 MiB reads.
pub fn sha256_file(path: &Path) -> String {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            return hex::encode(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// A small deterministic PRNG (xorshift64*), so failures are reproducible.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The stderr of a command, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `f` on its own thread and returns its result, failing the test if it has not
/// finished after `secs`: a liveness bound (the thing must complete), not a latency check.
pub fn completes<T: Send + 'static>(
    what: &str,
    secs: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not complete within {secs} s"))
}

/// The real grpcurl binary: `$GRPCURL` if set, else `grpcurl` on PATH, where
/// tests/setup.sh installs it (see there why on PATH rather than inside its pip package).
pub fn grpcurl_binary() -> PathBuf {
    std::env::var_os("GRPCURL").map_or_else(|| tool("grpcurl"), PathBuf::from)
}

/// A copy of grpcurl (and the .proto files, for calls without reflection) in `dir` that
/// any uid may run (a `$GRPCURL` may sit under root's home).
pub fn grpcurl_for_others(dir: &std::path::Path) -> PathBuf {
    let installed = grpcurl_binary();
    let copy = dir.join("grpcurl");
    std::fs::copy(&installed, &copy).expect("copy grpcurl");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let protos = dir.join("protos");
    std::fs::create_dir_all(protos.join("fusestream/v1")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../proto/fusestream/v1/fusestream.proto"
        ),
        protos.join("fusestream/v1/fusestream.proto"),
    )
    .unwrap();
    std::fs::write(protos.join("health.proto"), HEALTH_PROTO).unwrap();
    for dir in [
        &protos,
        &protos.join("fusestream"),
        &protos.join("fusestream/v1"),
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy
}

/// grpc.health.v1, so a health check needs no reflection (which a refused caller does
/// not get either).
const HEALTH_PROTO: &str = r#"syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"#;

/// A command that runs `program` as `uid` (primary group the same number, no
/// supplementary groups), through util-linux's setpriv.
pub fn command_as(uid: u32, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(tool("setpriv"));
    command
        .arg("--reuid")
        .arg(uid.to_string())
        .arg("--regid")
        .arg(uid.to_string())
        .arg("--clear-groups")
        .arg(program);
    command
}

/// Runs the real grpcurl with `args`.
pub fn grpcurl(args: &[&str]) -> Output {
    let binary = grpcurl_binary();
    Command::new(&binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "grpcurl ({}) is not runnable: {e}; {SETUP} installs it",
                binary.display()
            )
        })
}

/// Runs grpcurl, asserts success and returns stdout.
pub fn grpcurl_ok(args: &[&str]) -> String {
    let out = grpcurl(args);
    assert!(out.status.success(), "grpcurl {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("utf-8 output")
}
