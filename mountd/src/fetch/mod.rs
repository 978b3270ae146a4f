//! The data path's network side: HTTP range fetches from an entry's temp URL into its
//! backing store.
//!
//! FUSE callbacks hand work to the fetcher with [`Fetcher::start`], which only spawns a
//! task on the runtime (no waiting). Each task fetches one chunk range with a single
//! `GET` + `Range`, writes the body into the store as it streams, and marks chunks present
//! as soon as each is complete, so parked reads are answered while the rest of the range
//! is still arriving. Requests are pinned to the staged version (`If-Match`, or
//! `If-Unmodified-Since` without an ETag): a changed object fails reads instead of mixing
//! bytes. Transient failures (connect errors, resets, 5xx, 429, a body that stalls) are
//! retried with backoff (or the server's Retry-After), resuming at the first byte not yet
//! received. A temp URL refused with 401/403 is reported as an event; the fetch waits,
//! asynchronously, for the control plane to install a new one, then resumes.
//!
//! Each fetch is a `fetch` span, traced as a child of the read that started it (reads that
//! share it link to it, see `Object::link_running_fetches`), and is counted in [`STATS`]
//! for metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fusestream_shared::telemetry::TraceParent;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::FsError;
use crate::cache::Cache;
use crate::events::Events;
use crate::object::Object;
use crate::store::{CHUNK_SIZE, ChunkRange};

/// The longest Retry-After honoured; a server asking for more gets this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long a fetch whose URL was rejected waits for a renewed one.
const RENEWAL_WAIT: Duration = Duration::from_secs(30);
/// Fetches at least this long allocate their blocks first (see `BackingStore::allocate`).
const PREALLOCATE_MIN: u64 = 1 << 20;
/// Renewals one fetch asks for before it gives up.
const MAX_RENEWALS: u32 = 3;

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Fetches running at once, over all objects.
    pub max_concurrent: usize,
    /// How many of those may be prefetches (see [`Fetcher::try_prefetch`]), so that
    /// prefetches of objects on a dead remote can never take the slots reads need.
    pub max_prefetches: usize,
    /// A body that delivers no bytes for this long is abandoned and retried.
    pub stall_timeout: Duration,
    /// Attempts per range before reads fail.
    pub max_attempts: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_concurrent: 16,
            max_prefetches: 4,
            stall_timeout: Duration::from_secs(10),
            max_attempts: 4,
        }
    }
}

/// Why one attempt failed. Messages never contain the URL (it carries a signature).
#[derive(Debug, Error)]
enum FetchError {
    #[error("{0}")]
    Network(String),
    #[error("no data for {0:?}")]
    Stalled(Duration),
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

/// Fetch counters, process-wide (like the op registry), read by the metrics endpoint.
#[derive(Debug)]
pub struct FetchStats {
    bytes: AtomicU64,
    retries: AtomicU64,
    /// Responses by HTTP status, and requests that got none ("error").
    requests: Mutex<BTreeMap<String, u64>>,
    errors: [AtomicU64; ERROR_REASONS.len()],
}

pub static STATS: FetchStats = FetchStats {
    bytes: AtomicU64::new(0),
    retries: AtomicU64::new(0),
    requests: Mutex::new(BTreeMap::new()),
    errors: [const { AtomicU64::new(0) }; ERROR_REASONS.len()],
};

impl FetchStats {
    /// Bytes received from remotes.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
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
            FetchError::Network(_) => 0,
            FetchError::Stalled(_) => 1,
            FetchError::Status { .. } => 2,
            FetchError::Rejected { .. } => 3,
            FetchError::Changed(_) => 4,
            FetchError::Protocol(_) => 5,
            FetchError::Store(_) => 6,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            FetchError::Network(_) | FetchError::Stalled(_) => true,
            FetchError::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 408 | 429)
            }
            FetchError::Rejected { .. }
            | FetchError::Changed(_)
            | FetchError::Protocol(_)
            | FetchError::Store(_) => false,
        }
    }

    fn network(e: reqwest::Error) -> FetchError {
        FetchError::Network(e.without_url().to_string())
    }
}

/// The daemon-wide fetch slots a running fetch holds (a prefetch: two, see
/// [`Fetcher::try_prefetch`]).
type Slots = Vec<OwnedSemaphorePermit>;

