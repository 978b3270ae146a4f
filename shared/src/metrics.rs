//! Prometheus metrics: the text exposition format, written at scrape time, and the
//! loopback HTTP endpoint (`GET /metrics`) that serves it.
//!
//! Why no metrics library: the daemons already keep most of what they report (atomics in
//! the cache, the stores, the in-flight op registry), so a scrape reads those directly and
//! there is no second copy of state to keep in step. What only metrics need (latency
//! histograms, error counters) uses [`Histogram`] and plain atomics: lock-free, a few
//! nanoseconds per op. Rendering happens on the scraper's request, never on a FUSE thread.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::listen::{self, HEADER_READ_TIMEOUT, Limits};

/// Upper bounds (seconds) of the latency histogram buckets: 100 µs to 60 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 60.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`]. Observing is three relaxed atomic adds.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(duration.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A text exposition being written: families (`# HELP`, `# TYPE`) and their samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// Starts family `name`; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The `_bucket`, `_sum` and `_count` samples of `histogram` (family `name`).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Self {
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0;
        let bounds = LATENCY_BUCKETS.iter().map(|b| b.to_string());
        for (bound, count) in bounds
            .chain(std::iter::once("+Inf".to_string()))
            .zip(&histogram.buckets)
        {
            cumulative += count.load(Ordering::Relaxed);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &bound));
            self.sample(&bucket_name, &with_le, cumulative as f64);
        }
        let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), labels, sum);
        // The count is the +Inf bucket, read once, so the two always agree.
        self.sample(&format!("{name}_count"), labels, cumulative as f64)
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Binds the metrics endpoint. Only loopback addresses: the metrics name staged objects'
/// kinds of errors and sizes, and the endpoint has no authentication.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--metrics-listen {addr}: only loopback addresses are allowed"
        ));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))
}

/// Serves `GET /metrics` with what `render` writes, until `shutdown` resolves.
/// Connections are capped per peer, and must send their request in time (see `listen`).
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let incoming = listen::tcp("metrics", listener, Limits::HTTP1);
    tokio::pin!(incoming);
    loop {
        let stream = tokio::select! {
            accepted = futures_util::StreamExt::next(&mut incoming) => match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(_)) => continue,
                None => return,
            },
            () = &mut shutdown => return,
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let render = render.clone();
                async move {
                    let response = if request.method() != Method::GET {
                        plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into())
                    } else if request.uri().path() != "/metrics" {
                        plain(StatusCode::NOT_FOUND, "metrics are at /metrics\n".into())
                    } else {
                        // Rendering reads atomics and takes short registry locks.
                        let text = tokio::task::spawn_blocking(move || render())
                            .await
                            .unwrap_or_default();
                        let mut response = plain(StatusCode::OK, text);
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        response
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_matches_inf() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(120));
        let mut out = Exposition::default();
        out.family("x_seconds", Kind::Histogram, "test").histogram(
            "x_seconds",
            &[("op", "read")],
            &h,
        );
        let text = out.into_text();
        assert!(
            text.contains("x_seconds_bucket{op=\"read\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{op=\"read\",le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{op=\"read\",le=\"60\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{op=\"read\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{op=\"read\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE x_seconds histogram\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.family("y", Kind::Gauge, "test")
            .sample("y", &[("name", "a\"b\\c\nd")], 1.0);
        assert!(out.into_text().contains(r#"y{name="a\"b\\c\nd"} 1"#));
    }
}
