//! Hex digits: trace and span ids (W3C and B3 accept lowercase only, Jaeger either case), and
//! digests and ids written for logs and ETags. attache's one hex codec.

fn lower(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn any_case(b: u8) -> Option<u8> {
    lower(b.to_ascii_lowercase())
}

pub fn lower_byte(s: &[u8]) -> Option<u8> {
    match s {
        [h, l] => Some(lower(*h)? << 4 | lower(*l)?),
        _ => None,
    }
}

/// Two digits of either case.
pub fn any_case_byte(s: &[u8]) -> Option<u8> {
    match s {
        [h, l] => Some(any_case(*h)? << 4 | any_case(*l)?),
        _ => None,
    }
}

/// Exactly 16 lowercase digits.
pub fn lower_u64(s: &[u8]) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    s.iter()
        .try_fold(0u64, |acc, b| Some(acc << 4 | u64::from(lower(*b)?)))
}

/// Exactly 32 lowercase digits.
pub fn lower_u128(s: &[u8]) -> Option<u128> {
    if s.len() != 32 {
        return None;
    }
    s.iter()
        .try_fold(0u128, |acc, b| Some(acc << 4 | u128::from(lower(*b)?)))
}

/// 1 to 16 digits of either case, left-padded.
pub fn any_case_u64(s: &[u8]) -> Option<u64> {
    if !(1..=16).contains(&s.len()) {
        return None;
    }
    s.iter()
        .try_fold(0u64, |acc, b| Some(acc << 4 | u64::from(any_case(*b)?)))
}

/// 1 to 32 digits of either case, left-padded.
pub fn any_case_u128(s: &[u8]) -> Option<u128> {
    if !(1..=32).contains(&s.len()) {
        return None;
    }
    s.iter()
        .try_fold(0u128, |acc, b| Some(acc << 4 | u128::from(any_case(*b)?)))
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (two digits per byte).
pub fn put(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Appends `bytes` as lowercase hex to `out`.
pub fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Writes a trace id for B3 and Jaeger: 16 digits when its upper half is zero (so 64-bit ids
/// round-trip), else 32. Returns the number of bytes written.
pub fn put_trace_id(out: &mut [u8], id: u128) -> usize {
    let bytes = id.to_be_bytes();
    if id >> 64 == 0 {
        put(&mut out[..16], &bytes[8..]);
        16
    } else {
        put(&mut out[..32], &bytes);
        32
    }
}

/// Writes `{trace-id}{sep}{span-id}` for B3 and Jaeger; returns the number of bytes written
/// (33 or 49 with a one-byte separator).
pub fn put_ids(out: &mut [u8], trace_id: u128, sep: u8, span_id: u64) -> usize {
    let n = put_trace_id(out, trace_id);
    out[n] = sep;
    put(&mut out[n + 1..n + 17], &span_id.to_be_bytes());
    n + 17
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits_round_trip_in_the_case_each_format_accepts() {
        let mut out = [0u8; 49];
        let n = super::put_ids(&mut out, 0xabc, b'-', 0x0123_4567_89ab_cdef);
        assert_eq!(&out[..n], b"0000000000000abc-0123456789abcdef");
        assert_eq!(super::lower_u64(&out[..16]), Some(0xabc));
        assert_eq!(super::lower_u64(b"0000000000000ABC"), None);
        assert_eq!(super::any_case_u64(b"ABC"), Some(0xabc));
        assert_eq!(super::any_case_byte(b"fF"), Some(0xff));
        assert_eq!(super::any_case_byte(b"f"), None);
        assert_eq!(super::lower_byte(b"fF"), None);
        let mut s = String::from("x");
        super::push(&mut s, &[0x00, 0x7f, 0xff]);
        assert_eq!(s, "x007fff");
    }
}
