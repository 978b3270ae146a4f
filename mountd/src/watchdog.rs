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

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use crate::ops::{self, OpKind, StalledOp};

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

    /// How often to scan: a quarter of the shortest threshold, within 50 ms..1 s.
    fn tick(&self) -> Duration {
        let shortest = self
            .per_kind
            .values()
            .copied()
            .chain([self.default])
            .min()
            .unwrap_or(self.default);
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
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

static STALL_POLICY: OnceLock<StallPolicy> = OnceLock::new();

/// Sets the stall thresholds, once, at start (the default applies until then).
pub fn set_stall_policy(policy: StallPolicy) {
    let _ = STALL_POLICY.set(policy);
}

pub fn stall_policy() -> &'static StallPolicy {
    STALL_POLICY.get_or_init(StallPolicy::default)
}

/// Scans for stalled ops until the runtime shuts down.
pub async fn run() {
    let mut interval = tokio::time::interval(stall_policy().tick());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        ops::newly_stalled().iter().for_each(report);
    }
}

fn report(op: &StalledOp) {
    let age_ms = op.age.as_millis() as u64;
    let kind = op.kind.label();
    tracing::warn!(
        parent: &op.span,
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
    stalled.follows_from(&op.span);
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
        let policy = StallPolicy {
            default: Duration::from_secs(1),
            per_kind: HashMap::from([(OpKind::Read, Duration::from_secs(8))]),
        };
        assert_eq!(policy.threshold(OpKind::Read), Duration::from_secs(8));
        assert_eq!(policy.threshold(OpKind::Lookup), Duration::from_secs(1));
        assert_eq!(policy.tick(), Duration::from_millis(250));
    }
}
