//! Per-flag caches that live as long as the compiled flag (`eval::Flag::counters`): metric
//! handles and each variant's rendered header value, baggage member and combined entry. Filled
//! by `count.rs` and `render.rs` on first use.

use std::sync::OnceLock;

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;

/// Per-flag caches that live as long as the compiled flag: metric handles (so counting an
/// evaluation is an index, not a hashed lookup with owned labels) and each variant's header
/// value, rendered once (§13).
#[derive(Default)]
pub struct Counters {
    pub(super) counters: OnceLock<Box<[OnceLock<Counter>]>>,
    pub(super) headers: OnceLock<Box<[Option<HeaderValue>]>>,
    /// Per variant: its baggage member, `flag.<key>=<variant>`.
    pub(super) members: OnceLock<Box<[Option<String>]>>,
    /// Per variant: `"value":…,"variant":…,` for the combined header.
    pub(super) combined: OnceLock<Box<[String]>>,
    /// The flag key as a JSON string.
    pub(super) key_json: OnceLock<String>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl Clone for Counters {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Counters {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
