//! S3 and S3-compatible remotes: SigV4 presigned GET URLs (see `sigv4`), path-style or
//! virtual-hosted, with credentials from the config, the usual AWS environment variables
//! or the shared credentials/config files.
//!
//! Metadata comes from a ranged GET on a presigned URL (a presigned GET does not allow
//! HEAD), and S3's XML error code tells a missing object from bad credentials.
//!
//! Listings (ListBuckets, ListObjectsV2 with continuation tokens and `max-keys`) are GETs
//! of presigned URLs too, signed here with the same SigV4 code. Their XML is read by a
//! small hand parser ([`xml`]): we need the text of a handful of flat elements (`Key`,
//! `Size`, `LastModified`, `ETag`, `Prefix`, `Name`, `NextContinuationToken`) in blocks
//! that never nest in themselves, plus the five predefined entities and character
//! references. That is a few dozen tested lines, where an XML crate (quick-xml with its
//! own dependencies) would add far more code to the tree than it saves here.

use std::path::PathBuf;
use std::time::Duration;

use fusestream_shared::clock::unix_now;

use super::http::{HttpSource, Probe};
use super::listing::{self, Item, Kind, Location, Page};
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
    /// Items a listing page asks for (`max-keys`).
    page_size: u32,
    /// For listings (presigned URLs: nothing of ours in headers).
    client: reqwest::Client,
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
    pub fn new(name: &str, config: &S3Config, client: reqwest::Client) -> Result<S3, ConfigError> {
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
            page_size: config::listing_page_size(name, config.listing_page_size)?,
            client,
        })
    }

    /// Splits `bucket/path/to/key`.
    fn split<'a>(&self, path: &'a str) -> Result<(&'a str, &'a str), SourceError> {
        super::split_object_path(&self.name, path, "bucket/path/to/key")
    }

    /// A fresh presigned GET URL for `bucket/key`, and when it expires.
    pub fn sign(&self, path: &str) -> Result<(String, i64), SourceError> {
        let (bucket, key) = self.split(path)?;
        Ok(self.presign(bucket, key, &[]))
    }

    /// A presigned GET of `key` in `bucket` with `query` (an empty key: the bucket itself;
    /// an empty bucket too: the service, for ListBuckets), and when it expires.
    fn presign(&self, bucket: &str, key: &str, query: &[(&str, &str)]) -> (String, i64) {
        let now = unix_now();
        let (host, path) = if bucket.is_empty() {
            (self.host.clone(), "/".to_string())
        } else if self.path_style && key.is_empty() {
            (self.host.clone(), format!("/{bucket}"))
        } else if self.path_style {
            (self.host.clone(), format!("/{bucket}/{key}"))
        } else {
            (format!("{bucket}.{}", self.host), format!("/{key}"))
        };
        let url = sigv4::presign_get(
            &self.credentials,
            &Presign {
                scheme: &self.scheme,
                host: &host,
                path: &path,
                region: &self.region,
                timestamp: &sigv4::timestamp(now),
                expires_secs: self.lifetime.as_secs(),
                query,
            },
        );
        (url, now + self.lifetime.as_secs() as i64)
    }

    /// One page of a listing: ListBuckets, or ListObjectsV2 of a bucket under the prefix
    /// (with `delimiter=/` unless recursive), paged by continuation token.
    pub async fn list_page(
        &self,
        location: &Location,
        cursor: Option<&str>,
    ) -> Result<Page, SourceError> {
        let shown = format!("{}:{}", self.name, location.shown());
        let max_keys = self.page_size.to_string();
        let (url, _) = match &location.container {
            None => self.presign("", "", &[]),
            Some(bucket) => {
                let mut query = vec![
                    ("list-type", "2"),
                    ("max-keys", max_keys.as_str()),
                    ("prefix", location.prefix.as_str()),
                ];
                if !location.recursive {
                    query.push(("delimiter", "/"));
                }
                if let Some(token) = cursor {
                    query.push(("continuation-token", token));
                }
                self.presign(bucket, "", &query)
            }
        };
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| SourceError::Unavailable(format!("{shown}: {}", e.without_url())))?;
        let status = response.status();
        let body = listing::read_bounded(response, &shown).await?;
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(refusal(&shown, status, &body));
        }
        Ok(match location.container {
            None => Page {
                items: xml::elements(&body, "Bucket")
                    .map(|bucket| Item {
                        name: xml::child(bucket, "Name").unwrap_or_default(),
                        kind: Kind::Container,
                        size: 0,
                        last_modified_unix: xml::child(bucket, "CreationDate")
                            .and_then(|t| listing::parse_timestamp(&t))
                            .unwrap_or(0),
                        etag: String::new(),
                    })
                    .collect(),
                next: None,
            },
            Some(_) => objects_page(&body),
        })
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
            Probe::Refused { status, body } => Err(refusal(&shown, status, &body)),
        }
    }
}

