//! How decisions are written for the app (§7): header values, baggage members and the combined
//! header's entries, each rendered once per flag variant and kept in the flag's cache.

use std::borrow::Cow;

use http::HeaderValue;
use serde_json::Value;

use super::eval::Decision;
use super::intern;
use crate::codec::percent;
use crate::trace_context::baggage;

/// A flag's value as a header value (§7): booleans and numbers as JSON text, objects and
/// arrays as compact JSON, a plain printable-ASCII string as is, any other string as a JSON
/// string with non-ASCII characters escaped.
pub fn header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s)
            if !s.is_empty()
                && s.bytes().all(|b| (0x20..0x7f).contains(&b))
                && !s.starts_with([' ', '"'])
                && !s.ends_with(' ') =>
        {
            return HeaderValue::from_str(s).ok();
        }
        Value::String(s) => ascii_json_string(s),
        other => other.to_string(),
    };
    HeaderValue::from_str(&ascii_json(&text)).ok()
}

fn ascii_json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// JSON text with every non-ASCII character as `\uXXXX` (surrogate pairs beyond the BMP).
fn ascii_json(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// The header value of a decision, pre-rendered per flag variant.
pub(super) fn rendered(d: &Decision<'_>, vi: Option<usize>) -> Option<HeaderValue> {
    let value = d.value.as_ref()?;
    let (Some(flag), Some(i), std::borrow::Cow::Borrowed(_)) = (d.flag, vi, value) else {
        return header_value(value);
    };
    let cache = flag.counters.headers.get_or_init(|| {
        flag.variants
            .values()
            .map(|v| header_value(v).map(intern::value))
            .collect::<Vec<_>>()
            .into_boxed_slice()
    });
    cache
        .get(i)
        .cloned()
        .flatten()
        .or_else(|| header_value(value))
}

/// The baggage member of a decision, rendered once per flag variant.
pub(super) fn rendered_member<'a>(
    key: &str,
    d: &Decision<'a>,
    vi: Option<usize>,
) -> Option<Cow<'a, str>> {
    let variant = d.variant?;
    match (d.flag, vi) {
        (Some(f), Some(i)) => {
            let cache = f
                .counters
                .members
                .get_or_init(|| f.variants.keys().map(|v| member(key, v)).collect());
            cache.get(i)?.as_deref().map(Cow::Borrowed)
        }
        _ => member(key, variant).map(Cow::Owned),
    }
}

/// `flag.<key>=<variant>` as a baggage member; `None` when the key is not a baggage token.
pub(super) fn member(key: &str, variant: &str) -> Option<String> {
    if !baggage::is_token(key.as_bytes()) {
        return None;
    }
    let mut m = String::with_capacity(key.len() + variant.len() + 8);
    m.push_str("flag.");
    m.push_str(key);
    m.push('=');
    percent::encode_into(variant.as_bytes(), percent::BAGGAGE, &mut m);
    Some(m)
}

/// Appends `"key":{"value":…,"variant":…,"reason":…[,"error_code":…]}` to the combined
/// header; the key and each variant's part are rendered once per compiled flag.
pub(super) fn combined_entry(out: &mut String, key: &str, d: &Decision<'_>, vi: Option<usize>) {
    if !out.is_empty() {
        out.push(',');
    }
    match d.flag {
        Some(f) => out.push_str(
            f.counters
                .key_json
                .get_or_init(|| ascii_json(&json_string(key))),
        ),
        None => out.push_str(&ascii_json(&json_string(key))),
    }
    out.push_str(":{");
    let cached = match (d.flag, vi, &d.value) {
        (Some(f), Some(i), Some(std::borrow::Cow::Borrowed(_))) => {
            let parts = f.counters.combined.get_or_init(|| {
                f.variants
                    .iter()
                    .map(|(name, value)| {
                        format!(
                            "\"value\":{},\"variant\":{},",
                            ascii_json(&value.to_string()),
                            ascii_json(&json_string(name))
                        )
                    })
                    .collect()
            });
            parts.get(i)
        }
        _ => None,
    };
    match cached {
        Some(part) => out.push_str(part),
        None => {
            if let Some(v) = &d.value {
                out.push_str("\"value\":");
                out.push_str(&ascii_json(&v.to_string()));
                out.push(',');
            }
            if let Some(v) = d.variant {
                out.push_str("\"variant\":");
                out.push_str(&ascii_json(&json_string(v)));
                out.push(',');
            }
        }
    }
    out.push_str("\"reason\":\"");
    out.push_str(d.reason.as_str());
    out.push('"');
    if let Some((code, _)) = &d.error {
        out.push_str(",\"error_code\":\"");
        out.push_str(code.as_str());
        out.push('"');
    }
    out.push('}');
}

fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}
