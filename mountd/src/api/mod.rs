//! The `fusestream.v1.Mount` gRPC service: staging, listing and renewing entries.
//!
//! Requests are checked here (names, URL schemes) and errors are mapped to gRPC status in
//! one place, [`status_of`]. The caller's uid and gid, from the Unix socket's peer
//! credentials, become the owner of the entries it stages. Who may do what to an entry is
//! decided by the core (`fs::Caller`): its owner or root may replace, remove or renew it;
//! listings, ops and events show a caller only what is its own (root sees all).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fusestream_shared::api::{self, mount_server::Mount};
use fusestream_shared::limits::{MAX_ADD_ENTRIES, MAX_OBJECT_SIZE, MAX_UPDATE_URLS};
use fusestream_shared::{grpc, http, names};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::events::Events;
use crate::fs::{Caller, EntryInfo, Fs, NamespaceError, NewEntry, StageError, Version};
use crate::ops::OpRegistry;

pub struct MountService {
    fs: Arc<Fs>,
    ops: Arc<OpRegistry>,
    events: Arc<Events>,
    /// Where metrics are served, for status ("" if nowhere).
    metrics_addr: String,
}

impl MountService {
    pub fn new(
        fs: Arc<Fs>,
        ops: Arc<OpRegistry>,
        events: Arc<Events>,
        metrics_addr: String,
    ) -> MountService {
        MountService {
            fs,
            ops,
            events,
            metrics_addr,
        }
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<api::MountEvent, Status>> + Send>>;

/// Who may call the mount daemon (any of its services): root, the daemon's own user,
/// `uids`, and callers whose primary group (from the peer credentials) or any
/// supplementary group is in `gids`.
///
/// The peer credentials (SO_PEERCRED) are the kernel's, taken at connect; they carry no
/// supplementary groups, so those are read from `/proc/PID/status` of the peer's pid, only
/// when the uid and primary gid did not already decide. That read is racy: a peer that
/// exits at once and whose pid is reused may be judged by the new process's groups, and
/// one that changed its groups since connecting is judged by the new ones. Callers that
/// must not depend on that get their gid as primary group (`sg`, `newgrp`, `setpriv
/// --regid`) or a uid of their own.
pub fn peer_check(uids: Vec<u32>, gids: Vec<u32>) -> grpc::Admit {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let trusted = Trusted { me, uids, gids };
    Arc::new(move |extensions: &tonic::codegen::http::Extensions| {
        let cred = extensions
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| Status::permission_denied("peer credentials unavailable"))?;
        let groups = || {
            cred.pid()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
                .map(|status| supplementary_groups(&status))
                .unwrap_or_default()
        };
        if trusted.admits(cred.uid(), cred.gid(), groups) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "uid {} may not use the mount daemon (see --allow-uid, --allow-gid)",
                cred.uid()
            )))
        }
    })
}

/// The callers `peer_check` lets in.
struct Trusted {
    me: u32,
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl Trusted {
    /// `groups` (the supplementary groups) is asked only if uid and gid do not decide.
    fn admits(&self, uid: u32, gid: u32, groups: impl FnOnce() -> Vec<u32>) -> bool {
        uid == 0
            || uid == self.me
            || self.uids.contains(&uid)
            || self.gids.contains(&gid)
            || (!self.gids.is_empty() && groups().iter().any(|g| self.gids.contains(g)))
    }
}

/// The `Groups:` of a `/proc/PID/status` text (none if the line is missing).
fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The caller's (uid, gid), from the kernel's peer credentials. A request without them
/// (never over the Unix socket) is refused rather than taken for root's.
fn peer<T>(request: &Request<T>) -> Result<(u32, u32), Status> {
    request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| (cred.uid(), cred.gid()))
        .ok_or_else(|| Status::permission_denied("peer credentials unavailable"))
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    peer(request).map(|(uid, _)| Caller { uid })
}

/// The mode a staged file gets for `share` (an unknown value is refused, not widened).
fn mode_of(share: i32) -> Result<u16, Status> {
    match api::Sharing::try_from(share) {
        Ok(api::Sharing::Private) => Ok(0o400),
        Ok(api::Sharing::Group) => Ok(0o440),
        Ok(api::Sharing::All) => Ok(0o444),
        Err(_) => Err(Status::invalid_argument(format!(
            "entry.share {share} is not a known sharing"
        ))),
    }
}

