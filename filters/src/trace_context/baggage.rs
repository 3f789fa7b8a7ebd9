//! `baggage` (W3C Baggage), `specs/trace-context.md` §2.3.
//!
//! All lines form one list; limits apply to the whole. Members follow the W3C grammar: a token
//! key, `=`, a value of `baggage-octet`s (which may contain `=`), optional `;` properties, OWS
//! around each part; empty list elements are ignored. One bad member makes the header invalid:
//! every `baggage` line is then dropped, never forwarded in part. Valid baggage within limits
//! is forwarded byte for byte in its original lines. Past `max_members` or `max_bytes`, whole
//! members are dropped from the end and the rest is written as one line.
//!
//! Sizes count the members as written (trimmed of OWS) and one `,` between each two.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{is_ows, trim_ows};

pub const BAGGAGE: &str = "baggage";
/// The header's name, ready for lookups (a `&str` is first matched against the standard
/// names, then hashed).
pub const BAGGAGE_HEADER: HeaderName = HeaderName::from_static(BAGGAGE);

/// The W3C minimums, which attache's configuration may raise but not lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_members: usize,
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_members: 64,
            max_bytes: 8192,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// What happens to a request's `baggage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baggage {
    /// No `baggage` header, or only empty elements.
    Absent,
    /// Valid and within limits: forward the original lines untouched.
    Unchanged,
    /// Valid, but members had to be dropped to fit the limits: forward this one line instead.
    Trimmed { value: HeaderValue, dropped: usize },
}

/// One list member, borrowed from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a str,
    /// The value as written (still percent-encoded).
    pub value: &'a str,
    /// The member as written, properties included, trimmed of OWS.
    pub raw: &'a str,
}

/// Validates every `baggage` line and applies the limits.
pub fn extract(headers: &HeaderMap, limits: Limits) -> Result<Baggage, Invalid> {
    let mut count = 0usize;
    let mut bytes = 0usize;
    let mut fits = true;
    for m in members(headers) {
        let m = m?;
        count += 1;
        bytes += m.raw.len() + usize::from(count > 1);
        if count > limits.max_members || bytes > limits.max_bytes {
            fits = false;
        }
    }
    if count == 0 {
        return Ok(Baggage::Absent);
    }
    if fits {
        return Ok(Baggage::Unchanged);
    }
    let mut kept: Vec<&str> = Vec::with_capacity(limits.max_members);
    let mut size = 0usize;
    for m in members(headers).flatten() {
        let add = m.raw.len() + usize::from(!kept.is_empty());
        if kept.len() == limits.max_members || size + add > limits.max_bytes {
            break;
        }
        size += add;
        kept.push(m.raw);
    }
    let dropped = count - kept.len();
    let value = HeaderValue::from_str(&kept.join(",")).map_err(|_| Invalid)?;
    Ok(Baggage::Trimmed { value, dropped })
}

/// The members of every `baggage` line in order, each validated; empty elements are skipped.
pub fn members(headers: &HeaderMap) -> impl Iterator<Item = Result<Member<'_>, Invalid>> {
    headers
        .get_all(&BAGGAGE_HEADER)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(trim_ows)
        .filter(|m| !m.is_empty())
        .map(parse_member)
}

fn parse_member(raw: &[u8]) -> Result<Member<'_>, Invalid> {
    let eq = raw.iter().position(|b| *b == b'=').ok_or(Invalid)?;
    let key = trim_end(&raw[..eq]);
    if !is_token(key) {
        return Err(Invalid);
    }
    let rest = trim_start(&raw[eq + 1..]);
    let mut parts = rest.split(|b| *b == b';');
    let value = trim_end(parts.next().unwrap_or_default());
    if !value.iter().all(|b| is_baggage_octet(*b)) {
        return Err(Invalid);
    }
    for property in parts {
        let property = trim_ows(property);
        let ok = match property.iter().position(|b| *b == b'=') {
            Some(i) => {
                is_token(trim_end(&property[..i]))
                    && trim_start(&property[i + 1..])
                        .iter()
                        .all(|b| is_baggage_octet(*b))
            }
            None => is_token(property),
        };
        if !ok {
            return Err(Invalid);
        }
    }
    // Every accepted byte is ASCII, so these are valid UTF-8.
    Ok(Member {
        key: ascii(key)?,
        value: ascii(value)?,
        raw: ascii(raw)?,
    })
}

