//! The entries the control plane staged and renews: one home for tracking an entry, in
//! memory and in the state store together.
//!
//! Every change goes through [`Tracking::track_all`] / [`Tracking::untrack_all`] (and
//! `untrack` for one): the in-memory index and the store submission are made under
//! one short lock, so the store applies changes in the order memory saw them; the caller
//! then waits for the commit outside the lock (no lock is held across I/O). What an entry
//! replaced or left stops being served ([`Tracking::forget`]).
//!
//! Staging is two-step so that a crash never leaves a half entry: [`Tracking::intend_all`]
//! saves what is about to be staged before the mount daemon is asked; once it answered,
//! `track_all` saves the entry and drops the intent in one transaction. After a crash the
//! next run settles the intents against what the mount daemon shows (see
//! `ControlService::reconcile`).
//!
//! Renewal is by expiry: an ordered index of (expiry, name) gives the entries whose URL
//! expires soon without looking at the others, so a renewal tick costs what it renews.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use fusestream_shared::{api, names};

use super::state::{Change, Intent, Saved, SavedEntry, Store, StoreError};
use crate::sources::Renewal;
use crate::sources::local::SignedUrlServer;

/// An entry the control plane staged and renews: how its URL is renewed, who besides its
/// stager may read it (restaged with the same), and when its URL expires.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub renewal: Renewal,
    pub share: api::Sharing,
    /// Unix seconds; 0 if unknown (renewed at the next tick).
    pub url_expires_unix: i64,
}

impl Tracked {
    /// What is saved of it, if anything is (see `state`).
    pub fn saved(&self) -> Option<SavedEntry> {
        saved(&self.renewal, self.share)
    }

    /// True if its URL is renewed by signing again (not a URL given as the source).
    fn renewable(&self) -> bool {
        matches!(self.renewal, Renewal::Local { .. } | Renewal::Remote { .. })
    }
}

fn saved(renewal: &Renewal, share: api::Sharing) -> Option<SavedEntry> {
    Some(SavedEntry {
        source: Saved::of(renewal)?,
        share: share.into(),
    })
}

/// An entry the mount daemon accepted, to be tracked: `intent` is the one saved before
/// asking it (settled with the same commit).
#[derive(Debug)]
pub struct Staged {
    pub name: String,
    pub tracked: Tracked,
    pub intent: Option<u64>,
}

/// What is about to be staged, for [`Tracking::intend_all`].
pub struct Intended<'a> {
    pub name: &'a str,
    pub renewal: &'a Renewal,
    pub share: api::Sharing,
    pub version: &'a api::ObjectVersion,
}

#[derive(Default)]
struct Index {
    by_name: HashMap<String, Tracked>,
    /// (URL expiry, name) of the renewable entries.
    by_expiry: BTreeSet<(i64, String)>,
}

impl Index {
    fn insert(&mut self, name: String, tracked: Tracked) -> Option<Tracked> {
        let replaced = self.remove(&name);
        if tracked.renewable() {
            self.by_expiry
                .insert((tracked.url_expires_unix, name.clone()));
        }
        self.by_name.insert(name, tracked);
        replaced
    }

    fn remove(&mut self, name: &str) -> Option<Tracked> {
        let removed = self.by_name.remove(name)?;
        self.by_expiry
            .remove(&(removed.url_expires_unix, name.to_string()));
        Some(removed)
    }
}

pub struct Tracking {
    index: Mutex<Index>,
    store: Store,
    local: SignedUrlServer,
}