/// What S3's refusal (`status`, and the XML error `body`) of a request about `shown` means.
fn refusal(shown: &str, status: reqwest::StatusCode, body: &str) -> SourceError {
    let code = xml::child(body, "Code").unwrap_or_default();
    let message = format!(
        "{shown}: {} (HTTP {status})",
        if code.is_empty() { "refused" } else { &code }
    );
    match (status.as_u16(), code.as_str()) {
        (404, _) | (_, "NoSuchKey" | "NoSuchBucket") => SourceError::NotFound(message),
        (_, "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "ExpiredToken" | "InvalidToken") => {
            SourceError::Unauthenticated(message)
        }
        (401, _) => SourceError::Unauthenticated(message),
        (403, _) => SourceError::PermissionDenied(message),
        (400, _) => SourceError::InvalidArgument(message),
        _ => SourceError::Unavailable(message),
    }
}

/// A ListObjectsV2 result as a page: its objects (`Contents`), directories
/// (`CommonPrefixes`), and the continuation token if it is truncated.
fn objects_page(body: &str) -> Page {
    let objects = xml::elements(body, "Contents").map(|object| Item {
        name: xml::child(object, "Key").unwrap_or_default(),
        kind: Kind::Object,
        size: xml::child(object, "Size")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        last_modified_unix: xml::child(object, "LastModified")
            .and_then(|t| listing::parse_timestamp(&t))
            .unwrap_or(0),
        etag: xml::child(object, "ETag").unwrap_or_default(),
    });
    let directories = xml::elements(body, "CommonPrefixes").map(|prefix| Item {
        name: xml::child(prefix, "Prefix").unwrap_or_default(),
        kind: Kind::Directory,
        size: 0,
        last_modified_unix: 0,
        etag: String::new(),
    });
    let truncated = xml::child(body, "IsTruncated").is_some_and(|t| t.trim() == "true");
    Page {
        items: objects
            .chain(directories)
            .filter(|item| !item.name.is_empty())
            .collect(),
        next: xml::child(body, "NextContinuationToken").filter(|_| truncated),
    }
}

