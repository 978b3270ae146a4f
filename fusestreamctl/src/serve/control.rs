//! The `fusestream.v1.Control` service.
//!
//! Staging resolves a source, then hands it to the mount daemon through [`ControlService::
//! stage_all`], the one path every stage takes (a single `Stage`, a restage after the
//! mount daemon restarted, a batch): intents saved, the mount daemon asked, the accepted
//! entries tracked (see `tracking`), each answered once its entry is committed. Work over
//! many entries (renewal, reconcile, restaging) runs with bounded concurrency, so 100,000
//! entries cost neither 100,000 tasks nor a serial crawl. The mount daemon is handed
//! entries in `Mount.AddEntries` batches ([`ControlService::add_all_to_mount`]) and fresh
//! URLs in `Mount.UpdateUrls` batches ([`ControlService::renew_all`]), so staging a
//! folder or renewing every entry after a restart costs a call per few hundred entries,
//! not one each.
//!
//! Staging many sources at once (folders, remote prefixes: `Control.StageMany`) is its
//! own module, `stage_many`, feeding `stage_all`; browsing remotes is `super::browse`.

mod stage_many;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use fusestream_shared::api::mount_event::Event;
use fusestream_shared::api::{self, control_server::Control, mount_client::MountClient};
use fusestream_shared::clock::unix_now;
use fusestream_shared::grpc::{self, TracedChannel};
use fusestream_shared::names;
use futures_util::stream::{self, StreamExt};
use std::future::Future;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::ServeConfig;
use fusestream_shared::limits::{MAX_ADD_ENTRIES, MAX_OBJECT_SIZE, MAX_UPDATE_URLS};
use prost::Message;

use super::state::{Intent, Loaded, MountdIdentity, Saved, SavedEntry, Store};
use super::tracking::{Intended, Staged, Tracked, Tracking};
use crate::power::{PowerManager, PowerState};
use crate::sources::http::HttpSource;
use crate::sources::local::SignedUrlServer;
use crate::sources::{self, Remote, Remotes, Renewal, SourceError, SourceKind};

/// Calls to the mount daemon (or a remote) in flight at once for work over many entries.
const CONCURRENCY: usize = 16;
/// Runs `futures`, at most [`CONCURRENCY`] at once; their outputs in order. (The futures
/// are made before, not by a closure of the stream: a stream holding a closure over
/// borrowed items is not provably `Send` in the RPC handlers.)
async fn bounded<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    stream::iter(futures).buffered(CONCURRENCY).collect().await
}

/// Entries handled per round of work over many (restaged: resolved, then handed to the
/// mount daemon together; renewed): bounds the futures made at once.
const CHUNK: usize = 1000;
/// A batch for the mount daemon (`Mount.AddEntries`, `Mount.UpdateUrls`) ends once its
/// requests reach about this many bytes, whatever their number (long names and URLs):
/// well within gRPC's 4 MiB message limit.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The pause between attempts to reach the mount daemon's events (a connect to its
/// socket each: cheap), short so that a restarted daemon gets its entries back soon.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// The addresses the control plane serves on besides its socket, as bound (a port 0
/// asked for is resolved), for `Status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    /// The Control API on TCP.
    pub listen: Option<SocketAddr>,
    /// The metrics endpoint.
    pub metrics: Option<SocketAddr>,
}

/// A resolved source to stage as `name`.
pub struct ToStage {
    pub name: String,
    pub resolved: sources::Resolved,
    pub share: api::Sharing,
    pub replace: bool,
}

pub struct ControlService {
    config: ServeConfig,
    bound: Bound,
    local: SignedUrlServer,
    http: HttpSource,
    /// The mount daemon; calls carry the trace context of the RPC that makes them.
    mountd: MountClient<TracedChannel>,
    remotes: Remotes,
    /// The entries staged and renewed, in memory and in the state store.
    tracking: Tracking,
    /// The mount daemon the entries are staged on (saved, to tell a restart apart).
    mountd_identity: Mutex<Option<MountdIdentity>>,
    /// Stages a previous run had asked of the mount daemon without seeing the answer:
    /// settled at the first reconcile.
    leftover_intents: Mutex<Vec<(u64, Intent)>>,
    /// Sleep inhibition, fed from the mount daemon's handle events.
    power: PowerManager,
    started: Instant,
    /// This service, for calls that go on after they answer (StageMany's stream).
    me: Weak<ControlService>,
}

