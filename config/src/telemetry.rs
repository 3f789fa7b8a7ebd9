//! `spec.telemetry`: where spans go, what they say about the service, and the access log
//! (specs/trace-context.md §8–§11).
//!
//! Keys that have a standard OpenTelemetry variable are optional here: set in the file they
//! win, unset the variable decides, else the default. [`Telemetry::effective`] resolves them
//! once and says where each value came from, for `/config`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::Duration;

/// Spans, their export over OTLP, metrics and the access log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// `service.name` of exported spans. Unset: `OTEL_SERVICE_NAME`, else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, else `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Resource attributes; they override everything else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, String>,
    /// Resource attributes read from environment variables (attribute → variable), e.g. the
    /// pod name the Kubernetes downward API provides. Unset variables are skipped.
    #[serde(default = "default_resource_from_env")]
    pub resource_from_env: BTreeMap<String, String>,
    #[serde(default)]
    pub otlp: Otlp,
    #[serde(default)]
    pub batch: Batch,
    /// After draining, how long attache spends sending the spans still queued.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
    /// Export errors are logged at most once per interval (they are always counted).
    #[serde(default = "default_error_log_interval")]
    pub error_log_interval: Duration,
    /// Print finished spans as JSON lines on stderr. Unset: on in `attache dev`, else off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<bool>,
    /// How a SERVER span records the query string: `full`, `redacted` (values of signature
    /// keys and `redact_query_keys` become `REDACTED`) or `omit`.
    #[serde(default)]
    pub url_query: UrlQuery,
    /// Query keys whose values are redacted, besides `AWSAccessKeyId`, `Signature`, `sig`
    /// and `X-Goog-Signature`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_query_keys: Vec<String>,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub access_log: AccessLog,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            service_name: None,
            resource: BTreeMap::new(),
            resource_from_env: default_resource_from_env(),
            otlp: Otlp::default(),
            batch: Batch::default(),
            shutdown_timeout: default_shutdown_timeout(),
            error_log_interval: default_error_log_interval(),
            console: None,
            url_query: UrlQuery::default(),
            redact_query_keys: Vec::new(),
            metrics: MetricsSettings::default(),
            access_log: AccessLog::default(),
        }
    }
}

/// The OTLP trace exporter. With no endpoint (here or in the environment) nothing is
/// exported.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// The collector, e.g. `http://otel-collector:4318` (HTTP, `/v1/traces` is added to a
    /// bare address) or `http://otel-collector:4317` (gRPC). Unset:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`. Unset: `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Headers sent with every export, e.g. an API key. Unset:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// How long one batch may take, retries included (default 10s). Unset:
    /// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// `none` (default) or `gzip`. Unset: `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

/// The span queue. Ending a span never waits: when the queue is full the span is dropped
/// and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Spans waiting for export (default 2048; `OTEL_BSP_MAX_QUEUE_SIZE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_size: Option<u32>,
    /// Spans per export request (default 512; `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_export_batch_size: Option<u32>,
    /// A partial batch is sent after this long (default 5s; `OTEL_BSP_SCHEDULE_DELAY` in
    /// milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_delay: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UrlQuery {
    Full,
    #[default]
    Redacted,
    Omit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve Prometheus metrics at the admin port's `/metrics`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// One JSON line per request, written when its response ends, off the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `stdout` (default) or `stderr`.
    #[serde(default)]
    pub output: LogOutput,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            output: LogOutput::Stdout,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    #[default]
    Stdout,
    Stderr,
}

fn yes() -> bool {
    true
}
fn default_resource_from_env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("k8s.pod.name".to_owned(), "POD_NAME".to_owned()),
        ("k8s.namespace.name".to_owned(), "POD_NAMESPACE".to_owned()),
    ])
}
fn default_shutdown_timeout() -> Duration {
    Duration::secs(5)
}
fn default_error_log_interval() -> Duration {
    Duration::secs(60)
}

/// The exporter settings attache runs with, every optional key resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EffectiveTelemetry {
    /// The full URL spans are sent to; `None`: no export.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// Header values are secrets; [`EffectiveTelemetry::redacted`] hides them.
    pub headers: BTreeMap<String, String>,
    #[serde(with = "duration_str")]
    pub timeout: std::time::Duration,
    pub compression: Compression,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    #[serde(with = "duration_str")]
    pub scheduled_delay: std::time::Duration,
    /// The resource of every span, `service.name` included.
    pub resource: BTreeMap<String, String>,
    /// Where each resolved key came from: `file`, the variable's name, or `default`.
    pub sources: BTreeMap<&'static str, String>,
    /// Environment values that were not understood (the default was used instead).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

