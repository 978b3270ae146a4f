//! Sleep inhibition: while any file of the mount is open, idle sleep is inhibited; a grace
//! period after the last close it is released.
//!
//! Why it is built this way:
//! - The mount daemon never calls the unprivileged control plane, and its FUSE callbacks
//!   must never wait on anything, so the daemon only publishes handle events (with the
//!   mount's absolute count); the control plane follows them (`Mount.WatchEvents`) and
//!   feeds the count to [`PowerManager::observe`], which only stores it in a watch channel.
//! - Every call to the platform (logind over D-Bus, `caffeinate`) happens on the manager's
//!   own task, never inline with a gRPC handler or an event: a logind that hangs leaves
//!   staging, listing and reads untouched, it only delays the inhibitor itself.
//! - The decisions are a plain state machine ([`Machine`]: inputs in, an [`Action`] out,
//!   time passed in) separate from the backends ([`Inhibitor`]), so the rules are unit
//!   tested without D-Bus or clocks: acquire on the first open only, release after the
//!   grace, a reopen during the grace keeps the inhibitor, a refusal is logged once.
//! - Counts, not deltas: a follower that missed events (it lagged or reconnected) is right
//!   again with the next event, or with `GetStatus` when it reconnects ([`PowerManager::resync`]).
//!   Each event's change number drops events that FUSE threads published out of order.
//! - The state is readable at no cost ([`PowerManager::state`], a watch channel) for the
//!   status RPC and for metrics.

#[cfg(target_os = "linux")]
mod logind;
#[cfg(target_os = "macos")]
mod macos;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long the platform may take to grant an inhibitor before we give up on it.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(25);

/// Why the platform did not inhibit sleep.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InhibitError {
    /// No system bus (or no caffeinate) to ask.
    #[error("{0}")]
    Unreachable(String),
    /// The platform answered no (e.g. logind or polkit refused).
    #[error("refused: {0}")]
    Refused(String),
    #[error("no answer within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("not supported on this platform")]
    #[cfg_attr(any(target_os = "linux", target_os = "macos"), allow(dead_code))]
    Unsupported,
}

/// What a granted inhibitor is: sleep stays inhibited until it is dropped.
pub type Inhibition = Box<dyn Send>;

/// A future that asks the platform for an inhibitor.
pub type Acquiring = Pin<Box<dyn Future<Output = Result<Inhibition, InhibitError>> + Send>>;

/// A platform's way of inhibiting sleep.
pub trait Inhibitor: Send + 'static {
    /// Asks for an inhibitor. The future runs on the manager's task only.
    fn acquire(&self) -> Acquiring;
}

/// `fusestreamctl serve`'s power settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerConfig {
    /// None: do not inhibit sleep at all (`--no-inhibit-sleep`).
    pub grace: Option<Duration>,
}

/// Where the inhibitor stands, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerState {
    /// Turned off by configuration.
    Disabled,
    /// Nothing open; sleep is not inhibited.
    Released,
    /// Files are open; the platform was asked and has not answered yet.
    Acquiring {
        open: u32,
    },
    Inhibited {
        open: u32,
    },
    /// All files closed; the inhibitor is held until `until`.
    Grace {
        until: Instant,
    },
    /// The platform refused or is missing; asked again at the next first open.
    Unavailable {
        reason: String,
        open: u32,
    },
}

impl PowerState {
    /// True while an inhibitor is held (the grace period included): the metric's 0/1.
    pub fn inhibited(&self) -> bool {
        matches!(
            self,
            PowerState::Inhibited { .. } | PowerState::Grace { .. }
        )
    }
}

/// What the driver must do after an input to the machine.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Ask the platform for an inhibitor (the answer goes to [`Machine::acquired`]).
    Acquire,
    /// Drop the inhibitor.
    Release,
    /// The platform failed for the first time: say so, once.
    Warn(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Released,
    Acquiring,
    Held,
    Grace(Instant),
    Unavailable(String),
}

