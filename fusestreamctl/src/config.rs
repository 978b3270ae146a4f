//! The control plane's config file: named remotes and their credentials.
//!
//! Only the control plane reads it (the mount daemon never sees credentials). Secrets come
//! from the file itself, which must then be private to its owner, or from environment
//! variables named in it (`key_env = "ARCHIVE_KEY"`). Every error names the file and the
//! remote, and never shows a secret.
//!
//! ```toml
//! [remotes.archive]        # OpenStack Swift (TempAuth v1 or Keystone v3)
//! type = "swift"
//! auth_url = "http://127.0.0.1:8080/auth/v1.0"
//! user = "test:tester"
//! key_env = "ARCHIVE_KEY"
//!
//! [remotes.media]          # S3 or S3-compatible
//! type = "s3"
//! endpoint = "http://127.0.0.1:8080"
//! region = "us-east-1"
//! access_key_id_env = "MEDIA_AK"
//! secret_access_key_env = "MEDIA_SK"
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("remote {remote:?}: {message}")]
    Remote { remote: String, message: String },
}

/// A secret value: shown as `<secret>` in any debug output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RemoteConfig {
    Swift(SwiftConfig),
    S3(S3Config),
    Http(HttpConfig),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Objects are `base_url` + the staged path (e.g. `https://example.org/files/`).
    pub base_url: String,
    /// Headers sent with every request (e.g. `Authorization = "Bearer ..."`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Headers whose values come from the named environment variables.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwiftConfig {
    /// TempAuth (`.../auth/v1.0`) or Keystone v3 (`.../v3`).
    pub auth_url: String,
    /// TempAuth `account:user`, or the Keystone user name.
    pub user: Option<String>,
    pub key: Option<Secret>,
    pub key_env: Option<String>,
    /// Keystone: project (scope), and the domains of user and project (default "default").
    pub project: Option<String>,
    pub user_domain: Option<String>,
    pub project_domain: Option<String>,
    /// Keystone application credential (instead of user/key).
    pub application_credential_id: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub application_credential_secret_env: Option<String>,
    /// Keystone: which object-store endpoint of the catalog (default "public"), and region.
    pub interface: Option<String>,
    pub region: Option<String>,
    /// TempURL key; without one it is read from the account or container metadata.
    pub temp_url_key: Option<Secret>,
    pub temp_url_key_env: Option<String>,
    /// sha1, sha256 (default) or sha512; must be allowed by the cluster's /info.
    pub temp_url_digest: Option<String>,
    /// Seconds a temp URL is valid (default 3600).
    pub url_lifetime: Option<u64>,
    /// Items a listing page asks for (1 to 10,000; default 10,000).
    pub listing_page_size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Default: `https://s3.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Default: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the profile's, then us-east-1.
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub access_key_id_env: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub secret_access_key_env: Option<String>,
    pub session_token: Option<Secret>,
    pub session_token_env: Option<String>,
    /// Profile in the shared credentials/config files (default `AWS_PROFILE` or "default").
    pub profile: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`); default: true with a custom endpoint.
    pub path_style: Option<bool>,
    /// Seconds a presigned URL is valid (default 3600, at most 7 days).
    pub url_lifetime: Option<u64>,
    /// Items a listing page asks for (1 to 10,000; default 10,000; S3 servers give at
    /// most 1,000).
    pub listing_page_size: Option<u32>,
}

impl SwiftConfig {
    fn has_inline_secret(&self) -> bool {
        self.key.is_some()
            || self.temp_url_key.is_some()
            || self.application_credential_secret.is_some()
    }
}

impl S3Config {
    fn has_inline_secret(&self) -> bool {
        self.secret_access_key.is_some() || self.session_token.is_some()
    }
}

/// A remote's `listing_page_size`, checked (a page sizes the memory a listing takes).
pub fn listing_page_size(remote: &str, configured: Option<u32>) -> Result<u32, ConfigError> {
    use crate::sources::listing::DEFAULT_PAGE_SIZE;
    match configured {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(size) if (1..=DEFAULT_PAGE_SIZE).contains(&size) => Ok(size),
        Some(size) => Err(ConfigError::Remote {
            remote: remote.into(),
            message: format!("listing_page_size {size}: use 1 to {DEFAULT_PAGE_SIZE}"),
        }),
    }
}

/// Default location: `$XDG_CONFIG_HOME/fusestream/config.toml` (or `~/.config/...`).
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fusestream/config.toml"))
}

impl Config {
    /// Loads `path`. A missing file at the default location is an empty config; a missing
    /// file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let file_error = |message: String| ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default());
            }
            Err(e) => return Err(file_error(e.to_string())),
        };
        let config: Config =
            toml::from_str(&text).map_err(|e| file_error(parse_error(&text, &e)))?;
        let has_secrets = config.remotes.values().any(|r| match r {
            RemoteConfig::Swift(c) => c.has_inline_secret(),
            RemoteConfig::S3(c) => c.has_inline_secret(),
            RemoteConfig::Http(c) => !c.headers.is_empty(),
        });
        let mode = std::fs::metadata(path)
            .map_err(|e| file_error(e.to_string()))?
            .permissions()
            .mode();
        if has_secrets && mode & 0o077 != 0 {
            return Err(file_error(format!(
                "holds secrets but is readable by others (mode {:o}); run: chmod 600 {}",
                mode & 0o777,
                path.display()
            )));
        }
        for name in config.remotes.keys() {
            if !is_remote_name(name) {
                return Err(file_error(format!(
                    "remote name {name:?}: use letters, digits, '-' and '_'"
                )));
            }
        }
        Ok(config)
    }
}

