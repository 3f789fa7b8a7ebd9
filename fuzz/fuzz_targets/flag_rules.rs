//! Flag documents and targeting rules from arbitrary JSON: parsing either loads the set or
//! returns an error, and evaluating any flag against any context answers with a decision
//! (an error code at worst), for each `fractional` version: an error carries no value, and a
//! value is the one its variant names.
#![no_main]

use attache_filters::flags::eval::{FlagSet, Kind};
use attache_filters::flags::logic::FractionalVersion;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    // Input: `<flags document or targeting rule> 0xff <context>`.
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let Some(Ok(doc)) = parts.next().map(serde_json::from_slice::<Value>) else {
        return;
    };
    let context = parts
        .next()
        .and_then(|c| serde_json::from_slice::<Value>(c).ok())
        .unwrap_or_else(|| json!({"targetingKey": "user-1", "plan": "pro"}));
    // The document as given, and the value as one flag's targeting.
    let wrapped = json!({"flags": {"f": {
        "state": "ENABLED",
        "variants": {"a": "a", "b": true, "c": 1, "d": {"x": [1]}},
        "defaultVariant": "a",
        "targeting": doc.clone(),
    }}});
    for d in [doc, wrapped] {
        let Ok(set) = FlagSet::parse(&d) else {
            continue;
        };
        let keys: Vec<String> = set.flags.keys().cloned().collect();
        for key in keys.iter().take(8) {
            for v in [
                FractionalVersion::V1,
                FractionalVersion::V2,
                FractionalVersion::V3,
            ] {
                for kind in [
                    Kind::Any,
                    Kind::Boolean,
                    Kind::String,
                    Kind::Integer,
                    Kind::Float,
                    Kind::Object,
                ] {
                    let r = set.evaluate(key, &context, 1_700_000_000, kind, v);
                    // An error carries no value; a value is the named variant's (typed
                    // requests may only narrow an integer from a float).
                    match (&r.error, &r.value, &r.variant) {
                        (Some(_), value, _) => assert!(value.is_none(), "an error with a value"),
                        (None, Some(value), Some(variant)) if kind == Kind::Any => {
                            assert_eq!(Some(value), set.flags[key].variants.find(variant).map(|(_, _, v)| v));
                        }
                        (None, Some(_), None) => panic!("a value with no variant"),
                        _ => {}
                    }
                }
            }
        }
    }
});