impl Tracking {
    pub fn new(store: Store, local: SignedUrlServer) -> Tracking {
        Tracking {
            index: Mutex::default(),
            store,
            local,
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Tracked> {
        self.index().by_name.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.index().by_name.keys().cloned().collect()
    }

    /// The tracked entries under `folder` (see `names::is_under`).
    pub fn names_under(&self, folder: &str) -> Vec<String> {
        self.index()
            .by_name
            .keys()
            .filter(|name| names::is_under(name, folder))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.index().by_name.len()
    }

    /// The renewable entries whose URL expires before `before` (Unix seconds), soonest
    /// first, at most `limit` of them.
    pub fn expiring_before(&self, before: i64, limit: usize) -> Vec<String> {
        self.index()
            .by_expiry
            .iter()
            .take_while(|(expires, _)| *expires < before)
            .take(limit)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Records that `name`'s URL now expires at `url_expires_unix`.
    pub fn set_expiry(&self, name: &str, url_expires_unix: i64) {
        let mut index = self.index();
        if let Some(tracked) = index.by_name.get(name).cloned() {
            index.insert(
                name.to_string(),
                Tracked {
                    url_expires_unix,
                    ..tracked
                },
            );
        }
    }

    /// Takes up entries saved by an earlier run (already in the store: nothing is written).
    pub fn adopt(&self, entries: impl IntoIterator<Item = (String, Tracked)>) {
        let mut index = self.index();
        for (name, tracked) in entries {
            index.insert(name, tracked);
        }
    }

    /// Saves what is about to be staged, before the mount daemon is asked; the ids are
    /// given to [`Tracking::track_all`] (or [`Tracking::abandon`]). None for entries
    /// nothing of which is saved.
    pub async fn intend_all(
        &self,
        entries: &[Intended<'_>],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut changes = Vec::new();
        let ids = entries
            .iter()
            .map(|e| {
                let entry = saved(e.renewal, e.share)?;
                let id = self.store.new_intent_id();
                changes.push(Change::Intend(
                    id,
                    Intent {
                        name: e.name.to_string(),
                        entry,
                        etag: e.version.etag.clone(),
                        size: e.version.size,
                    },
                ));
                Some(id)
            })
            .collect();
        if !changes.is_empty() {
            self.store.submit(changes).committed().await?;
        }
        Ok(ids)
    }

    /// Drops intents whose stage failed. Not waited for: an intent left over is settled
    /// against the mount daemon on the next start.
    pub fn abandon(&self, intents: impl IntoIterator<Item = Option<u64>>) {
        let changes: Vec<Change> = intents.into_iter().flatten().map(Change::Settle).collect();
        if !changes.is_empty() {
            drop(self.store.submit(changes));
        }
    }

    /// Records how each entry is renewed from now on and who may read it, in memory and in
    /// the store (one transaction), and waits until that is committed. The entries they
    /// replaced stop being served. An entry that renews `Never` is untracked instead.
    pub async fn track_all(&self, staged: Vec<Staged>) -> Result<(), StoreError> {
        if staged.is_empty() {
            return Ok(());
        }
        let mut replaced = Vec::new();
        let pending = {
            let mut index = self.index();
            let mut changes = Vec::with_capacity(staged.len() * 2);
            for Staged {
                name,
                tracked,
                intent,
            } in staged
            {
                changes.extend(intent.map(Change::Settle));
                let saved = tracked.saved();
                let old = match tracked.renewal {
                    Renewal::Never => index.remove(&name),
                    _ => index.insert(name.clone(), tracked),
                };
                match saved {
                    Some(entry) => changes.push(Change::Put(name, entry)),
                    None => changes.push(Change::Remove(name)),
                }
                replaced.extend(old);
            }
            self.store.submit(changes)
        };
        for old in replaced {
            self.forget(old.renewal);
        }
        pending.committed().await
    }

    /// Stops tracking `names` (in memory and in the store, one transaction) and serving
    /// what they were; waits until that is committed.
    pub async fn untrack_all(&self, names: &[String]) -> Result<(), StoreError> {
        let mut removed = Vec::new();
        let pending = {
            let mut index = self.index();
            let changes = names
                .iter()
                .map(|name| {
                    removed.extend(index.remove(name));
                    Change::Remove(name.clone())
                })
                .collect();
            self.store.submit(changes)
        };
        for old in removed {
            self.forget(old.renewal);
        }
        pending.committed().await
    }

    pub async fn untrack(&self, name: &str) -> Result<(), StoreError> {
        self.untrack_all(&[name.to_string()]).await
    }

    /// Saves which mount daemon the entries are staged on.
    pub async fn set_mountd(
        &self,
        identity: super::state::MountdIdentity,
    ) -> Result<(), StoreError> {
        self.store
            .submit(vec![Change::Mountd(identity)])
            .committed()
            .await
    }

    /// Stops serving what an entry that is no longer staged was served from.
    pub fn forget(&self, renewal: Renewal) {
        match renewal {
            Renewal::Local { id, .. } => self.local.unregister(id),
            Renewal::Remote { remote, path, .. } => remote.release(&path),
            Renewal::Never | Renewal::Url { .. } => {}
        }
    }
}
