//! `sem_ver` (specs/feature-flags.md §4.2): `[version, op, target]` with SemVer precedence;
//! `^` and `~` compare majors (and minors) only. Anything malformed gives `null`.

use std::cmp::Ordering;

use serde_json::{Number, Value};

#[derive(Debug, PartialEq, Eq)]
struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<String>,
}

pub fn evaluate(args: &[Value]) -> Value {
    let [a, Value::String(op), b] = args else {
        return Value::Null;
    };
    let (Some(a), Some(b)) = (parse(a), parse(b)) else {
        return Value::Null;
    };
    let ord = compare(&a, &b);
    Value::Bool(match op.as_str() {
        "=" => ord == Ordering::Equal,
        "!=" => ord != Ordering::Equal,
        "<" => ord == Ordering::Less,
        "<=" => ord != Ordering::Greater,
        ">" => ord == Ordering::Greater,
        ">=" => ord != Ordering::Less,
        "^" => a.major == b.major,
        "~" => a.major == b.major && a.minor == b.minor,
        _ => return Value::Null,
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => {
            let f = n.as_f64()?;
            if f != 0.0 && (f.abs() >= 1e6 || f.abs() < 1e-4) {
                return None;
            }
            Some(number_text(n))
        }
        _ => None,
    }
}

fn parse(v: &Value) -> Option<Version> {
    let t = text(v)?;
    let t = match t.strip_prefix('v') {
        Some(rest) => rest.to_owned(),
        None => t.strip_prefix('V').unwrap_or(&t).to_owned(),
    };
    let (core, build) = match t.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (t.as_str(), None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    if nums.is_empty() || nums.len() > 3 {
        return None;
    }
    if (pre.is_some() || build.is_some()) && nums.len() != 3 {
        return None;
    }
    let number = |s: &str| -> Option<u64> {
        if s.is_empty()
            || !s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() > 1 && s.starts_with('0'))
        {
            return None;
        }
        s.parse().ok()
    };
    let ident_ok =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let pre: Vec<String> = match pre {
        Some(p) => {
            let parts: Vec<String> = p.split('.').map(str::to_owned).collect();
            if !parts.iter().all(|s| ident_ok(s)) {
                return None;
            }
            parts
        }
        None => Vec::new(),
    };
    if let Some(b) = build
        && !b.split('.').all(ident_ok)
    {
        return None;
    }
    Some(Version {
        major: number(nums[0])?,
        minor: nums.get(1).map_or(Some(0), |s| number(s))?,
        patch: nums.get(2).map_or(Some(0), |s| number(s))?,
        pre,
    })
}

fn compare(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| match (a.pre.is_empty(), b.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                for (x, y) in a.pre.iter().zip(&b.pre) {
                    let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                        (Ok(i), Ok(j)) => i.cmp(&j),
                        (Ok(_), Err(_)) => Ordering::Less,
                        (Err(_), Ok(_)) => Ordering::Greater,
                        _ => x.cmp(y),
                    };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.pre.len().cmp(&b.pre.len())
            }
        })
}

/// The shortest decimal of a number, without `.0`: how flagd writes a number as text (a
/// `sem_ver` operand, a JsonLogic string operation or `var` path).
pub fn number_text(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{}", f as i128)
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_vectors() {
        for (args, want) in [
            (json!(["2.0.0-alpha", "<", "2.0.0"]), json!(true)),
            (json!(["V1.0.0", "=", "v1.0.0"]), json!(true)),
            (json!([1.2, ">", "1.1"]), json!(true)),
            (json!(["1.0.0+other", "=", "1.0.0+build"]), json!(true)),
            (json!(["0.9.0", "^", "0.1.0"]), json!(true)),
            (json!(["1.3.0", "~", "1.2.9"]), json!(false)),
            (json!(["2.0.0.0", "=", "2.0.0"]), Value::Null),
            (json!(["1.0.0", "===", "1.0.0"]), Value::Null),
            (
                json!(["1.0.0-alpha.1", "<", "1.0.0-alpha.beta"]),
                json!(true),
            ),
            (json!(["01.0.0", "=", "1.0.0"]), Value::Null),
            (json!(["1.2-pre", "=", "1.2.0-pre"]), Value::Null),
            (json!([1e7, "=", "1.0.0"]), Value::Null),
            // Every operator, both ways.
            (json!(["1.0.0", "!=", "1.0.1"]), json!(true)),
            (json!(["1.0.0", "!=", "1.0.0"]), json!(false)),
            (json!(["1.0.0", "<=", "1.0.0"]), json!(true)),
            (json!(["1.0.1", "<=", "1.0.0"]), json!(false)),
            (json!(["1.0.0", ">=", "1.0.0"]), json!(true)),
            (json!(["1.0.0", ">=", "1.0.1"]), json!(false)),
            (json!(["1.2.0", "~", "1.2.9"]), json!(true)),
            (json!(["2.2.0", "~", "1.2.0"]), json!(false)),
            // Pre-release identifiers: numbers by value, below any text.
            (json!(["1.0.0-2", "<", "1.0.0-10"]), json!(true)),
            (json!(["1.0.0-1", "<", "1.0.0-alpha"]), json!(true)),
            (json!(["1.0.0-alpha", ">", "1.0.0-1"]), json!(true)),
            (json!(["1.0.0-rc-1", "<", "1.0.0"]), json!(true)),
            // ... even one that sorts before digits as text (`-x`).
            (json!(["1.0.0-1", "<", "1.0.0--x"]), json!(true)),
            (json!(["1.0.0--x", ">", "1.0.0-1"]), json!(true)),
            // Not versions: an identifier outside [0-9A-Za-z-].
            (json!(["1.0.0-al_pha", "=", "1.0.0-al_pha"]), Value::Null),
        ] {
            let Value::Array(a) = &args else {
                unreachable!()
            };
            assert_eq!(evaluate(a), want, "{args}");
        }
    }
}
