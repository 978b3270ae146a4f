//! Resolving what the user stages into what the mount daemon needs: a temp URL and the
//! object version it is pinned to.
//!
//! Sources: an absolute local path (served by [`local::LocalSource`]), or an `http://` /
//! `https://` URL (fetched directly). Errors are one type, [`SourceError`], mapped to gRPC
//! status in one place.

pub mod http;
pub mod local;

use fusestream_shared::api::ObjectVersion;
use thiserror::Error;

/// A source, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub url: String,
    /// 0 if the URL does not expire.
    pub url_expires_unix: i64,
    pub version: ObjectVersion,
    /// How the source is shown (redacted).
    pub display: String,
    /// Registration with the local-file server, for local sources.
    pub local_id: Option<u64>,
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
}

pub fn classify(source: &str) -> Result<SourceKind<'_>, SourceError> {
    if fusestream_shared::http::is_http_url(source) {
        Ok(SourceKind::Url(source))
    } else if source.starts_with('/') {
        Ok(SourceKind::Local(std::path::Path::new(source)))
    } else if source.is_empty() {
        Err(SourceError::InvalidArgument("source is empty".into()))
    } else {
        Err(SourceError::InvalidArgument(format!(
            "source {:?} is neither an absolute path nor an http(s) URL",
            fusestream_shared::redact::url(source)
        )))
    }
}

/// The name a source gets in the mount when none is given: its last path component.
pub fn default_name(source: &SourceKind<'_>) -> Result<String, SourceError> {
    let name = match source {
        SourceKind::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
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

/// Decodes `%XX` escapes (invalid ones are kept as they are).
fn percent_decode(s: &str) -> String {
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