mod duration_str {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }
}

impl EffectiveTelemetry {
    /// For `/config`: header values replaced, and credentials in the endpoint URL.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for v in c.headers.values_mut() {
            *v = "<redacted>".to_owned();
        }
        if let Some(shown) = c.endpoint.as_deref().and_then(crate::redact_url) {
            c.endpoint = Some(shown);
        }
        c
    }
}

impl Telemetry {
    /// Resolves every optional key: the file, else the standard OpenTelemetry variable (each
    /// `_TRACES_` variant before its generic one), else the default.
    pub fn effective(
        &self,
        metadata_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> EffectiveTelemetry {
        let mut sources = BTreeMap::new();
        let mut warnings = Vec::new();
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        // The first variable set, and its name.
        let var = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| env(n).map(|v| (*n, v.trim().to_owned())))
        };

        let protocol = match (
            self.otlp.protocol,
            var(&[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]),
        ) {
            (Some(p), _) => {
                sources.insert("protocol", "file".to_owned());
                p
            }
            (None, Some((name, v))) => match v.as_str() {
                "grpc" => {
                    sources.insert("protocol", name.to_owned());
                    OtlpProtocol::Grpc
                }
                "http/protobuf" => {
                    sources.insert("protocol", name.to_owned());
                    OtlpProtocol::HttpProtobuf
                }
                other => {
                    warnings.push(format!(
                        "{name}={other:?} is not supported (use grpc or http/protobuf); using http/protobuf"
                    ));
                    sources.insert("protocol", "default".to_owned());
                    OtlpProtocol::HttpProtobuf
                }
            },
            (None, None) => {
                sources.insert("protocol", "default".to_owned());
                OtlpProtocol::HttpProtobuf
            }
        };

