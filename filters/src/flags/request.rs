//! The flags step of the request flow (specs/feature-flags.md §6–§9, §11): build the evaluation
//! context from the request, evaluate the delivered flags (or reuse a trusted peer's
//! decisions), hand the decisions to the app as headers and baggage, and pick a route by
//! variant.
//!
//! Each request reads the flag snapshot once. The context is built only when a flag with
//! targeting needs it, so static flags cost a map lookup and a pre-rendered header value.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::decision::FlagDecisions;
use super::eval::{Decision, Flag, Kind};
use super::logic::Data;
use super::metrics::{FlagFamilies, FlagLabels};
use super::plan::Plan;
use super::settings::Settings;
use crate::codec::percent;
use crate::trace_context::baggage::{self, BAGGAGE_HEADER};
use crate::trace_context::metrics::TraceFamilies;

impl Settings {
    /// Decides `key`: a trusted peer's decision when it names a known variant (`CACHED`),
    /// otherwise an evaluation against `ctx`.
    pub(super) fn decide<'a>(
        &self,
        families: &FlagFamilies,
        key: &str,
        flag: Option<&'a Arc<Flag>>,
        peer: &[(String, String)],
        ctx: Data<'_>,
        now: u64,
    ) -> Decision<'a> {
        if let Some((_, variant)) = peer.iter().find(|(k, _)| k == key) {
            match flag.and_then(|f| Decision::cached(f, variant)) {
                Some(d) => {
                    families
                        .reused
                        .get_or_create(&FlagLabels {
                            flag: key.to_owned(),
                        })
                        .inc();
                    return d;
                }
                None => {
                    let flag = if flag.is_some() { key } else { "_unknown" };
                    families
                        .skew
                        .get_or_create(&FlagLabels {
                            flag: flag.to_owned(),
                        })
                        .inc();
                }
            }
        }
        match flag {
            Some(f) => f.decide_in(key, ctx, now, Kind::Any, self.fractional),
            None => Decision::not_found(key),
        }
    }

    /// Writes `flag.<key>=<variant>` members, replacing earlier ones for the same keys (and
    /// every `flag.` member from an untrusted peer); other members are kept, unless the
    /// header is invalid. A member past the baggage limits is dropped and counted.
    /// `present`: whether the request has a baggage header at all (when it has none, there
    /// are no members to keep, and the header map is not searched for them).
    pub(super) fn rewrite_baggage(
        &self,
        dropped: &TraceFamilies,
        headers: &mut HeaderMap,
        ours: &[(&str, Cow<'_, str>)],
        trusted: bool,
        present: bool,
    ) {
        let mut out = String::with_capacity(256);
        let mut count = 0usize;
        if present {
            for m in baggage::members(headers) {
                let Ok(m) = m else {
                    out.clear();
                    count = 0;
                    break;
                };
                if let Some(k) = m.key.strip_prefix("flag.")
                    && (!trusted || ours.iter().any(|(o, _)| *o == k))
                {
                    continue;
                }
                if count > 0 {
                    out.push(',');
                }
                out.push_str(m.raw);
                count += 1;
            }
        }
        for (_, member) in ours {
            let add = member.len() + usize::from(count > 0);
            if count + 1 > self.baggage.max_members || out.len() + add > self.baggage.max_bytes {
                dropped.baggage_member_dropped();
                continue;
            }
            if count > 0 {
                out.push(',');
            }
            out.push_str(member);
            count += 1;
        }
        match HeaderValue::try_from(out) {
            Ok(v) if count > 0 => {
                headers.insert(BAGGAGE_HEADER, v);
            }
            _ => {
                headers.remove(&BAGGAGE_HEADER);
            }
        }
    }
}

/// The flags step of one leg: its settings, and the plan of the snapshot it last saw.
pub(super) struct Step {
    pub(super) settings: Settings,
    plan: ArcSwapOption<Plan>,
    /// `settings.metrics`' families, taken once.
    pub(super) families: Arc<FlagFamilies>,
    pub(super) trace_families: Arc<TraceFamilies>,
}

/// What a request's baggage holds for the flags step.
pub(super) struct FlagMembers {
    /// The request has a baggage header.
    pub(super) present: bool,
    /// It has `flag.` members.
    pub(super) any: bool,
    /// From a trusted peer: the decisions those members carry, percent-decoded.
    pub(super) decisions: Vec<(String, String)>,
}

/// The `flag.` members of a request's baggage.
pub(super) fn flag_members(headers: &HeaderMap, trusted: bool) -> FlagMembers {
    let values = headers.get_all(&BAGGAGE_HEADER);
    let present = values.iter().next().is_some();
    let maybe = present
        && values
            .iter()
            .any(|v| v.as_bytes().windows(5).any(|w| w == b"flag."));
    let mut decisions = Vec::new();
    let mut any = false;
    if maybe {
        for m in baggage::members(headers).flatten() {
            if let Some(k) = m.key.strip_prefix("flag.") {
                any = true;
                if trusted {
                    decisions.push((k.to_owned(), percent::decode_str(m.value, false)));
                }
            }
        }
    }
    FlagMembers {
        present,
        any,
        decisions,
    }
}

impl Step {
    /// The plan of the current snapshot: the cached one, or a new one when the snapshot
    /// changed since.
    pub(super) fn plan(&self) -> Arc<Plan> {
        let snap = self.settings.store.current();
        if let Some(plan) = &*self.plan.load()
            && Arc::ptr_eq(&plan.snap, &snap)
        {
            return plan.clone();
        }
        let plan = Arc::new(Plan::new(&self.settings, &self.families, Arc::clone(&snap)));
        self.plan.store(Some(plan.clone()));
        plan
    }
}

/// Removes every header whose name starts with `prefix` (client-sent decisions).
pub(super) fn strip_prefixed(headers: &mut HeaderMap, prefix: &str) {
    if !headers.keys().any(|k| k.as_str().starts_with(prefix)) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(prefix))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The flags step as a tower layer.
#[derive(Clone)]
pub struct FlagsLayer {
    step: Arc<Step>,
}

impl FlagsLayer {
    pub fn new(settings: Settings) -> Self {
        Self {
            step: Arc::new(Step {
                families: settings.metrics.family(),
                trace_families: settings.metrics.family(),
                settings,
                plan: ArcSwapOption::empty(),
            }),
        }
    }
}

impl<S> Layer<S> for FlagsLayer {
    type Service = FlagsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FlagsService {
            inner,
            step: self.step.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FlagsService<S> {
    inner: S,
    step: Arc<Step>,
}

impl<S, B, RB> Service<Request<B>> for FlagsService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = FlagsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let decisions = self.step.apply(&mut req);
        FlagsFuture {
            inner: self.inner.call(req),
            decisions,
        }
    }
}

pin_project! {
    pub struct FlagsFuture<F> {
        #[pin]
        inner: F,
        decisions: Option<Arc<FlagDecisions>>,
    }
}

impl<F, RB, E> Future for FlagsFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx));
        if let (Ok(res), Some(d)) = (res.as_mut(), this.decisions.take()) {
            crate::facts::hand_up(res.extensions_mut(), d);
        }
        Poll::Ready(res)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use serde_json::{Map, Value, json};

    use http::{Uri, header};

    use super::super::context::{ContextRules, Needs, RequestView, Source, insert_path};
    use super::super::logic::Flat;
    use super::super::logic::{Flagd, FractionalVersion, Place, Rule, Scope, Slot, compile};
    use super::super::render::header_value;
    use super::super::settings::{DeliverFlags, Delivery, EventSettings, Route};
    use super::super::settings::{RouteTarget, Trust};
    use super::super::store::FlagStore;
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn header_values_follow_the_spec() {
        let h = |v: Value| header_value(&v).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h(json!(true)), "true");
        assert_eq!(h(json!(1.5)), "1.5");
        assert_eq!(h(json!("dark")), "dark");
        assert_eq!(h(json!({"a": [1, 2]})), r#"{"a":[1,2]}"#);
        assert_eq!(h(json!("café")), r#""caf\u00e9""#);
        assert_eq!(h(json!("\"quoted")), r#""\"quoted""#);
        assert_eq!(h(json!(" padded")), r#"" padded""#);
        assert_eq!(h(json!("")), r#""""#);
        assert_eq!(h(json!("😀")), r#""\ud83d\ude00""#);
    }

    /// A store holding one source's document.
    fn store_with(doc: Value) -> Arc<FlagStore> {
        let store = Arc::new(FlagStore::new(1));
        store.update(0, &doc).unwrap();
        store
    }

    fn step(store: Arc<FlagStore>, flags: DeliverFlags) -> Step {
        let metrics = Arc::new(Metrics::new());
        Step {
            families: metrics.family(),
            trace_families: metrics.family(),
            settings: Settings {
                store,
                fractional: FractionalVersion::V2,
                context: ContextRules {
                    targeting_key: vec![Source::Header(HeaderName::from_static("x-user"))],
                    ..ContextRules::default()
                },
                delivery: Some(Delivery {
                    flags,
                    header_prefix: Some("x-flag-".into()),
                    header_name: |p, k| format!("{p}{k}"),
                    combined: None,
                    baggage: true,
                    defaults: HashMap::new(),
                }),
                trust: Trust::Never,
                routes: Vec::new(),
                events: EventSettings::default(),
                metrics,
                baggage: baggage::Limits::default(),
                peer_of: |_| None,
                clock: || 0,
            },
            plan: ArcSwapOption::empty(),
        }
    }

    fn run(step: &Step, user: &str) -> HeaderMap {
        let mut req = Request::get("/")
            .header("x-user", user)
            .header("x-flag-forged", "1")
            .body(())
            .unwrap();
        assert_eq!(step.apply(&mut req), None, "no span events asked for");
        req.headers().clone()
    }

    /// The plan is made once per snapshot, and a new snapshot (a new flag, a changed static
    /// value) is picked up by the next request.
    #[test]
    fn plans_follow_the_snapshot() {
        let store = Arc::new(FlagStore::new(1));
        let doc = |color: &str| {
            json!({"flags": {
                "theme": {"state": "ENABLED", "variants": {"c": color}, "defaultVariant": "c"},
                "beta": {"state": "ENABLED", "variants": {"on": true, "off": false},
                         "defaultVariant": "off",
                         "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u1"]}, "on"]}}
            }})
        };
        store.update(0, &doc("red")).unwrap();
        let all = step(store.clone(), DeliverFlags::All);
        let h = run(&all, "u1");
        assert_eq!(h["x-flag-theme"], "red");
        assert_eq!(h["x-flag-beta"], "true");
        assert!(!h.contains_key("x-flag-forged"));
        assert_eq!(h["baggage"], "flag.beta=on,flag.theme=c");
        let first = all.plan.load_full().unwrap();
        assert_eq!(run(&all, "u2")["x-flag-beta"], "false");
        assert!(
            Arc::ptr_eq(&first, &all.plan.load_full().unwrap()),
            "one plan per snapshot"
        );

        let mut next = doc("blue");
        next["flags"]["added"] =
            json!({"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "x"});
        store.update(0, &next).unwrap();
        let h = run(&all, "u1");
        assert_eq!(h["x-flag-theme"], "blue");
        assert_eq!(h["x-flag-added"], "1");
        assert_eq!(h["baggage"], "flag.added=x,flag.beta=on,flag.theme=c");

        // A listed key the snapshot lacks: no header, FLAG_NOT_FOUND counted per request.
        let listed = step(
            store,
            DeliverFlags::Keys(vec![(
                Arc::from("gone"),
                Some(HeaderName::from_static("x-flag-gone")),
            )]),
        );
        assert!(!run(&listed, "u1").contains_key("x-flag-gone"));
        run(&listed, "u1");
        let text = listed.settings.metrics.encode();
        assert!(
            text.contains(
                r#"attache_flag_evaluation_errors_total{flag="_unknown",error_type="flag_not_found"} 2"#
            ),
            "{text}"
        );
    }

    /// A request reads the clock only when a rule may read `$flagd.timestamp`, and the peer's
    /// address only for `request.client_address` (or trusted peers); when they do, the rules
    /// see them.
    #[test]
    fn the_clock_and_the_peer_are_read_when_rules_need_them() {
        let store = store_with(json!({"flags": {
            "late": {"state": "ENABLED", "variants": {"late": "late", "early": "early"},
                     "defaultVariant": "early",
                     "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 100]}, "late"]}},
            "local": {"state": "ENABLED", "variants": {"yes": "yes", "no": "no"},
                      "defaultVariant": "no",
                      "targeting": {"if": [{"==": [{"var": "request.client_address"}, "10.0.0.7"]}, "yes"]}}
        }}));
        let mut st = step(store.clone(), DeliverFlags::All);
        st.settings.clock = || 1000;
        st.settings.peer_of = |_| Some(SocketAddr::from(([10, 0, 0, 7], 4000)));
        let h = run(&st, "u1");
        assert_eq!(h["x-flag-late"], "late");
        assert_eq!(h["x-flag-local"], "yes");
        let plan = st.plan();
        assert!(plan.needs_time && plan.needs.client_address);

        let other = store_with(
            json!({"flags": {"beta": {"state": "ENABLED", "variants": {"on": true, "off": false},
                    "defaultVariant": "off",
                    "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u1"]}, "on"]}}}}),
        );
        let st = step(other, DeliverFlags::All);
        assert_eq!(run(&st, "u1")["x-flag-beta"], "true");
        let plan = st.plan();
        assert!(!plan.needs_time && !plan.needs.client_address);
    }

    /// The flat context and the JSON one answer every rule alike; the plan builds the flat one
    /// only when no rule reads a parent of a field or the whole data.
    #[test]
    fn a_flat_context_answers_like_the_json_one() {
        let mut rules = ContextRules {
            targeting_key: vec![Source::Header(HeaderName::from_static("x-user"))],
            attributes: vec![
                (
                    Source::Header(HeaderName::from_static("x-plan")),
                    vec!["user".into(), "plan".into()],
                ),
                (
                    Source::Header(HeaderName::from_static("x-absent")),
                    vec!["absent".into()],
                ),
            ],
            static_attributes: Map::new(),
        };
        rules
            .static_attributes
            .insert("region".into(), json!({"name": "eu-west", "zones": [1, 2]}));
        let req = Request::post("/cart?x=1")
            .header("host", "shop.example")
            .header("x-user", "user-42")
            .header("x-plan", "pro")
            .body(())
            .unwrap();
        let view = RequestView {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            peer: Some(SocketAddr::from(([10, 0, 0, 7], 4000))),
        };
        let paths = vec!["user.plan".to_owned(), "absent".to_owned()];
        let json = rules.build(&view, Needs::ALL);
        let fields = rules.fields(&view, Needs::ALL, &paths);
        let reads = [
            "targetingKey",
            "user.plan",
            "user.plan.deeper",
            "user.planet",
            "absent",
            "region",
            "region.name",
            "region.zones.1",
            "region.zones.9",
            "request.method",
            "request.path",
            "request.host",
            "request.client_address",
            "request.methods",
            "nothing.at.all",
            "$flagd.flagKey",
        ];
        fn scope(data: Data<'_>) -> Scope<'_> {
            Scope {
                data,
                flagd: Some(Flagd {
                    flag_key: "f",
                    timestamp: 1,
                }),
                fractional: FractionalVersion::V2,
            }
        }
        let layout = rules.layout(Needs::ALL, &paths);
        assert_eq!(
            fields.iter().map(|f| f.path).collect::<Vec<_>>(),
            layout,
            "one field per path of the layout, in its order"
        );
        // Each rule is evaluated against the JSON document, the flat fields, and the flat
        // fields with the slots a plan works out for the rule: all three must agree.
        let three = |rule: &Rule| {
            let slots = Slot::of_rule(rule, &layout);
            let no_slots = Flat {
                fields: &fields,
                slots: &[],
            };
            let with_slots = Flat {
                fields: &fields,
                slots: &slots,
            };
            [
                rule.eval(&scope(Data::Json(&json))),
                rule.eval(&scope(Data::Fields(no_slots))),
                rule.eval(&scope(Data::Fields(with_slots))),
            ]
        };
        let flat = |path: &str| {
            let [json, no_slots, with_slots] = three(&compile(&json!({"var": path})).unwrap());
            assert_eq!(no_slots, json, "{path}");
            assert_eq!(with_slots, json, "{path}");
            with_slots
        };
        assert_eq!(flat("user.plan"), json!("pro"));
        assert_eq!(flat("targetingKey"), json!("user-42"));
        assert_eq!(flat("request.method"), json!("POST"));
        assert_eq!(flat("region.zones.1"), json!(2));
        assert_eq!(flat("$flagd.flagKey"), json!("f"));
        assert_eq!(flat("absent"), Value::Null);
        assert_eq!(flat("user.plan.deeper"), Value::Null);
        for path in reads {
            let [json, no_slots, with_slots] =
                three(&compile(&json!({"var": [path, "fallback"]})).unwrap());
            assert_eq!(no_slots, json, "{path}");
            assert_eq!(with_slots, json, "{path}");
        }
        // The slots of a rule: where each `var` path lands.
        let rule = compile(
            &json!({"and": [{"var": "user.plan"}, {"var": "region.zones.1"},
            {"var": "nothing"}, {"var": "user.plan"}]}),
        )
        .unwrap();
        let places: Vec<Place> = Slot::of_rule(&rule, &layout)
            .iter()
            .map(|s| s.place)
            .collect();
        let at = |p: &str| layout.iter().position(|l| l == p).unwrap();
        assert_eq!(
            places,
            [
                Place::Field(at("user.plan")),
                Place::Inside(at("region"), "region.".len()),
                Place::Nowhere,
                Place::Field(at("user.plan")),
            ]
        );
        for rule in [
            json!({"missing": ["user.plan", "absent", "targetingKey"]}),
            json!({"missing_some": [1, ["absent", "region.name"]]}),
            json!({"fractional": [["a", 50], ["b", 50]]}),
            json!({"if": [{"in": [{"var": "user.plan"}, ["pro"]]}, "yes", "no"]}),
        ] {
            let [json, no_slots, with_slots] = three(&compile(&rule).unwrap());
            assert_eq!(no_slots, json, "{rule}");
            assert_eq!(with_slots, json, "{rule}");
        }

        // The layout: flat for the reads above, JSON for a parent of a field, for the whole
        // data, for a computed path, and for fields inside one another.
        let layout = |rule: Value, rules: &ContextRules| {
            let store = store_with(json!({"flags": {"f": {"state": "ENABLED",
                    "variants": {"a": 1, "b": 2}, "defaultVariant": "a",
                    "targeting": {"if": [rule, "b"]}}}}));
            let mut step = step(store, DeliverFlags::All);
            step.settings.context = rules.clone();
            step.plan().flat.clone()
        };
        assert_eq!(
            layout(json!({"var": "user.plan"}), &rules),
            Some(paths.clone())
        );
        assert_eq!(layout(json!({"var": "user"}), &rules), None);
        assert_eq!(layout(json!({"var": ""}), &rules), None);
        assert_eq!(layout(json!({"var": "request"}), &rules), None);
        assert_eq!(
            layout(json!({"var": {"cat": ["user", ".plan"]}}), &rules),
            None
        );
        let mut nested = rules.clone();
        nested.attributes.push((
            Source::Header(HeaderName::from_static("x-tier")),
            vec!["region".into(), "tier".into()],
        ));
        assert_eq!(layout(json!({"var": "user.plan"}), &nested), None);
        let mut dotted = rules.clone();
        dotted.static_attributes.insert("a.b".into(), json!(1));
        assert_eq!(layout(json!({"var": "user.plan"}), &dotted), None);
    }

    /// Routes go by a delivered flag's decision, made once (a static flag) or per request,
    /// and by flags routed on without being delivered.
    #[test]
    fn routes_go_by_delivered_and_undelivered_flags() {
        let store = store_with(json!({"flags": {
            "pin": {"state": "ENABLED", "variants": {"v1": 1, "v2": 2}, "defaultVariant": "v2"},
            "split": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
                      "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u1"]}, "b"]}}
        }}));
        let route = |flag: &str, variant: &str, to: &str| Route {
            flag: Arc::from(flag),
            variants: HashMap::from([(variant.to_owned(), Arc::from(to))]),
        };
        let target = |st: &Step, user: &str| {
            let mut req = Request::get("/").header("x-user", user).body(()).unwrap();
            st.apply(&mut req);
            let baggage = req.headers()["baggage"].to_str().unwrap().to_owned();
            (req.extensions().get::<RouteTarget>().cloned(), baggage)
        };
        let mut delivered = step(
            store.clone(),
            DeliverFlags::Keys(vec![(Arc::from("pin"), None)]),
        );
        delivered.settings.routes = vec![route("pin", "v2", "canary")];
        assert_eq!(
            target(&delivered, "u1"),
            (Some(RouteTarget(Arc::from("canary"))), "flag.pin=v2".into())
        );
        let mut routed = step(store, DeliverFlags::Keys(Vec::new()));
        routed.settings.routes = vec![route("split", "b", "beta")];
        assert_eq!(
            target(&routed, "u1"),
            (Some(RouteTarget(Arc::from("beta"))), "flag.split=b".into())
        );
        assert_eq!(target(&routed, "u2"), (None, "flag.split=a".into()));
    }

    #[test]
    fn sources_read_utf8_and_other_cookies_do_not_hide_theirs() {
        let uri: Uri = "/".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-user",
            HeaderValue::from_bytes("josé".as_bytes()).unwrap(),
        );
        h.insert("x-bad", HeaderValue::from_bytes(b"a\xffb").unwrap());
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes("name=José; theme=\"dark\"".as_bytes()).unwrap(),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"bad=\xff; uid = u-7 ").unwrap(),
        );
        let read = |s: Source| s.read(&uri, &h);
        assert_eq!(
            read(Source::Header(HeaderName::from_static("x-user"))).as_deref(),
            Some("josé")
        );
        assert_eq!(read(Source::Header(HeaderName::from_static("x-bad"))), None);
        assert_eq!(read(Source::Cookie("uid".into())).as_deref(), Some("u-7"));
        assert_eq!(
            read(Source::Cookie("theme".into())).as_deref(),
            Some("dark")
        );
        assert_eq!(read(Source::Cookie("name".into())).as_deref(), Some("José"));
        assert_eq!(read(Source::Cookie("bad".into())), None);
        assert_eq!(read(Source::Cookie("missing".into())), None);
    }

    #[test]
    fn nested_attributes() {
        let mut root = Map::new();
        root.insert("user".into(), json!("flat"));
        insert_path(&mut root, &["user".into(), "plan".into()], json!("pro"));
        assert_eq!(Value::Object(root), json!({"user": {"plan": "pro"}}));
    }
}
