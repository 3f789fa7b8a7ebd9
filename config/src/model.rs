//! The declarative model: what an attache config file may say. Doc comments here become the
//! descriptions in `config/schema.json`, so they are written for users.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{ByteSize, Duration, ListenAddr, UpstreamUrl};

pub const API_VERSION: &str = "attache.dev/v1";

/// An attache configuration document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "attache configuration")]
pub struct Config {
    /// Always `attache.dev/v1`.
    pub api_version: ApiVersion,
    /// Always `Sidecar`.
    pub kind: Kind,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "attache.dev/v1")]
    V1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Sidecar,
}

/// Who this sidecar is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The service's name; used in logs and, when nothing more specific is set, as the
    /// telemetry service name.
    #[serde(default = "default_name")]
    pub name: String,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            name: default_name(),
        }
    }
}

fn default_name() -> String {
    "attache".to_owned()
}

/// What attache does.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The sidecar role: a listener in front of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Inbound>,
    /// The ambassador role: listeners the app calls, each bound to one named upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    /// Named upstream services, referred to by `outbound[].upstream`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, Upstream>,
    /// Limits on what clients may send, for every listener.
    #[serde(default)]
    pub limits: Limits,
    /// Default timeouts for calls to the app and to upstreams.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Keep-alive connections attache keeps open to the app and upstreams.
    #[serde(default)]
    pub pool: Pool,
    /// Trace-context propagation (specs/trace-context.md).
    #[serde(default)]
    pub trace: Trace,
    /// Idempotency-Key enforcement (specs/idempotency.md); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<crate::idempotency::Idempotency>,
    /// Feature flags in flagd's format (specs/feature-flags.md); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<crate::flags::Flags>,
    /// Spans and their export, metrics and the access log (specs/trace-context.md §8–§11).
    #[serde(default)]
    pub telemetry: crate::telemetry::Telemetry,
    /// Graceful shutdown on SIGTERM.
    #[serde(default)]
    pub drain: Drain,
    /// The admin listener: health, readiness, metrics and the effective config.
    #[serde(default)]
    pub admin: Admin,
}

/// The inbound (sidecar) listener and the app behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Where attache accepts traffic for the app. HTTP/1.1 and HTTP/2 (h2c) are detected on
    /// the same port.
    #[serde(default = "default_inbound_listen")]
    pub listen: ListenAddr,
    /// The app, e.g. `http://127.0.0.1:8080`.
    pub app: UpstreamUrl,
    /// How attache talks to the app: `http1` (default), or `http2` (h2c with prior knowledge,
    /// for gRPC apps; trailers and `te: trailers` pass through).
    #[serde(default)]
    pub app_protocol: Protocol,
    /// How `X-Forwarded-For`, `-Proto` and `-Host` are written: `append` the client to what
    /// arrived (default), `replace` what arrived, or `off` to leave them untouched.
    #[serde(default)]
    pub forwarded_headers: ForwardedHeaders,
    /// Peers (CIDRs, or single addresses: a load balancer, an ingress) whose
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` are believed under `append`. From anyone
    /// else they are replaced by what attache saw, so a client cannot tell the app it came
    /// over HTTPS or for another host. Empty by default: nobody's are believed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<crate::Cidr>,
    /// Timeouts for calls to the app; unset fields use `spec.timeouts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsOverride>,
    /// Trace formats for this listener; unset fields use `spec.trace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceOverride>,
}

/// Per-listener trace formats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<Vec<TraceFormat>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<Vec<InjectFormat>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<bool>,
}

impl Inbound {
    /// An inbound listener with every other setting at its default.
    pub fn new(app: UpstreamUrl, listen: ListenAddr) -> Self {
        Self {
            listen,
            app,
            app_protocol: Protocol::default(),
            forwarded_headers: ForwardedHeaders::default(),
            trusted_proxies: Vec::new(),
            timeouts: None,
            trace: None,
        }
    }
}

pub const fn default_inbound_listen() -> ListenAddr {
    ListenAddr::new([0, 0, 0, 0], 15006)
}

/// The HTTP version attache speaks to an app or upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c).
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedHeaders {
    #[default]
    Append,
    Replace,
    Off,
}

/// An outbound (ambassador) listener: the app calls `http://<listen>/...` and attache sends
/// the request to `upstream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Where the app reaches this upstream; default `127.0.0.1:15001` (give every further
    /// outbound listener its own port).
    #[serde(default = "default_outbound_listen")]
    pub listen: ListenAddr,
    /// The name of an entry in `spec.upstreams`.
    pub upstream: String,
    /// Trace formats for calls through this listener (say `inject: [tracecontext, b3]` for a
    /// B3-only upstream); unset fields use `spec.trace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceOverride>,
}

