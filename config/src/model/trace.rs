//! `spec.trace`: propagation formats, sampling, baggage limits, context mapping and
//! restoration (specs/trace-context.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// Trace and request-context propagation on both legs. attache continues a valid incoming
/// context (or starts a trace), and hands the app and upstreams one set of trace headers whose
/// parent is attache's own span on that leg.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// `false` leaves every trace header untouched.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Formats read, in precedence order: the first valid context wins.
    #[serde(default = "default_extract")]
    pub extract: Vec<TraceFormat>,
    /// Formats written to the app and upstreams; `baggage` validates and limits baggage.
    #[serde(default = "default_inject")]
    pub inject: Vec<InjectFormat>,
    /// Also write, with attache's span as parent, the formats that arrived valid.
    #[serde(default = "yes")]
    pub mirror: bool,
    /// Longest `tracestate` passed whole; beyond it whole members are dropped. At least 512.
    #[serde(default = "default_tracestate_max_len")]
    pub tracestate_max_len: u32,
    #[serde(default)]
    pub request_id: RequestId,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub baggage: BaggageLimits,
    /// Mappings between plain request headers and baggage members (needs `baggage` in
    /// `inject`).
    #[serde(default)]
    pub context: ContextMapping,
    #[serde(default)]
    pub restore: Restore,
}

/// Context restoration: the app need only forward `traceparent` on its outbound calls; attache
/// adds back what the inbound request carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Headers recorded on the inbound leg and restored on outbound calls of the same trace;
    /// a trailing `*` matches a prefix (`x-b3-*`). List only headers meant to travel.
    #[serde(default = "default_restore_headers")]
    pub headers: Vec<String>,
    /// Restore baggage members the app's call lacks.
    #[serde(default = "yes")]
    pub baggage: bool,
    /// For outbound calls without a trace header: `none` (a new trace, nothing restored) or
    /// `single_in_flight` (for apps serving one request at a time: attributed to the inbound
    /// request in flight when there is exactly one).
    #[serde(default)]
    pub correlation: Correlation,
    #[serde(default = "default_restore_ttl")]
    pub ttl: Duration,
    #[serde(default = "default_restore_entries")]
    pub max_entries: u32,
    #[serde(default = "default_restore_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "default_restore_record")]
    pub max_record_bytes: ByteSize,
}

impl Default for Restore {
    fn default() -> Self {
        Self {
            enabled: true,
            headers: default_restore_headers(),
            baggage: true,
            correlation: Correlation::None,
            ttl: default_restore_ttl(),
            max_entries: default_restore_entries(),
            max_bytes: default_restore_bytes(),
            max_record_bytes: default_restore_record(),
        }
    }
}

fn default_restore_headers() -> Vec<String> {
    vec!["x-request-id".to_owned()]
}
fn default_restore_ttl() -> Duration {
    Duration::secs(120)
}
fn default_restore_entries() -> u32 {
    10_000
}
fn default_restore_bytes() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_restore_record() -> ByteSize {
    ByteSize(16 << 10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Correlation {
    #[default]
    None,
    /// Parent the call to the one inbound request in flight, if exactly one is.
    SingleInFlight,
}

/// Mappings between request headers and baggage members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextMapping {
    /// Both legs: a request with `header` and no member `key` gains `key=<value>`,
    /// percent-encoded. An existing member wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_baggage: Vec<HeaderKey>,
    /// Inbound: a request with member `key` and no `header` gains the header, set to the
    /// percent-decoded value. An existing header wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_baggage: Vec<HeaderKey>,
}

/// A request header and a baggage member key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderKey {
    pub header: String,
    pub key: String,
}

