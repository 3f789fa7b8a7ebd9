//! The flags step of the request flow (specs/feature-flags.md §6–§9, §11): build the evaluation
//! context from the request, evaluate the delivered flags (or reuse a trusted peer's
//! decisions), hand the decisions to the app as headers and baggage, and pick a route by
//! variant.
//!
//! Each request reads the flag snapshot once. The context is built only when a flag with
//! targeting needs it, so static flags cost a map lookup and a pre-rendered header value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use tower::{Layer, Service};

use super::eval::{Decision, ErrorCode, Flag, Kind, Reason};
use super::intern;
use super::logic::{Data, Field, Flat, FractionalVersion};
use super::metrics::{FlagErrorLabels, FlagEvalLabels, FlagFamilies, FlagLabels};
use super::plan::{Needs, Out, Plan};
use super::store::FlagStore;
use crate::codec::percent;
use crate::metrics::Metrics;
use crate::trace_context::baggage::{self, BAGGAGE_HEADER};
use crate::trace_context::metrics::TraceFamilies;

/// Where an evaluation happened, for `attache_flag_evaluations_total{path}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalPath {
    Proxy,
    Route,
    Ofrep,
    OfrepBulk,
}

impl EvalPath {
    const ALL: [EvalPath; 4] = [
        EvalPath::Proxy,
        EvalPath::Route,
        EvalPath::Ofrep,
        EvalPath::OfrepBulk,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EvalPath::Proxy => "proxy",
            EvalPath::Route => "route",
            EvalPath::Ofrep => "ofrep",
            EvalPath::OfrepBulk => "ofrep_bulk",
        }
    }
}

const REASONS: [Reason; 6] = [
    Reason::Static,
    Reason::Default,
    Reason::TargetingMatch,
    Reason::Disabled,
    Reason::Cached,
    Reason::Error,
];

/// Per-flag caches that live as long as the compiled flag: metric handles (so counting an
/// evaluation is an index, not a hashed lookup with owned labels) and each variant's header
/// value, rendered once (§13).
#[derive(Default)]
pub struct Counters {
    counters: OnceLock<Box<[OnceLock<Counter>]>>,
    headers: OnceLock<Box<[Option<HeaderValue>]>>,
    /// Per variant: its baggage member, `flag.<key>=<variant>`.
    members: OnceLock<Box<[Option<String>]>>,
    /// Per variant: `"value":…,"variant":…,` for the combined header.
    combined: OnceLock<Box<[String]>>,
    /// The flag key as a JSON string.
    key_json: OnceLock<String>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl Clone for Counters {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Counters {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Counts one evaluation of `key` (and its error, if any).
pub fn count(metrics: &FlagFamilies, key: &str, d: &Decision<'_>, path: EvalPath) {
    let vi = d.index;
    count_at(metrics, key, d, vi, path);
}

/// [`count`], with the variant's index already known.
fn count_at(
    metrics: &FlagFamilies,
    key: &str,
    d: &Decision<'_>,
    vi: Option<usize>,
    path: EvalPath,
) {
    evaluation_counter(metrics, key, d, vi, path).inc();
    if let Some(errors) = error_counter(metrics, key, d) {
        errors.inc();
    }
}

/// The `attache_flag_evaluations_total` counter of a decision: cached per compiled flag,
/// variant, reason and path.
pub(super) fn evaluation_counter<'m>(
    metrics: &FlagFamilies,
    key: &str,
    d: &Decision<'m>,
    vi: Option<usize>,
    path: EvalPath,
) -> Cow<'m, Counter> {
    let labels = || FlagEvalLabels {
        flag: if d.flag.is_some() {
            key.to_owned()
        } else {
            "_unknown".to_owned()
        },
        variant: d.variant.unwrap_or_default().to_owned(),
        reason: d.reason.as_str(),
        path: path.as_str(),
    };
    let Some(flag) = d.flag else {
        return Cow::Owned(metrics.evaluations.get_or_create(&labels()).clone());
    };
    let reason = REASONS.iter().position(|r| *r == d.reason).unwrap_or(0);
    let path_i = EvalPath::ALL.iter().position(|p| *p == path).unwrap_or(0);
    let variant = vi.map_or(0, |i| i + 1);
    let per_variant = REASONS.len() * EvalPath::ALL.len();
    let slots = flag.counters.counters.get_or_init(|| {
        (0..(flag.variants.len() + 1) * per_variant)
            .map(|_| OnceLock::new())
            .collect()
    });
    let slot = variant * per_variant + reason * EvalPath::ALL.len() + path_i;
    match slots.get(slot) {
        Some(c) => {
            Cow::Borrowed(c.get_or_init(|| metrics.evaluations.get_or_create(&labels()).clone()))
        }
        None => Cow::Owned(metrics.evaluations.get_or_create(&labels()).clone()),
    }
}

/// The `attache_flag_errors_total` counter of a decision that is an error.
pub(super) fn error_counter(
    metrics: &FlagFamilies,
    key: &str,
    d: &Decision<'_>,
) -> Option<Counter> {
    let (code, _) = d.error.as_ref()?;
    Some(
        metrics
            .errors
            .get_or_create(&FlagErrorLabels {
                flag: if d.flag.is_some() {
                    key.to_owned()
                } else {
                    "_unknown".to_owned()
                },
                error_type: error_type(*code),
            })
            .clone(),
    )
}

/// The OpenTelemetry `error.type` of an error code: lower case.
pub fn error_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::FlagNotFound => "flag_not_found",
        ErrorCode::ParseError => "parse_error",
        ErrorCode::TypeMismatch => "type_mismatch",
        ErrorCode::General => "general",
    }
}

