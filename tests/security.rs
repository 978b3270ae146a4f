//! The privilege split as a boundary: each attack of the multi-user review, replayed with
//! real daemons, real sockets, the real grpcurl and real other uids (setpriv), must now fail
//! cleanly while the legitimate user's work goes on with the right bytes.
//!
//! The tests run as root (the legitimate user, "alice"); the attacker, "eve", is uid 65534
//! (nobody: no account needed). Malicious remotes are small recording HTTP servers on
//! 127.0.0.1 that answer with redirects.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use fusestream_tests::{
    Daemon, FuseStream, Options, bin, command_as, grpcurl, grpcurl_for_others, http_get,
    random_file, sha256, sha256_file, skip_unless_root, stderr,
};

/// The attacker's uid.
const EVE: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// Lets other uids reach the instance's dir (its sockets keep their own modes).
fn open_dir_to_others(fs: &FuseStream) {
    chmod(fs.dir.path(), 0o755);
}

/// A file only root may read, standing for alice's `~/.ssh/id_rsa`.
fn alice_secret(dir: &Path) -> PathBuf {
    let path = dir.join("id_rsa");
    std::fs::write(&path, b"-----BEGIN OPENSSH PRIVATE KEY----- alice\n").unwrap();
    chmod(&path, 0o600);
    path
}

fn names_in_mount(fs: &FuseStream) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&fs.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Attack 1: eve calls the Control API on TCP with grpcurl: stage alice's key, unstage
/// alice's entries, set a TempURL key. Every call, reflection included, is UNAUTHENTICATED
/// without the token and with a wrong one; with the token (as documented) it works.
#[test]
fn tcp_control_calls_need_the_api_token() {
    // The attacker is another uid: runs cat as another uid (setpriv).
    if skip_unless_root("security::tcp_control_calls_need_the_api_token") {
        return;
    }
    let fs = FuseStream::start();
    let addr = fs.listen.as_str();
    let secret = alice_secret(fs.dir.path());
    let own = fs.input("own.bin");
    let data = random_file(&own, 300_000);
    fs.ctl_ok(["stage", own.to_str().unwrap()]);

    let stage_secret = format!("{{\"source\":\"{}\"}}", secret.display());
    let attacks: [&[&str]; 5] = [
        &["-d", &stage_secret, addr, "fusestream.v1.Control/Stage"],
        &[
            "-d",
            "{\"name\":\"own.bin\"}",
            addr,
            "fusestream.v1.Control/Unstage",
        ],
        &[
            "-d",
            "{\"remote\":\"archive\",\"key\":\"k\"}",
            addr,
            "fusestream.v1.Control/SetTempUrlKey",
        ],
        &[addr, "fusestream.v1.Control/List"],
        &[addr, "list"],
    ];
    let wrong = format!("authorization: Bearer {}", "0".repeat(64));
    for attack in attacks {
        for header in [None, Some(wrong.as_str()), Some("authorization: Basic eve")] {
            let mut args = vec!["-plaintext"];
            if let Some(header) = header {
                args.extend(["-H", header]);
            }
            args.extend_from_slice(attack);
            let out = grpcurl(&args);
            let err = stderr(&out);
            assert!(
                !out.status.success(),
                "{attack:?} with {header:?} succeeded"
            );
            assert!(
                err.contains("Unauthenticated") && err.contains("API token"),
                "{attack:?} with {header:?}: {err}"
            );
        }
    }
    assert_eq!(
        names_in_mount(&fs),
        ["own.bin"],
        "nothing staged or unstaged"
    );
    assert_eq!(sha256_file(&fs.mountpoint.join("own.bin")), sha256(&data));

    // Eve can not read the token: it is alice's, mode 0600.
    let token_file = fs.control_socket.with_extension("token");
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().mode() & 0o777,
        0o600
    );
    open_dir_to_others(&fs);
    let cat = command_as(EVE, "cat").arg(&token_file).output().unwrap();
    assert!(!cat.status.success(), "eve read the token");

    // Alice's automation, as the README shows it, and the CLI over TCP.
    let auth = fs.auth_header();
    let staged = fusestream_tests::grpcurl_ok(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        &format!(
            "{{\"source\":\"{}\",\"name\":\"via-tcp.bin\"}}",
            own.display()
        ),
        addr,
        "fusestream.v1.Control/Stage",
    ]);
    assert!(staged.contains("via-tcp.bin"), "{staged}");
    let listed = fs.ctl_ok(["--tcp", addr, "ls"]);
    assert!(listed.contains("via-tcp.bin"), "{listed}");
    assert_eq!(
        sha256_file(&fs.mountpoint.join("via-tcp.bin")),
        sha256(&data)
    );
}

