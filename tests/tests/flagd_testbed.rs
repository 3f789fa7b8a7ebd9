//! The flagd testbed's evaluator suite (specs/feature-flags.md §12.1), run with `cucumber`
//! against attache's flag evaluator. `$FLAGD_TESTBED` names the testbed (a checkout of
//! open-feature/flagd-testbed at the version pinned in [`TESTBED_VERSION`]); unset, the default
//! is `../shared/conformance/flagd-testbed` beside the project. A missing testbed is skipped
//! with a message on a developer's machine and is a failure under `CI=true`; a testbed of
//! another version is always a failure.
//!
//! Every scenario is also replayed on the request path, three ways: through the flags step
//! itself (`FlagsLayer`, whose per-snapshot plan picks the flat context and compiled rules
//! when it can), with the targeting key in a request header and the other context keys as
//! static attributes; against a flat context directly (one field per context key,
//! `logic::Data::Fields`) when the rule's reads allow one; and by the compiled `fast` rules
//! when the rule has one of their shapes. Each must give the general evaluator's decision; the
//! run fails unless each way replayed some scenarios.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use std::borrow::Cow;
use std::sync::atomic::AtomicUsize;

use attache_filters::flags::eval::{FlagSet, Kind, Resolution};
use attache_filters::flags::fast::Fast;
use attache_filters::flags::logic::{Data, Field, Flat, FractionalVersion, Slot};
use cucumber::gherkin::Step;
use cucumber::{StatsWriter, World, given, then, when};
use serde_json::{Map, Value};

/// The testbed release these scenarios are checked against (its `version.txt`).
const TESTBED_VERSION: &str = "3.9.0";

/// The flag file of the current run, and its `fractional` version (one run at a time).
static FLAGS: Mutex<Option<PathBuf>> = Mutex::new(None);
static VERSION: AtomicU8 = AtomicU8::new(2);
/// Scenarios replayed on the request path: against a flat context, and by compiled rules.
static STEP_REPLAYS: AtomicUsize = AtomicUsize::new(0);
static FLAT_REPLAYS: AtomicUsize = AtomicUsize::new(0);
static FAST_REPLAYS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Default, World)]
struct Eval {
    set: Option<FlagSet>,
    kind: Option<Kind>,
    key: String,
    default: Value,
    context: Map<String, Value>,
    result: Option<Resolution>,
}

fn load() -> FlagSet {
    let path = FLAGS.lock().unwrap().clone().expect("a flag file");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    FlagSet::parse(&doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[given(regex = r"^an evaluator$")]
fn evaluator(w: &mut Eval) {
    w.set = Some(load());
}

#[given(regex = r"^a stable flagd provider$")]
fn provider(w: &mut Eval) {
    w.set = Some(load());
}

#[given(regex = r"^an option .*$")]
fn option(_: &mut Eval) {}

fn kind_of(t: &str) -> Kind {
    match t {
        "Boolean" => Kind::Boolean,
        "String" => Kind::String,
        "Integer" => Kind::Integer,
        "Float" => Kind::Float,
        _ => Kind::Object,
    }
}

/// The gherkin parser refuses backslash escapes other than its own in table cells, and the
/// testbed's cells hold `\"` (inside JSON) and `\u0000`-style text, which stays raw: feature
/// files are read through a copy with each backslash stood in for by a private-use character,
/// put back here.
const BACKSLASH_STAND_IN: char = '\u{e000}';

fn raw(v: &str) -> String {
    v.replace(BACKSLASH_STAND_IN, "\\")
}

/// A cell as a typed JSON value: strings stay raw, objects are JSON after `\"` → `"`.
fn typed(t: &str, v: &str) -> Value {
    let v = &raw(v);
    match t {
        "Boolean" => Value::Bool(v == "true"),
        "Integer" => v.parse::<i64>().map_or(Value::Null, Value::from),
        "Float" => v.parse::<f64>().map_or(Value::Null, Value::from),
        "Object" => serde_json::from_str(&v.replace("\\\"", "\"")).unwrap_or(Value::Null),
        _ => Value::String(v.to_owned()),
    }
}

#[given(
    regex = r#"^a (Boolean|String|Integer|Float|Object)-flag with key "([^"]*)" and a (?:fallback|default) value "(.*)"$"#
)]
fn flag(w: &mut Eval, t: String, key: String, default: String) {
    w.kind = Some(kind_of(&t));
    w.key = key;
    w.default = typed(&t, &default);
}

