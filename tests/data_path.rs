//! The data path under faults: a stalled remote never blocks the rest of the mount,
//! killed readers are released (FUSE_INTERRUPT), deadlines fire, a changed object fails
//! cleanly, reads under random faults return exact bytes or clean errors, and a stream
//! received in pieces of every size (kept in memory as received) reads exactly.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use fusestream_tests::faulty::{Fault, FaultyServer, Mode};
use fusestream_tests::{
    FuseStream, Options, Prng, completes, names_in, random_file, sha256, sha256_file,
};

const MIB: usize = 1 << 20;

fn data(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Prng::new(seed);
    (0..size).map(|_| rng.next_u64() as u8).collect()
}

/// `dd` reading one 4 KiB block at `block`, buffered or with O_DIRECT.
fn reader(path: &Path, block: u64, direct: bool) -> Child {
    let mut cmd = Command::new("dd");
    cmd.arg(format!("if={}", path.display()))
        .args(["of=/dev/null", "bs=4096", "count=1"])
        .arg(format!("skip={block}"));
    if direct {
        cmd.arg("iflag=direct");
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dd")
}

#[test]
fn a_stalled_remote_blocks_nothing_else_and_killed_readers_are_released() {
    // Long deadline: readers must be released by the interrupt, not by a timeout.
    let fs = Arc::new(FuseStream::start_with(Options {
        read_timeout: 600,
        ..Options::default()
    }));
    let server = FaultyServer::start(data(64 * MIB, 1), Mode::Stall { after_bytes: 4096 });
    fs.ctl_ok(["stage", "--name", "stuck.bin", &server.url("stuck.bin")]);
    let healthy = fs.input("healthy.bin");
    let healthy_data = random_file(&healthy, 5 * MIB);
    fs.ctl_ok(["stage", healthy.to_str().unwrap()]);

    // 16 readers: 8 through the page cache at the same offset, 8 with O_DIRECT at
    // different offsets (each of those parks a read of its own).
    let stuck = fs.mountpoint.join("stuck.bin");
    let mut readers: Vec<Child> = (0..8).map(|_| reader(&stuck, 4096, false)).collect();
    readers.extend((0..8).map(|i| reader(&stuck, 1000 + i * 997, true)));
    fs.wait_until("readers are parked", |fs| {
        fs.status_number("reads waiting") >= 8
    });

    // They are visible in flight: what they are, who reads, and what they wait for.
    let ops = fs.ctl_ok(["ops"]);
    let url = server.url("stuck.bin");
    let stuck_reads: Vec<&str> = ops
        .lines()
        .filter(|l| {
            l.contains("fuse.read") && l.contains(" dd ") && l.contains(&format!("of {url}"))
        })
        .collect();
    assert!(
        !stuck_reads.is_empty(),
        "no stuck read of dd listed:\n{ops}"
    );
    assert!(stuck_reads[0].contains("chunks being fetched"), "{ops}");

    // Everything else keeps working while they wait.
    let mnt = fs.mountpoint.clone();
    let names = completes("ls of the mount", 60, move || names_in(&mnt));
    assert_eq!(names, ["healthy.bin", "stuck.bin"]);
    let healthy_path = fs.mountpoint.join("healthy.bin");
    let p = healthy_path.clone();
    assert_eq!(
        completes("stat", 60, move || std::fs::metadata(&p).unwrap().len()),
        5 * MIB as u64
    );
    let s = stuck.clone();
    assert_eq!(
        completes("stat of the stuck file", 60, move || std::fs::metadata(&s)
            .unwrap()
            .len()),
        64 * MIB as u64
    );
    let mnt = fs.mountpoint.clone();
    completes("statfs", 60, move || {
        let c = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and a statvfs to fill.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    });
    let p = healthy_path.clone();
    assert_eq!(
        completes("reading a healthy file", 60, move || sha256_file(&p)),
        sha256(&healthy_data)
    );
    let f = fs.clone();
    assert!(completes("fusestreamctl ls", 60, move || f.ctl_ok(["ls"])).contains("stuck.bin"));

    // SIGKILL the readers: all exit, without anyone aborting the mount.
    for r in &readers {
        // SAFETY: kill() on our own children.
        unsafe { libc::kill(r.id() as i32, libc::SIGKILL) };
    }
    completes("killed readers exiting", 30, move || {
        for mut r in readers {
            r.wait().unwrap();
        }
    });

    // Their ops are gone from the listing.
    fs.wait_until("the killed readers' ops are gone", |fs| {
        !fs.ctl_ok(["ops"]).lines().any(|l| l.contains(" dd "))
    });

    // The mount is still usable.
    let p = healthy_path.clone();
    assert_eq!(
        completes("reading again", 60, move || sha256_file(&p)),
        sha256(&healthy_data)
    );
    fs.ctl_ok(["unstage", "stuck.bin"]);
    assert!(!stuck.exists());
}

#[test]
fn staging_fetches_the_head_so_the_first_read_needs_no_network() {
    let fs = FuseStream::start();
    let original = data(4 * MIB, 4);
    let server = FaultyServer::start(original.clone(), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "obj.bin", &server.url("obj.bin")]);
    let fetched = |fs: &FuseStream| -> u64 {
        let ls = fs.ctl_ok(["ls"]);
        let row = ls
            .lines()
            .find(|l| l.starts_with("obj.bin "))
            .expect("listed");
        row.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    fs.wait_until("the head is fetched", |fs| fetched(fs) > 0);
    assert_eq!(
        fetched(&fs),
        128 << 10,
        "the first 128 KiB and nothing more"
    );

    // The remote now hangs: the head is read from the store alone.
    server.set_mode(Mode::Stall { after_bytes: 0 });
    let path = fs.mountpoint.join("obj.bin");
    let head = completes("a read of the head", 60, move || {
        let file = std::fs::File::open(path).unwrap();
        let mut buf = vec![0; 4096];
        file.read_exact_at(&mut buf, 0).map(|()| buf)
    })
    .expect("read the head");
    assert!(head == original[..4096]);
}

#[test]
fn prefetches_stuck_on_a_dead_remote_leave_reads_their_fetch_slots() {
    // Reads may wait 5 s; the prefetches below hang for 10 s per attempt (the stall timeout)
    // and retry. If they could take every fetch slot, the read below would time out.
    let fs = FuseStream::start_with(Options {
        read_timeout: 5,
        ..Options::default()
    });
    let dead = FaultyServer::start(data(MIB, 5), Mode::Stall { after_bytes: 0 });
    for i in 0..20 {
        let name = format!("dead{i}.bin");
        fs.ctl_ok(["stage", "--name", &name, &dead.url(&name)]);
    }
    let healthy = data(16 * MIB, 6);
    let server = FaultyServer::start(healthy.clone(), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "ok.bin", &server.url("ok.bin")]);
    // O_DIRECT: one read, no kernel read-ahead or retry of a failed page.
    let path = fs.mountpoint.join("ok.bin");
    let out = completes("a direct read of a healthy file", 60, move || {
        Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args([
                "of=/dev/stdout",
                "bs=4096",
                "count=1",
                "skip=2048",
                "iflag=direct",
            ])
            .stderr(Stdio::piped())
            .output()
            .expect("run dd")
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == healthy[8 * MIB..8 * MIB + 4096],
        "exact bytes"
    );
}

#[test]
fn a_read_waiting_past_its_deadline_fails_with_etimedout() {
    let fs = FuseStream::start_with(Options {
        read_timeout: 2,
        ..Options::default()
    });
    let server = FaultyServer::start(data(4 * MIB, 2), Mode::Stall { after_bytes: 0 });
    fs.ctl_ok(["stage", "--name", "stuck.bin", &server.url("stuck.bin")]);
    let path = fs.mountpoint.join("stuck.bin");
    let error = completes("a read with a deadline", 120, move || {
        let file = std::fs::File::open(path).unwrap();
        let mut buf = vec![0; 4096];
        file.read_exact_at(&mut buf, MIB as u64).unwrap_err()
    });
    assert_eq!(error.raw_os_error(), Some(libc::ETIMEDOUT), "{error}");
    assert_eq!(fs.status_number("reads waiting"), 0);
}

#[test]
fn an_object_changed_after_staging_fails_reads_instead_of_mixing_bytes() {
    let fs = FuseStream::start();
    let original = data(16 * MIB, 3);
    let server = FaultyServer::start(original.clone(), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "obj.bin", &server.url("obj.bin")]);
    let file = std::fs::File::open(fs.mountpoint.join("obj.bin")).unwrap();
    let mut head = vec![0; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    assert!(head == original[..4096]);

    server.set_mode(Mode::Changed);
    // Far beyond what read-ahead fetched: the fetch is refused with 412.
    let mut buf = vec![0; 4096];
    let error = file.read_exact_at(&mut buf, 12 * MIB as u64).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert!(
        server.count(412) >= 1,
        "the server saw the If-Match precondition fail"
    );
    // And the reason is visible.
    assert!(
        fs.ctl_ok(["ls"]).contains("changed"),
        "{}",
        fs.ctl_ok(["ls"])
    );
}

#[test]
fn reads_under_random_faults_return_exact_bytes_or_clean_errors() {
    let fs = Arc::new(FuseStream::start());
    let original = Arc::new(data(32 * MIB, 4));
    let server = FaultyServer::start(original.to_vec(), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "chaos.bin", &server.url("chaos.bin")]);
    server.set_mode(Mode::Chaos { seed: 42 });
    let path = fs.mountpoint.join("chaos.bin");

    let started = Instant::now();
    let workers: Vec<_> = (0..32u64)
        .map(|seed| {
            let (path, original) = (path.clone(), original.clone());
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).unwrap();
                let mut rng = Prng::new(seed + 100);
                let (mut ok, mut failed) = (0, 0);
                for _ in 0..20 {
                    let offset = rng.below(original.len() as u64) as usize;
                    let len = (rng.below(512 * 1024) as usize + 1).min(original.len() - offset);
                    let mut buf = vec![0; len];
                    match file.read_exact_at(&mut buf, offset as u64) {
                        Ok(()) => {
                            assert!(
                                buf == original[offset..offset + len],
                                "wrong bytes at {offset}+{len}"
                            );
                            ok += 1;
                        }
                        Err(e) => {
                            let errno = e.raw_os_error();
                            assert!(
                                matches!(errno, Some(libc::EIO) | Some(libc::ETIMEDOUT)),
                                "{e}"
                            );
                            failed += 1;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for worker in workers {
        let (o, f) = worker.join().expect("reader thread");
        ok += o;
        failed += f;
    }
    let kinds = [
        Fault::Reset,
        Fault::Status500,
        Fault::Status503,
        Fault::Status429,
        Fault::Drip,
        Fault::Short,
    ];
    let seen: Vec<(Fault, u64)> = kinds.iter().map(|&k| (k, server.faults(k))).collect();
    eprintln!(
        "chaos: {ok} reads ok, {failed} failed cleanly, {} requests, faults {seen:?}, {:?}",
        server.requests(),
        started.elapsed()
    );
    assert!(ok > 0, "retries must get most reads through");
    assert!(
        seen.iter().filter(|(_, n)| *n > 0).count() >= 3,
        "the reads met several kinds of fault: {seen:?}"
    );

    // Once the server is healthy, the whole object reads back exactly.
    server.set_mode(Mode::Healthy);
    let p = path.clone();
    assert_eq!(
        completes("a full read", 120, move || sha256_file(&p)),
        sha256(&original)
    );
}

/// The issue's dead-host scenario: six objects on two dead origins (one accepts and
/// never answers, one answers 503 with Retry-After 30), 24 readers on them, and a
/// cold read of a healthy 64 MiB object from a third origin meanwhile. The read deadline
/// (8 s) is shorter than the stall timeout (10 s): a healthy read that had to wait for a
/// slot a dead origin held would fail with ETIMEDOUT, so starvation fails the test
/// instead of only slowing it. Then the silent origin's breaker opens, and `ls` says why.
#[test]
fn dead_remotes_never_starve_a_healthy_one_and_their_breaker_says_why() {
    let fs = FuseStream::start_with(Options {
        read_timeout: 8,
        ..Options::default()
    });
    let silent = FaultyServer::start(data(16 * MIB, 21), Mode::Healthy);
    let busy = FaultyServer::start(data(16 * MIB, 22), Mode::Healthy);
    for i in 0..3 {
        fs.ctl_ok(["stage", "--name", &format!("silent{i}"), &silent.url("s")]);
        fs.ctl_ok(["stage", "--name", &format!("busy{i}"), &busy.url("b")]);
    }
    silent.set_mode(Mode::Silent);
    busy.set_mode(Mode::Unavailable { retry_after: 30 });
    let mut readers = Vec::new();
    for name in ["silent0", "silent1", "silent2", "busy0", "busy1", "busy2"] {
        let path = fs.mountpoint.join(name);
        // Past the staged head and apart, so each needs a fetch of its own: more than the
        // daemon's shared slots in all.
        for block in [1000, 2000, 3000] {
            readers.push(reader(&path, block, true));
        }
        readers.push(
            Command::new("cat")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn cat"),
        );
    }
    fs.wait_until("the dead origins' readers wait", |fs| {
        fs.status_number("reads waiting") >= 6
    });

    let healthy = FaultyServer::start(data(64 * MIB, 23), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "healthy.bin", &healthy.url("h")]);
    let path = fs.mountpoint.join("healthy.bin");
    assert_eq!(
        completes("a cold read of the healthy object", 120, move || {
            sha256_file(&path)
        }),
        sha256(&data(64 * MIB, 23))
    );

    // Every dead reader ends (deadline or breaker), and the silent origin's entries say
    // why their reads fail.
    for mut reader in readers {
        let status = completes("a dead reader ends", 120, move || reader.wait().unwrap());
        assert!(!status.success(), "a read of a dead origin cannot succeed");
    }
    let origin = format!("http://127.0.0.1:{}", silent.port());
    fs.wait_until("the silent origin's breaker is open", |fs| {
        fs.ctl_ok(["ls"])
            .contains(&format!("remote unavailable: {origin} not answering"))
    });
}

/// The interrupt-before-park race: the mount daemon is stopped while readers with a
/// signal handler block in O_DIRECT reads and are interrupted. When the daemon resumes,
/// the kernel hands out each READ and queues its INTERRUPT at once, ahead of everything
/// else: another FUSE thread takes it while the READ is still being registered. With 16
/// readers released together, some interrupts arrive before their reads on any run. None
/// may be lost: every handler runs (its read returns EINTR and is retried), and a SIGKILL
/// then ends every reader at once, not at its 600 s deadline.
#[test]
fn interrupts_that_arrive_before_their_reads_still_free_the_readers() {
    use std::io::{BufRead, Write};
    let fs = FuseStream::start_with(Options {
        read_timeout: 600,
        ..Options::default()
    });
    let server = FaultyServer::start(data(16 * MIB, 31), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "silent.bin", &server.url("s")]);
    server.set_mode(Mode::Silent);
    let script = r#"
import mmap, os, signal, sys
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
print("open", flush=True)
sys.stdin.readline()
os.preadv(fd, [buf], int(sys.argv[2]))
"#;
    struct Reader {
        child: Child,
        out: std::io::BufReader<std::process::ChildStdout>,
    }
    let mut readers: Vec<Reader> = (0..16u64)
        .map(|i| {
            let mut child = Command::new("python3")
                .args(["-c", script])
                .arg(fs.mountpoint.join("silent.bin"))
                // Past the staged head, each in its own chunk, inside the object.
                .arg(((1 + i) << 19).to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn python3");
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "open");
            Reader { child, out }
        })
        .collect();

    let mountd = fs.mountd.pid() as i32;
    // SAFETY: signals to processes this test started.
    unsafe { libc::kill(mountd, libc::SIGSTOP) };
    for reader in &mut readers {
        reader
            .child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
    }
    // Each reader is blocked in its read (preadv, or preadv2 as glibc may issue it), which
    // the stopped daemon has not taken yet.
    let pids: Vec<u32> = readers.iter().map(|r| r.child.id()).collect();
    let unblocked = completes("the readers block in their reads", 90, move || {
        let syscall =
            |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let blocked = |pid: &u32| ["295 ", "327 "].iter().any(|n| syscall(pid).starts_with(n));
        for _ in 0..3000 {
            if pids.iter().all(blocked) {
                return Vec::new();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        pids.iter()
            .filter(|p| !blocked(p))
            .map(|p| (*p, syscall(p)))
            .collect()
    });
    assert!(
        unblocked.is_empty(),
        "readers not in their read: {unblocked:?}"
    );
    for reader in &readers {
        // SAFETY: as above.
        unsafe { libc::kill(reader.child.id() as i32, libc::SIGUSR1) };
    }
    // SAFETY: as above.
    unsafe { libc::kill(mountd, libc::SIGCONT) };
    let mut children = Vec::new();
    for Reader { child, mut out } in readers {
        let handled = completes("an interrupted read returns", 60, move || {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line
        });
        assert_eq!(handled.trim(), "handled", "the signal handler ran");
        children.push(child);
    }
    // The reads were retried and wait again; a SIGKILL ends each reader at once.
    fs.wait_until("the retried reads wait", |fs| {
        let ops = fs.ctl_ok(["ops"]);
        ops.lines()
            .filter(|l| l.contains("fuse.read") && l.contains(" python3 "))
            .count()
            >= 16
    });
    for mut child in children {
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        completes("a killed reader exits", 60, move || child.wait().unwrap());
    }
}

/// Eviction under concurrent opens: a cache budget far below what the readers touch, so
/// stores are evicted while other readers open, read and close; every byte read is the
/// object's.
#[test]
fn eviction_under_concurrent_opens_never_returns_wrong_bytes() {
    let fs = Arc::new(FuseStream::start_with(Options {
        cache_max_mib: 4,
        mountd_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..Options::default()
    }));
    let objects: Vec<Arc<Vec<u8>>> = (0..6).map(|i| Arc::new(data(3 * MIB, 40 + i))).collect();
    let servers: Vec<FaultyServer> = objects
        .iter()
        .map(|o| FaultyServer::start(o.to_vec(), Mode::Healthy))
        .collect();
    for (i, server) in servers.iter().enumerate() {
        fs.ctl_ok(["stage", "--name", &format!("e{i}.bin"), &server.url("e")]);
    }
    let workers: Vec<_> = (0..8u64)
        .map(|seed| {
            let (fs, objects) = (fs.clone(), objects.clone());
            std::thread::spawn(move || {
                let mut rng = Prng::new(seed + 7);
                for _ in 0..40 {
                    let i = rng.below(objects.len() as u64) as usize;
                    let object = &objects[i];
                    let file =
                        std::fs::File::open(fs.mountpoint.join(format!("e{i}.bin"))).unwrap();
                    let offset = rng.below(object.len() as u64) as usize;
                    let len = (rng.below(256 * 1024) as usize + 1).min(object.len() - offset);
                    let mut buf = vec![0; len];
                    file.read_exact_at(&mut buf, offset as u64).unwrap();
                    assert!(
                        buf == object[offset..offset + len],
                        "wrong bytes in e{i} at {offset}+{len}"
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("reader");
    }
    let evictions =
        fusestream_tests::metric(&fs.mountd_metrics(), "fusestream_cache_evictions_total");
    assert!(
        evictions.is_some_and(|n| n > 0.0),
        "the budget forced evictions: {evictions:?}"
    );
}

#[test]
fn a_stream_received_in_pieces_of_every_size_reads_exactly_and_frees_its_memory() {
    // Without the head prefetch (which goes to the store file), a sequential reader's bytes
    // are all kept in memory as the pieces they were received in (`store::memory`).
    let args = [
        "--prefetch-head-kib",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let fs = FuseStream::start_with(Options {
        mountd_args: args.map(String::from).to_vec(),
        ..Options::default()
    });
    let original = data(24 * MIB + 4321, 6);
    let server = FaultyServer::start(original.clone(), Mode::Pieces { seed: 6 });
    fs.ctl_ok(["stage", "--name", "pieces.bin", &server.url("pieces.bin")]);
    let read = std::fs::read(fs.mountpoint.join("pieces.bin")).unwrap();
    assert!(read.len() == original.len(), "read {} bytes", read.len());
    let first_wrong = read.iter().zip(&original).position(|(a, b)| a != b);
    assert_eq!(first_wrong, None, "bytes differ");
    assert_eq!(
        fs.open_store_files(),
        0,
        "served from memory, no store file"
    );
    // Closed: what was fetched ahead and not read is let go.
    fs.wait_until("stream memory freed", |fs| {
        fusestream_tests::metric(&fs.mountd_metrics(), "fusestream_stream_memory_bytes")
            == Some(0.0)
    });
}