/// The rules, free of I/O and clocks: inputs with the time, an action out.
#[derive(Debug)]
pub struct Machine {
    grace: Duration,
    open: u32,
    phase: Phase,
    /// When the count last fell to 0 (a close during acquisition starts the grace then).
    closed_at: Option<Instant>,
    warned: bool,
}

impl Machine {
    pub fn new(grace: Duration) -> Machine {
        Machine {
            grace,
            open: 0,
            phase: Phase::Released,
            closed_at: None,
            warned: false,
        }
    }

    /// The mount's open files are now `open`.
    pub fn handles(&mut self, open: u32, now: Instant) -> Action {
        let was = std::mem::replace(&mut self.open, open);
        if open == 0 && was > 0 {
            self.closed_at = Some(now);
        }
        match (&self.phase, open) {
            (Phase::Released, 1..) => {
                self.phase = Phase::Acquiring;
                Action::Acquire
            }
            // Tried again only at a first open, so a refusal is not asked on every open.
            (Phase::Unavailable(_), 1..) if was == 0 => {
                self.phase = Phase::Acquiring;
                Action::Acquire
            }
            (Phase::Held, 0) => {
                self.phase = Phase::Grace(now + self.grace);
                Action::None
            }
            (Phase::Grace(_), 1..) => {
                self.phase = Phase::Held;
                Action::None
            }
            _ => Action::None,
        }
    }

    /// The platform answered the last [`Action::Acquire`].
    pub fn acquired(&mut self, result: Result<(), InhibitError>, now: Instant) -> Action {
        match result {
            Ok(()) if self.open > 0 => {
                self.phase = Phase::Held;
                Action::None
            }
            Ok(()) => {
                // Everything closed while we waited: the grace runs from that close.
                let until = self.closed_at.unwrap_or(now) + self.grace;
                if until <= now {
                    self.phase = Phase::Released;
                    Action::Release
                } else {
                    self.phase = Phase::Grace(until);
                    Action::None
                }
            }
            Err(e) => {
                let reason = e.to_string();
                self.phase = Phase::Unavailable(reason.clone());
                if std::mem::replace(&mut self.warned, true) {
                    Action::None
                } else {
                    Action::Warn(reason)
                }
            }
        }
    }

    /// Time passed; releases when the grace is over.
    pub fn tick(&mut self, now: Instant) -> Action {
        match self.phase {
            Phase::Grace(until) if until <= now => {
                self.phase = Phase::Released;
                Action::Release
            }
            _ => Action::None,
        }
    }

    /// When [`Machine::tick`] has something to do next.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Grace(until) => Some(until),
            _ => None,
        }
    }

    pub fn state(&self) -> PowerState {
        let open = self.open;
        match &self.phase {
            Phase::Released => PowerState::Released,
            Phase::Acquiring => PowerState::Acquiring { open },
            Phase::Held => PowerState::Inhibited { open },
            Phase::Grace(until) => PowerState::Grace { until: *until },
            Phase::Unavailable(reason) => PowerState::Unavailable {
                reason: reason.clone(),
                open,
            },
        }
    }
}

/// The mount's handle count as last heard, with the change number it is at (None: take
/// whatever comes next, e.g. after the mount daemon went away).
#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    open: u32,
    change: Option<u32>,
}

/// True if change `a` comes after `b`, modulo 2^32 (the daemon's counter wraps).
fn newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// The control plane's side of power management: takes counts, runs the machine and the
/// backend on a task of its own, and tells its state.
#[derive(Debug)]
pub struct PowerManager {
    heard: watch::Sender<Heard>,
    state: watch::Receiver<PowerState>,
}

impl PowerManager {
    /// Starts the manager with the platform's backend (needs a tokio runtime).
    pub fn start(config: PowerConfig) -> PowerManager {
        match config.grace {
            Some(grace) => PowerManager::with_inhibitor(grace, platform_inhibitor()),
            None => PowerManager::disabled(),
        }
    }

