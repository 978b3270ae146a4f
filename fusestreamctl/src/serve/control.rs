//! The `fusestream.v1.Control` service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fusestream_shared::api::mount_event::Event;
use fusestream_shared::api::{self, control_server::Control, mount_client::MountClient};
use fusestream_shared::names;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::ServeConfig;
use crate::sources::http::HttpSource;
use crate::sources::local::LocalSource;
use crate::sources::{self, SourceKind};

pub struct ControlService {
    config: ServeConfig,
    listen: Option<SocketAddr>,
    local: LocalSource,
    http: HttpSource,
    mountd: MountClient<Channel>,
    /// Entries staged from local files, by name: their registration with the local
    /// file server, kept to renew their URLs and to stop serving them on unstage.
    local_entries: Mutex<HashMap<String, u64>>,
    started: Instant,
}

impl ControlService {
    pub fn new(
        config: ServeConfig,
        listen: Option<SocketAddr>,
        local: LocalSource,
        http: HttpSource,
        mountd: Channel,
    ) -> ControlService {
        ControlService {
            config,
            listen,
            local,
            http,
            mountd: MountClient::new(mountd),
            local_entries: Mutex::default(),
            started: Instant::now(),
        }
    }

    fn local_entries(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.local_entries.lock().unwrap_or_else(|e| e.into_inner())
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
            let names: Vec<String> = self.local_entries().keys().cloned().collect();
            for name in names {
                self.renew(&name).await;
            }
        }
    }

    /// Follows the mount daemon's events while the control plane runs, reconnecting when
    /// the stream ends (e.g. the daemon restarted). A temp URL the remote refused is
    /// renewed at once, so the fetch waiting for it resumes.
    pub async fn follow_events(self: Arc<Self>) {
        loop {
            match self
                .mountd
                .clone()
                .watch_events(api::WatchEventsRequest {})
                .await
            {
                Ok(response) => {
                    let mut events = response.into_inner();
                    while let Ok(Some(message)) = events.message().await {
                        if message.dropped_before > 0 {
                            tracing::warn!(
                                missed = message.dropped_before,
                                "fell behind the mount daemon's events"
                            );
                        }
                        if let Some(Event::UrlRejected(rejected)) = message.event
                            && self.renew(&rejected.name).await
                        {
                            tracing::info!(
                                name = rejected.name,
                                http_status = rejected.http_status,
                                "temp URL refused by the remote; issued a new one"
                            );
                        }
                    }
                }
                Err(status) => tracing::debug!("mount daemon events: {}", status.message()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Gives local entry `name` a fresh URL. False if it is not ours to renew.
    async fn renew(&self, name: &str) -> bool {
        let Some(id) = self.local_entries().get(name).copied() else {
            return false;
        };
        let (url, url_expires_unix) = self.local.sign(id);
        let request = api::UpdateUrlRequest {
            name: name.to_string(),
            url,
            url_expires_unix,
        };
        match self.mountd.clone().update_url(request).await {
            Ok(_) => true,
            Err(status) if status.code() == Code::NotFound => {
                // Unstaged behind our back (e.g. directly on the mount daemon).
                self.local_entries().remove(name);
                self.local.unregister(id);
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
        let kind = sources::classify(&request.source)?;
        let name = if request.name.is_empty() {
            sources::default_name(&kind)?
        } else {
            request.name
        };
        names::validate(&name)
            .map_err(|e| Status::invalid_argument(format!("invalid name {name:?}: {e}")))?;
        let resolved = match kind {
            SourceKind::Local(path) => self.local.register(path).await?,
            SourceKind::Url(url) => self.http.resolve(url).await?,
        };
        let add = api::AddEntryRequest {
            entry: Some(api::EntrySpec {
                name: name.clone(),
                url: resolved.url,
                url_expires_unix: resolved.url_expires_unix,
                version: Some(resolved.version),
                source: resolved.display.clone(),
            }),
            replace: request.replace,
        };
        let response = match self.mountd.clone().add_entry(add).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if let Some(id) = resolved.local_id {
                    self.local.unregister(id);
                }
                return Err(self.mountd_error(status));
            }
        };
        let replaced = {
            let mut entries = self.local_entries();
            let replaced = entries.remove(&name);
            if let Some(id) = resolved.local_id {
                entries.insert(name.clone(), id);
            }
            replaced
        };
        if let Some(old) = replaced {
            self.local.unregister(old);
        }
        tracing::info!(name, source = %resolved.display, "staged");
        Ok(Response::new(api::StageResponse {
            entry: response.entry,
        }))
    }

    async fn unstage(
        &self,
        request: Request<api::UnstageRequest>,
    ) -> Result<Response<api::UnstageResponse>, Status> {
        let name = request.into_inner().name;
        self.mountd
            .clone()
            .remove_entry(api::RemoveEntryRequest { name: name.clone() })
            .await
            .map_err(|s| self.mountd_error(s))?;
        let removed = self.local_entries().remove(&name);
        if let Some(id) = removed {
            self.local.unregister(id);
        }
        tracing::info!(name, "unstaged");
        Ok(Response::new(api::UnstageResponse {}))
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
            listen: self.listen.map(|a| a.to_string()).unwrap_or_default(),
            mountd_socket: self.config.mountd_socket.to_string_lossy().into_owned(),
            local_source_addr: self.local.addr().to_string(),
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
}