/// The control socket admits its own uid (and root) only, even if its mode were opened.
#[test]
fn the_control_socket_admits_only_its_owner() {
    // The attacker is another uid: runs grpcurl as another uid (setpriv).
    if skip_unless_root("security::the_control_socket_admits_only_its_owner") {
        return;
    }
    let fs = FuseStream::start();
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = grpcurl_for_others(tools.path());
    open_dir_to_others(&fs);
    chmod(&fs.control_socket, 0o666);
    for call in [&["list"][..], &["fusestream.v1.Control/List"]] {
        let out = command_as(EVE, &grpcurl)
            .args(["-unix", "-plaintext"])
            .arg(&fs.control_socket)
            .args(call)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "eve called {call:?}");
        assert!(
            err.contains("PermissionDenied") && err.contains("may not use this control plane"),
            "{call:?}: {err}"
        );
    }
    assert!(fs.ctl_ok(["ls"]).starts_with("NAME"));
}

/// Attack 5: a file staged from a directory eve controls is swapped for a link to alice's
/// key (as the file, and as a directory on its path); after a mount daemon restart the
/// control plane stages entries again: those two are refused with the reason, alice's own
/// entry comes back with its bytes.
#[test]
fn restaging_refuses_files_swapped_for_symlinks() {
    // The attacker is another uid: chowns files to another uid and runs as it.
    if skip_unless_root("security::restaging_refuses_files_swapped_for_symlinks") {
        return;
    }
    let mut fs = FuseStream::start();
    open_dir_to_others(&fs);
    let input = fs.input("x").parent().unwrap().to_path_buf();
    chmod(&input, 0o755);
    let secret_dir = fs.dir.path().join("alice");
    std::fs::create_dir(&secret_dir).unwrap();
    let secret = alice_secret(&secret_dir);
    std::fs::write(secret_dir.join("clip.bin"), std::fs::read(&secret).unwrap()).unwrap();
    chmod(&secret_dir.join("clip.bin"), 0o600);

    let eve_dir = input.join("eve");
    std::fs::create_dir_all(eve_dir.join("sub")).unwrap();
    let shared = eve_dir.join("shared.bin");
    let shared_data = random_file(&shared, 100_000);
    let nested = eve_dir.join("sub/clip.bin");
    random_file(&nested, 100_000);
    for path in [&eve_dir, &eve_dir.join("sub"), &shared, &nested] {
        chown(path, EVE);
    }
    let own = fs.input("own.bin");
    let own_data = random_file(&own, 200_000);
    for source in [&shared, &nested, &own] {
        fs.ctl_ok(["stage", source.to_str().unwrap()]);
    }
    assert_eq!(
        sha256_file(&fs.mountpoint.join("shared.bin")),
        sha256(&shared_data)
    );

    // Eve, as herself: the file becomes a link to alice's key; her directory too.
    let swap = format!(
        "rm {shared} && ln -s {secret} {shared} && mv {sub} {sub}.old && ln -s {alice} {sub}",
        shared = shared.display(),
        secret = secret.display(),
        sub = eve_dir.join("sub").display(),
        alice = secret_dir.display(),
    );
    let out = command_as(EVE, "sh").args(["-c", &swap]).output().unwrap();
    assert!(out.status.success(), "eve's swap: {}", stderr(&out));

    fs.restart_mountd(libc::SIGTERM);
    fs.wait_until("alice's own entry is staged again", |fs| {
        fs.mountpoint.join("own.bin").exists()
    });
    fs.wait_until("both swapped entries are refused", |fs| {
        let logs = fs.control.logs();
        logs.contains("shared.bin is not the file that was staged")
            || logs.matches("symbolic link now").count() >= 2
    });
    fs.wait_until("the refusals are logged", |fs| {
        let logs = fs.control.logs();
        logs.matches("could not stage again").count() >= 2
    });
    assert_eq!(
        sha256_file(&fs.mountpoint.join("own.bin")),
        sha256(&own_data)
    );
    assert_eq!(names_in_mount(&fs), ["own.bin"], "no swapped file staged");
    let logs = fs.control.logs();
    assert!(
        logs.contains("symbolic link now") || logs.contains("not the file that was staged"),
        "{logs}"
    );
}

