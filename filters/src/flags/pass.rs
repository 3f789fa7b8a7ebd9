//! One request's pass through the flags step: who is calling (a trusted peer's decisions are
//! reused), the evaluation context (built once, flat when the plan allows), each delivered
//! flag decided and written as headers and baggage members, then each route's flag, and the
//! decisions kept for span events.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Request};
use serde_json::Value;

use super::context::RequestView;
use super::count::{EvalPath, count, count_at};
use super::decision::{FlagDecision, FlagDecisions};
use super::logic::{Data, Field, Flat, Slot};
use super::metrics::FlagFamilies;
use super::plan::{Entry, Out, Plan};
use super::render::member;
use super::request::{FlagMembers, Step, flag_members, strip_prefixed};
use super::settings::{Delivery, RouteTarget, Settings, Trust};

/// Who sent the request, as far as the flags step cares.
struct Caller {
    trusted: bool,
    /// The `flag.` members of its baggage (decisions, when it is trusted).
    members: FlagMembers,
}

/// The evaluation of one request: its context, and what was decided so far.
struct Pass<'p> {
    s: &'p Settings,
    families: &'p FlagFamilies,
    plan: &'p Plan,
    /// A trusted peer's decisions, by flag key.
    peer: &'p [(String, String)],
    /// The context as a JSON document, when the plan needs one (else `Null`).
    json: Value,
    /// The context as flat fields, when the plan allows them (else empty).
    fields: Vec<Field<'p>>,
    now: u64,
    /// Whether span events record the decisions.
    keep: bool,
    decisions: Vec<FlagDecision>,
    /// Per entry, its variant: what routes on a delivered flag go by.
    variants: Vec<Option<&'p str>>,
    /// `flag.<key>=<variant>` baggage members to write.
    members: Vec<(&'p str, Cow<'p, str>)>,
}

impl Step {
    /// Runs the step on a request: evaluates, rewrites its headers and baggage, picks the
    /// route, and returns its decisions when span events record them.
    pub(super) fn apply<B>(&self, req: &mut Request<B>) -> Option<Arc<FlagDecisions>> {
        let s = &self.settings;
        let plan = self.plan();
        let (caller, peer) = Caller::of(s, &plan, req);
        let view = RequestView {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            peer,
        };
        let mut pass = Pass::new(self, &plan, &caller.members.decisions, &view);
        let context_id = pass.context_id(&view);
        let headers = req.headers_mut();
        if let Some(delivery) = &s.delivery {
            pass.deliver(delivery, headers);
        }
        let route = pass.route();
        if !pass.members.is_empty() || (caller.members.any && !caller.trusted) {
            s.rewrite_baggage(
                &self.trace_families,
                headers,
                &pass.members,
                caller.trusted,
                caller.members.present,
            );
        }
        if let Some(target) = route {
            req.extensions_mut().insert(RouteTarget(target));
        }
        if pass.decisions.is_empty() {
            return None;
        }
        Some(Arc::new(FlagDecisions {
            decisions: pass.decisions,
            context_id,
            events: s.events,
        }))
    }
}

impl Caller {
    /// Whether the request's peer is trusted, and its flag members; the peer's address too
    /// when trust or `request.client_address` needs it.
    fn of<B>(s: &Settings, plan: &Plan, req: &Request<B>) -> (Self, Option<std::net::SocketAddr>) {
        let peer = match (&s.trust, plan.needs.client_address) {
            (Trust::Peers(_), _) | (_, true) => (s.peer_of)(req.extensions()),
            _ => None,
        };
        let trusted = match &s.trust {
            Trust::Never => false,
            Trust::Always => true,
            Trust::Peers(f) => peer.is_some_and(|p| f(p.ip())),
        };
        let members = flag_members(req.headers(), trusted);
        (Self { trusted, members }, peer)
    }
}

impl<'p> Pass<'p> {
    fn new(
        step: &'p Step,
        plan: &'p Plan,
        peer: &'p [(String, String)],
        view: &RequestView<'_>,
    ) -> Self {
        let s = &step.settings;
        let (json, fields) = match (&plan.flat, plan.needs_context) {
            (_, false) => (Value::Null, Vec::new()),
            (Some(paths), true) => (Value::Null, s.context.fields(view, plan.needs, paths)),
            (None, true) => (s.context.build(view, plan.needs), Vec::new()),
        };
        let keep = s.events.enabled;
        Self {
            s,
            families: &step.families,
            plan,
            peer,
            json,
            fields,
            now: if plan.needs_time { (s.clock)() } else { 0 },
            keep,
            decisions: Vec::with_capacity(if keep {
                plan.entries.len() + plan.routes.len()
            } else {
                0
            }),
            variants: Vec::with_capacity(if plan.routes.is_empty() {
                0
            } else {
                plan.entries.len()
            }),
            members: Vec::with_capacity(plan.entries.len() + plan.routes.len()),
        }
    }

    /// The context as one flag's rule reads it: with the plan's slots for its paths.
    fn data<'d>(&'d self, slots: &'d [Slot]) -> Data<'d> {
        match self.plan.flat {
            Some(_) => Data::Fields(Flat {
                fields: &self.fields,
                slots,
            }),
            None => Data::Json(&self.json),
        }
    }

