//! The HTTP client both daemons use for remote objects.
//!
//! One builder, so TLS setup and the redirect rule are the same everywhere: redirects
//! are followed only to http and https (never to `file:` or anything else), at most 5.

use std::sync::Once;
use std::time::Duration;

/// Returns a client builder with FuseStream's TLS provider and redirect rule.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only if another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .user_agent(concat!("fusestream/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let scheme_ok = matches!(attempt.url().scheme(), "http" | "https");
            if scheme_ok && attempt.previous().len() < 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
}

/// True if `url` is an http or https URL (the only kinds an entry may point at).
pub fn is_http_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}
