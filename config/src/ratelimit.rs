//! `spec.rate_limits`: limits on requests, each a rate with a burst (GCRA), kept per key (the
//! whole route, the client, a header, a baggage member, the mTLS peer), local to the process or
//! shared by every replica through Redis.
//!
//! ```yaml
//! rate_limits:
//!   store: redis://redis:6379        # for `shared` limits
//!   limits:
//!     - name: per-tenant
//!       rate: 100/s
//!       burst: 200
//!       key: { header: x-tenant-id }
//!       match: { methods: [POST], path_prefix: /api/ }
//!       shared: true
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{Duration, Rate};

/// Rate limits, and where shared ones keep their state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Where `shared` limits live: a Redis URL, in the forms `spec.idempotency.store` takes
    /// (`redis://`, `rediss://`, `redis+cluster://h1:p,h2:p`,
    /// `redis+sentinel://h1:p,h2:p/<service>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The most a shared check may add to a request: past it, the limit's `on_store_error`
    /// decides.
    #[serde(default = "default_store_timeout")]
    pub store_timeout: Duration,
    /// Prefix of the limits' keys in Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The limits, all checked: a request must pass every one that matches it.
    #[serde(default)]
    pub limits: Vec<RateLimit>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            store: None,
            store_timeout: default_store_timeout(),
            key_prefix: default_key_prefix(),
            limits: Vec::new(),
        }
    }
}

fn default_store_timeout() -> Duration {
    Duration::millis(50)
}

fn default_key_prefix() -> String {
    "attache:rl".into()
}

/// One limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Names the limit in metrics, spans, the access log and the `RateLimit-Policy` header.
    pub name: String,
    /// The sustained rate: `100/s`, `6000/m`, `5/10s`.
    pub rate: Rate,
    /// Requests allowed at once, before the rate paces them (default: the rate's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What the limit counts per: `none` (the whole route, the default), `client_address`,
    /// `peer_identity` (the client certificate's SPIFFE ID, or its subject), `{ header: name }`
    /// or `{ baggage: member }`.
    #[serde(default)]
    pub key: LimitKey,
    /// Requests without the key (no such header or member): `share` one bucket (default, so
    /// leaving the header out escapes nothing), or `skip` the limit.
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Which requests the limit applies to.
    #[serde(default, rename = "match")]
    pub matches: LimitMatch,
    /// One limit for every replica, kept in `spec.rate_limits.store` (one Redis round trip per
    /// request); otherwise each process limits on its own.
    #[serde(default)]
    pub shared: bool,
    /// When the shared store fails or is slower than `store_timeout`: `allow` the request
    /// (default, fail open) or `deny` it (429).
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Keys tracked at once (local limits); past it, new keys share one overflow bucket,
    /// counted in `attache_ratelimit_overflow_total`. Keys idle long enough to have their full
    /// burst back are dropped.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    /// Send `RateLimit-Policy` and `RateLimit` on allowed responses too (they are always on
    /// a 429).
    #[serde(default)]
    pub headers_on_allowed: bool,
}

fn default_max_keys() -> u32 {
    100_000
}

impl RateLimit {
    /// A local limit on every inbound request, with every other field at its default.
    pub fn new(name: impl Into<String>, rate: Rate) -> Self {
        Self {
            name: name.into(),
            rate,
            burst: None,
            key: LimitKey::None,
            missing_key: MissingKey::Share,
            matches: LimitMatch::default(),
            shared: false,
            on_store_error: OnStoreError::Allow,
            max_keys: default_max_keys(),
            headers_on_allowed: false,
        }
    }

    /// The burst: `burst`, or the rate's count.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate.count).max(1)
    }
}

/// What a limit counts per.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LimitKey {
    /// One bucket for every matching request.
    #[default]
    None,
    /// The client's address: the peer's, or with `spec.inbound.trusted_proxies`, the
    /// `X-Forwarded-For` hop nearest to attache that is not a trusted proxy.
    ClientAddress,
    /// The verified client certificate's identity (its SPIFFE ID, else its subject), on an
    /// mTLS listener.
    PeerIdentity,
    /// A request header's value (`x-api-key`, `x-tenant-id`).
    Header(String),
    /// A W3C baggage member's value.
    Baggage(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    #[default]
    Share,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}

/// Which requests a limit applies to; every field set must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitMatch {
    /// `inbound` (requests to the app, the default) or `outbound` (the app's calls).
    #[serde(default)]
    pub listener: LimitListener,
    /// Outbound only: calls on the ambassador ports bound to this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Methods (any when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A regular expression the whole path must match (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitListener {
    #[default]
    Inbound,
    Outbound,
}
