//! The declarative model: what an attache config file may say. Doc comments here become the
//! descriptions in `config/schema.json`, so they are written for users.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{ByteSize, Duration, ListenAddr, UpstreamUrl};

mod trace;
pub use trace::*;

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
    /// A forward proxy for apps that set `HTTP_PROXY`/`HTTPS_PROXY`; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_proxy: Option<crate::forward_proxy::ForwardProxy>,
    /// Transparent capture of the app's outbound connections (with `attache init-iptables`);
    /// off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<crate::forward_proxy::Capture>,
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
    /// The Context API (specs/context-api.md): shared state for the app on a listener of its
    /// own; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<crate::context::Context>,
    /// Authorization of inbound requests by the verified peer identity
    /// (specs/authorization.md); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authz: Option<crate::authz::Authz>,
    /// Rate limits, local or shared through Redis; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<crate::ratelimit::RateLimits>,
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
    /// TLS termination: clients speak HTTPS (HTTP/1.1 or HTTP/2 by ALPN) to this listener,
    /// optionally with a client certificate (mutual TLS). Unset: cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<InboundTls>,
}

/// TLS on the inbound listener (rustls: TLS 1.2 and 1.3; ALPN `h2` and `http/1.1`). The
/// files are read again whenever they change (a renewed certificate, a rotated Secret):
/// new connections get the new certificate, open ones keep theirs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InboundTls {
    /// The certificate chain (PEM), the server's own certificate first.
    pub cert_file: String,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Certificate authorities (PEM) whose client certificates are accepted: mutual TLS. The
    /// verified client's identity (subject, URI SANs such as SPIFFE IDs, DNS SANs) reaches
    /// the app in `X-Forwarded-Client-Cert`; a client's own such header is always removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<String>,
    /// With `client_ca_file`: `required` (default; a client without a valid certificate is
    /// refused in the handshake) or `optional` (a client may present none, and then the app
    /// gets no `X-Forwarded-Client-Cert`; one that presents an invalid one is refused).
    #[serde(default)]
    pub client_cert: ClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientCert {
    #[default]
    Required,
    Optional,
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
            tls: None,
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
    /// Resolve endpoint names every this often, and balance over every address they resolve
    /// to (all A and AAAA records: a headless Kubernetes Service's pods, say); a failed
    /// lookup keeps the addresses of the last good one. Unset: a name is one endpoint,
    /// resolved whenever a connection to it is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh: Option<Duration>,
    /// How requests are spread over the endpoints.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance: shard`: where each request's key is, and what a request without one
    /// gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// `http1` (default) or `http2` (h2c with prior knowledge, for gRPC services).
    #[serde(default)]
    pub protocol: Protocol,
    /// Timeouts for this upstream; unset fields use `spec.timeouts`. `request` bounds the
    /// whole call, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsOverride>,
    /// Retries of calls that failed where a retry is safe (see `retry.attempts`). Unset: no
    /// retries (a request no connection took still goes to the next endpoint, once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Passive health: endpoints that keep failing are taken out of the balance for a while.
    #[serde(default)]
    pub ejection: Ejection,
    /// TLS to `https://` endpoints: which certificate authorities to trust, the name to
    /// verify, a client certificate. Unset: the system's roots, each endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// How attache speaks TLS to an upstream's `https://` endpoints (rustls: TLS 1.2 and 1.3, the
/// certificate verified against the roots and the name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// A PEM file of the certificate authorities to trust instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The name sent in SNI and verified in the certificate; default: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM) for mutual TLS, with `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<String>,
}

/// An endpoint that fails `consecutive_failures` times in a row (no connection, a reset before
/// the response, or a 5xx) is taken out of the balance for `base_time`, doubled on each later
/// ejection up to `max_time`, then comes back. At most `max_ejected_percent` of the endpoints
/// are out at once, so an upstream with one endpoint never loses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ejection {
    /// 0 turns ejection off.
    #[serde(default = "default_eject_after")]
    pub consecutive_failures: u32,
    #[serde(default = "default_eject_base")]
    pub base_time: Duration,
    #[serde(default = "default_eject_max")]
    pub max_time: Duration,
    #[serde(default = "default_eject_percent")]
    pub max_ejected_percent: u32,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_failures: default_eject_after(),
            base_time: default_eject_base(),
            max_time: default_eject_max(),
            max_ejected_percent: default_eject_percent(),
        }
    }
}

