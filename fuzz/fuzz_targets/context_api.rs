//! Context API requests from arbitrary bytes (method, target, headers, body): every one is an
//! operation or a refusal with a problem type, never a panic; names that pass are within the
//! spec's grammar.
#![no_main]

use std::time::Duration;

use attache_filters::context::api::{Rules, Target, parse, parse_batch, target};
use attache_filters::context::names;
use attache_filters::context::op::TtlMode;
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Input: `method 0xff target 0xff if-match 0xff body`.
    let mut parts = data.splitn(4, |b| *b == 0xff);
    let (Some(method), Some(uri), Some(if_match)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let body = parts.next().unwrap_or_default();
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(method),
        std::str::from_utf8(uri).map(str::to_owned),
    ) else {
        return;
    };
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri.as_str(), None),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(if_match) {
        headers.insert(http::header::IF_MATCH, v.clone());
        headers.insert("attache-fence", v);
    }
    let rules = Rules {
        max_attempts: 5,
        dedupe_window: Duration::from_secs(60),
        max_message_bytes: 256 * 1024,
        max_ttl: Duration::from_secs(30 * 86_400),
        default_ttl: None,
        ttl_mode: TtlMode::Create,
        max_members_per_request: 1000,
    };
    match target(path) {
        Ok(Target::Batch(ctx)) => {
            let _ = parse_batch(ctx, body, &rules, &|| "id".to_owned());
        }
        Ok(Target::Object { .. }) => {
            if let Ok(p) = parse(&method, path, query, &headers, body, &rules, "lease".into()) {
                assert!(names::context(&p.ctx).is_ok(), "{:?}", p.ctx);
            }
        }
        _ => {}
    }
});
