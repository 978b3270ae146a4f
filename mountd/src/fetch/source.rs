//! Where fetched bytes come from: a [`RangeSource`] answers one ranged GET.
//!
//! The fetcher (retries, renewals, pinning checks, slots, the breaker) is written against
//! this trait only, so the filesystem core runs the same code over HTTP in the daemon
//! ([`HttpSource`], reqwest) and over memory in tests ([`MemorySource`], which also does
//! what no real server does on demand: hang, reset, lie about sizes). A source only moves
//! bytes; what a status or a header means is decided by the fetcher.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;

/// One ranged GET: bytes `start..end` of `url`, pinned to a version.
#[derive(Debug, Clone)]
pub struct RangeRequest {
    pub url: String,
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    /// `If-Match`, for a strong ETag.
    pub if_match: Option<String>,
    /// `If-Unmodified-Since`, when there is no strong ETag.
    pub if_unmodified_since: Option<SystemTime>,
}

/// A response's body, as it streams in. Errors are messages without the URL.
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// A response: what the fetcher needs of its head, and its body.
pub struct RangeResponse {
    pub status: u16,
    pub content_range: Option<String>,
    /// Retry-After, in its seconds form.
    pub retry_after: Option<Duration>,
    pub body: Body,
}

impl std::fmt::Debug for RangeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeResponse")
            .field("status", &self.status)
            .field("content_range", &self.content_range)
            .finish_non_exhaustive()
    }
}

/// A response on its way: resolves once its head has arrived. The error is a message
/// without the URL (it carries a signature).
pub type Sent<'a> = Pin<Box<dyn Future<Output = Result<RangeResponse, String>> + Send + 'a>>;

/// Answers ranged GETs.
pub trait RangeSource: Send + Sync + std::fmt::Debug {
    fn get(&self, request: RangeRequest) -> Sent<'_>;
}

/// The daemon's source: HTTP(S) through reqwest.
#[derive(Debug, Clone)]
pub struct HttpSource {
    client: reqwest::Client,
}

impl HttpSource {
    pub fn new(client: reqwest::Client) -> HttpSource {
        HttpSource { client }
    }
}

impl RangeSource for HttpSource {
    fn get(&self, request: RangeRequest) -> Sent<'_> {
        use futures_util::TryStreamExt;
        let mut builder = self.client.get(&request.url).header(
            reqwest::header::RANGE,
            format!("bytes={}-{}", request.start, request.end - 1),
        );
        if let Some(etag) = &request.if_match {
            builder = builder.header(reqwest::header::IF_MATCH, etag);
        } else if let Some(modified) = request.if_unmodified_since {
            builder = builder.header(
                reqwest::header::IF_UNMODIFIED_SINCE,
                httpdate::fmt_http_date(modified),
            );
        }
        Box::pin(async move {
            let response = builder
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            let content_range = header(reqwest::header::CONTENT_RANGE);
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs);
            Ok(RangeResponse {
                status: response.status().as_u16(),
                content_range,
                retry_after,
                body: Box::pin(
                    response
                        .bytes_stream()
                        .map_err(|e| e.without_url().to_string()),
                ),
            })
        })
    }
}

/// How [`MemorySource`] answers requests for one URL.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Serves these bytes, honouring the range (206).
    Serve(Bytes),
    /// Never answers (a host that accepts connections and says nothing).
    Hang,
    /// Answers with this status and no body (and this Retry-After, if any).
    Status(u16, Option<Duration>),
    /// Serves the first `after` bytes of the range, then never sends more.
    StallAfter(Bytes, u64),
    /// The connection fails before any answer.
    Reset,
}

/// An in-memory source for tests: each URL behaves as set (unknown URLs: 404).
#[derive(Debug, Default)]
pub struct MemorySource {
    urls: Mutex<HashMap<String, Behaviour>>,
}

impl MemorySource {
    pub fn set(&self, url: &str, behaviour: Behaviour) {
        self.urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_string(), behaviour);
    }
}

fn body_of(chunks: Vec<Bytes>, then_hang: bool) -> Body {
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok));
    if then_hang {
        use futures_util::StreamExt;
        Box::pin(stream.chain(futures_util::stream::pending()))
    } else {
        Box::pin(stream)
    }
}

impl RangeSource for MemorySource {
    fn get(&self, request: RangeRequest) -> Sent<'_> {
        let behaviour = self
            .urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&request.url)
            .cloned()
            .unwrap_or(Behaviour::Status(404, None));
        let (want_start, want_end) = (request.start, request.end);
        let ranged = move |data: &Bytes| {
            let size = data.len() as u64;
            let end = want_end.min(size);
            let start = want_start.min(end);
            (
                data.slice(start as usize..end as usize),
                format!("bytes {start}-{}/{size}", end.saturating_sub(1)),
            )
        };
        let response = |status, content_range, body| RangeResponse {
            status,
            content_range,
            retry_after: None,
            body,
        };
        Box::pin(async move {
            match behaviour {
                Behaviour::Serve(data) => {
                    let (bytes, range) = ranged(&data);
                    // Several pieces, as a network delivers them.
                    let pieces = bytes
                        .chunks(64 * 1024)
                        .map(|c| bytes.slice_ref(c))
                        .collect();
                    Ok(response(206, Some(range), body_of(pieces, false)))
                }
                Behaviour::StallAfter(data, after) => {
                    let (bytes, range) = ranged(&data);
                    let sent = bytes.slice(..(after as usize).min(bytes.len()));
                    Ok(response(206, Some(range), body_of(vec![sent], true)))
                }
                Behaviour::Hang => std::future::pending().await,
                Behaviour::Status(status, retry_after) => Ok(RangeResponse {
                    retry_after,
                    ..response(status, None, body_of(Vec::new(), false))
                }),
                Behaviour::Reset => Err("connection reset by peer".to_string()),
            }
        })
    }
}