/// Attack 6: without XDG_RUNTIME_DIR the runtime dir is `$TMPDIR/fusestream-$UID`. Eve
/// creates it first (or a symlink there) with her own socket in it: the control plane
/// refuses to use it, and the CLI refuses to talk to her socket. Made by the control
/// plane itself, the dir is 0700, its token and logs 0600.
#[test]
fn a_runtime_dir_taken_by_another_user_is_refused() {
    // The attacker is another uid: chowns a directory to another uid.
    if skip_unless_root("security::a_runtime_dir_taken_by_another_user_is_refused") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let runtime = tmp.path().join(format!("fusestream-{uid}"));
    let serve = |tmpdir: &Path| {
        let mut command = Command::new(bin("fusestreamctl"));
        command
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("FUSESTREAM_SOCKET")
            .env("TMPDIR", tmpdir)
            .args(["serve", "--no-inhibit-sleep", "--listen", "127.0.0.1:0"])
            .arg("--mountd-socket")
            .arg(tmpdir.join("no-mountd.sock"))
            .arg("--state-dir")
            .arg(tmpdir.join("state"))
            .stdin(Stdio::null());
        command
    };

    // Eve's directory, with eve's socket listening in it.
    std::fs::create_dir(&runtime).unwrap();
    let eve_socket = runtime.join("control.sock");
    let eve_listener = std::os::unix::net::UnixListener::bind(&eve_socket).unwrap();
    eve_listener.set_nonblocking(true).unwrap();
    chown(&eve_socket, EVE);
    chown(&runtime, EVE);
    let out = serve(tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to uid 65534") && stderr(&out).contains("refusing"),
        "{}",
        stderr(&out)
    );
    let cli = Command::new(bin("fusestreamctl"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("FUSESTREAM_SOCKET")
        .env("TMPDIR", tmp.path())
        .args(["stage", "https://example.invalid/a?sig=s3cret"])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1), "{}", stderr(&cli));
    assert!(
        stderr(&cli).contains("belongs to uid 65534"),
        "{}",
        stderr(&cli)
    );
    assert!(
        eve_listener.accept().is_err(),
        "the CLI connected to eve's socket"
    );

    // A symlink in its place, to a directory eve made: refused too.
    std::fs::remove_file(&eve_socket).unwrap();
    std::fs::remove_dir(&runtime).unwrap();
    let elsewhere = tmp.path().join("eve-dir");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &runtime).unwrap();
    let out = serve(tmp.path()).output().unwrap();
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    std::fs::remove_file(&runtime).unwrap();

    // A state dir of someone else's: refused.
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chown(&state, EVE);
    let out = serve(tmp.path()).output().unwrap();
    assert!(
        stderr(&out).contains("state dir") && stderr(&out).contains("belongs to uid 65534"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir(&state).unwrap();

    // Its own: created private, token and log file too.
    let notify = tempfile::tempdir().unwrap();
    let log = tmp.path().join("logs/control.log");
    let mut command = serve(tmp.path());
    command.arg("--log-file").arg(&log);
    let daemon = Daemon::start("control", command, notify.path());
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&runtime), 0o700);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&runtime.join("control.token")), 0o600);
    assert_eq!(mode(&runtime.join("control.sock")), 0o600);
    assert_eq!(mode(&log), 0o600);
    drop(daemon);
}

/// Eve's program: opens `count` connections to each target (a Unix socket path, or
/// host:port) and holds them; says `ready` once all were opened (a connect returns only
/// once the server's accept queue had room, so most were accepted by then), and stops
/// when stdin closes.
const FLOOD: &str = r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
count = int(sys.argv[1])
held = []
for target in sys.argv[2:]:
    for _ in range(count):
        try:
            if target.startswith("/"):
                s = socket.socket(socket.AF_UNIX)
                s.connect(target)
            else:
                host, port = target.rsplit(":", 1)
                s = socket.create_connection((host, int(port)))
            held.append(s)
        except OSError:
            pass
print("ready", len(held), flush=True)
sys.stdin.read()
"#;