impl Default for Trace {
    fn default() -> Self {
        Self {
            enabled: true,
            extract: default_extract(),
            inject: default_inject(),
            mirror: true,
            tracestate_max_len: default_tracestate_max_len(),
            request_id: RequestId::default(),
            sampling: Sampling::default(),
            baggage: BaggageLimits::default(),
            context: ContextMapping::default(),
            restore: Restore::default(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_extract() -> Vec<TraceFormat> {
    vec![
        TraceFormat::Tracecontext,
        TraceFormat::B3,
        TraceFormat::B3multi,
        TraceFormat::Jaeger,
    ]
}
fn default_inject() -> Vec<InjectFormat> {
    vec![InjectFormat::Tracecontext, InjectFormat::Baggage]
}
fn default_tracestate_max_len() -> u32 {
    4096
}

/// A trace header format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// W3C `traceparent` and `tracestate`.
    Tracecontext,
    /// B3 single header `b3`.
    B3,
    /// B3 multi-header `x-b3-*`.
    B3multi,
    /// Jaeger `uber-trace-id`.
    Jaeger,
}

/// A format attache writes: a trace format, or `baggage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InjectFormat {
    Tracecontext,
    B3,
    B3multi,
    Jaeger,
    /// W3C `baggage`: validated, limited, and forwarded.
    Baggage,
}

/// The request id header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestId {
    #[serde(default = "default_request_id_header")]
    pub header: String,
    /// Add a lowercase UUID v4 to inbound requests that lack one.
    #[serde(default = "yes")]
    pub generate: bool,
}

impl Default for RequestId {
    fn default() -> Self {
        Self {
            header: default_request_id_header(),
            generate: true,
        }
    }
}

fn default_request_id_header() -> String {
    "x-request-id".to_owned()
}

/// Parent-based sampling: a caller's decision is followed; new traces and deferred decisions
/// are sampled at `ratio`, derived from the trace id so every attache agrees.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Set here, it beats `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`; unset, those decide,
    /// else 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

/// The sampling attache applies, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EffectiveSampling {
    pub ratio: f64,
    /// Follow a caller's sampling decision (`parentbased_*` and attache's own default).
    pub parent_based: bool,
    /// `file`, `OTEL_TRACES_SAMPLER` or `default`.
    pub source: &'static str,
    /// Set when an environment value was not understood and the default was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl Sampling {
    /// Resolves the sampler: the file's `ratio`, else the standard OpenTelemetry variables
    /// (`always_on`, `always_off`, `traceidratio` and their `parentbased_` forms, with
    /// `OTEL_TRACES_SAMPLER_ARG`; the argument alone means `parentbased_traceidratio`), else
    /// parent-based with ratio 1.0. Values attache does not understand warn and fall back.
    pub fn effective(&self, env: &dyn Fn(&str) -> Option<String>) -> EffectiveSampling {
        let default = |warning| EffectiveSampling {
            ratio: 1.0,
            parent_based: true,
            source: "default",
            warning,
        };
        if let Some(ratio) = self.ratio {
            return EffectiveSampling {
                ratio,
                parent_based: true,
                source: "file",
                warning: None,
            };
        }
        let sampler = env("OTEL_TRACES_SAMPLER").map(|s| s.trim().to_ascii_lowercase());
        let arg = env("OTEL_TRACES_SAMPLER_ARG");
        let sampler = match (sampler, &arg) {
            (None, None) => return default(None),
            (None, Some(_)) => "parentbased_traceidratio".to_owned(),
            (Some(s), _) => s,
        };
        let ratio_arg = || match arg.as_deref().map(str::trim).map(str::parse::<f64>) {
            Some(Ok(r)) if (0.0..=1.0).contains(&r) => Ok(r),
            None => Ok(1.0),
            Some(_) => Err(format!(
                "OTEL_TRACES_SAMPLER_ARG={:?} is not a ratio between 0 and 1; using 1.0",
                arg.as_deref().unwrap_or_default()
            )),
        };
        let (base, parent_based) = match sampler.strip_prefix("parentbased_") {
            Some(base) => (base, true),
            None => (sampler.as_str(), false),
        };
        let (ratio, warning) = match base {
            "always_on" => (1.0, None),
            "always_off" => (0.0, None),
            "traceidratio" => match ratio_arg() {
                Ok(r) => (r, None),
                Err(w) => (1.0, Some(w)),
            },
            _ => {
                return default(Some(format!(
                    "OTEL_TRACES_SAMPLER={sampler:?} is not supported; using parent-based sampling at 1.0"
                )));
            }
        };
        EffectiveSampling {
            ratio,
            parent_based,
            source: "OTEL_TRACES_SAMPLER",
            warning,
        }
    }
}

/// Limits on `baggage`: at least the W3C minimums of 64 members and 8192 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BaggageLimits {
    #[serde(default = "default_baggage_members")]
    pub max_members: u32,
    #[serde(default = "default_baggage_bytes")]
    pub max_bytes: u32,
}

impl Default for BaggageLimits {
    fn default() -> Self {
        Self {
            max_members: default_baggage_members(),
            max_bytes: default_baggage_bytes(),
        }
    }
}

fn default_baggage_members() -> u32 {
    64
}
fn default_baggage_bytes() -> u32 {
    8192
}
