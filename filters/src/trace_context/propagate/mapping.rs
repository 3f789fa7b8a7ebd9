//! Context mapping, §6: headers and Jaeger's `uberctx-*` into baggage members, and members
//! into headers and `uberctx-*`.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{BAGGAGE, Settings, TraceCtx};
use crate::codec::percent;
use crate::trace_context::{Format, baggage};

impl Settings {
    /// §6: headers and `uberctx-*` into baggage members, members into headers and `uberctx-*`.
    /// Existing members and headers always win; baggage is rewritten (as one line: kept
    /// members unchanged and in order, attache's after) only when a member is added.
    pub(super) fn map_context(&self, headers: &mut HeaderMap, ctx: &mut TraceCtx) {
        // Most requests need none of this: decide without allocating.
        let jaeger_in = self.extract.contains(&Format::Jaeger)
            && headers.keys().any(|n| n.as_str().starts_with(UBERCTX));
        let jaeger_out =
            self.inject.contains(&Format::Jaeger) && headers.contains_key(baggage::BAGGAGE);
        let from = !self.from_baggage.is_empty() && headers.contains_key(baggage::BAGGAGE);
        let to = self.to_baggage.iter().any(|(h, _)| headers.contains_key(h));
        if !(jaeger_in || jaeger_out || from || to) {
            return;
        }
        // Baggage is valid here: invalid baggage was removed above.
        let existing: Vec<(String, String, String)> = baggage::members(headers)
            .flatten()
            .map(|m| (m.key.to_owned(), m.value.to_owned(), m.raw.to_owned()))
            .collect();
        let has = |key: &str, added: &[(String, String)]| {
            existing.iter().any(|(k, _, _)| k == key) || added.iter().any(|(k, _)| k == key)
        };
        let mut added: Vec<(String, String)> = Vec::new();
        for (header, key) in &self.to_baggage {
            if let Some(v) = headers.get(header)
                && !has(key, &added)
            {
                added.push((key.clone(), encoded(v.as_bytes(), percent::BAGGAGE)));
            }
        }
        if jaeger_in {
            for (name, v) in headers.iter() {
                if let Some(key) = name.as_str().strip_prefix(UBERCTX)
                    && !key.is_empty()
                    && !has(key, &added)
                {
                    // Jaeger clients send these already URL-encoded.
                    added.push((
                        key.to_owned(),
                        encoded(v.as_bytes(), percent::BAGGAGE_ENCODED),
                    ));
                }
            }
        }
        if !added.is_empty() {
            let mut line: Vec<String> = existing.iter().map(|(_, _, raw)| raw.clone()).collect();
            let mut bytes =
                line.iter().map(String::len).sum::<usize>() + line.len().saturating_sub(1);
            for (key, value) in &added {
                let member = format!("{key}={value}");
                let grow = member.len() + usize::from(!line.is_empty());
                if line.len() < self.baggage.max_members && bytes + grow <= self.baggage.max_bytes {
                    bytes += grow;
                    line.push(member);
                } else {
                    ctx.baggage_members_dropped += 1;
                }
            }
            if let Ok(v) = HeaderValue::from_str(&line.join(",")) {
                headers.insert(BAGGAGE, v);
            }
        }
        for (key, header) in &self.from_baggage {
            if headers.contains_key(header) {
                continue;
            }
            if let Some((_, value, _)) = existing.iter().find(|(k, _, _)| k == key)
                && let Ok(v) = HeaderValue::from_bytes(&percent::decode(value.as_bytes()))
            {
                headers.insert(header.clone(), v);
            }
        }
        if jaeger_out {
            let all = existing.iter().map(|(k, v, _)| (k.as_str(), v.as_str()));
            let new = added.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            for (key, value) in all.chain(new) {
                if let Ok(name) = HeaderName::from_bytes(format!("{UBERCTX}{key}").as_bytes())
                    && !headers.contains_key(&name)
                    && let Ok(v) = HeaderValue::from_str(value)
                {
                    headers.insert(name, v);
                }
            }
        }
    }
}

const UBERCTX: &str = "uberctx-";

/// A baggage value: `value` with the bytes of `set` percent-encoded ([`percent::BAGGAGE`] for
/// values that were never encoded, [`percent::BAGGAGE_ENCODED`] for those that were).
fn encoded(value: &[u8], set: &'static percent_encoding::AsciiSet) -> String {
    let mut out = String::with_capacity(value.len());
    percent::encode_into(value, set, &mut out);
    out
}
