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
/// A line that is not visible ASCII yields one `Invalid` (no baggage byte lies outside it).
pub fn members(headers: &HeaderMap) -> Members<'_> {
    Members {
        lines: headers.get_all(&BAGGAGE_HEADER).into_iter(),
        rest: None,
    }
}

/// The iterator of [`members`]: one pass over each line, which is checked as text once and
/// then cut at commas, so that each member's parts are slices of it.
pub struct Members<'a> {
    lines: http::header::ValueIter<'a, HeaderValue>,
    /// What is left of the current line.
    rest: Option<&'a str>,
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<Member<'a>, Invalid>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some(rest) = self.rest else {
                let line = self.lines.next()?;
                match line.to_str() {
                    Ok(text) => self.rest = Some(text),
                    Err(_) => return Some(Err(Invalid)),
                }
                continue;
            };
            // A byte scan: elements are short, too short for `str::find`'s searcher.
            let (element, tail) = match rest.bytes().position(|b| b == b',') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            self.rest = tail;
            let element = element.trim_matches(|c| c == ' ' || c == '\t');
            if !element.is_empty() {
                return Some(parse_member(element));
            }
        }
    }
}

/// Byte classes for one-pass member parsing.
const TOKEN: u8 = 1;
const OCTET: u8 = 2;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let token = c.is_ascii_alphanumeric()
            || matches!(
                c,
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
            );
        // `%x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`: printable ASCII but space, `"`,
        // `,`, `;`, `\`.
        let octet = matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e);
        t[b] = (if token { TOKEN } else { 0 }) | (if octet { OCTET } else { 0 });
        b += 1;
    }
    t
};

/// How many leading bytes of `s` are of `class`.
fn run(s: &[u8], from: usize, class: u8) -> usize {
    let mut i = from;
    while i < s.len() && CLASS[s[i] as usize] & class != 0 {
        i += 1;
    }
    i
}

fn skip_ows(s: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < s.len() && is_ows(s[i]) {
        i += 1;
    }
    i
}

/// One member, `raw` trimmed of OWS: `key OWS "=" OWS value OWS *( ";" property )`.
fn parse_member(raw: &str) -> Result<Member<'_>, Invalid> {
    let b = raw.as_bytes();
    let key_end = run(b, 0, TOKEN);
    let eq = skip_ows(b, key_end);
    if key_end == 0 || b.get(eq) != Some(&b'=') {
        return Err(Invalid);
    }
    let value_start = skip_ows(b, eq + 1);
    let value_end = run(b, value_start, OCTET);
    let after = skip_ows(b, value_end);
    match b.get(after) {
        None => {}
        Some(b';') => properties(&b[after + 1..])?,
        Some(_) => return Err(Invalid),
    }
    // Every byte was checked to be ASCII, so these cuts fall on character boundaries.
    Ok(Member {
        key: raw.get(..key_end).ok_or(Invalid)?,
        value: raw.get(value_start..value_end).ok_or(Invalid)?,
        raw,
    })
}

/// The `;`-separated properties after a member's value: each a token key, optionally with
/// `= value`.
fn properties(rest: &[u8]) -> Result<(), Invalid> {
    for property in rest.split(|b| *b == b';') {
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
    Ok(())
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
    !s.is_empty() && s.iter().all(|b| CLASS[*b as usize] & TOKEN != 0)
}

/// `%x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E`: printable ASCII but space, `"`, `,`, `;`, `\`.
pub fn is_baggage_octet(b: u8) -> bool {
    CLASS[b as usize] & OCTET != 0
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
    fn trimming_keeps_whole_members_up_to_exactly_the_limits_and_counts_the_rest() {
        let trimmed = |lines: &[&str], max_members, max_bytes| match extract(
            &h(lines),
            Limits {
                max_members,
                max_bytes,
            },
        ) {
            Ok(Baggage::Trimmed { value, dropped }) => (value, dropped),
            other => panic!("{lines:?}: {other:?}"),
        };
        // The kept members fill the byte limit exactly (3 + 1 + 3): both stay.
        assert_eq!(
            trimmed(&["a=1,b=2,c=3"], 64, 7),
            ("a=1,b=2".parse().unwrap(), 1)
        );
        // By count: five members, two kept, three dropped; across lines alike.
        assert_eq!(
            trimmed(&["a=1,b=2", "c=3,d=4,e=5"], 2, 8192),
            ("a=1,b=2".parse().unwrap(), 3)
        );
        // One byte under what two members need: only the first stays.
        assert_eq!(
            trimmed(&["a=1,b=2,c=3"], 64, 6),
            ("a=1".parse().unwrap(), 2)
        );
        // Exactly at both limits is no trimming at all.
        assert_eq!(
            extract(
                &h(&["a=1,b=2"]),
                Limits {
                    max_members: 2,
                    max_bytes: 7
                }
            ),
            Ok(Baggage::Unchanged)
        );
    }

    #[test]
    fn property_keys_and_values_are_checked_after_trimming_ows() {
        for good in ["k=1;p=x", "k=1;p = x", "k=1; p\t=\tx ;q", "k=1;p="] {
            assert_eq!(
                extract(&h(&[good]), Limits::default()),
                Ok(Baggage::Unchanged),
                "{good:?}"
            );
        }
        for bad in ["k=1;p=a\\b", "k=1;p= a b", "k=1;p=\"x\"", "k=1; =x"] {
            assert_eq!(
                extract(&h(&[bad]), Limits::default()),
                Err(Invalid),
                "{bad:?}"
            );
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
    fn ows_is_space_or_tab_and_other_bytes_invalidate() {
        let headers = h(&["\tk1\t=\tv1\t;\tp\t, k2=v2"]);
        let got: Vec<_> = members(&headers).map(Result::unwrap).collect();
        assert_eq!(
            got.iter().map(|m| (m.key, m.value)).collect::<Vec<_>>(),
            [("k1", "v1"), ("k2", "v2")]
        );
        assert_eq!(got[0].raw, "k1\t=\tv1\t;\tp");
        // A byte outside visible ASCII (obs-text) makes the whole header invalid.
        let mut bad = HeaderMap::new();
        bad.append(BAGGAGE, HeaderValue::from_static("good=1"));
        bad.append(BAGGAGE, HeaderValue::from_bytes(b"k=caf\xc3\xa9").unwrap());
        assert_eq!(extract(&bad, Limits::default()), Err(Invalid));
        for bad in ["k=v w", "k v=1", "k=\"v\"", "k=v;;", "k=v\x7f"] {
            let Ok(v) = HeaderValue::from_str(bad) else {
                continue;
            };
            let mut hm = HeaderMap::new();
            hm.append(BAGGAGE, v);
            assert_eq!(extract(&hm, Limits::default()), Err(Invalid), "{bad:?}");
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
