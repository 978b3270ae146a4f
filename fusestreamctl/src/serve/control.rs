//! The `fusestream.v1.Control` service. Staging many sources at once (folders, remote
//! prefixes) is its own module, `stage_many`; browsing remotes is `super::browse`.

mod stage_many;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use fusestream_shared::api::mount_event::Event;
use fusestream_shared::api::{self, control_server::Control, mount_client::MountClient};
use fusestream_shared::grpc::{self, TracedChannel};
use fusestream_shared::names;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::ServeConfig;
use fusestream_shared::limits::MAX_OBJECT_SIZE;

use super::state::{MountdIdentity, Saved, SavedEntry, Saver, State};
use crate::power::{PowerManager, PowerState};
use crate::sources::http::HttpSource;
use crate::sources::local::LocalSource;
use crate::sources::{self, Remote, Remotes, Renewal, SourceKind};

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The addresses the control plane serves on besides its socket, as bound (a port 0
/// asked for is resolved), for `Status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    /// The Control API on TCP.
    pub listen: Option<SocketAddr>,
    /// The metrics endpoint.
    pub metrics: Option<SocketAddr>,
}

/// An entry the control plane staged and renews: how its URL is renewed, and who besides
/// its stager may read it (restaged with the same).
#[derive(Debug, Clone)]
struct Tracked {
    renewal: Renewal,
    share: api::Sharing,
}

impl Tracked {
    /// What is saved of it, if anything is (see `state`).
    fn saved(&self) -> Option<SavedEntry> {
        Some(SavedEntry {
            source: Saved::of(&self.renewal)?,
            share: self.share.into(),
        })
    }
}

