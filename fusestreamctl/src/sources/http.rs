//! Plain http(s) URLs: resolved with a one-byte ranged GET, which also works for presigned
//! URLs that only allow GET, and proves the server honours Range. S3 remotes use the same
//! probe on their presigned URLs and read the refusals their own way.

use fusestream_shared::api::ObjectVersion;
use fusestream_shared::redact;
use reqwest::{StatusCode, header};

use super::local::{Proxy, SignedUrlServer};
use super::{Resolved, SourceError};
use crate::config::{self, ConfigError, HttpConfig, Secret};

/// Attempts of the probe; transient failures (connection errors, 429, 5xx) are retried.
const PROBE_ATTEMPTS: u32 = 3;

/// What a probe found.
pub enum Probe {
    Found(ObjectVersion),
    /// The server said no (4xx/5xx, after retries); its body for a closer reading.
    Refused {
        status: StatusCode,
        body: String,
    },
}

pub struct HttpSource {
    /// For URLs that carry no credentials of ours (public and presigned URLs).
    client: reqwest::Client,
    /// For requests with credentials in headers: redirects within the same origin only
    /// (see `fusestream_shared::http`).
    credentialed: reqwest::Client,
}

impl HttpSource {
    pub fn new() -> reqwest::Result<HttpSource> {
        let timeout = std::time::Duration::from_secs(30);
        let client = fusestream_shared::http::client_builder()
            .timeout(timeout)
            .build()?;
        let credentialed = fusestream_shared::http::credentialed_client_builder()
            .timeout(timeout)
            .build()?;
        Ok(HttpSource {
            client,
            credentialed,
        })
    }

    /// The client for requests that send credentials in headers (Swift's auth and
    /// tokens, an `http` remote's configured headers).
    pub fn credentialed_client(&self) -> &reqwest::Client {
        &self.credentialed
    }

    /// A one-byte ranged GET for the object's version, retried with backoff while the
    /// failure looks transient. `shown` is the redacted form of `url` for messages.
    pub async fn probe(&self, url: &str, shown: &str) -> Result<Probe, SourceError> {
        self.probe_with(url, shown, &[]).await
    }

    /// [`HttpSource::probe`], sending `headers` too.
    pub async fn probe_with(
        &self,
        url: &str,
        shown: &str,
        headers: &[(String, Secret)],
    ) -> Result<Probe, SourceError> {
        let mut attempt = 1;
        let response = loop {
            let client = if headers.is_empty() {
                &self.client
            } else {
                &self.credentialed
            };
            let mut request = client.get(url).header(header::RANGE, "bytes=0-0");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.0.as_str());
            }
            let result = request.send().await;
            let transient = match &result {
                Ok(r) => r.status().is_server_error() || r.status().as_u16() == 429,
                Err(e) => e.is_connect() || e.is_timeout(),
            };
            if !transient || attempt == PROBE_ATTEMPTS {
                break result.map_err(|e| {
                    SourceError::Unavailable(format!("{shown}: {}", e.without_url()))
                })?;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            attempt += 1;
        };
        let status = response.status();
        let total_size = || {
            response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
        };
        let size = match status.as_u16() {
            206 => total_size()
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, total)| total.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    SourceError::FailedPrecondition(format!(
                        "{shown}: server did not report the object size"
                    ))
                })?,
            // The whole (empty) object.
            200 if response.content_length() == Some(0) => 0,
            200 => {
                return Err(SourceError::FailedPrecondition(format!(
                    "{shown}: server does not support range requests"
                )));
            }
            // An empty object can not satisfy bytes=0-0.
            416 if total_size() == Some("bytes */0") => 0,
            _ => {
                let body = response.text().await.unwrap_or_default();
                return Ok(Probe::Refused { status, body });
            }
        };
        Ok(Probe::Found(super::version_of(response.headers(), size)))
    }

    pub async fn resolve(&self, url: &str) -> Result<Resolved, SourceError> {
        let shown = redact::url(url);
        let version = found(self.probe(url, &shown).await?, &shown)?;
        Ok(Resolved {
            url: url.to_string(),
            url_expires_unix: 0,
            version,
            display: shown,
            renewal: super::Renewal::Never,
        })
    }
}

