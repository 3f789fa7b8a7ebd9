//! Builder-style settings for the trace-context layer, for services that stack it in-process:
//! attache's defaults, changed one call at a time.
//!
//! ```
//! use attache_filters::trace_context::Format;
//! use attache_filters::trace_context::propagate::{PropagationLayer, Settings};
//!
//! let layer = PropagationLayer::new(
//!     Settings::default()
//!         .extract([Format::TraceContext, Format::B3])
//!         .inject([Format::TraceContext])
//!         .request_id("x-request-id")
//!         .sampling(0.25, true),
//! );
//! # let _ = layer;
//! ```

use std::sync::Arc;

use http::HeaderName;

use super::ids::{IdGenerator, RandomIds};
use super::propagate::Settings;
use super::{Format, baggage};

impl Default for Settings {
    /// [`Settings::new`] with random ids: what attache does with an empty `spec.trace` (every
    /// format read, W3C and `baggage` written, the caller's format mirrored, every trace
    /// sampled), without a request id, mappings or restoration.
    fn default() -> Self {
        Self::new(Arc::new(RandomIds::default()))
    }
}

impl Settings {
    /// The formats read from a request, in order of preference.
    pub fn extract(mut self, formats: impl IntoIterator<Item = Format>) -> Self {
        self.extract = formats.into_iter().collect();
        self
    }

    /// The formats written on the way out, whatever arrived.
    pub fn inject(mut self, formats: impl IntoIterator<Item = Format>) -> Self {
        self.inject = formats.into_iter().collect();
        self
    }

    /// Whether `baggage` is validated, held to its limits and forwarded (on by default).
    pub fn baggage(mut self, on: bool, limits: baggage::Limits) -> Self {
        self.inject_baggage = on;
        self.baggage = limits;
        self
    }

    /// Write the incoming trace's own format back as well (a B3 caller gets B3).
    pub fn mirror(mut self, on: bool) -> Self {
        self.mirror = on;
        self
    }

    /// Fill `header` with a UUID v4 when a request has none. An invalid name turns it off.
    pub fn request_id(mut self, header: &str) -> Self {
        self.request_id = HeaderName::from_bytes(header.as_bytes()).ok();
        self
    }

    /// The share of new traces sampled, and whether a caller's decision is followed.
    pub fn sampling(mut self, ratio: f64, parent_based: bool) -> Self {
        self.ratio = ratio.clamp(0.0, 1.0);
        self.parent_based = parent_based;
        self
    }

    /// Copy `header` into the baggage member `key` when the request's baggage lacks it.
    pub fn header_to_baggage(mut self, header: &str, key: &str) -> Self {
        if let Ok(name) = HeaderName::from_bytes(header.as_bytes()) {
            self.to_baggage.push((name, key.to_owned()));
        }
        self
    }

    /// Copy the baggage member `key` into `header` when the request lacks the header.
    pub fn baggage_to_header(mut self, key: &str, header: &str) -> Self {
        if let Ok(name) = HeaderName::from_bytes(header.as_bytes()) {
            self.from_baggage.push((key.to_owned(), name));
        }
        self
    }

    /// Where new trace and span ids come from (random by default; tests pin them).
    pub fn ids(mut self, ids: Arc<dyn IdGenerator>) -> Self {
        self.ids = ids;
        self
    }
}
