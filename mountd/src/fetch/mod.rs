//! The data path's network side: range fetches from an entry's temp URL into its
//! backing store.
//!
//! FUSE callbacks hand work to the fetcher with [`Fetcher::start`], which only spawns a
//! task on the runtime (no waiting). Each task fetches one chunk range with a single
//! ranged GET from a [`RangeSource`] (HTTP in the daemon, memory in tests), writes the
//! body into the store as it streams, and marks chunks present as soon as each is
//! complete, so parked reads are answered while the rest of the range is still arriving.
//! Requests are pinned to the staged version (`If-Match`, or `If-Unmodified-Since` without
//! an ETag): a changed object fails reads instead of mixing bytes.
//!
//! After a failed attempt, what to do is decided by `policy::next_step`, a pure function
//! of the error and the counts: retry after a back-off (or the server's Retry-After),
//! ask the control plane for a new temp URL (a 401/403 is reported as an event and the
//! fetch waits, asynchronously, for the renewed one), or give up. No slot is held during
//! any of those waits: an attempt takes its slots (the object's, then its origin's, see
//! `origins`) when it starts and lets go when it ends. Each origin's circuit breaker
//! fails fetches at once while the origin is dead (no connection, or no answer within the
//! stall timeout; see `policy`), with the reason in the reads' errors and in the entry's
//! listing. An origin that answers, even with errors, is retried, never cut off.
//!
//! A fetch task owes its chunks until it delivers them: if it ends any other way
//! (returns early, panics, is cancelled with the runtime), its drop guard ([`Owed`])
//! releases them and fails the reads parked on them, so nothing waits for a fetch that
//! no longer exists.
//!
//! Each fetch is a `fetch` span, traced as a child of the read that started it (reads that
//! share it link to it, see `Object::link_running_fetches`), and is counted in
//! [`FetchStats`] for metrics.
//!
//! Proven by: `policy` (every decision and breaker transition), `origins` (a busy origin
//! never takes another's slot), `fs::tests` (a healthy read is answered while 36 reads of a
//! hung remote hold what they can; the reference test over hung, failing and stalling
//! sources), and on real mounts `tests/data_path.rs` (dead origins never starve a healthy
//! one, within a read deadline shorter than the stall timeout; random faults).

mod origins;
pub mod parallelism;
pub mod policy;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fusestream_shared::telemetry::TraceParent;
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

pub use origins::origin_of;
use origins::{Origin, Origins, Slot};
use policy::{Admission, Next};
use source::{HttpSource, RangeRequest, RangeResponse, RangeSource};

use crate::FsError;
use crate::cache::Cache;
use crate::events::Events;
use crate::object::Object;
use crate::store::{
    BackingStore, CHUNK_SIZE, ChunkAssembler, ChunkRange, Completed, Received, StreamChunk,
};

/// How long a fetch whose URL was rejected waits for a renewed one.
const RENEWAL_WAIT: Duration = Duration::from_secs(30);
/// Fetches at least this long allocate their blocks first (see `BackingStore::allocate`).
const PREALLOCATE_MIN: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Fetches running at once beyond each origin's reserved one, shared by all origins.
    pub max_concurrent: usize,
    /// Fetches of one origin running at once.
    pub per_origin: usize,
    /// How many prefetches may run at once (see [`Fetcher::try_prefetch`]).
    pub max_prefetches: usize,
    /// A response or body that delivers nothing for this long is abandoned and retried.
    pub stall_timeout: Duration,
    /// Attempts per range before reads fail.
    pub max_attempts: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            // Room for one object of a per-connection-capped remote to climb to its bound
            // (`parallelism::MAX_STREAMS`) and for others beside it.
            max_concurrent: 32,
            per_origin: parallelism::MAX_STREAMS,
            max_prefetches: 4,
            stall_timeout: Duration::from_secs(10),
            max_attempts: 4,
        }
    }
}

/// Why one attempt failed. Messages never contain the URL (it carries a signature).
#[derive(Debug, Error)]
pub enum FetchError {
    /// No response: the connection failed before a response head arrived.
    #[error("{0}")]
    Network(String),
    /// No response head within the stall timeout.
    #[error("no answer for {0:?}")]
    Stalled(Duration),
    /// The response began, then its body failed: reset, cut short, or stalled.
    #[error("{message}")]
    Body { message: String, stalled: bool },
    #[error("HTTP {status}")]
    Status {
        status: reqwest::StatusCode,
        /// The server's Retry-After, if it sent one (seconds form).
        retry_after: Option<Duration>,
    },
    #[error("temp URL rejected (HTTP {status})")]
    Rejected {
        status: reqwest::StatusCode,
        /// Generation of the URL that was rejected.
        generation: u64,
    },
    #[error("{0}")]
    Changed(String),
    #[error("{0}")]
    Protocol(String),
    #[error("writing the backing store: {0}")]
    Store(std::io::Error),
}

