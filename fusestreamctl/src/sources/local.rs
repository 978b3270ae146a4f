//! The signed-URL server ([`SignedUrlServer`]): serves over HTTP on 127.0.0.1, behind
//! signed, expiring URLs, what the mount daemon must not fetch itself: the local files the
//! user stages, and remote objects that need headers it must not see (proxied: `Proxy`).
//!
//! Why: the mount daemon is privileged and must never open a user's path itself (that
//! would let a user read root-only files through the mount). The control plane runs as
//! the user, so it opens the file with the user's rights and serves it; the mount daemon
//! fetches it like any remote object (temp URL, Range requests, If-Match), exercising the
//! same path as Swift and S3.
//!
//! URLs look like `http://127.0.0.1:PORT/o/ID?expires=UNIX&sig=HEX`, where `sig` is
//! HMAC-SHA256 over `GET\n{expires}\n/o/{ID}` with a key generated at start (as Swift's
//! tempurl does). A bad or expired signature gets 401. The ETag identifies the file's
//! inode, size and mtime at staging; if the file changes, `If-Match` fails with 412.
//!
//! Files are pinned by identity: at staging the path is made canonical (symlinks resolved
//! once, as the user meant them then) and the file's device, inode, size and mtime are
//! recorded ([`FileIdentity`], saved with the state). From then on the file is opened only
//! through [`open_no_symlinks`] (no symlink in any component) and must still be that file:
//! every request, and staging it again after a restart, checks. So a file staged from a
//! directory another user controls can not later be swapped for a link to one of ours.
//!
//! The server takes its connections through `listen` (per-uid caps, a deadline for the
//! first bytes) and bounds the time a request's headers may take.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fusestream_shared::clock::unix_now;
use fusestream_shared::listen::{self, HEADER_READ_TIMEOUT, Limits};
use hmac::{Hmac, Mac};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::{Resolved, SourceError};
use crate::config::Secret;
use fusestream_shared::api::ObjectVersion;

type HmacSha256 = Hmac<Sha256>;
type Body = BoxBody<Bytes, std::io::Error>;

/// Bytes per read from the file while streaming a response.
const READ_BLOCK: usize = 256 * 1024;

/// What a staged local file was: it is served (and staged again) only while it still is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }

    /// Why `now` is not this file any more, if it is not.
    pub fn differs(&self, now: &FileIdentity) -> Option<&'static str> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("it is another file now (device and inode differ)")
        } else if self.size != now.size
            || (self.mtime, self.mtime_nsec) != (now.mtime, now.mtime_nsec)
        {
            Some("it was modified (size or modification time differ)")
        } else {
            None
        }
    }
}

/// Opens the absolute `path` for reading without following a symlink in any component
/// (each directory is opened with O_NOFOLLOW relative to the one before, the file too), and
/// without blocking on a FIFO. A symlink on the way fails with ELOOP or ENOTDIR.
pub fn open_no_symlinks(path: &Path) -> std::io::Result<File> {
    let invalid = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {why}", path.display()),
        )
    };
    if !path.is_absolute() {
        return Err(invalid("not an absolute path"));
    }
    let mut names: Vec<&OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(invalid("has a .. component")),
        }
    }
    let last = names.pop().ok_or_else(|| invalid("names no file"))?;
    // O_PATH: a directory needs search permission only, as with an ordinary open.
    #[cfg(target_os = "linux")]
    const DIR: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    const DIR: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let mut dir = open_at(None, OsStr::new("/"), DIR)?;
    for name in names {
        dir = open_at(Some(&dir), name, DIR | libc::O_NOFOLLOW)?;
    }
    let fd = open_at(
        Some(&dir),
        last,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
    )?;
    Ok(File::from(fd))
}