fn default_eject_after() -> u32 {
    5
}
fn default_eject_base() -> Duration {
    Duration::secs(10)
}
fn default_eject_max() -> Duration {
    Duration::secs(300)
}
fn default_eject_percent() -> u32 {
    50
}

/// When and how often a call to an upstream is tried again. Only requests that may run twice
/// are: idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) and requests that carry an
/// `Idempotency-Key`, with a body of at most `max_body_bytes` (held for the retry). They are
/// retried after a connection that could not be made, a connection reset before the response,
/// a try that ran past `per_try_timeout`, or a response with one of `statuses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries in all, the first included (1 to 10); 1 turns retries off.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// The first wait before a retry; each next one doubles, up to `max_backoff`. Each wait is
    /// drawn at random below its bound (full jitter), so retries from many clients spread out.
    #[serde(default = "default_retry_backoff")]
    pub backoff: Duration,
    #[serde(default = "default_retry_max_backoff")]
    pub max_backoff: Duration,
    /// Response statuses that are retried (their `Retry-After`, in seconds, is waited out when
    /// it fits in the call's time).
    #[serde(default = "default_retry_statuses")]
    pub statuses: Vec<u16>,
    /// A bound on each try; unset: each try may use what is left of `timeouts.request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Request bodies up to this size are held so that they can be sent again; a larger (or
    /// unknown-length) body is sent once.
    #[serde(default = "default_retry_max_body")]
    pub max_body_bytes: ByteSize,
    /// How many retries there may be, so that retries never multiply an outage.
    #[serde(default)]
    pub budget: RetryBudget,
    /// `generate`: a POST or PATCH without an `Idempotency-Key` gets a fresh one (a UUIDv7)
    /// before its first try, and is retried like an idempotent request. Meant for callees
    /// behind an attache with idempotency on: a repeat whose first try ran there is answered
    /// from its record instead of running twice. `off` (default): such requests go once.
    #[serde(default)]
    pub idempotency_key: KeyGeneration,
}

/// Whether attache gives outbound POST and PATCH requests an `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyGeneration {
    #[default]
    Off,
    Generate,
}

/// Retries over the last 10 seconds may be at most `ratio` of the requests plus
/// `min_per_second` a second; past that a failed try is answered as it is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min(),
        }
    }
}

fn default_retry_attempts() -> u32 {
    3
}
fn default_retry_backoff() -> Duration {
    Duration::millis(25)
}
fn default_retry_max_backoff() -> Duration {
    Duration::millis(250)
}
fn default_retry_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_retry_max_body() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_min() -> u32 {
    10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The sharded ambassador: each request goes to the endpoint its key hashes to
    /// (rendezvous hashing over the endpoints' addresses), the same endpoint for the same key
    /// while the set is stable; adding one endpoint to n moves about 1/(n+1) of the keys, all
    /// to the new one. Needs `shard`.
    Shard,
    /// Power of two choices over a peak-EWMA of latency and requests in flight: each request
    /// compares two endpoints drawn at random and takes the cheaper, so slow endpoints get
    /// few requests and are tried again as their estimate decays.
    P2cEwma,
}

/// Where a request's shard key is: exactly one of `path`, `header`, `baggage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// A regular expression over the request path whose first capture group is the key, e.g.
    /// `^/users/([^/]+)/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A request header whose value is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A `baggage` member whose value is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
    /// What a request without a key gets: `round_robin` (default) or `reject` (400).
    #[serde(default)]
    pub fallback: ShardFallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShardFallback {
    #[default]
    RoundRobin,
    Reject,
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
