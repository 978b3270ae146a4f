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
//! trace backend. The other half is here: the [`OpRegistry`] knows every op in flight
//! *now*, with its kind's stall threshold ([`StallPolicy`]); the watchdog (`watchdog.rs`)
//! asks it for ops past their threshold ([`OpRegistry::newly_stalled`]) and reports them,
//! and metrics and `ListOps` read it when asked. One registry per mount, owned: created at
//! start and handed to the FUSE adapter, the API and metrics (no global state, so tests
//! each have their own).
//!
//! The registry is sharded by request id, so ops on different threads rarely meet on a
//! lock, and each shard lock is held only to insert, update or remove one entry (or to
//! copy entries out). It is a leaf lock: nothing is called while holding it (an op's span
//! is kept behind an `Arc`, so even copying it out calls nothing of the tracing layers).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fusestream_shared::metrics::Histogram;

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
    /// The uid of the calling process (who may see the op, see `OpSnapshot::uid`).
    uid: u32,
    ino: u64,
    started: Instant,
    detail: String,
    waiting_for: String,
    /// Flagged by the watchdog already (each op is reported once).
    stalled: bool,
    span: Arc<tracing::Span>,
}

/// An op in flight, as listed.
#[derive(Debug, Clone)]
pub struct OpSnapshot {
    pub kind: OpKind,
    pub unique: u64,
    pub pid: u32,
    /// The uid of the process that made it.
    pub uid: u32,
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

/// How long an op may be in flight before it counts as stalled, per kind.
#[derive(Debug, Clone)]
pub struct StallPolicy {
    pub default: Duration,
    pub per_kind: HashMap<OpKind, Duration>,
}

impl Default for StallPolicy {
    fn default() -> Self {
        StallPolicy {
            default: Duration::from_secs(1),
            per_kind: HashMap::new(),
        }
    }
}

impl StallPolicy {
    pub fn threshold(&self, kind: OpKind) -> Duration {
        self.per_kind.get(&kind).copied().unwrap_or(self.default)
    }

    /// The shortest threshold of any kind.
    pub fn shortest(&self) -> Duration {
        self.per_kind
            .values()
            .copied()
            .chain([self.default])
            .min()
            .unwrap_or(self.default)
    }
}

/// Per-kind counters, indexed by `OpKind as usize`.
#[derive(Debug)]
struct KindStats {
    latency: Histogram,
    stalls: AtomicU64,
}

type Shard = Mutex<HashMap<u64, InFlight>>;

/// The ops in flight of one mount, and what ops have done so far.
#[derive(Debug)]
pub struct OpRegistry {
    shards: [Shard; SHARDS],
    kinds: [KindStats; OpKind::ALL.len()],
    /// Error replies by kind and errno. Touched only when an op fails.
    errors: Mutex<BTreeMap<(OpKind, i32), u64>>,
    policy: StallPolicy,
}

impl OpRegistry {
    pub fn new(policy: StallPolicy) -> Arc<OpRegistry> {
        Arc::new(OpRegistry {
            shards: std::array::from_fn(|_| Mutex::default()),
            kinds: std::array::from_fn(|_| KindStats {
                latency: Histogram::new(),
                stalls: AtomicU64::new(0),
            }),
            errors: Mutex::default(),
            policy,
        })
    }

    pub fn policy(&self) -> &StallPolicy {
        &self.policy
    }

