//! Builder-style settings for the flags layer, for services that stack it in-process: a flag
//! document (flagd's format), where the evaluation context comes from, and how decisions reach
//! the service (specs/feature-flags.md §6–§7).
//!
//! ```
//! use attache_filters::flags::context::Source;
//! use attache_filters::flags::request::FlagsLayer;
//! use attache_filters::flags::store::FlagStore;
//! use http::HeaderName;
//!
//! let store = FlagStore::from_document(&serde_json::json!({"flags": {"new-checkout": {
//!     "state": "ENABLED", "defaultVariant": "off",
//!     "variants": {"on": true, "off": false},
//!     "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", "off"]}
//! }}}))
//! .expect("a valid flag document");
//! let layer = FlagsLayer::builder(store)
//!     .targeting_key(Source::Header(HeaderName::from_static("x-user-id")))
//!     .attribute(Source::Header(HeaderName::from_static("x-plan")), "plan")
//!     .deliver_all()
//!     .combined_header("x-flags")
//!     .build();
//! # let _ = layer;
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use serde_json::Value;

use super::context::{ContextRules, Source};
use super::logic::FractionalVersion;
use super::parse::LoadError;
use super::request::FlagsLayer;
use super::settings::{DeliverFlags, Delivery, EventSettings, Settings, Trust, unix_now};
use super::store::FlagStore;
use crate::metrics::Metrics;
use crate::trace_context::baggage;

impl FlagStore {
    /// A store holding one document, parsed and compiled. Update it later with
    /// [`FlagStore::update`] (source 0): requests in flight keep the snapshot they started with.
    pub fn from_document(doc: &Value) -> Result<Arc<Self>, LoadError> {
        let store = Self::new(1);
        store.update(0, doc)?;
        Ok(Arc::new(store))
    }
}

/// Builds a [`FlagsLayer`]; see [`FlagsLayer::builder`].
pub struct FlagsBuilder {
    settings: Settings,
    deliver: Option<DeliverFlags>,
    header_prefix: Option<String>,
    combined: Option<HeaderName>,
    baggage: bool,
}

impl FlagsLayer {
    /// Flags from `store`, evaluated for every request. By default the context is empty
    /// (only the request's built-ins: method, path, ...), nothing is delivered, decisions
    /// that arrive from a caller are never trusted, and `fractional` follows flagd's v2.
    pub fn builder(store: Arc<FlagStore>) -> FlagsBuilder {
        FlagsBuilder {
            settings: Settings {
                store,
                fractional: FractionalVersion::default(),
                context: ContextRules::default(),
                delivery: None,
                trust: Trust::Never,
                routes: Vec::new(),
                events: EventSettings::default(),
                metrics: Arc::new(Metrics::new()),
                baggage: baggage::Limits::default(),
                peer_of: |_| None,
                clock: unix_now,
            },
            deliver: None,
            header_prefix: Some("x-flag-".to_owned()),
            combined: None,
            baggage: true,
        }
    }
}

impl FlagsBuilder {
    /// Where the targeting key is read; the first source a request has wins.
    pub fn targeting_key(mut self, source: Source) -> Self {
        self.settings.context.targeting_key.push(source);
        self
    }

    /// A context attribute read from `source`, under `path` (`user.plan` nests).
    pub fn attribute(mut self, source: Source, path: &str) -> Self {
        let path = path.split('.').map(str::to_owned).collect();
        self.settings.context.attributes.push((source, path));
        self
    }

    /// A context attribute every request carries.
    pub fn static_attribute(mut self, key: &str, value: Value) -> Self {
        self.settings
            .context
            .static_attributes
            .insert(key.to_owned(), value);
        self
    }

    /// Evaluate every flag of the document for each request and deliver it.
    pub fn deliver_all(mut self) -> Self {
        self.deliver = Some(DeliverFlags::All);
        self
    }

    /// Evaluate and deliver these flags only.
    pub fn deliver<'a>(mut self, keys: impl IntoIterator<Item = &'a str>) -> Self {
        let prefix = self.header_prefix.clone();
        self.deliver = Some(DeliverFlags::Keys(
            keys.into_iter()
                .map(|k| {
                    let name = prefix.as_deref().and_then(|p| {
                        HeaderName::from_bytes(flag_header_name(p, k).as_bytes()).ok()
                    });
                    (Arc::from(k), name)
                })
                .collect(),
        ));
        self
    }

    /// The prefix of per-flag headers (`x-flag-` by default); `None` sends none. Set it
    /// before [`FlagsBuilder::deliver`].
    pub fn header_prefix(mut self, prefix: Option<&str>) -> Self {
        self.header_prefix = prefix.map(str::to_ascii_lowercase);
        self
    }

    /// A header carrying every decision as one JSON object (none by default).
    pub fn combined_header(mut self, name: &str) -> Self {
        self.combined = HeaderName::from_bytes(name.as_bytes()).ok();
        self
    }

    /// Whether decisions also ride in `baggage` as `flag.<key>=<variant>` (on by default), so
    /// that the next hop sees them.
    pub fn baggage(mut self, on: bool) -> Self {
        self.baggage = on;
        self
    }

    /// `fractional`'s bucketing: flagd's v1, v2 (the default) or v3.
    pub fn fractional(mut self, version: FractionalVersion) -> Self {
        self.settings.fractional = version;
        self
    }

    /// Count evaluations in this registry (a new one by default).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.settings.metrics = metrics;
        self
    }

    /// Record `feature_flag.evaluation` events on the request's span.
    pub fn events(mut self, events: EventSettings) -> Self {
        self.settings.events = events;
        self
    }

    pub fn build(mut self) -> FlagsLayer {
        self.settings.delivery = self.deliver.map(|flags| Delivery {
            flags,
            header_prefix: self.header_prefix,
            header_name: flag_header_name,
            combined: self.combined,
            baggage: self.baggage,
            defaults: HashMap::new(),
        });
        FlagsLayer::new(self.settings)
    }
}

/// A flag's header under `prefix` (§7): lower case, anything but letters, digits and `-`
/// written as `-`. The config crate validates names by the same rule
/// (`attache_config::flag_header_name`); a test in the proxy crate keeps the two equal.
pub fn flag_header_name(prefix: &str, key: &str) -> String {
    prefix
        .chars()
        .chain(key.chars())
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}
