//! The reference test of the filesystem core, without FUSE: random sequences of stage,
//! replace, unstage, open, read, interrupt, evict and release, over an in-memory source
//! whose remotes are healthy, hung (accept and never answer) or failing (resets), checked
//! against a model of what each read may answer:
//! - a read of a healthy object answers exactly the bytes of the version its handle
//!   opened (pinned across replace, unstage and eviction), or EINTR if it was interrupted;
//! - a read of a failing or hung object answers an error (or, for bytes a stalling remote
//!   did deliver, those exact bytes), never other bytes;
//! - every read is answered exactly once, by its deadline at the latest.
//!
//! Fixed seeds, so CI explores the same sequences every run.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::fetch::FetchConfig;
use crate::fetch::source::{Behaviour, MemorySource};
use crate::reads::tests::{Answer, reply};

const NAMES: usize = 3;
/// Long enough that a healthy read never meets it on a loaded machine: reads of dead
/// remotes end sooner anyway (their fetches fail after two short stalls, ~0.4 s).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    Healthy,
    Hung,
    Failing,
    /// Serves the first bytes of each request, then stalls.
    Stalling,
}

impl Remote {
    fn origin(self) -> &'static str {
        match self {
            Remote::Healthy => "http://127.0.0.1:1001",
            Remote::Hung => "http://127.0.0.1:1002",
            Remote::Failing => "http://127.0.0.1:1003",
            Remote::Stalling => "http://127.0.0.1:1004",
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Stage {
        name: usize,
        remote: Remote,
        size: u64,
    },
    Unstage(usize),
    Open(usize),
    Read {
        handle: usize,
        offset: u64,
        len: u32,
    },
    /// Interrupts the read `back` reads ago, or (0) the next one to arrive.
    Interrupt {
        back: usize,
    },
    Release(usize),
    Evict,
}

fn remote() -> impl Strategy<Value = Remote> {
    prop_oneof![
        4 => Just(Remote::Healthy),
        1 => Just(Remote::Hung),
        1 => Just(Remote::Failing),
        1 => Just(Remote::Stalling),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..NAMES, remote(), 0u64..(5 * CHUNK_SIZE))
            .prop_map(|(name, remote, size)| Step::Stage { name, remote, size }),
        1 => (0..NAMES).prop_map(Step::Unstage),
        3 => (0..NAMES).prop_map(Step::Open),
        6 => (0usize..8, 0u64..(5 * CHUNK_SIZE), 1u32..(3 * CHUNK_SIZE as u32))
            .prop_map(|(handle, offset, len)| Step::Read { handle, offset, len }),
        1 => (0usize..4).prop_map(|back| Step::Interrupt { back }),
        1 => (0usize..8).prop_map(Step::Release),
        1 => Just(Step::Evict),
    ]
}