/// True for names a remote may have (letters, digits, '-', '_'): the one rule the config,
/// `REMOTE:path` sources and the CLI apply.
pub fn is_remote_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A parse error of the config `text` as one line that shows no part of the file: toml's
/// own rendering quotes the offending line, which may hold a secret, and a type error
/// quotes the value (`invalid type: string "..."`), so the position is given as a line
/// and column and quoted values are elided.
fn parse_error(text: &str, e: &toml::de::Error) -> String {
    let mut message = String::new();
    let mut quoted = false;
    for c in e.message().trim().chars() {
        if c == '"' {
            if !quoted {
                message.push_str("\"…");
            }
            quoted = !quoted;
            if !quoted {
                message.push('"');
            }
        } else if !quoted && !c.is_control() {
            message.push(c);
        }
    }
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// A secret given inline or through an environment variable; `None` if neither is set.
pub fn secret(
    remote: &str,
    field: &str,
    inline: &Option<Secret>,
    env: &Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, env) {
        (Some(_), Some(_)) => Err(ConfigError::Remote {
            remote: remote.into(),
            message: format!("set {field} or {field}_env, not both"),
        }),
        (Some(value), None) => Ok(Some(value.clone())),
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Some(Secret(value))),
            _ => Err(ConfigError::Remote {
                remote: remote.into(),
                message: format!("{field}_env names {var}, which is not set"),
            }),
        },
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(mode: u32, text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn parses_remotes_of_each_type() {
        let file = write(
            0o600,
            r#"
            [remotes.archive]
            type = "swift"
            auth_url = "http://127.0.0.1:8080/auth/v1.0"
            user = "test:tester"
            key = "testing"
            [remotes.media]
            type = "s3"
            endpoint = "http://127.0.0.1:8080"
            region = "us-east-1"
            access_key_id_env = "AK"
            secret_access_key_env = "SK"
            "#,
        );
        let config = Config::load(file.path(), true).unwrap();
        assert!(matches!(config.remotes["archive"], RemoteConfig::Swift(_)));
        assert!(matches!(config.remotes["media"], RemoteConfig::S3(_)));
        assert!(
            !format!("{config:?}").contains("testing"),
            "secrets stay out of debug output"
        );
    }

    #[test]
    fn refuses_readable_secrets_unknown_keys_and_bad_names() {
        let readable = write(
            0o644,
            "[remotes.a]\ntype = \"swift\"\nauth_url = \"x\"\nkey = \"s3cret\"\n",
        );
        let err = Config::load(readable.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("readable by others (mode 644)") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("s3cret"));
        // Secrets only through the environment: any mode is fine.
        let env_only = write(
            0o644,
            "[remotes.a]\ntype = \"swift\"\nauth_url = \"x\"\nkey_env = \"K\"\n",
        );
        assert!(Config::load(env_only.path(), true).is_ok());
        let typo = write(
            0o600,
            "[remotes.a]\ntype = \"swift\"\nauth_url = \"x\"\nkye = \"k\"\n",
        );
        let err = Config::load(typo.path(), true).unwrap_err().to_string();
        assert!(err.contains("kye"), "{err}");
        let bad_name = write(0o600, "[remotes.\"a b\"]\ntype = \"s3\"\n");
        assert!(
            Config::load(bad_name.path(), true)
                .unwrap_err()
                .to_string()
                .contains("remote name")
        );
        let unknown_type = write(0o600, "[remotes.a]\ntype = \"ftp\"\n");
        assert!(Config::load(unknown_type.path(), true).is_err());
    }

    #[test]
    fn parse_errors_never_quote_the_file() {
        for text in [
            "[remotes.a]\ntype = \"swift\"\nkey = \"s3cret-value\" trailing\n",
            "[remotes.a]\ntype = \"swift\"\nauth_url = \"x\"\nurl_lifetime = \"s3cret-value\"\n",
            "[remotes.a]\ntype = \"http\"\nbase_url = \"x\"\nheaders = \"s3cret-value\n",
        ] {
            let file = write(0o600, text);
            let err = Config::load(file.path(), true).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = include_str!("../../deploy/config.example.toml");
        let config: Config = toml::from_str(example).unwrap();
        assert_eq!(config.remotes.len(), 4);
    }

    #[test]
    fn missing_files_and_secret_sources() {
        let missing = Path::new("/nonexistent/fusestream.toml");
        assert!(Config::load(missing, false).unwrap().remotes.is_empty());
        assert!(Config::load(missing, true).is_err());
        let both = secret("r", "key", &Some(Secret("a".into())), &Some("B".into()));
        assert!(both.unwrap_err().to_string().contains("not both"));
        let unset = secret(
            "r",
            "key",
            &None,
            &Some("FUSESTREAM_TEST_SURELY_UNSET".into()),
        );
        assert!(unset.unwrap_err().to_string().contains("is not set"));
        assert_eq!(secret("r", "key", &None, &None).unwrap(), None);
    }
}
