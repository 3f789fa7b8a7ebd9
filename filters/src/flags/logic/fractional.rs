//! `fractional` (§4.1): bucketing a key by murmur3 into weighted variants, as flagd does.

use std::borrow::Cow;

use serde_json::Value;

use super::data::Scope;
use super::values::NULL;
use super::{FractionalVersion, Rule};
use crate::flags::murmur3::murmur3_x86_32;

/// `fractional`: when its operands are constants, as they nearly always are (the shorthand
/// that buckets flagKey + targetingKey), they are read in place, and the chosen bucket's
/// variant is borrowed from the rule.
pub(super) fn fractional_op<'r>(args: &'r [Rule], s: &Scope<'r>) -> Cow<'r, Value> {
    const ON_STACK: usize = 8;
    if args.len() <= ON_STACK {
        let mut v: [&'r Value; ON_STACK] = [&NULL; ON_STACK];
        let mut constant = true;
        for (slot, r) in v.iter_mut().zip(args) {
            match r {
                Rule::Literal(x) => *slot = x,
                _ => constant = false,
            }
        }
        if constant {
            return fractional(&v[..args.len()], s)
                .and_then(|i| bucket(v[i]))
                .map_or(Cow::Owned(Value::Null), |(variant, _)| {
                    Cow::Borrowed(variant)
                });
        }
    }
    let v: Vec<Cow<'r, Value>> = args.iter().map(|r| r.eval_ref(s)).collect();
    let picked = fractional(&v, s).and_then(|i| bucket(&v[i]).map(|(variant, _)| variant));
    Cow::Owned(picked.cloned().unwrap_or(Value::Null))
}

/// §4.1. `args` are the evaluated operands; the answer is the index of the chosen bucket
/// among them (`None`: the operation's value is null).
pub(super) fn fractional<V: std::ops::Deref<Target = Value>>(
    args: &[V],
    s: &Scope<'_>,
) -> Option<usize> {
    let first = args.first()?;
    if s.fractional == FractionalVersion::V3 {
        let mut key = Vec::new();
        // Where the buckets start among the operands.
        let buckets = match &**first {
            Value::Array(_) => {
                let (Some(flag), Some(Value::String(target))) =
                    (s.flag_key(), s.data.get("targetingKey"))
                else {
                    return None;
                };
                crate::flags::cbor::encode(
                    &Value::Array(vec![
                        Value::String(flag.into_owned()),
                        Value::String(target.clone()),
                    ]),
                    &mut key,
                );
                0
            }
            Value::Null => return None,
            first => {
                crate::flags::cbor::encode(first, &mut key);
                1
            }
        };
        return buckets_pick(murmur3_x86_32(&key, 0), &args[buckets..], s.fractional)
            .map(|i| i + buckets);
    }
    // v1 and v2: a string first operand is the bucketing value; otherwise flagKey +
    // targetingKey, concatenated (on the stack when short, as they nearly always are).
    if let Value::String(k) = &**first {
        return buckets_pick(murmur3_x86_32(k.as_bytes(), 0), &args[1..], s.fractional)
            .map(|i| i + 1);
    }
    let (Some(flag), Some(Value::String(target))) = (s.flag_key(), s.data.get("targetingKey"))
    else {
        return None;
    };
    if target.is_empty() {
        return None;
    }
    let skip = usize::from(first.is_null());
    let h = default_bucketing_hash(flag.as_bytes(), target.as_bytes());
    buckets_pick(h, &args[skip..], s.fractional).map(|i| i + skip)
}

/// flagd's default bucketing value, flag key + targeting key, hashed (v1 and v2); the two are
/// joined on the stack when short, as they nearly always are.
pub(crate) fn default_bucketing_hash(flag: &[u8], target: &[u8]) -> u32 {
    let len = flag.len() + target.len();
    let mut short = [0u8; 128];
    if len <= short.len() {
        short[..flag.len()].copy_from_slice(flag);
        short[flag.len()..len].copy_from_slice(target);
        murmur3_x86_32(&short[..len], 0)
    } else {
        murmur3_x86_32(&[flag, target].concat(), 0)
    }
}

/// One `[variant, weight]` bucket: `None` when malformed (which makes the whole operation
/// null). A missing or null weight is 1; a negative one is 0.
pub(crate) fn bucket(b: &Value) -> Option<(&Value, u64)> {
    let Value::Array(pair) = b else {
        return None;
    };
    let variant = pair.first()?;
    if matches!(variant, Value::Array(_) | Value::Object(_)) {
        return None;
    }
    let weight = match pair.get(1) {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|w| w <= 2_147_483_647) => {
            n.as_u64().unwrap_or_default()
        }
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(-1.0);
            if f.fract() != 0.0 || f > 2_147_483_647.0 {
                return None;
            }
            if f < 0.0 { 0 } else { f as u64 }
        }
        Some(_) => return None,
    };
    Some((variant, weight))
}

/// The index of the bucket whose share of the weights holds hash `h`; `None` when a bucket
/// is malformed or the weights are out of range.
pub(super) fn buckets_pick<V: std::ops::Deref<Target = Value>>(
    h: u32,
    buckets: &[V],
    version: FractionalVersion,
) -> Option<usize> {
    // Weights parsed once, onto the stack for the usual handful of buckets.
    let mut first = [0u64; 8];
    let mut total = 0u64;
    for (i, b) in buckets.iter().enumerate() {
        let (_, w) = bucket(b)?;
        total += w;
        if let Some(slot) = first.get_mut(i) {
            *slot = w;
        }
    }
    if buckets.is_empty() || total == 0 || total > 2_147_483_647 {
        return None;
    }
    // Every bucket was checked above, so each has a weight here.
    let weights = buckets.iter().enumerate().map(|(i, b)| match first.get(i) {
        Some(w) => *w,
        None => bucket(b).map_or(0, |(_, w)| w),
    });
    pick(h, weights, total, version)
}

/// The index of the bucket, among buckets of `weights` (summing to `total`, at most
/// 2³¹ − 1), whose share holds hash `h`.
pub(crate) fn pick(
    h: u32,
    weights: impl Iterator<Item = u64>,
    total: u64,
    version: FractionalVersion,
) -> Option<usize> {
    match version {
        FractionalVersion::V2 | FractionalVersion::V3 => {
            let at = (u64::from(h) * total) >> 32;
            let mut end = 0;
            for (i, w) in weights.enumerate() {
                end += w;
                if at < end {
                    return Some(i);
                }
            }
            None
        }
        FractionalVersion::V1 => {
            let b = f64::from((h as i32).unsigned_abs()) / 2_147_483_647.0 * 100.0;
            let mut end = 0.0;
            for (i, w) in weights.enumerate() {
                end += 100.0 * w as f64 / total as f64;
                if b < end {
                    return Some(i);
                }
            }
            None
        }
    }
}
