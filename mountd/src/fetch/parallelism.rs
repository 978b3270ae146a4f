//! How many fetches of one object run at once, adapted to what its remote gives.
//!
//! Object stores and CDNs cap each connection (tens of MB/s), so a sequential reader is
//! served fastest by several ranged requests in parallel; a remote without such a cap (or
//! a saturated link, disk or CPU) gains nothing from more streams, and every extra one
//! costs a connection and contention on the store file. So each object climbs a hill:
//! while its fetches use every stream the limit allows (the reader asks for at least what
//! it gets), the bytes received in each epoch ([`EPOCH`]) are compared with the epoch
//! before. A step up
//! that brought at least half of what the new streams would bring at the old streams'
//! average is kept and followed by another (doubling at first: a capped remote is climbed
//! in a few epochs, within the first hundreds of MB; by a quarter once a doubling failed,
//! to find a cap between); one that did not is undone. A step down that lost no more than
//! half of what the removed streams carried on average is kept and followed by another
//! (so a remote that got slower sheds streams); one that lost more is undone. After an
//! undone step the limit holds for [`HOLD_EPOCHS`], then probes the other way. An epoch in
//! which the streams were not all used (for at least three quarters of the bytes) says
//! nothing about the remote and changes nothing.
//!
//! The bounds: [`MIN_STREAMS`]..=[`MAX_STREAMS`] per object; the per-origin and
//! daemon-wide slots (`origins`) bound it further and keep other origins' share whatever
//! one object climbs to.
//!
//! The climb is a pure state machine ([`Climb::epoch`]: no clock, no I/O), unit-tested
//! below against model remotes; [`Gate`] applies its limit to an object's fetch attempts
//! and feeds it what they receive. Locks: the gate's is a leaf, held for counter updates.
//!
//! Attempts waiting for a place enter in [`Turn`] order: those a read waits for first,
//! then the lowest offset. In whatever order they were woken, a far read-ahead range
//! would often go before the range the reader needs next (seen: the reader stalled at 216
//! MiB while 447 MiB was fetched), and the reader's stall held back the read-ahead
//! window, so the streams ran dry. Only the attempt whose turn it is is woken (each has its
//! own `Notify`): waking all of them for every freed place cost O(waiting) per fetch.
//! Proven by a model test below: any sequence of waits, ends, cancellations, prefetches and
//! limit moves leaves no attempt waiting while there is room, and admits in turn.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Fetches of one object at once: where every object starts, and the bounds. The start is
/// high because object stores cap connections (a file read in a second or two is over
/// before a slow climb would reach its bound); a remote that gains nothing from them
/// sheds them within a few epochs.
pub const START_STREAMS: usize = 8;
pub const MIN_STREAMS: usize = 2;
pub const MAX_STREAMS: usize = 16;
/// How long the bytes received are summed before the limit is judged. The epoch right
/// after the limit moved is not judged: new streams are still connecting and the
/// read-ahead window still growing, so it would undervalue them.
pub const EPOCH: Duration = Duration::from_millis(200);
/// Epochs the limit stays after a probe failed (or the bound was reached).
pub const HOLD_EPOCHS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No measurement at the current limit yet.
    Measure,
    /// The limit just moved this way from `from`, where the rate was `rate`.
    Probe {
        direction: Direction,
        from: usize,
        rate: f64,
    },
    /// Holding for this many more epochs; then probe `next`.
    Hold { left: u32, next: Direction },
}

/// The hill climb of one object's stream limit. Pure: fed one epoch at a time.
#[derive(Debug, Clone)]
pub struct Climb {
    limit: usize,
    phase: Phase,
    /// A doubling failed once: steps up are a quarter from then on.
    cautious: bool,
}

impl Default for Climb {
    fn default() -> Self {
        Climb {
            limit: START_STREAMS,
            phase: Phase::Measure,
            cautious: false,
        }
    }
}