impl ControlService {
    /// The sleep inhibitor's state, as it changes (for metrics). Never waits.
    pub fn power_state(&self) -> tokio::sync::watch::Receiver<PowerState> {
        self.power.subscribe()
    }

    pub fn new(
        config: ServeConfig,
        bound: Bound,
        local: SignedUrlServer,
        http: HttpSource,
        remotes: Remotes,
        mountd: Channel,
        store: Store,
    ) -> ControlService {
        let power = PowerManager::start(config.power);
        ControlService {
            config,
            bound,
            tracking: Tracking::new(store, local.clone()),
            local,
            http,
            mountd: MountClient::new(grpc::traced(mountd)),
            remotes,
            mountd_identity: Mutex::default(),
            leftover_intents: Mutex::default(),
            power,
            started: Instant::now(),
            me: Weak::new(),
        }
    }

    /// The service, knowing its own `Arc` (see `me`): built with `Arc::new_cyclic`.
    pub fn knowing(mut self, me: &Weak<ControlService>) -> ControlService {
        self.me = me.clone();
        self
    }

    /// Hands resolved sources to the mount daemon in `Mount.AddEntries` batches (see
    /// [`batches`]); an answer per entry, in order. A batch the mount daemon could not be
    /// asked fails each of its entries.
    async fn add_all_to_mount(
        &self,
        batch: &[ToStage],
    ) -> Vec<Result<api::AddEntryResponse, Status>> {
        let mut answers = Vec::with_capacity(batch.len());
        // Where each request's answer goes in `answers`.
        let (mut sent, mut requests) = (Vec::new(), Vec::new());
        for entry in batch {
            match entry_request(entry) {
                Ok(request) => {
                    sent.push(answers.len());
                    requests.push(request);
                    answers.push(Err(Status::internal("not sent to the mount daemon")));
                }
                Err(status) => answers.push(Err(status)),
            }
        }
        let mut sent = sent.into_iter();
        for requests in batches(requests, MAX_ADD_ENTRIES) {
            for (answer, i) in self.add_entries(requests).await.into_iter().zip(&mut sent) {
                answers[i] = answer;
            }
        }
        answers
    }

    /// One `Mount.AddEntries` call: an answer per request, in order.
    async fn add_entries(
        &self,
        requests: Vec<api::AddEntryRequest>,
    ) -> Vec<Result<api::AddEntryResponse, Status>> {
        let count = requests.len();
        let results = match self
            .mountd
            .clone()
            .add_entries(api::AddEntriesRequest { entries: requests })
            .await
        {
            Ok(response) => response.into_inner().results,
            Err(status) => return vec![Err(self.mountd_error(status)); count],
        };
        let mut results = results.into_iter().map(|r| match r.result {
            Some(api::entry_result::Result::Entry(info)) => {
                Ok(api::AddEntryResponse { entry: Some(info) })
            }
            Some(api::entry_result::Result::Failed(failure)) => {
                Err(Status::new(Code::from(failure.code), failure.message))
            }
            None => Err(Status::internal("the mount daemon gave no answer for it")),
        });
        (0..count)
            .map(|_| {
                results.next().unwrap_or_else(|| {
                    Err(Status::internal("the mount daemon gave no answer for it"))
                })
            })
            .collect()
    }

    /// Resolves `source` (as `Stage` takes it) into what the mount daemon needs, and how
    /// its URL is renewed.
    async fn resolve(&self, source: &str) -> Result<sources::Resolved, Status> {
        Ok(match sources::classify(source)? {
            SourceKind::Local(path) => self.local.register(path, None).await?,
            SourceKind::Url(url) => {
                let mut resolved = self.http.resolve(url).await?;
                resolved.renewal = Renewal::Url {
                    url: url.to_string(),
                };
                resolved
            }
            SourceKind::Remote {
                remote: remote_name,
                path,
            } => {
                let name = remote_name.to_string();
                let remote = self.remotes.get(remote_name)?;
                let mut resolved = remote.resolve(path, &self.http).await?;
                resolved.renewal = Renewal::Remote {
                    remote,
                    name,
                    path: path.to_string(),
                };
                resolved
            }
        })
    }

