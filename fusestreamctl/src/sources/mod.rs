//! Resolving what the user stages into what the mount daemon needs: a temp URL and the
//! object version it is pinned to.
//!
//! Sources: an absolute local path (served by [`local::SignedUrlServer`]), an `http://` /
//! `https://` URL (fetched directly), or `REMOTE:path` for a remote named in the config
//! (Swift TempURLs, S3 presigned URLs). Errors are one type, [`SourceError`], mapped to
//! gRPC status in one place.

pub mod http;
pub mod listing;
pub mod local;
pub mod s3;
pub mod sigv4;
pub mod swift;

use std::collections::BTreeMap;
use std::sync::Arc;

use fusestream_shared::api::ObjectVersion;
use thiserror::Error;

use crate::config::{Config, ConfigError, RemoteConfig, is_remote_name};

/// How a staged entry's URL is renewed.
#[derive(Debug, Clone)]
pub enum Renewal {
    /// Nothing to renew (what a source resolves to before staging decides otherwise).
    Never,
    /// A URL given as the source: it does not expire as far as we know, but is kept to
    /// stage the entry again on a restarted mount daemon.
    Url { url: String },
    /// A local file, registered with the local file server under `id`: its canonical
    /// path, and what it was at staging (it is staged again only while it still is).
    Local {
        id: u64,
        path: std::path::PathBuf,
        identity: local::FileIdentity,
    },
    /// An object of the configured remote named `name`.
    Remote {
        remote: Arc<Remote>,
        name: String,
        path: String,
    },
}

/// A configured remote.
#[derive(Debug)]
pub enum Remote {
    Swift(swift::Swift),
    S3(s3::S3),
    Http(http::HttpRemote),
}

impl Remote {
    pub async fn resolve(
        &self,
        path: &str,
        http: &http::HttpSource,
    ) -> Result<Resolved, SourceError> {
        match self {
            Remote::Swift(swift) => swift.resolve(path).await,
            Remote::S3(s3) => s3.resolve(path, http).await,
            Remote::Http(remote) => remote.resolve(path, http).await,
        }
    }

    /// One page of what lies at `location`, from `cursor` on (the page before's `next`).
    pub async fn list_page(
        &self,
        location: &listing::Location,
        cursor: Option<&str>,
    ) -> Result<listing::Page, SourceError> {
        match self {
            Remote::Swift(swift) => swift.list_page(location, cursor).await,
            Remote::S3(s3) => s3.list_page(location, cursor).await,
            Remote::Http(remote) => Err(SourceError::InvalidArgument(format!(
                "remote {} is an http remote: it can not be listed",
                remote.name()
            ))),
        }
    }

    /// `path` is no longer staged.
    pub fn release(&self, path: &str) {
        if let Remote::Http(remote) = self {
            remote.release(path);
        }
    }

    /// A fresh URL for `path`, and when it expires.
    pub async fn sign(&self, path: &str) -> Result<(String, i64), SourceError> {
        match self {
            Remote::Swift(swift) => swift.sign(path).await,
            Remote::S3(s3) => s3.sign(path),
            Remote::Http(remote) => Ok(remote.sign(path)),
        }
    }
}

/// The remotes of the config, by name.
#[derive(Debug, Default)]
pub struct Remotes(BTreeMap<String, Arc<Remote>>);

impl Remotes {
    pub fn from_config(
        config: &Config,
        client: &reqwest::Client,
        local: &local::SignedUrlServer,
    ) -> Result<Remotes, ConfigError> {
        let mut remotes = BTreeMap::new();
        for (name, remote) in &config.remotes {
            let remote = match remote {
                RemoteConfig::Swift(c) => {
                    Remote::Swift(swift::Swift::new(name, c, client.clone())?)
                }
                RemoteConfig::S3(c) => Remote::S3(s3::S3::new(name, c, client.clone())?),
                RemoteConfig::Http(c) => Remote::Http(http::HttpRemote::new(
                    name,
                    c,
                    local.clone(),
                    client.clone(),
                )?),
            };
            remotes.insert(name.clone(), Arc::new(remote));
        }
        Ok(Remotes(remotes))
    }

    pub fn get(&self, name: &str) -> Result<Arc<Remote>, SourceError> {
        self.0.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            SourceError::InvalidArgument(if known.is_empty() {
                format!("unknown remote {name:?}: no remotes are configured")
            } else {
                format!("unknown remote {name:?} (configured: {})", known.join(", "))
            })
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Splits a remote's `container/path/to/object` (Swift) or `bucket/path/to/key` (S3) in
/// two, both parts non-empty; `expected` is the form the error message shows.
pub fn split_object_path<'a>(
    remote: &str,
    path: &'a str,
    expected: &str,
) -> Result<(&'a str, &'a str), SourceError> {
    match path.split_once('/') {
        Some((container, object)) if !container.is_empty() && !object.is_empty() => {
            Ok((container, object))
        }
        _ => Err(SourceError::InvalidArgument(format!(
            "{remote}:{path}: expected {remote}:{expected}"
        ))),
    }
}

/// An object's version from the headers of a response about it, `size` bytes long (how
/// the size is told differs: Content-Length of a HEAD, Content-Range of a ranged GET).
/// An ETag without quotes (Swift sends its MD5 bare) is quoted, as If-Match wants it.
pub fn version_of(headers: &reqwest::header::HeaderMap, size: u64) -> ObjectVersion {
    use reqwest::header;
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    ObjectVersion {
        size,
        etag: text(header::ETAG).map(quoted_etag).unwrap_or_default(),
        last_modified_unix: text(header::LAST_MODIFIED)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64),
        content_type: text(header::CONTENT_TYPE).unwrap_or_default().to_string(),
    }
}

