//! One snapshot's delivery, compiled for one leg of the request flow and rebuilt when the
//! snapshot changes (specs/feature-flags.md §7, §13). Every delivered flag is looked up once,
//! and the decision of every flag that reads nothing from the request (no targeting, disabled,
//! unknown, or targeting that did not compile) is made once, with its header value, its
//! `x-flags` entry, its baggage member and its metric handles. A request then evaluates only
//! the flags with targeting, and builds only the parts of the context their rules can read.

use super::metrics::FlagFamilies;
use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use super::context::Needs;
use super::count::{EvalPath, error_counter, evaluation_counter};
use super::decision::FlagDecision;
use super::eval::{Decision, Flag, FlagSet, Kind};
use super::fast::Fast;
use super::intern;
use super::logic::Slot;
use super::render::{combined_entry, header_value, member, rendered, rendered_member};
use super::settings::{DeliverFlags, Delivery, Settings};

/// What `flag`'s evaluation may read of the built-ins.
fn needs_of(flag: &Flag) -> Needs {
    match &flag.targeting {
        Some(Ok(rule)) if flag.needs_context() => Needs::of(rule),
        _ => Needs::default(),
    }
}

pub struct Plan {
    pub snap: Arc<FlagSet>,
    /// The delivered flags, in delivery order.
    pub entries: Vec<Entry>,
    /// Per route of the leg: its flag, and the index of the entry that delivers it, if any.
    pub routes: Vec<(Option<Arc<Flag>>, Option<usize>)>,
    /// Whether some flag evaluated per request reads the context, and which built-ins.
    pub needs_context: bool,
    pub needs: Needs,
    /// Whether a rule may read `$flagd.timestamp`, so that a request reads the clock.
    pub needs_time: bool,
    /// When the context can be built flat (`logic::Data::Fields`): the dotted path of each
    /// configured attribute, in order. `None`: it is built as a JSON document.
    pub flat: Option<Vec<String>>,
    /// The flat context's field paths, in order (`ContextRules::layout`); empty when `flat`
    /// is `None`.
    pub layout: Vec<String>,
    /// Per route, where its flag's `var` paths land in the flat context.
    pub route_slots: Vec<Vec<Slot>>,
    /// Per route, its flag's targeting compiled, when it has a common shape.
    pub route_fast: Vec<Option<Fast>>,
}

pub struct Entry {
    pub key: Arc<str>,
    pub flag: Option<Arc<Flag>>,
    pub header: Option<HeaderName>,
    /// The decision, when it does not depend on the request.
    pub fixed: Option<Fixed>,
    /// Where the flag's `var` paths land in the flat context (when there is one).
    pub slots: Vec<Slot>,
    /// For a flag decided per request: what each of its variants adds, by variant index.
    pub variants: Vec<Prepared>,
    /// Its targeting compiled for the flat context, when the rule has a common shape.
    pub fast: Option<Fast>,
}

/// What a variant of a flag decided per request adds to the request, rendered with the plan.
pub struct Prepared {
    /// The header value (or the configured default, when the value has no header form).
    pub header: Option<HeaderValue>,
    /// The baggage member, when baggage delivery is on.
    pub member: Option<String>,
}

/// A decision made when the plan is, and what it adds to every request.
pub struct Fixed {
    pub decision: FlagDecision,
    pub out: Out<'static>,
    pub evaluations: Counter,
    pub errors: Option<Counter>,
}

/// What one delivered decision adds to a request.
pub struct Out<'a> {
    /// The `x-flag-<key>` value (or the configured default).
    pub header: Option<Cow<'a, HeaderValue>>,
    /// `"key":{…}` for the combined header, when there is one.
    pub combined: Cow<'a, str>,
    /// `flag.<key>=<variant>`, when baggage delivery is on and there is a variant.
    pub member: Option<Cow<'a, str>>,
    pub variant: Option<&'a str>,
}

impl Out<'_> {
    /// What `d` adds under `delivery`, from the plan's rendering of its variant when there is
    /// one (the common case: a variant's value, borrowed from the flag).
    pub fn prepared<'a>(
        delivery: &Delivery,
        key: &str,
        d: &Decision<'a>,
        prepared: &'a [Prepared],
    ) -> Out<'a> {
        let p = match (d.index, &d.value) {
            (Some(i), Some(Cow::Borrowed(_))) => prepared.get(i),
            _ => None,
        };
        let Some(p) = p else {
            return Out::of(delivery, key, d, d.index);
        };
        let mut combined = String::new();
        if delivery.combined.is_some() {
            combined_entry(&mut combined, key, d, d.index);
        }
        Out {
            header: p.header.as_ref().map(Cow::Borrowed),
            combined: Cow::Owned(combined),
            member: p.member.as_deref().map(Cow::Borrowed),
            variant: d.variant,
        }
    }

    /// What `d` adds under `delivery`.
    pub fn of<'a>(delivery: &Delivery, key: &str, d: &Decision<'a>, vi: Option<usize>) -> Out<'a> {
        let header = rendered(d, vi)
            .or_else(|| delivery.defaults.get(key).cloned())
            .map(Cow::Owned);
        let mut combined = String::new();
        if delivery.combined.is_some() {
            combined_entry(&mut combined, key, d, vi);
        }
        Out {
            header,
            combined: Cow::Owned(combined),
            member: if delivery.baggage {
                rendered_member(key, d, vi)
            } else {
                None
            },
            variant: d.variant,
        }
    }
}

