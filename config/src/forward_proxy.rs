//! `spec.forward_proxy`: a listener for apps that set `HTTP_PROXY`/`HTTPS_PROXY`, and the
//! destinations it may reach.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::flags::Cidr;
use crate::model::TimeoutsOverride;
use crate::types::ListenAddr;

/// The forward proxy: absolute-form requests (`GET http://host/path`) go through the
/// outbound stack (spans, trace context, timeouts); `CONNECT host:port` opens a byte tunnel
/// (HTTPS passes through untouched). Only destinations in `allow` are reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardProxy {
    /// Where the app's `HTTP_PROXY` points; default `127.0.0.1:15002`.
    #[serde(default = "default_forward_proxy_listen")]
    pub listen: ListenAddr,
    /// The destinations the app may reach, each a host (`api.example.com`), a wildcard
    /// (`*.example.com` for its subdomains, `*` for any host), an address or block
    /// (`10.0.0.0/8`, `[fd00::/8]`), with an optional port (`:443`; none: any port). A host
    /// rule matches the name the app asked for; an address rule matches the addresses that
    /// name resolves to. Link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
    /// fd00:ec2::254) and attache's own admin port are refused whatever matches, unless a
    /// rule names that very address or a block inside those (`169.254.169.254`).
    pub allow: Vec<Destination>,
    /// Timeouts for calls through the proxy; unset fields use `spec.timeouts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsOverride>,
}

pub const fn default_forward_proxy_listen() -> ListenAddr {
    ListenAddr::new([127, 0, 0, 1], 15002)
}

/// Transparent capture (`spec.capture`): connections the pod's iptables rules redirect here
/// (`attache init-iptables`) go to where the app sent them (`SO_ORIGINAL_DST`): HTTP through
/// the outbound stack, anything else as a plain TCP tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Where the OUTPUT rules redirect the app's connections; default `127.0.0.1:15003`.
    #[serde(default = "default_capture_listen")]
    pub listen: ListenAddr,
    /// How long a new connection may stay silent before it is taken for a protocol whose
    /// server speaks first (a database, SMTP) and tunnelled as TCP; default 200ms.
    #[serde(default = "default_sniff_timeout")]
    pub sniff_timeout: crate::Duration,
    /// Timeouts for captured HTTP calls; unset fields use `spec.timeouts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsOverride>,
}

pub const fn default_capture_listen() -> ListenAddr {
    ListenAddr::new([127, 0, 0, 1], 15003)
}

fn default_sniff_timeout() -> crate::Duration {
    crate::Duration(std::time::Duration::from_millis(200))
}

/// One allowed destination: a host pattern or an address block, and a port (any when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub target: DestinationTarget,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestinationTarget {
    /// Any host name or address.
    Any,
    /// `*.example.com`: any subdomain (not `example.com` itself); stored as `.example.com`.
    Suffix(String),
    /// One host name, lowercase.
    Host(String),
    /// An address or block: matches what a name resolves to, and address literals.
    Net(Cidr),
}

impl std::str::FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = |why: &str| format!("invalid destination {s:?}: {why}");
        // `[v6 or v6/len]` with an optional `:port`; else the port is what follows the last
        // `:` of a name or an IPv4 address.
        let (target, port) = if let Some(rest) = t.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("a `[` without its `]`"))?;
            match after {
                "" => (inner, None),
                p => (
                    inner,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("expected `:port` after `]`"))?,
                    ),
                ),
            }
        } else if t.matches(':').count() > 1 {
            return Err(bad("write IPv6 addresses in brackets: [fd00::/8]:443"));
        } else {
            match t.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            }
        };
        let port = match port {
            None | Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port must be 1-65535 or `*`"))?,
            ),
        };
        let target = if target == "*" {
            DestinationTarget::Any
        } else if let Some(domain) = target.strip_prefix("*.") {
            host_name(domain).map_err(|e| bad(&e))?;
            DestinationTarget::Suffix(format!(".{}", domain.to_ascii_lowercase()))
        } else if target.contains('/') || target.parse::<IpAddr>().is_ok() {
            DestinationTarget::Net(target.parse().map_err(|e: String| bad(&e))?)
        } else {
            host_name(target).map_err(|e| bad(&e))?;
            DestinationTarget::Host(target.to_ascii_lowercase())
        };
        Ok(Destination { target, port })
    }
}

/// A DNS name: letters, digits, `-` and `.`, no wildcard but a leading `*.`.
fn host_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err("expected a host name, `*.domain`, `*`, an address or a block".into())
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            DestinationTarget::Any => f.write_str("*")?,
            DestinationTarget::Suffix(s) => write!(f, "*{s}")?,
            DestinationTarget::Host(h) => f.write_str(h)?,
            DestinationTarget::Net(c) if c.addr.is_ipv6() => write!(f, "[{c}]")?,
            DestinationTarget::Net(c) => write!(f, "{c}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Destination {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Destination".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A host (`api.example.com`), `*.domain`, `*`, an address or block \
                (`10.0.0.0/8`, `[fd00::/8]`), with an optional `:port`",
            "examples": ["api.stripe.com:443", "*.internal", "10.0.0.0/8:5432"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_read_as_written() {
        for (text, shown) in [
            ("*", "*"),
            ("*:443", "*:443"),
            ("*.Example.com", "*.example.com"),
            ("api.stripe.com:443", "api.stripe.com:443"),
            ("10.0.0.0/8:5432", "10.0.0.0/8:5432"),
            ("169.254.169.254", "169.254.169.254/32"),
            ("[fd00::/8]:443", "[fd00::/8]:443"),
            ("[::1]", "[::1/128]"),
            ("svc:*", "svc"),
        ] {
            let d: Destination = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.to_string(), shown);
        }
        for bad in [
            "",
            "a..b",
            "*.",
            "host:0",
            "host:99999",
            "fd00::1",
            "[fd00::1",
            "ex ample",
            "a*.b",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad:?}");
        }
    }
}