impl Climb {
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One epoch ended in which `rate` (bytes/s) was received; `saturated` says whether
    /// the fetches used every stream allowed through it. Returns the limit from now on.
    pub fn epoch(&mut self, rate: f64, saturated: bool) -> usize {
        if !saturated {
            // The reader asked for no more than it got: nothing learned. A probe under
            // way is judged again at the next queued epoch, against what it started from.
            return self.limit;
        }
        match self.phase {
            Phase::Measure => self.probe(Direction::Up, rate),
            Phase::Probe {
                direction,
                from,
                rate: before,
            } => {
                // What the streams added (or removed) would carry at the old average.
                let share = before / from as f64 * from.abs_diff(self.limit) as f64;
                let worth_it = match direction {
                    Direction::Up => rate - before >= share / 2.0,
                    Direction::Down => before - rate > share / 2.0,
                };
                match (direction, worth_it) {
                    // Up paid off, or down cost little: go on the same way.
                    (Direction::Up, true) => self.probe(Direction::Up, rate),
                    (Direction::Down, false) => self.probe(Direction::Down, rate),
                    // Up gained too little: undo, smaller steps up from now on, and probe
                    // down next. Down lost too much: undo, and probe up next.
                    (Direction::Up, false) => {
                        self.limit = from;
                        self.cautious = true;
                        self.hold(Direction::Down);
                    }
                    (Direction::Down, true) => {
                        self.limit = from;
                        self.hold(Direction::Up);
                    }
                }
            }
            Phase::Hold { left, next } => {
                if left > 1 {
                    self.phase = Phase::Hold {
                        left: left - 1,
                        next,
                    };
                } else {
                    self.probe(next, rate);
                }
            }
        }
        self.limit
    }

    /// Moves the limit `direction` (up: doubling, or a quarter once cautious; down: a
    /// quarter), or holds at a bound.
    fn probe(&mut self, direction: Direction, rate: f64) {
        let from = self.limit;
        let quarter = (from / 4).max(1);
        let to = match direction {
            Direction::Up if self.cautious => (from + quarter).min(MAX_STREAMS),
            Direction::Up => (from * 2).min(MAX_STREAMS),
            Direction::Down => from.saturating_sub(quarter).max(MIN_STREAMS),
        };
        if to == from {
            let next = match direction {
                Direction::Up => Direction::Down,
                Direction::Down => Direction::Up,
            };
            self.hold(next);
            return;
        }
        self.limit = to;
        self.phase = Phase::Probe {
            direction,
            from,
            rate,
        };
    }

    fn hold(&mut self, next: Direction) {
        self.phase = Phase::Hold {
            left: HOLD_EPOCHS,
            next,
        };
    }
}

/// A waiting attempt's place in its object's queue: attempts a read waits for go first,
/// then lower offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Turn {
    /// False sorts first: a read waits for it.
    unawaited: bool,
    offset: u64,
}

impl Turn {
    pub fn new(awaited: bool, offset: u64) -> Turn {
        Turn {
            unawaited: !awaited,
            offset,
        }
    }
}

#[derive(Debug)]
struct GateState {
    climb: Climb,
    running: usize,
    /// Attempts waiting for a place now, in the order they get one (the number breaks
    /// ties, oldest first), each with what wakes it.
    waiting: BTreeMap<(Turn, u64), Arc<Notify>>,
    next_ticket: u64,
    epoch_start: Instant,
    epoch_bytes: u64,
    /// Bytes of this epoch that arrived while every stream allowed was running.
    epoch_saturated_bytes: u64,
    /// The limit moved at the start of this epoch: it settles, unjudged.
    settling: bool,
}

impl GateState {
    /// What wakes the attempt whose turn it is, if there is room for it. Notified after
    /// the lock is let go; a notification before it waits is kept for it (`notify_one`).
    fn next_in_turn(&self) -> Option<Arc<Notify>> {
        if self.running >= self.climb.limit() {
            return None;
        }
        self.waiting.values().next().cloned()
    }
}

fn wake(next: Option<Arc<Notify>>) {
    if let Some(next) = next {
        next.notify_one();
    }
}

/// Applies an object's stream limit to its fetch attempts and feeds the climb.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<GateState>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            state: Mutex::new(GateState {
                climb: Climb::default(),
                running: 0,
                waiting: BTreeMap::new(),
                next_ticket: 0,
                epoch_start: Instant::now(),
                epoch_bytes: 0,
                epoch_saturated_bytes: 0,
                settling: false,
            }),
        }
    }
}

/// One running attempt's place under the limit; dropping it frees the place.
#[derive(Debug)]
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        let next = {
            let mut state = self.0.lock();
            state.running -= 1;
            state.next_in_turn()
        };
        wake(next);
    }
}

/// An attempt waiting for a place, in `waiting` while it lives.
struct Waiting<'a> {
    gate: &'a Gate,
    key: (Turn, u64),
    wakes: Arc<Notify>,
}

