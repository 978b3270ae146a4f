//! Reads in flight, each answered exactly once, whichever path gets there first.
//!
//! A read that reaches the daemon can be answered by many paths: at once from the page
//! cache, by a blocking thread after a disk read, by the fetch that brings its chunks, by
//! a failed fetch, by its deadline, or by FUSE_INTERRUPT. Each of them goes through the
//! read's [`PendingRead`], whose reply can be taken once: the first path answers, the
//! others find it taken and do nothing. So "ends exactly once" is one `Option::take`
//! under a leaf lock, not an argument about which path runs when.
//!
//! Interrupts can arrive before the read they name. With one `/dev/fuse` descriptor per
//! thread (`clone_fd`), the kernel hands an INTERRUPT to whichever thread reads next,
//! possibly before the thread that got the READ has registered it; answering EAGAIN then
//! goes to the wrong descriptor, where the kernel does not find the request and drops the
//! interrupt for good (and with one FUSE thread, EAGAIN makes the kernel resend it at
//! once, spinning that thread). So [`ReadTable::interrupt`] never refuses: an interrupt
//! for a read not seen yet is remembered, and [`ReadTable::begin`] answers that read with
//! EINTR when it arrives (as libfuse does). Both happen under the same shard lock, so
//! whichever comes second sees the first. Remembered interrupts are bounded: a read
//! answered before its interrupt arrives leaves one behind, which expires.
//!
//! Locks: a shard of the table and a read's reply slot are never held together and never
//! held while a reply is sent; under a reply slot only the op registry's shard lock (a
//! leaf) is taken, to say what the read waits for. Proven by the shuttle model in `tests` (every
//! interleaving of begin, interrupt, data, deadline answers once) and by the reference
//! test of the core (`fs::tests`).

use std::collections::HashMap;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use crate::FsError;
use crate::sync::{Arc, Mutex, Weak, lock};

