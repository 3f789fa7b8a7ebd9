//! Flag evaluation benchmarks (`specs/feature-flags.md` §13):
//! `cargo bench -p attache-filters --bench flags`.
//!
//! Targets: a static flag under 200 ns; a three-condition targeting rule under 2 µs;
//! `fractional` under 1 µs; loading (parsing, compiling and swapping in) 1,000 flags under
//! 50 ms.
//!
//! A broken flag document fails the bench, and each benchmark first asserts the decision it
//! is about to time, so a bench that stopped measuring its path (a flag that no longer loads,
//! a rule that errors, a step that delivers nothing) fails instead of timing the wrong thing.
//! `.ci/run` runs every bench once in test mode (`cargo test --benches`).

// A failed `expect` is how a bench reports a broken setup.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use attache_filters::flags::eval::{FlagSet, Kind};

// The proxy's allocator, so allocation costs are the proxy's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use attache_filters::flags::logic::FractionalVersion;
use attache_filters::flags::store::FlagStore;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn set() -> FlagSet {
    FlagSet::parse(&json!({
        "flags": {
            "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "targeted": {
                "state": "ENABLED",
                "variants": {"beta": "beta", "stable": "stable"},
                "defaultVariant": "stable",
                "targeting": {"if": [{"and": [
                    {"ends_with": [{"var": "email"}, "@acme.com"]},
                    {"in": [{"var": "plan"}, ["pro", "enterprise"]]},
                    {">=": [{"var": "age"}, 18]}
                ]}, "beta", null]}
            },
            "split": {
                "state": "ENABLED",
                "variants": {"a": "a", "b": "b", "c": "c"},
                "defaultVariant": "a",
                "targeting": {"fractional": [["a", 50], ["b", 30], ["c", 20]]}
            }
        }
    }))
    .expect("the bench's flag document loads")
}

fn flags(c: &mut Criterion) {
    let set = set();
    let ctx = json!({
        "targetingKey": "user-42",
        "email": "dev@acme.com",
        "plan": "pro",
        "age": 31,
        "tenant": "acme",
        "country": "FR"
    });
    let now = 1_795_000_000;
    // What each benchmark measures: a static flag's default, the rule's match, a bucket.
    let decided = |key: &str, kind: Kind| {
        let d = set.decide(key, &ctx, now, kind, FractionalVersion::V2);
        (d.variant.map(str::to_owned), d.reason.as_str().to_owned())
    };
    assert_eq!(
        decided("static", Kind::Boolean),
        (Some("on".into()), "STATIC".into())
    );
    assert_eq!(
        decided("targeted", Kind::String),
        (Some("beta".into()), "TARGETING_MATCH".into())
    );
    let (split, reason) = decided("split", Kind::String);
    assert!(
        split.is_some() && reason == "TARGETING_MATCH",
        "{split:?} {reason}"
    );
    c.bench_function("static flag", |b| {
        b.iter(|| {
            black_box(set.decide(
                black_box("static"),
                &ctx,
                now,
                Kind::Boolean,
                FractionalVersion::V2,
            ))
        })
    });
    c.bench_function("three-condition targeting", |b| {
        b.iter(|| {
            black_box(set.decide(
                black_box("targeted"),
                &ctx,
                now,
                Kind::String,
                FractionalVersion::V2,
            ))
        })
    });
    c.bench_function("fractional", |b| {
        b.iter(|| {
            black_box(set.decide(
                black_box("split"),
                &ctx,
                now,
                Kind::String,
                FractionalVersion::V2,
            ))
        })
    });
}

/// 1,000 flags, a third static, a third targeted, a third fractional.
fn thousand() -> serde_json::Value {
    let mut flags = serde_json::Map::new();
    for i in 0..1000 {
        let targeting = match i % 3 {
            0 => json!({}),
            1 => json!({"if": [{"and": [
                {"ends_with": [{"var": "email"}, "@acme.com"]},
                {"in": [{"var": "plan"}, ["pro", "enterprise"]]},
                {"sem_ver": [{"var": "app_version"}, ">=", "2.1.0"]}
            ]}, "on", null]}),
            _ => json!({"fractional": [["on", 10], ["off", 90]]}),
        };
        flags.insert(
            format!("flag-{i}"),
            json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                   "defaultVariant": "off", "targeting": targeting}),
        );
    }
    json!({ "flags": flags })
}