/// Why fetch attempts fail, as the `reason` label of `fusestream_fetch_errors_total`.
pub const ERROR_REASONS: [&str; 7] = [
    "transport",
    "stalled",
    "status",
    "rejected",
    "changed",
    "protocol",
    "disk",
];

/// Fetch counters of one fetcher, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct FetchStats {
    bytes: AtomicU64,
    retries: AtomicU64,
    refused: AtomicU64,
    /// Responses by HTTP status, and requests that got none ("error").
    requests: Mutex<BTreeMap<String, u64>>,
    errors: [AtomicU64; ERROR_REASONS.len()],
}

impl FetchStats {
    /// Bytes received from remotes.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Fetches failed at once because their origin's breaker was open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests by outcome: the HTTP status, or "error" when no response came.
    pub fn requests(&self) -> Vec<(String, u64)> {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Failed attempts by reason (see [`ERROR_REASONS`]).
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ERROR_REASONS
            .iter()
            .zip(&self.errors)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
    }

    fn request(&self, outcome: String) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry(outcome).or_default() += 1;
    }
}

impl FetchError {
    /// Its `reason` label (an entry of [`ERROR_REASONS`]).
    fn reason(&self) -> usize {
        match self {
            FetchError::Network(_) | FetchError::Body { stalled: false, .. } => 0,
            FetchError::Stalled(_) | FetchError::Body { stalled: true, .. } => 1,
            FetchError::Status { .. } => 2,
            FetchError::Rejected { .. } => 3,
            FetchError::Changed(_) => 4,
            FetchError::Protocol(_) => 5,
            FetchError::Store(_) => 6,
        }
    }

    /// Whether another attempt may succeed.
    fn retryable(&self) -> bool {
        match self {
            FetchError::Network(_) | FetchError::Stalled(_) | FetchError::Body { .. } => true,
            FetchError::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 408 | 429)
            }
            FetchError::Rejected { .. }
            | FetchError::Changed(_)
            | FetchError::Protocol(_)
            | FetchError::Store(_) => false,
        }
    }

    /// Whether the failure says the origin is not answering at all (no connection, or no
    /// response within the stall timeout). An origin that answers, even with 503 or a
    /// body cut short, is alive: its answers are retried (Retry-After honoured) without
    /// holding a slot, but never make its breaker fail other fetches.
    fn origin_dead(&self) -> bool {
        matches!(self, FetchError::Network(_) | FetchError::Stalled(_))
    }
}

/// What a running attempt holds: a place under its object's stream limit and a slot of
/// its origin.
struct Held {
    _object: parallelism::Pass,
    _origin: Slot,
    /// A prefetch's first attempt also holds one of the prefetch permits.
    _prefetch: Option<OwnedSemaphorePermit>,
}

#[derive(Debug, Clone)]
pub struct Fetcher {
    source: Arc<dyn RangeSource>,
    origins: Arc<Origins>,
    /// Taken by prefetches only, for their first attempt.
    prefetch_permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    config: FetchConfig,
    cache: Arc<Cache>,
    events: Arc<Events>,
    stats: Arc<FetchStats>,
}

/// The chunks a fetch task still owes. If the task ends without delivering them (it
/// returned early, panicked, or was cancelled), dropping this releases them and fails the
/// reads parked on them: a later read fetches them again.
struct Owed {
    object: Arc<Object>,
    chunks: ChunkRange,
    keep: Keep,
}

/// Where a fetch keeps what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// In the store file (random reads, the head prefetch: bytes that may be read again).
    File,
    /// In memory, chunk by chunk, while the stream memory budget allows, else in the file
    /// (a sequential reader's: see `store::memory`).
    Memory,
}

impl Owed {
    /// Everything from `byte` on is still owed.
    fn delivered_up_to(&mut self, byte: u64) {
        self.chunks.first = (byte / CHUNK_SIZE).max(self.chunks.first);
    }

    fn settled(&mut self) {
        self.chunks.first = self.chunks.end;
    }

