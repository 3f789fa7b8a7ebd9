//! The families of the forward proxy and of transparent capture.

use attache_filters::metrics::{Families, ReasonLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct ForwardProxyFamilies {
    /// Requests refused by destination, by reason (`not_allowed`, `metadata`, `admin`).
    pub denied: Family<ReasonLabels, Counter>,
    /// CONNECT tunnels opened.
    pub tunnels: Counter,
    /// CONNECT tunnels open now.
    pub open_tunnels: Gauge,
    /// Captured connections that were not HTTP, joined to their destination as TCP.
    pub captured_tcp: Counter,
}

impl Families for ForwardProxyFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            denied: Family::default(),
            tunnels: Counter::default(),
            open_tunnels: Gauge::default(),
            captured_tcp: Counter::default(),
        };
        registry.register(
            "forward_proxy_denied",
            "Forward-proxy requests refused by their destination, by reason",
            f.denied.clone(),
        );
        registry.register(
            "forward_proxy_tunnels",
            "CONNECT tunnels the forward proxy opened",
            f.tunnels.clone(),
        );
        registry.register(
            "forward_proxy_open_tunnels",
            "CONNECT tunnels open now",
            f.open_tunnels.clone(),
        );
        registry.register(
            "capture_tcp_tunnels",
            "Captured connections that were not HTTP, tunnelled to their original destination",
            f.captured_tcp.clone(),
        );
        f
    }
}