    fn shard(&self, unique: u64) -> MutexGuard<'_, HashMap<u64, InFlight>> {
        // Entries are replaced whole: a poisoned shard still holds valid data.
        self.shards[(unique % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self, kind: OpKind) -> &KindStats {
        &self.kinds[kind as usize]
    }

    /// Records ENTER and registers the op of FUSE request `unique` from process `pid` of
    /// user `uid` about inode `ino` (0 if none). `span` carries the op's fields.
    pub fn enter(
        self: &Arc<Self>,
        kind: OpKind,
        unique: u64,
        (pid, uid): (u32, u32),
        ino: u64,
        span: tracing::Span,
    ) -> Op {
        tracing::trace!(parent: &span, unique, pid, "[FUSE] {} ENTER", kind.label());
        let started = Instant::now();
        let span = Arc::new(span);
        let entry = InFlight {
            kind,
            pid,
            uid,
            ino,
            started,
            detail: String::new(),
            waiting_for: String::new(),
            stalled: false,
            span: span.clone(),
        };
        self.shard(unique).insert(unique, entry);
        Op {
            registry: self.clone(),
            kind,
            unique,
            started,
            span,
        }
    }

    /// The latency histogram of `kind` (time from request to reply).
    pub fn latency(&self, kind: OpKind) -> &Histogram {
        &self.stats(kind).latency
    }

    /// Ops of `kind` that have crossed their stall threshold, ever.
    pub fn stalls(&self, kind: OpKind) -> u64 {
        self.stats(kind).stalls.load(Ordering::Relaxed)
    }

    /// Error replies so far, by kind and errno.
    pub fn errors(&self) -> Vec<((OpKind, i32), u64)> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The ops in flight now, the oldest (the most likely stalled) first.
    pub fn in_flight(&self) -> Vec<OpSnapshot> {
        let now = Instant::now();
        let mut ops: Vec<OpSnapshot> = (0..SHARDS as u64)
            .flat_map(|i| {
                self.shard(i)
                    .iter()
                    .map(|(unique, op)| {
                        let age = now.saturating_duration_since(op.started);
                        OpSnapshot {
                            kind: op.kind,
                            unique: *unique,
                            pid: op.pid,
                            uid: op.uid,
                            ino: op.ino,
                            age,
                            stalled: age > self.policy.threshold(op.kind),
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

    /// The ops that crossed their stall threshold since the last call, each marked (so it
    /// is returned once) and counted in [`OpRegistry::stalls`]. For the watchdog.
    pub fn newly_stalled(&self) -> Vec<StalledOp> {
        let now = Instant::now();
        let mut flagged = Vec::new();
        for i in 0..SHARDS as u64 {
            for (unique, op) in self.shard(i).iter_mut() {
                let age = now.saturating_duration_since(op.started);
                if !op.stalled && age > self.policy.threshold(op.kind) {
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
            self.stats(op.kind).stalls.fetch_add(1, Ordering::Relaxed);
        }
        flagged
    }
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

/// An op the watchdog flagged as stalled.
#[derive(Debug)]
pub struct StalledOp {
    pub kind: OpKind,
    pub unique: u64,
    pub pid: u32,
    pub age: Duration,
    pub waiting_for: String,
    pub span: Arc<tracing::Span>,
}

/// One FUSE request from arrival to reply (see [`OpRegistry::enter`]).
#[derive(Debug)]
pub struct Op {
    registry: Arc<OpRegistry>,
    kind: OpKind,
    unique: u64,
    started: Instant,
    span: Arc<tracing::Span>,
}

impl Op {
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The op's span, shared (see `DataReply::span`).
    pub fn span_handle(&self) -> Arc<tracing::Span> {
        self.span.clone()
    }

    /// Says what the op is about, for the in-flight listing.
    pub fn describe(&self, detail: String) {
        if let Some(op) = self.registry.shard(self.unique).get_mut(&self.unique) {
            op.detail = detail;
        }
    }

    /// Says what the op is waiting for, for the in-flight listing.
    pub fn waiting_for(&self, what: String) {
        if let Some(op) = self.registry.shard(self.unique).get_mut(&self.unique) {
            op.waiting_for = what;
        }
    }

    /// Records that the op is answered with `errno`.
    pub fn failed(&self, errno: i32) {
        *self
            .registry
            .errors
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
        // A statement of its own: the shard lock is let go before the span is touched.
        let entry = self.registry.shard(self.unique).remove(&self.unique);
        drop(entry);
        self.registry.stats(self.kind).latency.observe(elapsed);
        tracing::trace!(
            parent: self.span.as_ref(),
            unique = self.unique,
            "[FUSE] {} EXIT dur={elapsed:?}",
            self.kind.label()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<OpRegistry> {
        OpRegistry::new(StallPolicy::default())
    }

    #[test]
    fn ops_are_listed_while_in_flight_with_what_they_wait_for() {
        let ops = registry();
        let first = ops.enter(OpKind::Read, 1, (42, 0), 0, tracing::Span::none());
        first.waiting_for("bytes 0..4096 of x".into());
        let second = ops.enter(OpKind::Lookup, 2, (43, 0), 0, tracing::Span::none());
        let listed = |ops: &OpRegistry| -> Vec<(u64, String)> {
            ops.in_flight()
                .into_iter()
                .map(|o| (o.unique, o.waiting_for))
                .collect()
        };
        assert_eq!(
            listed(&ops),
            [(1, "bytes 0..4096 of x".into()), (2, String::new())],
            "oldest first"
        );
        drop(first);
        assert_eq!(listed(&ops), [(2, String::new())]);
        drop(second);
        assert!(listed(&ops).is_empty());
    }

    #[test]
    fn an_op_past_its_threshold_is_flagged_once_and_counted() {
        let ops = registry();
        let op = ops.enter(OpKind::Readdir, 1, (7, 0), 0, tracing::Span::none());
        // Backdate the op instead of waiting for it.
        ops.shard(1).get_mut(&1).unwrap().started -= Duration::from_secs(5);
        assert!(ops.in_flight()[0].stalled);
        assert_eq!(ops.newly_stalled().len(), 1);
        assert_eq!(ops.newly_stalled().len(), 0, "flagged once");
        assert_eq!(ops.stalls(OpKind::Readdir), 1);
        drop(op);
        assert!(ops.in_flight().is_empty());
    }

    #[test]
    fn failures_are_counted_by_kind_and_errno_and_latency_recorded() {
        let ops = registry();
        let op = ops.enter(OpKind::Ioctl, 1, (7, 0), 0, tracing::Span::none());
        op.failed(libc::ENOTTY);
        drop(op);
        assert_eq!(ops.latency(OpKind::Ioctl).count(), 1);
        assert_eq!(ops.errors(), [((OpKind::Ioctl, libc::ENOTTY), 1)]);
        assert_eq!(errno_name(libc::ETIMEDOUT), "ETIMEDOUT");
        assert_eq!(OpKind::from_label("read"), Some(OpKind::Read));
    }

    #[test]
    fn per_kind_thresholds_apply() {
        let policy = StallPolicy {
            default: Duration::from_secs(1),
            per_kind: HashMap::from([(OpKind::Read, Duration::from_secs(8))]),
        };
        assert_eq!(policy.threshold(OpKind::Read), Duration::from_secs(8));
        assert_eq!(policy.threshold(OpKind::Lookup), Duration::from_secs(1));
        assert_eq!(policy.shortest(), Duration::from_secs(1));
    }
}
