//! ENTER/EXIT bookkeeping for every FUSE op, and the registry of ops in flight.
//!
//! An [`Op`] is created when a request arrives and travels with its reply: for a read that
//! is parked, it is stored next to the reply and only ends when the data path answers.
//! Creating it registers the op as in flight; dropping it records EXIT with the duration
//! and unregisters it. This is the single hook through which op visibility (spans, the
//! in-flight listing, the stall watchdog) is attached, so every op gets it the same way.
//!
//! The registry is sharded by request id, so ops on different threads rarely meet on a
//! lock, and each lock is held only to insert, update or remove one entry.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Debug, Clone)]
struct InFlight {
    kind: &'static str,
    pid: u32,
    started: Instant,
    detail: String,
    waiting_for: String,
}

/// An op in flight, as listed.
#[derive(Debug, Clone)]
pub struct OpSnapshot {
    pub kind: &'static str,
    pub unique: u64,
    pub pid: u32,
    pub age: Duration,
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

/// The ops in flight now, the oldest (the most likely stalled) first.
pub fn in_flight() -> Vec<OpSnapshot> {
    let now = Instant::now();
    let mut ops: Vec<OpSnapshot> = (0..SHARDS as u64)
        .flat_map(|i| {
            shard(i)
                .iter()
                .map(|(unique, op)| OpSnapshot {
                    kind: op.kind,
                    unique: *unique,
                    pid: op.pid,
                    age: now.saturating_duration_since(op.started),
                    detail: op.detail.clone(),
                    waiting_for: op.waiting_for.clone(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ops.sort_by(|a, b| b.age.cmp(&a.age).then(a.unique.cmp(&b.unique)));
    ops
}

/// One FUSE request from arrival to reply.
#[derive(Debug)]
pub struct Op {
    kind: &'static str,
    unique: u64,
    started: Instant,
    span: tracing::Span,
}

impl Op {
    /// Records ENTER and registers the op. `span` carries the op's fields.
    pub fn enter(kind: &'static str, unique: u64, pid: u32, span: tracing::Span) -> Op {
        tracing::trace!(parent: &span, op = kind, unique, "ENTER");
        let started = Instant::now();
        shard(unique).insert(
            unique,
            InFlight {
                kind,
                pid,
                started,
                detail: String::new(),
                waiting_for: String::new(),
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
}

impl Drop for Op {
    fn drop(&mut self) {
        shard(self.unique).remove(&self.unique);
        tracing::trace!(
            parent: &self.span,
            op = self.kind,
            unique = self.unique,
            dur_us = self.started.elapsed().as_micros() as u64,
            "EXIT"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_listed_while_in_flight_with_what_they_wait_for() {
        // Ids far from other tests' (the registry is process-wide).
        let first = Op::enter("fuse.read", 1_000_001, 42, tracing::Span::none());
        first.waiting_for("bytes 0..4096 of x".into());
        let second = Op::enter("fuse.lookup", 1_000_002, 43, tracing::Span::none());
        let mine = |ops: Vec<OpSnapshot>| -> Vec<(u64, String)> {
            ops.into_iter()
                .filter(|o| o.unique > 1_000_000)
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
}