#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    /// Taken, with a daemon-wide permit, by prefetches only.
    prefetch_permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    config: FetchConfig,
    cache: Arc<Cache>,
    events: Arc<Events>,
}

impl Fetcher {
    pub fn new(
        runtime: tokio::runtime::Handle,
        config: FetchConfig,
        cache: Arc<Cache>,
        events: Arc<Events>,
    ) -> reqwest::Result<Fetcher> {
        let client = fusestream_shared::http::client_builder()
            .pool_max_idle_per_host(config.max_concurrent)
            .build()?;
        Ok(Fetcher {
            client,
            permits: Arc::new(Semaphore::new(config.max_concurrent)),
            prefetch_permits: Arc::new(Semaphore::new(config.max_prefetches)),
            runtime,
            config,
            cache,
            events,
        })
    }

    /// Starts fetching `chunks` of `object`. Never waits: safe in a FUSE callback. The
    /// fetch's span is traced as a child of `cause` (the read that needs the chunks).
    pub fn start(&self, object: Arc<Object>, chunks: ChunkRange, cause: &TraceParent) {
        self.spawn(object, chunks, cause, None);
    }

    /// Starts fetching the chunks `claim` marks in flight (at most one fetch's worth), if
    /// a fetch slot is free now: a prefetch never queues, and holds at most
    /// `max_prefetches` of the slots. Returns whether it started. Never waits.
    pub fn try_prefetch(
        &self,
        object: Arc<Object>,
        cause: &TraceParent,
        claim: impl FnOnce() -> Option<ChunkRange>,
    ) -> bool {
        let Ok(prefetch) = self.prefetch_permits.clone().try_acquire_owned() else {
            return false;
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return false;
        };
        let Some(chunks) = claim() else {
            return false;
        };
        self.spawn(object, chunks, cause, Some(vec![permit, prefetch]));
        true
    }