impl Plan {
    pub fn new(settings: &Settings, families: &FlagFamilies, snap: Arc<FlagSet>) -> Plan {
        let mut entries = match &settings.delivery {
            Some(delivery) => delivered(settings, families, delivery, &snap),
            None => Vec::new(),
        };
        let routes: Vec<_> = settings
            .routes
            .iter()
            .map(|r| {
                (
                    snap.flags.get(&*r.flag).cloned(),
                    entries.iter().position(|e| e.key == r.flag),
                )
            })
            .collect();
        let evaluated = entries
            .iter()
            .filter(|e| e.fixed.is_none())
            .filter_map(|e| e.flag.as_deref())
            .chain(routes.iter().filter_map(|(f, _)| f.as_deref()))
            .filter(|f| f.needs_context());
        let mut needs_context = false;
        let mut needs = Needs::default();
        let mut reads = Vec::new();
        let mut known = true;
        for f in evaluated {
            needs_context = true;
            needs = needs.union(needs_of(f));
            if let Some(Ok(rule)) = &f.targeting {
                known &= rule.read_paths(&mut |p| reads.push(p.to_owned()));
            }
        }
        let needs_time = needs_context && (!known || reads.iter().any(|r| r.starts_with("$flagd")));
        let flat = if known {
            flat_layout(settings, needs, &reads)
        } else {
            None
        };
        let layout = match &flat {
            Some(paths) => settings.context.layout(needs, paths),
            None => Vec::new(),
        };
        let compiled = Compiled {
            settings,
            flat: flat.is_some(),
            layout: &layout,
        };
        for e in entries.iter_mut().filter(|e| e.fixed.is_none()) {
            e.slots = compiled.slots(e.flag.as_ref());
            e.fast = compiled.fast(e.flag.as_ref());
        }
        let route_slots = routes
            .iter()
            .map(|(f, _)| compiled.slots(f.as_ref()))
            .collect();
        let route_fast = routes
            .iter()
            .map(|(f, _)| compiled.fast(f.as_ref()))
            .collect();
        Plan {
            snap,
            entries,
            routes,
            needs_context,
            needs,
            needs_time,
            flat,
            layout,
            route_slots,
            route_fast,
        }
    }
}

/// What a plan with a flat context works out per flag, once.
struct Compiled<'a> {
    settings: &'a Settings,
    flat: bool,
    layout: &'a [String],
}

