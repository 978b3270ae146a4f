//! ENTER/EXIT bookkeeping for every FUSE op, the registry of ops in flight, and stall
//! detection over it.
//!
//! An [`Op`] is created when a request arrives and travels with its reply: for a read that
//! is parked, it is stored next to the reply and only ends when the data path answers.
//! Creating it registers the op as in flight and opens its span (`fuse.read`, ...);
//! dropping it records EXIT: the latency histogram, the span's end, the registry entry's
//! removal. This is the single hook through which op visibility (spans, log lines, the
//! in-flight listing, the stall watchdog, metrics) is attached, so every op gets it the
//! same way.
//!
//! A span is exported only when it ends, so an op that never ends would never show in a
//! trace backend. The other half is here: the registry knows every op in flight *now*;
//! the watchdog (`watchdog.rs`) asks it for ops past their stall threshold
//! ([`newly_stalled`]) and reports them, and metrics and `ListOps` read it when asked.
//!
//! The registry is sharded by request id, so ops on different threads rarely meet on a
//! lock, and each shard lock is held only to insert, update or remove one entry (or to
//! copy entries out). It is a leaf lock: nothing is called while holding it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fusestream_shared::metrics::Histogram;

use crate::watchdog::stall_policy;

const SHARDS: usize = 16;

/// The kinds of FUSE op the daemon answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Init,
    Destroy,
    Interrupt,
    Lookup,
    Forget,
    Getattr,
    Access,
    Statfs,
    Open,
    Read,
    Release,
    Flush,
    Getxattr,
    Listxattr,
    Ioctl,
    Opendir,
    Readdir,
    Releasedir,
}

impl OpKind {
    pub const ALL: [OpKind; 18] = [
        OpKind::Init,
        OpKind::Destroy,
        OpKind::Interrupt,
        OpKind::Lookup,
        OpKind::Forget,
        OpKind::Getattr,
        OpKind::Access,
        OpKind::Statfs,
        OpKind::Open,
        OpKind::Read,
        OpKind::Release,
        OpKind::Flush,
        OpKind::Getxattr,
        OpKind::Listxattr,
        OpKind::Ioctl,
        OpKind::Opendir,
        OpKind::Readdir,
        OpKind::Releasedir,
    ];

    /// The op's name in metrics labels and on the command line: `read`, `lookup`, ...
    pub const fn label(self) -> &'static str {
        match self {
            OpKind::Init => "init",
            OpKind::Destroy => "destroy",
            OpKind::Interrupt => "interrupt",
            OpKind::Lookup => "lookup",
            OpKind::Forget => "forget",
            OpKind::Getattr => "getattr",
            OpKind::Access => "access",
            OpKind::Statfs => "statfs",
            OpKind::Open => "open",
            OpKind::Read => "read",
            OpKind::Release => "release",
            OpKind::Flush => "flush",
            OpKind::Getxattr => "getxattr",
            OpKind::Listxattr => "listxattr",
            OpKind::Ioctl => "ioctl",
            OpKind::Opendir => "opendir",
            OpKind::Readdir => "readdir",
            OpKind::Releasedir => "releasedir",
        }
    }

    /// The op's span name: `fuse.read`, `fuse.lookup`, ...
    pub const fn span_name(self) -> &'static str {
        match self {
            OpKind::Init => "fuse.init",
            OpKind::Destroy => "fuse.destroy",
            OpKind::Interrupt => "fuse.interrupt",
            OpKind::Lookup => "fuse.lookup",
            OpKind::Forget => "fuse.forget",
            OpKind::Getattr => "fuse.getattr",
            OpKind::Access => "fuse.access",
            OpKind::Statfs => "fuse.statfs",
            OpKind::Open => "fuse.open",
            OpKind::Read => "fuse.read",
            OpKind::Release => "fuse.release",
            OpKind::Flush => "fuse.flush",
            OpKind::Getxattr => "fuse.getxattr",
            OpKind::Listxattr => "fuse.listxattr",
            OpKind::Ioctl => "fuse.ioctl",
            OpKind::Opendir => "fuse.opendir",
            OpKind::Readdir => "fuse.readdir",
            OpKind::Releasedir => "fuse.releasedir",
        }
    }

    pub fn from_label(label: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.label() == label)
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    kind: OpKind,
    pid: u32,
    ino: u64,
    started: Instant,
    detail: String,
    waiting_for: String,
    /// Flagged by the watchdog already (each op is reported once).
    stalled: bool,
    span: tracing::Span,
}

