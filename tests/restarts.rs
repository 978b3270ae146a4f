//! Restarts and subscribers: either daemon killed with SIGKILL in the middle of a read
//! loses no entry and no byte, and a subscriber of the mount daemon's events that stops
//! reading (or goes away) slows nothing down.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fusestream_tests::faulty::{FaultyServer, Mode};
use fusestream_tests::{FuseStream, completes, grpcurl_binary, random_bytes, random_file, sha256};

const MIB: usize = 1 << 20;

/// Reads all of `file` from `offset` on, in 1 MiB reads.
fn read_rest(file: &std::fs::File, mut offset: u64, into: &mut Vec<u8>) -> std::io::Result<()> {
    let mut buf = vec![0u8; MIB];
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Ok(());
        }
        into.extend_from_slice(&buf[..n]);
        offset += n as u64;
    }
}

#[test]
fn killing_either_daemon_mid_read_loses_no_entry_and_no_byte() {
    let mut fs = FuseStream::start();
    let data = random_bytes(24 * MIB);
    let server = FaultyServer::start(data.clone(), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "remote.bin", &server.url("remote.bin")]);
    let local = fs.input("local.bin");
    let local_data = random_file(&local, 6 * MIB);
    fs.ctl_ok(["stage", local.to_str().unwrap()]);

    // The control plane killed mid-read: the remote object's temp URL stays valid, so the
    // open file reads on; restarted, it has the entries again.
    let file = std::fs::File::open(fs.mountpoint.join("remote.bin")).unwrap();
    let mut got = vec![0u8; MIB];
    file.read_exact_at(&mut got, 0).unwrap();
    fs.restart_control(libc::SIGKILL);
    read_rest(&file, MIB as u64, &mut got).expect("read on after the control plane died");
    assert_eq!(sha256(&got), sha256(&data));
    drop(file);
    let listed = fs.ctl_ok(["ls"]);
    assert!(
        listed.contains("remote.bin") && listed.contains("local.bin"),
        "{listed}"
    );

    // The mount daemon killed mid-read: that open file is gone with it (the kernel fails
    // it), the mount is recovered by the next daemon, and the control plane stages every
    // entry on it again, readable byte for byte.
    let file = std::fs::File::open(fs.mountpoint.join("local.bin")).unwrap();
    let mut head = vec![0u8; MIB];
    file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, local_data[..MIB]);
    fs.mountd.stop_with(libc::SIGKILL);
    // Whatever the kernel had cached may still be read; nothing waits for the dead daemon.
    completes("a read of the dead daemon's file", 30, move || {
        let mut rest = Vec::new();
        let _ = read_rest(&file, MIB as u64, &mut rest);
    });
    fs.restart_mountd(libc::SIGKILL);
    fs.wait_until("both entries are staged again", |fs| {
        let listed = fs.ctl_ok(["ls"]);
        listed.contains("remote.bin") && listed.contains("local.bin")
    });
    for (name, expected) in [("remote.bin", &data), ("local.bin", &local_data)] {
        let bytes = std::fs::read(fs.mountpoint.join(name)).unwrap();
        assert_eq!(sha256(&bytes), sha256(expected), "{name}");
    }
}

/// Waits (bounded) until a line of `lines` matches `wanted`, doing `poke` between tries.
fn wait_for_line(
    lines: &Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
    poke: impl Fn(),
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        poke();
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if wanted(&line) => return,
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => panic!("grpcurl ended before {what}"),
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
    }
}

/// The subscriber, killed (and reaped) however the test ends, even while stopped.
struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_subscriber_that_stops_reading_events_slows_nothing_and_is_told_what_it_missed() {
    let fs = FuseStream::start();
    let input = fs.input("busy.bin");
    random_file(&input, 64 * 1024);
    fs.ctl_ok(["stage", input.to_str().unwrap()]);
    let path = fs.mountpoint.join("busy.bin");

    // A second subscriber besides the control plane: the real grpcurl, which is then
    // stopped (SIGSTOP), so it reads nothing while events pile up.
    let mut watcher = Watcher(
        Command::new(grpcurl_binary())
            .args(["-unix", "-plaintext", "-max-time", "600"])
            .arg(&fs.mountd_socket)
            .arg("fusestream.v1.Mount/WatchEvents")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("grpcurl"),
    );
    // Its output, line by line, on a channel (a thread owns the pipe).
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = watcher.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let is_event = |l: &str| l.contains("handleOpened") || l.contains("handleClosed");
    // Subscribed once it prints an event: open the file until it does.
    wait_for_line(&lines, "grpcurl prints an event", is_event, || {
        std::fs::File::open(&path).unwrap();
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(watcher.0.id() as i32, libc::SIGSTOP) };

    // Thousands of events (two per open) while it is stopped: every op completes.
    let opener = path.clone();
    completes("opens and closes with a stuck subscriber", 120, move || {
        for _ in 0..3000 {
            let mut byte = [0u8; 1];
            std::fs::File::open(&opener)
                .unwrap()
                .read_exact(&mut byte)
                .unwrap();
        }
    });
    fs.ctl_ok(["ls"]);
    fs.ctl_ok(["status"]);

    // Woken up, it is told it fell behind and how far.
    // SAFETY: as above.
    unsafe { libc::kill(watcher.0.id() as i32, libc::SIGCONT) };
    wait_for_line(
        &lines,
        "grpcurl is told what it missed",
        |l| l.contains("droppedBefore"),
        || {},
    );

    // Gone for good: the daemon carries on.
    drop(watcher);
    let mut byte = [0u8; 1];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact(&mut byte)
        .unwrap();
    fs.ctl_ok(["ls"]);
}