    /// Unstages all of the caller's entries under `folder` in one call to the mount daemon
    /// (which removes only the caller's own), and stops tracking those we track.
    async fn unstage_folder(&self, folder: &str) -> Result<api::UnstageResponse, Status> {
        let removed = self
            .mountd
            .clone()
            .remove_entries(api::RemoveEntriesRequest {
                folder: folder.to_string(),
            })
            .await
            .map_err(|s| self.mountd_error(s))?
            .into_inner()
            .removed;
        let names = self.tracking.names_under(folder);
        self.tracking
            .untrack_all(&names)
            .await
            .map_err(|e| not_saved_after_unstage(&e))?;
        tracing::info!(folder, removed, "unstaged a folder");
        Ok(api::UnstageResponse { removed })
    }

    /// Stages resolved sources: saves the intents, asks the mount daemon, tracks (and
    /// saves) what it accepted; an answer per entry, in order, each given only once its
    /// entry is committed to the state store. What the mount daemon refused stops being
    /// served. The one path of every stage, one or many.
    pub async fn stage_all(
        &self,
        batch: Vec<ToStage>,
    ) -> Vec<Result<api::AddEntryResponse, Status>> {
        let intended: Vec<Intended<'_>> = batch
            .iter()
            .map(|e| Intended {
                name: &e.name,
                renewal: &e.resolved.renewal,
                share: e.share,
                version: &e.resolved.version,
            })
            .collect();
        let intents = match self.tracking.intend_all(&intended).await {
            Ok(intents) => intents,
            Err(e) => {
                let status = Status::unavailable(format!("not staged: {e}"));
                return batch
                    .into_iter()
                    .map(|entry| {
                        self.tracking.forget(entry.resolved.renewal);
                        Err(status.clone())
                    })
                    .collect();
            }
        };
        let answers = self.add_all_to_mount(&batch).await;
        let mut staged = Vec::new();
        let mut refused = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        for ((entry, intent), answer) in batch.into_iter().zip(intents).zip(answers) {
            if answer.is_ok() {
                staged.push(Staged {
                    name: entry.name,
                    tracked: Tracked {
                        renewal: entry.resolved.renewal,
                        share: entry.share,
                        url_expires_unix: entry.resolved.url_expires_unix,
                    },
                    intent,
                });
            } else {
                self.tracking.forget(entry.resolved.renewal);
                refused.push(intent);
            }
            results.push(answer);
        }
        self.tracking.abandon(refused);
        if let Err(e) = self.tracking.track_all(staged).await {
            let status = Status::internal(format!(
                "staged, but not saved (not taken up again after the control plane restarts): {e}"
            ));
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(status.clone());
            }
        }
        results
    }

    /// All our entries in the mount, by name, page by page.
    async fn mount_entries(&self) -> Result<HashMap<String, api::EntryInfo>, Status> {
        let entries = grpc::all_pages(|page_token| async {
            let page = self
                .mountd
                .clone()
                .list_entries(api::ListEntriesRequest {
                    page_token,
                    page_size: fusestream_shared::limits::MAX_LIST_PAGE_SIZE as u32,
                })
                .await?
                .into_inner();
            Ok((page.entries, page.next_page_token))
        })
        .await?;
        Ok(entries.into_iter().map(|e| (e.name.clone(), e)).collect())
    }

    fn mountd_identity(&self) -> MutexGuard<'_, Option<MountdIdentity>> {
        self.mountd_identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the mount daemon in line with what we renew, once we (re)connect to it:
    /// stages a previous run left unanswered are taken up if the daemon has them (else
    /// dropped); present entries get fresh URLs at once (it may have waited for us);
    /// missing ones are staged again if the daemon restarted (it lost them), else they
    /// were unstaged while we were away and are let go.
    async fn reconcile(&self) {
        let (Ok(status), Ok(listed)) = (
            self.mountd
                .clone()
                .get_status(api::GetStatusRequest {})
                .await,
            self.mount_entries().await,
        ) else {
            return;
        };
        let status = status.into_inner();
        // Taken after subscribing, so no handle event is lost between the two.
        self.power
            .resync(status.all_open_handles, status.handle_changes);
        let current = MountdIdentity {
            pid: status.pid,
            started_unix: unix_now() - status.uptime_seconds as i64,
        };
        let previous = self.mountd_identity().replace(current);
        let restarted = previous.is_some_and(|p| !p.same_as(&current));
        self.settle_leftover_intents(&listed, restarted).await;

        let (mut present, mut missing) = (Vec::new(), Vec::new());
        for name in self.tracking.names() {
            match listed.get(&name) {
                Some(entry) => {
                    self.tracking.set_expiry(&name, entry.url_expires_unix);
                    present.push(name);
                }
                None => missing.push(name),
            }
        }
        let mut renewed = 0;
        for chunk in present.chunks(CHUNK) {
            renewed += self.renew_all(chunk).await;
        }
        let (mut staged_again, let_go) = (0, if restarted { 0 } else { missing.len() });
        if restarted {
            for chunk in missing.chunks(CHUNK) {
                staged_again += self.restage_all(chunk).await;
            }
        } else if let Err(e) = self.tracking.untrack_all(&missing).await {
            tracing::warn!("letting go of entries unstaged meanwhile: {e}");
        }
        if let Err(e) = self.tracking.set_mountd(current).await {
            tracing::warn!("saving the mount daemon's identity: {e}");
        }
        tracing::info!(
            renewed,
            staged_again,
            let_go,
            tracked = self.tracking.len(),
            "reconciled with the mount daemon"
        );
    }

    fn leftover_intents(&self) -> MutexGuard<'_, Vec<(u64, Intent)>> {
        self.leftover_intents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Settles the stages a previous run asked for without seeing the answer: one the
    /// mount daemon shows (same name, ETag and size, on the same daemon) happened and is
    /// tracked from now on; any other did not, and is dropped. So the store and the mount
    /// agree after any crash.
    async fn settle_leftover_intents(
        &self,
        listed: &HashMap<String, api::EntryInfo>,
        restarted: bool,
    ) {
        let intents = std::mem::take(&mut *self.leftover_intents());
        if intents.is_empty() {
            return;
        }
        let (mut taken_up, mut dropped) = (Vec::new(), Vec::new());
        for (id, intent) in intents {
            let shown = listed
                .get(&intent.name)
                .filter(|e| !restarted && e.etag == intent.etag && e.size == intent.size);
            match shown {
                Some(entry) => match self.take_up(intent.entry).await {
                    Ok(tracked) => taken_up.push(Staged {
                        name: intent.name,
                        tracked: Tracked {
                            url_expires_unix: entry.url_expires_unix,
                            ..tracked
                        },
                        intent: Some(id),
                    }),
                    Err(e) => {
                        tracing::warn!(name = intent.name, "not taken up again: {e}");
                        dropped.push(Some(id));
                    }
                },
                None => dropped.push(Some(id)),
            }
        }
        tracing::info!(
            taken_up = taken_up.len(),
            dropped = dropped.len(),
            "settled the stages the last run left unanswered"
        );
        self.tracking.abandon(dropped);
        if let Err(e) = self.tracking.track_all(taken_up).await {
            tracing::warn!("saving the stages taken up: {e}");
        }
    }

    /// Stages `names` again from their sources (the mount daemon lost them); how many
    /// were.
    async fn restage_all(&self, names: &[String]) -> usize {
        let tracked: Vec<(String, Tracked)> = names
            .iter()
            .filter_map(|name| Some((name.clone(), self.tracking.get(name)?)))
            .collect();
        let renewals: Vec<&Renewal> = tracked.iter().map(|(_, t)| &t.renewal).collect();
        let resolved = self.resolve_all_again(&renewals).await;
        let mut batch = Vec::with_capacity(tracked.len());
        for ((name, tracked), resolved) in tracked.into_iter().zip(resolved) {
            match resolved {
                Ok(resolved) => batch.push(ToStage {
                    name,
                    resolved,
                    share: tracked.share,
                    replace: false,
                }),
                Err(e) => tracing::warn!(
                    name,
                    "could not stage again after the mount daemon restarted: {e}"
                ),
            }
        }
        let names: Vec<String> = batch.iter().map(|e| e.name.clone()).collect();
        let mut staged = 0;
        for (name, result) in names.iter().zip(self.stage_all(batch).await) {
            match result {
                Ok(_) => staged += 1,
                Err(status) => tracing::warn!(
                    name,
                    "could not stage again after the mount daemon restarted: {}",
                    status.message()
                ),
            }
        }
        staged
    }

    /// Resolves the sources of entries again, as they were staged; a result each, in
    /// order. Local files are opened together (`SignedUrlServer::register_all`: one
    /// hand-off to the blocking pool), the others with bounded concurrency.
    async fn resolve_all_again(
        &self,
        renewals: &[&Renewal],
    ) -> Vec<Result<sources::Resolved, SourceError>> {
        let mut results: Vec<Result<sources::Resolved, SourceError>> = renewals
            .iter()
            .map(|_| Err(SourceError::Internal("not resolved".into())))
            .collect();
        let (mut local_at, mut local, mut other_at, mut others) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, renewal) in renewals.iter().enumerate() {
            match renewal {
                Renewal::Local { path, identity, .. } => {
                    local_at.push(i);
                    local.push((path.clone(), Some(*identity)));
                }
                _ => {
                    other_at.push(i);
                    others.push(self.resolve_again(renewal));
                }
            }
        }
        let local = self.local.register_all(local).await;
        for (i, result) in local_at.into_iter().zip(local) {
            results[i] = result;
        }
        for (i, result) in other_at.into_iter().zip(bounded(others).await) {
            results[i] = result;
        }
        results
    }

    /// Resolves the source of an entry again, as it was staged.
    async fn resolve_again(&self, renewal: &Renewal) -> Result<sources::Resolved, SourceError> {
        let resolved = match renewal {
            Renewal::Never => {
                return Err(SourceError::FailedPrecondition(
                    "nothing to stage it again from".into(),
                ));
            }
            Renewal::Url { url } => self.http.resolve(url).await,
            Renewal::Local { path, identity, .. } => {
                return self.local.register(path, Some(*identity)).await;
            }
            Renewal::Remote { remote, path, .. } => remote.resolve(path, &self.http).await,
        };
        resolved.map(|r| sources::Resolved {
            renewal: renewal.clone(),
            ..r
        })
    }

    /// What a saved entry is tracked as, taken up without touching its source (a local
    /// file is checked on every request for it anyway).
    async fn take_up(&self, entry: SavedEntry) -> Result<Tracked, SourceError> {
        let renewal = match entry.source {
            Saved::Local {
                path,
                identity: Some(identity),
            } => self.local.register_pinned(path, identity),
            // Saved before identities were: the file found now is pinned.
            Saved::Local {
                path,
                identity: None,
            } => self.local.register(&path, None).await?.renewal,
            Saved::Url { url } => Renewal::Url { url },
            Saved::Remote { remote, path } => Renewal::Remote {
                remote: self.remotes.get(&remote)?,
                name: remote,
                path,
            },
        };
        Ok(Tracked {
            renewal,
            // An unknown sharing (a newer version's?) is read as private, never wider.
            share: api::Sharing::try_from(entry.share).unwrap_or(api::Sharing::Private),
            url_expires_unix: 0,
        })
    }

    /// Takes up what an earlier run saved: its entries are served again and their URLs
    /// renewed once the mount daemon is reached (see `follow_events`). Entries that can
    /// not be (their remote is gone from the config) are let go.
    pub async fn adopt(&self, saved: Loaded) {
        let started = Instant::now();
        *self.mountd_identity() = saved.mountd;
        *self.leftover_intents() = saved.intents;
        let mut adopted = Vec::with_capacity(saved.entries.len());
        let mut let_go = Vec::new();
        for (name, entry) in saved.entries {
            match self.take_up(entry).await {
                Ok(tracked) => adopted.push((name, tracked)),
                Err(e) => {
                    tracing::warn!(name, "not taken up again: {e}");
                    let_go.push(name);
                }
            }
        }
        let count = adopted.len();
        self.tracking.adopt(adopted);
        if let Err(e) = self.tracking.untrack_all(&let_go).await {
            tracing::warn!("letting go of entries not taken up: {e}");
        }
        tracing::info!(
            entries = count,
            let_go = let_go.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "took up the saved entries"
        );
    }

    /// Explains a failed call to the mount daemon: unreachable daemons say where they
    /// were looked for; the daemon's own errors pass through unchanged.
    fn mountd_error(&self, status: Status) -> Status {
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled => Status::unavailable(format!(
                "mount daemon at {} is not reachable: {}",
                self.config.mountd_socket.display(),
                status.message()
            )),
            Code::DeadlineExceeded => Status::unavailable(format!(
                "mount daemon at {} did not answer in time",
                self.config.mountd_socket.display()
            )),
            _ => status,
        }
    }

    /// Re-issues URLs well before they expire, forever: each tick renews the entries
    /// whose URL expires within two intervals (so a failed renewal is tried again before
    /// expiry), and only those.
    pub async fn renew_urls(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.renew_interval);
        ticker.tick().await;
        let horizon = 2 * self.config.renew_interval.as_secs() as i64;
        loop {
            ticker.tick().await;
            let due = self
                .tracking
                .expiring_before(unix_now() + horizon, usize::MAX);
            for chunk in due.chunks(CHUNK) {
                self.renew_all(chunk).await;
            }
        }
    }

    /// Follows the mount daemon's events while the control plane runs, reconnecting when
    /// the stream ends (e.g. the daemon restarted). A temp URL the remote refused is
    /// renewed at once, so the fetch waiting for it resumes; handle counts go to the power
    /// manager. Having fallen behind, it catches up as after reconnecting.
    pub async fn follow_events(self: Arc<Self>) {
        loop {
            match self
                .mountd
                .clone()
                .watch_events(api::WatchEventsRequest {})
                .await
            {
                Ok(response) => {
                    self.reconcile().await;
                    let mut events = response.into_inner();
                    while let Ok(Some(message)) = events.message().await {
                        if message.dropped_before > 0 {
                            tracing::warn!(
                                missed = message.dropped_before,
                                "fell behind the mount daemon's events; catching up"
                            );
                            // What was missed may be refused URLs and handle changes:
                            // catch up as on reconnecting (fresh URLs, the handle count).
                            self.reconcile().await;
                        }
                        match message.event {
                            // Only stored for the power task: never waits here.
                            Some(Event::HandleOpened(c) | Event::HandleClosed(c)) => {
                                self.power.observe(c.open_handles, c.change)
                            }
                            Some(Event::UrlRejected(rejected))
                                if self.renew(&rejected.name).await =>
                            {
                                tracing::info!(
                                    name = rejected.name,
                                    http_status = rejected.http_status,
                                    "temp URL refused by the remote; issued a new one"
                                );
                            }
                            _ => {}
                        }
                    }
                    // The daemon is gone (or unreachable): nothing of it is open now.
                    self.power.mount_gone();
                }
                Err(status) => tracing::debug!("mount daemon events: {}", status.message()),
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    /// Gives entry `name` a fresh URL. False if it has none to renew, or renewal failed.
    async fn renew(&self, name: &str) -> bool {
        self.renew_all(&[name.to_string()]).await == 1
    }

    /// Gives entries `names` fresh URLs: signed (with bounded concurrency), then handed to
    /// the mount daemon in `Mount.UpdateUrls` batches. How many were renewed; those the
    /// mount daemon no longer has were unstaged behind our back (directly on it, or it
    /// restarted) and are let go.
    async fn renew_all(&self, names: &[String]) -> usize {
        let signed = bounded(names.iter().map(|name| self.sign_again(name)).collect()).await;
        let updates: Vec<api::UpdateUrlRequest> = signed.into_iter().flatten().collect();
        let (mut renewed, mut gone) = (0, Vec::new());
        for updates in batches(updates, MAX_UPDATE_URLS) {
            let sent: Vec<(String, i64)> = updates
                .iter()
                .map(|u| (u.name.clone(), u.url_expires_unix))
                .collect();
            let results = match self
                .mountd
                .clone()
                .update_urls(api::UpdateUrlsRequest { updates })
                .await
            {
                Ok(response) => response.into_inner().results,
                Err(status) => {
                    let status = self.mountd_error(status);
                    let count = sent.len();
                    tracing::warn!(count, "URL renewal failed: {}", status.message());
                    continue;
                }
            };
            for ((name, expires), result) in sent.into_iter().zip(results) {
                match result.failed {
                    None => {
                        self.tracking.set_expiry(&name, expires);
                        renewed += 1;
                    }
                    Some(failure) if failure.code == Code::NotFound as i32 => gone.push(name),
                    Some(failure) => {
                        tracing::warn!(name, "URL renewal failed: {}", failure.message)
                    }
                }
            }
        }
        if let Err(e) = self.tracking.untrack_all(&gone).await {
            tracing::warn!("letting go of entries unstaged meanwhile: {e}");
        }
        renewed
    }

    /// A fresh URL for entry `name`, if it has one to renew (and signing worked).
    async fn sign_again(&self, name: &str) -> Option<api::UpdateUrlRequest> {
        let renewal = self.tracking.get(name)?.renewal;
        let signed = match &renewal {
            Renewal::Never | Renewal::Url { .. } => return None,
            Renewal::Local { id, .. } => Ok(self.local.sign(*id)),
            Renewal::Remote { remote, path, .. } => remote.sign(path).await,
        };
        match signed {
            Ok((url, url_expires_unix)) => Some(api::UpdateUrlRequest {
                name: name.to_string(),
                url,
                url_expires_unix,
            }),
            Err(e) => {
                tracing::warn!(name, "URL renewal failed: {e}");
                None
            }
        }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn stage(
        &self,
        request: Request<api::StageRequest>,
    ) -> Result<Response<api::StageResponse>, Status> {
        let request = request.into_inner();
        let share = api::Sharing::try_from(request.share).map_err(|_| {
            Status::invalid_argument(format!("share {} is not a known sharing", request.share))
        })?;
        let kind = sources::classify(&request.source)?;
        let name = if request.name.is_empty() {
            sources::default_name(&kind)?
        } else {
            request.name
        };
        names::validate(&name).map_err(|e| {
            Status::invalid_argument(format!("invalid name {}: {e}", names::shown(&name)))
        })?;
        let resolved = self.resolve(&request.source).await?;
        let source = resolved.display.clone();
        let staged = self.stage_all(vec![ToStage {
            name: name.clone(),
            resolved,
            share,
            replace: request.replace,
        }]);
        let response = staged.await.pop().expect("an answer per entry")?;
        tracing::info!(name, %source, "staged");
        Ok(Response::new(api::StageResponse {
            entry: response.entry,
        }))
    }

    async fn unstage(
        &self,
        request: Request<api::UnstageRequest>,
    ) -> Result<Response<api::UnstageResponse>, Status> {
        let request = request.into_inner();
        let name = request.name;
        if request.recursive {
            return self.unstage_folder(&name).await.map(Response::new);
        }
        self.mountd
            .clone()
            .remove_entry(api::RemoveEntryRequest { name: name.clone() })
            .await
            .map_err(|s| self.mountd_error(s))?;
        self.tracking
            .untrack(&name)
            .await
            .map_err(|e| not_saved_after_unstage(&e))?;
        tracing::info!(name, "unstaged");
        Ok(Response::new(api::UnstageResponse { removed: 1 }))
    }

    type StageManyStream = stage_many::ResultStream;

    async fn stage_many(
        &self,
        request: Request<api::StageManyRequest>,
    ) -> Result<Response<Self::StageManyStream>, Status> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| Status::unavailable("the control plane is shutting down"))?;
        stage_many::start(me, request.into_inner()).map(Response::new)
    }

    type ListRemoteStream = super::browse::PageStream;

    async fn list_remote(
        &self,
        request: Request<api::ListRemoteRequest>,
    ) -> Result<Response<Self::ListRemoteStream>, Status> {
        super::browse::list(&self.remotes, request.into_inner()).map(Response::new)
    }

    async fn list(
        &self,
        request: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        let request = request.into_inner();
        let page = self
            .mountd
            .clone()
            .list_entries(api::ListEntriesRequest {
                page_token: request.page_token,
                page_size: request.page_size,
            })
            .await
            .map_err(|s| self.mountd_error(s))?
            .into_inner();
        Ok(Response::new(api::ListResponse {
            entries: page.entries,
            next_page_token: page.next_page_token,
        }))
    }

    async fn status(
        &self,
        _request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let control = api::ControlStatus {
            version: fusestream_shared::VERSION.into(),
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            socket: self.config.socket.to_string_lossy().into_owned(),
            listen: self.bound.listen.map(|a| a.to_string()).unwrap_or_default(),
            metrics_addr: self
                .bound
                .metrics
                .map(|a| a.to_string())
                .unwrap_or_default(),
            mountd_socket: self.config.mountd_socket.to_string_lossy().into_owned(),
            local_source_addr: self.local.addr().to_string(),
            config: self
                .config
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            remotes: self.remotes.names().map(str::to_string).collect(),
            sleep: Some(sleep_status(&self.power.state())),
        };
        let (mount, mount_error) = match self
            .mountd
            .clone()
            .get_status(api::GetStatusRequest {})
            .await
        {
            Ok(status) => (Some(status.into_inner()), String::new()),
            Err(status) => (None, self.mountd_error(status).message().to_string()),
        };
        Ok(Response::new(api::StatusResponse {
            control: Some(control),
            mount,
            mount_error,
        }))
    }

    async fn set_temp_url_key(
        &self,
        request: Request<api::SetTempUrlKeyRequest>,
    ) -> Result<Response<api::SetTempUrlKeyResponse>, Status> {
        let request = request.into_inner();
        let Remote::Swift(swift) = &*self.remotes.get(&request.remote)? else {
            return Err(Status::invalid_argument(format!(
                "remote {:?} is not a Swift remote",
                request.remote
            )));
        };
        let key = if request.key.is_empty() {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| Status::internal(e.to_string()))?;
            hex::encode(bytes)
        } else {
            request.key
        };
        swift.set_temp_url_key(&key).await?;
        tracing::info!(remote = request.remote, "TempURL key set");
        Ok(Response::new(api::SetTempUrlKeyResponse {}))
    }

    async fn list_ops(
        &self,
        request: Request<api::ListOpsRequest>,
    ) -> Result<Response<api::ListOpsResponse>, Status> {
        self.mountd
            .clone()
            .list_ops(request.into_inner())
            .await
            .map_err(|s| self.mountd_error(s))
    }
}