/// The version a probe found, or the error its refusal means.
fn found(probe: Probe, shown: &str) -> Result<ObjectVersion, SourceError> {
    match probe {
        Probe::Found(version) => Ok(version),
        Probe::Refused { status, .. } => {
            let message = format!("{shown}: HTTP {status}");
            Err(match status.as_u16() {
                // A redirect the client would not follow (see fusestream_shared::http).
                300..=399 => SourceError::FailedPrecondition(format!(
                    "{message}: a redirect FuseStream does not follow (requests with \
                     credentials stay at their origin; other origins must be https on a \
                     non-loopback host): stage the final URL"
                )),
                404 | 410 => SourceError::NotFound(message),
                401 => SourceError::Unauthenticated(message),
                403 => SourceError::PermissionDenied(message),
                _ => SourceError::Unavailable(message),
            })
        }
    }
}

/// A remote of plain HTTP(S) objects under a base URL, fetched with configured headers
/// (such as a bearer token). Those headers are credentials, so the mount daemon never gets
/// them: it fetches a signed URL of the control plane's local server, which forwards the
/// request with the headers (see `local::forward`).
#[derive(Debug)]
pub struct HttpRemote {
    name: String,
    base_url: String,
    headers: Vec<(String, Secret)>,
    local: SignedUrlServer,
    client: reqwest::Client,
    /// The local server's id for each object served, by path.
    ids: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl HttpRemote {
    pub fn new(
        name: &str,
        config: &HttpConfig,
        local: SignedUrlServer,
        client: reqwest::Client,
    ) -> Result<HttpRemote, ConfigError> {
        if !fusestream_shared::http::is_http_url(&config.base_url) {
            return Err(ConfigError::Remote {
                remote: name.into(),
                message: "base_url must be an http:// or https:// URL".into(),
            });
        }
        let mut headers: Vec<(String, Secret)> = config
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (header, var) in &config.headers_env {
            let value = config::secret(
                name,
                &format!("headers_env.{header}"),
                &None,
                &Some(var.clone()),
            )?
            .expect("a variable was named");
            headers.push((header.clone(), value));
        }
        Ok(HttpRemote {
            name: name.into(),
            base_url: config.base_url.clone(),
            headers,
            local,
            client,
            ids: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn url(&self, path: &str) -> String {
        let encoded: Vec<String> = path
            .split('/')
            .map(|s| super::percent_encode(s, false))
            .collect();
        format!(
            "{}/{}",
            self.base_url.trim_end_matches('/'),
            encoded.join("/")
        )
    }

    pub async fn resolve(&self, path: &str, http: &HttpSource) -> Result<Resolved, SourceError> {
        let shown = format!("{}:{path}", self.name);
        let version = found(
            http.probe_with(&self.url(path), &shown, &self.headers)
                .await?,
            &shown,
        )?;
        let (url, url_expires_unix) = self.sign(path);
        Ok(Resolved {
            url,
            url_expires_unix,
            version,
            display: shown,
            renewal: super::Renewal::Never,
        })
    }

    /// A signed local URL for `path`, serving it (again) if needed.
    pub fn sign(&self, path: &str) -> (String, i64) {
        let id = *self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_string())
            .or_insert_with(|| {
                self.local.register_proxy(Proxy {
                    url: self.url(path),
                    headers: self.headers.clone(),
                    client: self.client.clone(),
                })
            });
        self.local.sign(id)
    }

    /// Stops serving `path`.
    pub fn release(&self, path: &str) {
        if let Some(id) = self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path)
        {
            self.local.unregister(id);
        }
    }
}
