//! `spec.idempotency` (specs/idempotency.md §1): which requests carry an `Idempotency-Key` that
//! attache enforces, and where records live.
//!
//! Every policy key (from `header` to `replay_headers`) may be set at the top, for every route,
//! and overridden per route; [`Idempotency::policies`] resolves each route's effective policy,
//! which `/config` shows so operators can publish it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{ByteSize, Duration};

/// Declares a struct with the given fields plus every policy key, each optional.
macro_rules! with_policy_keys {
    (
        $(#[$attr:meta])*
        pub struct $name:ident { $($(#[$fattr:meta])* pub $field:ident : $ty:ty,)* }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($(#[$fattr])* pub $field: $ty,)*
            /// The key header (default `Idempotency-Key`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub header: Option<String>,
            /// Other header names read as the key; one field line in all is allowed.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub header_aliases: Option<Vec<String>>,
            /// Accept only RFC 8941 sf-strings (`"abc"`), as the draft says; most clients send
            /// bare tokens (default false).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub strict_sf: Option<bool>,
            /// Methods enforced (default `[POST, PATCH]`); never safe methods or CONNECT.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub methods: Option<Vec<String>>,
            /// Refuse requests without a key (default false: they pass unrecorded).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub required: Option<bool>,
            /// Keyed request bodies are buffered up to this size (default 1MiB); larger: 413.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub max_request_bytes: Option<ByteSize>,
            /// Responses up to this size are stored for replay (default 1MiB); larger ones
            /// leave a tombstone.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub max_response_bytes: Option<ByteSize>,
            /// How long a stored response is replayed (default 24h).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub retention: Option<Duration>,
            /// Added to the upstream timeout to make the in-flight lease (default 5s).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub lease_grace: Option<Duration>,
            /// Status when a key is reused with another request: 422 (default) or 400.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub mismatch_status: Option<u16>,
            /// 4xx statuses that release the key instead of storing the response (default
            /// 401, 403, 407, 408, 425, 429).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub release_statuses: Option<Vec<u16>>,
            /// Store and replay 5xx responses (default false: they release the key).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub store_5xx: Option<bool>,
            /// A duplicate of a request in flight waits up to this long for its result
            /// instead of getting 409 at once (default 0s: off; at most 60s).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub in_flight_wait: Option<Duration>,
            /// When the store fails, forward unrecorded (with `Idempotency-Enforced: false`)
            /// instead of answering 503 (default false).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub fail_open: Option<bool>,
            /// The `Authorization` value is part of the scope: one key from two principals
            /// names two records (default true).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope_authorization: Option<bool>,
            /// The credentials apps authenticate with besides `Authorization` are part of the
            /// scope: `Cookie`, `X-API-Key`, `Api-Key` and `X-Auth-Token` (default true), so
            /// that with cookie or API-key authentication one user's key never replays another
            /// user's response. Turn it off when a trusted layer in front sets a principal
            /// header (then name it in `scope_headers`) and cookies change between retries.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope_credentials: Option<bool>,
            /// Headers that are part of the scope, e.g. `x-tenant-id`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope_headers: Option<Vec<String>>,
            /// Method, authority and path are part of the scope (default false).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope_by_route: Option<bool>,
            /// Headers that are part of the request fingerprint.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub fingerprint_headers: Option<Vec<String>>,
            /// `raw` (default) or `json_canonical` (JSON bodies compared with sorted keys).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub fingerprint_body: Option<FingerprintBody>,
            /// Response headers replayed besides the standard allow-list.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub replay_headers: Option<Vec<String>>,
        }
    };
}

with_policy_keys! {
    /// Idempotency-Key enforcement. Present, it is on: keyed POST and PATCH requests run in the
    /// app at most once and their retries get the stored response.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Idempotency {
        /// `memory` (one process only; for development) or a Redis URL: `redis://host:6379`
        /// (`rediss://` for TLS, `redis+unix:///path`), Cluster seeds
        /// `redis+cluster://host1:6379,host2:6379`, or Sentinels
        /// `redis+sentinel://host1:26379,host2:26379/<service>[/db]`.
        #[serde(default = "default_store")]
        pub store: String,
        /// A claim slower than this fails (503, or forwarded with `fail_open`).
        #[serde(default = "default_store_timeout")]
        pub store_timeout: Duration,
        /// Prefix of record keys in Redis.
        #[serde(default = "default_key_prefix")]
        pub key_prefix: String,
        /// At startup, Redis with an eviction policy other than `noeviction`: `warn`,
        /// `refuse` (do not start) or `off`.
        #[serde(default)]
        pub eviction_check: EvictionCheck,
        /// The memory store refuses new claims beyond this many records.
        #[serde(default = "default_memory_max_records")]
        pub memory_max_records: u32,
        /// The memory store holds at most this much (responses, headers and bookkeeping):
        /// past it, new claims are refused and a response that would not fit is kept as a
        /// tombstone (status and headers).
        #[serde(default = "default_memory_max_bytes")]
        pub memory_max_bytes: ByteSize,
        /// Key for hashing scopes and keys (HMAC-SHA-256); replicas sharing Redis must share
        /// it. Required with Redis; the memory store picks a random one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scope_secret: Option<String>,
        /// Sent as `Link: <url>; rel="describedby"` on idempotency errors.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub policy_url: Option<String>,
        /// Routes enforced, first match wins; others are not enforced. None: every path.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub routes: Vec<IdempotencyRoute>,
    }
}

with_policy_keys! {
    /// A route with its own policy; unset keys come from `spec.idempotency`.
    #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct IdempotencyRoute {
        /// Names the route in metrics, spans and `/config`.
        pub name: String,
        #[serde(rename = "match")]
        pub matches: RouteMatch,
        /// Identify requests by CloudEvents `source` and `id` instead of a key header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cloudevents: Option<CloudEvents>,
    }
}

/// Which requests a route covers: an exact `path` or a `path_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

impl RouteMatch {
    pub fn matches(&self, path: &str) -> bool {
        self.path.as_deref().is_none_or(|p| p == path)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudEvents {
    /// Compare the request fingerprint too (a resent event may differ elsewhere).
    #[serde(default)]
    pub strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvictionCheck {
    #[default]
    Warn,
    Refuse,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FingerprintBody {
    #[default]
    Raw,
    JsonCanonical,
}

fn default_store() -> String {
    "memory".to_owned()
}
fn default_store_timeout() -> Duration {
    Duration::millis(500)
}
fn default_key_prefix() -> String {
    "idem".to_owned()
}
fn default_memory_max_records() -> u32 {
    100_000
}
fn default_memory_max_bytes() -> ByteSize {
    ByteSize(256 << 20)
}

impl Default for Idempotency {
    fn default() -> Self {
        Self {
            store: default_store(),
            store_timeout: default_store_timeout(),
            key_prefix: default_key_prefix(),
            eviction_check: EvictionCheck::default(),
            memory_max_records: default_memory_max_records(),
            memory_max_bytes: default_memory_max_bytes(),
            scope_secret: None,
            policy_url: None,
            routes: Vec::new(),
            header: None,
            header_aliases: None,
            strict_sf: None,
            methods: None,
            required: None,
            max_request_bytes: None,
            max_response_bytes: None,
            retention: None,
            lease_grace: None,
            mismatch_status: None,
            release_statuses: None,
            store_5xx: None,
            in_flight_wait: None,
            fail_open: None,
            scope_authorization: None,
            scope_credentials: None,
            scope_headers: None,
            scope_by_route: None,
            fingerprint_headers: None,
            fingerprint_body: None,
            replay_headers: None,
        }
    }
}

/// A route's effective policy: its keys, else the top-level ones, else the defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub route: String,
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    pub cloudevents: Option<CloudEvents>,
    pub header: String,
    pub header_aliases: Vec<String>,
    pub strict_sf: bool,
    pub methods: Vec<String>,
    pub required: bool,
    pub max_request_bytes: ByteSize,
    pub max_response_bytes: ByteSize,
    pub retention: Duration,
    pub lease_grace: Duration,
    pub mismatch_status: u16,
    pub release_statuses: Vec<u16>,
    pub store_5xx: bool,
    pub in_flight_wait: Duration,
    pub fail_open: bool,
    pub scope_authorization: bool,
    pub scope_credentials: bool,
    pub scope_headers: Vec<String>,
    pub scope_by_route: bool,
    pub fingerprint_headers: Vec<String>,
    pub fingerprint_body: FingerprintBody,
    pub replay_headers: Vec<String>,
}

impl Idempotency {
    /// Every route's effective policy, in match order (one `default` route for every path
    /// when none is configured).
    pub fn policies(&self) -> Vec<Policy> {
        let implicit;
        let routes: &[IdempotencyRoute] = if self.routes.is_empty() {
            implicit = [IdempotencyRoute {
                name: "default".to_owned(),
                matches: RouteMatch::default(),
                cloudevents: None,
                ..IdempotencyRoute::default()
            }];
            &implicit
        } else {
            &self.routes
        };
        routes.iter().map(|r| self.resolve(r)).collect()
    }

    fn resolve(&self, r: &IdempotencyRoute) -> Policy {
        macro_rules! key {
            ($f:ident, $default:expr) => {
                r.$f.clone()
                    .or_else(|| self.$f.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        let wait_default = if r.cloudevents.is_some() {
            Duration::secs(5)
        } else {
            Duration::secs(0)
        };
        Policy {
            route: r.name.clone(),
            matches: r.matches.clone(),
            cloudevents: r.cloudevents,
            header: key!(header, "Idempotency-Key".to_owned()),
            header_aliases: key!(header_aliases, Vec::new()),
            strict_sf: key!(strict_sf, false),
            methods: key!(methods, vec!["POST".to_owned(), "PATCH".to_owned()]),
            required: key!(required, false),
            max_request_bytes: key!(max_request_bytes, ByteSize(1 << 20)),
            max_response_bytes: key!(max_response_bytes, ByteSize(1 << 20)),
            retention: key!(retention, Duration::secs(24 * 3600)),
            lease_grace: key!(lease_grace, Duration::secs(5)),
            mismatch_status: key!(mismatch_status, 422),
            release_statuses: key!(release_statuses, vec![401, 403, 407, 408, 425, 429]),
            store_5xx: key!(store_5xx, false),
            in_flight_wait: key!(in_flight_wait, wait_default),
            fail_open: key!(fail_open, false),
            scope_authorization: key!(scope_authorization, true),
            scope_credentials: key!(scope_credentials, true),
            scope_headers: key!(scope_headers, Vec::new()),
            scope_by_route: key!(scope_by_route, false),
            fingerprint_headers: key!(fingerprint_headers, Vec::new()),
            fingerprint_body: key!(fingerprint_body, FingerprintBody::Raw),
            replay_headers: key!(replay_headers, Vec::new()),
        }
    }

    /// Whether records go to Redis (else memory).
    pub fn uses_redis(&self) -> bool {
        self.store != "memory"
    }
}

/// Response headers that are never stored or replayed (§5.1), lower case; `*` ends a prefix.
pub const NEVER_REPLAYED: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "www-authenticate",
    "proxy-authenticate",
    "authentication-info",
    "proxy-authentication-info",
    "date",
    "age",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "alt-svc",
    "server-timing",
    "ratelimit*",
    "x-ratelimit-*",
    "x-request-id",
    "x-correlation-id",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-*",
    "uber-trace-id",
    "idempotent-replayed",
    "idempotency-response-stored",
    "idempotency-enforced",
];

/// Whether a (lower-case) header name is on the never-replayed list.
pub fn never_replayed(name: &str) -> bool {
    NEVER_REPLAYED.iter().any(|n| match n.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *n == name,
    })
}