fn open_at(dir: Option<&OwnedFd>, name: &OsStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let name = CString::new(name.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `name` is a NUL-terminated string alive for the call; `dirfd` is AT_FDCWD or
    // a descriptor `dir` owns, open for the call.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// True if `e` is how [`open_no_symlinks`] meets a symlink on the way.
fn is_symlink_refusal(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
}

/// What an id serves.
#[derive(Debug, Clone)]
enum Served {
    /// A local file, opened with the user's rights on every request, never through a
    /// symlink, and only while it is still the file that was staged.
    File {
        path: PathBuf,
        identity: FileIdentity,
    },
    /// A remote object fetched with headers the mount daemon must not see (a bearer
    /// token): requests are forwarded with them, and the answer streamed back.
    Proxy(Arc<Proxy>),
}

#[derive(Debug)]
pub struct Proxy {
    pub url: String,
    pub headers: Vec<(String, Secret)>,
    pub client: reqwest::Client,
}

/// The signed-URL server: what it serves by id (local files, proxied remote objects) and
/// the signing key. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SignedUrlServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SignedUrlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the key.
        f.debug_struct("SignedUrlServer")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    key: [u8; 32],
    addr: SocketAddr,
    files: Mutex<HashMap<u64, Served>>,
    next_id: AtomicU64,
    url_lifetime: Duration,
}

fn etag_of(meta: &std::fs::Metadata) -> String {
    format!(
        "\"{:x}-{:x}-{:x}-{:x}\"",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime_nsec() as u64 ^ ((meta.mtime() as u64) << 30)
    )
}

impl SignedUrlServer {
    /// Binds the file server on 127.0.0.1 (an ephemeral port) and starts serving.
    pub async fn start(url_lifetime: Duration) -> std::io::Result<SignedUrlServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        let source = SignedUrlServer {
            inner: Arc::new(Inner {
                key,
                addr: listener.local_addr()?,
                files: Mutex::default(),
                next_id: AtomicU64::new(1),
                url_lifetime,
            }),
        };
        tokio::spawn(source.clone().accept_loop(listener));
        Ok(source)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Served>> {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `path` (absolute) with the user's rights and registers it for serving.
    ///
    /// Without `pinned` (a new staging), the path is made canonical first and the file
    /// found there is pinned. With `pinned` (staging again a file staged before, by its
    /// canonical path), the file must be that one still, reached without a symlink:
    /// otherwise FAILED_PRECONDITION says why.
    pub async fn register(
        &self,
        path: &Path,
        pinned: Option<FileIdentity>,
    ) -> Result<Resolved, SourceError> {
        self.register_all(vec![(path.to_path_buf(), pinned)])
            .await
            .pop()
            .expect("a result per file")
    }

    /// [`SignedUrlServer::register`] for many files, a result each, in order: they are
    /// opened one after the other on one blocking thread, so restaging thousands of files
    /// costs one hand-off to the blocking pool, not one each (the hand-offs, not the
    /// opens, were most of a restage's time). Callers bound the batch.
    pub async fn register_all(
        &self,
        files: Vec<(PathBuf, Option<FileIdentity>)>,
    ) -> Vec<Result<Resolved, SourceError>> {
        let pinned: Vec<Option<FileIdentity>> = files.iter().map(|(_, p)| *p).collect();
        let shown: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        let opened = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|(path, pinned)| {
                    let canonical = match pinned {
                        None => path.canonicalize()?,
                        Some(_) => path,
                    };
                    // Opening proves the user may read it; metadata comes from the open file.
                    let meta = open_no_symlinks(&canonical)?.metadata()?;
                    Ok::<_, std::io::Error>((canonical, meta))
                })
                .collect::<Vec<_>>()
        })
        .await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                return shown
                    .iter()
                    .map(|_| Err(SourceError::Internal(e.to_string())))
                    .collect();
            }
        };
        opened
            .into_iter()
            .zip(shown)
            .zip(pinned)
            .map(|((opened, shown), pinned)| self.admit(opened, shown, pinned))
            .collect()
    }

    /// Registers a file opened for [`SignedUrlServer::register_all`], if it is a regular
    /// file (and the pinned one, if pinned).
    fn admit(
        &self,
        opened: std::io::Result<(PathBuf, std::fs::Metadata)>,
        shown: String,
        pinned: Option<FileIdentity>,
    ) -> Result<Resolved, SourceError> {
        let (canonical, meta) = match opened {
            Ok(opened) => opened,
            Err(e) if pinned.is_some() && is_symlink_refusal(&e) => {
                return Err(SourceError::FailedPrecondition(format!(
                    "{shown}: a component of the path is a symbolic link now (staged files \
                     are opened without following symlinks): not staged again"
                )));
            }
            Err(e) => return Err(SourceError::from_io(&shown, e)),
        };
        if !meta.is_file() {
            return Err(SourceError::InvalidArgument(format!(
                "{shown} is not a regular file"
            )));
        }
        let identity = FileIdentity::of(&meta);
        if let Some(why) = pinned.and_then(|p| p.differs(&identity)) {
            return Err(SourceError::FailedPrecondition(format!(
                "{shown} is not the file that was staged: {why}; not staged again (stage it \
                 anew if it is the file you want)"
            )));
        }
        let id = self.serve(Served::File {
            path: canonical.clone(),
            identity,
        });
        let etag = etag_of(&meta);
        let (url, url_expires_unix) = self.sign(id);
        Ok(Resolved {
            url,
            url_expires_unix,
            version: ObjectVersion {
                size: meta.size(),
                etag,
                last_modified_unix: meta.mtime(),
                content_type: String::new(),
            },
            display: shown,
            renewal: super::Renewal::Local {
                id,
                path: canonical,
                identity,
            },
        })
    }

    /// Serves again a file staged by an earlier run (its canonical path and pinned
    /// identity, as saved) without opening it now: every request checks that it is still
    /// that file, reached without a symlink. So taking up 100,000 saved entries at start
    /// costs no I/O and no descriptor.
    pub fn register_pinned(&self, path: PathBuf, identity: FileIdentity) -> super::Renewal {
        let id = self.serve(Served::File {
            path: path.clone(),
            identity,
        });
        super::Renewal::Local { id, path, identity }
    }

    /// Serves `proxy` under a new id.
    pub fn register_proxy(&self, proxy: Proxy) -> u64 {
        self.serve(Served::Proxy(Arc::new(proxy)))
    }

    /// Serves `served` under a new id.
    fn serve(&self, served: Served) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.files().insert(id, served);
        id
    }

    /// Stops serving `id`.
    pub fn unregister(&self, id: u64) {
        self.files().remove(&id);
    }

    /// A fresh URL for file `id`, and when it expires.
    pub fn sign(&self, id: u64) -> (String, i64) {
        let expires = unix_now() + self.inner.url_lifetime.as_secs() as i64;
        let path = format!("/o/{id}");
        let sig = hex::encode(self.mac(expires, &path).finalize().into_bytes());
        (
            format!(
                "http://{}{path}?expires={expires}&sig={sig}",
                self.inner.addr
            ),
            expires,
        )
    }

    fn mac(&self, expires: i64, path: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.inner.key).expect("any key length works");
        mac.update(format!("GET\n{expires}\n{path}").as_bytes());
        mac
    }

    /// True if `query` carries a valid, unexpired signature for `path`.
    fn authorized(&self, path: &str, query: &str) -> bool {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let (Some(expires), Some(sig)) = (param("expires"), param("sig")) else {
            return false;
        };
        let (Ok(expires), Ok(sig)) = (expires.parse::<i64>(), hex::decode(sig)) else {
            return false;
        };
        expires >= unix_now() && self.mac(expires, path).verify_slice(&sig).is_ok()
    }

    async fn accept_loop(self, listener: TcpListener) {
        let incoming = listen::tcp("local file server", listener, Limits::HTTP1);
        tokio::pin!(incoming);
        while let Some(accepted) = StreamExt::next(&mut incoming).await {
            let Ok(stream) = accepted else { continue };
            let source = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let source = source.clone();
                    async move { Ok::<_, Infallible>(source.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let path = req.uri().path();
        if !self.authorized(path, req.uri().query().unwrap_or("")) {
            return status(StatusCode::UNAUTHORIZED);
        }
        let served = path
            .strip_prefix("/o/")
            .and_then(|id| id.parse().ok())
            .and_then(|id| self.files().get(&id).cloned());
        let (file, identity) = match served {
            Some(Served::File { path, identity }) => (path, identity),
            Some(Served::Proxy(proxy)) => return forward(&req, &proxy).await,
            None => return status(StatusCode::NOT_FOUND),
        };
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let f = open_no_symlinks(&file)?;
            let meta = f.metadata()?;
            Ok((f, meta))
        })
        .await;
        let (f, meta) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return status(StatusCode::NOT_FOUND);
            }
            // A symlink where the staged file was: not that file any more.
            Ok(Err(e)) if is_symlink_refusal(&e) => {
                return status(StatusCode::PRECONDITION_FAILED);
            }
            _ => return status(StatusCode::FORBIDDEN),
        };
        if identity.differs(&FileIdentity::of(&meta)).is_some() {
            return status(StatusCode::PRECONDITION_FAILED);
        }
        let etag = etag_of(&meta);
        if let Some(wanted) = req.headers().get(header::IF_MATCH)
            && wanted.as_bytes() != etag.as_bytes()
            && wanted.as_bytes() != b"*"
        {
            return status(StatusCode::PRECONDITION_FAILED);
        }
        let size = meta.size();
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|v| parse_range(v, size));
        let (code, start, end) = match range {
            None | Some(RangeRequest::Ignore) => (StatusCode::OK, 0, size),
            Some(RangeRequest::Satisfiable(start, end)) => {
                (StatusCode::PARTIAL_CONTENT, start, end)
            }
            Some(RangeRequest::Unsatisfiable) => {
                let mut response = status(StatusCode::RANGE_NOT_SATISFIABLE);
                response.headers_mut().insert(
                    header::CONTENT_RANGE,
                    format!("bytes */{size}").parse().expect("valid header"),
                );
                return response;
            }
        };
        let mut builder = Response::builder()
            .status(code)
            .header(header::ETAG, &etag)
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_LENGTH, end - start)
            .header(header::CONTENT_TYPE, "application/octet-stream");
        if let Ok(modified) = meta.modified() {
            builder = builder.header(header::LAST_MODIFIED, httpdate::fmt_http_date(modified));
        }
        if code == StatusCode::PARTIAL_CONTENT {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
        }
        let body = if req.method() == Method::HEAD || start == end {
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            stream_file(f, start, end)
        };
        builder
            .body(body)
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
    }
}

