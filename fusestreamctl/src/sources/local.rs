//! The local-file source: serves files the user stages over HTTP on 127.0.0.1, behind
//! signed, expiring URLs.
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

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
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

/// What an id serves.
#[derive(Debug, Clone)]
enum Served {
    /// A local file, opened with the user's rights on every request.
    File { path: PathBuf },
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

/// Registered files and the signing key. Cheap to clone (shared state).
#[derive(Clone)]
pub struct LocalSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the key.
        f.debug_struct("LocalSource")
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl LocalSource {
    /// Binds the file server on 127.0.0.1 (an ephemeral port) and starts serving.
    pub async fn start(url_lifetime: Duration) -> std::io::Result<LocalSource> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        let source = LocalSource {
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
    pub async fn register(&self, path: &Path) -> Result<Resolved, SourceError> {
        let shown = path.display().to_string();
        let path_buf = path.to_path_buf();
        let meta = tokio::task::spawn_blocking(move || {
            // Opening proves the user may read it; metadata comes from the open file.
            let file = File::open(&path_buf)?;
            file.metadata()
        })
        .await
        .map_err(|e| SourceError::Internal(e.to_string()))?
        .map_err(|e| SourceError::from_io(&shown, e))?;
        if !meta.is_file() {
            return Err(SourceError::InvalidArgument(format!(
                "{shown} is not a regular file"
            )));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let etag = etag_of(&meta);
        self.files().insert(
            id,
            Served::File {
                path: path.to_path_buf(),
            },
        );
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
                path: path.to_path_buf(),
            },
        })
    }

    /// Serves `proxy` under a new id.
    pub fn register_proxy(&self, proxy: Proxy) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.files().insert(id, Served::Proxy(Arc::new(proxy)));
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
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("local source: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let source = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let source = source.clone();
                    async move { Ok::<_, Infallible>(source.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
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
        let file = match served {
            Some(Served::File { path }) => path,
            Some(Served::Proxy(proxy)) => return forward(&req, &proxy).await,
            None => return status(StatusCode::NOT_FOUND),
        };
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let f = File::open(&file)?;
            let meta = f.metadata()?;
            Ok((f, meta))
        })
        .await;
        let (f, meta) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return status(StatusCode::NOT_FOUND);
            }
            _ => return status(StatusCode::FORBIDDEN),
        };
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

    #[tokio::test]
    async fn signatures_are_checked_and_expire() {
        let source = LocalSource::start(Duration::from_secs(60)).await.unwrap();
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