    /// The targeting key span events name the context by, when they do.
    fn context_id(&self, view: &RequestView<'_>) -> Option<String> {
        if !(self.keep && self.s.events.include_context_id) {
            return None;
        }
        self.data(&[])
            .get("targetingKey")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                self.s
                    .context
                    .targeting_key
                    .iter()
                    .find_map(|src| src.read(view.uri, view.headers))
            })
    }

    /// Whether a trusted peer decided `key`.
    fn peer_decides(&self, key: &str) -> bool {
        self.peer.iter().any(|(k, _)| k == key)
    }

    /// Decides and delivers every entry of the plan: `x-flag-*` headers (replacing any that
    /// came), the combined header, and baggage members for later.
    fn deliver(&mut self, delivery: &'p Delivery, headers: &mut HeaderMap) {
        let plan = self.plan;
        if let Some(prefix) = &delivery.header_prefix {
            strip_prefixed(headers, prefix);
        }
        let mut combined = String::new();
        if let Some(c) = &delivery.combined {
            headers.remove(c);
            combined.reserve(64 * plan.entries.len());
            combined.push('{');
        }
        headers.reserve(plan.entries.len() + 2);
        for e in &plan.entries {
            let out = self.decide_entry(e, delivery);
            if let (Some(name), Some(value)) = (&e.header, out.header) {
                headers.append(name.clone(), value.into_owned());
            }
            if !out.combined.is_empty() {
                if combined.len() > 1 {
                    combined.push(',');
                }
                combined.push_str(&out.combined);
            }
            if let Some(m) = out.member {
                self.members.push((&e.key, m));
            }
            if !plan.routes.is_empty() {
                self.variants.push(out.variant);
            }
        }
        if let Some(c) = &delivery.combined
            && combined.len() > 1
        {
            combined.push('}');
            if let Ok(v) = HeaderValue::try_from(combined) {
                headers.insert(c.clone(), v);
            }
        }
    }

    /// One delivered flag's decision, rendered: the plan's fixed one (for a flag that does not
    /// depend on the request, unless a trusted peer decided it), or an evaluation.
    fn decide_entry(&mut self, e: &'p Entry, delivery: &Delivery) -> Out<'p> {
        let peer_decides = self.peer_decides(&e.key);
        if let Some(f) = e.fixed.as_ref().filter(|_| !peer_decides) {
            f.evaluations.inc();
            if let Some(c) = &f.errors {
                c.inc();
            }
            if self.keep {
                self.decisions.push(f.decision.clone());
            }
            return Out {
                header: f.out.header.as_ref().map(|h| Cow::Borrowed(&**h)),
                combined: Cow::Borrowed(&f.out.combined),
                member: f.out.member.as_ref().map(|m| Cow::Borrowed(&**m)),
                // Only routes read it, and finding it is a scan.
                variant: if self.plan.routes.is_empty() {
                    None
                } else {
                    f.decision.variant()
                },
            };
        }
        let d = match (&e.fast, &e.flag) {
            (Some(fast), Some(f)) if !peer_decides => fast.decide(&e.key, f, &self.fields),
            _ => self.s.decide(
                self.families,
                &e.key,
                e.flag.as_ref(),
                self.peer,
                self.data(&e.slots),
                self.now,
            ),
        };
        let vi = d.index;
        count_at(self.families, &e.key, &d, vi, EvalPath::Proxy);
        if self.keep {
            self.decisions
                .push(FlagDecision::at(e.key.clone(), e.flag.as_ref(), &d, vi));
        }
        Out::prepared(delivery, &e.key, &d, &e.variants)
    }

    /// Each route's flag decided (reusing a delivered flag's variant); the first route whose
    /// variant names an upstream picks it. Every decided variant travels as a member too.
    fn route(&mut self) -> Option<Arc<str>> {
        let (s, plan) = (self.s, self.plan);
        let mut route: Option<Arc<str>> = None;
        for (((r, (flag, delivered)), slots), fast) in s
            .routes
            .iter()
            .zip(&plan.routes)
            .zip(&plan.route_slots)
            .zip(&plan.route_fast)
        {
            let variant = match delivered {
                Some(i) => self.variants.get(*i).copied().flatten(),
                None => {
                    let d = match (fast, flag) {
                        (Some(fast), Some(f)) if !self.peer_decides(&r.flag) => {
                            fast.decide(&r.flag, f, &self.fields)
                        }
                        _ => s.decide(
                            self.families,
                            &r.flag,
                            flag.as_ref(),
                            self.peer,
                            self.data(slots),
                            self.now,
                        ),
                    };
                    count(self.families, &r.flag, &d, EvalPath::Route);
                    if self.keep {
                        self.decisions
                            .push(FlagDecision::of(r.flag.clone(), flag.as_ref(), &d));
                    }
                    d.variant
                }
            };
            let Some(v) = variant else { continue };
            if route.is_none() {
                route = r.variants.get(v).cloned();
            }
            if !self.members.iter().any(|(k, _)| *k == &*r.flag)
                && let Some(m) = member(&r.flag, v)
            {
                self.members.push((&r.flag, Cow::Owned(m)));
            }
        }
        route
    }
}
