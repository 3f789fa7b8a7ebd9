//! The families of TLS termination on the inbound listener.

use attache_filters::metrics::{Families, ReasonLabels, ResultLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct TlsFamilies {
    /// Handshakes with clients that failed, by reason (see [`super::failure_reason`]).
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// Certificate files read again after they changed, by result (`success`, `failure`).
    pub reloads: Family<ResultLabels, Counter>,
    /// When the served certificate expires (its `notAfter`, Unix seconds): alert on it.
    pub expiry: Gauge,
}

impl Families for TlsFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            handshake_failures: Family::default(),
            reloads: Family::default(),
            expiry: Gauge::default(),
        };
        registry.register(
            "inbound_tls_handshake_failures",
            "TLS handshakes with clients of the inbound listener that failed, by reason",
            f.handshake_failures.clone(),
        );
        registry.register(
            "inbound_tls_reloads",
            "Reloads of the inbound certificate, key and client CA files after they changed, by result",
            f.reloads.clone(),
        );
        registry.register(
            "inbound_tls_certificate_expiry_timestamp_seconds",
            "When the inbound listener's certificate expires (notAfter, Unix time)",
            f.expiry.clone(),
        );
        f
    }
}

impl TlsFamilies {
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }
}
