//! A real OTLP trace receiver for the tests and the benchmark: the collector's gRPC
//! service (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, built from the
//! OTLP protobufs) and its HTTP form (`POST /v1/traces`, protobuf body), on 127.0.0.1.
//! Every span received is kept, flattened, for assertions.
//!
//! Also [`Blackhole`]: a collector address that accepts connections and never answers.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One span as received, flattened.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// The `service.name` of its resource.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// Span ids this span links to.
    pub links: Vec<String>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: BTreeMap<String, String>,
    /// Event names (for tracing events: their message).
    pub events: Vec<String>,
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn value_text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_text(&kv.value)))
        .collect()
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn flatten(request: &ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                out.push(SpanRecord {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    links: span.links.iter().map(|l| hex::encode(&l.span_id)).collect(),
                    start: time(span.start_time_unix_nano),
                    end: time(span.end_time_unix_nano),
                    attributes: attributes(&span.attributes),
                    events: span.events.iter().map(|e| e.name.clone()).collect(),
                });
            }
        }
    }
    out
}

type Spans = Arc<Mutex<Vec<SpanRecord>>>;

struct Receiver(Spans);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = flatten(request.get_ref());
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The OTLP receiver. Stops with its runtime when dropped.
pub struct OtlpSink {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    spans: Spans,
    _runtime: tokio::runtime::Runtime,
}

impl OtlpSink {
    pub fn start() -> OtlpSink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let spans: Spans = Arc::default();
        let (grpc, http) = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            (grpc, http)
        });
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let service = TraceServiceServer::new(Receiver(spans.clone()));
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
        );
        runtime.spawn(serve_http(http, spans.clone()));
        OtlpSink {
            grpc_addr,
            http_addr,
            spans,
            _runtime: runtime,
        }
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT` with protocol `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT` with protocol `http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded: a liveness check) until `condition` holds for the spans received.
    pub fn wait_for(
        &self,
        what: &str,
        condition: impl Fn(&[SpanRecord]) -> bool,
    ) -> Vec<SpanRecord> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans = self.spans();
            if condition(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let names: BTreeMap<&str, usize> =
                    spans.iter().fold(BTreeMap::new(), |mut m, s| {
                        *m.entry(s.name.as_str()).or_default() += 1;
                        m
                    });
                let details: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{} {:?}..{:?} {:?}", s.name, s.start, s.end, s.attributes))
                    .collect();
                panic!(
                    "never received spans such that {what}; received: {names:?}\n{}",
                    details.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn serve_http(listener: tokio::net::TcpListener, spans: Spans) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let spans = spans.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        let ok = request.uri().path() == "/v1/traces";
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        let status = match (ok, body) {
                            (true, Ok(body)) => match ExportTraceServiceRequest::decode(body) {
                                Ok(decoded) => {
                                    spans.lock().unwrap().extend(flatten(&decoded));
                                    200
                                }
                                Err(_) => 400,
                            },
                            _ => 404,
                        };
                        let reply = ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec();
                        let mut response = hyper::Response::new(Full::new(Bytes::from(reply)));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An address that accepts TCP connections and never reads or answers: a collector
/// that is up but wedged.
pub struct Blackhole {
    pub addr: SocketAddr,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream); // never read, never closed
            }
        });
        Blackhole { addr }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
