//! The disk budget of all backing stores and the bound on how many are open, and eviction
//! when either is exceeded.
//!
//! A staged entry costs memory, not a descriptor: its store gets a file only when the
//! first fetch writes (see `BackingStore::open`), and the fetch then registers the object
//! here (weakly: an unstaged object with no open handle is simply dropped, and its unnamed
//! temp file with it). So this list holds only objects whose stores are open, however many
//! entries are staged, and every pass over it is bounded by the open stores.
//!
//! When fetched bytes push the total over the budget, or more stores are open than
//! `max_open`, a background task evicts whole objects that no one has open, least recently
//! read first, by closing their files (see `BackingStore::reset_if_idle`, which asks again,
//! under the store's lock, that nothing is open, parked or being fetched: a reader judged
//! ready before the close keeps the old file, so eviction never yields zeros). The files
//! are unnamed, so closing one drops its bytes: the cost of the descriptor bound is that
//! only the `max_open` most recently read idle entries stay cached. Objects that are open
//! are never evicted: a reader would otherwise refetch what it is reading; if only open
//! objects remain over a bound, it is exceeded and a warning says why. Nothing here runs
//! on a FUSE thread.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::object::Object;
use crate::store::{StoreHome, StreamMemory};

/// Idle stores kept open by default: the daemon's descriptors stay within about a hundred
/// plus the files that are open.
pub const DEFAULT_MAX_OPEN_STORES: usize = 64;

#[derive(Debug)]
pub struct Cache {
    /// Where stores put what they fetch (file directory, stream memory budget).
    home: Arc<StoreHome>,
    /// Budget in bytes; `None` for unlimited.
    max_bytes: Option<u64>,
    /// Stores kept open beyond those of open files.
    max_open: usize,
    /// Objects whose stores were opened (some may have been closed or dropped since).
    open: Mutex<Vec<Weak<Object>>>,
    changed: Notify,
    evictions: AtomicU64,
    warned_over_budget: AtomicBool,
}

impl Cache {
    /// `stream_memory`: the bytes sequential streams may hold in memory (see
    /// `store::memory`).
    pub fn new(dir: &Path, max_bytes: Option<u64>, max_open: usize, stream_memory: u64) -> Cache {
        Cache {
            home: Arc::new(StoreHome {
                dir: dir.to_path_buf(),
                memory: StreamMemory::new(stream_memory),
            }),
            max_bytes,
            max_open,
            open: Mutex::default(),
            changed: Notify::new(),
            evictions: AtomicU64::new(0),
            warned_over_budget: AtomicBool::new(false),
        }
    }

    /// Where stores create their files.
    pub fn dir(&self) -> &Path {
        &self.home.dir
    }

    /// What every store is created with.
    pub fn home(&self) -> &Arc<StoreHome> {
        &self.home
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// `object`'s store just opened a file. Cheap; never waits.
    pub fn opened(&self, object: &Arc<Object>) {
        self.lock_open().push(Arc::downgrade(object));
        self.changed.notify_one();
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Object>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live objects with open stores, each once; forgets the others. (A store closed and
    /// opened again before a pass pruned it is registered twice.)
    fn live_open(&self) -> Vec<Arc<Object>> {
        let mut open = self.lock_open();
        let mut live = Vec::with_capacity(open.len());
        let mut seen = std::collections::HashSet::new();
        open.retain(|o| match o.upgrade() {
            Some(object) if object.store.is_open() && seen.insert(Arc::as_ptr(&object)) => {
                live.push(object);
                true
            }
            _ => false,
        });
        live
    }

    /// Bytes present in all backing stores.
    pub fn used_bytes(&self) -> u64 {
        self.live_open()
            .iter()
            .map(|o| o.store.present_bytes())
            .sum()
    }

    /// Stores holding a file now.
    pub fn open_stores(&self) -> usize {
        self.live_open().len()
    }

    /// Fetched bytes were added somewhere. Cheap; never waits.
    pub fn grew(&self) {
        if self.max_bytes.is_some() {
            self.changed.notify_one();
        }
    }

    /// Evicts whenever a bound is exceeded, until the runtime shuts down.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.changed.notified().await;
            self.enforce_bounds();
        }
    }

    /// Closes idle stores, least recently read first, until the bytes present are within
    /// the budget and the open stores within `max_open`. Never waits: closing hands the
    /// files to the closer thread.
    pub(crate) fn enforce_bounds(&self) {
        let max_bytes = self.max_bytes.unwrap_or(u64::MAX);
        let mut objects = self.live_open();
        let mut used: u64 = objects.iter().map(|o| o.store.present_bytes()).sum();
        let mut open = objects.len();
        if used <= max_bytes && open <= self.max_open {
            self.warned_over_budget.store(false, Ordering::Relaxed);
            return;
        }
        objects.retain(|o| o.open_handles() == 0);
        objects.sort_by_key(|o| o.store.last_read_ms());
        for object in objects {
            if used <= max_bytes && open <= self.max_open {
                return;
            }
            if let Some(freed) = object.store.reset_if_idle(|| object.open_handles() == 0) {
                used -= freed.min(used);
                open -= 1;
                if freed > 0 {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(source = %object.source, freed, "evicted");
            }
        }
        if (used > max_bytes || open > self.max_open)
            && !self.warned_over_budget.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                used,
                max_bytes,
                open,
                max_open = self.max_open,
                "backing stores exceed the cache bounds: everything cached is open"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Version;
    use crate::store::BackingStore;

    #[test]
    fn a_store_closed_and_opened_again_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), None, 4, 0);
        let version = Version {
            size: 10,
            etag: String::new(),
            last_modified: None,
        };
        let store = BackingStore::new(cache.home().clone(), 10);
        let object = Arc::new(Object::new(
            "a".into(),
            version,
            "a".into(),
            ("http://127.0.0.1:9/a".into(), 0),
            (0, 0),
            0o400,
            store,
        ));
        assert!(object.store.open().unwrap());
        cache.opened(&object);
        // Evicted and opened again by the next fetch before any pass pruned it.
        assert!(object.store.reset_if_idle(|| true).is_some());
        assert!(object.store.open().unwrap());
        cache.opened(&object);
        assert_eq!(cache.open_stores(), 1);
    }
}