        // A base address gets the signal path for HTTP; a full URL is used as is.
        let base = |url: &str| match protocol {
            OtlpProtocol::HttpProtobuf => {
                let trimmed = url.trim_end_matches('/');
                let has_path = trimmed
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.contains('/'));
                if has_path {
                    url.to_owned()
                } else {
                    format!("{trimmed}/v1/traces")
                }
            }
            OtlpProtocol::Grpc => url.to_owned(),
        };
        let endpoint = if let Some(e) = &self.otlp.endpoint {
            sources.insert("endpoint", "file".to_owned());
            Some(base(e))
        } else if let Some(e) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            sources.insert("endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_owned());
            Some(e.trim().to_owned())
        } else if let Some(e) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            sources.insert("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned());
            Some(base(e.trim()))
        } else {
            sources.insert("endpoint", "default".to_owned());
            None
        };

        let endpoint = endpoint.and_then(|e| match endpoint_problem(&e) {
            None => Some(e),
            Some(why) => {
                warnings.push(format!("OTLP endpoint: {why}; spans are not exported"));
                None
            }
        });

        let headers = match (
            &self.otlp.headers,
            var(&[
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ]),
        ) {
            (Some(h), _) => {
                sources.insert("headers", "file".to_owned());
                h.clone()
            }
            (None, Some((name, v))) => {
                sources.insert("headers", name.to_owned());
                key_values(&v)
            }
            (None, None) => {
                sources.insert("headers", "default".to_owned());
                BTreeMap::new()
            }
        };

        let millis = |names: &[&'static str],
                      key: &'static str,
                      file: Option<Duration>,
                      default: u64,
                      sources: &mut BTreeMap<&'static str, String>,
                      warnings: &mut Vec<String>| {
            if let Some(d) = file {
                sources.insert(key, "file".to_owned());
                return d.get();
            }
            if let Some((name, v)) = var(names) {
                match v.parse::<u64>() {
                    Ok(ms) if ms > 0 => {
                        sources.insert(key, name.to_owned());
                        return std::time::Duration::from_millis(ms);
                    }
                    _ => warnings.push(format!(
                        "{name}={v:?} is not a positive number of milliseconds; using {default}ms"
                    )),
                }
            }
            sources.insert(key, "default".to_owned());
            std::time::Duration::from_millis(default)
        };
        let timeout = millis(
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
            "timeout",
            self.otlp.timeout,
            10_000,
            &mut sources,
            &mut warnings,
        );
        let scheduled_delay = millis(
            &["OTEL_BSP_SCHEDULE_DELAY"],
            "scheduled_delay",
            self.batch.scheduled_delay,
            5_000,
            &mut sources,
            &mut warnings,
        );

        let compression = match (
            self.otlp.compression,
            var(&[
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ]),
        ) {
            (Some(c), _) => {
                sources.insert("compression", "file".to_owned());
                c
            }
            (None, Some((name, v))) => match v.as_str() {
                "gzip" => {
                    sources.insert("compression", name.to_owned());
                    Compression::Gzip
                }
                "none" => {
                    sources.insert("compression", name.to_owned());
                    Compression::None
                }
                other => {
                    warnings.push(format!(
                        "{name}={other:?} is not supported (use gzip or none); using none"
                    ));
                    sources.insert("compression", "default".to_owned());
                    Compression::None
                }
            },
            (None, None) => {
                sources.insert("compression", "default".to_owned());
                Compression::None
            }
        };

        let count = |name: &'static str,
                     key: &'static str,
                     file: Option<u32>,
                     default: usize,
                     sources: &mut BTreeMap<&'static str, String>,
                     warnings: &mut Vec<String>| {
            if let Some(n) = file {
                sources.insert(key, "file".to_owned());
                return n as usize;
            }
            if let Some(v) = env(name) {
                match v.trim().parse::<usize>() {
                    Ok(n) if n > 0 => {
                        sources.insert(key, name.to_owned());
                        return n;
                    }
                    _ => warnings.push(format!(
                        "{name}={v:?} is not a positive number; using {default}"
                    )),
                }
            }
            sources.insert(key, "default".to_owned());
            default
        };
        let max_queue_size = count(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "max_queue_size",
            self.batch.max_queue_size,
            2048,
            &mut sources,
            &mut warnings,
        );
        let max_export_batch_size = count(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            "max_export_batch_size",
            self.batch.max_export_batch_size,
            512,
            &mut sources,
            &mut warnings,
        )
        .min(max_queue_size);

        // Resource: OTEL_RESOURCE_ATTRIBUTES, then resource_from_env, then the file's
        // `resource`; service.name by its own precedence unless `resource` sets it.
        let mut resource = env("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| key_values(&v))
            .unwrap_or_default();
        for (attr, var_name) in &self.resource_from_env {
            if let Some(v) = env(var_name) {
                resource.insert(attr.clone(), v);
            }
        }
        let service_name = if let Some(n) = &self.service_name {
            sources.insert("service_name", "file".to_owned());
            n.clone()
        } else if let Some(n) = env("OTEL_SERVICE_NAME") {
            sources.insert("service_name", "OTEL_SERVICE_NAME".to_owned());
            n
        } else if let Some(n) = resource.get("service.name") {
            sources.insert("service_name", "OTEL_RESOURCE_ATTRIBUTES".to_owned());
            n.clone()
        } else {
            sources.insert("service_name", "metadata.name".to_owned());
            metadata_name.to_owned()
        };
        resource.insert("service.name".to_owned(), service_name);
        resource.extend(self.resource.iter().map(|(k, v)| (k.clone(), v.clone())));

        EffectiveTelemetry {
            endpoint,
            protocol,
            headers,
            timeout,
            compression,
            max_queue_size,
            max_export_batch_size,
            scheduled_delay,
            resource,
            sources,
            warnings,
        }
    }
}

/// Why an OTLP endpoint cannot be used, if it cannot: attache speaks plain `http://` to the
/// collector (a node-local or in-cluster collector, or one behind a TLS-terminating sidecar).
pub fn endpoint_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("invalid URL {url:?} (expected http://host:port)"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => {
            return Some(format!(
                "invalid URL {url:?} (https collectors are not supported yet; use http)"
            ));
        }
        _ => return Some(format!("invalid URL {url:?} (the scheme must be http)")),
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty()
        || url
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Some(format!("invalid URL {url:?} (expected http://host:port)"));
    }
    None
}

/// `k1=v1,k2=v2` with percent-encoded values, as in `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS`. Malformed members are skipped.
fn key_values(s: &str) -> BTreeMap<String, String> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| {
                (
                    k.to_owned(),
                    percent_encoding::percent_decode_str(v.trim())
                        .decode_utf8_lossy()
                        .into_owned(),
                )
            })
        })
        .collect()
}
