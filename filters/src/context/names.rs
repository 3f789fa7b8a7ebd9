//! Context and object names (spec §2), and the `allow` patterns that scope which contexts an
//! app may address.

use super::error::ContextError;

/// `[A-Za-z0-9._~:-]{1,128}`; a leading `_` is reserved (`_current`).
pub fn context(name: &str) -> Result<(), ContextError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:-".contains(&b));
    if !ok {
        return Err(ContextError::InvalidName(format!(
            "context name {name:?}: 1 to 128 of A-Z a-z 0-9 . _ ~ : -"
        )));
    }
    if name.starts_with('_') {
        return Err(ContextError::InvalidName(format!(
            "context name {name:?}: names starting with _ are reserved"
        )));
    }
    Ok(())
}

/// `[A-Za-z0-9._~:/-]{1,256}`, not starting with `_`, without empty, `.` or `..` segments.
pub fn object(name: &str) -> Result<(), ContextError> {
    let ok = (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~:/-".contains(&b))
        && !name.starts_with('_')
        && name
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if ok {
        Ok(())
    } else {
        Err(ContextError::InvalidName(format!(
            "object name {name:?}: 1 to 256 of A-Z a-z 0-9 . _ ~ : - /, not starting with _, no empty, . or .. segments"
        )))
    }
}

/// Context-name patterns: `*` matches any run of characters (`order-*`, `*`).
#[derive(Debug, Clone, Default)]
pub struct Allow(Vec<String>);

impl Allow {
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    pub fn permits(&self, name: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && glob(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grammar() {
        for ok in ["order-42", "a", "x.y~z:1", &"a".repeat(128)] {
            assert!(context(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_current", "a/b", "a b", "é", &"a".repeat(129)] {
            assert!(context(bad).is_err(), "{bad}");
        }
        for ok in ["hits", "orders/2026/12", "a.b"] {
            assert!(object(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_x", "a//b", "a/../b", "./a", "a/", "a?b"] {
            assert!(object(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_patterns_glob() {
        let allow = Allow::new(vec!["order-*".into(), "cart-*-eu".into(), "exact".into()]);
        for ok in ["order-", "order-42", "cart-1-eu", "exact"] {
            assert!(allow.permits(ok), "{ok}");
        }
        for bad in ["orders", "cart-1-us", "exactly", "xorder-1"] {
            assert!(!allow.permits(bad), "{bad}");
        }
        assert!(Allow::new(vec!["*".into()]).permits("anything"));
        assert!(!Allow::default().permits("anything"));
    }
}
