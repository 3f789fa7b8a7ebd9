//! The flags step of each leg (specs/feature-flags.md §6–§9, §11): `spec.flags` compiled into
//! the filters' `FlagsLayer` (delivery inbound, routes on both legs) and into the OFREP
//! service, over the running sources (`flags.rs`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use attache_config::{Config, SourceKind};
use attache_filters::Body;
use attache_filters::flags::context::{ContextRules, Source};
use attache_filters::flags::intern;
use attache_filters::flags::logic::FractionalVersion;
use attache_filters::flags::ofrep::Ofrep;
use attache_filters::flags::render::header_value;
use attache_filters::flags::request::FlagsLayer;
use attache_filters::flags::settings::{
    DeliverFlags, Delivery, EventSettings, Route, Settings, Trust, unix_now,
};
use attache_filters::metrics::{Direction, Metrics};
use attache_filters::trace_context::baggage;
use http::{HeaderName, Request};

use crate::conn::ConnInfo;
use crate::flags::Running;

fn fractional(v: attache_config::FractionalVersion) -> FractionalVersion {
    match v {
        attache_config::FractionalVersion::V1 => FractionalVersion::V1,
        attache_config::FractionalVersion::V2 => FractionalVersion::V2,
        attache_config::FractionalVersion::V3 => FractionalVersion::V3,
    }
}

fn source(s: &attache_config::ContextSource) -> Option<Source> {
    let (kind, name) = s.source()?;
    Some(match kind {
        SourceKind::Header => Source::Header(HeaderName::from_bytes(name.as_bytes()).ok()?),
        SourceKind::Cookie => Source::Cookie(name.to_owned()),
        SourceKind::Query => Source::Query(name.to_owned()),
        SourceKind::Baggage => Source::Baggage(name.to_owned()),
    })
}

fn context_rules(flags: &attache_config::Flags, headers_only: bool) -> ContextRules {
    let c = &flags.context;
    ContextRules {
        targeting_key: c.targeting_key.iter().filter_map(source).collect(),
        attributes: c
            .attributes
            .iter()
            .filter(|a| !headers_only || a.header.is_some())
            .filter_map(|a| Some((source(a)?, a.key().split('.').map(str::to_owned).collect())))
            .collect(),
        static_attributes: c.static_attributes.clone(),
    }
}

fn peer_of(ext: &http::Extensions) -> Option<SocketAddr> {
    ext.get::<ConnInfo>().map(|c| c.peer)
}

/// The flags step of one leg: inbound (delivery, and routes of `app`) or an outbound
/// listener for `upstream` (its routes; the app's own baggage is trusted). `None` when the
/// leg has nothing to do. `spans`: whether the leg's spans are exported; when they are not,
/// no decision is kept for span events.
pub fn layer(
    config: &Config,
    running: Option<&Arc<Running>>,
    direction: Direction,
    upstream: &str,
    metrics: &Arc<Metrics>,
    spans: bool,
) -> Option<FlagsLayer> {
    let flags = config.spec.flags.as_ref()?;
    let running = running?;
    let routes: Vec<Route> = flags
        .routes
        .iter()
        .filter(|r| r.upstream == upstream)
        .map(|r| Route {
            flag: Arc::from(r.flag.as_str()),
            variants: r
                .variants
                .iter()
                .map(|(v, u)| (v.clone(), Arc::from(u.as_str())))
                .collect(),
        })
        .collect();
    let delivery = match direction {
        Direction::Outbound if routes.is_empty() => return None,
        Direction::Outbound => None,
        Direction::Inbound => Some(delivery(&flags.deliver)),
    };
    let trust = match direction {
        Direction::Outbound => Trust::Always,
        Direction::Inbound if flags.trust_upstream_decisions => {
            let peers = flags.trusted_peers.clone();
            Trust::Peers(Arc::new(move |ip| peers.iter().any(|c| c.contains(ip))))
        }
        Direction::Inbound => Trust::Never,
    };
    let t = &config.spec.trace.baggage;
    Some(FlagsLayer::new(Settings {
        store: running.store.clone(),
        fractional: fractional(flags.fractional_version),
        context: context_rules(flags, false),
        delivery,
        trust,
        routes,
        events: EventSettings {
            enabled: flags.telemetry.events && spans,
            include_value: flags.telemetry.include_value,
            include_context_id: flags.telemetry.include_context_id,
        },
        metrics: metrics.clone(),
        baggage: baggage::Limits {
            max_members: t.max_members as usize,
            max_bytes: t.max_bytes as usize,
        },
        peer_of,
        clock: unix_now,
    }))
}

