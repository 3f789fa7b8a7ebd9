//! Span export (specs/trace-context.md §9): ending a span is a `try_send` on a bounded queue,
//! so the request path never waits; one task per exporter batches the spans, prints them on
//! the console when asked, and sends them over OTLP (HTTP/protobuf or gRPC).
//!
//! The export task is attache's own, on the proxy's tokio runtime, with an HTTP client chosen
//! here and nowhere else: none of the OpenTelemetry SDK's processor threads or blocking
//! clients are involved, so it works the same on a one-worker runtime.
//!
//! Retryable failures (HTTP 429, 502, 503, 504, gRPC `UNAVAILABLE`, a refused or broken
//! connection) are retried with backoff until the batch's `timeout`; then the batch is dropped
//! and counted. Errors are logged at most once per `error_log_interval`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc, oneshot};

use super::families::ExportFamilies;
use super::span::SpanRecord;
use crate::errors::error_chain;
use crate::facts::Value;
use crate::metrics::{Direction, Metrics};

/// The wire protocol to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Everything the export task needs, resolved.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The collector's URL (`/v1/traces` included for HTTP); `None`: console only.
    pub endpoint: Option<Uri>,
    pub protocol: Protocol,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub gzip: bool,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub scheduled_delay: Duration,
    pub error_log_interval: Duration,
    /// Print every span as a JSON line on stderr.
    pub console: bool,
    pub resource: BTreeMap<String, String>,
}

/// The span queue: a bounded list behind a lock held for a push, and a wake-up for the
/// export task when a batch is full (else it wakes on its schedule). Ending a span costs no
/// task wake-up.
struct Queue {
    spans: Mutex<Vec<SpanRecord>>,
    full_batch: Notify,
    max_queue_size: usize,
    max_export_batch_size: usize,
}

/// Where finished spans go: the sending half of the export queue. Cheap to clone.
#[derive(Clone)]
pub struct SpanSink {
    queue: Arc<Queue>,
    metrics: Arc<ExportFamilies>,
}

impl SpanSink {
    /// Queues a span without waiting; a full queue drops it, counted.
    pub fn send(&self, span: SpanRecord) {
        let q = &*self.queue;
        let mut spans = q.spans.lock().unwrap_or_else(|p| p.into_inner());
        if spans.len() >= q.max_queue_size {
            drop(spans);
            self.metrics.spans_dropped("queue_full", 1);
            return;
        }
        spans.push(span);
        if spans.len() == q.max_export_batch_size {
            q.full_batch.notify_one();
        }
    }
}

/// The exporter: the queue's sending half and the way to flush it at shutdown.
#[derive(Clone)]
pub struct Exporter {
    pub sink: SpanSink,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    pub settings: Arc<ExportSettings>,
}

