//! What the layers tell the observer about a request: the ground floor under telemetry.
//!
//! A layer hands facts up in the response's extensions, and the observe layer
//! (`telemetry::observe`) collects them for the request's span. A filter that has something
//! to show implements [`Fact`] (its span attributes and events) and calls [`hand_up`];
//! telemetry knows no filter by name, so adding a filter touches no telemetry file. Two facts
//! every exchange has are typed instead: the trace decision (`trace_context::propagate::TraceCtx`,
//! which shapes the span itself) and the hop below ([`UpstreamInfo`], which the access log reads
//! too).

use std::any::Any;
use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::Arc;

use http::{Extensions, Version};

/// An attribute value, borrowed from the fact where it can be.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}
impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

/// Where a fact writes one attribute.
pub type Attributes<'a> = &'a mut dyn FnMut(&'static str, Value<'_>);

/// Where a fact writes its events: `event(name, write)`, `write` writing the event's
/// attributes.
pub type Events<'a> = &'a mut dyn FnMut(&'static str, &dyn Fn(Attributes<'_>));

/// Something a layer learned about a request that its span should show. Facts are read in the
/// export task, after the request, so they own (or share) what they show.
pub trait Fact: Any + Debug + Send + Sync {
    /// The attributes this fact adds to the span (OpenTelemetry names where they exist,
    /// `attache.*` otherwise).
    fn attributes(&self, _attr: Attributes<'_>) {}

    /// The events this fact adds to the span: `event(name, write)` for each, where `write`
    /// writes the event's attributes.
    fn events(&self, _event: Events<'_>) {}

    /// The fields this fact adds to the request's access-log line (most facts add none: the
    /// line stays short, and the span has the detail).
    fn log_fields(&self, _field: Attributes<'_>) {}
}

/// Every fact handed up for one request, in the order the layers handed them up (innermost
/// first).
#[derive(Debug, Clone, Default)]
pub struct Facts(Vec<Arc<dyn Fact>>);

impl Facts {
    pub fn iter(&self) -> impl Iterator<Item = &dyn Fact> {
        self.0.iter().map(|f| &**f)
    }

    /// The first fact of type `T`, for whoever wants one typed (a test, say).
    pub fn get<T: Fact>(&self) -> Option<&T> {
        self.0.iter().find_map(|f| {
            let any: &dyn Any = &**f;
            any.downcast_ref::<T>()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Hands `fact` up with a response (or any message) whose extensions are `ext`.
pub fn hand_up(ext: &mut Extensions, fact: Arc<dyn Fact>) {
    ext.get_or_insert_default::<Facts>().0.push(fact);
}

/// What the forwarder reports about the hop below it, in the response's extensions: the
/// CLIENT span's peer and the access log's `upstream` and `error`.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// `app`, or the upstream's name.
    pub name: Arc<str>,
    /// The endpoint's `http://host:port`, credentials shown as `REDACTED:REDACTED`.
    pub url_base: Arc<str>,
    pub host: Arc<str>,
    pub port: u16,
    pub version: Version,
    /// Attempts after the first (another endpoint after a refused connection).
    pub resend_count: u32,
    /// Set when no response came: `timeout`, `connection_refused`, `connection_reset`,
    /// `protocol`, `body` or `_OTHER`.
    pub error: Option<&'static str>,
}
