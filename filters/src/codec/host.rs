//! Host names as requests carry them: `host:port` split (`[v6]:port` included), and a host
//! matched against a configured name or `*.domain`, case-insensitively, a trailing dot
//! ignored, without allocating (authorization matches every request's host this way).

/// `host:port`, `[::1]:port` or a bare host → the host and its port, if any.
pub fn split_host_port(raw: &str) -> (&str, Option<u16>) {
    if let Some(rest) = raw.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host, port);
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (raw, None),
    }
}

/// Whether `host` (no port) is `pattern`, or lies below the domain of a `*.domain` pattern;
/// both in any case.
pub fn matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            let cut = host.len().wrapping_sub(domain.len());
            host.len() > domain.len() + 1
                && host.is_char_boundary(cut)
                && host[cut..].eq_ignore_ascii_case(domain)
                && host.as_bytes()[cut - 1] == b'.'
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_and_match_as_written() {
        assert_eq!(split_host_port("a.example:8080"), ("a.example", Some(8080)));
        assert_eq!(split_host_port("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host_port("a.example"), ("a.example", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert!(matches("api.partner.com", "API.Partner.com."));
        assert!(matches("*.stripe.com", "a.Stripe.com"));
        assert!(!matches("*.stripe.com", "stripe.com"));
        assert!(!matches("*.stripe.com", ".stripe.com"));
        assert!(!matches("*.stripe.com", "evilstripe.com"));
        assert!(!matches("*.stripe.com", "é.com"));
        assert!(!matches("orders.internal", "orders.internal.evil"));
    }
}