/// Attack 7: eve holds ~1,100 idle connections on each of the mount daemon's socket (she
/// is allowed on it), the control plane's local file server and both metrics endpoints. Alice stages and reads with the right bytes, and both
/// daemons and their metrics answer.
#[test]
fn one_users_idle_connections_deny_nothing_to_another() {
    // The attacker is another uid: runs the flood as another uid (setpriv).
    if skip_unless_root("security::one_users_idle_connections_deny_nothing_to_another") {
        return;
    }
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![EVE],
        mountd_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        control_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..Options::default()
    });
    open_dir_to_others(&fs);
    let status = fs.ctl_ok(["status"]);
    let local = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("local files:   served on "))
        .expect("status shows the local file server")
        .to_string();
    let (control_metrics, mountd_metrics) = fs.metrics_addrs();
    let (control_metrics, mountd_metrics) = (control_metrics.unwrap(), mountd_metrics.unwrap());

    // The system's python (one under root's home would not run as eve).
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3");
    let mut eve = command_as(EVE, python)
        .args(["-c", FLOOD, "1100"])
        .arg(&fs.mountd_socket)
        .args([&local, &control_metrics, &mountd_metrics])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 as eve");
    let mut line = String::new();
    BufReader::new(eve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.starts_with("ready") {
        let mut err = String::new();
        eve.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("eve's flood did not start: {line:?} {err}");
    }

    for i in 0..3 {
        let src = fs.input(&format!("alice-{i}.bin"));
        let data = random_file(&src, 1_500_000);
        let out = fs.ctl_ok(["stage", src.to_str().unwrap()]);
        assert!(out.contains(&format!("alice-{i}.bin")), "{out}");
        assert_eq!(
            sha256_file(&fs.mountpoint.join(format!("alice-{i}.bin"))),
            sha256(&data)
        );
    }
    assert!(fs.ctl_ok(["status"]).contains("mount daemon: running"));
    // Eve holds 2,200 connections to the mount daemon (socket and metrics): it holds at
    // most her caps of them, whatever the kernel still queues.
    let mountd_fds = std::fs::read_dir(format!("/proc/{}/fd", fs.mountd.pid()))
        .unwrap()
        .count();
    assert!(
        mountd_fds < 600,
        "the mount daemon holds {mountd_fds} descriptors"
    );
    assert!(http_get(&mountd_metrics, "/metrics").contains("fusestream_entries"));
    assert!(http_get(&control_metrics, "/metrics").contains("fusestream_"));

    drop(eve.stdin.take());
    let status = eve.wait().unwrap();
    let mut err = String::new();
    eve.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "eve's flood failed: {err}");
}

/// A recording HTTP server on 127.0.0.1: each request's head is kept; `answer` gives the
/// raw response for a path.
struct Recorder {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(answer: impl Fn(&str) -> String + Send + 'static) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let recorded = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                recorded.lock().unwrap().push(head);
                let _ = stream.write_all(answer(&path).as_bytes());
            }
        });
        Recorder { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn redirect_to(location: &str) -> String {
    format!(
        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// One byte of a 5-byte object, as the staging probe wants it.
const PARTIAL: &str = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/5\r\n\
    Content-Length: 1\r\nETag: \"v1\"\r\nConnection: close\r\n\r\nh";

/// Attack 8 and the mount daemon's redirects: an `http` remote's credential header never
/// goes to another origin (not even another port of 127.0.0.1), no Referer is sent, and a
/// URL source that redirects to a local service (here standing for a metrics endpoint) is
/// refused by the control plane and, handed to the mount daemon directly, by its fetches.
#[test]
fn redirects_keep_credentials_home_and_stay_off_local_services() {
    let local_service = Recorder::start(|_| PARTIAL.to_string());
    let target = format!("http://127.0.0.1:{}/metrics", local_service.port);
    let evil = {
        let target = target.clone();
        Recorder::start(move |path| match path {
            "/same" => redirect_to("/landed?sig=s3cret"),
            "/landed?sig=s3cret" | "/landed" => PARTIAL.to_string(),
            _ => redirect_to(&target),
        })
    };
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[remotes.web]\ntype = \"http\"\nbase_url = \"http://127.0.0.1:{}/\"\n\
             headers = {{ X-Api-Key = \"k3y-s3cret\" }}\n",
            evil.port
        ),
    )
    .unwrap();
    chmod(&config, 0o600);
    let fs = FuseStream::start_with(Options {
        config: Some(config),
        ..Options::default()
    });

    // Cross-origin: not followed, nothing staged, nothing reaches the other port.
    let url_source = format!("http://127.0.0.1:{}/public.bin", evil.port);
    for source in ["web:away.bin", url_source.as_str()] {
        let out = fs.ctl(["stage", source]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("failed precondition")
                && stderr(&out).contains("a redirect FuseStream does not follow"),
            "{}",
            stderr(&out)
        );
    }
    assert!(
        local_service.heads().is_empty(),
        "{:?}",
        local_service.heads()
    );

    // Same origin: followed, with the key, without a Referer.
    fs.ctl_ok(["stage", "web:same"]);
    let heads = evil.heads();
    let landed: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("GET /landed"))
        .collect();
    assert!(!landed.is_empty(), "{heads:?}");
    for head in &heads {
        assert!(!head.to_ascii_lowercase().contains("referer"), "{head}");
    }
    assert!(
        landed
            .iter()
            .all(|h| h.to_ascii_lowercase().contains("x-api-key: k3y-s3cret")),
        "{landed:?}"
    );

    // The mount daemon, given the redirecting URL directly: its fetch does not follow.
    let add = format!(
        "{{\"entry\":{{\"name\":\"direct.bin\",\"url\":\"{url_source}\",\"version\":{{\"size\":\"5\"}}}}}}"
    );
    fusestream_tests::grpcurl_ok(&[
        "-unix",
        "-plaintext",
        "-d",
        &add,
        fs.mountd_socket.to_str().unwrap(),
        "fusestream.v1.Mount/AddEntry",
    ]);
    let read = std::fs::read(fs.mountpoint.join("direct.bin"));
    assert!(read.is_err(), "read {read:?}");
    assert!(
        local_service.heads().is_empty(),
        "{:?}",
        local_service.heads()
    );
}

