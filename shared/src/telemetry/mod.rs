//! Telemetry for both daemons: log lines, spans and their export over OTLP, and the trace
//! context that crosses gRPC.
//!
//! One `tracing` subscriber with two layers, each filtered on its own:
//! - log lines ([`logging`]), filtered by `FUSESTREAM_LOG`, formatted and queued for a
//!   writer thread; never blocking the thread that logs;
//! - spans ([`otlp`]), only when an OTLP endpoint is configured: every span of
//!   FuseStream's own crates at debug level and above, with the debug and higher events
//!   inside them as span events. FUSE op spans are debug spans, so with export off (and
//!   the default log filter) they cost no more than a disabled callsite.
//!
//! Neither layer ever waits on its destination: a stuck disk or a collector that never
//! answers drops telemetry, counted in [`LogStats`] and [`SpanStats`], which the metrics
//! endpoints export.

pub mod logging;
pub mod otlp;
pub mod propagation;

use std::io;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use logging::{LOG_ENV, LogStats, LogTarget};
pub use otlp::{OtlpConfig, SpanStats};

use crate::metrics::{Exposition, Kind};

/// How long shutting down waits for the last spans to be exported.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// The installed telemetry: its counters, and the span pipeline to flush at exit.
#[derive(Debug)]
pub struct Telemetry {
    pub stats: TelemetryStats,
    provider: Option<SdkTracerProvider>,
}

/// What the telemetry pipeline dropped and delivered (both daemons' metrics show it).
#[derive(Debug, Clone, Default)]
pub struct TelemetryStats {
    pub logs: LogStats,
    pub spans: SpanStats,
}

impl TelemetryStats {
    pub fn write_metrics(&self, out: &mut Exposition) {
        out.single(
            "fusestream_log_lines_dropped_total",
            Kind::Counter,
            "Log lines dropped because the log queue was full.",
            self.logs.dropped_lines() as f64,
        )
        .single(
            "fusestream_spans_dropped_total",
            Kind::Counter,
            "Spans dropped: export queue full, or export failed or timed out.",
            self.spans.dropped_spans() as f64,
        )
        .single(
            "fusestream_spans_exported_total",
            Kind::Counter,
            "Spans the OTLP collector accepted.",
            self.spans.exported_spans() as f64,
        );
    }
}

impl Telemetry {
    /// True if spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still queued, waiting at most a moment (never for a collector
    /// that does not answer).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown_with_timeout(SHUTDOWN_FLUSH);
        }
    }
}

/// Installs the global subscriber for the daemon `service_name` (the OTLP service name
/// unless `OTEL_SERVICE_NAME` says otherwise). `default_filter` is the log filter when
/// `FUSESTREAM_LOG` is unset.
pub fn init(
    service_name: &'static str,
    target: LogTarget,
    default_filter: &str,
) -> io::Result<Telemetry> {
    let (log_layer, logs) = logging::layer(&target, default_filter)?;
    let (span_layer, spans, provider) = match OtlpConfig::from_env() {
        Some(config) => {
            let (provider, spans) = tracer_provider(service_name, &config)?;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service_name))
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_location(false)
                .with_filter(span_targets());
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            (Some(layer), spans, Some(provider))
        }
        None => (None, SpanStats::default(), None),
    };
    tracing_subscriber::registry()
        .with(log_layer)
        .with(span_layer)
        .try_init()
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Telemetry {
        stats: TelemetryStats { logs, spans },
        provider,
    })
}

/// Where a span is in its trace, to parent other spans on without keeping it open (a
/// tracing parent stays open until its children close, which would move its end). For
/// work an op starts that may outlast the op, like a fetch started by a read.
#[derive(Debug, Clone, Default)]
pub struct TraceParent(Option<opentelemetry::Context>);

impl TraceParent {
    /// `span`'s place (nothing when spans are not exported).
    pub fn of(span: &tracing::Span) -> TraceParent {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        TraceParent((!span.is_disabled()).then(|| span.context()))
    }

    /// Makes `child` a child of it in the exported trace.
    pub fn adopt(&self, child: &tracing::Span) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        if let Some(cx) = &self.0
            && !child.is_disabled()
        {
            let _ = child.set_parent(cx.clone());
        }
    }
}

/// The spans (and span events) that are exported: FuseStream's own, debug and above.
fn span_targets() -> Targets {
    Targets::new()
        .with_target("fusestream_mountd", Level::DEBUG)
        .with_target("fusestream_shared", Level::DEBUG)
        .with_target("fusestreamctl", Level::DEBUG)
}

fn tracer_provider(
    service_name: &'static str,
    config: &OtlpConfig,
) -> io::Result<(SdkTracerProvider, SpanStats)> {
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours is the default.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name);
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::VERSION,
        ))
        .build();
    let (processor, spans) = otlp::QueueingProcessor::start(config, resource.clone(), || {
        otlp_exporter().map_err(|e| e.to_string())
    })?;
    // The default sampler follows OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    Ok((provider, spans))
}

/// The OTLP exporter the environment asks for: gRPC, or HTTP (protobuf or JSON).
fn otlp_exporter() -> Result<opentelemetry_otlp::SpanExporter, Box<dyn std::error::Error>> {
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()));
    let builder = opentelemetry_otlp::SpanExporter::builder();
    Ok(match protocol.as_deref().map(str::trim) {
        Some("grpc") => builder.with_tonic().build()?,
        // The project's HTTP client: its TLS provider and redirect rule.
        _ => builder
            .with_http()
            .with_http_client(crate::http::client_builder().build()?)
            .build()?,
    })
}
