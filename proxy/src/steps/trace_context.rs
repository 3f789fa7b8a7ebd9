//! The trace-context step of each leg: `spec.trace` (and a listener's override) compiled into
//! the filters' `PropagationLayer`, and the restoration table both legs of a snapshot share.

use std::sync::Arc;

use attache_config::{Config, Correlation, InjectFormat, TraceFormat, TraceOverride};
use attache_filters::metrics::{Direction, Metrics};
use attache_filters::trace_context::ids::RandomIds;
use attache_filters::trace_context::metrics::TraceFamilies;
use attache_filters::trace_context::propagate::{
    HeaderPattern, PropagationLayer, Restore, RestoreLeg, Settings,
};
use attache_filters::trace_context::restore::{self, InFlight, Table};
use attache_filters::trace_context::{Format, baggage};
use http::HeaderName;

/// The restoration state both legs of a snapshot share.
pub struct Restoration {
    pub table: Arc<Table>,
    pub in_flight: Option<Arc<InFlight>>,
}

/// The trace-context settings of one leg, or `None` when `spec.trace.enabled` is false.
pub fn propagation(
    config: &Config,
    direction: Direction,
    over: Option<&TraceOverride>,
    metrics: &Arc<Metrics>,
    restoration: Option<&Restoration>,
) -> Option<PropagationLayer> {
    let t = &config.spec.trace;
    if !t.enabled {
        return None;
    }
    let sampling = t.sampling.effective(&|k| std::env::var(k).ok());
    let extract = over.and_then(|o| o.extract.as_ref()).unwrap_or(&t.extract);
    let inject_formats = over.and_then(|o| o.inject.as_ref()).unwrap_or(&t.inject);
    // A request id is generated where a request enters the mesh: the inbound leg.
    let request_id = (direction == Direction::Inbound && t.request_id.generate)
        .then(|| HeaderName::from_bytes(t.request_id.header.as_bytes()).ok())
        .flatten();
    let (to_baggage, from_baggage) = mappings(t, direction);
    Some(
        PropagationLayer::new(Settings {
            extract: extract.iter().copied().map(format).collect(),
            inject: inject_formats.iter().filter_map(|f| injected(*f)).collect(),
            inject_baggage: inject_formats.contains(&InjectFormat::Baggage),
            mirror: over.and_then(|o| o.mirror).unwrap_or(t.mirror),
            tracestate_max_len: t.tracestate_max_len as usize,
            baggage: baggage::Limits {
                max_members: t.baggage.max_members as usize,
                max_bytes: t.baggage.max_bytes as usize,
            },
            request_id,
            ratio: sampling.ratio,
            parent_based: sampling.parent_based,
            to_baggage,
            from_baggage,
            restore: restoration.map(|r| restore(t, r, direction)),
            ids: Arc::new(RandomIds::default()),
        })
        .with_metrics(metrics.clone(), direction),
    )
}

/// A format attache reads.
fn format(f: TraceFormat) -> Format {
    match f {
        TraceFormat::Tracecontext => Format::TraceContext,
        TraceFormat::B3 => Format::B3,
        TraceFormat::B3multi => Format::B3Multi,
        TraceFormat::Jaeger => Format::Jaeger,
    }
}

/// A trace format attache writes (`baggage` is not one: it is validated and forwarded).
fn injected(f: InjectFormat) -> Option<Format> {
    match f {
        InjectFormat::Tracecontext => Some(Format::TraceContext),
        InjectFormat::B3 => Some(Format::B3),
        InjectFormat::B3multi => Some(Format::B3Multi),
        InjectFormat::Jaeger => Some(Format::Jaeger),
        InjectFormat::Baggage => None,
    }
}

/// Context mapping (§6): headers copied into baggage members on both legs, and members into
/// headers for the app, on the inbound leg only.
type Mappings = (Vec<(HeaderName, String)>, Vec<(String, HeaderName)>);

fn mappings(t: &attache_config::Trace, direction: Direction) -> Mappings {
    let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
    let to_baggage = t
        .context
        .to_baggage
        .iter()
        .filter_map(|m| Some((header(&m.header)?, m.key.clone())))
        .collect();
    let from_baggage = match direction {
        Direction::Inbound => t
            .context
            .from_baggage
            .iter()
            .filter_map(|m| Some((m.key.clone(), header(&m.header)?)))
            .collect(),
        Direction::Outbound => Vec::new(),
    };
    (to_baggage, from_baggage)
}

/// Restoration on one leg: the inbound leg records into the snapshot's table, the outbound
/// legs restore from it.
fn restore(t: &attache_config::Trace, r: &Restoration, direction: Direction) -> Restore {
    Restore {
        table: r.table.clone(),
        single_in_flight: r.in_flight.clone(),
        leg: match direction {
            Direction::Inbound => RestoreLeg::Record,
            Direction::Outbound => RestoreLeg::Apply,
        },
        headers: t
            .restore
            .headers
            .iter()
            .filter_map(|h| HeaderPattern::parse(h))
            .collect(),
        baggage: t.restore.baggage,
    }
}

/// The snapshot's restoration table, when `spec.trace.restore` is on: shared by the inbound
/// leg (which records) and the outbound legs (which restore). A reload starts an empty one.
pub fn restoration(config: &Config, metrics: &Arc<Metrics>) -> Option<Restoration> {
    let spec = &config.spec;
    let restore = &spec.trace.restore;
    (spec.trace.enabled && restore.enabled).then(|| {
        let m = metrics.family::<TraceFamilies>();
        let table = Arc::new(
            Table::new(restore::Limits {
                ttl: restore.ttl.get(),
                max_entries: restore.max_entries as usize,
                max_bytes: usize::try_from(restore.max_bytes.0).unwrap_or(usize::MAX),
                max_record_bytes: usize::try_from(restore.max_record_bytes.0).unwrap_or(usize::MAX),
            })
            .on_evict(Arc::new(move |reason| m.restore_evicted(reason))),
        );
        let in_flight = (restore.correlation == Correlation::SingleInFlight)
            .then(|| Arc::new(InFlight::default()));
        Restoration { table, in_flight }
    })
}