pub struct ControlService {
    config: ServeConfig,
    bound: Bound,
    local: LocalSource,
    http: HttpSource,
    /// The mount daemon; calls carry the trace context of the RPC that makes them.
    mountd: MountClient<TracedChannel>,
    remotes: Remotes,
    /// How to renew the URL of each staged entry that has one that expires, by name (and,
    /// for local files, what to stop serving on unstage). Persisted by `saver`.
    renewals: Arc<Mutex<HashMap<String, Tracked>>>,
    /// The mount daemon the entries are staged on (saved, to tell a restart apart).
    mountd_identity: Arc<Mutex<Option<MountdIdentity>>>,
    saver: Saver,
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
        local: LocalSource,
        http: HttpSource,
        remotes: Remotes,
        mountd: Channel,
        state_file: PathBuf,
    ) -> ControlService {
        let renewals: Arc<Mutex<HashMap<String, Tracked>>> = Arc::default();
        let mountd_identity: Arc<Mutex<Option<MountdIdentity>>> = Arc::default();
        let power = PowerManager::start(config.power);
        ControlService {
            config,
            bound,
            local,
            http,
            mountd: MountClient::new(grpc::traced(mountd)),
            remotes,
            saver: Saver::start(
                state_file,
                Box::new({
                    let (renewals, identity) = (renewals.clone(), mountd_identity.clone());
                    move || State {
                        entries: renewals
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .iter()
                            .filter_map(|(n, t)| Some((n.clone(), t.saved()?)))
                            .collect(),
                        mountd: *identity.lock().unwrap_or_else(|e| e.into_inner()),
                    }
                }),
            ),
            renewals,
            mountd_identity,
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

    fn renewals(&self) -> MutexGuard<'_, HashMap<String, Tracked>> {
        self.renewals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a resolved source to the mount daemon as entry `name`, readable as `share` says.
    async fn add_to_mount(
        &self,
        name: &str,
        resolved: &sources::Resolved,
        replace: bool,
        share: api::Sharing,
    ) -> Result<api::AddEntryResponse, Status> {
        let add = entry_request(name, resolved, replace, share)?;
        self.mountd
            .clone()
            .add_entry(add)
            .await
            .map(Response::into_inner)
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

    fn mountd_identity(&self) -> MutexGuard<'_, Option<MountdIdentity>> {
        self.mountd_identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the mount daemon in line with what we renew, once we (re)connect to it:
    /// present entries get fresh URLs at once (it may have waited for us); missing ones are
    /// staged again if the daemon restarted (it lost them), else they were unstaged while
    /// we were away and are let go.
    async fn reconcile(&self) {
        let (Ok(status), Ok(listed)) = (
            self.mountd
                .clone()
                .get_status(api::GetStatusRequest {})
                .await,
            self.mountd
                .clone()
                .list_entries(api::ListEntriesRequest {})
                .await,
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
        let present: std::collections::HashSet<String> = listed
            .into_inner()
            .entries
            .into_iter()
            .map(|e| e.name)
            .collect();
        let names: Vec<String> = self.renewals().keys().cloned().collect();
        for name in names {
            if present.contains(&name) {
                self.renew(&name).await;
            } else if restarted {
                self.restage(&name).await;
            } else {
                let removed = self.renewals().remove(&name);
                self.forget(removed.map(|t| t.renewal));
            }
        }
        self.saver.save().await;
    }

    /// Stages `name` again from its source (the mount daemon lost it).
    async fn restage(&self, name: &str) {
        let Some(Tracked { renewal, share }) = self.renewals().get(name).cloned() else {
            return;
        };
        let resolved = match &renewal {
            Renewal::Never => return,
            Renewal::Url { url } => self.http.resolve(url).await.map(|mut r| {
                r.renewal = renewal.clone();
                r
            }),
            Renewal::Local { path, identity, .. } => {
                self.local.register(path, Some(*identity)).await
            }
            Renewal::Remote { remote, path, .. } => {
                remote.resolve(path, &self.http).await.map(|mut r| {
                    r.renewal = renewal.clone();
                    r
                })
            }
        };
        let result = match resolved {
            Ok(resolved) => match self.add_to_mount(name, &resolved, false, share).await {
                Ok(_) => {
                    self.track(name, resolved.renewal, share).await;
                    Ok(())
                }
                Err(status) => {
                    if let Renewal::Local { id, .. } = resolved.renewal {
                        self.local.unregister(id);
                    }
                    Err(status.message().to_string())
                }
            },
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => tracing::info!(name, "staged again after the mount daemon restarted"),
            Err(e) => tracing::warn!(
                name,
                "could not stage again after the mount daemon restarted: {e}"
            ),
        }
    }

    /// Takes up the entries saved by an earlier run: their local files are served again
    /// and their URLs are renewed once the mount daemon is reached (see `follow_events`).
    pub async fn adopt(&self, saved: State) {
        *self.mountd_identity() = saved.mountd;
        for (name, SavedEntry { source, share }) in saved.entries {
            let renewal = match source {
                Saved::Local { path, identity } => match self.local.register(&path, identity).await
                {
                    Ok(resolved) => resolved.renewal,
                    Err(e) => {
                        tracing::warn!(name, "not taken up again: {e}");
                        continue;
                    }
                },
                Saved::Url { url } => Renewal::Url { url },
                Saved::Remote { remote, path } => match self.remotes.get(&remote) {
                    Ok(r) => Renewal::Remote {
                        remote: r,
                        name: remote,
                        path,
                    },
                    Err(e) => {
                        tracing::warn!(name, "not taken up again: {e}");
                        continue;
                    }
                },
            };
            // An unknown sharing (a newer version's?) is read as private, never wider.
            let share = api::Sharing::try_from(share).unwrap_or(api::Sharing::Private);
            self.renewals().insert(name, Tracked { renewal, share });
        }
        self.saver.save().await;
    }

    /// Records how `name` is renewed from now on and who may read it; the entry it
    /// replaced stops being served.
    async fn track(&self, name: &str, renewal: Renewal, share: api::Sharing) {
        self.remember(name, renewal, share);
        self.saver.save().await;
    }

    /// [`ControlService::track`] without saving: for a batch, saved once at its end.
    fn remember(&self, name: &str, renewal: Renewal, share: api::Sharing) {
        let replaced = {
            let mut renewals = self.renewals();
            match renewal {
                Renewal::Never => renewals.remove(name),
                renewal => renewals.insert(name.to_string(), Tracked { renewal, share }),
            }
        };
        self.forget(replaced.map(|t| t.renewal));
    }

    /// Unstages all of the caller's entries under `folder` in one call to the mount daemon
    /// (which removes only the caller's own), and stops renewing those we track.
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
        let forgotten: Vec<Tracked> = {
            let mut renewals = self.renewals();
            let names: Vec<String> = renewals
                .keys()
                .filter(|name| names::is_under(name, folder))
                .cloned()
                .collect();
            names.iter().filter_map(|n| renewals.remove(n)).collect()
        };
        for tracked in forgotten {
            self.forget(Some(tracked.renewal));
        }
        self.saver.save().await;
        tracing::info!(folder, removed, "unstaged a folder");
        Ok(api::UnstageResponse { removed })
    }

    /// Stops serving a local file that is no longer staged.
    fn forget(&self, renewal: Option<Renewal>) {
        match renewal {
            Some(Renewal::Local { id, .. }) => self.local.unregister(id),
            Some(Renewal::Remote { remote, path, .. }) => remote.release(&path),
            _ => {}
        }
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

    /// Re-issues the URLs of local entries well before they expire, forever.
    pub async fn renew_urls(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.renew_interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let names: Vec<String> = self.renewals().keys().cloned().collect();
            for name in names {
                self.renew(&name).await;
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
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Gives entry `name` a fresh URL. False if it has none to renew, or renewal failed.
    async fn renew(&self, name: &str) -> bool {
        let Some(renewal) = self.renewals().get(name).map(|t| t.renewal.clone()) else {
            return false;
        };
        let signed = match &renewal {
            Renewal::Never | Renewal::Url { .. } => return false,
            Renewal::Local { id, .. } => Ok(self.local.sign(*id)),
            Renewal::Remote { remote, path, .. } => remote.sign(path).await,
        };
        let (url, url_expires_unix) = match signed {
            Ok(signed) => signed,
            Err(e) => {
                tracing::warn!(name, "URL renewal failed: {e}");
                return false;
            }
        };
        let request = api::UpdateUrlRequest {
            name: name.to_string(),
            url,
            url_expires_unix,
        };
        match self.mountd.clone().update_url(request).await {
            Ok(_) => true,
            Err(status) if status.code() == Code::NotFound => {
                // Unstaged behind our back (directly on the mount daemon, or it restarted).
                let removed = self.renewals().remove(name);
                self.forget(removed.map(|t| t.renewal));
                self.saver.save().await;
                false
            }
            Err(status) => {
                tracing::warn!(name, "URL renewal failed: {}", status.message());
                false
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
        let response = match self
            .add_to_mount(&name, &resolved, request.replace, share)
            .await
        {
            Ok(response) => response,
            Err(status) => {
                self.forget(Some(resolved.renewal));
                return Err(self.mountd_error(status));
            }
        };
        self.track(&name, resolved.renewal, share).await;
        tracing::info!(name, source = %resolved.display, "staged");
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
        let removed = self.renewals().remove(&name);
        self.forget(removed.map(|t| t.renewal));
        self.saver.save().await;
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
        _request: Request<api::ListRequest>,
    ) -> Result<Response<api::ListResponse>, Status> {
        let entries = self
            .mountd
            .clone()
            .list_entries(api::ListEntriesRequest {})
            .await
            .map_err(|s| self.mountd_error(s))?
            .into_inner()
            .entries;
        Ok(Response::new(api::ListResponse { entries }))
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

/// The request that stages `resolved` as entry `name`, readable as `share` says; a size
/// beyond what FuseStream stages is refused here, naming the source.
fn entry_request(
    name: &str,
    resolved: &sources::Resolved,
    replace: bool,
    share: api::Sharing,
) -> Result<api::AddEntryRequest, Status> {
    let size = resolved.version.size;
    if size > MAX_OBJECT_SIZE {
        return Err(Status::invalid_argument(format!(
            "{} declares a size of {size} bytes, more than the largest object FuseStream stages ({MAX_OBJECT_SIZE} bytes)",
            resolved.display
        )));
    }
    Ok(api::AddEntryRequest {
        entry: Some(api::EntrySpec {
            name: name.to_string(),
            url: resolved.url.clone(),
            url_expires_unix: resolved.url_expires_unix,
            version: Some(resolved.version.clone()),
            source: resolved.display.clone(),
            share: share.into(),
        }),
        replace,
    })
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