/// Where a context value is read from.
#[derive(Debug, Clone)]
pub enum Source {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Baggage(String),
}

impl Source {
    /// The value, when the request has a non-empty one.
    fn read(&self, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        let v = match self {
            // UTF-8 text is read as sent (a user name with an accent, say); other bytes are not.
            // Most values are ASCII, which `to_str` checks faster.
            Source::Header(h) => headers
                .get(h)
                .and_then(|v| {
                    v.to_str()
                        .ok()
                        .or_else(|| std::str::from_utf8(v.as_bytes()).ok())
                })
                .map(str::to_owned),
            Source::Cookie(name) => cookie(headers, name),
            Source::Query(name) => query_param(uri.query()?, name),
            Source::Baggage(name) => baggage::members(headers)
                .flatten()
                .find(|m| m.key == name)
                .map(|m| percent::decode_str(m.value, false)),
        };
        v.filter(|v| !v.is_empty())
    }
}

/// The cookie `name`, read as bytes: a cookie elsewhere in the header with bytes outside ASCII
/// (browsers send UTF-8 values) does not hide it. Its value must be UTF-8.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let (_, v) = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
        })
        .find(|(n, _)| *n == name.as_bytes())?;
    let v = v
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v);
    std::str::from_utf8(v).ok().map(str::to_owned)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent::decode_str(n, true) == name).then(|| percent::decode_str(v, true))
    })
}

/// `request.method` as a context value, made once for the standard methods.
fn method_value(method: &Method) -> Option<&'static Value> {
    static METHODS: LazyLock<Vec<(Method, Value)>> = LazyLock::new(|| {
        [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::HEAD,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ]
        .into_iter()
        .map(|m| {
            let v = Value::String(m.as_str().to_owned());
            (m, v)
        })
        .collect()
    });
    METHODS.iter().find(|(m, _)| m == method).map(|(_, v)| v)
}

/// How the evaluation context is built (§6).
#[derive(Debug, Clone, Default)]
pub struct ContextRules {
    pub targeting_key: Vec<Source>,
    /// Each source and the path it lands under (`user.plan` → `["user", "plan"]`).
    pub attributes: Vec<(Source, Vec<String>)>,
    pub static_attributes: Map<String, Value>,
}

/// The request parts the context reads.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub peer: Option<SocketAddr>,
}

impl ContextRules {
    /// The context of a proxied request, lowest precedence first: the built-ins in `needs`,
    /// `static`, attributes, `targetingKey`.
    pub fn build(&self, r: &RequestView<'_>, needs: Needs) -> Value {
        let mut root = Map::new();
        if needs.any() {
            let mut request = Map::new();
            if needs.method {
                request.insert("method".into(), r.method.as_str().into());
            }
            if needs.path {
                request.insert("path".into(), r.uri.path().into());
            }
            // The target's authority first, as the proxy forwards it (RFC 9112 §3.2.2).
            let host = || {
                r.uri
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| r.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            };
            if needs.host
                && let Some(host) = host()
            {
                request.insert("host".into(), host.into());
            }
            if needs.client_address
                && let Some(peer) = r.peer
            {
                request.insert("client_address".into(), peer.ip().to_string().into());
            }
            root.insert("request".into(), Value::Object(request));
        }
        for (k, v) in &self.static_attributes {
            root.insert(k.clone(), v.clone());
        }
        self.add_attributes(&mut root, r.uri, r.headers);
        if let Some(key) = self
            .targeting_key
            .iter()
            .find_map(|s| s.read(r.uri, r.headers))
        {
            root.insert("targetingKey".into(), key.into());
        }
        Value::Object(root)
    }