    /// Fails the rest with `error` (a changed object poisons the whole store). The chunks
    /// are released either way, so even a poisoned store can be evicted.
    fn fail(&mut self, error: FsError) {
        self.object.store.abandon(self.chunks, error.clone());
        if let FsError::Changed(_) = error {
            self.object.store.poison(error);
        }
        self.settled();
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        if self.chunks.first < self.chunks.end {
            self.object.store.abandon(
                self.chunks,
                FsError::Fetch("the fetch ended before its bytes arrived".into()),
            );
        }
    }
}

impl Fetcher {
    /// A fetcher over `source`.
    pub fn new(
        runtime: tokio::runtime::Handle,
        config: FetchConfig,
        cache: Arc<Cache>,
        events: Arc<Events>,
        source: Arc<dyn RangeSource>,
    ) -> Fetcher {
        Fetcher {
            source,
            origins: Arc::new(Origins::new(config.max_concurrent, config.per_origin)),
            prefetch_permits: Arc::new(Semaphore::new(config.max_prefetches)),
            runtime,
            config,
            cache,
            events,
            stats: Arc::default(),
        }
    }

    /// The daemon's fetcher: HTTP(S), pooling as many connections per host as fetches
    /// of one origin may run.
    pub fn http(
        runtime: tokio::runtime::Handle,
        config: FetchConfig,
        cache: Arc<Cache>,
        events: Arc<Events>,
    ) -> reqwest::Result<Fetcher> {
        let client = fusestream_shared::http::client_builder()
            .pool_max_idle_per_host(config.per_origin)
            .build()?;
        let source = Arc::new(HttpSource::new(client));
        Ok(Fetcher::new(runtime, config, cache, events, source))
    }

    pub fn stats(&self) -> &FetchStats {
        &self.stats
    }

    /// Why fetches from `url`'s origin fail at once now, if they do.
    pub fn origin_trouble(&self, url: &str) -> Option<String> {
        self.origins.get(url).trouble()
    }

    /// Starts fetching `chunks` of `object`, kept as `keep` says. Never waits: safe in a
    /// FUSE callback. The fetch's span is traced as a child of `cause` (the read that
    /// needs the chunks).
    pub fn start(&self, object: Arc<Object>, chunks: ChunkRange, cause: &TraceParent, keep: Keep) {
        self.spawn(object, chunks, cause, None, keep);
    }

    /// Starts fetching the chunks `claim` marks in flight (at most one fetch's worth), if
    /// slots are free now and the origin is not down: a prefetch never queues to start,
    /// and at most `max_prefetches` run at once. Returns whether it started. Never waits.
    /// Should its first attempt fail, it retries like any fetch (a read may share it by
    /// then), queueing only behind fetches of its own origin.
    pub fn try_prefetch(
        &self,
        object: Arc<Object>,
        cause: &TraceParent,
        claim: impl FnOnce() -> Option<ChunkRange>,
    ) -> bool {
        let origin = self.origins.get(&object.temp_url().url);
        if !origin.breaker().is_closed() {
            return false;
        }
        let Ok(prefetch) = self.prefetch_permits.clone().try_acquire_owned() else {
            return false;
        };
        let Some(object_permit) = object.fetch_gate.try_enter() else {
            return false;
        };
        let Some(slot) = self.origins.try_acquire(&origin) else {
            return false;
        };
        let Some(chunks) = claim() else {
            return false;
        };
        let held = Held {
            _object: object_permit,
            _origin: slot,
            _prefetch: Some(prefetch),
        };
        self.spawn(object, chunks, cause, Some(held), Keep::File);
        true
    }