/// A named upstream service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The endpoints requests are spread over, e.g. `["http://payments:8080"]`.
    pub endpoints: Vec<UpstreamUrl>,
    /// How requests are spread over the endpoints.
    #[serde(default)]
    pub balance: Balance,
    /// `http1` (default) or `http2` (h2c with prior knowledge, for gRPC services).
    #[serde(default)]
    pub protocol: Protocol,
    /// Timeouts for this upstream; unset fields use `spec.timeouts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsOverride>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
}

/// Limits on client connections and requests. Exceeding one gets a clear 4xx, never a hang.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request header section (names + values + 4 bytes per field) → 431 above it.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request → 431 above it.
    #[serde(default = "default_max_headers")]
    pub max_headers: u32,
    /// Largest request body; `null` (default) for no limit. Above it → 413.
    #[serde(default)]
    pub max_request_body_bytes: Option<ByteSize>,
    /// Time a client has to send a complete request head once it starts one (and to send the
    /// first one after connecting) → 408.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving in either direction for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// The protocols a client may ask to switch to with `Upgrade` (RFC 9110 §7.8), by name
    /// (`websocket`, or `name/version` for one version only). Any other offer is removed
    /// before the request goes on, so the app answers it as a plain request; `h2c` is never
    /// forwarded (RFC 9113 §3.1 removed it) and cannot be listed.
    #[serde(default = "default_upgrade_protocols")]
    pub upgrade_protocols: Vec<String>,
    /// A request header whose name has an underscore (`X_Flag_Tier`): CGI-style apps (WSGI,
    /// Rack, PHP) read it as the same variable as `X-Flag-Tier`, so a client could forge a
    /// header attache removes. `drop` (default, as nginx does) removes it, `reject` answers
    /// 400, `allow` passes it on.
    #[serde(default)]
    pub headers_with_underscores: UnderscoreHeaders,
}

/// What happens to a request header whose name has an underscore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    #[default]
    Drop,
    Reject,
    Allow,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_request_body_bytes: None,
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            upgrade_protocols: default_upgrade_protocols(),
            headers_with_underscores: UnderscoreHeaders::default(),
        }
    }
}

fn default_upgrade_protocols() -> Vec<String> {
    vec!["websocket".to_owned()]
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_max_headers() -> u32 {
    100
}
fn default_header_read_timeout() -> Duration {
    Duration::secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::secs(300)
}

/// Timeouts for calls attache makes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Establishing a TCP connection → 504 when exceeded.
    #[serde(default = "default_connect")]
    pub connect: Duration,
    /// From forwarding a request until the response head arrives → 504 when exceeded.
    /// Response bodies may stream for longer.
    #[serde(default = "default_request")]
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            request: default_request(),
        }
    }
}

fn default_connect() -> Duration {
    Duration::secs(2)
}
fn default_request() -> Duration {
    Duration::secs(60)
}

/// Per-target timeout overrides.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
}

impl Timeouts {
    pub fn with(self, o: Option<TimeoutsOverride>) -> Timeouts {
        let o = o.unwrap_or_default();
        Timeouts {
            connect: o.connect.unwrap_or(self.connect),
            request: o.request.unwrap_or(self.request),
        }
    }
}

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

/// The connection pool to the app and upstreams. Connections are reused across requests;
/// beyond `max_idle_per_endpoint`, connections freed after a burst are closed instead of kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: u32,
    /// An idle pooled connection is closed after this long.
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: default_max_idle(),
            idle_timeout: default_pool_idle(),
        }
    }
}

fn default_max_idle() -> u32 {
    128
}
fn default_pool_idle() -> Duration {
    Duration::secs(60)
}

/// Graceful shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// After SIGTERM, keep accepting for this long while `/ready` already fails, so load
    /// balancers (a Kubernetes Service) stop sending first. Default 0s.
    #[serde(default = "zero")]
    pub delay: Duration,
    /// Then stop accepting and give in-flight requests this long to finish.
    #[serde(default = "default_grace")]
    pub grace_period: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            delay: zero(),
            grace_period: default_grace(),
        }
    }
}

fn zero() -> Duration {
    Duration::secs(0)
}
fn default_grace() -> Duration {
    Duration::secs(30)
}

/// The admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where `/live`, `/ready`, `/metrics` and `/config` are served. Loopback by default;
    /// set `0.0.0.0:15000` for kubelet probes or a Prometheus scraper.
    #[serde(default = "default_admin_listen")]
    pub listen: ListenAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

pub const fn default_admin_listen() -> ListenAddr {
    ListenAddr::new([127, 0, 0, 1], 15000)
}

pub const fn default_outbound_listen() -> ListenAddr {
    ListenAddr::new([127, 0, 0, 1], 15001)
}
