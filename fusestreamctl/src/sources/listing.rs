//! Listing what a remote holds: its containers (Swift) or buckets (S3), and the objects of
//! one under a prefix, either all of them (recursive) or one level with the "directories"
//! (names sharing the prefix up to the next '/') rolled up, as `ls REMOTE:` browses and as
//! `stage -r REMOTE:container/prefix/` expands.
//!
//! Every listing is paged by the remote itself (Swift's `marker`, S3's continuation token)
//! and handed on page by page ([`pages`]): a page is bounded by the remote's
//! `listing_page_size` and its body by [`MAX_PAGE_BYTES`], and no listing is ever collected
//! whole, so a container of millions of objects costs one page of memory. The remotes'
//! own modules fetch and parse a page (`Swift::list_page`, `S3::list_page`); what is common
//! (the location, the items, reading a bounded body, timestamps) is here.

use std::sync::Arc;

use futures_util::Stream;

use super::{Remote, SourceError};

/// Items a page asks for unless the remote's config says otherwise (Swift's own default;
/// S3 servers return at most 1,000 whatever is asked).
pub const DEFAULT_PAGE_SIZE: u32 = 10_000;

/// Bytes a page's body may have: 10,000 rows with names of Swift's longest (1,024 bytes)
/// and their metadata fit many times over.
pub const MAX_PAGE_BYTES: usize = 32 << 20;

/// What to list: `container` None lists the remote's containers (buckets); otherwise the
/// objects of `container` whose names start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub container: Option<String>,
    /// Empty, or a folder: ends with '/'.
    pub prefix: String,
    /// All objects under the prefix, rather than one level and its directories.
    pub recursive: bool,
}

impl Location {
    /// `""` (the containers), `container`, or `container/prefix`, where the prefix names a
    /// folder whether or not it ends with '/'.
    pub fn parse(path: &str, recursive: bool) -> Location {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return Location {
                container: None,
                prefix: String::new(),
                recursive,
            };
        }
        let (container, prefix) = path.split_once('/').unwrap_or((path, ""));
        let prefix = prefix.trim_end_matches('/');
        Location {
            container: Some(container.to_string()),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            recursive,
        }
    }

    /// How it is shown after `REMOTE:`.
    pub fn shown(&self) -> String {
        match &self.container {
            None => String::new(),
            Some(container) => format!("{container}/{}", self.prefix),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    /// Objects share `name` (ending in '/') as a prefix.
    Directory,
    Container,
}

/// One listed thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The object's full name in its container, the directory's prefix, or the
    /// container's name.
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    /// 0 if unknown.
    pub last_modified_unix: i64,
    /// As the listing gives it (Swift: the bare MD5; S3: quoted); empty if none.
    pub etag: String,
}

/// One page of a listing, and where the next one starts (None: this was the last).
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    pub next: Option<String>,
}

/// The pages of `location` on `remote`, fetched one at a time as they are consumed. A
/// remote that answers the same cursor again (which would page forever) ends the listing.
pub fn pages(
    remote: Arc<Remote>,
    location: Location,
) -> impl Stream<Item = Result<Page, SourceError>> + Send + 'static {
    // State: the cursor of the next page, or None once the last page was given.
    futures_util::stream::unfold(Some(None::<String>), move |cursor| {
        let (remote, location) = (remote.clone(), location.clone());
        async move {
            let cursor = cursor?;
            match remote.list_page(&location, cursor.as_deref()).await {
                Ok(mut page) => {
                    if page.next.is_some() && page.next == cursor {
                        page.next = None;
                    }
                    let next = page.next.clone().map(Some);
                    Some((Ok(page), next))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// The body of a listing response, refused beyond [`MAX_PAGE_BYTES`] (a remote's answer
/// never sizes our memory); `shown` names the listing in messages.
pub async fn read_bounded(
    mut response: reqwest::Response,
    shown: &str,
) -> Result<Vec<u8>, SourceError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| SourceError::Unavailable(format!("{shown}: {}", e.without_url())))?
    {
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(SourceError::Unavailable(format!(
                "{shown}: a listing page larger than {MAX_PAGE_BYTES} bytes; lower the \
                 remote's listing_page_size"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Unix seconds of an ISO 8601 UTC time as listings give it: `2024-05-01T12:34:56`,
/// optionally with a fraction and `Z` (Swift: `2024-05-01T12:34:56.123450`, S3:
/// `2024-05-01T12:34:56.000Z`). None if it is not one.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix seconds, as `ls` shows listed times.
pub fn format_timestamp(unix: i64) -> String {
    let (y, m, d) = super::sigv4::civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm, the
/// inverse of `sigv4`'s `civil_from_days`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_folders() {
        let at = |path| Location::parse(path, false);
        assert_eq!(at("").container, None);
        assert_eq!(
            at("c"),
            Location {
                container: Some("c".into()),
                prefix: String::new(),
                recursive: false
            }
        );
        assert_eq!(at("c/").prefix, "");
        assert_eq!(at("c/a/b").prefix, "a/b/");
        assert_eq!(at("c/a/b/").prefix, "a/b/");
        assert_eq!(at("c/a/b/").shown(), "c/a/b/");
        assert_eq!(at("").shown(), "");
    }

    #[test]
    fn parses_listing_timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2013-05-24T00:00:00.000Z"),
            Some(1_369_353_600)
        );
        assert_eq!(
            parse_timestamp("2000-02-29T01:01:01.123456"),
            Some(951_782_400 + 3661)
        );
        for bad in [
            "",
            "2013-05-24",
            "2013-13-01T00:00:00",
            "2013-05-24 00:00:00",
            "x",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(parse_timestamp("2013-0a-24T00:00:00"), None);
        assert_eq!(
            format_timestamp(1_369_353_600 + 3661),
            "2013-05-24 01:01:01"
        );
    }
}