    fn spawn(
        &self,
        object: Arc<Object>,
        chunks: ChunkRange,
        cause: &TraceParent,
        held: Option<Held>,
        keep: Keep,
    ) {
        let range = object.store.byte_range(chunks);
        let span = tracing::debug_span!(
            parent: None,
            "fetch",
            object = object.name,
            bytes = %format_args!("{}..{}", range.start, range.end),
            http.status_code = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        cause.adopt(&span);
        object.fetch_started(chunks, &span);
        let fetcher = self.clone();
        let fetch = async move {
            let owed = Owed {
                object: object.clone(),
                chunks,
                keep,
            };
            fetcher.run(owed, held).await;
            object.fetch_ended(chunks);
        };
        self.runtime.spawn(fetch.instrument(span));
    }

    /// The slots for one attempt of a fetch of `object` from `origin` starting at byte
    /// `at`: the object's first (so one busy object can not hold its origin's slots idle;
    /// in turn: see `parallelism`), then the origin's.
    async fn acquire(&self, object: &Object, origin: &Origin, at: u64) -> Option<Held> {
        let turn = parallelism::Turn::new(object.store.awaited(at / CHUNK_SIZE), at);
        let object_permit = object.fetch_gate.enter(turn).await;
        let slot = self.origins.acquire(origin).await?;
        Some(Held {
            _object: object_permit,
            _origin: slot,
            _prefetch: None,
        })
    }

    /// Fetches what `owed` names, attempt after attempt; `first` are the slots a prefetch
    /// took when it started, for its first attempt.
    async fn run(self, mut owed: Owed, mut first: Option<Held>) {
        let object = owed.object.clone();
        let range = object.store.byte_range(owed.chunks);
        let mut next = range.start;
        let mut attempt = 1;
        let mut renewals = 0;
        // Recorded once, at the end: the log layer would repeat a field recorded per attempt.
        let record_attempts = |attempt: u32| {
            tracing::Span::current().record("attempts", attempt);
        };
        loop {
            let origin = self.origins.get(&object.temp_url().url);
            if let Admission::Refuse(why) = origin.breaker().admit(Instant::now()) {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                record_attempts(attempt - 1);
                owed.fail(FsError::Unavailable(format!("{} {why}", origin.name)));
                return;
            }
            let held = match first.take() {
                Some(held) => held,
                None => match self.acquire(&object, &origin, next).await {
                    Some(held) => held,
                    None => return, // shutting down; `owed` releases the chunks
                },
            };
            let result = self.attempt(&mut owed, &mut next, range.end).await;
            drop(held);
            let error = match result {
                Ok(()) => {
                    origin.breaker().answered();
                    record_attempts(attempt);
                    return;
                }
                Err(e) => e,
            };
            origin.breaker().failed(Instant::now(), &error);
            self.stats.errors[error.reason()].fetch_add(1, Ordering::Relaxed);
            match policy::next_step(&error, attempt, renewals, self.config.max_attempts) {
                Next::Renew => {
                    let FetchError::Rejected { status, generation } = &error else {
                        unreachable!("only a rejected URL is renewed")
                    };
                    renewals += 1;
                    tracing::info!(name = object.name, %status, "temp URL rejected; asking for a new one");
                    self.events
                        .url_rejected(&object.name, object.uid, status.as_u16());
                    if object.url_renewed_after(*generation, RENEWAL_WAIT).await {
                        continue;
                    }
                    record_attempts(attempt);
                    tracing::warn!(%error, source = %object.source, "fetch failed");
                    owed.fail(FsError::Fetch(format!(
                        "temp URL rejected (HTTP {status}) and not renewed"
                    )));
                    return;
                }
                Next::Retry(pause) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, attempt, "fetch failed; retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Next::Fail => {
                    record_attempts(attempt);
                    tracing::warn!(%error, source = %object.source, "fetch failed");
                    owed.fail(match error {
                        FetchError::Changed(reason) => FsError::Changed(reason),
                        e => FsError::Fetch(e.to_string()),
                    });
                    return;
                }
            }
        }
    }