    /// The paths of a flat context's fields, in the order [`ContextRules::fields`] gives
    /// them: `targetingKey` (read by every `fractional`, so first), the built-ins in `needs`,
    /// the attributes (at their dotted `paths`), the static attributes.
    pub fn layout(&self, needs: Needs, paths: &[String]) -> Vec<String> {
        let built_ins = [
            (needs.method, "request.method"),
            (needs.path, "request.path"),
            (needs.host, "request.host"),
            (needs.client_address, "request.client_address"),
        ];
        std::iter::once("targetingKey")
            .chain(built_ins.iter().filter(|(on, _)| *on).map(|(_, p)| *p))
            .chain(paths.iter().map(String::as_str))
            .chain(self.static_attributes.keys().map(String::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// The context of a proxied request as a flat list of fields, for a plan that allows it
    /// (`Plan::flat`, which holds the attributes' dotted `paths`): what [`ContextRules::build`]
    /// would put in a JSON document, without its maps and their keys. There is one field per
    /// path of [`ContextRules::layout`], in its order, with no value when the request has none.
    pub fn fields<'a>(
        &'a self,
        r: &RequestView<'_>,
        needs: Needs,
        paths: &'a [String],
    ) -> Vec<Field<'a>> {
        let mut fields =
            Vec::with_capacity(5 + self.attributes.len() + self.static_attributes.len());
        let mut add = |path: &'a str, value: Option<Cow<'a, Value>>| {
            fields.push(Field { path, value });
        };
        let text = |v: String| Cow::Owned(Value::String(v));
        add(
            "targetingKey",
            self.targeting_key
                .iter()
                .find_map(|s| s.read(r.uri, r.headers))
                .map(text),
        );
        if needs.method {
            let method = match method_value(r.method) {
                Some(m) => Cow::Borrowed(m),
                None => text(r.method.as_str().to_owned()),
            };
            add("request.method", Some(method));
        }
        if needs.path {
            add("request.path", Some(text(r.uri.path().to_owned())));
        }
        if needs.host {
            let host = r
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| r.headers.get(header::HOST).and_then(|h| h.to_str().ok()));
            add("request.host", host.map(|h| text(h.to_owned())));
        }
        if needs.client_address {
            add(
                "request.client_address",
                r.peer.map(|peer| text(peer.ip().to_string())),
            );
        }
        for ((source, _), path) in self.attributes.iter().zip(paths) {
            add(path, source.read(r.uri, r.headers).map(text));
        }
        fields.extend(self.static_attributes.iter().map(|(k, v)| Field {
            path: k,
            value: Some(Cow::Borrowed(v)),
        }));
        fields
    }

    /// Adds the attributes read from `headers` (and `uri`) to `root`; later ones win.
    pub fn add_attributes(&self, root: &mut Map<String, Value>, uri: &Uri, headers: &HeaderMap) {
        for (source, path) in &self.attributes {
            if let Some(v) = source.read(uri, headers) {
                insert_path(root, path, Value::String(v));
            }
        }
    }
}

/// Sets `root[path[0]][path[1]]… = value`, making (or replacing non-object) levels objects.
fn insert_path(root: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = root;
    for p in parents {
        let slot = at
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(m) = slot else {
            return;
        };
        at = m;
    }
    at.insert(last.clone(), value);
}

/// Which flags each inbound request evaluates for the app.
#[derive(Debug, Clone)]
pub enum DeliverFlags {
    /// Every flag in the snapshot (`attache dev`, `flags: ["*"]`).
    All,
    /// The listed keys, each with its header name (when per-flag headers are on).
    Keys(Vec<(Arc<str>, Option<HeaderName>)>),
}

