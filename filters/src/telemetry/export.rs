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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc, oneshot};

pub use super::export_settings::{ExportSettings, Protocol};
use super::families::ExportFamilies;
use super::otlp::encode_request;
use super::span::SpanRecord;
use super::transport::{Failure, Transport};
use crate::metrics::Metrics;

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