/// The one mapping from the core's namespace errors to gRPC status.
fn status_of(error: NamespaceError) -> Status {
    let message = error.to_string();
    match error {
        NamespaceError::InvalidName { .. } => Status::invalid_argument(message),
        NamespaceError::AlreadyExists(_) | NamespaceError::Conflict { .. } => {
            Status::already_exists(message)
        }
        NamespaceError::NotFound(_) => Status::not_found(message),
        NamespaceError::NotOwner(_) => Status::permission_denied(message),
    }
}

/// Names of a folder's entries taken per page by `RemoveEntries` (see `Fs::names_under`).
const REMOVE_PAGE: usize = 1000;

/// The first second HTTP dates can not express (the year 10000).
const HTTP_DATE_END_UNIX: i64 = 253_402_300_800;

/// A version's modification time: none if not positive, refused past what HTTP dates
/// express (fetches send it as If-Unmodified-Since).
fn unix_time(secs: i64) -> Result<Option<SystemTime>, Status> {
    if secs >= HTTP_DATE_END_UNIX {
        return Err(Status::invalid_argument(format!(
            "entry.version.last_modified_unix {secs} is past the year 9999"
        )));
    }
    Ok((secs > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)))
}

fn check_url(url: &str) -> Result<(), Status> {
    if http::is_http_url(url) {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "url must be an http:// or https:// URL",
        ))
    }
}

/// Sizes a staged file may have (see `limits::MAX_OBJECT_SIZE`); larger ones are a
/// caller's mistake or a remote's lie, not a resource the daemon lacks.
fn check_size(size: u64) -> Result<(), Status> {
    if size <= MAX_OBJECT_SIZE {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "entry.version.size {size} is larger than the largest object FuseStream stages ({MAX_OBJECT_SIZE} bytes)"
        )))
    }
}

/// Refuses a batch call carrying more than `max` items (`what`, for the message).
fn check_batch(len: usize, max: usize, what: &str) -> Result<(), Status> {
    if len <= max {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{len} {what} in one call; at most {max}"
        )))
    }
}