/// How decisions reach the app (§7).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub flags: DeliverFlags,
    pub header_prefix: Option<String>,
    /// §7's rule from prefix and key to a header name (the config's `flag_header_name`, which
    /// validation also uses), for `DeliverFlags::All`.
    pub header_name: fn(&str, &str) -> String,
    pub combined: Option<HeaderName>,
    pub baggage: bool,
    /// `deliver.defaults`, rendered.
    pub defaults: HashMap<String, HeaderValue>,
}

/// Whose `flag.` baggage members are reused.
#[derive(Clone)]
pub enum Trust {
    Never,
    /// The app's own calls (outbound listeners).
    Always,
    Peers(Arc<dyn Fn(IpAddr) -> bool + Send + Sync>),
}

/// Routing by a flag's variant (§9).
#[derive(Debug, Clone)]
pub struct Route {
    pub flag: Arc<str>,
    pub variants: HashMap<String, Arc<str>>,
}

/// In a request's extensions: the upstream a route picked instead of the leg's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget(pub Arc<str>);

/// `feature_flag.evaluation` event settings (§11).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSettings {
    pub enabled: bool,
    pub include_value: bool,
    pub include_context_id: bool,
}

pub struct Settings {
    pub store: Arc<FlagStore>,
    pub fractional: FractionalVersion,
    pub context: ContextRules,
    /// Inbound only.
    pub delivery: Option<Delivery>,
    pub trust: Trust,
    /// The routes of the upstream this leg sends to.
    pub routes: Vec<Route>,
    pub events: EventSettings,
    pub metrics: Arc<Metrics>,
    pub baggage: baggage::Limits,
    pub peer_of: fn(&http::Extensions) -> Option<SocketAddr>,
    /// Unix seconds, read once per request (`$flagd.timestamp`).
    pub clock: fn() -> u64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One decision, as the request's extensions and its span keep it: a reference to the
/// compiled flag and the variant's index, so recording a decision copies no strings.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagDecision {
    pub key: Arc<str>,
    /// The flag, when the snapshot has it.
    pub flag: Option<Arc<Flag>>,
    /// The variant's index in `flag.variants`.
    variant: Option<u32>,
    pub reason: Reason,
    pub error: Option<(ErrorCode, String)>,
}

/// A request's decisions, in its extensions (and handed up with its response as a
/// [`Fact`](crate::facts::Fact): one `feature_flag.evaluation` event each on the span).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagDecisions {
    pub decisions: Vec<FlagDecision>,
    /// The targeting key, when `include_context_id` asks for it.
    pub context_id: Option<String>,
    pub events: EventSettings,
}

impl crate::facts::Fact for FlagDecisions {
    /// The `feature_flag.evaluation` events (specs/feature-flags.md §11), stable
    /// semantic-convention attributes only.
    fn events(&self, event: crate::facts::Events<'_>) {
        use crate::facts::Value as Attr;
        for d in &self.decisions {
            event("feature_flag.evaluation", &|attr| {
                attr("feature_flag.key", Attr::from(&*d.key));
                attr("feature_flag.provider.name", Attr::from("attache"));
                if let Some(v) = d.variant() {
                    attr("feature_flag.result.variant", Attr::from(v));
                }
                attr(
                    "feature_flag.result.reason",
                    Attr::from(super::ofrep::reason_lower(d.reason)),
                );
                if let Some(s) = d.set_id() {
                    attr("feature_flag.set.id", Attr::Str(s));
                }
                if let Some(v) = d.version() {
                    attr("feature_flag.version", Attr::Str(v));
                }
                if let Some((code, message)) = &d.error {
                    attr("error.type", Attr::from(error_type(*code)));
                    attr("feature_flag.error.message", Attr::from(message.as_str()));
                }
                if self.events.include_value
                    && let Some(v) = d.value()
                {
                    attr("feature_flag.result.value", Attr::Str(v.to_string().into()));
                }
                if let Some(id) = &self.context_id {
                    attr("feature_flag.context.id", Attr::from(id.as_str()));
                }
            });
        }
    }
}

fn metadata_str<'a>(m: &'a Map<String, Value>, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    match m.get(key)? {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Null => None,
        other => Some(std::borrow::Cow::Owned(other.to_string())),
    }
}

impl FlagDecision {
    pub fn of(key: Arc<str>, flag: Option<&Arc<Flag>>, d: &Decision<'_>) -> Self {
        let vi = d.index;
        Self::at(key, flag, d, vi)
    }

