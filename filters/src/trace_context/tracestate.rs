//! `tracestate`, `specs/trace-context.md` §2.2. Read only beside a valid `traceparent`.
//!
//! Every line is part of one list (RFC 9110 §5.3): members are split on `,`, trimmed of
//! SP/HTAB, and empty ones skipped. A member is `key=value` (split at the first `=`), with a
//! key of 1–256 characters (`a-z0-9` first, then `a-z0-9_-*/@`) and a value of 1–256
//! printable characters other than `,` and `=`, not ending in a space. One invalid member, or
//! more than 32, drops the whole header: it is never truncated into validity. Up to
//! `max_len` characters pass whole; beyond, whole members are dropped, those over 128
//! characters first, then from the right.

use http::{HeaderMap, HeaderValue};

use super::trim_ows;

pub const TRACESTATE: &str = "tracestate";
pub const MAX_MEMBERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Member,
    TooManyMembers,
}

/// A valid `tracestate`, ready to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceState {
    /// What to forward; `None` when there are no members.
    pub value: Option<HeaderValue>,
    /// Members dropped to fit `max_len`.
    pub dropped: usize,
}

/// Reads every `tracestate` line. An already canonical single line within `max_len` is
/// returned as the same `HeaderValue` (no allocation).
pub fn extract(headers: &HeaderMap, max_len: usize) -> Result<TraceState, Invalid> {
    let mut count = 0usize;
    let mut len = 0usize;
    let mut canonical = true;
    let mut lines = 0usize;
    for line in headers.get_all(TRACESTATE) {
        lines += 1;
        for raw in line.as_bytes().split(|b| *b == b',') {
            let member = trim_ows(raw);
            if member.len() != raw.len() {
                canonical = false;
            }
            if member.is_empty() {
                canonical = false;
                continue;
            }
            if !valid_member(member) {
                return Err(Invalid::Member);
            }
            count += 1;
            if count > MAX_MEMBERS {
                return Err(Invalid::TooManyMembers);
            }
            len += member.len() + usize::from(count > 1);
        }
    }
    if count == 0 {
        return Ok(TraceState {
            value: None,
            dropped: 0,
        });
    }
    if lines == 1 && canonical && len <= max_len {
        return Ok(TraceState {
            value: headers.get(TRACESTATE).cloned(),
            dropped: 0,
        });
    }
    let mut members: Vec<&[u8]> = headers
        .get_all(TRACESTATE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(trim_ows)
        .filter(|m| !m.is_empty())
        .collect();
    let dropped = fit(&mut members, max_len);
    let value = if members.is_empty() {
        None
    } else {
        HeaderValue::from_bytes(&members.join(&b","[..])).ok()
    };
    Ok(TraceState { value, dropped })
}

/// Drops whole members until the joined list fits `max_len`: members over 128 characters
/// first (rightmost first), then from the right. Returns how many went.
fn fit(members: &mut Vec<&[u8]>, max_len: usize) -> usize {
    let joined =
        |m: &Vec<&[u8]>| m.iter().map(|x| x.len()).sum::<usize>() + m.len().saturating_sub(1);
    let before = members.len();
    while joined(members) > max_len {
        match members.iter().rposition(|m| m.len() > 128) {
            Some(i) => {
                members.remove(i);
            }
            None => {
                members.pop();
            }
        }
    }
    before - members.len()
}

fn valid_member(m: &[u8]) -> bool {
    let Some(eq) = m.iter().position(|b| *b == b'=') else {
        return false;
    };
    let (key, value) = (&m[..eq], &m[eq + 1..]);
    valid_key(key) && valid_value(value)
}

fn valid_key(k: &[u8]) -> bool {
    matches!(k.len(), 1..=256)
        && matches!(k[0], b'a'..=b'z' | b'0'..=b'9')
        && k[1..]
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
}

fn valid_value(v: &[u8]) -> bool {
    matches!(v.len(), 1..=256)
        && v.iter()
            .all(|b| matches!(b, 0x20..=0x7e) && *b != b',' && *b != b'=')
        && v.last() != Some(&b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(lines: &[&str], max_len: usize) -> Result<TraceState, Invalid> {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(TRACESTATE, HeaderValue::from_str(l).unwrap());
        }
        extract(&h, max_len)
    }

    fn forwarded(lines: &[&str]) -> Option<String> {
        ts(lines, 4096)
            .ok()
            .and_then(|t| t.value)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn case_10_lines_join_in_order() {
        assert_eq!(
            forwarded(&["foo=1,bar=2", "rojo=1", "baz=3"]).as_deref(),
            Some("foo=1,bar=2,rojo=1,baz=3")
        );
    }

    #[test]
    fn case_11_empty_headers_members_and_whitespace() {
        assert_eq!(ts(&[""], 4096).unwrap().value, None);
        assert_eq!(forwarded(&["", "foo=1"]).as_deref(), Some("foo=1"));
        assert_eq!(
            forwarded(&["foo=1 \t , \t bar=2,"]).as_deref(),
            Some("foo=1,bar=2")
        );
    }

    #[test]
    fn case_13_one_bad_member_drops_the_header() {
        let long_key = format!("{}=1", "k".repeat(257));
        for bad in [
            "foo =1",
            "FOO=1",
            "@foo=1",
            "foo=",
            "foo=a=b",
            long_key.as_str(),
        ] {
            assert!(ts(&["ok=1", bad], 4096).is_err(), "{bad}");
        }
    }

    #[test]
    fn case_14_unusual_but_valid_members_are_kept_exactly() {
        let long = format!("{}=1", "z".repeat(256));
        for good in ["foo@=1", "foo@@bar=1", long.as_str(), "foo= x"] {
            assert_eq!(forwarded(&[good]).as_deref(), Some(good));
        }
    }

    #[test]
    fn case_15_member_count_limit() {
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let lines: Vec<String> = members[..32].chunks(8).map(|c| c.join(",")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_eq!(forwarded(&refs), Some(members[..32].join(",")));
        let mut with_one_more = refs.clone();
        with_one_more.push(&members[32]);
        assert_eq!(ts(&with_one_more, 4096), Err(Invalid::TooManyMembers));
    }

    #[test]
    fn case_16_over_max_len_drops_long_members_first_then_from_the_right() {
        // 693 characters: one 203-character member and ten of 48, with separators.
        let long = format!("big={}", "x".repeat(199));
        let small: Vec<String> = (0..10)
            .map(|i| format!("s{i}={}", "y".repeat(45)))
            .collect();
        let mut all = vec![small[0].clone(), long.clone()];
        all.extend(small[1..].iter().cloned());
        let line = all.join(",");
        assert!(line.len() > 600);
        let t = ts(&[&line], 600).unwrap();
        assert_eq!(t.dropped, 1);
        assert_eq!(t.value.unwrap(), small.join(",").as_str());

        // Only small members: drop from the right until it fits.
        let line = small.join(",");
        let t = ts(&[&line], 300).unwrap();
        let kept = t.value.unwrap();
        assert!(kept.len() <= 300);
        assert_eq!(kept, small[..6].join(",").as_str());
        assert_eq!(t.dropped, 4);
    }

    #[test]
    fn max_len_counts_members_and_commas_exactly() {
        // "a=1,b=2,c=3" is 11 characters, commas included.
        let three = "a=1,b=2,c=3";
        let t = ts(&[three], 11).unwrap();
        assert_eq!(
            (t.value.unwrap().to_str().unwrap().to_owned(), t.dropped),
            (three.to_owned(), 0),
            "exactly at the limit"
        );
        let t = ts(&[three], 10).unwrap();
        assert_eq!(
            (t.value.unwrap().to_str().unwrap().to_owned(), t.dropped),
            ("a=1,b=2".to_owned(), 1),
            "one over"
        );
        let t = ts(&[three], 7).unwrap();
        assert_eq!(
            (t.value.unwrap().to_str().unwrap().to_owned(), t.dropped),
            ("a=1,b=2".to_owned(), 1),
            "trimmed to exactly the limit"
        );
        let t = ts(&[three], 6).unwrap();
        assert_eq!(
            (t.value.unwrap().to_str().unwrap().to_owned(), t.dropped),
            ("a=1".to_owned(), 2)
        );
        // One member alone: no comma is counted.
        let t = ts(&["a=1"], 3).unwrap();
        assert_eq!(
            (t.value.unwrap().to_str().unwrap().to_owned(), t.dropped),
            ("a=1".to_owned(), 0)
        );
        // Two lines joined are measured as one list.
        let t = ts(&["a=1", "b=2,c=3"], 11).unwrap();
        assert_eq!(
            (t.value.unwrap().to_str().unwrap().to_owned(), t.dropped),
            (three.to_owned(), 0)
        );
        let t = ts(&["a=1", "b=2,c=3"], 10).unwrap();
        assert_eq!(
            (t.value.unwrap().to_str().unwrap().to_owned(), t.dropped),
            ("a=1,b=2".to_owned(), 1)
        );
    }

    #[test]
    fn a_member_of_exactly_128_characters_is_not_long() {
        let at = format!("k={}", "x".repeat(126));
        let over = format!("k={}", "x".repeat(127));
        assert_eq!((at.len(), over.len()), (128, 129));
        // Over the limit by one small member: the 128-character member stays, the rightmost
        // goes; a 129-character one goes first.
        let t = ts(&[&format!("{at},a=1,b=2")], 128 + 4).unwrap();
        assert_eq!(t.value.unwrap().to_str().unwrap(), format!("{at},a=1"));
        let t = ts(&[&format!("{over},a=1,b=2")], 129 + 4).unwrap();
        assert_eq!(t.value.unwrap().to_str().unwrap(), "a=1,b=2");
    }

    #[test]
    fn unchanged_value_is_the_same_header_value() {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_static("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        h.insert(TRACESTATE, v.clone());
        let t = extract(&h, 512).unwrap();
        // Same bytes, and a cheap clone of the same buffer.
        assert_eq!(
            t.value.as_ref().unwrap().as_bytes().as_ptr(),
            h[TRACESTATE].as_bytes().as_ptr()
        );
    }
}