    /// A manager that never inhibits (`--no-inhibit-sleep`).
    pub fn disabled() -> PowerManager {
        PowerManager {
            heard: watch::Sender::new(Heard::default()),
            state: watch::channel(PowerState::Disabled).1,
        }
    }

    pub fn with_inhibitor(grace: Duration, inhibitor: impl Inhibitor) -> PowerManager {
        let heard = watch::Sender::new(Heard::default());
        let (state_tx, state) = watch::channel(PowerState::Released);
        tokio::spawn(drive(
            Machine::new(grace),
            inhibitor,
            heard.subscribe(),
            state_tx,
        ));
        PowerManager { heard, state }
    }

    /// A handle event: `open` files after change `change`. Ignored if older than what we
    /// know. Never waits.
    pub fn observe(&self, open: u32, change: u32) {
        self.heard.send_if_modified(|heard| {
            if heard.change.is_some_and(|known| !newer(change, known)) {
                return false;
            }
            *heard = Heard {
                open,
                change: Some(change),
            };
            true
        });
    }

    /// The count from `GetStatus` just after (re)subscribing: the new baseline, whatever
    /// was heard before. Never waits.
    pub fn resync(&self, open: u32, change: u32) {
        self.heard.send_replace(Heard {
            open,
            change: Some(change),
        });
    }

    /// The mount daemon went away (its events stream ended): nothing of it is open any more,
    /// and its successor counts changes from scratch.
    pub fn mount_gone(&self) {
        self.heard.send_replace(Heard::default());
    }

    /// The current state; cheap and never waits (a clone out of a watch channel).
    pub fn state(&self) -> PowerState {
        self.state.borrow().clone()
    }

    /// Follows the state as it changes (e.g. for a metric).
    pub fn subscribe(&self) -> watch::Receiver<PowerState> {
        self.state.clone()
    }
}