fn ascii(b: &[u8]) -> Result<&str, Invalid> {
    std::str::from_utf8(b).map_err(|_| Invalid)
}

fn trim_start(s: &[u8]) -> &[u8] {
    let i = s.iter().position(|b| !is_ows(*b)).unwrap_or(s.len());
    &s[i..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let i = s.iter().rposition(|b| !is_ows(*b)).map_or(0, |i| i + 1);
    &s[..i]
}

/// RFC 9110 token characters.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// `%x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`: printable ASCII but space, `"`, `,`, `;`, `\`.
pub fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(BAGGAGE, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    /// `n` members totalling exactly `bytes` (members + separators), split over two lines.
    fn sized(n: usize, bytes: usize) -> Vec<String> {
        let base = (bytes - (n - 1)) / n;
        let extra = (bytes - (n - 1)) % n;
        let members: Vec<String> = (0..n)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let key = format!("k{i:03}");
                format!("{key}={}", "v".repeat(len - key.len() - 1))
            })
            .collect();
        let half = n / 2;
        vec![members[..half].join(","), members[half..].join(",")]
    }

    #[test]
    fn members_with_properties_and_ows_parse() {
        let headers = h(&[
            "userId=alice, serverNode = DF%2028 ;prop1;prop2 = x",
            "isProduction=false,,",
        ]);
        let got: Vec<_> = members(&headers).map(Result::unwrap).collect();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].key, got[0].value), ("userId", "alice"));
        assert_eq!((got[1].key, got[1].value), ("serverNode", "DF%2028"));
        assert_eq!(got[1].raw, "serverNode = DF%2028 ;prop1;prop2 = x");
        assert_eq!(extract(&headers, Limits::default()), Ok(Baggage::Unchanged));
        // Values may contain `=`.
        assert_eq!(
            members(&h(&["k=a=b"])).next().unwrap().unwrap().value,
            "a=b"
        );
    }

    #[test]
    fn case_34_exactly_at_the_limits_is_forwarded_untouched() {
        let lines = sized(64, 8192);
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let total: usize = lines.iter().map(String::len).sum::<usize>() + 1;
        assert_eq!(total, 8192);
        assert_eq!(
            extract(&h(&refs), Limits::default()),
            Ok(Baggage::Unchanged)
        );
    }

    #[test]
    fn case_35_one_over_drops_the_last_member_whole() {
        for (n, bytes) in [(65, 8000), (64, 8193)] {
            let lines = sized(n, bytes);
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let all: Vec<String> = lines
                .iter()
                .flat_map(|l| l.split(',').map(str::to_owned))
                .collect();
            match extract(&h(&refs), Limits::default()).unwrap() {
                Baggage::Trimmed { value, dropped } => {
                    assert_eq!(dropped, 1, "{n} members, {bytes} bytes");
                    assert_eq!(value, all[..all.len() - 1].join(",").as_str());
                }
                other => panic!("{n} members, {bytes} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn case_36_one_bad_member_invalidates_all_lines() {
        for bad in ["k v=1", "=v", "k=a\"b", "k=1;", "k", "k=1;p q=2"] {
            assert_eq!(
                extract(&h(&["good=1", bad]), Limits::default()),
                Err(Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn absent_and_empty() {
        assert_eq!(
            extract(&HeaderMap::new(), Limits::default()),
            Ok(Baggage::Absent)
        );
        assert_eq!(
            extract(&h(&["", " , "]), Limits::default()),
            Ok(Baggage::Absent)
        );
    }
}