/// Forwards `req` to the proxied object with its headers, and streams the answer back.
/// An upstream that refuses our credentials answers 502: a fresh URL from us would not
/// help, so the mount daemon should not ask for one.
async fn forward(req: &Request<Incoming>, proxy: &Proxy) -> Response<Body> {
    let mut upstream = proxy.client.request(req.method().clone(), &proxy.url);
    for name in [header::RANGE, header::IF_MATCH, header::IF_UNMODIFIED_SINCE] {
        if let Some(value) = req.headers().get(&name) {
            upstream = upstream.header(name, value);
        }
    }
    for (name, value) in &proxy.headers {
        upstream = upstream.header(name.as_str(), value.0.as_str());
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!("proxied fetch: {}", e.without_url());
            return status(StatusCode::BAD_GATEWAY);
        }
    };
    let code = match response.status().as_u16() {
        401 | 403 => StatusCode::BAD_GATEWAY,
        other => StatusCode::from_u16(other).unwrap_or(StatusCode::BAD_GATEWAY),
    };
    let mut builder = Response::builder().status(code);
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::ETAG,
        header::LAST_MODIFIED,
        header::ACCEPT_RANGES,
        header::RETRY_AFTER,
    ] {
        if let Some(value) = response.headers().get(&name) {
            builder = builder.header(name, value);
        }
    }
    let body = StreamBody::new(response.bytes_stream().map(|chunk| {
        chunk
            .map(Frame::data)
            .map_err(|e| std::io::Error::other(e.without_url()))
    }))
    .boxed();
    builder
        .body(body)
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY))
}

