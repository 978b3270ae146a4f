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
pub fn url(url: &str) -> String {
    let (without_fragment, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    let (base, query) = match without_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (without_fragment, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if !is_public(k) => format!("{k}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
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

fn redact_userinfo(base: &str) -> String {
    let Some(scheme_end) = base.find("://") else {
        return base.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    match base[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}{REDACTED}@{}",
            &base[..authority_start],
            &base[authority_start + at + 1..]
        ),
        None => base.to_string(),
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
            "https://REDACTED@host:1/p?token=REDACTED&x#REDACTED"
        );
        assert_eq!(url("http://host/a@b"), "http://host/a@b");
        assert_eq!(url("/local/path"), "/local/path");
    }
}
