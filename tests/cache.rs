//! Backing-store disk use: the budget is kept by evicting entries no one has open, temp
//! files never outlive their entry, an entry holds no descriptor until it is read and
//! idle stores beyond a bound are closed, and a full disk fails reads cleanly.

use std::os::unix::fs::FileExt;

use fusestream_tests::{FuseStream, Options, random_file, sha256, sha256_file};

const MIB: usize = 1 << 20;

#[test]
fn the_budget_evicts_closed_entries_and_store_files_go_with_their_entries() {
    let fs = FuseStream::start_with(Options {
        cache_max_mib: 40,
        // No head prefetch: a store is opened only by the reads below. No stream memory:
        // the sequential reads below go to the backing stores (else they would be served
        // from memory and never reach the disk budget: see the streaming test).
        mountd_args: ["--prefetch-head-kib", "0", "--stream-memory-mib", "0"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    });
    let mut sums = Vec::new();
    for i in 0..4 {
        let path = fs.input(&format!("f{i}.bin"));
        sums.push(sha256(&random_file(&path, 16 * MIB)));
        fs.ctl_ok(["stage", path.to_str().unwrap()]);
    }
    // Store files are unnamed (the cache dir shows nothing) and created by the first read.
    assert_eq!(std::fs::read_dir(fs.cache_dir()).unwrap().count(), 0);
    assert_eq!(fs.open_store_files(), 0, "staging opens no store");

    // Read each whole, one after another (each closed before the next): 64 MiB > 40.
    for (i, sum) in sums.iter().enumerate() {
        assert_eq!(&sha256_file(&fs.mountpoint.join(format!("f{i}.bin"))), sum);
    }
    fs.wait_until("the cache is back within its budget", |fs| {
        fs.status_number("cache") <= 40 * MIB as u64
    });
    assert!(fs.ctl_ok(["status"]).contains("evictions)"));
    let evictions: u64 = fs
        .ctl_ok(["status"])
        .split("budget ")
        .nth(1)
        .and_then(|s| s.split(", ").nth(1)?.split(' ').next()?.parse().ok())
        .expect("evictions in status");
    assert!(evictions >= 1);
    // The least recently read went first; the last one read is still whole.
    let ls = fs.ctl_ok(["ls"]);
    let fetched = |name: &str| -> u64 {
        let row = ls.lines().find(|l| l.starts_with(name)).expect("listed");
        row.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert_eq!(fetched("f0.bin"), 0, "{ls}");
    assert_eq!(fetched("f3.bin"), 16 * MIB as u64, "{ls}");
    // Evicted data reads back correctly (fetched again).
    assert_eq!(sha256_file(&fs.mountpoint.join("f0.bin")), sums[0]);

    // An entry open while unstaged keeps its store until closed; the others' go at once.
    // (A file not read before: the kernel's page cache could answer one read before.)
    let path = fs.input("f4.bin");
    random_file(&path, 16 * MIB);
    fs.ctl_ok(["stage", path.to_str().unwrap()]);
    let open = std::fs::File::open(fs.mountpoint.join("f4.bin")).unwrap();
    let mut buf = vec![0; 4096];
    open.read_exact_at(&mut buf, 0).unwrap();
    fs.ctl_ok(["unstage", "f0.bin", "f1.bin", "f2.bin", "f3.bin", "f4.bin"]);
    assert_eq!(fs.open_store_files(), 1, "only f4's store is left");
    open.read_exact_at(&mut buf, 0).unwrap();
    drop(open);
    fs.wait_until("the unstaged entry's store is closed", |fs| {
        fs.open_store_files() == 0
    });
    assert_eq!(std::fs::read_dir(fs.cache_dir()).unwrap().count(), 0);
}

#[test]
fn entries_cost_no_descriptors_and_idle_stores_beyond_the_bound_are_closed() {
    const ENTRIES: usize = 600;
    const MAX_OPEN: usize = 8;
    let fs = FuseStream::start_with(Options {
        mountd_args: vec!["--max-open-stores".into(), MAX_OPEN.to_string()],
        ..Options::default()
    });
    let fds = |fs: &FuseStream| {
        let dir = format!("/proc/{}/fd", fs.mountd.pid());
        std::fs::read_dir(dir).unwrap().count()
    };
    let before = fds(&fs);
    let mut paths = Vec::new();
    let mut sums = Vec::new();
    for i in 0..ENTRIES {
        let path = fs.input(&format!("e{i:04}.bin"));
        sums.push(sha256(&random_file(&path, 1000 + i * 37)));
        paths.push(path.to_str().unwrap().to_string());
    }
    for batch in paths.chunks(100) {
        let mut args = vec!["stage".to_string()];
        args.extend(batch.iter().cloned());
        fs.ctl_ok(args);
    }
    // Head prefetches open a few stores (at most 4 run at once), and idle ones are closed
    // down to the bound: never one per entry.
    fs.wait_until("idle stores are closed down to the bound", |fs| {
        fs.open_store_files() <= MAX_OPEN
    });
    assert!(
        fds(&fs) <= before + MAX_OPEN + 4,
        "{} descriptors after staging {ENTRIES} entries, {before} before",
        fds(&fs)
    );
    // Every entry reads back right, however often its store was closed and reopened.
    for round in 0..2 {
        for (i, sum) in sums.iter().enumerate() {
            let path = fs.mountpoint.join(format!("e{i:04}.bin"));
            assert_eq!(&sha256_file(&path), sum, "e{i:04}.bin, round {round}");
        }
    }
    fs.wait_until("idle stores are closed down to the bound", |fs| {
        fs.open_store_files() <= MAX_OPEN
    });
    // A file held open keeps its store however many others are read meanwhile.
    let held = std::fs::File::open(fs.mountpoint.join("e0000.bin")).unwrap();
    let mut first = vec![0; 1000];
    held.read_exact_at(&mut first, 0).unwrap();
    for i in 1..=4 * MAX_OPEN {
        sha256_file(&fs.mountpoint.join(format!("e{i:04}.bin")));
    }
    fs.wait_until("idle stores are closed down to the bound", |fs| {
        fs.open_store_files() <= MAX_OPEN + 1
    });
    let mut again = vec![0; 1000];
    held.read_exact_at(&mut again, 0).unwrap();
    assert_eq!(first, again);
}

/// Bytes the mount daemon has caused to be written to storage (dirtied pages included).
fn daemon_write_bytes(fs: &FuseStream) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", fs.mountd.pid())).unwrap();
    let line = io.lines().find(|l| l.starts_with("write_bytes:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_file_streamed_once_is_served_from_memory_and_never_written_to_disk() {
    let fs = FuseStream::start_with(Options {
        mountd_args: vec!["--prefetch-head-kib".into(), "0".into()],
        ..Options::default()
    });
    let path = fs.input("stream.bin");
    let sum = sha256(&random_file(&path, 48 * MIB + 1234));
    fs.ctl_ok(["stage", path.to_str().unwrap()]);
    let before = daemon_write_bytes(&fs);
    assert_eq!(sha256_file(&fs.mountpoint.join("stream.bin")), sum);
    let written = daemon_write_bytes(&fs) - before;
    assert!(
        written < 4 * MIB as u64,
        "{written} bytes written to disk for a 48 MiB stream"
    );
    assert_eq!(fs.open_store_files(), 0, "no backing store file was needed");

    // A random reader's bytes still go to the backing store (they may be read again).
    let other = fs.input("random.bin");
    let data = random_file(&other, 8 * MIB);
    fs.ctl_ok(["stage", other.to_str().unwrap()]);
    let file = std::fs::File::open(fs.mountpoint.join("random.bin")).unwrap();
    let mut buf = vec![0; 4096];
    for offset in [7 * MIB, 2 * MIB, 5 * MIB, 0] {
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(buf == data[offset..offset + 4096], "bytes at {offset}");
    }
    assert_eq!(fs.open_store_files(), 1);
}

#[test]
fn a_full_cache_disk_fails_reads_with_eio_and_nothing_else() {
    // A tiny tmpfs as the cache dir (mounting it needs root).
    if fusestream_tests::skip_unless_root(
        "cache::a_full_cache_disk_fails_reads_with_eio_and_nothing_else",
    ) {
        return;
    }
    let holder = tempfile::tempdir().unwrap();
    let small = holder.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(small.clone());

    let fs = FuseStream::start_with(Options {
        cache_dir: Some(small),
        cache_max_mib: 0,
        // Every chunk to the backing store (a streamed file is otherwise kept in memory).
        mountd_args: vec!["--stream-memory-mib".into(), "0".into()],
        ..Options::default()
    });
    let big = fs.input("big.bin");
    let data = random_file(&big, 16 * MIB);
    fs.ctl_ok(["stage", big.to_str().unwrap()]);
    let small_file = fs.input("small.bin");
    let small_data = random_file(&small_file, 100_000);
    fs.ctl_ok(["stage", small_file.to_str().unwrap()]);

    // Read it front to back: what fits is served exactly, then reads fail with EIO.
    let file = std::fs::File::open(fs.mountpoint.join("big.bin")).unwrap();
    let mut buf = vec![0; MIB];
    let mut offset = 0;
    let error = loop {
        match file.read_exact_at(&mut buf, offset as u64) {
            Ok(()) => assert!(buf == data[offset..offset + MIB], "bytes at {offset}"),
            Err(e) => break e,
        }
        offset += MIB;
        assert!(offset < data.len(), "16 MiB can not fit in a 4 MiB cache");
    };
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    assert!(offset > 0, "what fits is served");
    drop(file);
    // The daemon is fine: metadata and other entries still work once space is free.
    fs.ctl_ok(["unstage", "big.bin"]);
    assert_eq!(
        std::fs::read(fs.mountpoint.join("small.bin")).unwrap(),
        small_data
    );
    assert!(fs.ctl_ok(["ls"]).contains("small.bin"));
}
