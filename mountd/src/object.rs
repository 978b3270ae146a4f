//! A staged remote object: what it is (pinned version), where to fetch it (its temp URL,
//! which the control plane renews) and its backing store.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::fetch::parallelism::Gate;
use crate::store::{BackingStore, ChunkRange};

/// The version of the remote object that reads are pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    /// Entity tag as the server sent it, quotes included; empty if none.
    pub etag: String,
    /// Last-Modified, if the server sent one.
    pub last_modified: Option<SystemTime>,
}

/// A temp URL and its generation (bumped by every renewal).
#[derive(Debug, Clone)]
pub struct TempUrl {
    pub url: String,
    pub expires_unix: i64,
    pub generation: u64,
}

#[derive(Debug)]
pub struct Object {
    /// The name it was staged under (for events; the namespace owns the live name).
    pub name: String,
    pub version: Version,
    /// Where it came from, already redacted (display only).
    pub source: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits in the mount (0400 unless the owner shared it, see `Sharing`).
    pub mode: u16,
    pub store: BackingStore,
    /// How many fetches of this object run at once (adapted to its remote).
    pub fetch_gate: Arc<Gate>,
    /// A plain leaf lock and a `Notify` rather than a `watch` channel: an entry's memory
    /// counts (100,000 staged entries), and a `watch` costs some 400 bytes more.
    temp_url: Mutex<TempUrl>,
    /// Woken by every renewal.
    renewed: Notify,
    open_handles: AtomicU32,
    /// The spans of the fetches running, so a read that waits on a fetch another read
    /// started is linked to it. Only filled while spans are exported; a leaf lock.
    fetch_spans: Mutex<Vec<(ChunkRange, tracing::Span)>>,
}

impl Object {
    /// `url` is the first temp URL and when it expires (Unix seconds); `owner` the staging
    /// caller's (uid, gid), `mode` the file's permission bits.
    pub fn new(
        name: String,
        version: Version,
        source: String,
        (url, url_expires_unix): (String, i64),
        owner: (u32, u32),
        mode: u16,
        store: BackingStore,
    ) -> Object {
        Object {
            name,
            version,
            source,
            uid: owner.0,
            gid: owner.1,
            mode,
            store,
            fetch_gate: Arc::default(),
            temp_url: Mutex::new(TempUrl {
                url,
                expires_unix: url_expires_unix,
                generation: 0,
            }),
            renewed: Notify::new(),
            open_handles: AtomicU32::new(0),
            fetch_spans: Mutex::default(),
        }
    }

    /// Registers the span of a fetch of `chunks` that starts (if spans are exported).
    pub fn fetch_started(&self, chunks: ChunkRange, span: &tracing::Span) {
        if !span.is_disabled() {
            self.fetch_spans().push((chunks, span.clone()));
        }
    }

    /// Forgets the span of the fetch of `chunks`, which ended.
    pub fn fetch_ended(&self, chunks: ChunkRange) {
        self.fetch_spans().retain(|(c, _)| *c != chunks);
    }

    /// Links `read`, which needs chunks `needed`, to the fetches of them already running:
    /// it shares them (or reads what they brought).
    pub fn link_running_fetches(&self, read: &tracing::Span, needed: ChunkRange) {
        if read.is_disabled() {
            return;
        }
        let shared: Vec<tracing::Span> = self
            .fetch_spans()
            .iter()
            .filter(|(c, _)| c.overlaps(&needed))
            .map(|(_, span)| span.clone())
            .collect();
        for fetch in &shared {
            read.follows_from(fetch);
        }
    }

    fn fetch_spans(&self) -> std::sync::MutexGuard<'_, Vec<(ChunkRange, tracing::Span)>> {
        self.fetch_spans.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn size(&self) -> u64 {
        self.version.size
    }

    /// The current temp URL (a copy: nothing is held while it is used).
    pub fn temp_url(&self) -> TempUrl {
        self.lock_temp_url().clone()
    }

    fn lock_temp_url(&self) -> std::sync::MutexGuard<'_, TempUrl> {
        self.temp_url.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn url_expires_unix(&self) -> i64 {
        self.lock_temp_url().expires_unix
    }

    /// Installs a renewed URL and wakes fetches waiting for one.
    pub fn set_url(&self, url: String, expires_unix: i64) {
        {
            let mut current = self.lock_temp_url();
            current.url = url;
            current.expires_unix = expires_unix;
            current.generation += 1;
        }
        self.renewed.notify_waiters();
    }

    /// Waits (asynchronously) until the URL is newer than `generation`; false on timeout.
    pub async fn url_renewed_after(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a renewal between the two still wakes us.
            let notified = self.renewed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.lock_temp_url().generation > generation {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    pub fn opened(&self) {
        self.open_handles.fetch_add(1, Ordering::Relaxed);
    }

    /// One handle fewer; returns how many are left.
    pub fn closed(&self) -> u32 {
        self.open_handles.fetch_sub(1, Ordering::Relaxed) - 1
    }

    pub fn open_handles(&self) -> u32 {
        self.open_handles.load(Ordering::Relaxed)
    }
}