/// One entry's refusal in a batch answer, as the single call would have answered it.
fn failure(status: Status) -> api::EntryFailure {
    api::EntryFailure {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

fn to_api(info: EntryInfo) -> api::EntryInfo {
    api::EntryInfo {
        name: info.name,
        path: info.path.to_string_lossy().into_owned(),
        size: info.size,
        bytes_fetched: info.bytes_fetched,
        open_handles: info.open_handles,
        source: info.source,
        etag: info.etag,
        inode: info.ino,
        url_expires_unix: info.url_expires_unix,
        error: info.error.map(|e| e.to_string()).unwrap_or_default(),
        mode: u32::from(info.mode),
        owner_uid: info.owner_uid,
    }
}

impl MountService {
    /// Checks one URL update and applies it for `caller`: the one path of UpdateUrl and
    /// UpdateUrls.
    fn update_url_for(&self, caller: Caller, update: api::UpdateUrlRequest) -> Result<(), Status> {
        check_url(&update.url)?;
        self.fs
            .update_url(&update.name, caller, update.url, update.url_expires_unix)
            .map_err(status_of)
    }

    /// Checks one entry and stages it for `owner`: the one path of AddEntry and AddEntries.
    async fn stage(
        &self,
        owner: (u32, u32),
        request: api::AddEntryRequest,
    ) -> Result<api::EntryInfo, Status> {
        let spec = request
            .entry
            .ok_or_else(|| Status::invalid_argument("entry is required"))?;
        names::validate(&spec.name).map_err(|e| {
            Status::invalid_argument(format!("invalid name {}: {e}", names::shown(&spec.name)))
        })?;
        check_url(&spec.url)?;
        let version = spec
            .version
            .ok_or_else(|| Status::invalid_argument("entry.version is required"))?;
        check_size(version.size)?;
        let last_modified = unix_time(version.last_modified_unix)?;
        let mode = mode_of(spec.share)?;
        let size = version.size;
        let entry = NewEntry {
            name: spec.name,
            url: spec.url,
            url_expires_unix: spec.url_expires_unix,
            version: Version {
                size,
                etag: version.etag,
                last_modified,
            },
            source: fusestream_shared::redact::url(&spec.source),
            owner,
            mode,
        };
        let name = entry.name.clone();
        let info = self
            .fs
            .stage(entry, request.replace)
            .await
            .map_err(|e| match e {
                StageError::Namespace(e) => status_of(e),
            })?;
        tracing::info!(name, size, "staged");
        Ok(to_api(info))
    }
}

#[tonic::async_trait]
impl Mount for MountService {
    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<api::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        use tokio::sync::broadcast::error::RecvError;
        let caller = caller(&request)?;
        let events = self.events.subscribe();
        // State: the receiver and how many events it missed since the last one sent.
        let stream = futures_util::stream::unfold(
            (events, 0u64),
            move |(mut events, mut missed)| async move {
                loop {
                    match events.recv().await {
                        Ok(owned) if !caller.may_manage(owned.owner) => {}
                        Ok(owned) => {
                            let event = owned.event;
                            let message = api::MountEvent {
                                dropped_before: std::mem::take(&mut missed),
                                event: Some(event),
                            };
                            return Some((Ok(message), (events, missed)));
                        }
                        Err(RecvError::Lagged(n)) => missed += n,
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn add_entry(
        &self,
        request: Request<api::AddEntryRequest>,
    ) -> Result<Response<api::AddEntryResponse>, Status> {
        let owner = peer(&request)?;
        let entry = self.stage(owner, request.into_inner()).await?;
        Ok(Response::new(api::AddEntryResponse { entry: Some(entry) }))
    }

    async fn add_entries(
        &self,
        request: Request<api::AddEntriesRequest>,
    ) -> Result<Response<api::AddEntriesResponse>, Status> {
        let owner = peer(&request)?;
        let entries = request.into_inner().entries;
        check_batch(entries.len(), MAX_ADD_ENTRIES, "entries")?;
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let result = match self.stage(owner, entry).await {
                Ok(info) => api::entry_result::Result::Entry(info),
                Err(status) => api::entry_result::Result::Failed(failure(status)),
            };
            results.push(api::EntryResult {
                result: Some(result),
            });
        }
        Ok(Response::new(api::AddEntriesResponse { results }))
    }

    async fn remove_entry(
        &self,
        request: Request<api::RemoveEntryRequest>,
    ) -> Result<Response<api::RemoveEntryResponse>, Status> {
        let caller = caller(&request)?;
        let name = request.into_inner().name;
        self.fs.remove(&name, caller).await.map_err(status_of)?;
        tracing::info!(name, "unstaged");
        Ok(Response::new(api::RemoveEntryResponse {}))
    }

    async fn remove_entries(
        &self,
        request: Request<api::RemoveEntriesRequest>,
    ) -> Result<Response<api::RemoveEntriesResponse>, Status> {
        let caller = caller(&request)?;
        let folder = request.into_inner().folder;
        names::validate(folder.trim_end_matches('/')).map_err(|e| {
            Status::invalid_argument(format!("invalid folder {}: {e}", names::shown(&folder)))
        })?;
        // Only the caller's own entries, even for root: a folder may hold other users'.
        // A page of names at a time, each page walking on from the last name looked at.
        let mut removed = 0u64;
        let mut after = String::new();
        loop {
            let (names, next) = self
                .fs
                .names_under(&folder, caller.uid, &after, REMOVE_PAGE);
            for name in names {
                match self.fs.remove(&name, caller).await {
                    Ok(()) => removed += 1,
                    // Removed meanwhile, or replaced by root's since listed: not ours now.
                    Err(NamespaceError::NotFound(_) | NamespaceError::NotOwner(_)) => {}
                    Err(e) => return Err(status_of(e)),
                }
            }
            match next {
                Some(next) => after = next,
                None => break,
            }
        }
        tracing::info!(folder, removed, "unstaged a folder");
        Ok(Response::new(api::RemoveEntriesResponse { removed }))
    }

    async fn list_entries(
        &self,
        request: Request<api::ListEntriesRequest>,
    ) -> Result<Response<api::ListEntriesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let size = fusestream_shared::limits::list_page_size(request.page_size);
        let (entries, next) = self.fs.entries_page(caller, &request.page_token, size);
        Ok(Response::new(api::ListEntriesResponse {
            entries: entries.into_iter().map(to_api).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn update_url(
        &self,
        request: Request<api::UpdateUrlRequest>,
    ) -> Result<Response<api::UpdateUrlResponse>, Status> {
        let caller = caller(&request)?;
        self.update_url_for(caller, request.into_inner())?;
        Ok(Response::new(api::UpdateUrlResponse {}))
    }

    async fn update_urls(
        &self,
        request: Request<api::UpdateUrlsRequest>,
    ) -> Result<Response<api::UpdateUrlsResponse>, Status> {
        let caller = caller(&request)?;
        let updates = request.into_inner().updates;
        check_batch(updates.len(), MAX_UPDATE_URLS, "updates")?;
        let results = updates
            .into_iter()
            .map(|update| api::UpdateUrlResult {
                failed: self.update_url_for(caller, update).err().map(failure),
            })
            .collect();
        Ok(Response::new(api::UpdateUrlsResponse { results }))
    }

    async fn list_ops(
        &self,
        request: Request<api::ListOpsRequest>,
    ) -> Result<Response<api::ListOpsResponse>, Status> {
        let caller = caller(&request)?;
        // A caller sees the ops of its own processes and the ops on its own entries.
        let ops = self
            .ops
            .in_flight()
            .into_iter()
            .filter(|op| {
                caller.may_manage(op.uid)
                    || self
                        .fs
                        .owner_of(op.ino)
                        .is_some_and(|o| caller.may_manage(o))
            })
            .map(|op| api::InFlightOp {
                op: op.kind.span_name().to_string(),
                unique: op.unique,
                pid: op.pid,
                process: std::fs::read_to_string(format!("/proc/{}/comm", op.pid))
                    .map(|name| name.trim().to_string())
                    .unwrap_or_default(),
                age_ms: op.age.as_millis() as u64,
                detail: op.detail,
                waiting_for: op.waiting_for,
                stalled: op.stalled,
                path: match op.ino {
                    0 => String::new(),
                    ino => self
                        .fs
                        .path_of(ino)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                },
            })
            .collect();
        Ok(Response::new(api::ListOpsResponse { ops }))
    }

    async fn get_status(
        &self,
        _request: Request<api::GetStatusRequest>,
    ) -> Result<Response<api::MountStatus>, Status> {
        let status = self.fs.status();
        let handles = self.fs.handle_count();
        let config = self.fs.config();
        Ok(Response::new(api::MountStatus {
            mountpoint: config.mountpoint.to_string_lossy().into_owned(),
            version: fusestream_shared::VERSION.into(),
            pid: std::process::id(),
            uptime_seconds: status.uptime.as_secs(),
            entries: status.entries,
            open_handles: status.open_handles,
            bytes_fetched: status.bytes_fetched,
            reads_waiting: status.reads_waiting,
            cache_dir: self.fs.cache().dir().to_string_lossy().into_owned(),
            cache_bytes: self.fs.cache().used_bytes(),
            cache_max_bytes: self.fs.cache().max_bytes().unwrap_or(0),
            evictions: self.fs.cache().evictions(),
            metrics_addr: self.metrics_addr.clone(),
            all_open_handles: handles.open,
            handle_changes: handles.change,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(uids: &[u32], gids: &[u32]) -> Trusted {
        Trusted {
            me: 1000,
            uids: uids.to_vec(),
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn sharing_maps_to_a_mode_and_an_unknown_one_is_refused() {
        assert_eq!(mode_of(api::Sharing::Private.into()).unwrap(), 0o400);
        assert_eq!(mode_of(api::Sharing::Group.into()).unwrap(), 0o440);
        assert_eq!(mode_of(api::Sharing::All.into()).unwrap(), 0o444);
        assert_eq!(mode_of(7).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn root_self_and_listed_uids_are_admitted_without_reading_groups() {
        let t = trusted(&[2000], &[50]);
        let no_groups = || -> Vec<u32> { panic!("groups read needlessly") };
        assert!(t.admits(0, 0, no_groups));
        assert!(t.admits(1000, 1000, no_groups));
        assert!(t.admits(2000, 2000, no_groups));
        assert!(t.admits(3000, 50, no_groups));
    }

    #[test]
    fn supplementary_groups_admit_only_listed_gids() {
        let t = trusted(&[], &[50, 60]);
        assert!(t.admits(3000, 3000, || vec![7, 60]));
        assert!(!t.admits(3000, 3000, || vec![7, 8]));
        assert!(!t.admits(3000, 3000, Vec::new));
        // Without --allow-gid, groups are never looked at.
        assert!(!trusted(&[], &[]).admits(3000, 3000, || panic!("groups read needlessly")));
    }

    #[test]
    fn sizes_beyond_the_limit_are_invalid_arguments() {
        assert!(check_size(0).is_ok());
        assert!(check_size(MAX_OBJECT_SIZE).is_ok());
        for size in [MAX_OBJECT_SIZE + 1, i64::MAX as u64, u64::MAX] {
            let status = check_size(size).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(&size.to_string()), "{status:?}");
        }
    }

    #[test]
    fn groups_are_read_from_proc_status() {
        let status =
            "Name:\tgrpcurl\nUid:\t65534\t65534\t65534\t65534\nGroups:\t27 100 65533 \nNSpid:\t1\n";
        assert_eq!(supplementary_groups(status), [27, 100, 65533]);
        assert_eq!(supplementary_groups("Groups:\n"), Vec::<u32>::new());
        assert_eq!(supplementary_groups("Name:\tx\n"), Vec::<u32>::new());
    }
}