/// What a read may answer.
#[derive(Debug)]
struct Expected {
    remote: Remote,
    /// The bytes of the version read (the handle's), clamped to the read.
    bytes: Vec<u8>,
    interrupted: Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupted {
    No,
    /// Before the read arrived: it must answer EINTR.
    Before,
    /// While it was in flight, or after: EINTR, or what it would have answered anyway.
    After,
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    fs: Arc<Fs>,
    source: Arc<MemorySource>,
    cache: Arc<Cache>,
    _dir: tempfile::TempDir,
    versions: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Duration::from_millis(100), READ_TIMEOUT)
    }

    fn with(stall_timeout: Duration, read_timeout: Duration) -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path(), Some(0), 4, 64 << 20));
        let events = Arc::new(Events::default());
        let source = Arc::new(MemorySource::default());
        let config = FetchConfig {
            stall_timeout,
            max_attempts: 2,
            ..FetchConfig::default()
        };
        let fetcher = Fetcher::new(
            runtime.handle().clone(),
            config,
            cache.clone(),
            events.clone(),
            source.clone(),
        );
        let fs = Arc::new(Fs::new(
            FsConfig {
                mountpoint: PathBuf::from("/mnt"),
                read_timeout,
                prefetch_head: CHUNK_SIZE,
            },
            cache.clone(),
            fetcher,
            events,
            runtime.handle().clone(),
            runtime.handle().clone(),
        ));
        Harness {
            runtime,
            fs,
            source,
            cache,
            _dir: dir,
            versions: 0,
        }
    }

    /// Stages a new version of `name` on `remote`; returns its bytes.
    fn stage(&mut self, name: &str, remote: Remote, size: u64) -> Bytes {
        self.versions += 1;
        let seed = self.versions;
        let data: Bytes = (0..size)
            .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(197)) as u8)
            .collect::<Vec<u8>>()
            .into();
        let url = format!("{}/{name}/v{seed}", remote.origin());
        self.source.set(
            &url,
            match remote {
                Remote::Healthy => Behaviour::Serve(data.clone()),
                Remote::Hung => Behaviour::Hang,
                Remote::Failing => Behaviour::Reset,
                Remote::Stalling => Behaviour::StallAfter(data.clone(), CHUNK_SIZE + 100),
            },
        );
        let entry = NewEntry {
            name: name.to_string(),
            url,
            url_expires_unix: i64::MAX,
            version: Version {
                size,
                etag: format!("\"v{seed}\""),
                last_modified: None,
            },
            source: format!("model {name} v{seed}"),
            owner: (0, 0),
            mode: 0o400,
        };
        self.runtime
            .block_on(self.fs.stage(entry, true))
            .expect("stage");
        data
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    // What is staged under each name now: (remote, bytes).
    let mut staged: HashMap<usize, (Remote, Bytes)> = HashMap::new();
    // Open handles: (fh, remote, bytes of the version opened).
    let mut handles: Vec<(u64, Remote, Bytes)> = Vec::new();
    let mut reads: Vec<(u64, Expected, mpsc::Receiver<Answer>)> = Vec::new();
    let mut interrupted_early: Vec<u64> = Vec::new();
    let mut next_unique = 1u64;

    for step in steps {
        match step {
            Step::Stage { name, remote, size } => {
                let data = h.stage(&format!("n{name}"), remote, size);
                staged.insert(name, (remote, data));
            }
            Step::Unstage(name) => {
                let result = h
                    .runtime
                    .block_on(h.fs.remove(&format!("n{name}"), Caller::ROOT));
                prop_assert_eq!(result.is_ok(), staged.remove(&name).is_some());
            }
            Step::Open(name) => {
                let found = h.fs.lookup(namespace::ROOT_INO, &format!("n{name}"));
                match staged.get(&name) {
                    Some((remote, data)) => {
                        let attr = found.expect("staged names are found");
                        prop_assert_eq!(attr.size, data.len() as u64);
                        let fh = h.fs.open(attr.ino, false).expect("open");
                        handles.push((fh, *remote, data.clone()));
                    }
                    None => prop_assert_eq!(found.err(), Some(FsError::NotFound)),
                }
            }
            Step::Read {
                handle,
                offset,
                len,
            } => {
                let Some((fh, remote, data)) = handles.get(handle).cloned() else {
                    continue;
                };
                let unique = next_unique;
                next_unique += 1;
                let start = offset.min(data.len() as u64) as usize;
                let end = (offset + u64::from(len)).min(data.len() as u64) as usize;
                let (r, rx) = reply();
                h.fs.read(unique, fh, offset, len, r);
                let expected = Expected {
                    remote,
                    bytes: data[start..end].to_vec(),
                    interrupted: if interrupted_early.contains(&unique) {
                        Interrupted::Before
                    } else {
                        Interrupted::No
                    },
                };
                reads.push((unique, expected, rx));
            }
            Step::Interrupt { back: 0 } => {
                h.fs.interrupt(next_unique);
                interrupted_early.push(next_unique);
            }
            Step::Interrupt { back } => {
                if let Some(i) = reads.len().checked_sub(back) {
                    h.fs.interrupt(reads[i].0);
                    if reads[i].1.interrupted == Interrupted::No {
                        reads[i].1.interrupted = Interrupted::After;
                    }
                }
            }
            Step::Release(handle) => {
                if handle < handles.len() {
                    let (fh, ..) = handles.remove(handle);
                    h.fs.release(fh);
                }
            }
            Step::Evict => h.cache.enforce_bounds(),
        }
    }

    // Every read ends, by its deadline at the latest (plus room for a loaded machine).
    for (unique, expected, rx) in &reads {
        let answer = rx
            .recv_timeout(READ_TIMEOUT * 20)
            .map_err(|_| TestCaseError::fail(format!("read {unique} never answered")))?;
        prop_assert!(rx.try_recv().is_err(), "read {} answered twice", unique);
        if expected.interrupted == Interrupted::Before {
            prop_assert_eq!(
                &answer,
                &Err(FsError::Interrupted),
                "read {} interrupted before it came",
                unique
            );
        }
        match (&answer, expected.remote) {
            (Ok(bytes), _) => prop_assert!(
                *bytes == expected.bytes,
                "read {} returned wrong bytes ({} of {}) from {:?}",
                unique,
                bytes.len(),
                expected.bytes.len(),
                expected.remote
            ),
            (Err(FsError::Interrupted), _) => {
                prop_assert!(
                    expected.interrupted != Interrupted::No,
                    "read {} EINTR uninterrupted",
                    unique
                )
            }
            (Err(e), Remote::Healthy) => {
                prop_assert!(false, "read {} of a healthy remote failed: {}", unique, e)
            }
            (Err(FsError::Store(e)), _) => prop_assert!(false, "read {}: {}", unique, e),
            (Err(_), _) => {}
        }
        if expected.remote == Remote::Healthy && expected.interrupted == Interrupted::No {
            prop_assert!(answer.is_ok());
        }
    }
    // Nothing is left waiting, and dropping everything leaves no read unanswered.
    prop_assert_eq!(h.fs.reads.in_flight(), 0);
    for (fh, ..) in handles {
        h.fs.release(fh);
    }
    prop_assert_eq!(h.fs.handle_count().open, 0);
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptest_config(48))]

    #[test]
    fn the_core_answers_every_read_once_with_the_pinned_bytes_or_a_clean_error(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        run(steps)?;
    }
}