/// `requests` in batches for one call each: at most `max` requests and about
/// [`MAX_BATCH_BYTES`] encoded (long names and URLs make a batch shorter).
fn batches<T: Message>(requests: Vec<T>, max: usize) -> Vec<Vec<T>> {
    let mut all = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for request in requests {
        if batch.len() == max || (bytes >= MAX_BATCH_BYTES && !batch.is_empty()) {
            all.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += request.encoded_len();
        batch.push(request);
    }
    if !batch.is_empty() {
        all.push(batch);
    }
    all
}

/// The request that stages `entry`; a size beyond what FuseStream stages is refused here,
/// naming the source.
fn entry_request(entry: &ToStage) -> Result<api::AddEntryRequest, Status> {
    let resolved = &entry.resolved;
    let size = resolved.version.size;
    if size > MAX_OBJECT_SIZE {
        return Err(Status::invalid_argument(format!(
            "{} declares a size of {size} bytes, more than the largest object FuseStream stages ({MAX_OBJECT_SIZE} bytes)",
            resolved.display
        )));
    }
    Ok(api::AddEntryRequest {
        entry: Some(api::EntrySpec {
            name: entry.name.clone(),
            url: resolved.url.clone(),
            url_expires_unix: resolved.url_expires_unix,
            version: Some(resolved.version.clone()),
            source: resolved.display.clone(),
            share: entry.share.into(),
        }),
        replace: entry.replace,
    })
}

/// The error of an unstage the mount daemon did, but the state store did not record.
fn not_saved_after_unstage(e: &super::state::StoreError) -> Status {
    Status::internal(format!(
        "unstaged, but the control plane's state could not be updated: {e}"
    ))
}

/// The power manager's state as the API reports it.
fn sleep_status(state: &PowerState) -> api::SleepInhibition {
    use api::sleep_inhibition::State as S;
    let (kind, open_files, release_in_ms, reason) = match state {
        PowerState::Disabled => (S::Disabled, 0, 0, String::new()),
        PowerState::Released => (S::Released, 0, 0, String::new()),
        PowerState::Acquiring { open } => (S::Acquiring, *open, 0, String::new()),
        PowerState::Inhibited { open } => (S::Inhibited, *open, 0, String::new()),
        PowerState::Grace { until } => {
            let left = until.saturating_duration_since(Instant::now());
            (S::Grace, 0, left.as_millis() as u64, String::new())
        }
        PowerState::Unavailable { reason, open } => (S::Unavailable, *open, 0, reason.clone()),
    };
    api::SleepInhibition {
        inhibited: state.inhibited(),
        state: kind.into(),
        open_files,
        release_in_ms,
        reason,
    }
}
