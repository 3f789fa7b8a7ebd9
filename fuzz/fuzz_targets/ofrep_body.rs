//! OFREP requests from arbitrary bodies and paths, against the bench's flags: every answer is
//! a JSON document with a status OFREP defines (200, 400, 404, 405, 413), never a panic.
#![no_main]

use std::sync::{Arc, LazyLock};

use attache_filters::flags::logic::FractionalVersion;
use attache_filters::flags::ofrep::Ofrep;
use attache_filters::flags::context::ContextRules;
use attache_filters::flags::settings::EventSettings;
use attache_filters::flags::store::FlagStore;
use attache_filters::metrics::Metrics;
use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const BENCH_FLAGS: &str = include_str!("../../bench/flags-10.json");

static OFREP: LazyLock<Ofrep> = LazyLock::new(|| {
    let store = Arc::new(FlagStore::new(1));
    let doc: Value = serde_json::from_str(BENCH_FLAGS).expect("bench flags parse");
    store.update(0, &doc).expect("bench flags load");
    Ofrep {
        store,
        fractional: FractionalVersion::default(),
        context: ContextRules::default(),
        metrics: Metrics::new().family(),
        max_body_bytes: 1 << 20,
        clock: || 1_700_000_000,
        events: EventSettings::default(),
    }
});

fuzz_target!(|data: &[u8]| {
    // Input: `path 0xff body`; the path goes after the OFREP prefix.
    let (path, body) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(uri) = format!("/ofrep/v1/evaluate/flags{path}").parse::<Uri>() else {
        return;
    };
    let res = OFREP.respond(
        &Method::POST,
        &uri,
        &HeaderMap::new(),
        Some(Bytes::copy_from_slice(body)),
    );
    let status = res.status().as_u16();
    assert!(
        [200, 400, 404, 405, 413].contains(&status),
        "status {status}"
    );
    let bytes = futures_executor::block_on(res.into_body().collect())
        .expect("a body made in memory")
        .to_bytes();
    let doc: Value = serde_json::from_slice(&bytes).expect("the answer is JSON");
    assert!(doc.is_object(), "{doc}");
});
