//! Sleep inhibition, end to end: a real dbus-daemon on a private bus, a fake logind on it
//! (`support/bin/fake_logind.rs`, recording every Inhibit call and noticing when the
//! inhibitor fd is closed), both FuseStream daemons with a real FUSE mount, and the
//! control plane pointed at the private bus with `DBUS_SYSTEM_BUS_ADDRESS`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fusestream_tests::{
    FuseStream, Options, bin, completes, random_file, sha256, sha256_file, tool,
};

/// A child process killed (by its pid) and reaped when dropped, even if the test panics.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `child`'s first stdout line, failing the test if none comes within 30 s.
fn first_line(child: &mut Child, what: &str) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} printed nothing within 30 s"));
    assert!(!line.is_empty(), "{what} exited before it was ready");
    line.trim().to_string()
}

/// A private D-Bus (a real dbus-daemon) that lets anyone do anything, on a socket in `dir`.
struct Bus {
    address: String,
    _daemon: Killed,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        let config = dir.join("bus.conf");
        let socket = dir.join("bus.sock");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write bus config");
        let mut child = Command::new(tool("dbus-daemon"))
            .arg(format!("--config-file={}", config.display()))
            .args(["--print-address", "--nofork"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its complaints (e.g. about the fd limit) go to a file, not the test output.
            .stderr(std::fs::File::create(dir.join("bus.log")).expect("bus log"))
            .spawn()
            .expect("start dbus-daemon");
        let address = first_line(&mut child, "dbus-daemon");
        Bus {
            address,
            _daemon: Killed(child),
        }
    }
}

/// The fake logind on `bus`, and what it saw.
struct FakeLogind {
    record: PathBuf,
    _process: Killed,
}

impl FakeLogind {
    fn start(bus: &Bus, dir: &Path, mode: &[&str]) -> FakeLogind {
        let record = dir.join("logind.record");
        let mut child = Command::new(bin("fake-logind"))
            .arg(&bus.address)
            .arg(&record)
            .args(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fake-logind");
        assert_eq!(first_line(&mut child, "fake-logind"), "ready");
        FakeLogind {
            record,
            _process: Killed(child),
        }
    }

    /// The record's lines that start with `kind` ("inhibit" or "released").
    fn seen(&self, kind: &str) -> Vec<String> {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.record) {
            file.read_to_string(&mut text).expect("read record");
        }
        text.lines()
            .filter(|l| l.starts_with(&format!("{kind} ")))
            .map(str::to_string)
            .collect()
    }
}

/// A temp dir of its own for the bus and the fake (FuseStream's is made by the harness).
fn bus_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fusestream-power-")
        .tempdir()
        .expect("temp dir")
}

/// FuseStream whose control plane inhibits sleep through the bus at `address`.
fn start_fusestream(address: &str) -> FuseStream {
    FuseStream::start_with(Options {
        inhibit_sleep: true,
        control_args: vec!["--sleep-grace".into(), "1".into()],
        control_env: vec![("DBUS_SYSTEM_BUS_ADDRESS".into(), address.into())],
        ..Options::default()
    })
}

/// The `sleep:` line of `fusestreamctl status`.
fn sleep_line(fs: &FuseStream) -> String {
    let status = fs.ctl_ok(["status"]);
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix("sleep:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no sleep line in status:\n{status}"))
}

fn stage(fs: &FuseStream, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let input = fs.input(name);
    let data = random_file(&input, size);
    fs.ctl_ok(["stage", input.to_str().expect("utf-8 path")]);
    (fs.mountpoint.join(name), data)
}

#[test]
fn open_files_inhibit_sleep_until_the_grace_after_the_last_close() {
    let dir = bus_dir();
    let bus = Bus::start(dir.path());
    let logind = FakeLogind::start(&bus, dir.path(), &[]);
    let fs = start_fusestream(&bus.address);

    let (path, data) = stage(&fs, "movie.bin", 300_000);
    // Staging (and listing the mount) opens no file: nothing is inhibited.
    assert_eq!(std::fs::read_dir(&fs.mountpoint).unwrap().count(), 1);
    assert_eq!(sleep_line(&fs), "released");
    assert!(logind.seen("inhibit").is_empty());

    let first = std::fs::File::open(&path).expect("open in the mount");
    fs.wait_until("status says inhibited", |fs| {
        sleep_line(fs) == "inhibited (1 file open)"
    });
    let calls = logind.seen("inhibit");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with("inhibit what=sleep:idle who=FuseStream mode=block why="),
        "{calls:?}"
    );

    // A second open is counted but asks logind nothing more.
    let second = std::fs::File::open(&path).expect("open again");
    fs.wait_until("status counts two files", |fs| {
        sleep_line(fs) == "inhibited (2 files open)"
    });
    assert_eq!(logind.seen("inhibit").len(), 1);
    assert_eq!(sha256_file(&path), sha256(&data));
    drop(first);
    drop(second);

    // Released after the grace: status says so and logind sees the fd closed.
    fs.wait_until("status says released", |fs| sleep_line(fs) == "released");
    fs.wait_until("logind saw the inhibitor closed", |_| {
        logind.seen("released").len() == 1
    });
    assert_eq!(logind.seen("inhibit").len(), 1);

    // The next open inhibits again.
    let again = std::fs::File::open(&path).expect("open after release");
    fs.wait_until("inhibited again", |fs| {
        sleep_line(fs) == "inhibited (1 file open)"
    });
    assert_eq!(logind.seen("inhibit").len(), 2);
    drop(again);
    fs.wait_until("released again", |_| logind.seen("released").len() == 2);
}

