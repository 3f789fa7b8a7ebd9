//! `_current` (spec §6): the context of the request the app is serving, named by the inbound
//! request's baggage (`attache.ctx=<name>`, the member configurable) and found again, when the
//! app calls `/v1/contexts/_current/...`, by the `traceparent` it sends: through the record
//! context restoration keeps of what each inbound request carried. An app that forwards only
//! `traceparent` still reaches the right context.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::error::ContextError;
use super::names::{self, Allow};
use crate::codec::percent;
use crate::trace_context::baggage;
use crate::trace_context::restore::Table;
use crate::trace_context::traceparent;

/// What resolves `_current`: the restoration table of the inbound requests, and the baggage
/// member that names a context.
pub struct Current {
    pub table: Arc<Table>,
    pub member: String,
}

impl Current {
    /// The context the inbound request of this call's trace named; why there is none
    /// otherwise (the second value: the metric's label).
    pub fn resolve(
        &self,
        headers: &HeaderMap,
        allow: &Allow,
    ) -> Result<String, (ContextError, &'static str)> {
        let none = |why: String, label| (ContextError::NoCurrentContext(why), label);
        let trace = match traceparent::extract(headers) {
            Some(Ok(tp)) => tp.trace_id,
            _ => {
                return Err(none(
                    "the call carries no valid traceparent to find its request by".into(),
                    "no_trace",
                ));
            }
        };
        let Some(record) = self.table.get(trace) else {
            return Err(none(
                "no inbound request of this trace is known (it ended long ago, or never came through attache)".into(),
                "no_request",
            ));
        };
        let name = member(&record.baggage, &self.member).ok_or_else(|| {
            none(
                format!(
                    "the inbound request carried no `{}` baggage member",
                    self.member
                ),
                "no_member",
            )
        })?;
        if names::context(&name).is_err() {
            return Err(none(
                format!(
                    "the inbound request named the context {name:?}, which is not a valid name"
                ),
                "invalid",
            ));
        }
        if !allow.permits(&name) {
            return Err(none(
                format!(
                    "the inbound request named the context {name:?}, which spec.context.allow does not list"
                ),
                "not_allowed",
            ));
        }
        Ok(name)
    }
}

/// The value of the baggage member `key` in `lines`.
fn member(lines: &[HeaderValue], key: &str) -> Option<String> {
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append(
            http::header::HeaderName::from_static("baggage"),
            line.clone(),
        );
    }
    baggage::members(&headers)
        .flatten()
        .find(|m| m.key == key)
        .map(|m| String::from_utf8_lossy(&percent::decode(m.value.as_bytes())).into_owned())
}
