//! What a fetch does after a failed attempt, and when an origin counts as down: pure
//! functions of (error, attempt) and of an origin's recent outcomes, with no I/O and no
//! clock of their own (the caller passes `now`), so every decision is unit-tested here
//! (like `power::Machine` in the control plane).
//!
//! The circuit breaker is per origin (scheme://host:port). After [`FAILURES_TO_OPEN`]
//! attempts in a row that say the origin is dead (no connection, or no response within
//! the stall timeout), it opens: fetches of that origin fail at once, with the reason,
//! instead of each holding a slot through its own timeouts. Any response counts as
//! alive, even a 503 or a body cut short: those are retried per fetch (a Retry-After is
//! honoured without holding a slot), so a flaky origin is slowed, never cut off. When the
//! open period ends (longer each time), one fetch is let through as a probe; its success
//! closes the breaker, its failure opens it again. A probe that never reports (its task
//! died) is replaced after [`PROBE_TIMEOUT`].

use std::time::{Duration, Instant};

use super::FetchError;

/// Failed origin-level attempts in a row that open an origin's breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long a breaker first stays open, and the longest it ever does.
pub const FIRST_OPEN: Duration = Duration::from_secs(2);
pub const LONGEST_OPEN: Duration = Duration::from_secs(30);
/// A probe that reported nothing for this long is taken as lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest Retry-After honoured; a server asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Renewals one fetch asks for before it gives up.
pub const MAX_RENEWALS: u32 = 3;

/// What to do after attempt number `attempt` (from 1) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this pause (no fetch slot is held during it).
    Retry(Duration),
    /// Ask the control plane for a new temp URL and wait for it (no slot held).
    Renew,
    /// Give up: the reads waiting for these bytes fail.
    Fail,
}

/// The decision after a failed attempt: a pure function of the error and the counts.
pub fn next_step(error: &FetchError, attempt: u32, renewals: u32, max_attempts: u32) -> Next {
    match error {
        FetchError::Rejected { .. } if renewals < MAX_RENEWALS => Next::Renew,
        _ if !error.retryable() || attempt >= max_attempts => Next::Fail,
        FetchError::Status {
            retry_after: Some(asked),
            ..
        } => Next::Retry((*asked).min(MAX_RETRY_AFTER)),
        _ => Next::Retry(backoff(attempt)),
    }
}

/// The pause after failed attempt `attempt`: 200 ms, doubling, at most 6.4 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 << attempt.clamp(1, 6))
}

/// Whether a fetch of this origin may go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Go, as the one probe of an origin that was down.
    Probe,
    /// The origin is down: fail at once, saying why.
    Refuse(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    Probing { since: Instant },
}

/// One origin's circuit breaker (see the module note).
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    failures: u32,
    /// How long the next opening lasts.
    open_for: Duration,
    /// Why it is open: the last failure.
    reason: String,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed,
            failures: 0,
            open_for: FIRST_OPEN,
            reason: String::new(),
        }
    }
}