    /// One request for bytes `*next..end`; advances `*next` past every byte stored, and
    /// `owed` past every chunk delivered.
    async fn attempt(&self, owed: &mut Owed, next: &mut u64, end: u64) -> Result<(), FetchError> {
        let object = owed.object.clone();
        if owed.keep == Keep::Memory {
            // Chunks are kept whole: a resumed attempt starts at its chunk's start (the
            // part received before was in the failed attempt's buffer).
            *next = *next / CHUNK_SIZE * CHUNK_SIZE;
        } else {
            self.open_store(&object)?;
        }
        // Read-ahead sized fetches only: the saving is per byte, while the call can wait on
        // the file system's journal, which a small (random) read would feel. Again on a
        // retry: cheap where already allocated, and space may have been freed.
        if owed.keep == Keep::File && end - *next >= PREALLOCATE_MIN {
            object
                .store
                .allocate(*next..end)
                .map_err(FetchError::Store)?;
        }
        let temp_url = object.temp_url();
        let version = &object.version;
        // If-Match needs a strong ETag; a weak one falls back to the modification time.
        let strong_etag = !version.etag.is_empty() && !version.etag.starts_with("W/");
        let request = RangeRequest {
            url: temp_url.url.clone(),
            start: *next,
            end,
            if_match: strong_etag.then(|| version.etag.clone()),
            if_unmodified_since: if strong_etag {
                None
            } else {
                version.last_modified
            },
        };
        let stall = self.config.stall_timeout;
        let sent = tokio::time::timeout(stall, self.source.get(request))
            .await
            .map_err(|_| FetchError::Stalled(stall))
            .and_then(|r| r.map_err(FetchError::Network));
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                self.stats.request("error".into());
                return Err(e);
            }
        };
        self.stats.request(response.status.to_string());
        tracing::Span::current().record("http.status_code", response.status);
        check_response(&response, *next, version.size).map_err(|e| match e {
            FetchError::Status { status, .. } if matches!(status.as_u16(), 401 | 403) => {
                FetchError::Rejected {
                    status,
                    generation: temp_url.generation,
                }
            }
            e => e,
        })?;

        let body = Body {
            response: &mut response,
            next,
            end,
        };
        match owed.keep {
            Keep::File => self.write_to_file(owed, body).await?,
            Keep::Memory => self.keep_chunks(owed, body).await?,
        }
        owed.settled();
        Ok(())
    }

    /// Gives `object`'s store its file if it has none (and tells the cache, which bounds
    /// how many are open): an entry costs a descriptor only from its first file fetch.
    fn open_store(&self, object: &Arc<Object>) -> Result<(), FetchError> {
        if object.store.open().map_err(FetchError::Store)? {
            self.cache.opened(object);
        }
        Ok(())
    }

    /// The next piece of `response`'s body: `None` at its end.
    async fn next_body_piece(
        &self,
        response: &mut RangeResponse,
    ) -> Result<Option<bytes::Bytes>, FetchError> {
        let stall = self.config.stall_timeout;
        tokio::time::timeout(stall, response.body.next())
            .await
            .map_err(|_| FetchError::Body {
                message: format!("body stalled: no data for {stall:?}"),
                stalled: true,
            })?
            .transpose()
            .map_err(|message| FetchError::Body {
                message,
                stalled: false,
            })
    }

    /// Counts `n` bytes received for `object`.
    fn received(&self, object: &Object, n: usize) {
        object.fetch_gate.received(n as u64, Instant::now());
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Answers the reads `ready` completed: here if their bytes are all in memory or
    /// nothing more will arrive (saving the hand-off, the larger part of a small random
    /// read's wait), else on the blocking pool (a pread and a write to /dev/fuse per read),
    /// so this task goes on receiving meanwhile.
    fn answer(ready: Completed, last: bool) {
        if ready.is_empty() {
            return;
        }
        if last || !ready.needs_file() {
            BackingStore::answer_all(ready);
        } else {
            tokio::task::spawn_blocking(move || BackingStore::answer_all(ready));
        }
    }

    /// Writes the body into the store file as it arrives, marking each chunk present as
    /// soon as it is complete.
    async fn write_to_file(&self, owed: &mut Owed, body: Body<'_>) -> Result<(), FetchError> {
        let (response, next, end) = (body.response, body.next, body.end);
        let object = owed.object.clone();
        // First chunk not yet complete (a resumed attempt may start inside it).
        let mut completed_up_to = *next / CHUNK_SIZE;
        while *next < end {
            let Some(mut data) = self.next_body_piece(response).await? else {
                return Err(body_ended(*next, end));
            };
            data.truncate((end - *next) as usize);
            self.received(&object, data.len());
            object
                .store
                .write(*next, &data)
                .map_err(FetchError::Store)?;
            *next += data.len() as u64;
            let done = if *next == object.size() {
                next.div_ceil(CHUNK_SIZE)
            } else {
                *next / CHUNK_SIZE
            };
            if done > completed_up_to {
                let ready = object.store.complete(ChunkRange {
                    first: completed_up_to,
                    end: done,
                });
                owed.delivered_up_to(done * CHUNK_SIZE);
                Self::answer(ready, *next == end);
                self.cache.grew();
                completed_up_to = done;
            }
        }
        Ok(())
    }

    /// Gathers the body chunk by chunk in memory, as the pieces it was received in, and
    /// hands each complete chunk to the store (see `store::memory`); a chunk the stream
    /// memory budget has no room for is written to the store file instead. `*next` stays
    /// at the start of the chunk being gathered.
    async fn keep_chunks(&self, owed: &mut Owed, body: Body<'_>) -> Result<(), FetchError> {
        let (response, next, end) = (body.response, body.next, body.end);
        let object = owed.object.clone();
        let mut assembler = ChunkAssembler::default();
        while *next < end {
            let Some(data) = self.next_body_piece(response).await? else {
                return Err(body_ended(*next + assembler.gathered() as u64, end));
            };
            let mut data = Received::new(data);
            data.truncate((end - *next) as usize - assembler.gathered());
            self.received(&object, data.len());
            let first = *next / CHUNK_SIZE;
            let mut whole = Vec::new();
            while !data.is_empty() {
                let chunk_len = CHUNK_SIZE.min(object.size() - *next) as usize;
                if let Some(chunk) = assembler.push(&mut data, chunk_len) {
                    *next += chunk.len() as u64;
                    whole.push(chunk);
                }
            }
            if !whole.is_empty() {
                let ready = self.keep_in_memory(&object, first, whole)?;
                owed.delivered_up_to(*next);
                Self::answer(ready, *next == end);
                if object.open_handles() == 0 {
                    // Closed while this was on its way: no reader will consume it.
                    object.store.drop_memory();
                }
            }
        }
        Ok(())
    }

    /// Stores whole chunks from `first` on: in memory while the budget has room, the rest
    /// in the file. Returns the reads they completed.
    fn keep_in_memory(
        &self,
        object: &Arc<Object>,
        first: u64,
        chunks: Vec<StreamChunk>,
    ) -> Result<Completed, FetchError> {
        let memory = &object.store.home().memory;
        let fits = chunks
            .iter()
            .take_while(|c| memory.try_take(c.len() as u64))
            .count();
        let mut chunks = chunks;
        let spill = chunks.split_off(fits);
        let mut ready = object.store.complete_in_memory(first, chunks);
        if !spill.is_empty() {
            self.open_store(object)?;
            let spill_first = first + fits as u64;
            for (i, chunk) in (spill_first..).zip(&spill) {
                let mut at = i * CHUNK_SIZE;
                for piece in chunk.slices(0, chunk.len()) {
                    object.store.write(at, piece).map_err(FetchError::Store)?;
                    at += piece.len() as u64;
                }
            }
            ready.extend(object.store.complete(ChunkRange {
                first: spill_first,
                end: spill_first + spill.len() as u64,
            }));
            self.cache.grew();
        }
        Ok(ready)
    }
}

