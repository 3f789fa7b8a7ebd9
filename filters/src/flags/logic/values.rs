//! JSON values under JavaScript's rules, as jsonlogic.com has them: truthiness, coercion to
//! number and text, loose and strict equality, ordering; and dotted paths into a document.

use serde_json::{Number, Value};

use crate::flags::semver::number_text;

/// `null`, to borrow where a value is missing.
pub(super) static NULL: Value = Value::Null;

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

pub(super) fn num(f: f64) -> Value {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::Number(Number::from(f as i64))
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// JavaScript's ToNumber.
pub(super) fn to_number(v: &Value) -> Option<f64> {
    match v {
        Value::Null => Some(0.0),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                Some(0.0)
            } else {
                t.parse::<f64>().ok()
            }
        }
        Value::Array(a) => match a.as_slice() {
            [] => Some(0.0),
            [one] => to_number(one),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

/// JavaScript's ToString, for `cat` and `in`.
pub(super) fn to_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_text(n),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(to_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

/// JavaScript's `==` on JSON values.
pub(crate) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::String(x), Value::String(y)) => x == y,
        (
            Value::Number(_) | Value::String(_) | Value::Bool(_),
            Value::Number(_) | Value::String(_) | Value::Bool(_),
        ) => match (to_number(a), to_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Value::Array(_) | Value::Object(_), Value::Array(_) | Value::Object(_)) => false,
        (Value::Array(_), other) | (other, Value::Array(_)) => {
            let text = to_text(if matches!(a, Value::Array(_)) { a } else { b });
            loose_eq(&Value::String(text), other)
        }
        _ => false,
    }
}

pub(crate) fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(_) | Value::Object(_), _) => false,
        _ => a == b,
    }
}

/// JavaScript's relational comparison: strings compare as strings, anything else as numbers.
pub(crate) fn less(a: &Value, b: &Value, or_equal: bool) -> bool {
    if let (Value::String(x), Value::String(y)) = (a, b) {
        return if or_equal { x <= y } else { x < y };
    }
    match (to_number(a), to_number(b)) {
        (Some(x), Some(y)) => {
            if or_equal {
                x <= y
            } else {
                x < y
            }
        }
        _ => false,
    }
}

pub(super) fn strings_in(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, f)),
        Value::Object(m) => m.values().for_each(|v| strings_in(v, f)),
        _ => {}
    }
}

/// A dotted path into `data`; the empty path is `data` itself.
pub(super) fn var_str<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(data);
    }
    descend(data, path)
}

/// The value at `path` (one segment or more, dot-separated) below `data`.
pub(super) fn descend<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = data;
    let mut rest = path;
    loop {
        // A byte scan: paths are a few short segments, too short for `split`'s searcher.
        let (part, tail) = match rest.bytes().position(|b| b == b'.') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
        match tail {
            Some(t) => rest = t,
            None => return Some(cur),
        }
    }
}
