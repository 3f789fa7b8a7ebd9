//! Deterministic CBOR (RFC 8949 §4.2.1) of a JSON value, the input `fractional` v3 hashes
//! (specs/feature-flags.md §4.1): integral numbers as integers (`-0.0` as `0`), other numbers
//! as the shortest exact float among f16, f32 and f64, map entries sorted by their encoded key
//! bytes, every head as short as possible.

use serde_json::Value;

pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0xf6),
        Value::Bool(true) => out.push(0xf5),
        Value::Bool(false) => out.push(0xf4),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                head(0, u, out);
            } else if let Some(i) = n.as_i64() {
                head(1, (-1 - i) as u64, out);
            } else {
                float(n.as_f64().unwrap_or(f64::NAN), out);
            }
        }
        Value::String(s) => {
            head(3, s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for i in items {
                encode(i, out);
            }
        }
        Value::Object(m) => {
            let mut entries: Vec<(Vec<u8>, &Value)> = m
                .iter()
                .map(|(k, v)| {
                    let mut key = Vec::new();
                    encode(&Value::String(k.clone()), &mut key);
                    (key, v)
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            head(5, entries.len() as u64, out);
            for (k, v) in entries {
                out.extend_from_slice(&k);
                encode(v, out);
            }
        }
    }
}

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn float(f: f64, out: &mut Vec<u8>) {
    // Integral values in range are integers.
    if f.fract() == 0.0 && f.is_finite() {
        if f >= 0.0 && f <= u64::MAX as f64 {
            return head(0, f as u64, out);
        }
        if f < 0.0 && f >= -(2f64.powi(63)) {
            return head(1, (-1 - f as i64) as u64, out);
        }
    }
    if let Some(h) = f16_exact(f) {
        out.push(0xf9);
        out.extend_from_slice(&h.to_be_bytes());
    } else if (f as f32) as f64 == f || f.is_nan() {
        out.push(0xfa);
        out.extend_from_slice(&(f as f32).to_bits().to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&f.to_bits().to_be_bytes());
    }
}

/// `f` as IEEE half precision, when that is exact.
fn f16_exact(f: f64) -> Option<u16> {
    if f.is_nan() {
        return Some(0x7e00);
    }
    let sign: u16 = if f.is_sign_negative() { 0x8000 } else { 0 };
    let a = f.abs();
    if a.is_infinite() {
        return Some(sign | 0x7c00);
    }
    if a == 0.0 {
        return Some(sign);
    }
    // Subnormal: a = m × 2^-24, m < 1024.
    let m = a * 2f64.powi(24);
    if m < 1024.0 {
        return (m.fract() == 0.0).then_some(sign | m as u16);
    }
    let e = a.log2().floor() as i32;
    if !(-14..=15).contains(&e) {
        return None;
    }
    let frac = a / 2f64.powi(e) - 1.0;
    let mant = frac * 1024.0;
    (mant.fract() == 0.0 && mant < 1024.0).then(|| sign | (((e + 15) as u16) << 10) | mant as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(v: Value) -> String {
        let mut out = Vec::new();
        encode(&v, &mut out);
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(hex(json!(1.5)), "f93e00");
        assert_eq!(hex(json!(1.23)), "fb3ff3ae147ae147ae");
        assert_eq!(hex(json!(-0.0)), "00");
        assert_eq!(hex(json!({"z": 1, "aa": 2})), "a2617a0162616102");
        assert_eq!(hex(json!(10.0)), "0a");
        assert_eq!(hex(json!(-1)), "20");
        assert_eq!(hex(json!(100000.5)), "fa47c35040");
        assert_eq!(hex(json!(["a", null, true])), "836161f6f5");
        assert!(hex(json!("fractional-flagjack")).starts_with("73667261"));
    }
}