/// Streams bytes `start..end` of `file`, read on a blocking thread.
fn stream_file(file: File, start: u64, end: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut offset = start;
        while offset < end {
            let mut buf = vec![0; READ_BLOCK.min((end - offset) as usize)];
            let item = match file.read_at(&mut buf, offset) {
                Ok(0) => Err(std::io::Error::other("file shrank while being served")),
                Ok(n) => {
                    buf.truncate(n);
                    offset += n as u64;
                    Ok(Frame::data(Bytes::from(buf)))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return; // client gone, or error sent
            }
        }
    });
    StreamBody::new(ReceiverStream::new(rx)).boxed()
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = code;
    response
}

#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// `start..end`, end exclusive.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Not a single byte range we serve (e.g. several ranges): send the whole body.
    Ignore,
}

/// Parses a `Range` header for a body of `size` bytes.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => last
            .parse::<u64>()
            .ok()
            .map(|n| (size.saturating_sub(n), size, n > 0)),
        (false, _) => first.parse::<u64>().ok().and_then(|start| {
            let end = if last.is_empty() {
                Some(size)
            } else {
                last.parse::<u64>()
                    .ok()
                    .map(|l| l.saturating_add(1).min(size))
            };
            end.map(|end| (start, end, start < size && start < end))
        }),
        (true, true) => None,
    };
    match parsed {
        Some((start, end, true)) => RangeRequest::Satisfiable(start, end),
        Some(_) => RangeRequest::Unsatisfiable,
        None => RangeRequest::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Satisfiable(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Satisfiable(90, 100));
        assert_eq!(parse_range("bytes=90-500", 100), Satisfiable(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Satisfiable(90, 100));
        assert_eq!(parse_range("bytes=-500", 100), Satisfiable(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
    }

    #[test]
    fn files_are_opened_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), b"data").unwrap();
        assert!(open_no_symlinks(&real.join("f")).is_ok());
        // A symlink as the file, and as a directory on the way.
        std::os::unix::fs::symlink(real.join("f"), real.join("link")).unwrap();
        let e = open_no_symlinks(&real.join("link")).unwrap_err();
        assert!(is_symlink_refusal(&e), "{e}");
        std::os::unix::fs::symlink(&real, dir.path().join("dirlink")).unwrap();
        let e = open_no_symlinks(&dir.path().join("dirlink/f")).unwrap_err();
        assert!(is_symlink_refusal(&e), "{e}");
        assert!(open_no_symlinks(Path::new("relative/f")).is_err());
        assert!(open_no_symlinks(&real.join("../real/f")).is_err());
    }

    #[tokio::test]
    async fn a_restaged_file_must_be_the_pinned_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.bin");
        std::fs::write(&path, b"first").unwrap();
        let source = SignedUrlServer::start(Duration::from_secs(60))
            .await
            .unwrap();
        let staged = source.register(&path, None).await.unwrap();
        let super::super::Renewal::Local {
            path: canonical,
            identity,
            ..
        } = staged.renewal
        else {
            panic!("a local renewal");
        };
        assert!(source.register(&canonical, Some(identity)).await.is_ok());
        // Replaced by another file (the old one kept, so the inode is not reused), then
        // by a symlink: refused, saying why.
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        std::fs::write(&path, b"other").unwrap();
        let e = source
            .register(&canonical, Some(identity))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::FailedPrecondition(_)), "{e}");
        assert!(e.to_string().contains("another file"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"first").unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let e = source
            .register(&canonical, Some(identity))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[tokio::test]
    async fn signatures_are_checked_and_expire() {
        let source = SignedUrlServer::start(Duration::from_secs(60))
            .await
            .unwrap();
        let (url, _) = source.sign(7);
        let query = url.split_once('?').unwrap().1;
        assert!(source.authorized("/o/7", query));
        assert!(
            !source.authorized("/o/8", query),
            "signature is bound to the path"
        );
        let tampered = query.replace("sig=", "sig=00");
        assert!(!source.authorized("/o/7", &tampered));
        let expired = {
            let expires = unix_now() - 1;
            let sig = hex::encode(source.mac(expires, "/o/7").finalize().into_bytes());
            format!("expires={expires}&sig={sig}")
        };
        assert!(!source.authorized("/o/7", &expired));
    }
}