#[test]
fn a_dead_remote_never_takes_the_slots_a_healthy_one_needs() {
    // Hung fetches and reads that would each wait a minute: a healthy read queued behind
    // them would not be answered within the bound below.
    let minute = Duration::from_secs(60);
    let mut h = Harness::with(minute, minute);
    let mut waiting = Vec::new();
    let mut unique = 1;
    for i in 0..12 {
        h.stage(&format!("dead{i}"), Remote::Hung, 4 * CHUNK_SIZE);
        let ino =
            h.fs.lookup(namespace::ROOT_INO, &format!("dead{i}"))
                .unwrap()
                .ino;
        for r in 0..3 {
            let fh = h.fs.open(ino, false).unwrap();
            let (reply, rx) = reply();
            h.fs.read(unique, fh, r * CHUNK_SIZE, 4096, reply);
            waiting.push((unique, rx));
            unique += 1;
        }
    }
    let data = h.stage("healthy", Remote::Healthy, 4 * CHUNK_SIZE);
    let ino = h.fs.lookup(namespace::ROOT_INO, "healthy").unwrap().ino;
    let fh = h.fs.open(ino, false).unwrap();
    let (reply, rx) = reply();
    h.fs.read(unique, fh, 2 * CHUNK_SIZE, CHUNK_SIZE as u32, reply);
    let answer = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a healthy read does not wait behind a dead remote");
    assert_eq!(
        answer.unwrap(),
        data[2 * CHUNK_SIZE as usize..3 * CHUNK_SIZE as usize]
    );
    // The dead remote's readers are all still waiting, and each is freed by its interrupt.
    for (unique, rx) in waiting {
        assert!(rx.try_recv().is_err(), "read {unique} answered early");
        assert_eq!(h.fs.interrupt(unique), Interrupt::Answered);
        assert_eq!(rx.try_recv().unwrap(), Err(FsError::Interrupted));
    }
}

