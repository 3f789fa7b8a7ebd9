//! The metrics vocabulary: the ground floor every concern counts on. [`Metrics`] owns the
//! Prometheus registry (served as text at the admin port's `/metrics`); each concern declares
//! its families in its own module as a [`Families`] type and gets them, registered once, with
//! [`Metrics::family`]. The shared label types live here.
//!
//! Label values are bounded: direction, a known method or `_OTHER`, a status class, names
//! from the config. Never paths, hosts or ids.

use std::any::{Any, TypeId};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::registry::Registry;

/// Which way a request travels through attache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the network to the app (the sidecar role).
    Inbound,
    /// From the app to an upstream (the ambassador role).
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

const METHODS: [&str; 11] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    "_OTHER",
];

/// A request method as a bounded label: the RFC 9110 methods, PATCH and QUERY, else `_OTHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodLabel(pub(crate) u8);

impl MethodLabel {
    pub fn of(m: &Method) -> Self {
        let i = METHODS[..10]
            .iter()
            .position(|k| *k == m.as_str())
            .unwrap_or(10);
        Self(i as u8)
    }

    pub fn as_str(self) -> &'static str {
        METHODS[self.0 as usize]
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

/// `1xx` … `5xx`, or `none` when no response was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusClass(pub(crate) u8);

impl StatusClass {
    pub const NONE: Self = Self(0);
    pub fn of(status: u16) -> Self {
        Self((status / 100).clamp(1, 5) as u8)
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        match self.0 {
            0 => e.write_str("none"),
            n => write!(e, "{n}xx"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A concern's metric families: registered once per [`Metrics`], on the first
/// [`Metrics::family`] call for the type, and shared from then on (a reload keeps counting in
/// the same families).
pub trait Families: Send + Sync + 'static {
    /// Creates the families and registers each with `registry`.
    fn register(registry: &mut Registry) -> Self;
}

/// The registry, and every concern's families registered in it so far.
pub struct Metrics {
    registry: Mutex<Registry>,
    families: Mutex<Vec<(TypeId, Arc<dyn Any + Send + Sync>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry; every name gets the `attache_` prefix.
    pub fn new() -> Self {
        Self {
            registry: Mutex::new(Registry::with_prefix("attache")),
            families: Mutex::new(Vec::new()),
        }
    }

    /// The families of type `F`, registered on first use. Layers take theirs when they are
    /// built, so the request path never looks them up.
    pub fn family<F: Families>(&self) -> Arc<F> {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let id = TypeId::of::<F>();
        if let Some(found) = families
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, f)| f.clone().downcast::<F>().ok())
        {
            return found;
        }
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let f = Arc::new(F::register(&mut registry));
        families.push((id, f.clone()));
        f
    }

    /// The Prometheus text exposition of every registered family.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