impl Exporter {
    /// Starts the export task on the current tokio runtime. It ends, after sending what is
    /// left, once every [`SpanSink`] and [`Exporter`] is gone.
    pub fn start(settings: ExportSettings, metrics: Arc<Metrics>) -> Self {
        let metrics: Arc<ExportFamilies> = metrics.family();
        let (flush, flush_rx) = mpsc::channel(1);
        let settings = Arc::new(settings);
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::with_capacity(settings.max_export_batch_size.max(1))),
            full_batch: Notify::new(),
            max_queue_size: settings.max_queue_size.max(1),
            max_export_batch_size: settings.max_export_batch_size.max(1),
        });
        let task = Task {
            queue: queue.clone(),
            flush_rx,
            client: Transport::new(&settings),
            resource: Resource {
                attributes: settings
                    .resource
                    .iter()
                    .map(|(k, v)| KeyValue {
                        key: k.clone(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(v.clone())),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
            .encode_to_vec(),
            scope: InstrumentationScope {
                name: "attache".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            last_error_log: None,
        };
        tokio::spawn(task.run());
        Self {
            sink: SpanSink { queue, metrics },
            flush,
            settings,
        }
    }

    /// Sends what is queued, waiting at most `timeout`. Spans still queued after that are
    /// lost (the process is about to exit).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = oneshot::channel();
        let asked = async { self.flush.send(ack).await.is_ok() && done.await.is_ok() };
        match tokio::time::timeout(timeout, asked).await {
            Ok(flushed) => flushed,
            Err(_) => {
                let queued = self
                    .sink
                    .queue
                    .spans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len();
                tracing::warn!(
                    queued,
                    "telemetry.shutdown_timeout reached; spans still queued are not exported"
                );
                false
            }
        }
    }
}

struct Task {
    queue: Arc<Queue>,
    flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    client: Option<Transport>,
    /// The encoded `Resource` and `InstrumentationScope`, the same in every request.
    resource: Vec<u8>,
    scope: Vec<u8>,
    settings: Arc<ExportSettings>,
    metrics: Arc<ExportFamilies>,
    last_error_log: Option<Instant>,
}

impl Task {
    async fn run(mut self) {
        // On the console a developer is watching: spans show within 200 ms.
        let tick = if self.settings.console {
            self.settings
                .scheduled_delay
                .min(Duration::from_millis(200))
        } else {
            self.settings.scheduled_delay
        };
        loop {
            let mut ack = None;
            tokio::select! {
                biased;
                Some(a) = self.flush_rx.recv() => ack = Some(a),
                () = self.queue.full_batch.notified() => {}
                () = tokio::time::sleep(tick) => {}
            }
            let spans =
                std::mem::take(&mut *self.queue.spans.lock().unwrap_or_else(|p| p.into_inner()));
            if !spans.is_empty() {
                self.export(spans).await;
            }
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
            // Only this task holds the queue: the config moved on, or attache is exiting.
            if Arc::strong_count(&self.queue) == 1 {
                let rest = std::mem::take(
                    &mut *self.queue.spans.lock().unwrap_or_else(|p| p.into_inner()),
                );
                if !rest.is_empty() {
                    self.export(rest).await;
                }
                return;
            }
        }
    }

    /// Prints and sends `spans` in batches, retrying what may succeed later, each batch
    /// until `timeout`.
    async fn export(&mut self, spans: Vec<SpanRecord>) {
        if self.settings.console {
            let mut lines = String::new();
            for span in &spans {
                lines.push_str(&span.to_json_line());
            }
            let _ = tokio::io::stderr().write_all(lines.as_bytes()).await;
        }
        let Some(client) = &self.client else {
            return;
        };
        for batch in spans.chunks(self.settings.max_export_batch_size.max(1)) {
            let n = batch.len();
            let body = encode_request(&self.resource, &self.scope, batch);
            let started = Instant::now();
            let mut backoff = Duration::from_millis(100);
            let outcome = loop {
                let left = self.settings.timeout.saturating_sub(started.elapsed());
                let attempt = tokio::time::timeout(left, client.send(&body, left)).await;
                let result = attempt.unwrap_or(Err(Failure {
                    retryable: false,
                    reason: format!("no answer within {:?}", self.settings.timeout),
                }));
                match result {
                    Err(f)
                        if f.retryable && started.elapsed() + backoff < self.settings.timeout =>
                    {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                    other => break other,
                }
            };
            match outcome {
                Ok(rejected) => {
                    let accepted = (n as u64).saturating_sub(rejected);
                    self.metrics.spans_exported.inc_by(accepted);
                    if rejected > 0 {
                        self.metrics.spans_dropped("rejected", rejected);
                        log_error(
                            &mut self.last_error_log,
                            &self.settings,
                            format!("the collector rejected {rejected} of {n} spans"),
                        );
                    }
                }
                Err(f) => {
                    self.metrics.spans_dropped("export_failed", n as u64);
                    log_error(
                        &mut self.last_error_log,
                        &self.settings,
                        format!("dropped {n} spans: {}", f.reason),
                    );
                }
            }
        }
    }
}

/// Logs an export error unless one was logged less than `error_log_interval` ago.
fn log_error(last: &mut Option<Instant>, settings: &ExportSettings, message: String) {
    if last.is_none_or(|t| t.elapsed() >= settings.error_log_interval) {
        *last = Some(Instant::now());
        tracing::warn!(
            endpoint = %settings.endpoint.as_ref().map(ToString::to_string).unwrap_or_default(),
            "span export failed: {message} (logged at most once per telemetry.error_log_interval; see attache_spans_dropped_total)"
        );
    }
}

struct Failure {
    retryable: bool,
    reason: String,
}

/// The HTTP client and request shape of one protocol.
struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    protocol: Protocol,
    headers: Vec<(HeaderName, HeaderValue)>,
    gzip: bool,
}

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Transport {
    fn new(s: &ExportSettings) -> Option<Self> {
        let endpoint = s.endpoint.clone()?;
        let uri = match s.protocol {
            Protocol::HttpProtobuf => endpoint,
            Protocol::Grpc => {
                let base = endpoint.to_string();
                let url = format!("{}{GRPC_PATH}", base.trim_end_matches('/'));
                url.parse().ok()?
            }
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(s.timeout));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_max_idle_per_host(2)
            .http2_only(s.protocol == Protocol::Grpc)
            .build(connector);
        Some(Self {
            client,
            uri,
            protocol: s.protocol,
            headers: s.headers.clone(),
            gzip: s.gzip,
        })
    }

    /// One attempt. `Ok` holds the number of spans the collector rejected.
    async fn send(&self, message: &[u8], timeout: Duration) -> Result<u64, Failure> {
        let payload = if self.gzip {
            gzip(message)
        } else {
            Bytes::copy_from_slice(message)
        };
        let mut req = Request::post(self.uri.clone());
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req = req.header(
            http::header::USER_AGENT,
            concat!("attache/", env!("CARGO_PKG_VERSION")),
        );
        let body = match self.protocol {
            Protocol::HttpProtobuf => {
                req = req.header(http::header::CONTENT_TYPE, "application/x-protobuf");
                if self.gzip {
                    req = req.header(http::header::CONTENT_ENCODING, "gzip");
                }
                payload
            }
            Protocol::Grpc => {
                req = req
                    .version(http::Version::HTTP_2)
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
                    .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)));
                if self.gzip {
                    req = req.header("grpc-encoding", "gzip");
                }
                let mut framed = BytesMut::with_capacity(payload.len() + 5);
                framed.put_u8(u8::from(self.gzip));
                framed.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
                framed.put_slice(&payload);
                framed.freeze()
            }
        };
        let req = req.body(Full::new(body)).map_err(|e| Failure {
            retryable: false,
            reason: format!("invalid export request: {e}"),
        })?;
        let res = self.client.request(req).await.map_err(|e| Failure {
            // A connection that could not be made or broke may work on the next try.
            retryable: true,
            reason: error_chain(&e),
        })?;
        let status = res.status();
        let headers = res.headers().clone();
        let collected = res.into_body().collect().await.map_err(|e| Failure {
            retryable: true,
            reason: format!("reading the collector's answer: {e}"),
        })?;
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        match self.protocol {
            Protocol::HttpProtobuf => {
                if status.is_success() {
                    Ok(rejected(&bytes))
                } else {
                    Err(Failure {
                        retryable: matches!(
                            status,
                            StatusCode::TOO_MANY_REQUESTS
                                | StatusCode::BAD_GATEWAY
                                | StatusCode::SERVICE_UNAVAILABLE
                                | StatusCode::GATEWAY_TIMEOUT
                        ),
                        reason: format!("the collector answered {status}"),
                    })
                }
            }
            Protocol::Grpc => {
                if !status.is_success() {
                    return Err(Failure {
                        retryable: matches!(
                            status,
                            StatusCode::TOO_MANY_REQUESTS
                                | StatusCode::BAD_GATEWAY
                                | StatusCode::SERVICE_UNAVAILABLE
                                | StatusCode::GATEWAY_TIMEOUT
                        ),
                        reason: format!("the collector answered HTTP {status}"),
                    });
                }
                // grpc-status is in the trailers, or in the headers of a trailers-only answer.
                let grpc = |name: &str| {
                    trailers
                        .as_ref()
                        .and_then(|t| t.get(name))
                        .or_else(|| headers.get(name))
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let code: u32 = grpc("grpc-status")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(2);
                match code {
                    0 => Ok(bytes.get(5..).map_or(0, rejected)),
                    14 => Err(Failure {
                        retryable: true,
                        reason: "gRPC UNAVAILABLE".to_owned(),
                    }),
                    c => Err(Failure {
                        retryable: false,
                        reason: format!(
                            "gRPC status {c}: {}",
                            grpc("grpc-message").unwrap_or_default()
                        ),
                    }),
                }
            }
        }
    }
}