#[test]
fn one_atomic_counts_handles_and_changes() {
    let handles = AtomicU64::new(0);
    let count = |delta| count_handle(&handles, delta);
    assert_eq!(count(HANDLE_OPENED), HandleCount { open: 1, change: 1 });
    assert_eq!(count(HANDLE_OPENED), HandleCount { open: 2, change: 2 });
    assert_eq!(count(HANDLE_CLOSED), HandleCount { open: 1, change: 3 });
    assert_eq!(count(HANDLE_CLOSED), HandleCount { open: 0, change: 4 });
    // The change number wraps around without touching the count.
    handles.store(u64::from(u32::MAX) << 32 | 5, Ordering::Relaxed);
    assert_eq!(count(HANDLE_CLOSED), HandleCount { open: 4, change: 0 });
}

/// A 10-byte entry of a healthy remote staged by `uid`.
fn entry(name: &str, uid: u32, mode: u16) -> NewEntry {
    NewEntry {
        name: name.to_string(),
        url: format!("{}/{name}", Remote::Healthy.origin()),
        url_expires_unix: 0,
        version: Version {
            size: 10,
            etag: String::new(),
            last_modified: None,
        },
        source: name.to_string(),
        owner: (uid, uid),
        mode,
    }
}

#[test]
fn entries_belong_to_their_stager_and_only_it_or_root_manages_them() {
    let h = Harness::new();
    let (alice, mallory) = (Caller { uid: 1000 }, Caller { uid: 1001 });
    let stage = |e| h.runtime.block_on(h.fs.stage(e, true));
    stage(entry("alice.txt", 1000, 0o400)).unwrap();
    stage(entry("shared.txt", 1000, 0o444)).unwrap();
    let attr = h.fs.lookup(namespace::ROOT_INO, "alice.txt").unwrap();
    assert_eq!(
        (attr.perm, attr.uid),
        (0o400, 1000),
        "private to its stager"
    );
    // Another user can not replace, remove or renew it, nor see it listed.
    assert!(matches!(
        stage(entry("alice.txt", 1001, 0o444)),
        Err(StageError::Namespace(NamespaceError::NotOwner(_)))
    ));
    assert_eq!(
        h.runtime.block_on(h.fs.remove("alice.txt", mallory)),
        Err(NamespaceError::NotOwner("alice.txt".into()))
    );
    assert_eq!(
        h.fs.update_url("alice.txt", mallory, "http://127.0.0.1:9/x".into(), 0),
        Err(NamespaceError::NotOwner("alice.txt".into()))
    );
    assert!(h.fs.entries(mallory).is_empty());
    let names = |c| {
        h.fs.entries(c)
            .into_iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(alice), ["alice.txt", "shared.txt"]);
    assert_eq!(names(Caller::ROOT), ["alice.txt", "shared.txt"]);
    // The owner and root can.
    h.fs.update_url("alice.txt", alice, "http://127.0.0.1:9/y".into(), 0)
        .unwrap();
    h.runtime.block_on(h.fs.remove("alice.txt", alice)).unwrap();
    h.runtime
        .block_on(h.fs.remove("shared.txt", Caller::ROOT))
        .unwrap();
}

/// Reads the whole directory `ino` as the kernel would, taking at most `take` entries of
/// each page (its buffer), calling `between` after every call.
fn list_dir(fs: &Fs, ino: u64, take: usize, mut between: impl FnMut(usize)) -> Vec<String> {
    let fh = fs.opendir(ino).unwrap();
    let (mut names, mut offset, mut calls) = (Vec::new(), 0, 0);
    loop {
        let page = fs.readdir(fh, offset).unwrap();
        if page.is_empty() {
            break;
        }
        for (next, entry) in page.into_iter().take(take) {
            names.push(entry.name);
            offset = next;
        }
        calls += 1;
        between(calls);
    }
    fs.releasedir(fh);
    names
}

