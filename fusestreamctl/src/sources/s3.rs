//! S3 and S3-compatible remotes: SigV4 presigned GET URLs (see `sigv4`), path-style or
//! virtual-hosted, with credentials from the config, the usual AWS environment variables
//! or the shared credentials/config files.
//!
//! Metadata comes from a ranged GET on a presigned URL (a presigned GET does not allow
//! HEAD), and S3's XML error code tells a missing object from bad credentials.

use std::path::PathBuf;
use std::time::Duration;

use fusestream_shared::clock::unix_now;

use super::http::{HttpSource, Probe};
use super::sigv4::{self, Credentials, Presign};
use super::{Resolved, SourceError};
use crate::config::{self, ConfigError, S3Config};

const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct S3 {
    name: String,
    scheme: String,
    /// Endpoint host, with `:port` when not the default.
    host: String,
    region: String,
    path_style: bool,
    credentials: Credentials,
    lifetime: Duration,
}

/// `[section]` → key → value of an AWS-style INI file.
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == section;
        } else if in_section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_string());
        }
    }
    None
}

fn aws_file(env: &str, default: &str) -> Option<String> {
    let path = std::env::var_os(env).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(default))
    })?;
    std::fs::read_to_string(path).ok()
}

impl S3 {
    pub fn new(name: &str, config: &S3Config) -> Result<S3, ConfigError> {
        let problem = |message: String| ConfigError::Remote {
            remote: name.into(),
            message,
        };
        let profile = config
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok())
            .unwrap_or_else(|| "default".into());
        let credentials_file = aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = aws_file("AWS_CONFIG_FILE", "config");
        let from_file = |key: &str| {
            credentials_file
                .as_deref()
                .and_then(|t| ini_value(t, &profile, key))
        };

        // The config's own keys, then the standard environment, then the shared files.
        let configured = config::secret(
            name,
            "access_key_id",
            &config.access_key_id.clone().map(config::Secret),
            &config.access_key_id_env,
        )?;
        let secret = config::secret(
            name,
            "secret_access_key",
            &config.secret_access_key,
            &config.secret_access_key_env,
        )?;
        let token = config::secret(
            name,
            "session_token",
            &config.session_token,
            &config.session_token_env,
        )?;
        let credentials = match (configured, secret) {
            (Some(id), Some(secret)) => Credentials {
                access_key_id: id.0,
                secret_access_key: secret.0,
                session_token: token.map(|t| t.0),
            },
            (None, None) => match (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Ok(id), Ok(secret)) => Credentials {
                    access_key_id: id,
                    secret_access_key: secret,
                    session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
                },
                _ => match (
                    from_file("aws_access_key_id"),
                    from_file("aws_secret_access_key"),
                ) {
                    (Some(id), Some(secret)) => Credentials {
                        access_key_id: id,
                        secret_access_key: secret,
                        session_token: from_file("aws_session_token"),
                    },
                    _ => {
                        return Err(problem(format!(
                            "no credentials: set access_key_id(_env) and secret_access_key(_env), \
                             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or profile {profile:?} in the \
                             shared credentials file"
                        )));
                    }
                },
            },
            _ => {
                return Err(problem(
                    "set both access_key_id and secret_access_key (or neither)".into(),
                ));
            }
        };
        let config_section = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .or_else(|| {
                config_file
                    .as_deref()
                    .and_then(|t| ini_value(t, &config_section, "region"))
            })
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let (scheme, rest) = endpoint
            .split_once("://")
            .filter(|(s, _)| matches!(*s, "http" | "https"))
            .ok_or_else(|| problem(format!("endpoint {endpoint:?} is not an http(s) URL")))?;
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            return Err(problem("endpoint must not have a path".into()));
        }
        let lifetime = config
            .url_lifetime
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        if lifetime.as_secs() > sigv4::MAX_EXPIRES_SECS {
            return Err(problem(
                "url_lifetime is at most 604800 s (7 days) for S3".into(),
            ));
        }
        Ok(S3 {
            name: name.into(),
            scheme: scheme.into(),
            host: host.into(),
            region,
            path_style: config.path_style.unwrap_or(config.endpoint.is_some()),
            credentials,
            lifetime,
        })
    }

    /// Splits `bucket/path/to/key`.
    fn split<'a>(&self, path: &'a str) -> Result<(&'a str, &'a str), SourceError> {
        match path.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok((bucket, key)),
            _ => Err(SourceError::InvalidArgument(format!(
                "{}:{path}: expected {}:bucket/path/to/key",
                self.name, self.name
            ))),
        }
    }

    /// A fresh presigned GET URL for `bucket/key`, and when it expires.
    pub fn sign(&self, path: &str) -> Result<(String, i64), SourceError> {
        let (bucket, key) = self.split(path)?;
        let now = unix_now();
        let (host, object_path) = if self.path_style {
            (self.host.clone(), format!("/{bucket}/{key}"))
        } else {
            (format!("{bucket}.{}", self.host), format!("/{key}"))
        };
        let url = sigv4::presign_get(
            &self.credentials,
            &Presign {
                scheme: &self.scheme,
                host: &host,
                path: &object_path,
                region: &self.region,
                timestamp: &sigv4::timestamp(now),
                expires_secs: self.lifetime.as_secs(),
            },
        );
        Ok((url, now + self.lifetime.as_secs() as i64))
    }

    pub async fn resolve(&self, path: &str, http: &HttpSource) -> Result<Resolved, SourceError> {
        let (url, url_expires_unix) = self.sign(path)?;
        let shown = format!("{}:{path}", self.name);
        match http.probe(&url, &shown).await? {
            Probe::Found(version) => Ok(Resolved {
                url,
                url_expires_unix,
                version,
                display: shown,
                renewal: super::Renewal::Never,
            }),
            Probe::Refused { status, body } => {
                let code = xml_code(&body).unwrap_or_default();
                let message = format!(
                    "{shown}: {} (HTTP {status})",
                    if code.is_empty() { "refused" } else { code }
                );
                Err(match (status.as_u16(), code) {
                    (404, _) | (_, "NoSuchKey" | "NoSuchBucket") => SourceError::NotFound(message),
                    (
                        _,
                        "SignatureDoesNotMatch"
                        | "InvalidAccessKeyId"
                        | "ExpiredToken"
                        | "InvalidToken",
                    ) => SourceError::Unauthenticated(message),
                    (401, _) => SourceError::Unauthenticated(message),
                    (403, _) => SourceError::PermissionDenied(message),
                    (400, _) => SourceError::InvalidArgument(message),
                    _ => SourceError::Unavailable(message),
                })
            }
        }
    }
}

