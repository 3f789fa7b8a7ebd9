//! The telemetry pipelines that outlive a config snapshot: the span exporter and the access
//! log writer. A reload that leaves `spec.telemetry` (and the environment it reads) as it was
//! keeps them; one that changes it starts new ones, and the old exporter sends what it holds
//! once the last request of the old snapshot has finished.

use std::sync::Arc;

use attache_config::{Compression, Config, EffectiveTelemetry, LogOutput, OtlpProtocol, UrlQuery};
use attache_filters::telemetry::access_log::{self, AccessLog};
use attache_filters::telemetry::export::{ExportSettings, Exporter, Protocol};
use attache_filters::telemetry::span::{QueryMode, SpanSettings};
use attache_filters::{
    metrics::{Direction, Metrics},
    telemetry::ObserveLayer,
};
use http::{HeaderName, HeaderValue};

use crate::conn::ConnInfo;
use crate::kept::Kept;

/// What decides whether the exporter must be replaced.
#[derive(PartialEq)]
struct ExportKey {
    effective: EffectiveTelemetry,
    console: bool,
    error_log_interval: std::time::Duration,
}

pub struct Telemetry {
    metrics: Arc<Metrics>,
    /// `attache dev`: spans go to the console unless the file says otherwise.
    pub dev: bool,
    exporter: Kept<ExportKey, Exporter>,
    access_log: Kept<LogOutput, AccessLog>,
}

/// Configured `name: value` headers as header lines (validation has already refused invalid
/// ones, so none is dropped in practice).
pub fn header_lines<'a>(
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

impl Telemetry {
    pub fn new(metrics: Arc<Metrics>, dev: bool) -> Self {
        Self {
            metrics,
            dev,
            exporter: Kept::default(),
            access_log: Kept::default(),
        }
    }

    /// The observe layer (metrics, spans, access log) of one direction under `config`,
    /// starting or replacing the pipelines it needs. Runs inside the tokio runtime.
    pub fn layer(&self, config: &Config, direction: Direction) -> ObserveLayer {
        self.observe(config, direction, true)
    }

    /// SERVER spans only, for the OFREP listener: its calls come from the app beside attache,
    /// so they stay out of the request metrics and the access log.
    pub fn spans_only(&self, config: &Config) -> ObserveLayer {
        self.observe(config, Direction::Inbound, false)
    }

    fn observe(&self, config: &Config, direction: Direction, traffic: bool) -> ObserveLayer {
        let t = &config.spec.telemetry;
        let mut layer = ObserveLayer::new(self.metrics.clone(), direction)
            .record_metrics(traffic && t.metrics.enabled)
            .peer_of(|ext| {
                ext.get::<ConnInfo>()
                    .map(|c| attache_filters::telemetry::observe::Peer {
                        addr: c.peer,
                        secure: c.tls().is_some(),
                    })
            });
        if config.spec.trace.enabled
            && let Some(exporter) = self.exporter(config)
        {
            layer = layer.spans(
                exporter.sink.clone(),
                SpanSettings {
                    url_query: match t.url_query {
                        UrlQuery::Full => QueryMode::Full,
                        UrlQuery::Redacted => QueryMode::Redacted,
                        UrlQuery::Omit => QueryMode::Omit,
                    },
                    redact_query_keys: t.redact_query_keys.clone(),
                },
            );
        }
        if traffic && t.access_log.enabled {
            layer = layer.access_log(self.access_log(t.access_log.output));
        }
        layer
    }

    /// The exporter for `config`, or `None` when spans have nowhere to go.
    fn exporter(&self, config: &Config) -> Option<Exporter> {
        let t = &config.spec.telemetry;
        let effective = t.effective(&config.metadata.name, &|k| std::env::var(k).ok());
        let key = ExportKey {
            console: t.console.unwrap_or(self.dev),
            error_log_interval: t.error_log_interval.get(),
            effective,
        };
        if key.effective.endpoint.is_none() && !key.console {
            return None;
        }
        Some(self.exporter.get_or_insert(key, |key, _| {
            for w in &key.effective.warnings {
                tracing::warn!("{w}");
            }
            let e = &key.effective;
            // Credentials in the endpoint URL go as `Authorization: Basic`, as for upstream
            // endpoints (an explicit `authorization` header wins); the URL itself never carries
            // them, so no log shows them.
            let (endpoint, userinfo) = match e.endpoint.as_deref() {
                Some(u) => match attache_config::strip_userinfo(u) {
                    Some((url, userinfo)) => (url, Some(userinfo)),
                    None => (u.to_owned(), None),
                },
                None => (String::new(), None),
            };
            let mut headers = header_lines(&e.headers);
            if let Some(userinfo) = userinfo
                && !headers
                    .iter()
                    .any(|(k, _)| k == http::header::AUTHORIZATION)
                && let Some(v) = crate::upstream::endpoint::basic_authorization(&userinfo)
            {
                headers.push((http::header::AUTHORIZATION, v));
            }
            let settings = ExportSettings {
                endpoint: e.endpoint.as_ref().and_then(|_| endpoint.parse().ok()),
                protocol: match e.protocol {
                    OtlpProtocol::HttpProtobuf => Protocol::HttpProtobuf,
                    OtlpProtocol::Grpc => Protocol::Grpc,
                },
                headers,
                timeout: e.timeout,
                gzip: e.compression == Compression::Gzip,
                max_queue_size: e.max_queue_size,
                max_export_batch_size: e.max_export_batch_size,
                scheduled_delay: e.scheduled_delay,
                error_log_interval: key.error_log_interval,
                console: key.console,
                resource: e.resource.clone(),
            };
            tracing::info!(
                endpoint = if e.endpoint.is_some() { &endpoint } else { "none" },
                protocol = ?e.protocol,
                console = key.console,
                "span export configured"
            );
            Exporter::start(settings, self.metrics.clone())
        }))
    }

    fn access_log(&self, output: LogOutput) -> AccessLog {
        self.access_log.get_or_insert(output, |output, _| {
            AccessLog::start(
                match output {
                    LogOutput::Stdout => access_log::Output::Stdout,
                    LogOutput::Stderr => access_log::Output::Stderr,
                },
                self.metrics.clone(),
            )
        })
    }

    /// At exit, after draining: sends the spans still queued, for at most `timeout`.
    pub async fn flush(&self, timeout: std::time::Duration) {
        if let Some(e) = self.exporter.current()
            && e.flush(timeout).await
            && e.settings.endpoint.is_some()
        {
            tracing::info!("queued spans flushed");
        }
        if let Some(log) = self.access_log.current() {
            log.flush();
        }
    }
}
