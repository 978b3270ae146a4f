//! The disk budget of all backing stores, and eviction when it is exceeded.
//!
//! Every object with a backing store is registered here (weakly: an unstaged object with
//! no open handle is simply dropped, and its unnamed temp file with it). When fetched
//! bytes push the total over the budget, a background task evicts whole objects that no
//! one has open, least recently read first, by swapping in an empty file (see
//! `BackingStore::reset_if_idle`, which asks again, under the store's lock, that nothing
//! is open, parked or being fetched: a reader judged ready before the swap keeps the old
//! file, so eviction never yields zeros). Objects that are open are never evicted: a reader
//! would otherwise refetch what it is reading; if only open objects remain over budget,
//! the budget is exceeded and a warning says why. Nothing here runs on a FUSE thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::object::Object;
use crate::store::BackingStore;

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    /// Budget in bytes; `None` for unlimited.
    max_bytes: Option<u64>,
    objects: Mutex<Vec<Weak<Object>>>,
    grew: Notify,
    evictions: AtomicU64,
    warned_over_budget: AtomicBool,
}

impl Cache {
    pub fn new(dir: PathBuf, max_bytes: Option<u64>) -> Cache {
        Cache {
            dir,
            max_bytes,
            objects: Mutex::default(),
            grew: Notify::new(),
            evictions: AtomicU64::new(0),
            warned_over_budget: AtomicBool::new(false),
        }
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub fn register(&self, object: &Arc<Object>) {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects.retain(|o| o.strong_count() > 0);
        objects.push(Arc::downgrade(object));
    }

    /// Live objects (staged, or unstaged but still open).
    fn live(&self) -> Vec<Arc<Object>> {
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects.iter().filter_map(Weak::upgrade).collect()
    }

    /// Bytes present in all backing stores.
    pub fn used_bytes(&self) -> u64 {
        self.live().iter().map(|o| o.store.present_bytes()).sum()
    }

    /// Fetched bytes were added somewhere. Cheap; never waits.
    pub fn grew(&self) {
        if self.max_bytes.is_some() {
            self.grew.notify_one();
        }
    }

    /// Evicts whenever the budget is exceeded, until the runtime shuts down.
    pub async fn run(self: Arc<Self>) {
        let Some(max) = self.max_bytes else { return };
        loop {
            self.grew.notified().await;
            self.evict_to(max).await;
        }
    }

    pub(crate) async fn evict_to(&self, max: u64) {
        let mut objects = self.live();
        let mut used: u64 = objects.iter().map(|o| o.store.present_bytes()).sum();
        if used <= max {
            self.warned_over_budget.store(false, Ordering::Relaxed);
            return;
        }
        objects.retain(|o| o.open_handles() == 0 && o.store.present_bytes() > 0);
        objects.sort_by_key(|o| o.store.last_read_ms());
        for object in objects {
            if used <= max {
                return;
            }
            let (dir, size) = (self.dir.clone(), object.size());
            let fresh =
                match tokio::task::spawn_blocking(move || BackingStore::empty_file(&dir, size))
                    .await
                {
                    Ok(Ok(file)) => file,
                    Ok(Err(e)) => {
                        tracing::warn!("eviction: creating an empty store: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            if let Some(freed) = object
                .store
                .reset_if_idle(fresh, || object.open_handles() == 0)
            {
                used -= freed.min(used);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(source = %object.source, freed, "evicted");
            }
        }
        if used > max && !self.warned_over_budget.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                used,
                max,
                "backing stores exceed the cache budget: everything cached is open"
            );
        }
    }
}