/// The `<Code>` of an S3 XML error body.
fn xml_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = start + body[start..].find("</Code>")?;
    Some(body[start..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_aws_ini_files_and_error_codes() {
        let text = "[default]\naws_access_key_id = A\n[profile dev]\nregion = eu-west-1\n";
        assert_eq!(
            ini_value(text, "default", "aws_access_key_id").as_deref(),
            Some("A")
        );
        assert_eq!(
            ini_value(text, "profile dev", "region").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(ini_value(text, "dev", "region"), None);
        let body = "<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>";
        assert_eq!(xml_code(body), Some("NoSuchKey"));
        assert_eq!(xml_code("nothing"), None);
    }

    #[test]
    fn path_style_and_virtual_hosted_urls() {
        let config = |endpoint: Option<&str>| S3Config {
            endpoint: endpoint.map(str::to_string),
            region: Some("us-east-1".into()),
            access_key_id: Some("test:tester".into()),
            access_key_id_env: None,
            secret_access_key: Some(config::Secret("testing".into())),
            secret_access_key_env: None,
            session_token: None,
            session_token_env: None,
            profile: None,
            path_style: None,
            url_lifetime: None,
        };
        let custom = S3::new("m", &config(Some("http://127.0.0.1:8080"))).unwrap();
        let (url, _) = custom.sign("bucket/dir/key.bin").unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:8080/bucket/dir/key.bin?X-Amz-Algorithm="),
            "{url}"
        );
        let aws = S3::new("m", &config(None)).unwrap();
        let (url, _) = aws.sign("bucket/key").unwrap();
        assert!(
            url.starts_with("https://bucket.s3.us-east-1.amazonaws.com/key?"),
            "{url}"
        );
        assert!(custom.sign("no-key").is_err());
    }
}