#[given(
    regex = r#"^a context containing a key "([^"]*)", with type "(String|Integer|Float|Boolean|Object)" and with value "(.*)"$"#
)]
fn context_key(w: &mut Eval, key: String, t: String, value: String) {
    w.context.insert(key, typed(&t, &value));
}

#[given(regex = r#"^a context containing a targeting key with value "(.*)"$"#)]
fn targeting_key(w: &mut Eval, value: String) {
    w.context
        .insert("targetingKey".into(), Value::String(raw(&value)));
}

#[given(
    regex = r#"^a context containing a nested property with outer key "([^"]*)" and inner key "([^"]*)", with value "(.*)"$"#
)]
fn nested(w: &mut Eval, outer: String, inner: String, value: String) {
    let entry = w
        .context
        .entry(outer)
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = entry {
        m.insert(inner, Value::String(raw(&value)));
    }
}

#[when(regex = r"^the flag was evaluated with details$")]
fn evaluated(w: &mut Eval) {
    let set = w.set.as_ref().expect("an evaluator");
    let version = match VERSION.load(Ordering::SeqCst) {
        1 => FractionalVersion::V1,
        3 => FractionalVersion::V3,
        _ => FractionalVersion::V2,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let context = Value::Object(w.context.clone());
    let kind = w.kind.unwrap_or(Kind::Any);
    w.result = Some(set.evaluate(&w.key, &context, now, kind, version));
    replay_on_the_request_path(set, &w.key, &w.context, now, kind, version);
    replay_through_the_flags_step(set, &w.key, &w.context, version);
}

/// The scenario through the flags step as the proxy runs it: a request whose `x-tk` header is
/// the targeting key, the other context keys as the config's static attributes, the flag
/// delivered to the app. The decision the step records must be the general evaluator's.
/// Scenarios a request cannot carry (a targeting key that is not a plain header value, a key
/// that is no header name) are left to the other replays.
fn replay_through_the_flags_step(
    set: &FlagSet,
    key: &str,
    context: &Map<String, Value>,
    version: FractionalVersion,
) {
    use attache_filters::flags::context::{ContextRules, Source};
    use attache_filters::flags::decision::FlagDecisions;
    use attache_filters::flags::request::FlagsLayer;
    use attache_filters::flags::settings::{
        DeliverFlags, Delivery, EventSettings, Settings, Trust, unix_now,
    };
    use attache_filters::flags::store::FlagStore;
    use futures_util::FutureExt;
    use http::HeaderName;
    use std::sync::Arc;
    use tower::{Layer, ServiceExt};

    let tk = match context.get("targetingKey") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b)) => {
            Some(s.clone())
        }
        Some(_) => return,
    };
    let Ok(header) = HeaderName::from_bytes(format!("x-flag-{key}").as_bytes()) else {
        return;
    };
    let path = FLAGS.lock().unwrap().clone().expect("a flag file");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let store = Arc::new(FlagStore::new(1));
    store.update(0, &doc).expect("the testbed's flags load");
    let mut statics = context.clone();
    statics.remove("targetingKey");
    let settings = Settings {
        store,
        fractional: version,
        context: ContextRules {
            targeting_key: vec![Source::Header(HeaderName::from_static("x-tk"))],
            attributes: Vec::new(),
            static_attributes: statics,
        },
        delivery: Some(Delivery {
            flags: DeliverFlags::Keys(vec![(Arc::from(key), Some(header))]),
            header_prefix: Some("x-flag-".into()),
            header_name: |p, k| format!("{p}{k}"),
            combined: None,
            baggage: false,
            defaults: Default::default(),
        }),
        trust: Trust::Never,
        routes: Vec::new(),
        events: EventSettings {
            enabled: true,
            include_value: false,
            include_context_id: false,
        },
        metrics: Arc::new(attache_filters::metrics::Metrics::new()),
        baggage: Default::default(),
        peer_of: |_| None,
        clock: unix_now,
    };
    let app = tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    });
    let mut req = http::Request::get("/").body(()).unwrap();
    if let Some(tk) = tk {
        req.headers_mut().insert("x-tk", tk.parse().unwrap());
    }
    let res = FlagsLayer::new(settings)
        .layer(app)
        .oneshot(req)
        .now_or_never()
        .expect("the flags step answers at once")
        .unwrap();
    let decisions = res
        .extensions()
        .get::<attache_filters::facts::Facts>()
        .and_then(|f| f.get::<FlagDecisions>())
        .expect("the step recorded its decisions");
    let got = decisions
        .decisions
        .iter()
        .find(|d| &*d.key == key)
        .expect("a decision for the delivered flag");
    let want = set.decide(
        key,
        &Value::Object(context.clone()),
        unix_now(),
        Kind::Any,
        version,
    );
    assert_eq!(
        (got.variant(), got.reason, got.error.as_ref().map(|e| e.0)),
        (want.variant, want.reason, want.error.as_ref().map(|e| e.0)),
        "the flags step for {key} on {context:?}"
    );
    STEP_REPLAYS.fetch_add(1, Ordering::SeqCst);
}

