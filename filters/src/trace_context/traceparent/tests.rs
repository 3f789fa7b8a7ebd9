//! The codec-level cases of `specs/trace-context.md` §12 (numbers refer to that list).

use super::*;

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P: &str = "00f067aa0ba902b7";

fn tp(s: &str) -> Result<TraceParent, Invalid> {
    parse(s.as_bytes())
}

fn headers(lines: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in lines {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn case_1_2_valid_values_keep_ids_and_flags() {
    let p = tp(&format!("00-{T}-{P}-01")).unwrap();
    assert_eq!(p.trace_id.to_string(), T);
    assert_eq!(p.parent_id.to_string(), P);
    assert!(p.flags.sampled() && !p.flags.random());
    assert_eq!(tp(&format!("00-{T}-{P}-03")).unwrap().flags.bits(), 0x03);
    assert_eq!(tp(&format!("00-{T}-{P}-02")).unwrap().flags.bits(), 0x02);
}

#[test]
fn case_4_header_name_case_and_surrounding_whitespace() {
    // Header names are case-insensitive (HeaderMap lower-cases them).
    let h = headers(&[("TRACEPARENT", &format!("00-{T}-{P}-01"))]);
    assert!(extract(&h).unwrap().is_ok());
    assert!(tp(&format!(" \t00-{T}-{P}-01\t ")).is_ok());
    // `trace-parent` is another header: no context.
    assert!(extract(&headers(&[("trace-parent", &format!("00-{T}-{P}-01"))])).is_none());
}

#[test]
fn case_5_two_lines_even_identical_are_invalid() {
    let v = format!("00-{T}-{P}-01");
    let h = headers(&[("traceparent", &v), ("traceparent", &v)]);
    assert_eq!(extract(&h), Some(Err(Invalid::Repeated)));
}

#[test]
fn case_6_bad_versions() {
    for version in ["000", "0", ".0", "0A", "ff"] {
        assert!(tp(&format!("{version}-{T}-{P}-01")).is_err(), "{version}");
    }
}

#[test]
fn case_7_trailing_data() {
    assert!(tp(&format!("00-{T}-{P}-01-x")).is_err());
    assert!(tp(&format!("00-{T}-{P}-01.")).is_err());
    assert!(tp(&format!("cc-{T}-{P}-01.x")).is_err());
    let future = tp(&format!("cc-{T}-{P}-01-x")).unwrap();
    assert_eq!(future.trace_id.to_string(), T);
    assert!(tp(&format!("cc-{T}-{P}-01")).is_ok());
}

#[test]
fn case_8_bad_ids() {
    let zeros32 = "0".repeat(32);
    let zeros16 = "0".repeat(16);
    for bad in [
        format!("00-{zeros32}-{P}-01"),
        format!("00-{T}-{zeros16}-01"),
        format!("00-{}-{P}-01", &T[1..]),
        format!("00-{T}0-{P}-01"),
        format!("00-{T}-{}-01", &P[1..]),
        format!("00-{T}-{P}0-01"),
        format!("00-{}.-{P}-01", &T[..31]),
        format!("00-{}-{P}-01", T.to_uppercase()),
        format!("00-{T}-{}-01", "00F067AA0BA902B7"),
    ] {
        assert!(tp(&bad).is_err(), "{bad}");
    }
}

#[test]
fn case_9_flags() {
    for bad in ["1", "001", "0A"] {
        assert!(tp(&format!("00-{T}-{P}-{bad}")).is_err(), "{bad}");
    }
    assert_eq!(tp(&format!("00-{T}-{P}-ff")).unwrap().flags.bits(), 0x03);
    assert_eq!(tp(&format!("00-{T}-{P}-09")).unwrap().flags.bits(), 0x01);
}

#[test]
fn writes_version_00_with_reserved_bits_zero() {
    let p = tp(&format!("00-{T}-{P}-ff")).unwrap();
    let v = write(p.trace_id, SpanId(0x1122334455667788), p.flags);
    assert_eq!(v, format!("00-{T}-1122334455667788-03").as_str());
    assert_eq!(
        write(TraceId(1), SpanId(2), TraceFlags::new(0)),
        "00-00000000000000000000000000000001-0000000000000002-00"
    );
}

#[test]
fn setting_one_flag_keeps_the_other_and_is_idempotent() {
    for bits in 0..4u8 {
        let f = TraceFlags::new(bits);
        for on in [false, true] {
            let s = f.with_sampled(on);
            assert_eq!(
                (s.sampled(), s.random()),
                (on, f.random()),
                "{bits:02x} sampled={on}"
            );
            assert_eq!(s.with_sampled(on), s, "setting it again changes nothing");
            let r = f.with_random(on);
            assert_eq!(
                (r.random(), r.sampled()),
                (on, f.sampled()),
                "{bits:02x} random={on}"
            );
            assert_eq!(r.with_random(on), r);
        }
    }
}

#[test]
fn short_or_unseparated_values_are_refused_without_reading_past_them() {
    for v in ["", "0", "00", "0-"] {
        assert_eq!(tp(v), Err(Invalid::Version), "{v:?}");
    }
    // The version is read; a version-00 value must then be exactly 55 characters.
    assert_eq!(tp("00-"), Err(Invalid::Length));
    // A third character that is not `-`, in a value of the right length.
    assert_eq!(tp(&format!("00x{T}-{P}-01")), Err(Invalid::Version));
    // A later version shorter than version 00 is refused for its length, not read past.
    assert_eq!(tp("01-short"), Err(Invalid::Length));
    assert_eq!(tp(&format!("01-{T}-{P}")), Err(Invalid::Length));
}

#[test]
fn ids_and_flags_debug_as_their_hex() {
    let parsed = tp(&format!("00-{T}-{P}-01")).unwrap();
    assert_eq!(format!("{:?}", parsed.trace_id), T);
    assert_eq!(format!("{:?}", parsed.parent_id), P);
    assert_eq!(format!("{:?}", parsed.flags), "01");
}
