//! Fetch capacity, shared so that one origin can never take what the others need.
//!
//! An origin is scheme://host:port. Each has its own slots (at most `per_origin` fetches
//! at once) and one slot that is its alone; beyond that one, a fetch also takes one of the
//! daemon's shared slots. So a dead origin holds at most `per_origin` slots, of which the
//! others need none: every origin can always fetch, whatever the others do. The sockets
//! open at once are bounded by the shared slots plus one per origin in use.
//!
//! Slots are held only while an attempt runs (bytes can flow); the fetcher lets go of
//! them before any pause (back-off, Retry-After, waiting for a renewed URL). Each origin
//! also has its circuit breaker (see `policy`). Locks: the origin map and each breaker are
//! leaves, held for a lookup or an update, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::policy::Breaker;

/// Origins remembered before those no fetch uses are forgotten.
const REMEMBERED: usize = 1024;

/// The origin (scheme://host:port) of `url`, as fetches are grouped and reported.
pub fn origin_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => "(invalid URL)".to_string(),
    }
}

#[derive(Debug)]
pub struct Origin {
    pub name: String,
    slots: Arc<Semaphore>,
    /// The slot no other origin can take.
    own: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

impl Origin {
    pub fn breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why fetches of this origin fail now, if they do.
    pub fn trouble(&self) -> Option<String> {
        let why = self.breaker().why(Instant::now());
        (!why.is_empty()).then(|| format!("{} {why}", self.name))
    }
}

/// What a running attempt holds; dropping it frees the slots.
#[derive(Debug)]
pub struct Slot {
    _origin: OwnedSemaphorePermit,
    _capacity: OwnedSemaphorePermit,
}

#[derive(Debug)]
pub struct Origins {
    per_origin: usize,
    shared: Arc<Semaphore>,
    map: Mutex<HashMap<String, Arc<Origin>>>,
}

impl Origins {
    pub fn new(shared: usize, per_origin: usize) -> Origins {
        Origins {
            per_origin: per_origin.max(1),
            shared: Arc::new(Semaphore::new(shared)),
            map: Mutex::default(),
        }
    }

    /// The origin of `url`.
    pub fn get(&self, url: &str) -> Arc<Origin> {
        let name = origin_of(url);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED && !map.contains_key(&name) {
            map.retain(|_, o| Arc::strong_count(o) > 1);
        }
        map.entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Origin {
                    name,
                    slots: Arc::new(Semaphore::new(self.per_origin)),
                    own: Arc::new(Semaphore::new(1)),
                    breaker: Mutex::default(),
                })
            })
            .clone()
    }

    /// Waits for a slot of `origin`: one of its own, then its reserved one or a shared one,
    /// whichever frees first. `None` only if the semaphores were closed.
    pub async fn acquire(&self, origin: &Origin) -> Option<Slot> {
        let mine = origin.slots.clone().acquire_owned().await.ok()?;
        let capacity = tokio::select! {
            biased;
            own = origin.own.clone().acquire_owned() => own.ok()?,
            shared = self.shared.clone().acquire_owned() => shared.ok()?,
        };
        Some(Slot {
            _origin: mine,
            _capacity: capacity,
        })
    }

    /// A slot of `origin` if one is free now (for prefetches, which never queue).
    pub fn try_acquire(&self, origin: &Origin) -> Option<Slot> {
        let mine = origin.slots.clone().try_acquire_owned().ok()?;
        let capacity = origin
            .own
            .clone()
            .try_acquire_owned()
            .or_else(|_| self.shared.clone().try_acquire_owned())
            .ok()?;
        Some(Slot {
            _origin: mine,
            _capacity: capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(
            origin_of("http://127.0.0.1:8080/a?sig=x"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin_of("https://h.example/a"), "https://h.example");
        assert_eq!(origin_of("not a url"), "(invalid URL)");
    }

    #[tokio::test]
    async fn a_busy_origin_never_takes_the_slot_another_needs() {
        let origins = Origins::new(2, 4);
        let dead = origins.get("http://127.0.0.1:1/x");
        // The dead origin takes all it can: its own slots, bounded by its reserve plus the
        // shared ones.
        let held: Vec<Slot> = (0..4).filter_map(|_| origins.try_acquire(&dead)).collect();
        assert_eq!(held.len(), 3, "one reserved + two shared");
        assert!(origins.try_acquire(&dead).is_none());
        // Another origin still gets its reserved slot, at once.
        let healthy = origins.get("http://127.0.0.1:2/y");
        assert!(origins.try_acquire(&healthy).is_some());
        let slot =
            tokio::time::timeout(std::time::Duration::from_secs(5), origins.acquire(&healthy))
                .await
                .expect("not queued behind the dead origin");
        assert!(slot.is_some());
    }
}