/// Spans the collector said it rejected (OTLP partial success).
fn rejected(body: &[u8]) -> u64 {
    ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

fn gzip(data: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

// === OTLP encoding ===
//
// Spans are written straight into the protobuf of an `ExportTraceServiceRequest`, from the
// record and its borrowed attributes: no intermediate message structs, no copied strings.
// Field numbers are those of opentelemetry-proto's `trace.proto`; a test decodes the result
// with the generated types.

const LEN: u32 = 2;

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    encode_varint(u64::from((field << 3) | wire), buf);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_key(buf, field, LEN);
    encode_varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

/// An `attributes` entry: `KeyValue { key = 1, value = 2: AnyValue { string = 1 | bool = 2 |
/// int = 3 } }`.
fn put_attribute(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value<'_>) {
    let any_len = match value {
        Value::Str(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
        Value::Int(i) => 1 + encoded_len_varint(*i as u64),
        Value::Bool(_) => 2,
    };
    let kv_len = 1
        + encoded_len_varint(key.len() as u64)
        + key.len()
        + 1
        + encoded_len_varint(any_len as u64)
        + any_len;
    put_key(buf, field, LEN);
    encode_varint(kv_len as u64, buf);
    put_bytes(buf, 1, key.as_bytes());
    put_key(buf, 2, LEN);
    encode_varint(any_len as u64, buf);
    match value {
        Value::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        Value::Bool(b) => {
            put_key(buf, 2, 0);
            buf.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_key(buf, 3, 0);
            encode_varint(*i as u64, buf);
        }
    }
}

/// The `Span` message of a record.
fn encode_span(s: &SpanRecord, buf: &mut Vec<u8>) {
    // Low byte: the W3C flags (sampled); bits 8 and 9: whether the parent is remote is
    // known, and is it.
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    put_bytes(buf, 1, &s.trace_id.0.to_be_bytes());
    put_bytes(buf, 2, &s.span_id.0.to_be_bytes());
    if let Some(ts) = s.trace_state.as_ref().and_then(|v| v.to_str().ok()) {
        put_bytes(buf, 3, ts.as_bytes());
    }
    if let Some(p) = s.parent_id {
        put_bytes(buf, 4, &p.0.to_be_bytes());
    }
    put_bytes(buf, 5, s.name().as_bytes());
    let kind = match s.direction {
        Direction::Inbound => span::SpanKind::Server,
        Direction::Outbound => span::SpanKind::Client,
    };
    put_key(buf, 6, 0);
    encode_varint(kind as u64, buf);
    put_key(buf, 7, 1);
    buf.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    put_key(buf, 8, 1);
    buf.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    s.attributes(|k, v| put_attribute(buf, 9, k, &v));
    // events = 11: Event { time_unix_nano = 1 (fixed64), name = 2, attributes = 3 }
    let mut event = Vec::new();
    s.events(&mut |name, write| {
        event.clear();
        put_key(&mut event, 1, 1);
        event.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
        put_bytes(&mut event, 2, name.as_bytes());
        write(&mut |k, v| put_attribute(&mut event, 3, k, &v));
        put_bytes(buf, 11, &event);
    });
    if s.error_type().is_some() {
        // Status { code = 3: ERROR }
        put_key(buf, 15, LEN);
        encode_varint(2, buf);
        put_key(buf, 3, 0);
        encode_varint(status::StatusCode::Error as u64, buf);
    }
    let mut flags = 0x01 | HAS_IS_REMOTE;
    if s.remote_parent() {
        flags |= IS_REMOTE;
    }
    put_key(buf, 16, 5);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// `ExportTraceServiceRequest { resource_spans = 1: ResourceSpans { resource = 1,
/// scope_spans = 2: ScopeSpans { scope = 1, spans = 2 } } }`.
pub fn encode_request(resource: &[u8], scope: &[u8], spans: &[SpanRecord]) -> Vec<u8> {
    let mut scope_spans = Vec::with_capacity(spans.len() * 512 + scope.len() + 8);
    put_bytes(&mut scope_spans, 1, scope);
    let mut one = Vec::with_capacity(512);
    for span in spans {
        one.clear();
        encode_span(span, &mut one);
        put_bytes(&mut scope_spans, 2, &one);
    }
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
    put_bytes(&mut resource_spans, 1, resource);
    put_bytes(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    put_bytes(&mut request, 1, &resource_spans);
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::UpstreamInfo;
    use crate::telemetry::span::{Ending, QueryMode, RequestHead, SpanSettings};
    use crate::trace_context::propagate::Restored;
    use crate::trace_context::{Format, SpanId, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn record(direction: Direction, status: u16) -> SpanRecord {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("shop:8080"));
        h.insert(http::header::USER_AGENT, HeaderValue::from_static("curl/8"));
        let uri: Uri = "/pay?x=1&sig=s".parse().unwrap();
        let method = http::Method::from_bytes(b"FOO").unwrap();
        let peer = Some(std::net::SocketAddr::from(([10, 1, 2, 3], 4000)));
        SpanRecord {
            direction,
            trace_id: TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736),
            span_id: SpanId(0x1111111111111111),
            parent_id: Some(SpanId(0x00f067aa0ba902b7)),
            trace_state: Some(HeaderValue::from_static("rojo=1")),
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            head: RequestHead::of(&method, &uri, http::Version::HTTP_11, &h, peer),
            status: Some(status),
            upstream: Some(UpstreamInfo {
                name: "payments".into(),
                url_base: "http://REDACTED:REDACTED@pay:8080".into(),
                host: "pay".into(),
                port: 8080,
                version: http::Version::HTTP_2,
                resend_count: 1,
                error: None,
            }),
            ending: Ending::Complete,
            format: Some(Format::B3),
            restored: Some(Restored::Hit),
            facts: Default::default(),
            settings: Arc::new(SpanSettings {
                url_query: QueryMode::Redacted,
                redact_query_keys: Vec::new(),
            }),
        }
    }

    #[test]
    fn hand_encoded_spans_decode_with_the_generated_types() {
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("svc".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let scope = InstrumentationScope {
            name: "attache".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let spans = [
            record(Direction::Inbound, 503),
            record(Direction::Outbound, 200),
        ];
        let bytes = encode_request(&resource, &scope, &spans);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let rs = &req.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "attache");
        assert_eq!(ss.spans.len(), 2);
        let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        let server = &ss.spans[0];
        assert_eq!(
            server.trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()
        );
        assert_eq!(server.span_id, 0x1111111111111111u64.to_be_bytes());
        assert_eq!(server.parent_span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert_eq!(server.trace_state, "rojo=1");
        assert_eq!(server.name, "HTTP");
        assert_eq!(server.kind, span::SpanKind::Server as i32);
        assert_eq!(
            (server.start_time_unix_nano, server.end_time_unix_nano),
            (1_000, 2_000)
        );
        assert_eq!(server.flags, 0x301);
        assert_eq!(
            server.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        use any_value::Value as V;
        assert_eq!(
            attr(server, "http.request.method"),
            Some(V::StringValue("_OTHER".into()))
        );
        assert_eq!(
            attr(server, "http.request.method_original"),
            Some(V::StringValue("FOO".into()))
        );
        assert_eq!(
            attr(server, "url.query"),
            Some(V::StringValue("x=1&sig=REDACTED".into()))
        );
        assert_eq!(
            attr(server, "server.address"),
            Some(V::StringValue("shop".into()))
        );
        assert_eq!(attr(server, "server.port"), Some(V::IntValue(8080)));
        assert_eq!(
            attr(server, "client.address"),
            Some(V::StringValue("10.1.2.3".into()))
        );
        assert_eq!(
            attr(server, "http.response.status_code"),
            Some(V::IntValue(503))
        );
        assert_eq!(
            attr(server, "error.type"),
            Some(V::StringValue("503".into()))
        );
        assert_eq!(
            attr(server, "attache.trace.format"),
            Some(V::StringValue("b3".into()))
        );

        let client = &ss.spans[1];
        assert_eq!(client.kind, span::SpanKind::Client as i32);
        assert!(client.status.is_none(), "CLIENT 200 is Unset");
        assert_eq!(
            attr(client, "url.full"),
            Some(V::StringValue(
                "http://REDACTED:REDACTED@pay:8080/pay?x=1&sig=REDACTED".into()
            ))
        );
        assert_eq!(
            attr(client, "http.request.resend_count"),
            Some(V::IntValue(1))
        );
        assert_eq!(
            attr(client, "network.protocol.version"),
            Some(V::StringValue("2".into()))
        );
        assert_eq!(attr(client, "attache.restored"), Some(V::BoolValue(true)));
        assert!(attr(client, "url.path").is_none());
    }
}