/// How the inbound leg hands decisions to the app (`spec.flags.deliver`): which flags, as
/// which headers, the combined header, baggage members, defaults.
fn delivery(d: &attache_config::Deliver) -> Delivery {
    Delivery {
        flags: if d.flags.iter().any(|f| f == "*") {
            DeliverFlags::All
        } else {
            DeliverFlags::Keys(
                d.flags
                    .iter()
                    .map(|k| {
                        let name = d.header_prefix.as_ref().and_then(|p| {
                            let name = attache_config::flag_header_name(p, k);
                            HeaderName::from_bytes(name.as_bytes()).ok()
                        });
                        (Arc::from(k.as_str()), name)
                    })
                    .collect(),
            )
        },
        header_prefix: d.header_prefix.as_ref().map(|p| p.to_ascii_lowercase()),
        header_name: attache_config::flag_header_name,
        combined: d
            .combined_header
            .as_ref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        baggage: d.baggage,
        defaults: d
            .defaults
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), intern::value(header_value(v)?))))
            .collect::<HashMap<_, _>>(),
    }
}

/// The OFREP service of a snapshot, and where it listens.
pub fn ofrep(
    config: &Config,
    running: Option<&Arc<Running>>,
    metrics: &Arc<Metrics>,
) -> Option<(SocketAddr, Arc<Ofrep>)> {
    let flags = config.spec.flags.as_ref()?;
    let o = flags.ofrep.as_ref()?;
    Some((
        o.listen.0,
        Arc::new(Ofrep {
            store: running?.store.clone(),
            fractional: fractional(flags.fractional_version),
            context: context_rules(flags, true),
            metrics: metrics.family(),
            max_body_bytes: usize::try_from(o.max_body_bytes.0).unwrap_or(usize::MAX),
            clock: unix_now,
            events: EventSettings {
                enabled: flags.telemetry.events,
                include_value: flags.telemetry.include_value,
                include_context_id: flags.telemetry.include_context_id,
            },
        }),
    ))
}

/// The OFREP request flow: a SERVER span (continuing the caller's trace, if any) whose
/// `feature_flag.evaluation` event records a single evaluation, then OFREP itself.
pub fn ofrep_stack(
    config: &Config,
    ofrep: Arc<Ofrep>,
    metrics: &Arc<Metrics>,
    telemetry: &crate::telemetry::Telemetry,
) -> crate::stack::Stack {
    let svc = tower::service_fn(move |req: Request<Body>| {
        let ofrep = ofrep.clone();
        async move { Ok::<_, Infallible>(ofrep.serve(req).await) }
    });
    crate::stack::side(config, metrics, telemetry, svc)
}

#[cfg(test)]
mod tests {
    /// The config validates per-flag header names by its own copy of §7's rule (it does not
    /// depend on the filters crate); the names it approves must be the ones the step writes.
    #[test]
    fn the_config_and_the_filters_name_flag_headers_alike() {
        for (prefix, key) in [
            ("x-flag-", "new-checkout"),
            ("X-Flag-", "Dark_Mode"),
            ("x-", "a.b c/é"),
            ("", "UPPER9"),
        ] {
            assert_eq!(
                attache_config::flag_header_name(prefix, key),
                attache_filters::flags::builder::flag_header_name(prefix, key),
                "{prefix}{key}"
            );
        }
    }
}