/// Runs `machine` with `inhibitor`: the only place that waits on the platform.
async fn drive(
    mut machine: Machine,
    inhibitor: impl Inhibitor,
    mut heard: watch::Receiver<Heard>,
    state: watch::Sender<PowerState>,
) {
    let mut held: Option<Inhibition> = None;
    let mut pending: Option<Acquiring> = None;
    loop {
        state.send_if_modified(|s| {
            let now = machine.state();
            (*s != now).then(|| *s = now).is_some()
        });
        let deadline = machine.deadline();
        let action = tokio::select! {
            changed = heard.changed() => {
                if changed.is_err() {
                    return; // The manager is gone; dropping `held` releases.
                }
                let open = heard.borrow_and_update().open;
                machine.handles(open, Instant::now())
            }
            result = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                pending = None;
                let result = result.map(|inhibition| {
                    tracing::info!("sleep inhibited while files of the mount are open");
                    held = Some(inhibition);
                });
                machine.acquired(result, Instant::now())
            }
            () = sleep_until(deadline), if deadline.is_some() => machine.tick(Instant::now()),
        };
        match action {
            Action::None => {}
            Action::Acquire => {
                let acquiring = inhibitor.acquire();
                pending = Some(Box::pin(async move {
                    tokio::time::timeout(ACQUIRE_TIMEOUT, acquiring)
                        .await
                        .unwrap_or(Err(InhibitError::TimedOut(ACQUIRE_TIMEOUT)))
                }));
            }
            Action::Release => {
                held = None;
                tracing::info!("sleep inhibitor released");
            }
            Action::Warn(reason) => tracing::warn!(
                "cannot inhibit sleep while files are open: {reason} (not logged again)"
            ),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// The backend of this platform.
fn platform_inhibitor() -> impl Inhibitor {
    #[cfg(target_os = "linux")]
    return logind::Logind::default();
    #[cfg(target_os = "macos")]
    return macos::Caffeinate;
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    return Unsupported;
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
struct Unsupported;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
impl Inhibitor for Unsupported {
    fn acquire(&self) -> Acquiring {
        Box::pin(async { Err(InhibitError::Unsupported) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A machine with one file open and the inhibitor granted at `t`.
    fn inhibited_at(t: Instant) -> Machine {
        let mut m = Machine::new(GRACE);
        m.handles(1, t);
        m.acquired(Ok(()), t);
        m
    }

    #[test]
    fn acquires_on_the_first_open_only() {
        let t = Instant::now();
        let mut m = Machine::new(GRACE);
        assert_eq!(m.state(), PowerState::Released);
        assert_eq!(m.handles(1, t), Action::Acquire);
        assert_eq!(m.state(), PowerState::Acquiring { open: 1 });
        assert_eq!(m.handles(2, t), Action::None);
        assert_eq!(m.acquired(Ok(()), t), Action::None);
        assert_eq!(m.state(), PowerState::Inhibited { open: 2 });
        assert_eq!(m.handles(3, t), Action::None);
        assert!(m.state().inhibited());
    }

    #[test]
    fn releases_after_the_grace() {
        let t = Instant::now();
        let mut m = inhibited_at(t);
        assert_eq!(m.handles(0, t + secs(1)), Action::None);
        assert_eq!(
            m.state(),
            PowerState::Grace {
                until: t + secs(31)
            }
        );
        assert!(m.state().inhibited());
        assert_eq!(m.deadline(), Some(t + secs(31)));
        assert_eq!(m.tick(t + secs(30)), Action::None);
        assert_eq!(m.tick(t + secs(31)), Action::Release);
        assert_eq!(m.state(), PowerState::Released);
        assert!(!m.state().inhibited());
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn a_reopen_during_the_grace_keeps_the_inhibitor() {
        let t = Instant::now();
        let mut m = inhibited_at(t);
        m.handles(0, t + secs(1));
        assert_eq!(m.handles(1, t + secs(2)), Action::None, "no second acquire");
        assert_eq!(m.state(), PowerState::Inhibited { open: 1 });
        assert_eq!(m.deadline(), None);
        assert_eq!(
            m.tick(t + secs(100)),
            Action::None,
            "the release was cancelled"
        );
        // The grace starts over from the next last close.
        m.handles(0, t + secs(50));
        assert_eq!(m.tick(t + secs(79)), Action::None);
        assert_eq!(m.tick(t + secs(80)), Action::Release);
    }

    #[test]
    fn a_close_while_acquiring_starts_the_grace_at_the_close() {
        let t = Instant::now();
        let mut m = Machine::new(GRACE);
        m.handles(1, t);
        m.handles(0, t + secs(1));
        assert_eq!(m.acquired(Ok(()), t + secs(2)), Action::None);
        assert_eq!(
            m.state(),
            PowerState::Grace {
                until: t + secs(31)
            }
        );
        // Granted only after the grace already ran out: released at once.
        let mut late = Machine::new(GRACE);
        late.handles(1, t);
        late.handles(0, t);
        assert_eq!(late.acquired(Ok(()), t + secs(40)), Action::Release);
        assert_eq!(late.state(), PowerState::Released);
    }

    #[test]
    fn a_failure_is_logged_once_and_the_state_says_unavailable() {
        let t = Instant::now();
        let mut m = Machine::new(GRACE);
        let refused = || Err(InhibitError::Refused("Access denied".into()));
        m.handles(1, t);
        assert_eq!(
            m.acquired(refused(), t),
            Action::Warn("refused: Access denied".into())
        );
        assert_eq!(
            m.state(),
            PowerState::Unavailable {
                reason: "refused: Access denied".into(),
                open: 1
            }
        );
        assert!(!m.state().inhibited());
        // More opens while unavailable do not ask again.
        assert_eq!(m.handles(2, t), Action::None);
        assert_eq!(m.handles(0, t), Action::None);
        assert_eq!(m.tick(t + secs(100)), Action::None);
        // The next first open asks again, and a second failure is not logged.
        assert_eq!(m.handles(1, t + secs(200)), Action::Acquire);
        assert_eq!(m.acquired(refused(), t + secs(200)), Action::None);
        // A later success works as usual.
        m.handles(0, t + secs(201));
        assert_eq!(m.handles(1, t + secs(202)), Action::Acquire);
        assert_eq!(m.acquired(Ok(()), t + secs(202)), Action::None);
        assert_eq!(m.state(), PowerState::Inhibited { open: 1 });
    }

    #[test]
    fn change_numbers_order_events_modulo_2_32() {
        assert!(newer(2, 1));
        assert!(!newer(1, 2));
        assert!(!newer(5, 5));
        assert!(newer(0, u32::MAX), "wrapped around");
        assert!(!newer(u32::MAX, 0));
    }

    /// A backend that counts acquisitions and releases, answering as told.
    #[derive(Clone, Default)]
    struct Fake {
        acquired: std::sync::Arc<std::sync::atomic::AtomicU32>,
        released: std::sync::Arc<std::sync::atomic::AtomicU32>,
        refuse: bool,
    }

    struct FakeInhibition(std::sync::Arc<std::sync::atomic::AtomicU32>);

    impl Drop for FakeInhibition {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Inhibitor for Fake {
        fn acquire(&self) -> Acquiring {
            let (acquired, released, refuse) =
                (self.acquired.clone(), self.released.clone(), self.refuse);
            Box::pin(async move {
                acquired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if refuse {
                    return Err(InhibitError::Unreachable("no system bus".into()));
                }
                Ok(Box::new(FakeInhibition(released)) as Inhibition)
            })
        }
    }

    async fn until_state(power: &PowerManager, want: impl Fn(&PowerState) -> bool) {
        let mut states = power.subscribe();
        tokio::time::timeout(secs(10), states.wait_for(want))
            .await
            .expect("state reached in time")
            .expect("manager running");
    }

    #[tokio::test]
    async fn resyncs_after_missed_events() {
        let fake = Fake::default();
        let power = PowerManager::with_inhibitor(Duration::from_millis(10), fake.clone());
        power.observe(1, 10);
        until_state(&power, |s| matches!(s, PowerState::Inhibited { open: 1 })).await;
        // Out of order: change 9 (older) must not undo change 10.
        power.observe(0, 9);
        power.observe(2, 12);
        until_state(&power, |s| matches!(s, PowerState::Inhibited { open: 2 })).await;
        // Events were missed; on reconnecting, GetStatus says all are closed.
        power.resync(0, 20);
        until_state(&power, |s| *s == PowerState::Released).await;
        // An event from before the resync's snapshot is ignored.
        power.observe(3, 15);
        tokio::task::yield_now().await;
        assert_eq!(power.state(), PowerState::Released);
        // The mount daemon went away and a new one counts from 0 again.
        power.observe(1, 21);
        until_state(&power, |s| s.inhibited()).await;
        power.mount_gone();
        until_state(&power, |s| *s == PowerState::Released).await;
        power.observe(1, 1);
        until_state(&power, |s| s.inhibited()).await;
        use std::sync::atomic::Ordering::SeqCst;
        assert_eq!(fake.acquired.load(SeqCst), 3);
        assert_eq!(fake.released.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_missing_platform_leaves_the_state_unavailable() {
        let fake = Fake {
            refuse: true,
            ..Fake::default()
        };
        let power = PowerManager::with_inhibitor(GRACE, fake.clone());
        power.observe(1, 1);
        until_state(&power, |s| matches!(s, PowerState::Unavailable { .. })).await;
        assert_eq!(
            power.state(),
            PowerState::Unavailable {
                reason: "no system bus".into(),
                open: 1
            }
        );
    }

    #[test]
    fn disabled_stays_disabled() {
        let power = PowerManager::disabled();
        power.observe(1, 1);
        assert_eq!(power.state(), PowerState::Disabled);
    }
}
