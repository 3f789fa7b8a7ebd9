//! SPIFFE IDs as a client certificate's URI SAN carries them, and ID patterns as a config
//! writes them: parsed or refused, never a panic. A valid ID holds no `*`, is at most 2048
//! bytes, starts with `spiffe://` and its trust domain; as a pattern it matches itself, and a
//! pattern whose last segment is made `*` still matches it.
#![no_main]

use attache_filters::authz::spiffe::{IdPattern, SpiffeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, pattern) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(p) = IdPattern::parse(pattern)
        && let Ok(parsed) = SpiffeId::parse(id)
    {
        let _ = p.matches(&parsed);
    }
    let Ok(parsed) = SpiffeId::parse(id) else {
        return;
    };
    assert!(!id.contains('*') && id.len() <= 2048, "{id:?}");
    let td = parsed.trust_domain();
    assert!(id.starts_with(&format!("spiffe://{td}")), "{id:?}");
    let own = IdPattern::parse(id).expect("an ID is a pattern");
    assert!(own.matches(&parsed), "{id:?}");
    if let Some((head, _)) = id.rsplit_once('/')
        && head.len() > "spiffe://".len() + td.len()
    {
        let wild = IdPattern::parse(&format!("{head}/*")).expect("one-segment wildcard");
        assert!(wild.matches(&parsed), "{id:?}");
    }
});