#[test]
fn readdir_pages_through_a_live_directory_without_losing_or_repeating_entries() {
    let h = Harness::new();
    let stage = |name: &str| {
        let entry = NewEntry {
            name: name.to_string(),
            url: format!("{}/{name}", Remote::Healthy.origin()),
            url_expires_unix: 0,
            version: Version {
                size: 1,
                etag: String::new(),
                last_modified: None,
            },
            source: name.to_string(),
            owner: (0, 0),
            mode: 0o400,
        };
        h.runtime.block_on(h.fs.stage(entry, false)).unwrap();
    };
    // More than a page (256).
    let names: Vec<String> = (0..300).map(|i| format!("f{i:04}")).collect();
    for name in &names {
        stage(&format!("d/{name}"));
    }
    let dir = h.fs.lookup(namespace::ROOT_INO, "d").unwrap().ino;
    // Buffers smaller and larger than a page, as different kernels and names give.
    for take in [1, 7, 100, 256, 1000] {
        let listed = list_dir(&h.fs, dir, take, |_| {});
        assert_eq!(listed[..2], [".", ".."], "take {take}");
        assert_eq!(
            listed[2..],
            names[..],
            "take {take}: every entry once, in order"
        );
    }
    // Entries staged and removed while listing: those present throughout appear exactly
    // once; the listing never repeats or skips one of them.
    let mut removed = Vec::new();
    let listed = list_dir(&h.fs, dir, 20, |call| {
        let gone = format!("f{:04}", call * 37 % 300);
        if h.runtime
            .block_on(h.fs.remove(&format!("d/{gone}"), Caller::ROOT))
            .is_ok()
        {
            removed.push(gone);
        }
        stage(&format!("d/g{call:04}"));
    });
    let mut seen = std::collections::HashSet::new();
    assert!(
        listed.iter().all(|n| seen.insert(n.clone())),
        "no entry twice"
    );
    for name in names.iter().filter(|n| !removed.contains(n)) {
        assert!(seen.contains(name), "{name} was there throughout");
    }
    assert!(listed[2..].windows(2).all(|w| w[0] < w[1]), "name order");
    // An offset the handle never gave ends the listing rather than restarting it.
    let fh = h.fs.opendir(dir).unwrap();
    assert!(h.fs.readdir(fh, 12_345).unwrap().is_empty());
    assert_eq!(h.fs.readdir(fh + 1000, 0).err(), Some(FsError::BadHandle));
}

#[test]
fn entry_listings_page_in_name_order_and_show_each_caller_only_its_own() {
    let h = Harness::new();
    let stage = |name: &str, uid| {
        h.runtime
            .block_on(h.fs.stage(entry(name, uid, 0o400), false))
            .unwrap();
    };
    // Bytewise per component: "a/..." before "a-" before "a.b", though '-' and '.' sort
    // before '/' as whole strings.
    let mut alice: Vec<String> = ["a.b", "a-", "b", "a/b", "a/c/d", "z/y/x/w"]
        .map(String::from)
        .to_vec();
    for i in 0..300 {
        alice.push(format!("d{}/f{i:03}", i % 7));
    }
    for name in &alice {
        stage(name, 1000);
    }
    // Another user's entries, interleaved (more of them than a walk looks at per hold).
    for i in 0..2 * LIST_WALK_BUDGET {
        stage(&format!("d{}/m{i:05}", i % 5), 1001);
    }
    let order = |names: &mut Vec<String>| {
        names.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    };
    order(&mut alice);
    let (alice_caller, mallory) = (Caller { uid: 1000 }, Caller { uid: 1001 });
    let page = |caller, after: &str| {
        let (entries, next) = h.fs.entries_page(caller, after, 7);
        assert!(entries.len() <= 7);
        let names: Vec<String> = entries.into_iter().map(|e| e.name).collect();
        (names, next)
    };
    let mut listed = Vec::new();
    let mut next = Some(String::new());
    while let Some(after) = next {
        let (names, then) = page(alice_caller, &after);
        assert!(names.iter().all(|n| !n.contains("/m")), "only alice's");
        listed.extend(names);
        next = then;
    }
    assert_eq!(listed, alice, "every entry once, in order");

    // Changes between pages: nothing present throughout is lost or repeated.
    let (first, cursor) = page(alice_caller, "");
    let cursor = cursor.unwrap();
    let remove = |name: &str| h.runtime.block_on(h.fs.remove(name, alice_caller)).unwrap();
    remove(&first[0]); // already listed
    remove("z/y/x/w"); // not yet listed
    stage("a/a", 1000); // before the cursor: not listed this time
    stage("zz", 1000); // after it: listed
    let mut rest = Vec::new();
    let mut next = Some(cursor);
    while let Some(after) = next {
        let (names, then) = page(alice_caller, &after);
        rest.extend(names);
        next = then;
    }
    let mut expected: Vec<String> = alice[7..]
        .iter()
        .filter(|n| *n != "z/y/x/w")
        .cloned()
        .collect();
    expected.push("zz".into());
    assert_eq!(rest, expected);
    // Mallory's listing pages through alice's entries without showing them.
    let (names, _) = page(mallory, "");
    assert_eq!(names.len(), 7);
    assert!(names.iter().all(|n| n.contains("/m")));
}

