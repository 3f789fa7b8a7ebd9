//! Header names and values that the flags step adds to request after request (`x-flag-*`
//! names, each variant's rendered value), kept for the life of the process.
//!
//! A header name or value made at run time holds a reference-counted buffer: adding it to a
//! request clones it and forwarding the request drops it, two atomic operations per header per
//! request. An interned one points at memory that is never freed, so adding it copies a
//! pointer. Interning is deduplicated (a reload that renders the same text again finds it) and
//! bounded: each text may be at most [`MAX_TEXT`] bytes, and past [`BUDGET`] bytes in total
//! nothing more is interned; what is not interned works as before.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// The longest text interned.
pub const MAX_TEXT: usize = 256;
/// The most bytes interned over the life of the process.
pub const BUDGET: usize = 1 << 20;

struct Interned {
    texts: HashSet<&'static [u8]>,
    bytes: usize,
}

static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(|| {
    Mutex::new(Interned {
        texts: HashSet::new(),
        bytes: 0,
    })
});

/// `text` for the life of the process, or `None` when it is too long or the budget is spent.
fn intern(text: &[u8]) -> Option<&'static [u8]> {
    if text.len() > MAX_TEXT {
        return None;
    }
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = interned.texts.get(text) {
        return Some(t);
    }
    if interned.bytes + text.len() > BUDGET {
        return None;
    }
    let t: &'static [u8] = Box::leak(text.to_vec().into_boxed_slice());
    interned.bytes += t.len();
    interned.texts.insert(t);
    Some(t)
}

/// `name`, interned when it is not one of the standard names (which are static already).
pub fn name(name: HeaderName) -> HeaderName {
    match intern(name.as_str().as_bytes()).and_then(|t| std::str::from_utf8(t).ok()) {
        // A name's text is lower case and valid, so `from_static` accepts it.
        Some(t) => HeaderName::from_static(t),
        None => name,
    }
}

/// `value`, interned.
pub fn value(value: HeaderValue) -> HeaderValue {
    match intern(value.as_bytes()) {
        Some(t) => HeaderValue::from_maybe_shared(Bytes::from_static(t)).unwrap_or(value),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_names_and_values_equal_the_originals_and_are_shared() {
        let n = name(HeaderName::from_static("x-flag-intern-test"));
        assert_eq!(n.as_str(), "x-flag-intern-test");
        let again = name(HeaderName::from_bytes(b"X-Flag-Intern-Test").unwrap());
        assert_eq!(again, n);
        // The same text, interned once: both point at the same bytes.
        assert_eq!(
            n.as_str().as_ptr(),
            again.as_str().as_ptr(),
            "a second intern finds the first"
        );
        let v = value(HeaderValue::from_static("{\"cols\":3}"));
        assert_eq!(v, "{\"cols\":3}");
        let w = value(HeaderValue::from_str("{\"cols\":3}").unwrap());
        assert_eq!(v.as_bytes().as_ptr(), w.as_bytes().as_ptr());
        // Too long to intern: returned as given.
        let long = "x".repeat(MAX_TEXT + 1);
        let l = HeaderValue::from_str(&long).unwrap();
        let ptr = l.as_bytes().as_ptr();
        assert_eq!(value(l).as_bytes().as_ptr(), ptr);
    }
}