    fn spawn(
        &self,
        object: Arc<Object>,
        chunks: ChunkRange,
        cause: &TraceParent,
        held: Option<Slots>,
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
            fetcher.run(object.clone(), chunks, held).await;
            object.fetch_ended(chunks);
        };
        self.runtime.spawn(fetch.instrument(span));
    }

    /// Fetches `chunks`; `held` are the daemon-wide (and prefetch) permits a prefetch took
    /// when it started.
    async fn run(self, object: Arc<Object>, chunks: ChunkRange, held: Option<Slots>) {
        // Per object first, so one busy object can not hold the daemon-wide slots idle
        // (a prefetch holds one already, but of a new object, whose slots are free).
        let Ok(_object_permit) = object.fetch_permits.acquire().await else {
            return;
        };
        let _slots = match held {
            Some(held) => held,
            None => match self.permits.clone().acquire_owned().await {
                Ok(permit) => vec![permit],
                Err(_) => return,
            },
        };
        let range = object.store.byte_range(chunks);
        let mut next = range.start;
        let mut attempt = 1;
        let mut renewals = 0;
        // Recorded once, at the end: the log layer would repeat a field recorded per attempt.
        let record_attempts = |attempt: u32| {
            tracing::Span::current().record("attempts", attempt);
        };
        loop {
            let error = match self.attempt(&object, &mut next, range.end).await {
                Ok(()) => {
                    record_attempts(attempt);
                    return;
                }
                Err(e) => e,
            };
            STATS.errors[error.reason()].fetch_add(1, Ordering::Relaxed);
            let wait = match &error {
                FetchError::Rejected { status, generation } if renewals < MAX_RENEWALS => {
                    // Ask for a fresh URL and wait for it without holding anything.
                    renewals += 1;
                    tracing::info!(name = object.name, %status, "temp URL rejected; asking for a new one");
                    self.events.url_rejected(&object.name, status.as_u16());
                    if object.url_renewed_after(*generation, RENEWAL_WAIT).await {
                        continue;
                    }
                    None
                }
                FetchError::Status {
                    retry_after: Some(asked),
                    ..
                } if attempt < self.config.max_attempts => {
                    Some(asked.min(&MAX_RETRY_AFTER).to_owned())
                }
                e if e.retryable() && attempt < self.config.max_attempts => {
                    Some(Duration::from_millis(100 << attempt))
                }
                _ => None,
            };
            if let Some(wait) = wait {
                STATS.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, attempt, "fetch failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            record_attempts(attempt);
            tracing::warn!(%error, source = %object.source, "fetch failed");
            let rest = ChunkRange {
                first: next / CHUNK_SIZE,
                end: chunks.end,
            };
            match error {
                FetchError::Changed(reason) => object.store.poison(FsError::Changed(reason)),
                FetchError::Rejected { status, .. } => object.store.abandon(
                    rest,
                    FsError::Fetch(format!("temp URL rejected (HTTP {status}) and not renewed")),
                ),
                e => object.store.abandon(rest, FsError::Fetch(e.to_string())),
            }
            return;
        }
    }

    /// One request for bytes `*next..end`; advances `*next` past every byte stored.
    async fn attempt(
        &self,
        object: &Arc<Object>,
        next: &mut u64,
        end: u64,
    ) -> Result<(), FetchError> {
        // Read-ahead sized fetches only: the saving is per byte, while the call can wait on
        // the file system's journal, which a small (random) read would feel. Again on a
        // retry: cheap where already allocated, and space may have been freed.
        if end - *next >= PREALLOCATE_MIN {
            object
                .store
                .allocate(*next..end)
                .map_err(FetchError::Store)?;
        }
        let temp_url = object.temp_url();
        let mut request = self.client.get(&temp_url.url).header(
            reqwest::header::RANGE,
            format!("bytes={}-{}", *next, end - 1),
        );
        let version = &object.version;
        // If-Match needs a strong ETag; a weak one falls back to the modification time.
        if !version.etag.is_empty() && !version.etag.starts_with("W/") {
            request = request.header(reqwest::header::IF_MATCH, &version.etag);
        } else if let Some(modified) = version.last_modified {
            request = request.header(
                reqwest::header::IF_UNMODIFIED_SINCE,
                httpdate::fmt_http_date(modified),
            );
        }
        let stall = self.config.stall_timeout;
        let sent = tokio::time::timeout(stall, request.send())
            .await
            .map_err(|_| FetchError::Stalled(stall))
            .and_then(|r| r.map_err(FetchError::network));
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                STATS.request("error".into());
                return Err(e);
            }
        };
        STATS.request(response.status().as_u16().to_string());
        tracing::Span::current().record("http.status_code", response.status().as_u16());
        check_response(&response, *next, version.size).map_err(|e| match e {
            FetchError::Status { status, .. } if matches!(status.as_u16(), 401 | 403) => {
                FetchError::Rejected {
                    status,
                    generation: temp_url.generation,
                }
            }
            e => e,
        })?;

        // First chunk not yet complete (a resumed attempt may start inside it).
        let mut completed_up_to = *next / CHUNK_SIZE;
        while *next < end {
            let body = tokio::time::timeout(stall, response.chunk())
                .await
                .map_err(|_| FetchError::Stalled(stall))?
                .map_err(FetchError::network)?;
            let Some(mut data) = body else {
                return Err(FetchError::Network(format!(
                    "body ended at byte {} of range ending at {end}",
                    *next
                )));
            };
            data.truncate((end - *next) as usize);
            object
                .store
                .write(*next, &data)
                .map_err(FetchError::Store)?;
            *next += data.len() as u64;
            STATS.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
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
                if *next == end {
                    // Nothing more to receive: answer here, saving the hand-off to another
                    // thread (the larger part of a small random read's wait).
                    object.store.answer_all(ready);
                } else if !ready.is_empty() {
                    // Answering (a pread and a write to /dev/fuse per read) runs on the
                    // blocking pool, so this task goes on receiving meanwhile.
                    let object = object.clone();
                    tokio::task::spawn_blocking(move || object.store.answer_all(ready));
                }
                self.cache.grew();
                completed_up_to = done;
            }
        }
        Ok(())
    }
}

/// Checks that `response` carries the object's bytes from `start`.
fn check_response(response: &reqwest::Response, start: u64, size: u64) -> Result<(), FetchError> {
    let status = response.status();
    match status.as_u16() {
        206 => {
            let content_range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
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
            retry_after: response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .map(Duration::from_secs),
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