/// Where a read's answer goes: a FUSE reply in the daemon, a channel in tests.
pub trait DataReply: Send {
    /// Answers with the concatenation of `parts` (see `store::memory`: a stream's bytes
    /// are sent from the pieces they were received in).
    fn data(self: Box<Self>, parts: &[IoSlice<'_>]);
    fn error(self: Box<Self>, error: FsError);
    /// The read is parked, waiting for `what` (for the in-flight listing).
    fn waiting(&self, _what: String) {}
    /// The span of the op this reply answers: fetches it starts are traced as its children.
    /// Behind an `Arc`, so handing it out calls nothing of the tracing layers.
    fn span(&self) -> Option<Arc<tracing::Span>> {
        None
    }
    /// Called once, when a path claims the reply to answer it, before the read leaves the
    /// table (so before an interrupt can find it gone). Lets the model test observe that
    /// order; nothing else needs it.
    fn claimed(&self) {}
}

const SHARDS: usize = 16;
/// Interrupts remembered per shard for reads not seen (yet); the oldest go first.
const EARLY_PER_SHARD: usize = 64;
/// How long an interrupt waits for its read. A read is registered microseconds after the
/// kernel sends it (FUSE callbacks never wait); one still unseen after this was answered
/// before its interrupt arrived.
const EARLY_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Shard {
    live: HashMap<u64, Weak<PendingRead>>,
    /// Interrupts of requests not seen yet, by request id, with when they came.
    early: HashMap<u64, Instant>,
}

impl Shard {
    fn remember_interrupt(&mut self, unique: u64, now: Instant) {
        self.early
            .retain(|_, at| now.saturating_duration_since(*at) < EARLY_TTL);
        if self.early.len() >= EARLY_PER_SHARD
            && let Some(oldest) = self
                .early
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(u, _)| *u)
        {
            self.early.remove(&oldest);
        }
        self.early.insert(unique, now);
    }
}

/// The reads in flight of one mount, by FUSE request id.
#[derive(Debug)]
pub struct ReadTable {
    shards: [Mutex<Shard>; SHARDS],
}

impl Default for ReadTable {
    fn default() -> Self {
        ReadTable {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

/// What [`ReadTable::interrupt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The read was waiting; it is answered with EINTR.
    Answered,
    /// The read was answered already; nothing to do.
    TooLate,
    /// The read has not arrived; it is answered with EINTR when it does.
    Remembered,
}

impl ReadTable {
    fn shard(&self, unique: u64) -> &Mutex<Shard> {
        &self.shards[(unique % SHARDS as u64) as usize]
    }

    /// Registers the read of FUSE request `unique`. `Err(reply)` if it was interrupted
    /// before it arrived: the caller answers it with EINTR.
    pub fn begin(
        self: &Arc<Self>,
        unique: u64,
        reply: Box<dyn DataReply>,
    ) -> Result<Arc<PendingRead>, Box<dyn DataReply>> {
        let mut shard = lock(self.shard(unique));
        if shard.early.remove(&unique).is_some() {
            return Err(reply);
        }
        let read = Arc::new(PendingRead {
            unique,
            reply: Mutex::new(Some(reply)),
            answered: tokio::sync::Notify::new(),
            table: Arc::downgrade(self),
        });
        shard.live.insert(unique, Arc::downgrade(&read));
        Ok(read)
    }

    /// FUSE_INTERRUPT of request `unique`: answers its read with EINTR, now or when it
    /// arrives. Never fails, never waits.
    pub fn interrupt(&self, unique: u64) -> Interrupt {
        let read = {
            let mut shard = lock(self.shard(unique));
            match shard.live.get(&unique).map(Weak::upgrade) {
                Some(Some(read)) => read,
                Some(None) => return Interrupt::TooLate,
                None => {
                    shard.remember_interrupt(unique, Instant::now());
                    return Interrupt::Remembered;
                }
            }
        };
        if read.error(FsError::Interrupted) {
            Interrupt::Answered
        } else {
            Interrupt::TooLate
        }
    }

    /// Reads registered and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.shards.iter().map(|s| lock(s).live.len()).sum()
    }

    fn answered(&self, unique: u64) {
        lock(self.shard(unique)).live.remove(&unique);
    }
}

/// One read in flight: its reply, which exactly one path takes and answers.
pub struct PendingRead {
    unique: u64,
    reply: Mutex<Option<Box<dyn DataReply>>>,
    /// Wakes the read's deadline timer once it is answered, so the timer ends with it.
    answered: tokio::sync::Notify,
    table: Weak<ReadTable>,
}

impl std::fmt::Debug for PendingRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRead")
            .field("unique", &self.unique)
            .field("answered", &self.is_answered())
            .finish()
    }
}

impl PendingRead {
    /// A read that no table tracks (interrupts can not reach it): for the core's callers
    /// that are not FUSE requests, and for tests.
    pub fn untracked(reply: Box<dyn DataReply>) -> Arc<PendingRead> {
        Arc::new(PendingRead {
            unique: 0,
            reply: Mutex::new(Some(reply)),
            answered: tokio::sync::Notify::new(),
            table: Weak::new(),
        })
    }

    pub fn is_answered(&self) -> bool {
        lock(&self.reply).is_none()
    }

    /// Takes the reply, for the one caller that answers it.
    fn take(&self) -> Option<Box<dyn DataReply>> {
        let reply = lock(&self.reply).take()?;
        reply.claimed();
        if let Some(table) = self.table.upgrade() {
            table.answered(self.unique);
        }
        self.answered.notify_one();
        Some(reply)
    }

