//! The stall watchdog: flags FUSE ops in flight longer than their kind's threshold
//! (default 1 s, `--stall-threshold-ms`, per kind `--op-stall-threshold-ms read=5000`).
//!
//! A span is exported only when its op ends, so a trace backend would never see an op
//! that never ends. The watchdog covers that half: a task on the runtime (never a FUSE
//! thread) scans the in-flight registry a few times per threshold and reports each op
//! that crossed it, once: a warning log line, an event on the op's own span, the
//! `fusestream_fuse_op_stalls_total` counter, and a short `fuse.stalled` span linked to
//! the op's span, which is exported at once. What is stalled *now* (the
//! `fusestream_fuse_ops_stalled` gauge, `ListOps`) is read from the registry when asked.

use std::sync::Arc;
use std::time::Duration;

use crate::ops::{OpKind, OpRegistry, StalledOp};

/// How often to scan: a quarter of the shortest threshold, within 50 ms..1 s.
fn tick(shortest: Duration) -> Duration {
    (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Parses `KIND=MS` (e.g. `read=5000`), the form of `--op-stall-threshold-ms`.
pub fn parse_kind_threshold(value: &str) -> Result<(OpKind, Duration), String> {
    let (kind, ms) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?}: expected OP=MILLISECONDS, e.g. read=5000"))?;
    let kind = OpKind::from_label(kind.trim()).ok_or_else(|| {
        let known: Vec<&str> = OpKind::ALL.iter().map(|k| k.label()).collect();
        format!("unknown op {kind:?}; ops are {}", known.join(", "))
    })?;
    let ms: u64 = ms
        .trim()
        .parse()
        .map_err(|_| format!("{value:?}: {ms:?} is not a number of milliseconds"))?;
    Ok((kind, Duration::from_millis(ms)))
}

/// Scans `ops` for stalled ops until its runtime shuts down. Runs on the timer runtime
/// (see `timers`), so a busy worker pool never delays a report.
pub async fn run(ops: Arc<OpRegistry>) {
    let mut interval = tokio::time::interval(tick(ops.policy().shortest()));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        ops.newly_stalled().iter().for_each(report);
    }
}

fn report(op: &StalledOp) {
    let age_ms = op.age.as_millis() as u64;
    let kind = op.kind.label();
    tracing::warn!(
        parent: op.span.as_ref(),
        op = kind,
        unique = op.unique,
        pid = op.pid,
        age_ms,
        waiting_for = op.waiting_for,
        "[FUSE] {kind} STALLED: in flight for {age_ms} ms"
    );
    // Ends (and so is exported) right away, while the op itself still waits.
    let stalled = tracing::debug_span!(
        parent: None,
        "fuse.stalled",
        op = kind,
        unique = op.unique,
        pid = op.pid,
        age_ms,
        waiting_for = op.waiting_for,
    );
    stalled.follows_from(op.span.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_kind_thresholds_parse_and_apply() {
        assert_eq!(
            parse_kind_threshold("read=5000"),
            Ok((OpKind::Read, Duration::from_secs(5)))
        );
        assert!(
            parse_kind_threshold("reed=5")
                .unwrap_err()
                .contains("ops are")
        );
        assert!(parse_kind_threshold("read").is_err());
        assert!(parse_kind_threshold("read=soon").is_err());
        assert_eq!(tick(Duration::from_secs(1)), Duration::from_millis(250));
        assert_eq!(tick(Duration::from_millis(10)), Duration::from_millis(50));
    }
}
