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
        let mut r = Resolve {
            env,
            sources: BTreeMap::new(),
            warnings: Vec::new(),
        };
        let protocol = r.choice(
            "protocol",
            self.otlp.protocol,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
            |v| match v {
                "grpc" => Some(OtlpProtocol::Grpc),
                "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
                _ => None,
            },
            (
                "use grpc or http/protobuf",
                "http/protobuf",
                OtlpProtocol::HttpProtobuf,
            ),
        );
        let endpoint = self.endpoint(&mut r, protocol);
        let headers = match (
            &self.otlp.headers,
            r.var(&[
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ]),
        ) {
            (Some(h), _) => r.from("headers", "file", h.clone()),
            (None, Some((name, v))) => r.from("headers", name, key_values(&v)),
            (None, None) => r.from("headers", "default", BTreeMap::new()),
        };
        let timeout = r.millis(
            "timeout",
            self.otlp.timeout,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
            10_000,
        );
        let scheduled_delay = r.millis(
            "scheduled_delay",
            self.batch.scheduled_delay,
            &["OTEL_BSP_SCHEDULE_DELAY"],
            5_000,
        );
        let compression = r.choice(
            "compression",
            self.otlp.compression,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ],
            |v| match v {
                "gzip" => Some(Compression::Gzip),
                "none" => Some(Compression::None),
                _ => None,
            },
            ("use gzip or none", "none", Compression::None),
        );
        let max_queue_size = r.count(
            "max_queue_size",
            self.batch.max_queue_size,
            "OTEL_BSP_MAX_QUEUE_SIZE",
            2048,
        );
        let max_export_batch_size = r
            .count(
                "max_export_batch_size",
                self.batch.max_export_batch_size,
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                512,
            )
            .min(max_queue_size);
        let resource = self.resource(&mut r, metadata_name);
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
            sources: r.sources,
            warnings: r.warnings,
        }
    }

    /// The OTLP endpoint: the file's, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (a full URL,
    /// used as is), else `OTEL_EXPORTER_OTLP_ENDPOINT` (a base address that gets the signal
    /// path for HTTP). One attache cannot use is dropped with a warning.
    fn endpoint(&self, r: &mut Resolve<'_>, protocol: OtlpProtocol) -> Option<String> {
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
            r.from("endpoint", "file", Some(base(e)))
        } else if let Some(e) = r.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            let e = e.trim().to_owned();
            r.from("endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Some(e))
        } else if let Some(e) = r.env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            r.from(
                "endpoint",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                Some(base(e.trim())),
            )
        } else {
            r.from("endpoint", "default", None)
        };
        endpoint.and_then(|e| match endpoint_problem(&e) {
            None => Some(e),
            Some(why) => {
                r.warnings
                    .push(format!("OTLP endpoint: {why}; spans are not exported"));
                None
            }
        })
    }

    /// The resource: `OTEL_RESOURCE_ATTRIBUTES`, then `resource_from_env`, then the file's
    /// `resource`; `service.name` by its own precedence unless `resource` sets it.
    fn resource(&self, r: &mut Resolve<'_>, metadata_name: &str) -> BTreeMap<String, String> {
        let mut resource = r
            .env("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| key_values(&v))
            .unwrap_or_default();
        for (attr, var_name) in &self.resource_from_env {
            if let Some(v) = r.env(var_name) {
                resource.insert(attr.clone(), v);
            }
        }
        let service_name = if let Some(n) = &self.service_name {
            r.from("service_name", "file", n.clone())
        } else if let Some(n) = r.env("OTEL_SERVICE_NAME") {
            r.from("service_name", "OTEL_SERVICE_NAME", n)
        } else if let Some(n) = resource.get("service.name").cloned() {
            r.from("service_name", "OTEL_RESOURCE_ATTRIBUTES", n)
        } else {
            r.from("service_name", "metadata.name", metadata_name.to_owned())
        };
        resource.insert("service.name".to_owned(), service_name);
        resource.extend(self.resource.iter().map(|(k, v)| (k.clone(), v.clone())));
        resource
    }
}

/// Resolves settings one at a time, each from the file, else the first OpenTelemetry
/// variable set, else its default, noting where each came from (`/config` shows it) and a
/// warning for a variable that is set but unusable.
struct Resolve<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    sources: BTreeMap<&'static str, String>,
    warnings: Vec<String>,
}

impl Resolve<'_> {
    /// A variable, unless unset or blank.
    fn env(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// The first of `names` that is set, with its name, trimmed.
    fn var(&self, names: &[&'static str]) -> Option<(&'static str, String)> {
        names
            .iter()
            .find_map(|n| self.env(n).map(|v| (*n, v.trim().to_owned())))
    }

    /// Notes that `key` came from `source`, and passes its value on.
    fn from<T>(&mut self, key: &'static str, source: &str, value: T) -> T {
        self.sources.insert(key, source.to_owned());
        value
    }

    /// One of a few named values; `fallback` is (what to use, its name, the default).
    fn choice<T: Copy>(
        &mut self,
        key: &'static str,
        file: Option<T>,
        names: &[&'static str],
        parse: impl Fn(&str) -> Option<T>,
        (hint, default_name, default): (&str, &str, T),
    ) -> T {
        if let Some(v) = file {
            return self.from(key, "file", v);
        }
        if let Some((name, v)) = self.var(names) {
            match parse(&v) {
                Some(parsed) => return self.from(key, name, parsed),
                None => self.warnings.push(format!(
                    "{name}={v:?} is not supported ({hint}); using {default_name}"
                )),
            }
        }
        self.from(key, "default", default)
    }

    /// A duration in milliseconds.
    fn millis(
        &mut self,
        key: &'static str,
        file: Option<Duration>,
        names: &[&'static str],
        default: u64,
    ) -> std::time::Duration {
        if let Some(d) = file {
            return self.from(key, "file", d.get());
        }
        if let Some((name, v)) = self.var(names) {
            match v.parse::<u64>() {
                Ok(ms) if ms > 0 => {
                    return self.from(key, name, std::time::Duration::from_millis(ms));
                }
                _ => self.warnings.push(format!(
                    "{name}={v:?} is not a positive number of milliseconds; using {default}ms"
                )),
            }
        }
        self.from(key, "default", std::time::Duration::from_millis(default))
    }

    /// A positive count.
    fn count(
        &mut self,
        key: &'static str,
        file: Option<u32>,
        name: &'static str,
        default: usize,
    ) -> usize {
        if let Some(n) = file {
            return self.from(key, "file", n as usize);
        }
        if let Some(v) = self.env(name) {
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => return self.from(key, name, n),
                _ => self.warnings.push(format!(
                    "{name}={v:?} is not a positive number; using {default}"
                )),
            }
        }
        self.from(key, "default", default)
    }
}

/// Why an OTLP endpoint cannot be used, if it cannot: `http://`, or `https://` (TLS with rustls
/// against the system's roots; `SSL_CERT_FILE` names others).
pub fn endpoint_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("invalid URL {url:?} (expected http://host:port)"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {}
        _ => {
            return Some(format!(
                "invalid URL {url:?} (the scheme must be http or https)"
            ));
        }
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