    pub(super) fn at(
        key: Arc<str>,
        flag: Option<&Arc<Flag>>,
        d: &Decision<'_>,
        vi: Option<usize>,
    ) -> Self {
        let variant = vi.and_then(|i| u32::try_from(i).ok());
        Self {
            key,
            flag: flag.cloned(),
            variant,
            reason: d.reason,
            error: d.error.clone(),
        }
    }

    pub fn variant(&self) -> Option<&str> {
        let i = usize::try_from(self.variant?).ok()?;
        self.flag
            .as_ref()?
            .variants
            .keys()
            .nth(i)
            .map(String::as_str)
    }

    pub fn value(&self) -> Option<&Value> {
        let i = usize::try_from(self.variant?).ok()?;
        self.flag.as_ref()?.variants.values().nth(i)
    }

    /// Metadata `flagSetId`, for the span event.
    pub fn set_id(&self) -> Option<std::borrow::Cow<'_, str>> {
        metadata_str(&self.flag.as_ref()?.metadata, "flagSetId")
    }

    /// Metadata `version`, for the span event.
    pub fn version(&self) -> Option<std::borrow::Cow<'_, str>> {
        metadata_str(&self.flag.as_ref()?.metadata, "version")
    }
}

/// A flag's value as a header value (§7): booleans and numbers as JSON text, objects and
/// arrays as compact JSON, a plain printable-ASCII string as is, any other string as a JSON
/// string with non-ASCII characters escaped.
pub fn header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s)
            if !s.is_empty()
                && s.bytes().all(|b| (0x20..0x7f).contains(&b))
                && !s.starts_with([' ', '"'])
                && !s.ends_with(' ') =>
        {
            return HeaderValue::from_str(s).ok();
        }
        Value::String(s) => ascii_json_string(s),
        other => other.to_string(),
    };
    HeaderValue::from_str(&ascii_json(&text)).ok()
}