impl Compiled<'_> {
    /// Where the flag's `var` paths land in the flat context.
    fn slots(&self, flag: Option<&Arc<Flag>>) -> Vec<Slot> {
        match flag.map(|f| &f.targeting) {
            Some(Some(Ok(rule))) if self.flat => Slot::of_rule(rule, self.layout),
            _ => Vec::new(),
        }
    }

    /// Compiled targeting: for an enabled flag whose rule has a common shape, with a flat
    /// context (`fast`).
    fn fast(&self, flag: Option<&Arc<Flag>>) -> Option<Fast> {
        match flag {
            Some(f) if self.flat && f.needs_context() => match &f.targeting {
                Some(Ok(rule)) => Fast::compile(rule, f, self.layout, self.settings.fractional),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The delivered flags, in delivery order (all of them, by key, when delivery says `all`),
/// each with its fixed decision or its variants rendered.
fn delivered(
    settings: &Settings,
    families: &FlagFamilies,
    delivery: &Delivery,
    snap: &FlagSet,
) -> Vec<Entry> {
    let keys: Vec<(Arc<str>, Option<HeaderName>)> = match &delivery.flags {
        DeliverFlags::Keys(keys) => keys.clone(),
        DeliverFlags::All => {
            let mut all: Vec<_> = snap
                .flags
                .keys()
                .map(|k| {
                    let name = delivery.header_prefix.as_ref().and_then(|p| {
                        HeaderName::from_bytes((delivery.header_name)(p, k).as_bytes()).ok()
                    });
                    (Arc::<str>::from(k.as_str()), name)
                })
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        }
    };
    keys.into_iter()
        .map(|(key, header)| {
            let header = header.map(intern::name);
            let flag = snap.flags.get(&*key).cloned();
            let fixed = fixed(settings, families, delivery, &key, flag.as_ref());
            let variants = match (&fixed, &flag) {
                (None, Some(f)) => prepared(delivery, &key, f),
                _ => Vec::new(),
            };
            Entry {
                variants,
                key,
                flag,
                header,
                fixed,
                slots: Vec::new(),
                fast: None,
            }
        })
        .collect()
}

/// Whether `inner` is the path `outer` or a path inside it (segment-wise: `a.b` is inside
/// `a`, `ab` is not).
fn within(outer: &str, inner: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The attribute paths of a flat context, when one answers every read in `reads` exactly as
/// the JSON context would: no field may be inside another (so precedence never matters), no
/// read may name a parent of a field (a flat context has no such object), and no static key
/// may contain a dot (the JSON context would not find it by that path).
fn flat_layout(settings: &Settings, needs: Needs, reads: &[String]) -> Option<Vec<String>> {
    let rules = &settings.context;
    let attributes: Vec<String> = rules
        .attributes
        .iter()
        .map(|(_, path)| path.join("."))
        .collect();
    let odd_path = |path: &Vec<String>| path.is_empty() || path.iter().any(String::is_empty);
    if rules.attributes.iter().any(|(_, path)| odd_path(path))
        || rules
            .static_attributes
            .keys()
            .any(|k| k.is_empty() || k.contains('.'))
    {
        return None;
    }
    let fields = rules.layout(needs, &attributes);
    for (i, a) in fields.iter().enumerate() {
        if fields[i + 1..].iter().any(|b| within(a, b) || within(b, a)) {
            return None;
        }
    }
    let parent_read = reads
        .iter()
        .any(|r| fields.iter().any(|f| f.len() > r.len() && within(r, f)));
    if parent_read {
        return None;
    }
    Some(attributes)
}

/// What each variant of `flag` adds to a request, by variant index.
fn prepared(delivery: &Delivery, key: &str, flag: &Arc<Flag>) -> Vec<Prepared> {
    flag.variants
        .iter()
        .map(|(name, value)| Prepared {
            header: header_value(value)
                .map(intern::value)
                .or_else(|| delivery.defaults.get(key).cloned()),
            member: if delivery.baggage {
                member(key, name)
            } else {
                None
            },
        })
        .collect()
}

/// The decision of a flag that reads nothing from the request, made once.
fn fixed(
    settings: &Settings,
    families: &FlagFamilies,
    delivery: &Delivery,
    key: &str,
    flag: Option<&Arc<Flag>>,
) -> Option<Fixed> {
    let d = match flag {
        Some(f) if f.needs_context() => return None,
        Some(f) => f.decide(key, &Value::Null, 0, Kind::Any, settings.fractional),
        None => Decision::not_found(key),
    };
    let vi = d.index;
    let out = Out::of(delivery, key, &d, vi);
    Some(Fixed {
        decision: FlagDecision::at(Arc::from(key), flag, &d, vi),
        out: Out {
            header: out.header.map(|h| Cow::Owned(h.into_owned())),
            combined: Cow::Owned(out.combined.into_owned()),
            member: out.member.map(|m| Cow::Owned(m.into_owned())),
            // Borrowed from the snapshot, so read from `decision` per request.
            variant: None,
        },
        evaluations: evaluation_counter(families, key, &d, vi, EvalPath::Proxy).into_owned(),
        errors: error_counter(families, key, &d),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn needs(rule: Value) -> Needs {
        Needs::of(&super::super::logic::compile(&rule).unwrap())
    }

    #[test]
    fn the_context_carries_only_the_built_ins_a_rule_can_read() {
        assert_eq!(
            needs(json!({"==": [{"var": "plan"}, "pro"]})),
            Needs::default()
        );
        assert_eq!(
            needs(json!({"==": [{"var": "request.method"}, "GET"]})),
            Needs {
                method: true,
                ..Needs::default()
            }
        );
        assert_eq!(
            needs(json!({"in": [{"var": "request.client_address"}, ["10.0.0.1"]]})),
            Needs {
                client_address: true,
                ..Needs::default()
            }
        );
        // `request.path_prefix` is not `request.path`; `request.host.x` reads the host.
        assert_eq!(
            needs(json!({"var": "request.path_prefix"})),
            Needs::default()
        );
        assert_eq!(
            needs(json!({"var": "request.host.x"})),
            Needs {
                host: true,
                ..Needs::default()
            }
        );
        // The whole `request` object, the whole data, or a computed path: everything.
        assert_eq!(needs(json!({"var": "request"})), Needs::ALL);
        assert_eq!(needs(json!({"var": ""})), Needs::ALL);
        assert_eq!(needs(json!({"var": []})), Needs::ALL);
        assert_eq!(
            needs(json!({"var": {"cat": ["request.", "method"]}})),
            Needs::ALL
        );
        assert_eq!(
            needs(json!({"missing": {"merge": [["a"], ["request.path"]]}})),
            Needs::ALL
        );
        // A path inside a constant list (`missing`) counts.
        assert_eq!(
            needs(json!({"missing": ["request.path"]})),
            Needs {
                path: true,
                ..Needs::default()
            }
        );
    }
}