impl Breaker {
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Go,
            State::Open { until } if now >= until => {
                self.state = State::Probing { since: now };
                Admission::Probe
            }
            State::Probing { since } if now.saturating_duration_since(since) >= PROBE_TIMEOUT => {
                self.state = State::Probing { since: now };
                Admission::Probe
            }
            State::Open { .. } | State::Probing { .. } => Admission::Refuse(self.why(now)),
        }
    }

    /// Why fetches are refused now (empty while closed).
    pub fn why(&self, now: Instant) -> String {
        match self.state {
            State::Closed => String::new(),
            State::Open { until } => format!(
                "not answering ({}); next try in {} s",
                self.reason,
                until.saturating_duration_since(now).as_secs() + 1
            ),
            State::Probing { .. } => format!("not answering ({}); trying again now", self.reason),
        }
    }

    /// The origin answered (any HTTP response that does not say it is unwell).
    pub fn answered(&mut self) {
        *self = Breaker::default();
    }

    /// An attempt failed with `error`. Only failures that say the origin is dead count;
    /// any other means it answered.
    pub fn failed(&mut self, now: Instant, error: &FetchError) {
        if !error.origin_dead() {
            return self.answered();
        }
        self.failures += 1;
        self.reason = error.to_string();
        let reopen = matches!(self.state, State::Probing { .. });
        if reopen || (self.state == State::Closed && self.failures >= FAILURES_TO_OPEN) {
            self.state = State::Open {
                until: now + self.open_for,
            };
            self.open_for = (self.open_for * 2).min(LONGEST_OPEN);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn status(code: u16, retry_after: Option<u64>) -> FetchError {
        FetchError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn retries_what_is_transient_renews_what_was_refused_and_gives_up_on_the_rest() {
        let stalled = FetchError::Stalled(Duration::from_secs(10));
        assert_eq!(
            next_step(&stalled, 1, 0, 4),
            Next::Retry(Duration::from_millis(200))
        );
        assert_eq!(
            next_step(&stalled, 3, 0, 4),
            Next::Retry(Duration::from_millis(800))
        );
        assert_eq!(next_step(&stalled, 4, 0, 4), Next::Fail, "out of attempts");
        assert_eq!(
            next_step(&status(503, Some(5)), 1, 0, 4),
            Next::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            next_step(&status(429, Some(3600)), 1, 0, 4),
            Next::Retry(MAX_RETRY_AFTER),
            "a server's Retry-After is capped"
        );
        assert_eq!(next_step(&status(404, None), 1, 0, 4), Next::Fail);
        let rejected = FetchError::Rejected {
            status: StatusCode::FORBIDDEN,
            generation: 0,
        };
        assert_eq!(
            next_step(&rejected, 9, 0, 4),
            Next::Renew,
            "renewals do not use attempts"
        );
        assert_eq!(next_step(&rejected, 1, MAX_RENEWALS, 4), Next::Fail);
        assert_eq!(
            next_step(&FetchError::Changed("etag".into()), 1, 0, 4),
            Next::Fail
        );
        assert_eq!(
            next_step(&FetchError::Protocol("bad".into()), 1, 0, 4),
            Next::Fail
        );
    }

    #[test]
    fn a_breaker_opens_after_failures_in_a_row_then_probes_once() {
        let t0 = Instant::now();
        let mut breaker = Breaker::default();
        let stalled = FetchError::Stalled(Duration::from_secs(10));
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed(t0, &stalled);
            assert_eq!(breaker.admit(t0), Admission::Go);
        }
        breaker.failed(t0, &stalled);
        let Admission::Refuse(why) = breaker.admit(t0) else {
            panic!("open")
        };
        assert!(why.contains("no answer for 10s"), "{why}");
        // After the open period: one probe, the others still refused.
        let later = t0 + FIRST_OPEN;
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert!(matches!(breaker.admit(later), Admission::Refuse(_)));
        // The probe fails: open again, for longer.
        breaker.failed(later, &stalled);
        assert!(matches!(
            breaker.admit(later + FIRST_OPEN),
            Admission::Refuse(_)
        ));
        assert_eq!(breaker.admit(later + 2 * FIRST_OPEN), Admission::Probe);
        // The probe succeeds: closed, counts reset.
        breaker.answered();
        assert!(breaker.is_closed());
        breaker.failed(later, &stalled);
        assert_eq!(breaker.admit(later), Admission::Go);
    }

    #[test]
    fn only_an_origin_that_does_not_answer_counts_as_dead() {
        let t0 = Instant::now();
        let mut breaker = Breaker::default();
        let answered = [
            status(404, None),
            status(503, Some(30)),
            status(500, None),
            FetchError::Changed("etag".into()),
            FetchError::Body {
                message: "body ended early".into(),
                stalled: false,
            },
            FetchError::Body {
                message: "body stalled".into(),
                stalled: true,
            },
        ];
        for _ in 0..10 {
            for error in &answered {
                breaker.failed(t0, error);
            }
        }
        assert!(
            breaker.is_closed(),
            "a flaky origin is retried, never cut off"
        );
        // A failure streak is broken by an answer.
        let refused = FetchError::Network("connection refused".into());
        breaker.failed(t0, &refused);
        breaker.failed(t0, &refused);
        breaker.failed(t0, &status(503, None));
        breaker.failed(t0, &refused);
        assert!(breaker.is_closed());
        breaker.failed(t0, &refused);
        breaker.failed(t0, &refused);
        assert!(!breaker.is_closed());
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let t0 = Instant::now();
        let mut breaker = Breaker::default();
        let stalled = FetchError::Stalled(Duration::from_secs(10));
        for _ in 0..FAILURES_TO_OPEN {
            breaker.failed(t0, &stalled);
        }
        let probe_at = t0 + FIRST_OPEN;
        assert_eq!(breaker.admit(probe_at), Admission::Probe);
        assert!(matches!(
            breaker.admit(probe_at + Duration::from_secs(1)),
            Admission::Refuse(_)
        ));
        assert_eq!(breaker.admit(probe_at + PROBE_TIMEOUT), Admission::Probe);
    }
}