#[test]
fn read_ahead_survives_reads_out_of_order_and_never_reaches_back() {
    const MIB: u64 = 1 << 20;
    let mut ahead = ReadAhead::default();
    let max = 64 * MIB;
    // As seen from the kernel: 1 MiB reads, the second and third swapped.
    let mut last = 0..0;
    for (i, at) in [0, 2, 1, 3, 4, 6, 5, 7].into_iter().enumerate() {
        let (range, sequential) = ahead.advance(at * MIB, MIB as u32, max);
        assert!(sequential, "read {i} at {at} MiB");
        assert!(range.start >= last.start, "the window never moves back");
        last = range;
    }
    assert_eq!(last.start, 8 * MIB, "anchored at the furthest read");
    assert!(last.end - last.start >= 32 * MIB, "the window kept growing");
    // A jump far away is random: no read-ahead, and a new run starts there.
    let (range, sequential) = ahead.advance(900 * MIB, 4096, max);
    assert!(!sequential && range.is_empty());
    let (_, sequential) = ahead.advance(500 * MIB, 4096, max);
    assert!(!sequential, "far behind is no continuation either");
}

#[test]
fn names_under_a_folder_page_through_the_folder_and_only_the_owners_entries() {
    let h = Harness::new();
    let stage = |name: &str, uid| {
        h.runtime
            .block_on(h.fs.stage(entry(name, uid, 0o400), false))
            .unwrap();
    };
    for name in [
        "photo",
        "photos-x/d",
        "a/photos/e",
        "photos/a",
        "photos/2024/b",
        "photos/2024/c",
        "photos/2024/sub/f",
        "photosz",
    ] {
        stage(name, 1000);
    }
    // Another user's entries in the same folder, more than a walk looks at per hold.
    for i in 0..2 * LIST_WALK_BUDGET {
        stage(&format!("photos/2024/m{i:05}"), 1001);
    }
    let all_under = |folder: &str, owner| {
        let (mut all, mut after) = (Vec::new(), String::new());
        loop {
            let (names, next) = h.fs.names_under(folder, owner, &after, 2);
            assert!(names.len() <= 2);
            all.extend(names);
            match next {
                Some(next) => after = next,
                None => return all,
            }
        }
    };
    let photos = [
        "photos/2024/b",
        "photos/2024/c",
        "photos/2024/sub/f",
        "photos/a",
    ];
    assert_eq!(all_under("photos", 1000), photos);
    assert_eq!(all_under("photos/", 1000), photos);
    assert_eq!(all_under("photos/2024", 1000), photos[..3]);
    assert_eq!(all_under("photos/2024/sub/", 1000), ["photos/2024/sub/f"]);
    assert_eq!(all_under("photos/a", 1000), Vec::<String>::new());
    assert_eq!(all_under("nothing", 1000), Vec::<String>::new());
    assert_eq!(all_under("photos", 1001).len(), 2 * LIST_WALK_BUDGET);
}