impl<'a> Waiting<'a> {
    fn new(gate: &'a Gate, turn: Turn) -> Waiting<'a> {
        let mut state = gate.lock();
        let key = (turn, state.next_ticket);
        state.next_ticket += 1;
        let wakes = Arc::new(Notify::new());
        state.waiting.insert(key, wakes.clone());
        Waiting { gate, key, wakes }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // It entered, or was cancelled, maybe at the head of the queue: the next in turn
        // may fit too, and no place freeing would say so.
        let next = {
            let mut state = self.gate.lock();
            state.waiting.remove(&self.key);
            state.next_in_turn()
        };
        wake(next);
    }
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current limit (read-ahead sizes its window by it).
    pub fn limit(&self) -> usize {
        self.lock().climb.limit()
    }

    /// A place for one attempt, now if the limit allows and no attempt waits for one
    /// (this one would go before them). Never waits.
    pub fn try_enter(self: &Arc<Self>) -> Option<Pass> {
        let mut state = self.lock();
        (state.waiting.is_empty() && state.running < state.climb.limit()).then(|| {
            state.running += 1;
            Pass(self.clone())
        })
    }

    /// A place for one attempt, once the limit allows and the attempts before it in
    /// [`Turn`] order have entered.
    pub async fn enter(self: &Arc<Self>, turn: Turn) -> Pass {
        // In the queue until it enters, or is dropped (a cancelled fetch) instead.
        let waiting = Waiting::new(self, turn);
        loop {
            {
                let mut state = self.lock();
                let first = state.waiting.keys().next() == Some(&waiting.key);
                if first && state.running < state.climb.limit() {
                    state.running += 1;
                    drop(state);
                    return Pass(self.clone());
                }
            }
            // A wake-up sent since the check is kept for this wait.
            waiting.wakes.notified().await;
        }
    }

    /// `bytes` arrived for one of the object's attempts at `now`. Ends the epoch (and
    /// maybe moves the limit) when it has lasted [`EPOCH`]. Cheap; never waits.
    pub fn received(&self, bytes: u64, now: Instant) {
        let next = {
            let mut state = self.lock();
            state.epoch_bytes += bytes;
            if state.running >= state.climb.limit() || !state.waiting.is_empty() {
                state.epoch_saturated_bytes += bytes;
            }
            let elapsed = now.saturating_duration_since(state.epoch_start);
            if elapsed < EPOCH {
                return;
            }
            let rate = state.epoch_bytes as f64 / elapsed.as_secs_f64();
            let saturated = state.epoch_saturated_bytes * 4 >= state.epoch_bytes * 3;
            let before = state.climb.limit();
            let after = if state.settling {
                before
            } else {
                state.climb.epoch(rate, saturated)
            };
            state.settling = after != before;
            if after != before {
                tracing::debug!(from = before, to = after, rate, "fetch streams");
            }
            state.epoch_start = now;
            state.epoch_bytes = 0;
            state.epoch_saturated_bytes = 0;
            // More room: the first in turn enters and wakes the next while room is left.
            (after > before).then(|| state.next_in_turn()).flatten()
        };
        wake(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A remote that gives each stream at most `per_stream` and all together at most
    /// `total` (bytes/s).
    fn remote(per_stream: f64, total: f64) -> impl Fn(usize) -> f64 {
        move |streams| (per_stream * streams as f64).min(total)
    }

    /// The limits over `epochs` queued epochs against `remote`.
    fn climb(remote: impl Fn(usize) -> f64, epochs: usize) -> Vec<usize> {
        let mut climb = Climb::default();
        (0..epochs)
            .map(|_| climb.epoch(remote(climb.limit()), true))
            .collect()
    }

    #[test]
    fn a_per_connection_cap_is_climbed_to_the_bound_in_a_few_epochs() {
        let limits = climb(remote(40e6, f64::INFINITY), 40);
        assert_eq!(limits[0], 16, "doubling while each step pays");
        assert!(limits[2..].iter().all(|&l| l >= 12), "{limits:?}");
    }

    #[test]
    fn a_shared_bottleneck_keeps_few_streams() {
        // One stream already gets everything (loopback, a saturated link).
        let limits = climb(remote(1.5e9, 1.5e9), 60);
        assert_eq!(limits[0], 16, "one probe up");
        assert_eq!(limits[1], START_STREAMS, "undone: it gained nothing");
        assert!(
            limits[20..].iter().all(|&l| l <= 4),
            "probes down find fewer streams do as well: {limits:?}"
        );
        assert!(limits.contains(&MIN_STREAMS), "{limits:?}");
    }

    #[test]
    fn a_cap_between_the_bounds_is_found_and_held() {
        // Each stream 40 MB/s, but 400 MB/s at most: 10 streams are enough.
        let limits = climb(remote(40e6, 400e6), 80);
        let settled = &limits[20..];
        assert!(
            settled.iter().all(|&l| (8..=MAX_STREAMS).contains(&l)),
            "{limits:?}"
        );
    }

    #[test]
    fn a_remote_that_slows_down_sheds_streams() {
        let mut climb = Climb::default();
        for _ in 0..5 {
            climb.epoch(40e6 * climb.limit() as f64, true);
        }
        assert_eq!(climb.limit(), MAX_STREAMS);
        // Now the remote's total is capped at what 3 streams get.
        for _ in 0..100 {
            let limit = climb.limit();
            climb.epoch((40e6 * limit as f64).min(120e6), true);
        }
        assert!(climb.limit() <= 4, "{}", climb.limit());
    }

    #[test]
    fn noisy_measurements_still_settle_where_the_remote_says() {
        // Each epoch's rate off by up to 15% either way (a busy machine), fixed seed.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut noise = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            0.85 + 0.3 * ((seed >> 11) as f64 / (1u64 << 53) as f64)
        };
        let mean = |limits: &[usize]| limits.iter().sum::<usize>() as f64 / limits.len() as f64;
        let mut capped = Climb::default();
        let limits: Vec<usize> = (0..400)
            .map(|_| capped.epoch(40e6 * capped.limit() as f64 * noise(), true))
            .collect();
        assert!(mean(&limits[50..]) >= 10.0, "{limits:?}");
        let mut shared = Climb::default();
        let limits: Vec<usize> = (0..400)
            .map(|_| shared.epoch(1.5e9 * noise(), true))
            .collect();
        assert!(mean(&limits[50..]) <= 5.0, "{limits:?}");
    }

    #[test]
    fn epochs_without_a_queue_change_nothing() {
        let mut climb = Climb::default();
        for _ in 0..50 {
            assert_eq!(climb.epoch(1e6, false), START_STREAMS);
        }
    }

    #[test]
    fn the_gate_admits_up_to_the_limit_and_wakes_waiters_as_places_free() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let gate = Arc::new(Gate::default());
            let passes: Vec<Pass> = (0..START_STREAMS)
                .map(|_| gate.try_enter().expect("within the limit"))
                .collect();
            assert!(gate.try_enter().is_none(), "full");
            let mut waiter = Box::pin(gate.enter(Turn::new(true, 0)));
            assert!((&mut waiter).now_or_never().is_none(), "waits");
            assert_eq!(gate.lock().waiting.len(), 1);
            drop(passes);
            let pass = waiter.await;
            assert!(gate.lock().waiting.is_empty());
            assert_eq!(gate.lock().running, 1);
            drop(pass);
            assert_eq!(gate.lock().running, 0);
            // A waiter dropped before it entered (a cancelled fetch) stops counting.
            let passes: Vec<Pass> = (0..START_STREAMS)
                .map(|_| gate.try_enter().unwrap())
                .collect();
            let mut cancelled = Box::pin(gate.enter(Turn::new(true, 0)));
            assert!((&mut cancelled).now_or_never().is_none());
            assert_eq!(gate.lock().waiting.len(), 1);
            drop(cancelled);
            assert!(gate.lock().waiting.is_empty());
            drop(passes);
        });
    }

    #[test]
    fn waiting_attempts_enter_awaited_first_then_lowest_offset_first() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let gate = Arc::new(Gate::default());
            let mut passes: Vec<Pass> = (0..START_STREAMS)
                .map(|_| gate.try_enter().unwrap())
                .collect();
            // Queued in an order unlike the turn order.
            let turns = [
                Turn::new(false, 300),
                Turn::new(false, 100),
                Turn::new(true, 900),
                Turn::new(false, 200),
                Turn::new(true, 500),
            ];
            let mut waiters: Vec<_> = turns
                .iter()
                .map(|&turn| (turn, Box::pin(gate.enter(turn))))
                .collect();
            for (_, w) in &mut waiters {
                assert!(w.as_mut().now_or_never().is_none(), "full: waits");
            }
            assert!(gate.try_enter().is_none(), "never ahead of waiters");
            let mut entered = Vec::new();
            while !waiters.is_empty() {
                drop(passes.pop()); // one place frees
                tokio::task::yield_now().await;
                let mut admitted = Vec::new();
                waiters.retain_mut(|(turn, w)| match w.as_mut().now_or_never() {
                    Some(pass) => {
                        admitted.push((*turn, pass));
                        false
                    }
                    None => true,
                });
                assert_eq!(admitted.len(), 1, "one place, one attempt");
                let (turn, pass) = admitted.pop().unwrap();
                entered.push(turn);
                passes.insert(0, pass);
            }
            let mut expected = turns.to_vec();
            expected.sort();
            assert_eq!(entered, expected);
            assert_eq!(entered[0], Turn::new(true, 500));
            // A cancelled waiter at the head passes its turn on.
            let mut first = Box::pin(gate.enter(Turn::new(true, 0)));
            let mut second = Box::pin(gate.enter(Turn::new(false, 0)));
            assert!(first.as_mut().now_or_never().is_none());
            assert!(second.as_mut().now_or_never().is_none());
            drop(passes.pop());
            assert!(second.as_mut().now_or_never().is_none(), "behind the first");
            drop(first);
            assert!(second.as_mut().now_or_never().is_some());
        });
    }

    /// One step of the gate model below.
    #[derive(Debug, Clone)]
    enum Step {
        /// An attempt starts waiting, with this turn.
        Wait { awaited: bool, offset: u64 },
        /// The `n`th running attempt (of those running) ends.
        End(usize),
        /// The `n`th waiting attempt is cancelled.
        Cancel(usize),
        /// A prefetch tries to enter.
        Prefetch,
        /// An epoch ends with this much received (the limit may move).
        Epoch(u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (any::<bool>(), 0u64..6).prop_map(|(awaited, offset)| Step::Wait { awaited, offset }),
            3 => (0usize..20).prop_map(Step::End),
            1 => (0usize..20).prop_map(Step::Cancel),
            1 => Just(Step::Prefetch),
            1 => (0u64..4).prop_map(|n| Step::Epoch(n << 24)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config(256))]

        /// Any sequence of waits, ends, cancellations, prefetches and limit moves: once
        /// everything that can run has run, no attempt waits while there is room (no lost
        /// wake-up), and every attempt entered in turn order (the least waiting key).
        #[test]
        fn the_gate_never_strands_a_waiter_and_admits_in_turn(steps in proptest::collection::vec(step(), 1..80)) {
            type Waiter = Pin<Box<dyn std::future::Future<Output = Pass>>>;
            use std::pin::Pin;
            let gate = Arc::new(Gate::default());
            let mut running: Vec<Pass> = Vec::new();
            // (turn, creation order, the attempt)
            let mut waiting: Vec<(Turn, u64, Waiter)> = Vec::new();
            let mut created = 0u64;
            let mut now = Instant::now();
            for step in steps {
                match step {
                    Step::Wait { awaited, offset } => {
                        let turn = Turn::new(awaited, offset);
                        let gate = gate.clone();
                        waiting.push((turn, created, Box::pin(async move { gate.enter(turn).await })));
                        created += 1;
                    }
                    Step::End(n) if !running.is_empty() => {
                        running.remove(n % running.len());
                    }
                    Step::Cancel(n) if !waiting.is_empty() => {
                        drop(waiting.remove(n % waiting.len())); // never polled again
                    }
                    Step::Prefetch => running.extend(gate.try_enter()),
                    Step::Epoch(bytes) => {
                        now += EPOCH;
                        gate.received(bytes, now);
                    }
                    _ => {}
                }
                // Run everything that can run, checking the order of entries.
                loop {
                    let mut entered = None;
                    for (i, (_, _, w)) in waiting.iter_mut().enumerate() {
                        if let Some(pass) = w.as_mut().now_or_never() {
                            entered = Some((i, pass));
                            break;
                        }
                    }
                    let Some((i, pass)) = entered else { break };
                    let (turn, order, _) = waiting.remove(i);
                    let least = waiting.iter().map(|(t, o, _)| (*t, *o)).min();
                    proptest::prop_assert!(least.is_none_or(|l| (turn, order) < l), "entered out of turn");
                    running.push(pass);
                }
                let state = gate.lock();
                proptest::prop_assert_eq!(state.running, running.len());
                proptest::prop_assert_eq!(state.waiting.len(), waiting.len());
                proptest::prop_assert!(
                    waiting.is_empty() || state.running >= state.climb.limit(),
                    "{} waiting with {} of {} places taken",
                    waiting.len(),
                    state.running,
                    state.climb.limit()
                );
            }
        }
    }
}
