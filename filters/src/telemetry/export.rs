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
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::span::{SpanRecord, Value};
use super::{Direction, Metrics};

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

/// Where finished spans go: the sending half of the export queue. Cheap to clone.
#[derive(Clone)]
pub struct SpanSink {
    tx: mpsc::Sender<SpanRecord>,
    metrics: Arc<Metrics>,
}

impl SpanSink {
    /// Queues a span without waiting; a full queue drops it, counted.
    pub fn send(&self, span: SpanRecord) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.spans_dropped("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.spans_dropped("shutdown", 1),
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
    /// Starts the export task on the current tokio runtime.
    pub fn start(settings: ExportSettings, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(settings.max_queue_size.max(1));
        let (flush, flush_rx) = mpsc::channel(1);
        let settings = Arc::new(settings);
        let task = Task {
            rx,
            flush_rx,
            client: Transport::new(&settings),
            resource: resource(&settings.resource),
            settings: settings.clone(),
            metrics: metrics.clone(),
            last_error_log: None,
        };
        tokio::spawn(task.run());
        Self {
            sink: SpanSink { tx, metrics },
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
                let queued = self.sink.tx.max_capacity() - self.sink.tx.capacity();
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
    rx: mpsc::Receiver<SpanRecord>,
    flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    client: Option<Transport>,
    resource: Resource,
    settings: Arc<ExportSettings>,
    metrics: Arc<Metrics>,
    last_error_log: Option<Instant>,
}

impl Task {
    async fn run(mut self) {
        let max = self.settings.max_export_batch_size.max(1);
        let mut batch: Vec<SpanRecord> = Vec::with_capacity(max);
        let mut deadline = tokio::time::Instant::now() + self.settings.scheduled_delay;
        loop {
            tokio::select! {
                biased;
                Some(ack) = self.flush_rx.recv() => {
                    while let Ok(span) = self.rx.try_recv() {
                        self.accept(span, &mut batch).await;
                    }
                    self.export(&mut batch).await;
                    let _ = ack.send(());
                }
                span = self.rx.recv() => match span {
                    Some(span) => self.accept(span, &mut batch).await,
                    None => {
                        // Every sender is gone: the config changed or attache is exiting.
                        self.export(&mut batch).await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    self.export(&mut batch).await;
                    deadline = tokio::time::Instant::now() + self.settings.scheduled_delay;
                }
            }
        }
    }

    async fn accept(&mut self, span: SpanRecord, batch: &mut Vec<SpanRecord>) {
        if self.settings.console {
            let line = span.to_json_line();
            let mut err = tokio::io::stderr();
            let _ = err.write_all(line.as_bytes()).await;
        }
        if self.client.is_some() {
            batch.push(span);
            if batch.len() >= self.settings.max_export_batch_size {
                self.export(batch).await;
            }
        }
    }

    /// Sends the batch, retrying what may succeed later, until `timeout`.
    async fn export(&mut self, batch: &mut Vec<SpanRecord>) {
        let Some(client) = &self.client else {
            batch.clear();
            return;
        };
        while !batch.is_empty() {
            let n = batch.len().min(self.settings.max_export_batch_size.max(1));
            let spans: Vec<SpanRecord> = batch.drain(..n).collect();
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(self.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "attache".to_owned(),
                            version: env!("CARGO_PKG_VERSION").to_owned(),
                            ..Default::default()
                        }),
                        spans: spans.iter().map(to_proto).collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            let body = request.encode_to_vec();
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

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn resource(attrs: &BTreeMap<String, String>) -> Resource {
    Resource {
        attributes: attrs
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
}

/// The OTLP form of a span.
pub fn to_proto(s: &SpanRecord) -> Span {
    // Low byte: the W3C flags (sampled); bits 8-9: whether the parent is remote is known,
    // and is it.
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    let mut flags = 0x01 | HAS_IS_REMOTE;
    if s.remote_parent {
        flags |= IS_REMOTE;
    }
    Span {
        trace_id: s.trace_id.0.to_be_bytes().to_vec(),
        span_id: s.span_id.0.to_be_bytes().to_vec(),
        trace_state: s
            .trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        parent_span_id: s
            .parent_id
            .map(|p| p.0.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags,
        name: s.name.to_string(),
        kind: match s.direction {
            Direction::Inbound => span::SpanKind::Server as i32,
            Direction::Outbound => span::SpanKind::Client as i32,
        },
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s
            .attributes
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).to_owned(),
                value: Some(AnyValue {
                    value: Some(match v {
                        Value::Str(s) => any_value::Value::StringValue(s.to_string()),
                        Value::Int(i) => any_value::Value::IntValue(*i),
                        Value::Bool(b) => any_value::Value::BoolValue(*b),
                    }),
                }),
                ..Default::default()
            })
            .collect(),
        status: s.error.then(|| Status {
            code: status::StatusCode::Error as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}