#[test]
fn a_hanging_logind_delays_no_file_op_and_no_rpc() {
    let dir = bus_dir();
    let bus = Bus::start(dir.path());
    let logind = FakeLogind::start(&bus, dir.path(), &["--hang", "30"]);
    let fs = start_fusestream(&bus.address);
    let (path, data) = stage(&fs, "a.bin", 200_000);

    let held = std::fs::File::open(&path).expect("open in the mount");
    fs.wait_until("logind got the call (and hangs)", |_| {
        logind.seen("inhibit").len() == 1
    });
    assert_eq!(
        sleep_line(&fs),
        "inhibiting (1 file open; waiting for the system)"
    );

    // While Inhibit hangs: open, read, close, stage, list and unstage all complete. (The
    // closure gets paths, not `fs`, so a timeout here still drops `fs` and its daemons.)
    let input = fs.input("b.bin");
    let b = random_file(&input, 100_000);
    let (socket, mountpoint) = (fs.control_socket.clone(), fs.mountpoint.clone());
    completes("file ops and RPCs while logind hangs", 20, move || {
        let ctl = |args: &[&str]| {
            let out = Command::new(bin("fusestreamctl"))
                .env("FUSESTREAM_SOCKET", &socket)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run fusestreamctl");
            assert!(out.status.success(), "fusestreamctl {args:?}: {out:?}");
            String::from_utf8(out.stdout).expect("utf-8 output")
        };
        for _ in 0..3 {
            assert_eq!(sha256_file(&path), sha256(&data));
        }
        ctl(&["stage", input.to_str().expect("utf-8 path")]);
        assert_eq!(sha256_file(&mountpoint.join("b.bin")), sha256(&b));
        let listing = ctl(&["ls"]);
        assert!(
            listing.contains("a.bin") && listing.contains("b.bin"),
            "{listing}"
        );
        ctl(&["unstage", "b.bin"]);
        ctl(&["status"]);
    });
    drop(held);
    // Still one call: the manager does not pile up calls behind a hanging one.
    assert_eq!(logind.seen("inhibit").len(), 1);
}

#[test]
fn no_logind_says_unavailable_logs_once_and_changes_nothing_else() {
    let dir = bus_dir();
    let missing = format!("unix:path={}", dir.path().join("no-bus.sock").display());
    let fs = start_fusestream(&missing);
    let (path, data) = stage(&fs, "c.bin", 150_000);

    let file = std::fs::File::open(&path).expect("open in the mount");
    fs.wait_until("status says unavailable", |fs| {
        let line = sleep_line(fs);
        line.starts_with("unavailable: no system D-Bus") && line.ends_with("(1 file open)")
    });
    drop(file);
    fs.wait_until("the close is counted", |fs| {
        sleep_line(fs).ends_with("(0 files open)")
    });
    // A later first open tries again (and fails again) without logging again.
    assert_eq!(sha256_file(&path), sha256(&data));
    let file = std::fs::File::open(&path).expect("open again");
    fs.wait_until("tried again", |fs| {
        let line = sleep_line(fs);
        line.starts_with("unavailable:") && line.ends_with("(1 file open)")
    });
    drop(file);
    assert!(fs.ctl_ok(["ls"]).contains("c.bin"));
    let logs = fs.control.logs();
    assert_eq!(
        logs.matches("cannot inhibit sleep").count(),
        1,
        "logged once:\n{logs}"
    );
}

#[test]
fn a_refusal_is_shown_with_logind_s_words() {
    let dir = bus_dir();
    let bus = Bus::start(dir.path());
    let logind = FakeLogind::start(&bus, dir.path(), &["--deny"]);
    let fs = start_fusestream(&bus.address);
    let (path, data) = stage(&fs, "d.bin", 100_000);
    let file = std::fs::File::open(&path).expect("open in the mount");
    fs.wait_until("status shows the refusal", |fs| {
        sleep_line(fs).starts_with(
            "unavailable: refused: org.freedesktop.DBus.Error.AccessDenied: \
             Permission denied by the test's polkit",
        )
    });
    assert_eq!(logind.seen("inhibit").len(), 1);
    assert_eq!(sha256_file(&path), sha256(&data));
    drop(file);
}
