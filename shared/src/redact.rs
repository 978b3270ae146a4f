//! Redaction of URLs: the one place that decides what of a URL may appear in logs, spans,
//! errors and command output.
//!
//! Temp URLs carry their credential in the query string (`temp_url_sig`,
//! `X-Amz-Signature`, our own `sig`), and user-supplied URLs may carry userinfo. Query
//! values are hidden unless the parameter is on a short allow-list of names known to be
//! harmless (expiry and algorithm fields), so a parameter nobody thought of stays hidden.

use std::fmt;

const REDACTED: &str = "REDACTED";

/// Query parameters whose values are not secret.
const PUBLIC_PARAMS: &[&str] = &[
    "expires",
    "temp_url_expires",
    "temp_url_prefix",
    "filename",
    "inline",
    "x-amz-algorithm",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-signedheaders",
    "partnumber",
    "versionid",
];

/// Returns `url` with userinfo and non-public query values replaced by `REDACTED`.
/// Text that is not a URL is returned unchanged.
///
/// Userinfo is found before the query and fragment are split off: a password may hold
/// `#` or `?` unencoded, and splitting there first would leave its tail in the host.
/// Query parameters are separated by `&` and `;`; a parameter without `=` is a value of
/// its own (`?SECRET`) and is hidden too.
pub fn url(url: &str) -> String {
    let (prefix, rest) = split_userinfo(url);
    let (without_fragment, fragment) = match rest.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (rest, None),
    };
    let (base, query) = match without_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (without_fragment, None),
    };
    let mut out = prefix;
    out.push_str(base);
    if let Some(query) = query {
        out.push('?');
        let mut start = 0;
        for (i, c) in query
            .char_indices()
            .chain(std::iter::once((query.len(), '&')))
        {
            if c != '&' && c != ';' {
                continue;
            }
            let pair = &query[start..i];
            match pair.split_once('=') {
                Some((k, _)) if !is_public(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                None if !pair.is_empty() => out.push_str(REDACTED),
                _ => out.push_str(pair),
            }
            if i < query.len() {
                out.push(c);
            }
            start = i + 1;
        }
    }
    if fragment.is_some() {
        // Fragments never reach the server; some apps put tokens there. Drop it.
        out.push_str("#REDACTED");
    }
    out
}

fn is_public(key: &str) -> bool {
    PUBLIC_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(key))
}

/// Splits `url` after its authority's userinfo: (scheme and `REDACTED@` if there was
/// userinfo, the rest). The userinfo is whatever precedes the last `@` before the first
/// `/` after `://`; in odd cases (an `@` in a query of a URL with no path) that hides
/// more than needed, never less.
fn split_userinfo(url: &str) -> (String, &str) {
    let Some(scheme_end) = url.find("://") else {
        return (String::new(), url);
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => (
            format!("{}{REDACTED}@", &url[..authority_start]),
            &url[authority_start + at + 1..],
        ),
        None => (url[..authority_start].to_string(), &url[authority_start..]),
    }
}

/// Display adapter: `tracing::info!(url = %Redacted(&u))`.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_signatures_and_keeps_expiry() {
        assert_eq!(
            url("http://127.0.0.1:8080/v1/AUTH_test/c/o?temp_url_sig=abc123&temp_url_expires=99"),
            "http://127.0.0.1:8080/v1/AUTH_test/c/o?temp_url_sig=REDACTED&temp_url_expires=99"
        );
        let s3 = url(
            "https://b.s3.example/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F1\
             &X-Amz-Signature=deadbeef&X-Amz-Security-Token=tok&X-Amz-Expires=60",
        );
        assert!(!s3.contains("deadbeef") && !s3.contains("tok") && !s3.contains("AK%2F1"));
        assert!(s3.contains("X-Amz-Expires=60") && s3.contains("X-Amz-Algorithm=AWS4"));
    }

    #[test]
    fn hides_userinfo_unknown_params_and_fragments() {
        assert_eq!(
            url("https://user:pw@host:1/p?token=t&x#frag"),
            "https://REDACTED@host:1/p?token=REDACTED&REDACTED#REDACTED"
        );
        assert_eq!(url("http://host/a@b"), "http://host/a@b");
        assert_eq!(url("/local/path"), "/local/path");
    }

    #[test]
    fn bare_and_semicolon_parameters_are_hidden() {
        assert_eq!(
            url("http://h/o?s3cr3t&expires=5"),
            "http://h/o?REDACTED&expires=5"
        );
        assert_eq!(
            url("http://h/o?expires=5;sig=abc;token=t"),
            "http://h/o?expires=5;sig=REDACTED;token=REDACTED"
        );
        assert_eq!(
            url("http://h/o?a=1&&b=2"),
            "http://h/o?a=REDACTED&&b=REDACTED"
        );
        assert_eq!(url("http://h/o?"), "http://h/o?");
    }

    #[test]
    fn passwords_with_hash_or_question_mark_are_hidden() {
        for (input, expected) in [
            ("https://u:pa#ss@host/p", "https://REDACTED@host/p"),
            (
                "https://u:pa?ss@host/p?x=1",
                "https://REDACTED@host/p?x=REDACTED",
            ),
            ("https://u:p#a?s@host", "https://REDACTED@host"),
            ("http://u:p@w@host:8/o", "http://REDACTED@host:8/o"),
        ] {
            let shown = url(input);
            assert_eq!(shown, expected, "{input}");
            assert!(!shown.contains("pa") && !shown.contains("ss@"), "{shown}");
        }
    }
}