/// The scenario's evaluation as a proxied request makes it: against a flat context with one
/// field per context key (when every read of the rule finds the same value there as in the
/// JSON context, the condition `plan.rs` checks before it builds one), and by the compiled
/// rule when there is one. Each must equal the general evaluator's decision.
fn replay_on_the_request_path(
    set: &FlagSet,
    key: &str,
    context: &Map<String, Value>,
    now: u64,
    kind: Kind,
    version: FractionalVersion,
) {
    let Some(flag) = set.flags.get(key) else {
        return;
    };
    let Some(Ok(rule)) = &flag.targeting else {
        return;
    };
    if !flag.enabled {
        return;
    }
    let layout: Vec<String> = context.keys().cloned().collect();
    let mut reads = Vec::new();
    let known = rule.read_paths(&mut |p| reads.push(p.to_owned()));
    // A read of the whole data or of a parent of a field, or a field whose key holds a dot,
    // has no flat form: the proxy evaluates such rules against the JSON context.
    let flat_ok = known
        && layout.iter().all(|f| !f.contains('.'))
        && reads
            .iter()
            .all(|r| !r.is_empty() && !layout.iter().any(|f| f.starts_with(&format!("{r}."))));
    if !flat_ok {
        return;
    }
    let fields: Vec<Field<'_>> = layout
        .iter()
        .map(|path| Field {
            path,
            value: context.get(path).map(Cow::Borrowed),
        })
        .collect();
    let slots = Slot::of_rule(rule, &layout);
    let data = Data::Fields(Flat {
        fields: &fields,
        slots: &slots,
    });
    let json = Value::Object(context.clone());
    let want = flag.decide(key, &json, now, kind, version);
    let got = flag.decide_in(key, data, now, kind, version);
    assert_eq!(got, want, "flat context for {key} on {context:?}");
    FLAT_REPLAYS.fetch_add(1, Ordering::SeqCst);
    if let Some(fast) = Fast::compile(rule, flag, &layout, version) {
        let want = flag.decide(key, &json, now, Kind::Any, version);
        assert_eq!(
            fast.decide(key, flag, &fields),
            want,
            "compiled rule for {key} on {context:?}"
        );
        FAST_REPLAYS.fetch_add(1, Ordering::SeqCst);
    }
}

fn result(w: &Eval) -> &Resolution {
    w.result.as_ref().expect("an evaluation")
}

#[then(regex = r#"^the resolved details value should be "(.*)"$"#)]
fn value(w: &mut Eval, want: String) {
    let got = result(w).value.clone().unwrap_or_else(|| w.default.clone());
    let t = match w.kind {
        Some(Kind::Boolean) => "Boolean",
        Some(Kind::Integer) => "Integer",
        Some(Kind::Float) => "Float",
        Some(Kind::Object) => "Object",
        _ => "String",
    };
    let want = typed(t, &want);
    match (&got, &want) {
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{:?}", result(w))
        }
        _ => assert_eq!(got, want, "{:?}", result(w)),
    }
}

#[then(regex = r#"^the reason should be "([^"]*)"$"#)]
fn reason(w: &mut Eval, want: String) {
    assert_eq!(result(w).reason.as_str(), want, "{:?}", result(w));
}

#[then(regex = r#"^the error-code should be "([^"]*)"$"#)]
fn error_code(w: &mut Eval, want: String) {
    let got = result(w).error.as_ref().map_or("", |e| e.0.as_str());
    assert_eq!(got, want, "{:?}", result(w));
}

#[then(regex = r"^the resolved metadata should contain$")]
fn metadata(w: &mut Eval, step: &Step) {
    let table = step.table.as_ref().expect("a table");
    for row in table.rows.iter().skip(1) {
        let (key, t, v) = (&row[0], &row[1], &row[2]);
        let want = typed(t, v);
        let got = result(w).metadata.get(key).cloned().unwrap_or(Value::Null);
        match (&got, &want) {
            (Value::Number(a), Value::Number(b)) => assert_eq!(a.as_f64(), b.as_f64(), "{key}"),
            _ => assert_eq!(got, want, "{key}"),
        }
    }
}

#[then(regex = r"^the resolved metadata is empty$")]
fn metadata_empty(w: &mut Eval) {
    assert!(result(w).metadata.is_empty(), "{:?}", result(w).metadata);
}

