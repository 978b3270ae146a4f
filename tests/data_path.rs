//! The data path under faults: a stalled remote never blocks the rest of the mount,
//! killed readers are released (FUSE_INTERRUPT), deadlines fire, a changed object fails
//! cleanly, and reads under random faults return exact bytes or clean errors.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use fusestream_tests::faulty::{Fault, FaultyServer, Mode};
use fusestream_tests::{FuseStream, Options, Prng, completes, random_file, sha256, sha256_file};

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
    let mut names: Vec<String> = completes("ls of the mount", 60, move || {
        std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    });
    names.sort();
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
