//! Percent-encoding (RFC 3986 §2.1) over the `percent-encoding` crate: baggage values (W3C
//! Baggage §3.2.1.1), query strings and CloudEvents attributes are all read and written here.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode, percent_encode};

/// The bytes a W3C baggage value must encode: everything outside `baggage-octet` (controls,
/// space, `"`, `,`, `;`, `\` and all non-ASCII bytes) and `%` itself.
pub const BAGGAGE: &AsciiSet = &BAGGAGE_ENCODED.add(b'%');

/// [`BAGGAGE`] without `%`: for values that are percent-encoded already and only need their
/// stray bytes escaped.
pub const BAGGAGE_ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b',').add(b';').add(b'\\');

/// Decodes every `%XX`; an escape that is not two hex digits stays as written.
pub fn decode(value: &[u8]) -> Cow<'_, [u8]> {
    percent_decode(value).into()
}

/// Decodes `s` to text (and `+` as a space in query strings, `plus`); an invalid escape stays
/// as written and invalid UTF-8 is replaced.
pub fn decode_str(s: &str, plus: bool) -> String {
    if plus && s.contains('+') {
        let spaced = s.replace('+', " ");
        return percent_decode(spaced.as_bytes())
            .decode_utf8_lossy()
            .into_owned();
    }
    percent_decode(s.as_bytes())
        .decode_utf8_lossy()
        .into_owned()
}

/// Decodes `value`, refusing an escape that is not `%` and two hex digits.
pub fn decode_strict(value: &[u8]) -> Option<Vec<u8>> {
    let mut rest = value;
    while let Some(i) = rest.iter().position(|b| *b == b'%') {
        match rest.get(i + 1..i + 3) {
            Some([h, l]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => rest = &rest[i + 3..],
            _ => return None,
        }
    }
    Some(percent_decode(value).collect())
}

/// Appends `value` to `out`, each byte of `set` as `%XX` (upper-case digits).
pub fn encode_into(value: &[u8], set: &'static AsciiSet, out: &mut String) {
    out.extend(percent_encode(value, set));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baggage_values_encode_outside_the_octets_and_decode_back() {
        let mut s = String::new();
        encode_into("v 1,é%;\"\\\x7f~".as_bytes(), BAGGAGE, &mut s);
        assert_eq!(s, "v%201%2C%C3%A9%25%3B%22%5C%7F~");
        assert_eq!(decode(s.as_bytes()), "v 1,é%;\"\\\x7f~".as_bytes());
        let mut s = String::new();
        encode_into(b"a%20b c", BAGGAGE_ENCODED, &mut s);
        assert_eq!(s, "a%20b%20c");
    }

    #[test]
    fn invalid_escapes_stay_or_are_refused() {
        assert_eq!(decode_str("a%20b%2", false), "a b%2");
        assert_eq!(decode_str("a%zzb", false), "a%zzb");
        assert_eq!(decode_str("a+b%2B", true), "a b+");
        assert_eq!(decode_str("a+b", false), "a+b");
        assert_eq!(decode_strict(b"a%41%2f"), Some(b"aA/".to_vec()));
        assert_eq!(decode_strict(b"a%4"), None);
        assert_eq!(decode_strict(b"a%g1"), None);
        assert_eq!(decode_strict(b"%"), None);
    }
}
