//! The inbound flags step on arbitrary requests: a targeting key from a header, a cookie or
//! the query string, attributes from headers, baggage and the query, forged `x-flag-*`
//! headers and `flag.` baggage members, against the bench's flags or an arbitrary flag
//! document. The step always forwards the request (no panic), and what it forwards is well
//! formed: every `x-flag-*` header is one of the snapshot's flags, the combined header is a
//! JSON object, and the baggage parses.
#![no_main]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};

use attache_filters::flags::logic::FractionalVersion;
use attache_filters::flags::context::{ContextRules, Source};
use attache_filters::flags::request::FlagsLayer;
use attache_filters::flags::settings::{DeliverFlags, Delivery, EventSettings, Settings, Trust};
use attache_filters::flags::store::FlagStore;
use attache_filters::metrics::Metrics;
use attache_filters::trace_context::baggage;
use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::{Layer, Service, ServiceExt};

const BENCH_FLAGS: &str = include_str!("../../bench/flags-10.json");

static BENCH_STORE: LazyLock<Arc<FlagStore>> = LazyLock::new(|| {
    let store = Arc::new(FlagStore::new(1));
    let doc: Value = serde_json::from_str(BENCH_FLAGS).expect("bench flags parse");
    store.update(0, &doc).expect("bench flags load");
    store
});
static METRICS: LazyLock<Arc<Metrics>> = LazyLock::new(|| Arc::new(Metrics::new()));

/// §7's header name for a flag: lower case, characters outside `[a-z0-9-]` as `-`.
fn header_name(prefix: &str, key: &str) -> String {
    format!("{prefix}{key}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // Input: `doc 0xff user 0xff cookie 0xff query 0xff baggage 0xff plan 0xff forged 0xff t`.
    let parts: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    // The bench's flags are loaded once; a document in the input gets a store of its own.
    let store = match serde_json::from_slice::<Value>(part(0)) {
        Ok(doc) if doc.get("flags").is_some() => {
            let store = Arc::new(FlagStore::new(1));
            if store.update(0, &doc).is_err() {
                return;
            }
            store
        }
        _ => BENCH_STORE.clone(),
    };
    let keys: Vec<String> = store.current().flags.keys().cloned().collect();
    let trust = match part(7).first() {
        Some(b) if b % 2 == 1 => Trust::Always,
        _ => Trust::Never,
    };
    let settings = Settings {
        store,
        fractional: FractionalVersion::V2,
        context: ContextRules {
            targeting_key: vec![
                Source::Header(HeaderName::from_static("x-user-id")),
                Source::Cookie("uid".into()),
                Source::Query("uid".into()),
            ],
            attributes: vec![
                (
                    Source::Header(HeaderName::from_static("x-plan")),
                    vec!["plan".into()],
                ),
                (
                    Source::Baggage("plan".into()),
                    vec!["user".into(), "plan".into()],
                ),
                (Source::Query("q".into()), vec!["q".into()]),
            ],
            static_attributes: serde_json::Map::new(),
        },
        delivery: Some(Delivery {
            flags: DeliverFlags::All,
            header_prefix: Some("x-flag-".into()),
            header_name,
            combined: Some(HeaderName::from_static("x-flags")),
            baggage: true,
            defaults: HashMap::new(),
        }),
        trust,
        routes: Vec::new(),
        events: EventSettings {
            enabled: true,
            include_value: true,
            include_context_id: true,
        },
        metrics: METRICS.clone(),
        baggage: baggage::Limits::default(),
        peer_of: |_| None,
        clock: || 1_700_000_000,
    };
    let mut uri = String::from("/p");
    if let Ok(q) = std::str::from_utf8(part(3)) {
        uri.push('?');
        uri.push_str(q);
    }
    let mut req = Request::builder().uri(uri.as_str());
    if req.uri_ref().is_none() {
        req = Request::builder().uri("/p");
    }
    let mut req = req.body(()).expect("a request");
    let h = req.headers_mut();
    let sent_baggage: Vec<HeaderValue>;
    for (name, i) in [
        ("x-user-id", 1),
        ("cookie", 2),
        ("baggage", 4),
        ("x-plan", 5),
        ("x-flag-s1", 6),
        ("x-flags", 6),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(part(i)) {
            h.append(HeaderName::from_static(name), v);
        }
    }

    sent_baggage = req.headers().get_all("baggage").iter().cloned().collect();
    let inner = tower::service_fn(|req: Request<()>| async move { Ok::<_, Infallible>(req) });
    let mut svc = FlagsLayer::new(settings).layer(
        tower::util::MapResponseLayer::new(|r: Request<()>| http::Response::new(r)).layer(inner),
    );
    let Ok(forwarded) = futures_executor::block_on(async { svc.ready().await?.call(req).await });
    let forwarded = forwarded.into_body();

    let names: Vec<String> = keys.iter().map(|k| header_name("x-flag-", k)).collect();
    for name in forwarded.headers().keys() {
        if name.as_str().starts_with("x-flag-") {
            assert!(
                names.iter().any(|n| n == name.as_str()),
                "forged or unknown header {name} forwarded"
            );
        }
    }
    if let Some(c) = forwarded.headers().get("x-flags") {
        let v: Value = serde_json::from_slice(c.as_bytes()).expect("x-flags is JSON");
        assert!(v.is_object());
    }
    // Baggage the step rewrote is valid; baggage it left alone is the client's, as sent.
    let out: Vec<HeaderValue> = forwarded
        .headers()
        .get_all("baggage")
        .iter()
        .cloned()
        .collect();
    if out != sent_baggage {
        assert!(out.len() <= 1, "one baggage header when rewritten");
        for m in baggage::members(forwarded.headers()) {
            assert!(m.is_ok(), "rewritten baggage parses: {out:?}");
        }
    }
});
