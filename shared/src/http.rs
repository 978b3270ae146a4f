//! The HTTP client both daemons use for remote objects.
//!
//! One builder, so TLS setup and the redirect rules are the same everywhere. No `Referer`
//! is ever sent (it would carry the previous URL's query: a signature). Redirects are
//! followed only to http and https (never to `file:` or anything else), at most 5, and:
//!
//! - [`client_builder`] (temp URLs, public URLs; the mount daemon's fetches): a redirect
//!   within the same origin (scheme, host, port) is followed; one to another origin only
//!   if it goes to https and not to a loopback, unspecified or link-local address or
//!   `localhost`. So a remote can not point the mount daemon (root, on the host's
//!   loopback) at a local service (another daemon's port, its own metrics), and a chain
//!   that reached https never falls back to http.
//! - [`credentialed_client_builder`] (requests carrying credentials in headers: an `http`
//!   remote's configured headers, Swift's `X-Auth-Key` / `X-Auth-Token`): the same origin
//!   only. reqwest drops `Authorization` and cookies on a cross-host redirect but not
//!   custom headers, so those requests must not leave their origin at all.

use std::net::IpAddr;
use std::sync::Once;
use std::time::Duration;

use reqwest::Url;
use reqwest::redirect::{Attempt, Policy};

/// Most redirects followed in one chain.
const MAX_REDIRECTS: usize = 5;

fn base_builder(policy: Policy) -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only if another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .user_agent(concat!("fusestream/", env!("CARGO_PKG_VERSION")))
        .referer(false)
        .redirect(policy)
}

/// A client builder with FuseStream's TLS provider and the public redirect rule.
pub fn client_builder() -> reqwest::ClientBuilder {
    base_builder(Policy::custom(|attempt| decide(attempt, false)))
}

/// A client builder for requests with credentials in headers: same-origin redirects only.
pub fn credentialed_client_builder() -> reqwest::ClientBuilder {
    base_builder(Policy::custom(|attempt| decide(attempt, true)))
}

fn decide(attempt: Attempt<'_>, same_origin_only: bool) -> reqwest::redirect::Action {
    if follows(attempt.url(), attempt.previous(), same_origin_only) {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// True if a redirect to `next`, after `previous` (the chain so far, first the original
/// URL), is followed.
pub fn follows(next: &Url, previous: &[Url], same_origin_only: bool) -> bool {
    let Some(from) = previous.last() else {
        return false;
    };
    if !matches!(next.scheme(), "http" | "https") || previous.len() > MAX_REDIRECTS {
        return false;
    }
    if next.scheme() == "http" && previous.iter().any(|u| u.scheme() == "https") {
        return false;
    }
    if next.origin() == from.origin() {
        return true;
    }
    !same_origin_only && next.scheme() == "https" && !is_local_host(next)
}

/// True if `url`'s host is a loopback, unspecified or link-local address, or `localhost`.
fn is_local_host(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return true;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => is_local_ip(ip),
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

fn is_local_ip(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// True if `url` is an http or https URL (the only kinds an entry may point at).
pub fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(urls: &[&str]) -> Vec<Url> {
        urls.iter().map(|u| Url::parse(u).unwrap()).collect()
    }

    fn public(next: &str, previous: &[&str]) -> bool {
        follows(&Url::parse(next).unwrap(), &chain(previous), false)
    }

    fn credentialed(next: &str, previous: &[&str]) -> bool {
        follows(&Url::parse(next).unwrap(), &chain(previous), true)
    }

    #[test]
    fn same_origin_redirects_are_followed() {
        assert!(public("http://h:8080/b", &["http://h:8080/a"]));
        assert!(credentialed("https://h/b?x", &["https://h/a"]));
    }

    #[test]
    fn credentials_never_leave_their_origin() {
        assert!(!credentialed("https://other/b", &["https://h/a"]));
        assert!(!credentialed("https://h:444/b", &["https://h/a"]));
        assert!(!credentialed("http://h/b", &["https://h/a"]), "downgrade");
    }

    #[test]
    fn public_urls_go_cross_origin_only_to_remote_https() {
        assert!(public("https://cdn.example/o", &["http://h/a"]));
        assert!(!public("http://cdn.example/o", &["http://h/a"]));
        assert!(
            !public("http://h/a", &["https://h/a"]),
            "never back to http"
        );
        assert!(!public("http://h/b", &["https://x/", "https://h/a"]));
        for local in [
            "https://127.0.0.1:9464/metrics",
            "https://127.1.2.3/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://0.0.0.0/",
            "https://169.254.169.254/latest",
            "https://localhost:8443/",
            "https://a.localhost./",
        ] {
            assert!(!public(local, &["https://h/a"]), "{local}");
        }
        // The mount daemon's own metrics, from a loopback remote on another port.
        assert!(!public(
            "http://127.0.0.1:9464/metrics",
            &["http://127.0.0.1:8080/o"]
        ));
    }

    #[test]
    fn only_http_and_at_most_five() {
        assert!(!public("file:///etc/shadow", &["http://h/a"]));
        let long = ["http://h/1"; 6];
        assert!(!public("http://h/2", &long));
        assert!(public("http://h/2", &long[..5]));
    }
}
