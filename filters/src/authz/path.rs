//! The path a decision is made on (spec §3.2), which the app then receives too, so that the
//! policy and the app never disagree on what was asked: unreserved `%HH` decoded, dot segments
//! resolved, repeated `/` merged. An encoded `/`, `\` or NUL (`%2F`, `%5C`, `%00`) is refused:
//! decoded it would change the path's segments, kept it would be read differently by
//! different servers; so is a `%` without two hex digits. Path patterns (`/a`, `/a/*`, `/a/**`) match the normalized path.

use std::borrow::Cow;

/// Why a path is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the path carries an encoded `/`, `\\` or NUL ({0}), which attache does not pass on")]
    EncodedSeparator(&'static str),
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// A `%` not followed by two hex digits: read loosely by one server and strictly by
    /// another (`%%36%33` becomes `%63` on one pass and `c` on the next).
    #[error("the path has a `%` that is not followed by two hex digits")]
    MalformedPercent,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Whether `path` (which starts with `/`) is normal already: no `%`, no `//`, no `.` or `..`
/// segment. One pass over the bytes: every request takes it.
fn plain(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => return false,
            b'/' => {
                let next = |k: usize| b.get(i + k).copied();
                match (next(1), next(2), next(3)) {
                    (Some(b'/'), _, _) => return false,
                    (Some(b'.'), None | Some(b'/'), _) => return false,
                    (Some(b'.'), Some(b'.'), None | Some(b'/')) => return false,
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// The normalized form of `path` (without its query), borrowed when it is normal already.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Refused> {
    if !path.starts_with('/') {
        return Err(Refused::NotAbsolute);
    }
    let b = path.as_bytes();
    if plain(b) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Percent-decoding of unreserved bytes; the separators refused; others kept, in upper
    //    case hex (RFC 3986 §6.2.2.1).
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            let byte = h << 4 | l;
            match byte {
                b'/' => return Err(Refused::EncodedSeparator("%2F")),
                b'\\' => return Err(Refused::EncodedSeparator("%5C")),
                0 => return Err(Refused::EncodedSeparator("%00")),
                _ if unreserved(byte) => decoded.push(byte),
                _ => decoded.extend_from_slice(format!("%{byte:02X}").as_bytes()),
            }
            i += 3;
            continue;
        }
        if b[i] == b'%' {
            return Err(Refused::MalformedPercent);
        }
        decoded.push(b[i]);
        i += 1;
    }
    // Only ASCII was decoded, and every other byte is the input's own: still UTF-8.
    let decoded = String::from_utf8(decoded)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    // 2. Dot segments resolved and empty segments merged (`//` is one `/`); a trailing `/`
    //    stays (`/a/` is not `/a` to most apps).
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// A path pattern of a rule: `/a` (exactly), `/a/*` (one more segment), `/a/**` (`/a` and
/// everything below); `*` may stand for any one whole segment elsewhere too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    /// Ends in `/**`.
    below: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Exact(String),
    Any,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("{pattern:?} does not start with `/`"));
        }
        let (body, below) = match pattern.strip_suffix("/**") {
            Some(b) => (b, true),
            None => (pattern, false),
        };
        let mut segments = Vec::new();
        for seg in body.split('/').skip(1) {
            match seg {
                "" if !below && body.len() == 1 => {}
                "*" => segments.push(Segment::Any),
                s if s.contains('*') => {
                    return Err(format!(
                        "{pattern:?}: `*` stands for a whole segment (`/a/*`), `**` only at the end (`/a/**`)"
                    ));
                }
                "" => return Err(format!("{pattern:?} has an empty segment")),
                s => segments.push(Segment::Exact(s.to_owned())),
            }
        }
        Ok(Self { segments, below })
    }

    /// The literal first segment every path this pattern matches begins with (`v1` of
    /// `/v1/orders/*`); `None` when it has none (`/`, `/**`, `/*/x`).
    pub fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Exact(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether the normalized `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = Segments(path.as_bytes());
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Exact(e), Some(p)) if e.as_bytes() == p => {}
                (Segment::Any, Some(_)) => {}
                _ => return false,
            }
        }
        self.below || parts.next().is_none()
    }
}

/// The first non-empty segment of a normalized path (`v1` of `/v1/orders`), if any.
pub fn first_segment(path: &str) -> Option<&[u8]> {
    Segments(path.as_bytes()).next()
}

/// The non-empty segments of a path, by a plain byte scan: a policy matches every request's
/// path against many patterns, and `str::split`'s searcher costs more to set up than a short
/// path costs to walk.
struct Segments<'a>(&'a [u8]);

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut rest = self.0;
        while let [b'/', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            self.0 = rest;
            return None;
        }
        let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let (seg, tail) = rest.split_at(end);
        self.0 = tail;
        Some(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_as_the_app_will_read_them() {
        for (raw, normal) in [
            ("/v1/orders", "/v1/orders"),
            ("/v1/orders/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("//admin", "/admin"),
            ("/a/./b//c/", "/a/b/c/"),
            ("/..", "/"),
            ("/a/b/..", "/a/"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/%7Euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/café/../x", "/x"),
        ] {
            assert_eq!(normalize(raw).unwrap(), normal, "{raw}");
        }
        for normal in ["/v1/orders", "/", "/a.b/..c/.d", "/a/b/"] {
            assert!(
                matches!(normalize(normal), Ok(Cow::Borrowed(_))),
                "{normal}"
            );
        }
        for not_plain in ["/a/.", "/a/..", "/a/./b", "/a//b", "/a%41"] {
            assert!(
                matches!(normalize(not_plain), Ok(Cow::Owned(_))),
                "{not_plain}"
            );
        }
        for bad in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%00"] {
            assert!(
                matches!(normalize(bad), Err(Refused::EncodedSeparator(_))),
                "{bad}"
            );
        }
        assert_eq!(normalize("admin"), Err(Refused::NotAbsolute));
        // Found by fuzz/fuzz_targets/authz_path.rs: a bare `%` made a path that a second pass
        // decoded further (`%%363` to `%63`, then `c`).
        for bad in ["/bad%zz", "/%%363", "/a%", "/a%4"] {
            assert_eq!(normalize(bad), Err(Refused::MalformedPercent), "{bad}");
        }
    }

    #[test]
    fn the_fast_plain_check_agrees_with_its_definition() {
        // Every path of up to 7 bytes over `/ . a %`, against the definition spelled out.
        let alphabet = [b'/', b'.', b'a', b'%'];
        let mut level = vec![b"/".to_vec()];
        let mut paths = level.clone();
        for _ in 0..6 {
            level = level
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |c| {
                        let mut q = p.clone();
                        q.push(*c);
                        q
                    })
                })
                .collect();
            paths.extend(level.iter().cloned());
        }
        for p in &paths {
            let text = std::str::from_utf8(p).unwrap();
            let defined = !text.contains('%')
                && !text.contains("//")
                && !text.split('/').any(|s| s == "." || s == "..");
            assert_eq!(plain(p), defined, "{text}");
        }
        assert!(paths.len() > 5000);
    }

    #[test]
    fn patterns_match_exactly_one_more_or_everything_below() {
        let p = |s: &str| PathPattern::parse(s).unwrap();
        assert!(p("/v1/orders").matches("/v1/orders"));
        assert!(!p("/v1/orders").matches("/v1/orders/7"));
        assert!(p("/v1/orders/*").matches("/v1/orders/7"));
        assert!(!p("/v1/orders/*").matches("/v1/orders"));
        assert!(!p("/v1/orders/*").matches("/v1/orders/7/items"));
        assert!(p("/admin/**").matches("/admin"));
        assert!(p("/admin/**").matches("/admin/debug/vars"));
        assert!(!p("/admin/**").matches("/administrator"));
        assert!(p("/v1/*/items").matches("/v1/7/items"));
        assert!(p("/**").matches("/anything/at/all"));
        assert!(p("/").matches("/"));
        assert!(p("/pkg.Service/Method").matches("/pkg.Service/Method"));
        for bad in ["admin", "/a*", "/a/**/b", "/a//b", "/a/b*c"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