/// Hardening: no core dumps and the whole fd limit in both daemons; the TempURL key is
/// never taken from the command line.
#[test]
fn daemons_hold_secrets_without_core_dumps() {
    let fs = FuseStream::start();
    for pid in [fs.mountd.pid(), fs.control.pid()] {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let row = |name: &str| -> Vec<String> {
            let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..]
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(row("Max core file size")[..2], ["0", "0"], "{limits}");
        let files = row("Max open files");
        assert_eq!(
            files[0], files[1],
            "soft limit raised to the hard one: {limits}"
        );
    }
    let out = fs.ctl(["swift-set-temp-url-key", "archive", "--key", "s3cret"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// mallory: a uid allowed on the mount daemon's socket, who is not alice.
const MALLORY: u32 = 65533;

/// Runs `method` of the Mount API as `uid` with grpcurl (reflection), `json` as request.
fn mount_call_as(
    uid: u32,
    grpcurl: &Path,
    socket: &Path,
    method: &str,
    json: &str,
) -> (bool, String) {
    let out = command_as(uid, grpcurl)
        .args(["-unix", "-plaintext", "-d", json])
        .arg(socket)
        .arg(format!("fusestream.v1.Mount/{method}"))
        .output()
        .expect("run grpcurl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    (out.status.success(), text)
}

/// Attacks 2 and 3: alice's entries are hers. mallory, allowed on the mount daemon, can
/// not remove, replace or renew them, nor see them in listings; eve, any local user,
/// can not read them through the mount (mode 0400) unless alice shared them
/// (`--share all`). mallory's own entry is hers alone in turn.
#[test]
fn entries_belong_to_their_stager() {
    // Calls and reads as other uids (setpriv).
    if skip_unless_root("security::entries_belong_to_their_stager") {
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = grpcurl_for_others(tools.path());
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![MALLORY],
        mountd_args: vec!["--allow-other".into()],
        ..Options::default()
    });
    open_dir_to_others(&fs);
    let private = fs.input("private.bin");
    let private_data = random_file(&private, 200_000);
    let shared = fs.input("shared.bin");
    let shared_data = random_file(&shared, 100_000);
    fs.ctl_ok(["stage", private.to_str().unwrap()]);
    fs.ctl_ok(["stage", "--share", "all", shared.to_str().unwrap()]);
    let ls = fs.ctl_ok(["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("private.bin") && l.contains(" private ")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("shared.bin") && l.contains(" all ")),
        "{ls}"
    );

    // eve reads the shared file, and not the private one.
    let cat_as = |uid: u32, name: &str| {
        command_as(uid, "/bin/cat")
            .arg(fs.mountpoint.join(name))
            .output()
            .expect("run cat")
    };
    let out = cat_as(EVE, "private.bin");
    assert!(
        !out.status.success() && stderr(&out).contains("Permission denied"),
        "{out:?}"
    );
    let out = cat_as(EVE, "shared.bin");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sha256(&out.stdout), sha256(&shared_data));

    // mallory can not touch alice's entries.
    let socket = &fs.mountd_socket;
    let (ok, text) = mount_call_as(MALLORY, &grpcurl, socket, "ListEntries", "{}");
    assert!(
        ok && !text.contains("private.bin") && !text.contains("shared.bin"),
        "{text}"
    );
    let (ok, text) = mount_call_as(
        MALLORY,
        &grpcurl,
        socket,
        "RemoveEntry",
        r#"{"name":"private.bin"}"#,
    );
    assert!(!ok && text.contains("PermissionDenied"), "remove: {text}");
    let hijack = r#"{"name":"private.bin","url":"http://127.0.0.1:9/evil","urlExpiresUnix":"0"}"#;
    let (ok, text) = mount_call_as(MALLORY, &grpcurl, socket, "UpdateUrl", hijack);
    assert!(!ok && text.contains("PermissionDenied"), "renew: {text}");
    let entry = |name: &str| {
        format!(
            r#"{{"entry":{{"name":"{name}","url":"http://127.0.0.1:9/evil","version":{{"size":"5","etag":"\"x\""}}}},"replace":true}}"#
        )
    };
    let (ok, text) = mount_call_as(MALLORY, &grpcurl, socket, "AddEntry", &entry("private.bin"));
    assert!(!ok && text.contains("PermissionDenied"), "replace: {text}");
    // Her own entry is hers: listed for her, private to her, and not alice's to list.
    let (ok, text) = mount_call_as(MALLORY, &grpcurl, socket, "AddEntry", &entry("mallory.bin"));
    assert!(ok, "her own entry: {text}");
    let (_, text) = mount_call_as(MALLORY, &grpcurl, socket, "ListEntries", "{}");
    assert!(
        text.contains("mallory.bin") && text.contains(&format!("\"ownerUid\": {MALLORY}")),
        "{text}"
    );
    // A batch renewal is checked entry by entry: hers is renewed, alice's refused.
    let batch = format!(
        r#"{{"updates":[{hijack},{}]}}"#,
        hijack.replace("private.bin", "mallory.bin")
    );
    let (ok, text) = mount_call_as(MALLORY, &grpcurl, socket, "UpdateUrls", &batch);
    assert!(
        ok && text.matches("\"failed\"").count() == 1 && text.contains("\"code\": 7"),
        "batch renewal: {text}"
    );
    let meta = std::fs::metadata(fs.mountpoint.join("mallory.bin")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (MALLORY, 0o400));
    let out = cat_as(EVE, "mallory.bin");
    assert!(
        !out.status.success() && stderr(&out).contains("Permission denied"),
        "{out:?}"
    );

    // alice's work goes on with the right bytes.
    assert_eq!(
        sha256_file(&fs.mountpoint.join("private.bin")),
        sha256(&private_data)
    );
    assert!(fs.ctl_ok(["ls"]).contains("private.bin"));
}

/// Attack 4: a remote that declares an absurd size (the staging probe answers
/// `Content-Range: bytes 0-0/9223372036854775807`) is refused with an error naming it,
/// the mount daemon refuses such a size from any caller, and both daemons live on.
#[test]
fn an_absurd_size_from_a_remote_is_refused_and_everything_lives_on() {
    let liar = Recorder::start(|_| {
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/9223372036854775807\r\n\
         Content-Length: 1\r\nETag: \"v1\"\r\nConnection: close\r\n\r\nh"
            .to_string()
    });
    let fs = FuseStream::start();
    let url = format!("http://127.0.0.1:{}/huge.bin", liar.port);
    let out = fs.ctl(["stage", &url]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("invalid argument")
            && err.contains(&url)
            && err.contains("9223372036854775807"),
        "{err}"
    );
    // Straight to the mount daemon, past the control plane: refused as well.
    let spec = format!(
        r#"{{"entry":{{"name":"huge.bin","url":"{url}","version":{{"size":"9223372036854775807"}}}}}}"#
    );
    let out = grpcurl(&[
        "-unix",
        "-plaintext",
        "-d",
        &spec,
        fs.mountd_socket.to_str().unwrap(),
        "fusestream.v1.Mount/AddEntry",
    ]);
    let text = stderr(&out);
    assert!(
        !out.status.success() && text.contains("InvalidArgument"),
        "{text}"
    );
    // Both daemons are alive and serve.
    let ok = fs.input("ok.bin");
    let data = random_file(&ok, 50_000);
    fs.ctl_ok(["stage", ok.to_str().unwrap()]);
    assert_eq!(sha256_file(&fs.mountpoint.join("ok.bin")), sha256(&data));
}