/// An op in flight, as listed.
#[derive(Debug, Clone)]
pub struct OpSnapshot {
    pub kind: OpKind,
    pub unique: u64,
    pub pid: u32,
    /// The inode it is about (0 if none).
    pub ino: u64,
    pub age: Duration,
    /// In flight longer than its kind's stall threshold.
    pub stalled: bool,
    /// What it is about (e.g. which handle and bytes); may be empty.
    pub detail: String,
    /// What it is waiting for, if it waits (e.g. bytes of an object being fetched).
    pub waiting_for: String,
}

static REGISTRY: LazyLock<[Mutex<HashMap<u64, InFlight>>; SHARDS]> =
    LazyLock::new(|| std::array::from_fn(|_| Mutex::default()));

fn shard(unique: u64) -> MutexGuard<'static, HashMap<u64, InFlight>> {
    // Entries are replaced whole: a poisoned shard still holds valid data.
    REGISTRY[(unique % SHARDS as u64) as usize]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Per-kind counters, indexed by `OpKind as usize`.
struct KindStats {
    latency: Histogram,
    stalls: AtomicU64,
}

static KIND_STATS: [KindStats; OpKind::ALL.len()] = [const {
    KindStats {
        latency: Histogram::new(),
        stalls: AtomicU64::new(0),
    }
}; OpKind::ALL.len()];

/// Error replies by kind and errno. Touched only when an op fails.
static ERRORS: Mutex<BTreeMap<(OpKind, i32), u64>> = Mutex::new(BTreeMap::new());

fn stats(kind: OpKind) -> &'static KindStats {
    &KIND_STATS[kind as usize]
}

/// The latency histogram of `kind` (time from request to reply).
pub fn latency(kind: OpKind) -> &'static Histogram {
    &stats(kind).latency
}

/// Ops of `kind` that have crossed their stall threshold, ever.
pub fn stalls(kind: OpKind) -> u64 {
    stats(kind).stalls.load(Ordering::Relaxed)
}

/// Error replies so far, by kind and errno.
pub fn errors() -> Vec<((OpKind, i32), u64)> {
    let errors = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    errors.iter().map(|(k, v)| (*k, *v)).collect()
}

/// The symbolic name of the errnos FUSE replies carry (`EIO`, ...).
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ENOENT => "ENOENT",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EBADF => "EBADF",
        libc::EROFS => "EROFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EAGAIN => "EAGAIN",
        libc::ENODATA => "ENODATA",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSYS => "ENOSYS",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOSPC => "ENOSPC",
        other => return format!("E{other}"),
    };
    name.to_string()
}

