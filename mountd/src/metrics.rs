//! The mount daemon's Prometheus metrics, written when scraped (`--metrics-listen`).
//!
//! Everything is read from where it already lives: op latency, errors and stalls from
//! the op registry, what is in flight and stalled now from it too, fetch counters from
//! the fetcher's `FetchStats`, entries, handles and cache use from the filesystem core, dropped
//! telemetry from the telemetry pipeline. Every op kind is listed, with zeros, so a
//! dashboard has a series for each from the start.

use std::sync::Arc;
use std::time::Duration;

use fusestream_shared::metrics::{Exposition, Kind};
use fusestream_shared::telemetry::TelemetryStats;

use crate::fs::Fs;
use crate::ops::{self, OpKind, OpRegistry};

#[derive(Clone)]
pub struct MountMetrics {
    pub fs: Arc<Fs>,
    pub ops: Arc<OpRegistry>,
    pub telemetry: TelemetryStats,
}

/// What is in flight now, per kind.
#[derive(Default, Clone, Copy)]
struct Now {
    in_flight: u64,
    stalled: u64,
    oldest: Duration,
}

impl MountMetrics {
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        self.render_ops(&mut out);
        self.render_fetches(&mut out);
        self.render_core(&mut out);
        self.telemetry.write_metrics(&mut out);
        out.into_text()
    }

    fn render_ops(&self, out: &mut Exposition) {
        let mut now = [Now::default(); OpKind::ALL.len()];
        for op in self.ops.in_flight() {
            let n = &mut now[op.kind as usize];
            n.in_flight += 1;
            n.stalled += u64::from(op.stalled);
            n.oldest = n.oldest.max(op.age);
        }
        let name = "fusestream_fuse_op_duration_seconds";
        out.family(
            name,
            Kind::Histogram,
            "Time from a FUSE request's arrival to its reply.",
        );
        for kind in OpKind::ALL {
            out.histogram(name, &[("op", kind.label())], self.ops.latency(kind));
        }
        let per_op = |out: &mut Exposition, name, kind, help, value: &dyn Fn(OpKind) -> f64| {
            out.family(name, kind, help);
            for op in OpKind::ALL {
                out.sample(name, &[("op", op.label())], value(op));
            }
        };
        let now = |op: OpKind| now[op as usize];
        per_op(
            out,
            "fusestream_fuse_ops_in_flight",
            Kind::Gauge,
            "FUSE ops received and not yet answered.",
            &|op| now(op).in_flight as f64,
        );
        per_op(
            out,
            "fusestream_fuse_ops_stalled",
            Kind::Gauge,
            "FUSE ops in flight now for longer than their stall threshold.",
            &|op| now(op).stalled as f64,
        );
        per_op(
            out,
            "fusestream_fuse_oldest_op_age_seconds",
            Kind::Gauge,
            "Age of the oldest FUSE op in flight (0 when none).",
            &|op| now(op).oldest.as_secs_f64(),
        );
        per_op(
            out,
            "fusestream_fuse_op_stalls_total",
            Kind::Counter,
            "FUSE ops that stayed in flight longer than their stall threshold.",
            &|op| self.ops.stalls(op) as f64,
        );
        let name = "fusestream_fuse_op_errors_total";
        out.family(name, Kind::Counter, "FUSE ops answered with an error.");
        for ((kind, errno), count) in self.ops.errors() {
            let errno = ops::errno_name(errno);
            out.sample(
                name,
                &[("op", kind.label()), ("errno", &errno)],
                count as f64,
            );
        }
    }

    fn render_fetches(&self, out: &mut Exposition) {
        let stats = self.fs.fetcher().stats();
        let name = "fusestream_fetch_requests_total";
        out.family(
            name,
            Kind::Counter,
            "HTTP range requests to remotes, by response status (\"error\": no response).",
        );
        for (status, count) in stats.requests() {
            out.sample(name, &[("status", &status)], count as f64);
        }
        out.single(
            "fusestream_fetch_bytes_total",
            Kind::Counter,
            "Bytes received from remotes.",
            stats.bytes() as f64,
        );
        out.single(
            "fusestream_fetch_retries_total",
            Kind::Counter,
            "Fetch attempts retried after a transient failure.",
            stats.retries() as f64,
        );
        out.single(
            "fusestream_fetch_refused_total",
            Kind::Counter,
            "Fetches failed at once because their remote's circuit breaker was open.",
            stats.refused() as f64,
        );
        let name = "fusestream_fetch_errors_total";
        out.family(name, Kind::Counter, "Failed fetch attempts, by reason.");
        for (reason, count) in stats.errors() {
            out.sample(name, &[("reason", reason)], count as f64);
        }
    }

    fn render_core(&self, out: &mut Exposition) {
        let status = self.fs.status();
        let cache = self.fs.cache();
        let values: [(&str, Kind, &str, u64); 9] = [
            (
                "fusestream_entries",
                Kind::Gauge,
                "Entries staged in the mount.",
                u64::from(status.entries),
            ),
            (
                "fusestream_open_handles",
                Kind::Gauge,
                "Open file handles on staged entries.",
                u64::from(status.open_handles),
            ),
            (
                "fusestream_reads_waiting",
                Kind::Gauge,
                "Reads parked waiting for data.",
                u64::from(status.reads_waiting),
            ),
            (
                "fusestream_cache_bytes",
                Kind::Gauge,
                "Bytes in all backing stores.",
                cache.used_bytes(),
            ),
            (
                "fusestream_cache_budget_bytes",
                Kind::Gauge,
                "The backing stores' disk budget (0: unlimited).",
                cache.max_bytes().unwrap_or(0),
            ),
            (
                "fusestream_stream_memory_bytes",
                Kind::Gauge,
                "Bytes fetched ahead of sequential readers held in memory until read.",
                cache.home().memory.used(),
            ),
            (
                "fusestream_stream_memory_budget_bytes",
                Kind::Gauge,
                "The memory sequential readers' fetched bytes may take (--stream-memory-mib).",
                cache.home().memory.max(),
            ),
            (
                "fusestream_open_stores",
                Kind::Gauge,
                "Backing stores holding a file (a descriptor) now.",
                cache.open_stores() as u64,
            ),
            (
                "fusestream_cache_evictions_total",
                Kind::Counter,
                "Objects whose cached bytes were dropped to stay within the budget.",
                cache.evictions(),
            ),
        ];
        for (name, kind, help, value) in values {
            out.single(name, kind, help, value as f64);
        }
    }
}
