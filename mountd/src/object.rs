//! A staged remote object: what it is (pinned version), where to fetch it (its temp URL,
//! which the control plane renews) and its backing store.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use crate::store::BackingStore;

/// The version of the remote object that reads are pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    /// Entity tag as the server sent it, quotes included; empty if none.
    pub etag: String,
    /// Last-Modified, if the server sent one.
    pub last_modified: Option<SystemTime>,
}

#[derive(Debug, Clone)]
struct TempUrl {
    url: String,
    expires_unix: i64,
}

#[derive(Debug)]
pub struct Object {
    pub version: Version,
    /// Where it came from, already redacted (display only).
    pub source: String,
    pub uid: u32,
    pub gid: u32,
    pub store: BackingStore,
    temp_url: Mutex<TempUrl>,
    open_handles: AtomicU32,
}

impl Object {
    pub fn new(
        version: Version,
        source: String,
        url: String,
        url_expires_unix: i64,
        owner: (u32, u32),
        store: BackingStore,
    ) -> Object {
        Object {
            version,
            source,
            uid: owner.0,
            gid: owner.1,
            store,
            temp_url: Mutex::new(TempUrl {
                url,
                expires_unix: url_expires_unix,
            }),
            open_handles: AtomicU32::new(0),
        }
    }

    pub fn size(&self) -> u64 {
        self.version.size
    }

    /// The current temp URL. Returns a copy: the lock is never held by a caller.
    pub fn url(&self) -> String {
        self.lock_url().url.clone()
    }

    pub fn url_expires_unix(&self) -> i64 {
        self.lock_url().expires_unix
    }

    pub fn set_url(&self, url: String, expires_unix: i64) {
        *self.lock_url() = TempUrl { url, expires_unix };
    }

    fn lock_url(&self) -> std::sync::MutexGuard<'_, TempUrl> {
        // The guarded value is replaced whole, so a poisoned lock still holds a valid URL.
        self.temp_url.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn opened(&self) {
        self.open_handles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open_handles.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open_handles(&self) -> u32 {
        self.open_handles.load(Ordering::Relaxed)
    }
}
