//! Which destinations the forward proxy may reach (`spec.forward_proxy.allow`), decided twice:
//! on the name the app asked for, then on each address that name resolved to, so a name that
//! resolves to a metadata address (DNS rebinding) is refused as the address itself would be.
//! The connection is then made to the very address that was checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use attache_config::{Cidr, Destination, DestinationTarget};

/// Blocks refused whatever a rule says, unless a rule names an address or block inside them:
/// link-local (where cloud metadata services answer: 169.254.169.254) and AWS's IPv6
/// metadata address.
const GUARDED: [Cidr; 3] = [
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
        prefix: 16,
    },
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        prefix: 10,
    },
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
        prefix: 128,
    },
];

/// Why a destination was refused: the metric label and the answer's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No rule allows it.
    NotAllowed,
    /// A link-local or metadata address no rule names.
    Metadata,
    /// attache's own admin port (or the forward proxy's own, a loop).
    Admin,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::Metadata => "metadata",
            Refusal::Admin => "admin",
        }
    }

    pub fn detail(self, host: &str, port: u16) -> String {
        match self {
            Refusal::NotAllowed => format!(
                "{host}:{port} is not an allowed destination of this forward proxy (spec.forward_proxy.allow)"
            ),
            Refusal::Metadata => format!(
                "{host}:{port} is a link-local or cloud metadata address, refused unless spec.forward_proxy.allow names it"
            ),
            Refusal::Admin => format!(
                "{host}:{port} is attache's own admin (or forward proxy) port, refused unless spec.forward_proxy.allow names that port"
            ),
        }
    }
}

/// The allowlist, and the addresses that are attache's own.
pub struct Allow {
    rules: Vec<Destination>,
    /// attache's admin listener, and the forward proxy's own (a loop).
    own: Vec<SocketAddr>,
}

impl Allow {
    pub fn new(rules: Vec<Destination>, own: Vec<SocketAddr>) -> Self {
        Self { rules, own }
    }

    /// Whether a host rule allows `host:port` by its name (`host` lowercase, no brackets).
    pub fn by_name(&self, host: &str, port: u16) -> bool {
        self.rules.iter().any(|r| {
            r.port.is_none_or(|p| p == port)
                && match &r.target {
                    DestinationTarget::Any => true,
                    DestinationTarget::Suffix(s) => host.ends_with(s.as_str()),
                    DestinationTarget::Host(h) => h == host,
                    DestinationTarget::Net(_) => false,
                }
        })
    }

    /// Whether attache may connect to `addr`, a resolved address of a name that `named`
    /// (allowed by its name or not).
    pub fn address(&self, addr: SocketAddr, named: bool) -> Result<(), Refusal> {
        let ip = canonical(addr.ip());
        let covering = |explicit_only: bool| {
            self.rules.iter().any(|r| {
                r.port.is_none_or(|p| p == addr.port())
                    && matches!(&r.target, DestinationTarget::Net(c)
                        if c.contains(ip) && (!explicit_only || GUARDED.iter().any(|g| inside(c, g))))
            })
        };
        if GUARDED.iter().any(|g| g.contains(ip)) && !covering(true) {
            return Err(Refusal::Metadata);
        }
        if self.own.iter().any(|own| is_own(*own, addr)) && !self.names_port(addr.port()) {
            return Err(Refusal::Admin);
        }
        if named || covering(false) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// A rule that names this port explicitly (`*:15000`, `127.0.0.1:15000`).
    fn names_port(&self, port: u16) -> bool {
        self.rules.iter().any(|r| r.port == Some(port))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether block `c` lies inside block `g`.
fn inside(c: &Cidr, g: &Cidr) -> bool {
    c.prefix >= g.prefix && g.contains(c.addr)
}

/// Whether `addr` reaches attache's listener `own`: the same port, on its address, or on any
/// local one when it listens on all of them.
fn is_own(own: SocketAddr, addr: SocketAddr) -> bool {
    let ip = canonical(addr.ip());
    own.port() == addr.port()
        && (canonical(own.ip()) == ip
            || ip.is_loopback()
            || ip.is_unspecified()
            || own.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(rules: &[&str]) -> Allow {
        Allow::new(
            rules.iter().map(|r| r.parse().expect("a rule")).collect(),
            vec!["127.0.0.1:15000".parse().expect("addr")],
        )
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn names_match_hosts_wildcards_and_ports() {
        let a = allow(&["api.stripe.com:443", "*.internal", "10.0.0.0/8:5432"]);
        assert!(a.by_name("api.stripe.com", 443));
        assert!(!a.by_name("api.stripe.com", 80));
        assert!(a.by_name("db.internal", 5432));
        assert!(!a.by_name("internal", 80), "a wildcard is for subdomains");
        assert!(!a.by_name("evilinternal", 80));
        assert!(
            !a.by_name("10.1.2.3", 5432),
            "address rules match addresses"
        );
        assert_eq!(a.address(at("10.1.2.3:5432"), false), Ok(()));
        assert_eq!(
            a.address(at("10.1.2.3:22"), false),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(a.address(at("93.184.216.34:443"), true), Ok(()));
        assert_eq!(
            a.address(at("93.184.216.34:443"), false),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn metadata_and_admin_are_refused_unless_named() {
        let any = allow(&["*", "0.0.0.0/0", "[::/0]"]);
        for metadata in [
            "169.254.169.254:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:80",
            "[::ffff:169.254.169.254]:80",
        ] {
            assert_eq!(
                any.address(at(metadata), true),
                Err(Refusal::Metadata),
                "{metadata}"
            );
        }
        assert_eq!(
            any.address(at("127.0.0.1:15000"), true),
            Err(Refusal::Admin)
        );
        assert_eq!(any.address(at("127.0.0.1:15001"), true), Ok(()));
        let named = allow(&["169.254.169.254:80", "127.0.0.1:15000"]);
        assert_eq!(named.address(at("169.254.169.254:80"), false), Ok(()));
        assert_eq!(
            named.address(at("169.254.169.253:80"), false),
            Err(Refusal::Metadata)
        );
        assert_eq!(named.address(at("127.0.0.1:15000"), false), Ok(()));
    }
}