fn reload(c: &mut Criterion) {
    let doc = thousand();
    let store = FlagStore::new(1);
    store.update(0, &doc).expect("1,000 flags load");
    assert_eq!(store.snapshot().flags.len(), 1000);
    c.bench_function("load 1,000 flags", |b| {
        b.iter(|| black_box(store.update(0, black_box(&doc))))
    });
}

/// The whole request step as the proxy runs it: 10 flags (6 static, 3 targeting rules, one
/// fractional; `bench/flags-10.json`) evaluated from a request's headers and delivered as
/// headers and baggage.
fn request_step(c: &mut Criterion) {
    use attache_filters::flags::context::{ContextRules, Source};
    use attache_filters::flags::request::FlagsLayer;
    use attache_filters::flags::settings::{
        DeliverFlags, Delivery, EventSettings, Settings, Trust,
    };
    use attache_filters::metrics::Metrics;
    use http::{HeaderName, Request};
    use std::sync::Arc;
    use tower::{Layer, Service};

    // The same 10 flags as the end-to-end scenario, bench/flags.sh.
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../bench/flags-10.json")).expect("flags-10.json");
    let store = Arc::new(FlagStore::new(1));
    store.update(0, &doc).expect("flags-10.json loads");
    assert_eq!(store.snapshot().flags.len(), 10);
    let keys = ["s1", "s2", "s3", "s4", "s5", "s6", "t1", "t2", "t3", "f1"];
    let request = || {
        Request::get("/cart?x=1")
            .header("host", "shop")
            .header("x-user-id", "user-42")
            .header("x-plan", "pro")
            .header("baggage", "tenant=acme")
            .body(())
            .expect("a request")
    };
    // The floor: building the request and dropping the response, with no step.
    c.bench_function("request step, none (building the request only)", |b| {
        let mut svc = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(req))
        });
        b.iter(|| black_box(svc.call(request())))
    });
    for (name, combined) in [
        ("request step, 10 flags", None),
        (
            "request step, 10 flags + x-flags",
            Some(HeaderName::from_static("x-flags")),
        ),
    ] {
        let settings = Settings {
            store: store.clone(),
            fractional: FractionalVersion::V2,
            context: ContextRules {
                targeting_key: vec![Source::Header(HeaderName::from_static("x-user-id"))],
                attributes: vec![(
                    Source::Header(HeaderName::from_static("x-plan")),
                    vec!["plan".to_owned()],
                )],
                static_attributes: serde_json::Map::new(),
            },
            delivery: Some(Delivery {
                flags: DeliverFlags::Keys(
                    keys.iter()
                        .map(|k| {
                            let name = HeaderName::from_bytes(format!("x-flag-{k}").as_bytes());
                            (Arc::from(*k), name.ok())
                        })
                        .collect(),
                ),
                header_prefix: Some("x-flag-".into()),
                header_name: |p, k| format!("{p}{k}"),
                combined,
                baggage: true,
                defaults: Default::default(),
            }),
            trust: Trust::Never,
            routes: Vec::new(),
            events: EventSettings {
                enabled: true,
                include_value: false,
                include_context_id: false,
            },
            metrics: Arc::new(Metrics::new()),
            baggage: Default::default(),
            peer_of: |_| Some(std::net::SocketAddr::from(([10, 0, 0, 1], 4000))),
            clock: || 1_795_000_000,
        };
        let mut svc =
            FlagsLayer::new(settings).layer(tower::service_fn(|req: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(req))
            }));
        // The step delivers every flag to the app before it is timed, but the disabled `s6`,
        // which has no value to deliver.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let delivered = match rt.block_on(svc.call(request())) {
            Ok(res) => res.into_body(),
            Err(never) => match never {},
        };
        for k in keys {
            assert_eq!(
                delivered
                    .headers()
                    .contains_key(format!("x-flag-{k}").as_str()),
                k != "s6",
                "{name}: x-flag-{k}: {:?}",
                delivered.headers()
            );
        }
        assert!(
            delivered
                .headers()
                .get("baggage")
                .is_some_and(|b| b.to_str().is_ok_and(|b| b.contains("flag.t1="))),
            "{name}: no flag baggage"
        );
        c.bench_function(name, |b| b.iter(|| black_box(svc.call(request()))));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = flags, reload, request_step
}
criterion_main!(benches);