    /// Answers with the concatenation of `parts`; false (and nothing sent) if the read
    /// was answered already.
    pub fn data(&self, parts: &[IoSlice<'_>]) -> bool {
        self.take().map(|reply| reply.data(parts)).is_some()
    }

    /// Answers with `error`; false (and nothing sent) if the read was answered already.
    pub fn error(&self, error: FsError) -> bool {
        self.take().map(|reply| reply.error(error)).is_some()
    }

    /// Says what the read waits for (for the in-flight listing), if it still waits. The
    /// one call made under the reply slot: it takes the op registry's shard lock, a leaf
    /// (order: reply slot, then registry shard).
    pub fn waiting(&self, what: String) {
        if let Some(reply) = lock(&self.reply).as_ref() {
            reply.waiting(what);
        }
    }

    /// The span of the read's op, while it is unanswered. Hold it briefly: a read's span
    /// ends when its last holder lets go, which must be before the reply is sent.
    pub fn span(&self) -> Option<Arc<tracing::Span>> {
        lock(&self.reply).as_ref().and_then(|r| r.span())
    }

    /// Completes once the read is answered (by any path).
    pub async fn until_answered(&self) {
        if !self.is_answered() {
            self.answered.notified().await;
        }
    }
}

impl Drop for PendingRead {
    /// The last holder let go without answering (a task holding it was cancelled at
    /// shutdown, or a bug): the reader still gets an answer rather than waiting forever.
    fn drop(&mut self) {
        let reply = self
            .reply
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(reply) = reply {
            if let Some(table) = self.table.upgrade() {
                table.answered(self.unique);
            }
            reply.error(FsError::Store("read dropped unanswered".into()));
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::mpsc;

    pub type Answer = Result<Vec<u8>, FsError>;

    /// A reply that sends its answer down a channel.
    pub struct ChannelReply(pub mpsc::Sender<Answer>);

    impl DataReply for ChannelReply {
        fn data(self: Box<Self>, parts: &[IoSlice<'_>]) {
            let _ = self
                .0
                .send(Ok(parts.iter().flat_map(|p| p.iter().copied()).collect()));
        }
        fn error(self: Box<Self>, error: FsError) {
            let _ = self.0.send(Err(error));
        }
    }

    pub fn reply() -> (Box<dyn DataReply>, mpsc::Receiver<Answer>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(ChannelReply(tx)), rx)
    }

    #[cfg(not(feature = "shuttle"))]
    #[test]
    fn an_interrupt_before_its_read_answers_the_read_with_eintr() {
        let table = Arc::new(ReadTable::default());
        assert_eq!(table.interrupt(7), Interrupt::Remembered);
        let (r, rx) = reply();
        let Err(r) = table.begin(7, r) else {
            panic!("the read was interrupted before it arrived")
        };
        r.error(FsError::Interrupted);
        assert_eq!(rx.try_recv().unwrap(), Err(FsError::Interrupted));
        // Remembered once: the next read with that id (ids wrap) is not affected.
        let (r, _rx) = reply();
        let read = table.begin(7, r).ok().unwrap();
        assert!(read.data(&[IoSlice::new(b"x")]));
    }

    #[cfg(not(feature = "shuttle"))]
    #[test]
    fn every_read_is_answered_once_whoever_comes_first() {
        let table = Arc::new(ReadTable::default());
        let (r, rx) = reply();
        let read = table.begin(9, r).ok().unwrap();
        assert_eq!(table.in_flight(), 1);
        assert_eq!(table.interrupt(9), Interrupt::Answered);
        assert!(!read.data(&[IoSlice::new(b"late")]), "answered already");
        assert!(!read.error(FsError::TimedOut(Duration::ZERO)));
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            [Err(FsError::Interrupted)]
        );
        assert_eq!(table.in_flight(), 0);
        assert_eq!(
            table.interrupt(9),
            Interrupt::Remembered,
            "gone from the table"
        );
    }

    #[cfg(not(feature = "shuttle"))]
    #[test]
    fn a_read_dropped_unanswered_is_answered_and_leaves_the_table() {
        let table = Arc::new(ReadTable::default());
        let (r, rx) = reply();
        drop(table.begin(11, r).ok().unwrap());
        assert!(matches!(rx.try_recv().unwrap(), Err(FsError::Store(_))));
        assert_eq!(table.in_flight(), 0);
    }

    #[cfg(not(feature = "shuttle"))]
    #[test]
    fn remembered_interrupts_are_bounded() {
        let table = Arc::new(ReadTable::default());
        for unique in 0..10_000 {
            table.interrupt(unique);
        }
        let early: usize = table.shards.iter().map(|s| lock(s).early.len()).sum();
        assert_eq!(early, SHARDS * EARLY_PER_SHARD);
    }

    /// Model checks: every interleaving of a read's arrival, its interrupt, its data and
    /// its deadline answers it exactly once, and an interrupt is never lost.
    #[cfg(feature = "shuttle")]
    mod shuttle_model {
        use super::*;
        use shuttle::thread;

        fn check(f: impl Fn() + Send + Sync + 'static) {
            // Fixed seed and iteration count: the same schedules in every CI run.
            let mut config = shuttle::Config::default();
            config.max_steps = shuttle::MaxSteps::FailAfter(100_000);
            let scheduler = shuttle::scheduler::RandomScheduler::new_from_seed(7, 2_000);
            shuttle::Runner::new(scheduler, config).run(f);
        }

        /// A reply that also raises a flag, seen by the model's threads, once it is claimed.
        struct FlaggedReply(ChannelReply, Arc<crate::sync::atomic::AtomicBool>);

        impl DataReply for FlaggedReply {
            fn claimed(&self) {
                self.1.store(true, crate::sync::atomic::Ordering::SeqCst);
            }
            fn data(self: Box<Self>, parts: &[IoSlice<'_>]) {
                Box::new(self.0).data(parts)
            }
            fn error(self: Box<Self>, error: FsError) {
                Box::new(self.0).error(error)
            }
        }

        #[test]
        fn shuttle_begin_interrupt_data_and_deadline_answer_once() {
            check(|| {
                let table = Arc::new(ReadTable::default());
                let (tx, rx) = mpsc::channel();
                let answered = Arc::new(crate::sync::atomic::AtomicBool::new(false));
                let r: Box<dyn DataReply> =
                    Box::new(FlaggedReply(ChannelReply(tx), answered.clone()));
                let interrupter = {
                    let table = table.clone();
                    thread::spawn(move || {
                        let outcome = table.interrupt(5);
                        (
                            outcome,
                            answered.load(crate::sync::atomic::Ordering::SeqCst),
                        )
                    })
                };
                // The reader's request arrives; its data and its deadline then race.
                let reader = {
                    let table = table.clone();
                    thread::spawn(move || match table.begin(5, r) {
                        Err(r) => r.error(FsError::Interrupted),
                        Ok(read) => {
                            let deadline = {
                                let read = read.clone();
                                thread::spawn(move || {
                                    read.error(FsError::TimedOut(Duration::ZERO));
                                })
                            };
                            read.data(&[IoSlice::new(b"d")]);
                            deadline.join().unwrap();
                        }
                    })
                };
                let (outcome, answered_before) = interrupter.join().unwrap();
                reader.join().unwrap();
                let answers: Vec<Answer> = rx.try_iter().collect();
                assert_eq!(answers.len(), 1, "answered exactly once: {answers:?}");
                let interrupted = answers[0] == Err(FsError::Interrupted);
                match outcome {
                    Interrupt::Answered => assert!(interrupted),
                    // Remembered while no path had claimed the read: it had not arrived, so
                    // it must get EINTR when it does. (Remembered after it was claimed is a
                    // leftover that expires.)
                    Interrupt::Remembered if !answered_before => {
                        assert!(interrupted, "interrupt lost: {answers:?}")
                    }
                    Interrupt::Remembered => {}
                    // Another path had taken the reply (its answer may still be on its way).
                    Interrupt::TooLate => assert!(!interrupted),
                }
                assert_eq!(table.in_flight(), 0);
            });
        }
    }
}