fn ascii_json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// JSON text with every non-ASCII character as `\uXXXX` (surrogate pairs beyond the BMP).
fn ascii_json(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// The header value of a decision, pre-rendered per flag variant.
pub(super) fn rendered(d: &Decision<'_>, vi: Option<usize>) -> Option<HeaderValue> {
    let value = d.value.as_ref()?;
    let (Some(flag), Some(i), std::borrow::Cow::Borrowed(_)) = (d.flag, vi, value) else {
        return header_value(value);
    };
    let cache = flag.counters.headers.get_or_init(|| {
        flag.variants
            .values()
            .map(|v| header_value(v).map(intern::value))
            .collect::<Vec<_>>()
            .into_boxed_slice()
    });
    cache
        .get(i)
        .cloned()
        .flatten()
        .or_else(|| header_value(value))
}

impl Settings {
    /// Decides `key`: a trusted peer's decision when it names a known variant (`CACHED`),
    /// otherwise an evaluation against `ctx`.
    fn decide<'a>(
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
    fn rewrite_baggage(
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
struct Step {
    settings: Settings,
    plan: ArcSwapOption<Plan>,
    /// `settings.metrics`' families, taken once.
    families: Arc<FlagFamilies>,
    trace_families: Arc<TraceFamilies>,
}

/// What a request's baggage holds for the flags step.
struct FlagMembers {
    /// The request has a baggage header.
    present: bool,
    /// It has `flag.` members.
    any: bool,
    /// From a trusted peer: the decisions those members carry, percent-decoded.
    decisions: Vec<(String, String)>,
}

/// The `flag.` members of a request's baggage.
fn flag_members(headers: &HeaderMap, trusted: bool) -> FlagMembers {
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

/// The baggage member of a decision, rendered once per flag variant.
pub(super) fn rendered_member<'a>(
    key: &str,
    d: &Decision<'a>,
    vi: Option<usize>,
) -> Option<Cow<'a, str>> {
    let variant = d.variant?;
    match (d.flag, vi) {
        (Some(f), Some(i)) => {
            let cache = f
                .counters
                .members
                .get_or_init(|| f.variants.keys().map(|v| member(key, v)).collect());
            cache.get(i)?.as_deref().map(Cow::Borrowed)
        }
        _ => member(key, variant).map(Cow::Owned),
    }
}

/// `flag.<key>=<variant>` as a baggage member; `None` when the key is not a baggage token.
pub(super) fn member(key: &str, variant: &str) -> Option<String> {
    if !baggage::is_token(key.as_bytes()) {
        return None;
    }
    let mut m = String::with_capacity(key.len() + variant.len() + 8);
    m.push_str("flag.");
    m.push_str(key);
    m.push('=');
    percent::encode_into(variant.as_bytes(), percent::BAGGAGE, &mut m);
    Some(m)
}

impl Step {
    /// The plan of the current snapshot: the cached one, or a new one when the snapshot
    /// changed since.
    fn plan(&self) -> Arc<Plan> {
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

    /// Runs the step on a request: evaluates, rewrites its headers and baggage, picks the
    /// route, and returns its decisions when span events record them.
    fn apply<B>(&self, req: &mut Request<B>) -> Option<Arc<FlagDecisions>> {
        let s = &self.settings;
        let plan = self.plan();
        // The peer's address: for trusted peers and `request.client_address` only.
        let peer = match (&s.trust, plan.needs.client_address) {
            (Trust::Peers(_), _) | (_, true) => (s.peer_of)(req.extensions()),
            _ => None,
        };
        let trusted = match &s.trust {
            Trust::Never => false,
            Trust::Always => true,
            Trust::Peers(f) => peer.is_some_and(|p| f(p.ip())),
        };
        let FlagMembers {
            present: had_baggage,
            any: had_flag_members,
            decisions: peer_decisions,
        } = flag_members(req.headers(), trusted);
        let view = RequestView {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            peer,
        };
        let (json, fields) = match (&plan.flat, plan.needs_context) {
            (_, false) => (Value::Null, Vec::new()),
            (Some(paths), true) => (Value::Null, s.context.fields(&view, plan.needs, paths)),
            (None, true) => (s.context.build(&view, plan.needs), Vec::new()),
        };
        // The context as one flag's rule reads it: with the plan's slots for its paths.
        let ctx = |slots| match plan.flat {
            Some(_) => Data::Fields(Flat {
                fields: &fields,
                slots,
            }),
            None => Data::Json(&json),
        };
        let keep = s.events.enabled;
        let context_id = if keep && s.events.include_context_id {
            ctx(&[])
                .get("targetingKey")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| {
                    s.context
                        .targeting_key
                        .iter()
                        .find_map(|src| src.read(view.uri, view.headers))
                })
        } else {
            None
        };
        let now = if plan.needs_time { (s.clock)() } else { 0 };
        let mut decisions = Vec::with_capacity(if keep {
            plan.entries.len() + plan.routes.len()
        } else {
            0
        });
        // Per entry, its variant: what routes on a delivered flag go by.
        let mut variants: Vec<Option<&str>> = Vec::with_capacity(if plan.routes.is_empty() {
            0
        } else {
            plan.entries.len()
        });
        let mut members: Vec<(&str, Cow<'_, str>)> =
            Vec::with_capacity(plan.entries.len() + plan.routes.len());
        let headers = req.headers_mut();
        if let Some(delivery) = &s.delivery {
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
                let peer_decides = peer_decisions.iter().any(|(k, _)| **k == *e.key);
                let out = match e.fixed.as_ref().filter(|_| !peer_decides) {
                    Some(f) => {
                        f.evaluations.inc();
                        if let Some(c) = &f.errors {
                            c.inc();
                        }
                        if keep {
                            decisions.push(f.decision.clone());
                        }
                        Out {
                            header: f.out.header.as_ref().map(|h| Cow::Borrowed(&**h)),
                            combined: Cow::Borrowed(&f.out.combined),
                            member: f.out.member.as_ref().map(|m| Cow::Borrowed(&**m)),
                            // Only routes read it, and finding it is a scan.
                            variant: if plan.routes.is_empty() {
                                None
                            } else {
                                f.decision.variant()
                            },
                        }
                    }
                    None => {
                        let d = match (&e.fast, &e.flag) {
                            (Some(fast), Some(f)) if !peer_decides => {
                                fast.decide(&e.key, f, &fields)
                            }
                            _ => s.decide(
                                &self.families,
                                &e.key,
                                e.flag.as_ref(),
                                &peer_decisions,
                                ctx(&e.slots),
                                now,
                            ),
                        };
                        let vi = d.index;
                        count_at(&self.families, &e.key, &d, vi, EvalPath::Proxy);
                        if keep {
                            decisions.push(FlagDecision::at(
                                e.key.clone(),
                                e.flag.as_ref(),
                                &d,
                                vi,
                            ));
                        }
                        Out::prepared(delivery, &e.key, &d, &e.variants)
                    }
                };
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
                    members.push((&e.key, m));
                }
                if !plan.routes.is_empty() {
                    variants.push(out.variant);
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
        let mut route: Option<Arc<str>> = None;
        for (((r, (flag, delivered)), slots), fast) in s
            .routes
            .iter()
            .zip(&plan.routes)
            .zip(&plan.route_slots)
            .zip(&plan.route_fast)
        {
            let variant = match delivered {
                Some(i) => variants.get(*i).copied().flatten(),
                None => {
                    let peer_decides = peer_decisions.iter().any(|(k, _)| **k == *r.flag);
                    let d = match (fast, flag) {
                        (Some(fast), Some(f)) if !peer_decides => fast.decide(&r.flag, f, &fields),
                        _ => s.decide(
                            &self.families,
                            &r.flag,
                            flag.as_ref(),
                            &peer_decisions,
                            ctx(slots),
                            now,
                        ),
                    };
                    count(&self.families, &r.flag, &d, EvalPath::Route);
                    if keep {
                        decisions.push(FlagDecision::of(r.flag.clone(), flag.as_ref(), &d));
                    }
                    d.variant
                }
            };
            let Some(v) = variant else { continue };
            if route.is_none() {
                route = r.variants.get(v).cloned();
            }
            if !members.iter().any(|(k, _)| *k == &*r.flag)
                && let Some(m) = member(&r.flag, v)
            {
                members.push((&r.flag, Cow::Owned(m)));
            }
        }
        if !members.is_empty() || (had_flag_members && !trusted) {
            s.rewrite_baggage(
                &self.trace_families,
                headers,
                &members,
                trusted,
                had_baggage,
            );
        }
        if let Some(target) = route {
            req.extensions_mut().insert(RouteTarget(target));
        }
        if decisions.is_empty() {
            return None;
        }
        Some(Arc::new(FlagDecisions {
            decisions,
            context_id,
            events: s.events,
        }))
    }
}

/// Removes every header whose name starts with `prefix` (client-sent decisions).
fn strip_prefixed(headers: &mut HeaderMap, prefix: &str) {
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

/// Appends `"key":{"value":…,"variant":…,"reason":…[,"error_code":…]}` to the combined
/// header; the key and each variant's part are rendered once per compiled flag.
pub(super) fn combined_entry(out: &mut String, key: &str, d: &Decision<'_>, vi: Option<usize>) {
    if !out.is_empty() {
        out.push(',');
    }
    match d.flag {
        Some(f) => out.push_str(
            f.counters
                .key_json
                .get_or_init(|| ascii_json(&json_string(key))),
        ),
        None => out.push_str(&ascii_json(&json_string(key))),
    }
    out.push_str(":{");
    let cached = match (d.flag, vi, &d.value) {
        (Some(f), Some(i), Some(std::borrow::Cow::Borrowed(_))) => {
            let parts = f.counters.combined.get_or_init(|| {
                f.variants
                    .iter()
                    .map(|(name, value)| {
                        format!(
                            "\"value\":{},\"variant\":{},",
                            ascii_json(&value.to_string()),
                            ascii_json(&json_string(name))
                        )
                    })
                    .collect()
            });
            parts.get(i)
        }
        _ => None,
    };
    match cached {
        Some(part) => out.push_str(part),
        None => {
            if let Some(v) = &d.value {
                out.push_str("\"value\":");
                out.push_str(&ascii_json(&v.to_string()));
                out.push(',');
            }
            if let Some(v) = d.variant {
                out.push_str("\"variant\":");
                out.push_str(&ascii_json(&json_string(v)));
                out.push(',');
            }
        }
    }
    out.push_str("\"reason\":\"");
    out.push_str(d.reason.as_str());
    out.push('"');
    if let Some((code, _)) = &d.error {
        out.push_str(",\"error_code\":\"");
        out.push_str(code.as_str());
        out.push('"');
    }
    out.push('}');
}

fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
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
    use super::super::logic::{Flagd, Place, Rule, Scope, Slot, compile};
    use super::*;
    use serde_json::json;

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