/// Just enough XML for S3's answers: the text of flat elements, found by name.
mod xml {
    /// The contents of each `<tag>...</tag>` (or empty `<tag/>`) in `xml`, in order, for a
    /// tag that never contains itself. `<tagX>` for other tags is not matched.
    pub fn elements<'a>(xml: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let mut rest = xml;
        std::iter::from_fn(move || {
            loop {
                let start = rest.find('<')?;
                let after = &rest[start + 1..];
                let Some(tail) = after.strip_prefix(tag) else {
                    rest = after;
                    continue;
                };
                let end_of_open = tail.find('>')?;
                let open = &tail[..end_of_open];
                // `<tag>`, `<tag attr="...">` or `<tag/>`; not `<tagX>`.
                if !(open.is_empty() || open.starts_with([' ', '\t', '\n', '\r', '/'])) {
                    rest = after;
                    continue;
                }
                let body = &tail[end_of_open + 1..];
                if open.ends_with('/') {
                    rest = body;
                    return Some("");
                }
                let close = format!("</{tag}>");
                let Some(end) = body.find(&close) else {
                    rest = "";
                    return None;
                };
                rest = &body[end + close.len()..];
                return Some(&body[..end]);
            }
        })
    }

    /// The decoded text of the first `<tag>` in `xml`.
    pub fn child(xml: &str, tag: &str) -> Option<String> {
        elements(xml, tag).next().map(decode)
    }

    /// `text` with the predefined entities and character references decoded; anything
    /// else that looks like one is kept as it is.
    pub fn decode(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            rest = &rest[amp..];
            let decoded = rest.find(';').and_then(|semi| {
                let c = match &rest[1..semi] {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    reference => {
                        let number = reference.strip_prefix('#')?;
                        let code = match number.strip_prefix(['x', 'X']) {
                            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                            None => number.parse().ok()?,
                        };
                        char::from_u32(code)?
                    }
                };
                Some((c, semi + 1))
            });
            match decoded {
                Some((c, len)) => {
                    out.push(c);
                    rest = &rest[len..];
                }
                None => {
                    out.push('&');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
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
        assert_eq!(xml::child(body, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(xml::child("nothing", "Code"), None);
    }

    #[test]
    fn reads_list_objects_v2_pages() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>
<KeyCount>3</KeyCount><MaxKeys>3</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>
<NextContinuationToken>tok&amp;1</NextContinuationToken>
<Contents><Key>p/a &amp; b &lt;1&gt; &#233;&#x4E2D;.bin</Key><LastModified>2013-05-24T00:00:00.000Z</LastModified>
<ETag>&quot;abc&quot;</ETag><Size>42</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>p/empty</Key><LastModified>2013-05-24T00:00:00.000Z</LastModified><ETag>"d"</ETag><Size>0</Size></Contents>
<CommonPrefixes><Prefix>p/sub/</Prefix></CommonPrefixes></ListBucketResult>"#;
        let page = objects_page(body);
        assert_eq!(page.next.as_deref(), Some("tok&1"));
        let names: Vec<(&str, Kind, u64)> = page
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.kind, i.size))
            .collect();
        assert_eq!(
            names,
            [
                ("p/a & b <1> é中.bin", Kind::Object, 42),
                ("p/empty", Kind::Object, 0),
                ("p/sub/", Kind::Directory, 0)
            ]
        );
        assert_eq!(page.items[0].etag, "\"abc\"");
        assert_eq!(page.items[0].last_modified_unix, 1_369_353_600);
        let last = body.replace("<IsTruncated>true", "<IsTruncated>false");
        assert_eq!(objects_page(&last).next, None);
    }

    #[test]
    fn xml_elements_match_whole_tags_and_entities_decode_safely() {
        let xml = "<Buckets><Bucket><Name>a</Name></Bucket><Bucket x='1'><Name>b</Name></Bucket><Bucket/></Buckets>";
        let buckets: Vec<&str> = xml::elements(xml, "Bucket").collect();
        assert_eq!(buckets.len(), 3, "{buckets:?}");
        assert_eq!(xml::child(buckets[1], "Name").as_deref(), Some("b"));
        assert_eq!(buckets[2], "");
        assert_eq!(xml::elements("<A>unclosed", "A").count(), 0);
        assert_eq!(
            xml::decode("a &bogus; &#xZZ; &#1114112; & b&amp;"),
            "a &bogus; &#xZZ; &#1114112; & b&"
        );
        assert_eq!(xml::decode("&#65;&#x42;"), "AB");
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
            listing_page_size: None,
        };
        let client = fusestream_shared::http::client_builder().build().unwrap();
        let custom = S3::new("m", &config(Some("http://127.0.0.1:8080")), client.clone()).unwrap();
        let (url, _) = custom.sign("bucket/dir/key.bin").unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:8080/bucket/dir/key.bin?X-Amz-Algorithm="),
            "{url}"
        );
        let aws = S3::new("m", &config(None), client).unwrap();
        let (url, _) = aws.sign("bucket/key").unwrap();
        assert!(
            url.starts_with("https://bucket.s3.us-east-1.amazonaws.com/key?"),
            "{url}"
        );
        assert!(custom.sign("no-key").is_err());
    }
}
