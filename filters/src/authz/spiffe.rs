//! SPIFFE IDs (spec §1): `spiffe://<trust-domain>/<path>`, the trust domain in lower case
//! (`a-z 0-9 . - _`), path segments of `A-Z a-z 0-9 . - _`, none empty, `.` or `..`, no `%`,
//! query or fragment, at most 2048 bytes. An ID never holds `*`, so wildcards live only in
//! patterns: in an [`IdPattern`] a segment that is exactly `*` stands for one whole segment,
//! and the trust domain is never a wildcard.

/// Why a string is not a SPIFFE ID (or pattern).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

const MAX_LEN: usize = 2048;

fn trust_domain_ok(td: &str) -> bool {
    !td.is_empty()
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The trust domain and path segments of `id`, or why it is not one; `wildcards` lets a
/// segment be `*`.
fn split(id: &str, wildcards: bool) -> Result<(&str, Vec<&str>), Invalid> {
    let bad = |why: &str| Invalid(format!("{id:?} is not a SPIFFE ID: {why}"));
    if id.len() > MAX_LEN {
        return Err(bad("longer than 2048 bytes"));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("it must start with spiffe://"))?;
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !trust_domain_ok(td) {
        return Err(bad(
            "the trust domain is lower-case letters, digits, `.`, `-` and `_`, and never a wildcard",
        ));
    }
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    for s in &segments {
        if wildcards && *s == "*" {
            continue;
        }
        if s.contains('*') {
            return Err(bad("`*` stands for a whole segment only (`.../sa/*`)"));
        }
        if !segment_ok(s) {
            return Err(bad(
                "path segments are letters, digits, `.`, `-` and `_`; none empty, `.` or `..`; no `%`, query or fragment",
            ));
        }
    }
    Ok((td, segments))
}

/// A valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId(String);

impl SpiffeId {
    pub fn parse(id: &str) -> Result<Self, Invalid> {
        split(id, false)?;
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn trust_domain(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        rest.split_once('/').map_or(rest, |(td, _)| td)
    }
}

/// A pattern of SPIFFE IDs: an ID whose segments may be `*` (exactly one whole segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    trust_domain: String,
    segments: Vec<Option<String>>,
}

impl IdPattern {
    pub fn parse(pattern: &str) -> Result<Self, Invalid> {
        let (td, segments) = split(pattern, true)?;
        Ok(Self {
            trust_domain: td.to_owned(),
            segments: segments
                .into_iter()
                .map(|s| (s != "*").then(|| s.to_owned()))
                .collect(),
        })
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        let rest = &id.0["spiffe://".len()..];
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if td != self.trust_domain {
            return false;
        }
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Some(e), Some(p)) if e == p => {}
                (None, Some(_)) => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_spiffe_grammar() {
        for ok in [
            "spiffe://prod.example/ns/web/sa/frontend",
            "spiffe://cluster.local",
            "spiffe://td-1_x/a.b/c-d",
        ] {
            assert!(SpiffeId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "spiffe://Prod.example/ns/web",
            "spiffe://prod.example/ns//web",
            "spiffe://prod.example/ns/../admin",
            "spiffe://prod.example/ns/./x",
            "spiffe://prod.example/ns/a%2Fb",
            "spiffe://prod.example/ns/a?x=1",
            "spiffe://prod.example/ns/a#f",
            "spiffe://prod.example/ns/*",
            "spiffe:///ns/web",
            "https://prod.example/ns/web",
            &format!("spiffe://td/{}", "a".repeat(2048)),
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        let id = SpiffeId::parse("spiffe://prod.example/ns/web/sa/frontend").unwrap();
        assert_eq!(id.trust_domain(), "prod.example");
    }

    #[test]
    fn a_wildcard_is_one_whole_segment_and_never_the_trust_domain() {
        let p = IdPattern::parse("spiffe://prod.example/ns/ops/sa/*").unwrap();
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        assert!(p.matches(&id("spiffe://prod.example/ns/ops/sa/deployer")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/ops/sa/deployer/extra")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/ops/sa")));
        assert!(!p.matches(&id("spiffe://other.example/ns/ops/sa/deployer")));
        assert!(!p.matches(&id("spiffe://prod.example/ns/opsx/sa/deployer")));
        let exact = IdPattern::parse("spiffe://prod.example/ns/web/sa/frontend").unwrap();
        assert!(exact.matches(&id("spiffe://prod.example/ns/web/sa/frontend")));
        assert!(!exact.matches(&id("spiffe://prod.example/ns/web/sa/frontend2")));
        for bad in [
            "spiffe://*/ns/ops",
            "spiffe://prod.example/ns/ops-*",
            "spiffe://prod.example/ns/**",
            "spiffe://PROD/ns/x",
        ] {
            assert!(IdPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