/// `etag` as an entity tag: as it is if quoted (or weak), else in quotes.
pub fn quoted_etag(etag: &str) -> String {
    if etag.is_empty() || etag.starts_with('"') || etag.starts_with("W/") {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}

/// A source, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub url: String,
    /// 0 if the URL does not expire.
    pub url_expires_unix: i64,
    pub version: ObjectVersion,
    /// How the source is shown (redacted).
    pub display: String,
    /// How its URL is renewed.
    pub renewal: Renewal,
}

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl SourceError {
    /// Maps an I/O error on local source `shown` to the error the user should see.
    pub fn from_io(shown: &str, e: std::io::Error) -> SourceError {
        match e.kind() {
            std::io::ErrorKind::NotFound => {
                SourceError::NotFound(format!("{shown} does not exist"))
            }
            std::io::ErrorKind::PermissionDenied => {
                SourceError::PermissionDenied(format!("{shown} is not readable: permission denied"))
            }
            _ => SourceError::InvalidArgument(format!("{shown}: {e}")),
        }
    }
}

impl From<SourceError> for tonic::Status {
    fn from(e: SourceError) -> tonic::Status {
        let message = e.to_string();
        match e {
            SourceError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            SourceError::NotFound(_) => tonic::Status::not_found(message),
            SourceError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            SourceError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            SourceError::Unavailable(_) => tonic::Status::unavailable(message),
            SourceError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            SourceError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

/// The kinds of source, told apart by their syntax.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceKind<'a> {
    Local(&'a std::path::Path),
    Url(&'a str),
    /// `REMOTE:path`.
    Remote {
        remote: &'a str,
        path: &'a str,
    },
}

pub fn classify(source: &str) -> Result<SourceKind<'_>, SourceError> {
    if fusestream_shared::http::is_http_url(source) {
        Ok(SourceKind::Url(source))
    } else if source.starts_with('/') {
        Ok(SourceKind::Local(std::path::Path::new(source)))
    } else if let Some((scheme, _)) = source.split_once("://") {
        Err(SourceError::InvalidArgument(format!(
            "{scheme}:// URLs are not supported (only http and https)"
        )))
    } else if let Some((remote, path)) = source.split_once(':')
        && is_remote_name(remote)
    {
        Ok(SourceKind::Remote { remote, path })
    } else if source.is_empty() {
        Err(SourceError::InvalidArgument("source is empty".into()))
    } else {
        Err(SourceError::InvalidArgument(format!(
            "source {:?} is neither an absolute path, an http(s) URL nor REMOTE:path",
            fusestream_shared::redact::url(source)
        )))
    }
}

/// The name a source gets in the mount when none is given: its last path component.
pub fn default_name(source: &SourceKind<'_>) -> Result<String, SourceError> {
    let name = match source {
        SourceKind::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
        SourceKind::Remote { path, .. } => path
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        SourceKind::Url(url) => {
            let path = url.split(['?', '#']).next().unwrap_or_default();
            let after_host = path.splitn(4, '/').nth(3).unwrap_or_default();
            after_host
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .map(percent_decode)
        }
    };
    name.ok_or_else(|| {
        SourceError::InvalidArgument(
            "cannot derive a name from the source; give one with --name".into(),
        )
    })
}

/// Percent-encodes all but RFC 3986's unreserved characters (and `/` if `keep_slash`), the
/// form both SigV4's canonical requests and Swift paths need.
pub fn percent_encode(input: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `?k=v&...` with keys and values percent-encoded; empty for no parameters.
pub fn query_string(parameters: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = parameters
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k, false), percent_encode(v, false)))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// Decodes `%XX` escapes (invalid ones are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_object_paths_and_quotes_etags() {
        assert_eq!(
            split_object_path("r", "c/dir/o", "container/object").unwrap(),
            ("c", "dir/o")
        );
        for bad in ["c", "c/", "/o", ""] {
            let e = split_object_path("r", bad, "container/object").unwrap_err();
            assert!(e.to_string().contains("expected r:container/object"), "{e}");
        }
        assert_eq!(quoted_etag("abc"), "\"abc\"");
        assert_eq!(quoted_etag("\"abc\""), "\"abc\"");
        assert_eq!(quoted_etag("W/\"abc\""), "W/\"abc\"");
        assert_eq!(quoted_etag(""), "");
    }

    #[test]
    fn classifies_and_names_sources() {
        let url = classify("https://h:1/a/b/My%20Video.mp4?sig=x").unwrap();
        assert_eq!(url, SourceKind::Url("https://h:1/a/b/My%20Video.mp4?sig=x"));
        assert_eq!(default_name(&url).unwrap(), "My Video.mp4");
        let local = classify("/home/u/v.mkv").unwrap();
        assert_eq!(default_name(&local).unwrap(), "v.mkv");
        assert!(default_name(&classify("http://host/").unwrap()).is_err());
        assert!(default_name(&classify("http://host").unwrap()).is_err());
        assert!(matches!(
            classify("relative.txt"),
            Err(SourceError::InvalidArgument(_))
        ));
        assert!(matches!(
            classify("ftp://x/y"),
            Err(SourceError::InvalidArgument(_))
        ));
    }
}