/// The body of one attempt's response, and how far it has been stored: `*next` (the
/// attempt's progress, kept across attempts) up to `end`.
struct Body<'a> {
    response: &'a mut RangeResponse,
    next: &'a mut u64,
    end: u64,
}

fn body_ended(at: u64, end: u64) -> FetchError {
    FetchError::Body {
        message: format!("body ended at byte {at} of range ending at {end}"),
        stalled: false,
    }
}

/// Checks that `response` carries the object's bytes from `start`.
fn check_response(response: &RangeResponse, start: u64, size: u64) -> Result<(), FetchError> {
    let status = reqwest::StatusCode::from_u16(response.status)
        .map_err(|_| FetchError::Protocol(format!("HTTP status {}", response.status)))?;
    match response.status {
        206 => {
            let content_range = response.content_range.as_deref().unwrap_or_default();
            let (got_start, total) = parse_content_range(content_range).ok_or_else(|| {
                FetchError::Protocol(format!("bad Content-Range {content_range:?}"))
            })?;
            if got_start != start {
                return Err(FetchError::Protocol(format!(
                    "asked for bytes from {start}, got {content_range:?}"
                )));
            }
            if total.is_some_and(|t| t != size) {
                return Err(FetchError::Changed(format!(
                    "size is now {content_range:?}, was {size} when staged"
                )));
            }
            Ok(())
        }
        200 if start == 0 => Ok(()),
        200 => Err(FetchError::Protocol(
            "server ignored the Range header".into(),
        )),
        412 => Err(FetchError::Changed("precondition failed (HTTP 412)".into())),
        404 | 410 => Err(FetchError::Changed(format!(
            "object is gone (HTTP {status})"
        ))),
        416 => Err(FetchError::Changed(
            "range not satisfiable (HTTP 416)".into(),
        )),
        _ => Err(FetchError::Status {
            status,
            retry_after: response.retry_after,
        }),
    }
}

/// Parses `bytes START-END/TOTAL` into START and TOTAL (None for `*`).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, Some(100))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
