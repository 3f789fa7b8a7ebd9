//! Request paths from arbitrary bytes, as authorization normalizes them (the app receives the
//! same path): refused or normalized, never a panic; a normalized path starts with `/`, has no
//! empty or dot segment inside, carries no encoded unreserved byte, and normalizing it again
//! changes nothing. Path patterns parse or are refused, and match what they were given without
//! a panic.
#![no_main]

use attache_filters::authz::path::{PathPattern, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, pattern) = text.split_once('\n').unwrap_or((text, "/**"));
    if let Ok(normal) = normalize(path) {
        assert!(normal.starts_with('/'), "{normal:?}");
        let inner = normal.trim_end_matches('/');
        assert!(
            inner.split('/').skip(1).all(|s| !s.is_empty() && s != "." && s != ".."),
            "{path:?} -> {normal:?}"
        );
        let again = normalize(&normal).expect("a normal path stays acceptable");
        assert_eq!(again, normal, "{path:?}");
        if let Ok(p) = PathPattern::parse(pattern) {
            let _ = p.matches(&normal);
        }
    }
});