fn tags(f: &cucumber::gherkin::Feature, s: &cucumber::gherkin::Scenario) -> Vec<String> {
    f.tags.iter().chain(&s.tags).cloned().collect()
}

/// One run; panics unless every scenario passed and at least one ran.
async fn run(
    name: &str,
    flags: PathBuf,
    version: u8,
    features: Vec<PathBuf>,
    keep: fn(&[String]) -> bool,
) {
    *FLAGS.lock().unwrap() = Some(flags);
    VERSION.store(version, Ordering::SeqCst);
    let mut ran = 0;
    let mut failed = 0;
    let copies = attache_tests::TempDir::new();
    for feature in features {
        let text = std::fs::read_to_string(&feature)
            .unwrap_or_else(|e| panic!("{}: {e}", feature.display()));
        let feature = if text.contains('\\') {
            let name = feature.file_name().unwrap().to_string_lossy().into_owned();
            copies.write(&name, &text.replace('\\', &BACKSLASH_STAND_IN.to_string()))
        } else {
            feature
        };
        let summary = Eval::cucumber()
            .with_cli(cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty>::default())
            .max_concurrent_scenarios(1)
            .filter_run(feature, move |f, _, s| keep(&tags(f, s)))
            .await;
        ran += summary.scenarios_stats().passed + summary.scenarios_stats().failed;
        failed += summary.scenarios_stats().failed + summary.scenarios_stats().skipped;
        failed += summary.parsing_errors() + summary.hook_errors();
    }
    assert_eq!(
        failed, 0,
        "run {name}: {failed} scenarios failed or were skipped"
    );
    assert!(ran > 0, "run {name}: no scenario ran");
    println!("run {name}: {ran} scenarios passed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let testbed = match std::env::var_os("FLAGD_TESTBED") {
        Some(p) => PathBuf::from(p),
        None => {
            let default = root.join("../shared/conformance/flagd-testbed");
            if !default.exists() {
                assert!(
                    !ci,
                    "CI=true and no flagd testbed at {}: set FLAGD_TESTBED to a checkout of \
                     open-feature/flagd-testbed v{TESTBED_VERSION}",
                    default.display()
                );
                println!(
                    "flagd testbed not found at {}; skipped (set FLAGD_TESTBED)",
                    default.display()
                );
                return;
            }
            default
        }
    };
    assert!(
        testbed.exists(),
        "FLAGD_TESTBED={} does not exist",
        testbed.display()
    );
    let version = std::fs::read_to_string(testbed.join("version.txt")).unwrap_or_default();
    assert_eq!(
        version.trim(),
        TESTBED_VERSION,
        "the flagd testbed at {} is not the pinned version",
        testbed.display()
    );
    let evaluator = testbed.join("evaluator");
    let kit = evaluator.join("flags/testkit-flags.json");
    let features = |names: &[&str]| {
        names
            .iter()
            .map(|n| evaluator.join(format!("gherkin/{n}.feature")))
            .collect::<Vec<_>>()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        run(
            "1 (v2)",
            kit.clone(),
            2,
            features(&[
                "disabled",
                "errors",
                "evaluation",
                "evaluator-refs",
                "fractional",
                "metadata",
                "no-default-variant",
                "semver",
                "string",
                "targeting",
                "zero-values",
            ]),
            |t| {
                !t.iter()
                    .any(|t| t == "fractional-v1" || t == "fractional-v3")
            },
        )
        .await;
        run("2 (v1)", kit.clone(), 1, features(&["fractional"]), |t| {
            t.iter().any(|t| t == "fractional-v1")
        })
        .await;
        run("3a (v3)", kit, 3, features(&["fractional"]), |t| {
            !t.iter()
                .any(|t| t == "fractional-v1" || t == "fractional-v2")
        })
        .await;
        run(
            "3b (v3)",
            testbed.join("flags/custom-ops.json"),
            3,
            vec![testbed.join("gherkin/targeting.feature")],
            |t| t.iter().any(|t| t == "fractional-v3"),
        )
        .await;
    });
    let (step, flat, fast) = (
        STEP_REPLAYS.load(Ordering::SeqCst),
        FLAT_REPLAYS.load(Ordering::SeqCst),
        FAST_REPLAYS.load(Ordering::SeqCst),
    );
    println!(
        "request path: {step} scenarios replayed through the flags step, {flat} on a flat \
         context, {fast} by compiled rules"
    );
    assert!(
        step > 0 && flat > 0 && fast > 0,
        "the request path replayed nothing"
    );
}
