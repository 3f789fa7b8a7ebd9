//! `Idempotency-Key` field lines and CloudEvents identities from arbitrary bytes: the key is
//! refused or is 1 to 255 visible ASCII characters; a quoted key and the same bare key are one
//! key; a CloudEvents request (binary `ce-source`/`ce-id` lines, or a structured JSON body) is
//! refused, a batch, or an identity, never a panic.
#![no_main]

use attache_filters::idempotency::cloudevents::{Identity, identity};
use attache_filters::idempotency::key::key;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Input: `flags 0xff line [0xff second line]`; flags bit 0: strict sf, bit 1: CloudEvents
    // structured mode (the rest is the body), bit 2: an alias header carries the line.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|b| *b == 0xff);
    let line = parts.next().unwrap_or_default();
    let second = parts.next();
    let name = HeaderName::from_static("idempotency-key");
    let alias = HeaderName::from_static("x-idempotency-key");
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::from_bytes(line) else {
        return;
    };
    headers.append(if flags & 4 != 0 { &alias } else { &name }, value.clone());
    if let Some(Ok(v)) = second.map(HeaderValue::from_bytes) {
        headers.append(&name, v);
    }
    let names = [name.clone(), alias];
    match key(&headers, &names, flags & 1 != 0) {
        Ok(k) => {
            assert!((1..=255).contains(&k.len()), "{k:?}");
            assert!(k.iter().all(|b| (0x21..=0x7e).contains(b)), "{k:?}");
            // The bare form of a key without quotes, commas or backslashes is the same key.
            if second.is_none() && flags & 1 == 0 && !k.iter().any(|b| b"\"\\,".contains(b)) {
                let mut bare = HeaderMap::new();
                bare.insert(&name, HeaderValue::from_bytes(&k).expect("visible ASCII"));
                assert_eq!(key(&bare, &names, false).as_ref(), Ok(&k));
            }
        }
        Err(_) => {}
    }

    let mut ce = HeaderMap::new();
    if flags & 2 != 0 {
        ce.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
    } else {
        ce.insert("ce-source", value);
        if let Some(Ok(v)) = second.map(HeaderValue::from_bytes) {
            ce.insert("ce-id", v);
        }
    }
    if let Ok(Identity::Event(k)) = identity(&ce, rest) {
        assert!(!k.is_empty());
    }
});
