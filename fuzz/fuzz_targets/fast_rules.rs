//! The compiled form of targeting rules (`flags::fast`) against the general evaluator: for an
//! arbitrary rule and a flat context of arbitrary JSON values, when the rule compiles, both
//! make the same decision (variant, value, reason, error), for `fractional` v1 and v2.
#![no_main]

use std::borrow::Cow;

use attache_filters::flags::eval::{FlagSet, Kind};
use attache_filters::flags::fast::Fast;
use attache_filters::flags::logic::{Data, Field, Flat, FractionalVersion, Slot};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const LAYOUT: [&str; 5] = ["targetingKey", "request.method", "plan", "user.tier", "n"];

fuzz_target!(|data: &[u8]| {
    // Input: `<rule> 0xff <context: a JSON array of up to five values, null for absent>`.
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let Some(Ok(rule)) = parts.next().map(serde_json::from_slice::<Value>) else {
        return;
    };
    let values: Vec<Option<Value>> = parts
        .next()
        .and_then(|c| serde_json::from_slice::<Vec<Value>>(c).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|v| (!v.is_null()).then_some(v))
        .chain(std::iter::repeat(None))
        .take(LAYOUT.len())
        .collect();
    let doc = json!({"flags": {"f": {"state": "ENABLED", "defaultVariant": "a", "targeting": rule,
        "variants": {"a": "A", "b": {"x": 1}, "true": true, "1": 1, "pro": "pro"}}}});
    let Ok(set) = FlagSet::parse(&doc) else {
        return;
    };
    let f = &set.flags["f"];
    let Some(Ok(rule)) = &f.targeting else {
        return;
    };
    let layout: Vec<String> = LAYOUT.iter().map(|p| p.to_string()).collect();
    let fields: Vec<Field<'_>> = layout
        .iter()
        .zip(&values)
        .map(|(path, v)| Field {
            path,
            value: v.as_ref().map(Cow::Borrowed),
        })
        .collect();
    let slots = Slot::of_rule(rule, &layout);
    for version in [FractionalVersion::V1, FractionalVersion::V2] {
        let Some(fast) = Fast::compile(rule, f, &layout, version) else {
            continue;
        };
        let general = f.decide_in(
            "f",
            Data::Fields(Flat {
                fields: &fields,
                slots: &slots,
            }),
            0,
            Kind::Any,
            version,
        );
        assert_eq!(
            fast.decide("f", f, &fields),
            general,
            "{rule:?} on {values:?}"
        );
    }
});
