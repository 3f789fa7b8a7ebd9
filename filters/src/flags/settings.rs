//! What the flags step of one leg is told to do (§7–§9): which flags it delivers and how, whose
//! decisions it trusts, which routes it picks, and what it records.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::context::ContextRules;
use super::logic::FractionalVersion;
use super::store::FlagStore;
use crate::metrics::Metrics;
use crate::trace_context::baggage;

/// Which flags each inbound request evaluates for the app.
#[derive(Debug, Clone)]
pub enum DeliverFlags {
    /// Every flag in the snapshot (`attache dev`, `flags: ["*"]`).
    All,
    /// The listed keys, each with its header name (when per-flag headers are on).
    Keys(Vec<(Arc<str>, Option<HeaderName>)>),
}

/// How decisions reach the app (§7).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub flags: DeliverFlags,
    pub header_prefix: Option<String>,
    /// §7's rule from prefix and key to a header name (the config's `flag_header_name`, which
    /// validation also uses), for `DeliverFlags::All`.
    pub header_name: fn(&str, &str) -> String,
    pub combined: Option<HeaderName>,
    pub baggage: bool,
    /// `deliver.defaults`, rendered.
    pub defaults: HashMap<String, HeaderValue>,
}

/// Whose `flag.` baggage members are reused.
#[derive(Clone)]
pub enum Trust {
    Never,
    /// The app's own calls (outbound listeners).
    Always,
    Peers(Arc<dyn Fn(IpAddr) -> bool + Send + Sync>),
}

/// Routing by a flag's variant (§9).
#[derive(Debug, Clone)]
pub struct Route {
    pub flag: Arc<str>,
    pub variants: HashMap<String, Arc<str>>,
}

/// In a request's extensions: the upstream a route picked instead of the leg's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget(pub Arc<str>);

/// `feature_flag.evaluation` event settings (§11).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSettings {
    pub enabled: bool,
    pub include_value: bool,
    pub include_context_id: bool,
}

pub struct Settings {
    pub store: Arc<FlagStore>,
    pub fractional: FractionalVersion,
    pub context: ContextRules,
    /// Inbound only.
    pub delivery: Option<Delivery>,
    pub trust: Trust,
    /// The routes of the upstream this leg sends to.
    pub routes: Vec<Route>,
    pub events: EventSettings,
    pub metrics: Arc<Metrics>,
    pub baggage: baggage::Limits,
    pub peer_of: fn(&http::Extensions) -> Option<SocketAddr>,
    /// Unix seconds, read once per request (`$flagd.timestamp`).
    pub clock: fn() -> u64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
