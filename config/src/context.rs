//! `spec.context`: the Context API (specs/context-api.md), typed shared state the app reaches
//! on a loopback listener of its own.
//!
//! ```yaml
//! context:
//!   listen: 127.0.0.1:3500
//!   store: redis://redis:6379
//!   allow: ["order-*"]
//!   ttl: 24h
//!   ttl_mode: create
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{ByteSize, Duration, ListenAddr};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The API's own listener: loopback, never the inbound port.
    #[serde(default = "default_listen")]
    pub listen: ListenAddr,
    /// `memory` (this process only, for development) or a Redis URL shared by the replicas, in
    /// the forms `spec.idempotency.store` takes (`redis://`, `rediss://`,
    /// `redis+cluster://h1:p,h2:p`, `redis+sentinel://h1:p,h2:p/<service>`).
    #[serde(default = "default_store")]
    pub store: String,
    /// With the memory store: a file its state is written to every `snapshot_interval` and on
    /// drain, and read back at start, so a laptop restart keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_file: Option<String>,
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: Duration,
    /// With Redis: after each write, wait until this many replicas acknowledged it (`WAIT`),
    /// at most `confirm_timeout`; short of that, the write is answered 503 (it was made, and a
    /// retry under its Idempotency-Key gets its outcome). 0 (the default): Redis's own
    /// acknowledgement, before replication.
    #[serde(default)]
    pub confirm_replicas: u32,
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: Duration,
    /// Prefix of the Context API's keys in Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The most one store operation may take; past it, 503.
    #[serde(default = "default_store_timeout")]
    pub store_timeout: Duration,
    /// Context-name patterns the app may address (`*` matches any run of characters); others
    /// get 403.
    #[serde(default = "default_allow")]
    pub allow: Vec<String>,
    /// The time to live of objects whose writes name none (default: none, they stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// How writes move an object's expiry unless they say otherwise: `create` (set at
    /// creation, never moved), `touch` (every write restarts it) or `keep` (moved only by a
    /// write that names a ttl).
    #[serde(default)]
    pub ttl_mode: TtlMode,
    /// How long a keyed write's outcome is kept, so that its retries get it instead of
    /// applying again.
    #[serde(default = "default_retention")]
    pub idempotency_retention: Duration,
    #[serde(default)]
    pub limits: ContextLimits,
    /// The baggage member whose value names an inbound request's context, which the app then
    /// addresses as `_current` (found again by the `traceparent` of its call, through context
    /// restoration).
    #[serde(default = "default_baggage_member")]
    pub baggage_member: String,
    /// Hosts the context's name must not reach (`api.partner.com`, `*.partner.com`): the
    /// app's calls to them leave without the baggage member, whether the app or context
    /// restoration put it there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strip_on_egress: Vec<String>,
    /// Deliveries of a queue's message before it goes to the queue's dead letters.
    #[serde(default = "default_max_attempts")]
    pub queue_max_attempts: u32,
    /// How long a dedupe id (or a CloudEvent's source and id) names one message.
    #[serde(default = "default_dedupe_window")]
    pub queue_dedupe_window: Duration,
    /// Queues whose messages attache delivers to the app itself, through the inbound
    /// listener (so its steps, idempotency included, apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<Push>,
}

/// Push delivery of one queue: each message POSTed to `path` with `Idempotency-Key: <message
/// id>`, its attempt, CloudEvents binary-mode headers and the trace context of its enqueue;
/// 2xx acknowledges, 429, 5xx, a timeout or no connection retries with backoff (and
/// `Retry-After`), any other status dead-letters it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Push {
    pub context: String,
    pub queue: String,
    /// The app's path, e.g. `/events/orders`.
    pub path: String,
    /// A delivery's lease, and the most it may take.
    #[serde(default = "default_push_visibility")]
    pub visibility: Duration,
    /// The first retry's delay, doubled on each attempt up to `max_backoff`.
    #[serde(default = "default_push_backoff")]
    pub backoff: Duration,
    #[serde(default = "default_push_max_backoff")]
    pub max_backoff: Duration,
}

fn default_push_visibility() -> Duration {
    Duration::secs(30)
}
fn default_push_backoff() -> Duration {
    Duration::secs(1)
}
fn default_push_max_backoff() -> Duration {
    Duration::secs(60)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TtlMode {
    #[default]
    Create,
    Touch,
    Keep,
}

/// What the store holds at most; over one, a write is refused (413 or 400) and nothing
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextLimits {
    /// One map field's value or one set member, serialized.
    #[serde(default = "default_max_value")]
    pub max_value_bytes: ByteSize,
    /// A whole map, serialized.
    #[serde(default = "default_max_map")]
    pub max_map_bytes: ByteSize,
    #[serde(default = "default_max_map_fields")]
    pub max_map_fields: u32,
    #[serde(default = "default_max_set_members")]
    pub max_set_members: u32,
    /// One queue message's body.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: ByteSize,
    /// Members or fields one request may name.
    #[serde(default = "default_max_per_request")]
    pub max_members_per_request: u32,
    /// The longest time to live a write may ask for.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Duration,
}

impl Default for ContextLimits {
    fn default() -> Self {
        Self {
            max_value_bytes: default_max_value(),
            max_map_bytes: default_max_map(),
            max_map_fields: default_max_map_fields(),
            max_set_members: default_max_set_members(),
            max_message_bytes: default_max_message(),
            max_members_per_request: default_max_per_request(),
            max_ttl: default_max_ttl(),
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            store: default_store(),
            key_prefix: default_key_prefix(),
            snapshot_file: None,
            confirm_replicas: 0,
            confirm_timeout: default_confirm_timeout(),
            snapshot_interval: default_snapshot_interval(),
            store_timeout: default_store_timeout(),
            allow: default_allow(),
            ttl: None,
            ttl_mode: TtlMode::default(),
            idempotency_retention: default_retention(),
            limits: ContextLimits::default(),
            baggage_member: default_baggage_member(),
            strip_on_egress: Vec::new(),
            queue_max_attempts: default_max_attempts(),
            queue_dedupe_window: default_dedupe_window(),
            push: Vec::new(),
        }
    }
}

fn default_listen() -> ListenAddr {
    ListenAddr::new([127, 0, 0, 1], 3500)
}
fn default_store() -> String {
    "memory".into()
}
fn default_max_attempts() -> u32 {
    5
}
fn default_dedupe_window() -> Duration {
    Duration::secs(600)
}
fn default_baggage_member() -> String {
    "attache.ctx".into()
}
fn default_confirm_timeout() -> Duration {
    Duration::millis(200)
}
fn default_snapshot_interval() -> Duration {
    Duration::secs(30)
}
fn default_key_prefix() -> String {
    "attache:ctx".into()
}
fn default_store_timeout() -> Duration {
    Duration::millis(500)
}
fn default_allow() -> Vec<String> {
    vec!["*".into()]
}
fn default_retention() -> Duration {
    Duration::secs(24 * 3600)
}
fn default_max_value() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_max_map() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_max_message() -> ByteSize {
    ByteSize(256 * 1024)
}
fn default_max_map_fields() -> u32 {
    10_000
}
fn default_max_set_members() -> u32 {
    100_000
}
fn default_max_per_request() -> u32 {
    1000
}
fn default_max_ttl() -> Duration {
    Duration::secs(30 * 24 * 3600)
}