/// The ops in flight now, the oldest (the most likely stalled) first.
pub fn in_flight() -> Vec<OpSnapshot> {
    let now = Instant::now();
    let policy = stall_policy();
    let mut ops: Vec<OpSnapshot> = (0..SHARDS as u64)
        .flat_map(|i| {
            shard(i)
                .iter()
                .map(|(unique, op)| {
                    let age = now.saturating_duration_since(op.started);
                    OpSnapshot {
                        kind: op.kind,
                        unique: *unique,
                        pid: op.pid,
                        ino: op.ino,
                        age,
                        stalled: age > policy.threshold(op.kind),
                        detail: op.detail.clone(),
                        waiting_for: op.waiting_for.clone(),
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ops.sort_by(|a, b| b.age.cmp(&a.age).then(a.unique.cmp(&b.unique)));
    ops
}

/// An op the watchdog flagged as stalled.
#[derive(Debug)]
pub struct StalledOp {
    pub kind: OpKind,
    pub unique: u64,
    pub pid: u32,
    pub age: Duration,
    pub waiting_for: String,
    pub span: tracing::Span,
}

/// The ops that crossed their stall threshold since the last call, each marked (so it is
/// returned once) and counted in [`stalls`]. For the watchdog, which reports them.
pub fn newly_stalled() -> Vec<StalledOp> {
    let now = Instant::now();
    let policy = stall_policy();
    let mut flagged = Vec::new();
    for i in 0..SHARDS as u64 {
        for (unique, op) in shard(i).iter_mut() {
            let age = now.saturating_duration_since(op.started);
            if !op.stalled && age > policy.threshold(op.kind) {
                op.stalled = true;
                flagged.push(StalledOp {
                    kind: op.kind,
                    unique: *unique,
                    pid: op.pid,
                    age,
                    waiting_for: op.waiting_for.clone(),
                    span: op.span.clone(),
                });
            }
        }
    }
    for op in &flagged {
        stats(op.kind).stalls.fetch_add(1, Ordering::Relaxed);
    }
    flagged
}

/// One FUSE request from arrival to reply.
#[derive(Debug)]
pub struct Op {
    kind: OpKind,
    unique: u64,
    started: Instant,
    span: tracing::Span,
}

impl Op {
    /// Records ENTER and registers the op of FUSE request `unique` from process `pid`
    /// about inode `ino` (0 if none). `span` carries the op's fields.
    pub fn enter(kind: OpKind, unique: u64, pid: u32, ino: u64, span: tracing::Span) -> Op {
        tracing::trace!(parent: &span, unique, pid, "[FUSE] {} ENTER", kind.label());
        let started = Instant::now();
        shard(unique).insert(
            unique,
            InFlight {
                kind,
                pid,
                ino,
                started,
                detail: String::new(),
                waiting_for: String::new(),
                stalled: false,
                span: span.clone(),
            },
        );
        Op {
            kind,
            unique,
            started,
            span,
        }
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Says what the op is about, for the in-flight listing.
    pub fn describe(&self, detail: String) {
        if let Some(op) = shard(self.unique).get_mut(&self.unique) {
            op.detail = detail;
        }
    }

    /// Says what the op is waiting for, for the in-flight listing.
    pub fn waiting_for(&self, what: String) {
        if let Some(op) = shard(self.unique).get_mut(&self.unique) {
            op.waiting_for = what;
        }
    }

    /// Records that the op is answered with `errno`.
    pub fn failed(&self, errno: i32) {
        *ERRORS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((self.kind, errno))
            .or_default() += 1;
        self.span.record("errno", errno_name(errno));
    }

    /// Ends the op (EXIT), just before its reply is sent.
    pub fn answered(self) {}

    /// Records that the op is answered with `bytes` bytes of data.
    pub fn replied_bytes(&self, bytes: usize) {
        self.span.record("bytes", bytes);
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        shard(self.unique).remove(&self.unique);
        stats(self.kind).latency.observe(elapsed);
        tracing::trace!(
            parent: &self.span,
            unique = self.unique,
            "[FUSE] {} EXIT dur={elapsed:?}",
            self.kind.label()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_listed_while_in_flight_with_what_they_wait_for() {
        // Ids far from other tests' (the registry is process-wide).
        let first = Op::enter(OpKind::Read, 1_000_001, 42, 0, tracing::Span::none());
        first.waiting_for("bytes 0..4096 of x".into());
        let second = Op::enter(OpKind::Lookup, 1_000_002, 43, 0, tracing::Span::none());
        let mine = |ops: Vec<OpSnapshot>| -> Vec<(u64, String)> {
            ops.into_iter()
                .filter(|o| (1_000_000..2_000_000).contains(&o.unique))
                .map(|o| (o.unique, o.waiting_for))
                .collect()
        };
        assert_eq!(
            mine(in_flight()),
            [
                (1_000_001, "bytes 0..4096 of x".into()),
                (1_000_002, String::new())
            ],
            "oldest first"
        );
        drop(first);
        assert_eq!(mine(in_flight()), [(1_000_002, String::new())]);
        drop(second);
        assert!(mine(in_flight()).is_empty());
    }

    #[test]
    fn an_op_past_its_threshold_is_flagged_once_and_counted() {
        // The default policy (1 s) applies in this process; backdate the op instead of
        // waiting for it.
        let before = stalls(OpKind::Readdir);
        let op = Op::enter(OpKind::Readdir, 2_000_001, 7, 0, tracing::Span::none());
        shard(2_000_001).get_mut(&2_000_001).unwrap().started -= Duration::from_secs(5);
        let listed = |ops: Vec<OpSnapshot>| ops.into_iter().find(|o| o.unique == 2_000_001);
        assert!(listed(in_flight()).unwrap().stalled);
        let mine = |ops: Vec<StalledOp>| ops.into_iter().filter(|o| o.unique == 2_000_001).count();
        assert_eq!(mine(newly_stalled()), 1);
        assert_eq!(mine(newly_stalled()), 0, "flagged once");
        assert_eq!(stalls(OpKind::Readdir), before + 1);
        drop(op);
        assert!(listed(in_flight()).is_none());
    }

    #[test]
    fn failures_are_counted_by_kind_and_errno_and_latency_recorded() {
        let before = latency(OpKind::Ioctl).count();
        let op = Op::enter(OpKind::Ioctl, 3_000_001, 7, 0, tracing::Span::none());
        op.failed(libc::ENOTTY);
        drop(op);
        assert_eq!(latency(OpKind::Ioctl).count(), before + 1);
        let count = errors()
            .into_iter()
            .find(|(key, _)| *key == (OpKind::Ioctl, libc::ENOTTY))
            .map(|(_, n)| n);
        assert!(count >= Some(1));
        assert_eq!(errno_name(libc::ETIMEDOUT), "ETIMEDOUT");
        assert_eq!(OpKind::from_label("read"), Some(OpKind::Read));
    }
}
