//! Feature flags through the real binary (`specs/feature-flags.md` §5–§11, the §12.2 cases):
//! flag files and URL sources, the request context, delivery to the app as headers and
//! baggage, trusted peers, routing by variant, OFREP, span events and metrics, `attache dev`.
//! The app is the tests' echo app, so what it received is in each answer.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_tests::client::{Got, exchange, get, http1, send};
use attache_tests::otlp::{Collector, Protocol};
use attache_tests::{
    App, Attache, Ports, TempDir, eventually, free_port, metrics, sidecar_config, within,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

const FLAGS: &str = r#"{
  "$evaluators": {"is_pro": {"==": [{"var": "user.plan"}, "pro"]}},
  "metadata": {"flagSetId": "shop", "version": "7"},
  "flags": {
    "beta": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
    "theme": {"state": "ENABLED", "variants": {"light": "light", "dark": "dark"}, "defaultVariant": "light",
              "targeting": {"if": [{"==": [{"var": "targetingKey"}, "u-dark"]}, "dark"]}},
    "layout": {"state": "ENABLED", "variants": {"a": {"cols": [1, 2]}, "b": "b"}, "defaultVariant": "a"},
    "greeting": {"state": "ENABLED", "variants": {"fr": "café", "q": "\"quoted"}, "defaultVariant": "fr"},
    "legacy": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
    "plan-gate": {"state": "ENABLED", "variants": {"yes": "yes", "no": "no"}, "defaultVariant": "no",
                  "targeting": {"if": [{"$ref": "is_pro"}, "yes"]}},
    "by-request": {"state": "ENABLED", "variants": {"post": "post", "admin": "admin", "other": "other"}, "defaultVariant": "other",
                   "targeting": {"if": [{"==": [{"var": "request.method"}, "POST"]}, "post",
                                        {"starts_with": [{"var": "request.path"}, "/admin"]}, "admin"]}},
    "env": {"state": "ENABLED", "variants": {"prod": "prod", "staging": "staging"}, "defaultVariant": "prod",
            "targeting": {"var": "env"}},
    "broken": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"no_such_op": [1]}},
    "bad-ref": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "no_such_evaluator"}},
    "split": {"state": "ENABLED", "variants": {"v1": "v1", "v2": "v2"}, "defaultVariant": "v1",
              "targeting": {"fractional": [["v2", 10], ["v1", 90]]}},
    "fractional-flag": {"state": "ENABLED", "variants": {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades"},
              "defaultVariant": "clubs",
              "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
                            ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}}
  }
}"#;

/// Source lines for `files`, as [`flags_section`] takes them.
fn file_sources(files: &[&std::path::Path]) -> String {
    files
        .iter()
        .map(|f| format!("      - {{ file: '{}' }}\n", f.display()))
        .collect()
}

/// A flags section with `sources` (lines of `      - {…}`), files checked every 300 ms, OFREP
/// on `ofrep` unless `extra` sets its own (`{ofrep}` in `extra` is that port), and `extra`
/// (indented by 4).
fn flags_section(sources: &str, ofrep: u16, extra: &str) -> String {
    format!(
        "  flags:
    sources:
{sources}    file_poll_interval: 300ms
{ofrep_line}{extra}",
        ofrep_line = if extra.contains("    ofrep:") {
            String::new()
        } else {
            format!("    ofrep: {{ listen: '127.0.0.1:{ofrep}' }}\n")
        },
        extra = extra.replace("{ofrep}", &ofrep.to_string()),
    )
}

struct Flagged {
    a: Attache,
    dir: TempDir,
    ofrep: u16,
}

impl Flagged {
    fn ofrep_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ofrep)
    }
    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// A sidecar in front of `app` with `flags.json` (= `doc`) as its source. `extra` goes under
/// `spec.flags`, `spec_extra` under `spec`.
fn flagged(app: &App, doc: &str, extra: &str, spec_extra: &str) -> Flagged {
    let dir = TempDir::new();
    let sources = file_sources(&[&dir.write("flags.json", doc)]);
    start(app, dir, &sources, extra, spec_extra, &[])
}

/// A sidecar in front of `app` with the given source lines (see [`flags_section`]), run with
/// `env`; `dir` holds the test's files and lives as long as the result.
fn start(
    app: &App,
    dir: TempDir,
    sources: &str,
    extra: &str,
    spec_extra: &str,
    env: &[(&str, &str)],
) -> Flagged {
    let ofrep = free_port();
    let ports = Ports::new();
    let config = sidecar_config(
        ports,
        app.addr,
        &format!("{}{spec_extra}", flags_section(sources, ofrep, extra)),
    );
    Flagged {
        a: Attache::run_with_env(ports, &config, env),
        dir,
        ofrep,
    }
}

async fn call(url: &str, method: &str, headers: &[(&str, &str)]) -> Got {
    exchange(method, url, headers, "").await
}

async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> Got {
    exchange("POST", url, headers, body).await
}

/// What the echo app received: its request headers.
async fn app_headers(url: &str, headers: &[(&str, &str)]) -> HashMap<String, String> {
    let got = call(url, "GET", headers).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.json()["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn metrics(a: &Attache) -> String {
    attache_tests::client::blocking_get(&a.admin_url("/metrics"))
        .unwrap()
        .1
}

/// Cases 1, 2, 3, 9 and 10: per-flag headers, the combined header, client-sent decisions
/// stripped, baggage gaining `flag.<key>` members and keeping its others, disabled flags.
#[tokio::test]
async fn decisions_reach_the_app_as_headers_and_baggage() {
    let app = App::start("app").await;
    let f = flagged(
        &app,
        FLAGS,
        "    deliver:
      flags: [beta, layout, greeting, legacy, theme, broken, missing]
      combined_header: x-flags
      defaults: { legacy: 'off-by-default', missing: 0 }
",
        "",
    );
    let h = app_headers(
        &f.a.url("/"),
        &[
            ("x-flag-beta", "false"),
            ("x-flag-injected", "1"),
            ("x-flags", "{\"beta\":{}}"),
            ("baggage", "tenant=acme,flag.beta=off"),
        ],
    )
    .await;
    // Case 1: a static flag, and x-flags with STATIC.
    assert_eq!(h["x-flag-beta"], "true", "the client's value never arrives");
    assert!(
        !h.contains_key("x-flag-injected"),
        "case 3: client-sent x-flag-* is stripped"
    );
    let combined: Value = serde_json::from_str(&h["x-flags"]).unwrap();
    assert_eq!(
        combined["beta"],
        json!({"value": true, "variant": "on", "reason": "STATIC"})
    );
    // Case 2: objects as compact JSON; non-ASCII strings JSON-encoded.
    assert_eq!(h["x-flag-layout"], r#"{"cols":[1,2]}"#);
    assert_eq!(h["x-flag-greeting"], r#""caf\u00e9""#);
    // Case 10: a disabled flag sends only the default, and no baggage member.
    assert_eq!(h["x-flag-legacy"], "off-by-default");
    assert_eq!(combined["legacy"], json!({"reason": "DISABLED"}));
    assert_eq!(h["x-flag-missing"], "0", "FLAG_NOT_FOUND: the code default");
    assert_eq!(combined["missing"]["error_code"], "FLAG_NOT_FOUND");
    assert_eq!(combined["broken"]["error_code"], "PARSE_ERROR");
    assert!(!h.contains_key("x-flag-broken"), "no value and no default");
    // Case 9: baggage gains the decisions and keeps its other members.
    let baggage: Vec<&str> = h["baggage"].split(',').collect();
    assert!(baggage.contains(&"tenant=acme"), "{baggage:?}");
    assert!(baggage.contains(&"flag.beta=on"), "{baggage:?}");
    assert!(baggage.contains(&"flag.theme=light"), "{baggage:?}");
    assert!(
        !baggage.iter().any(|m| m.starts_with("flag.legacy")),
        "{baggage:?}"
    );
    assert!(
        !baggage.contains(&"flag.beta=off"),
        "the untrusted member is gone"
    );

    let m = metrics(&f.a);
    assert!(
        metrics::has(
            &m,
            r#"attache_flag_evaluations_total{flag="beta",variant="on",reason="STATIC",path="proxy"} 1"#
        ),
        "{m}"
    );
    assert!(
        metrics::has(
            &m,
            r#"attache_flag_evaluation_errors_total{flag="_unknown",error_type="flag_not_found"} 1"#
        ),
        "{m}"
    );
    assert!(
        metrics::has(
            &m,
            r#"attache_flag_evaluation_errors_total{flag="broken",error_type="parse_error"} 1"#
        ),
        "{m}"
    );
}

/// Cases 4, 5, 6 and 8: the targeting key from a header or a cookie, nested and baggage
/// attributes, the `request.*` built-ins, attributes over `static`.
#[tokio::test]
async fn the_context_comes_from_the_request() {
    let app = App::start("app").await;
    let f = flagged(
        &app,
        FLAGS,
        "    context:
      targeting_key: [ { header: x-user-id }, { cookie: uid } ]
      attributes:
        - { header: x-plan, as: user.plan }
        - { baggage: plan, as: user.plan }
        - { query: env }
      static: { env: staging }
    deliver:
      flags: [theme, plan-gate, by-request, env]
",
        "",
    );
    let url = f.a.url("/shop");
    // Case 4: the header first, else the cookie.
    let h = app_headers(&url, &[("x-user-id", "u-dark"), ("cookie", "uid=nobody")]).await;
    assert_eq!(h["x-flag-theme"], "dark");
    let h = app_headers(&url, &[("cookie", "a=b; uid=u-dark")]).await;
    assert_eq!(h["x-flag-theme"], "dark", "from the cookie");
    let h = app_headers(&url, &[("cookie", "uid=someone")]).await;
    assert_eq!(h["x-flag-theme"], "light");
    // Case 5: `as: user.plan` nests.
    let h = app_headers(&url, &[("x-plan", "pro")]).await;
    assert_eq!(h["x-flag-plan-gate"], "yes");
    // Case 8: a baggage attribute, percent-decoded (a later attribute wins).
    let h = app_headers(&url, &[("baggage", "plan=pr%6F")]).await;
    assert_eq!(h["x-flag-plan-gate"], "yes");
    let h = app_headers(&url, &[("baggage", "plan=free")]).await;
    assert_eq!(h["x-flag-plan-gate"], "no");
    // Case 6: request built-ins drive targeting; an attribute overrides `static`.
    let got = call(&url, "POST", &[]).await;
    assert_eq!(got.json()["headers"]["x-flag-by-request"], "post");
    let h = app_headers(&f.a.url("/admin/users"), &[]).await;
    assert_eq!(h["x-flag-by-request"], "admin");
    assert_eq!(h["x-flag-env"], "staging", "static");
    let h = app_headers(&f.a.url("/x?env=prod"), &[]).await;
    assert_eq!(
        h["x-flag-env"], "prod",
        "the query attribute wins over static"
    );
}

/// Cases 11, 12 and 13: decisions from trusted peers are reused (`CACHED`), untrusted ones
/// stripped, unknown variants re-evaluated and counted as skew.
#[tokio::test]
async fn trusted_peers_decisions_are_reused() {
    let app = App::start("app").await;
    let deliver = "    deliver: { flags: [theme, ghost], combined_header: x-flags }
    context: { targeting_key: [ { header: x-user-id } ] }
    trust_upstream_decisions: true
";
    let trusted = flagged(
        &app,
        FLAGS,
        &format!("{deliver}    trusted_peers: [127.0.0.0/8]\n"),
        "",
    );
    let untrusted = flagged(
        &app,
        FLAGS,
        &format!("{deliver}    trusted_peers: [10.0.0.0/8]\n"),
        "",
    );
    // Locally u-dark would be dark; the peer decided light.
    let peer = [("x-user-id", "u-dark"), ("baggage", "flag.theme=light,k=v")];
    let h = app_headers(&trusted.a.url("/"), &peer).await;
    assert_eq!(h["x-flag-theme"], "light", "case 11: reused");
    let combined: Value = serde_json::from_str(&h["x-flags"]).unwrap();
    assert_eq!(combined["theme"]["reason"], "CACHED");
    assert!(h["baggage"].contains("k=v"));

    let h = app_headers(&untrusted.a.url("/"), &peer).await;
    assert_eq!(h["x-flag-theme"], "dark", "case 12: re-evaluated");
    assert!(h["baggage"].contains("flag.theme=dark"), "{}", h["baggage"]);
    assert!(
        !h["baggage"].contains("flag.theme=light"),
        "{}",
        h["baggage"]
    );

    // Case 13: a variant (or flag) this side does not know.
    let h = app_headers(
        &trusted.a.url("/"),
        &[
            ("x-user-id", "u-dark"),
            ("baggage", "flag.theme=purple,flag.ghost=x"),
        ],
    )
    .await;
    assert_eq!(h["x-flag-theme"], "dark");
    assert!(h["baggage"].contains("flag.theme=dark"), "overwritten");
    let m = metrics(&trusted.a);
    assert!(
        metrics::has(&m, r#"attache_flag_decision_skew_total{flag="theme"} 1"#),
        "{m}"
    );
    assert!(
        metrics::has(&m, r#"attache_flag_decision_skew_total{flag="_unknown"} 1"#),
        "{m}"
    );
    assert!(
        metrics::has(&m, r#"attache_flag_decisions_reused_total{flag="theme"} 1"#),
        "{m}"
    );
}

/// Cases 14 and 15: routing an outbound upstream by variant; a missing or failing routing
/// flag still reaches the normal upstream. The app's own baggage decisions are trusted on
/// the ambassador port.
#[tokio::test]
async fn routes_follow_the_variant() {
    let app = App::start("app").await;
    let v1 = App::start("checkout").await;
    let v2 = App::start("checkout-v2").await;
    let doc = r#"{"flags": {
        "checkout-version": {"state": "ENABLED", "variants": {"v1": "v1", "v2": "v2"}, "defaultVariant": "v1",
            "targeting": {"fractional": [["v2", 10], ["v1", 90]]}}
    }}"#;
    let dir = TempDir::new();
    let file = dir.write("flags.json", doc);
    let outbound = free_port();
    let upstreams = format!(
        "  outbound: [ {{ listen: '127.0.0.1:{outbound}', upstream: checkout }} ]
  upstreams:
    checkout: {{ endpoints: ['http://{}'] }}
    checkout-v2: {{ endpoints: ['http://{}'] }}
",
        v1.addr, v2.addr,
    );
    let routes = "    context: { targeting_key: [ { header: x-user-id } ] }
    routes:
      - { upstream: checkout, flag: checkout-version, variants: { v2: checkout-v2 } }
      - { upstream: checkout, flag: missing-flag, variants: { x: checkout-v2 } }
";
    // `f` keeps the flag file's directory for the edit below.
    let f = start(&app, dir, &file_sources(&[&file]), routes, &upstreams, &[]);
    let a = &f.a;
    let url = format!("http://127.0.0.1:{outbound}/order");
    let name = |g: Got| g.json()["app"].as_str().unwrap_or_default().to_owned();
    // §4.1: user-7 is bucket 3 (v2), user-42 bucket 66 (v1).
    let got = call(&url, "GET", &[("x-user-id", "user-7")]).await;
    assert_eq!(name(got), "checkout-v2", "case 14");
    let got = call(&url, "GET", &[("x-user-id", "user-42")]).await;
    let body = got.json();
    assert_eq!(body["app"], "checkout");
    assert_eq!(
        body["headers"]["baggage"], "flag.checkout-version=v1",
        "the decision is written to baggage"
    );
    // The app carries the inbound decision back out in its baggage: reused.
    let got = call(
        &url,
        "GET",
        &[
            ("x-user-id", "user-42"),
            ("baggage", "flag.checkout-version=v2"),
        ],
    )
    .await;
    assert_eq!(name(got), "checkout-v2");
    // Case 15: no targeting key (fractional gives null: DEFAULT v1) and the missing flag.
    let got = call(&url, "GET", &[]).await;
    assert_eq!(name(got), "checkout");
    // The one user-7 call so far was routed by a targeting match on v2 (the loop below adds an
    // unknown number until the new file is seen).
    a.assert_metrics(&[
        r#"attache_flag_evaluations_total{flag="checkout-version",variant="v2",reason="TARGETING_MATCH",path="route"} 1"#,
    ]);
    // Case 15: the routing flag in error (a file without it).
    std::fs::write(&file, r#"{"flags": {"checkout-version": {"state": "ENABLED", "variants": {"v1": "v1", "v2": "v2"}, "targeting": {"nope": []}}}}"#).unwrap();
    assert!(
        eventually(10, async || {
            let got = call(&url, "GET", &[("x-user-id", "user-7")]).await;
            got.status == 200 && name(got) == "checkout"
        })
        .await,
        "a flag in error still reaches checkout"
    );
    let errors = a.metric(
        r#"attache_flag_evaluations_total{flag="checkout-version",variant="",reason="ERROR",path="route"}"#,
    );
    assert!(
        errors >= Some(1.0),
        "the flag in error is counted: {errors:?}"
    );
}

async fn ofrep_value(f: &Flagged, key: &str, ctx: Value) -> Value {
    let got = post(
        &f.ofrep_url(&format!("/ofrep/v1/evaluate/flags/{key}")),
        &json!({ "context": ctx }).to_string(),
        &[],
    )
    .await;
    got.json()
}

/// Cases 16, 18, 19, 20, 21 and 22: edits apply without a restart; invalid documents keep the
/// last good flags (admin shows the error, the gauge is 0); deletion keeps them too.
#[tokio::test]
async fn file_edits_apply_and_bad_files_keep_the_last_good_flags() {
    let app = App::start("app").await;
    let doc = |color: &str| {
        format!(
            r#"{{"flags": {{"theme": {{"state": "ENABLED", "variants": {{"c": "{color}"}}, "defaultVariant": "c"}},
                "sibling": {{"state": "ENABLED", "variants": {{"s": "s"}}, "defaultVariant": "s"}}}}}}"#
        )
    };
    let f = flagged(&app, &doc("red"), "    deliver: { flags: [theme] }\n", "");
    let path = f.file("flags.json");
    let theme = async || {
        app_headers(&f.a.url("/"), &[])
            .await
            .get("x-flag-theme")
            .cloned()
    };
    assert_eq!(theme().await.as_deref(), Some("red"));
    // Case 16.
    std::fs::write(&path, doc("blue")).unwrap();
    assert!(eventually(10, async || theme().await.as_deref() == Some("blue")).await);
    // Case 18: invalid JSON.
    std::fs::write(&path, "{ not json").unwrap();
    let admin = async || -> Value {
        let got = get(&http1(), &f.a.admin_url("/flags")).await.unwrap();
        got.json()
    };
    assert!(
        eventually(10, async || admin().await["sources"][0]["state"] == "error").await,
        "{}",
        admin().await
    );
    let flags = admin().await;
    let error = flags["sources"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("invalid JSON") && error.contains("line 1"),
        "{error}"
    );
    assert_eq!(
        theme().await.as_deref(),
        Some("blue"),
        "the last good flags stay"
    );
    let m = metrics(&f.a);
    let label = path.to_str().unwrap();
    assert!(
        metrics::has(
            &m,
            &format!("attache_flag_source_valid{{source=\"{label}\"}} 0")
        ),
        "{m}"
    );
    // One write can be seen as one or two changes (truncate, then write): each load of the
    // bad document is counted.
    let invalid = metrics::value(
        &m,
        &format!("attache_flag_source_loads_total{{source=\"{label}\",result=\"invalid\"}}"),
    );
    assert!(invalid >= Some(1.0), "{m}");
    // Case 19: a valid file after an invalid one.
    std::fs::write(&path, doc("green")).unwrap();
    assert!(eventually(10, async || theme().await.as_deref() == Some("green")).await);
    assert!(metrics::has(
        &metrics(&f.a),
        &format!("attache_flag_source_valid{{source=\"{label}\"}} 1")
    ));
    // Case 20: a defaultVariant naming a missing variant rejects the document.
    std::fs::write(
        &path,
        r#"{"flags": {"theme": {"state": "ENABLED", "variants": {"c": "x"}, "defaultVariant": "nope"}}}"#,
    )
    .unwrap();
    assert!(eventually(10, async || admin().await["sources"][0]["state"] == "error").await);
    assert!(
        admin().await["sources"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("flags.theme.defaultVariant"),
        "{}",
        admin().await
    );
    assert_eq!(theme().await.as_deref(), Some("green"));
    // Case 21: an unknown operator isolates its flag.
    std::fs::write(
        &path,
        r#"{"flags": {"theme": {"state": "ENABLED", "variants": {"c": "x"}, "defaultVariant": "c", "targeting": {"bogus_op": []}},
                       "sibling": {"state": "ENABLED", "variants": {"s": "still"}, "defaultVariant": "s"}}}"#,
    )
    .unwrap();
    assert!(
        eventually(
            10,
            async || ofrep_value(&f, "sibling", json!({})).await["value"] == "still"
        )
        .await
    );
    let broken = ofrep_value(&f, "theme", json!({})).await;
    assert_eq!(broken["errorCode"], "PARSE_ERROR", "{broken}");
    assert!(
        admin().await["flags"]["theme"]["compile_error"]
            .as_str()
            .unwrap()
            .contains("bogus_op")
    );
    // Case 22: deletion keeps the flags; recreating loads the new ones.
    std::fs::remove_file(&path).unwrap();
    assert!(eventually(10, async || admin().await["sources"][0]["state"] == "error").await);
    assert_eq!(
        ofrep_value(&f, "sibling", json!({})).await["value"],
        "still"
    );
    std::fs::write(&path, doc("back")).unwrap();
    assert!(eventually(10, async || theme().await.as_deref() == Some("back")).await);
}

/// A file source is read again only when something may have changed it: its own reads do not
/// wake it (with inotify, opening a file is an event too, so each read used to cause the
/// next, five times a second), and content that failed to load stays failed when it is read
/// again unchanged (it used to turn `ok` on the next read).
#[tokio::test]
async fn a_file_source_rereads_only_changes_and_a_bad_file_stays_bad() {
    let app = App::start("app").await;
    let unchanged = |a: &Attache, label: &str| -> u64 {
        metrics(a)
            .lines()
            .find(|l| {
                l.starts_with("attache_flag_source_loads_total{")
                    && l.contains(label)
                    && l.contains(r#"result="unchanged""#)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    // A good file, checked every 300 ms: nothing changes, so nothing counts as a reload.
    let good = flagged(
        &app,
        r#"{"flags": {"on": {"state": "ENABLED", "variants": {"y": true}, "defaultVariant": "y"}}}"#,
        "    deliver: { flags: [on] }\n",
        "",
    );
    assert_eq!(
        app_headers(&good.a.url("/"), &[]).await["x-flag-on"],
        "true"
    );
    // Several checks go by (every 300 ms); then a real change, the marker: once it is seen,
    // the checks before it have run, and none of them counted as a reload.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(
        good.file("flags.json"),
        r#"{"flags": {"on": {"state": "ENABLED", "variants": {"y": false}, "defaultVariant": "y"}}}"#,
    )
    .unwrap();
    assert!(
        eventually(
            10,
            async || app_headers(&good.a.url("/"), &[]).await["x-flag-on"] == "false"
        )
        .await
    );
    let label = good.file("flags.json").display().to_string();
    assert_eq!(unchanged(&good.a, &label), 0, "{}", metrics(&good.a));
    let ok = format!("attache_flag_source_loads_total{{source=\"{label}\",result=\"ok\"}}");
    assert_eq!(
        good.a.metric(&ok),
        Some(2.0),
        "the first load and the change"
    );

    // A bad file (optional, so attache gets ready without it): an error, and still one after
    // more checks and after the same content is written again.
    let dir = TempDir::new();
    let bad = r#"{"flags": {"x": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "nope"}}}"#;
    let path = dir.write("flags.json", bad);
    let sources = format!("      - {{ file: '{}', optional: true }}\n", path.display());
    let f = start(&app, dir, &sources, "", "", &[]);
    let source = async || -> Value {
        let got = get(&http1(), &f.a.admin_url("/flags")).await.unwrap();
        got.json()["sources"][0].clone()
    };
    assert!(
        eventually(10, async || source().await["state"] == "error").await,
        "{}",
        source().await
    );
    // The same bad content written again, then another bad document (the marker): the
    // invalid-load counter moves once the marker is read, and nothing ever loaded.
    let label = path.display().to_string();
    let invalid_series =
        format!("attache_flag_source_loads_total{{source=\"{label}\",result=\"invalid\"}}");
    let invalid = f.a.metric(&invalid_series).unwrap_or(0.0);
    assert!(invalid >= 1.0, "{}", metrics(&f.a));
    std::fs::write(&path, bad).unwrap();
    std::fs::write(&path, bad.replace("\"nope\"", "\"nope-again\"")).unwrap();
    assert!(
        eventually(10, async || f.a.metric(&invalid_series) > Some(invalid)).await,
        "{}",
        metrics(&f.a)
    );
    let ok = format!("attache_flag_source_loads_total{{source=\"{label}\",result=\"ok\"}}");
    assert_eq!(f.a.metric(&ok), None, "nothing loaded: {}", metrics(&f.a));
    let now = source().await;
    assert_eq!(now["state"], "error", "{now}");
    assert!(now["last_success_unix"].is_null(), "{now}");
    assert!(
        now["last_error"].as_str().unwrap().contains("nope"),
        "{now}"
    );
    assert!(
        metrics(&f.a)
            .lines()
            .any(|l| l.starts_with("attache_flag_source_valid{")
                && l.contains(&label)
                && l.ends_with(" 0")),
        "{}",
        metrics(&f.a)
    );
}

/// Case 17: three Kubernetes ConfigMap-style swaps (`..data` re-pointed to a new directory).
#[tokio::test]
async fn configmap_symlink_swaps_all_apply() {
    let app = App::start("app").await;
    let dir = TempDir::new();
    let swap = |n: usize| {
        let version = dir.path().join(format!("..v{n}"));
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(
            version.join("flags.json"),
            format!(r#"{{"flags": {{"n": {{"state": "ENABLED", "variants": {{"v": {n}}}, "defaultVariant": "v"}}}}}}"#),
        )
        .unwrap();
        let tmp = dir.path().join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..v{n}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    swap(0);
    std::os::unix::fs::symlink("..data/flags.json", dir.path().join("flags.json")).unwrap();
    let sources = file_sources(&[&dir.path().join("flags.json")]);
    let a = start(
        &app,
        TempDir::new(),
        &sources,
        "    deliver: { flags: [n] }\n",
        "",
        &[],
    )
    .a;
    for n in 1..=3 {
        swap(n);
        let want = n.to_string();
        assert!(
            eventually(10, async || app_headers(&a.url("/"), &[])
                .await
                .get("x-flag-n")
                == Some(&want))
            .await,
            "swap {n} applied"
        );
    }
}

/// A flag server for URL sources: serves `doc` with an ETag, answers 304 to a matching
/// `If-None-Match`, and can be told to fail (500) or hang.
#[derive(Clone, Default)]
struct FlagServer {
    doc: Arc<Mutex<String>>,
    mode: Arc<Mutex<&'static str>>,
    requests: Arc<AtomicUsize>,
    if_none_match: Arc<Mutex<Vec<Option<String>>>>,
}

impl FlagServer {
    async fn start(doc: &str) -> (FlagServer, SocketAddr) {
        Self::serve(doc, None).await
    }

    /// Over TLS, with a certificate for 127.0.0.1 signed by a CA made up here; returns the
    /// CA's PEM, which attache is told to trust through `SSL_CERT_FILE`.
    async fn start_tls(doc: &str) -> (FlagServer, SocketAddr, String) {
        use tokio_rustls::rustls;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "attache test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap()
                .signed_by(&leaf_key, &ca, &ca_key)
                .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (server, addr) = Self::serve(doc, Some(acceptor)).await;
        (server, addr, ca.pem())
    }

    async fn serve(doc: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> (FlagServer, SocketAddr) {
        let server = FlagServer::default();
        *server.doc.lock().unwrap() = doc.to_owned();
        *server.mode.lock().unwrap() = "ok";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                s.requests.fetch_add(1, Ordering::SeqCst);
                                let inm = req
                                    .headers()
                                    .get("if-none-match")
                                    .map(|v| v.to_str().unwrap_or_default().to_owned());
                                s.if_none_match.lock().unwrap().push(inm.clone());
                                let mode = *s.mode.lock().unwrap();
                                if mode == "hang" {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                }
                                let doc = s.doc.lock().unwrap().clone();
                                let etag = format!("\"{}\"", doc.len());
                                let res = if mode == "fail" {
                                    Response::builder()
                                        .status(500)
                                        .body(Full::new(Bytes::new()))
                                } else if inm.as_deref() == Some(etag.as_str()) {
                                    Response::builder()
                                        .status(304)
                                        .header("etag", etag)
                                        .body(Full::new(Bytes::new()))
                                } else {
                                    Response::builder()
                                        .header("etag", etag)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(doc)))
                                };
                                Ok::<_, Infallible>(res.unwrap())
                            }
                        });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        (server, addr)
    }
}

/// Cases 23, 24 and 25: a URL source polls with `If-None-Match` (304 counts `unchanged`);
/// failures and timeouts keep the old flags with the error visible; a later source wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_poll_with_etags_and_merge_in_order() {
    let app = App::start("app").await;
    let remote = r#"{"flags": {"shared": {"state": "ENABLED", "variants": {"r": "remote"}, "defaultVariant": "r"},
                                "only-remote": {"state": "ENABLED", "variants": {"r": 1}, "defaultVariant": "r"}}}"#;
    let (server, addr) = FlagServer::start(remote).await;
    let dir = TempDir::new();
    let local = dir.write(
        "local.yaml",
        "flags:\n  shared:\n    state: ENABLED\n    variants: { l: local }\n    defaultVariant: l\n",
    );
    let sources = format!(
        "{}      - {{ url: 'http://{addr}/flags.json', poll_interval: 300ms, timeout: 500ms, headers: {{ authorization: 'Bearer t' }} }}\n",
        file_sources(&[&local])
    );
    let f = start(&app, dir, &sources, "", "", &[]);
    // Case 25: the later source wins per key.
    assert_eq!(
        ofrep_value(&f, "shared", json!({})).await["value"],
        "remote"
    );
    assert_eq!(ofrep_value(&f, "only-remote", json!({})).await["value"], 1);
    // Case 23: the second poll sends If-None-Match and gets 304.
    assert!(
        eventually(10, async || server.requests.load(Ordering::SeqCst) >= 3).await,
        "polled"
    );
    let sent = server.if_none_match.lock().unwrap().clone();
    assert_eq!(sent[0], None);
    assert_eq!(
        sent[1].as_deref(),
        Some(format!("\"{}\"", remote.len()).as_str())
    );
    let url = format!("http://{addr}/flags.json");
    // At least the second poll's 304, one more for each later poll.
    let unchanged = f.a.metric(&format!(
        "attache_flag_source_loads_total{{source=\"{url}\",result=\"unchanged\"}}"
    ));
    assert!(unchanged >= Some(1.0), "{unchanged:?}");
    let admin = async || -> Value {
        get(&http1(), &f.a.admin_url("/flags"))
            .await
            .unwrap()
            .json()
    };
    assert_eq!(
        admin().await["sources"][1]["etag"],
        format!("\"{}\"", remote.len())
    );
    // Case 24: 500, then a timeout: the old flags stay, the error shows.
    *server.mode.lock().unwrap() = "fail";
    assert!(
        eventually(10, async || admin().await["sources"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")))
        .await
    );
    assert_eq!(ofrep_value(&f, "only-remote", json!({})).await["value"], 1);
    *server.mode.lock().unwrap() = "hang";
    assert!(
        eventually(10, async || admin().await["sources"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer")))
        .await,
        "{}",
        admin().await
    );
    assert_eq!(
        ofrep_value(&f, "shared", json!({})).await["value"],
        "remote"
    );
    // The hanging poll (and any before the check) counted as unreachable.
    let unreachable = f.a.metric(&format!(
        "attache_flag_source_loads_total{{source=\"{url}\",result=\"unreachable\"}}"
    ));
    assert!(unreachable >= Some(1.0), "{unreachable:?}");
    // A new document applies once the server is back.
    *server.doc.lock().unwrap() = remote.replace("remote", "again");
    *server.mode.lock().unwrap() = "ok";
    assert!(
        eventually(
            10,
            async || ofrep_value(&f, "shared", json!({})).await["value"] == "again"
        )
        .await
    );
}

/// Case 26: `/ready` fails until every required source has loaded; optional ones do not
/// hold it back.
#[tokio::test]
async fn readiness_waits_for_required_sources() {
    let app = App::start("app").await;
    let dir = TempDir::new();
    let later = dir.path().join("later.json");
    let sources = format!(
        "{}      - {{ url: 'http://127.0.0.1:{}/never', optional: true, poll_interval: 1s }}\n",
        file_sources(&[&later]),
        free_port()
    );
    let ports = Ports::new();
    let config = sidecar_config(ports, app.addr, &flags_section(&sources, free_port(), ""));
    let mut a = Attache::spawn(
        ports,
        TempDir::new(),
        &["run", "-c", dir.write("c.yaml", &config).to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = attache_tests::client::blocking_get(&a.admin_url("/ready")).unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("flag sources"), "{body}");
    // The log says what /ready says: listening, but waiting; not "ready".
    let log = a.log_text();
    assert!(log.contains("/ready waits for the flag sources"), "{log}");
    assert!(!log.contains("attache is ready"), "{log}");
    std::fs::write(
        &later,
        r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}"#,
    )
    .unwrap();
    a.wait_ready();
    let says_ready = || {
        a.log_text()
            .contains("flag sources loaded: attache is ready")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !says_ready() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(says_ready(), "{}", a.log_text());
}

/// Cases 27–31: OFREP single and bulk answers, errors, sizes, ETags.
#[tokio::test]
async fn ofrep_single_and_bulk() {
    let app = App::start("app").await;
    let f = flagged(
        &app,
        FLAGS,
        "    context: { attributes: [ { header: x-plan, as: user.plan } ], static: { env: staging } }
    ofrep: { listen: '127.0.0.1:{ofrep}', max_body_bytes: 200 }
",
        "",
    );
    // Case 27: the exact success body.
    let got = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags/theme"),
        r#"{"context": {"targetingKey": "u-dark"}}"#,
        &[],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(
        got.json(),
        json!({"key": "theme", "value": "dark", "reason": "TARGETING_MATCH", "variant": "dark",
               "metadata": {"flagSetId": "shop", "version": "7"}})
    );
    // Header attributes and static join the body's context, and win over it.
    let got = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags/plan-gate/"),
        r#"{"context": {"user": {"plan": "free"}}}"#,
        &[("x-plan", "pro")],
    )
    .await;
    assert_eq!(got.json()["value"], "yes");
    let got = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags/env"),
        r#"{"context": {"env": "prod"}}"#,
        &[],
    )
    .await;
    assert_eq!(got.json()["value"], "staging", "static over the body");
    // Case 28.
    let got = post(&f.ofrep_url("/ofrep/v1/evaluate/flags/nope"), "", &[]).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["errorCode"], "FLAG_NOT_FOUND");
    assert_eq!(got.json()["key"], "nope");
    let got = post(&f.ofrep_url("/ofrep/v1/evaluate/flags/broken"), "{}", &[]).await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["errorCode"], "PARSE_ERROR");
    let got = post(&f.ofrep_url("/ofrep/v1/evaluate/flags/bad-ref"), "{}", &[]).await;
    assert_eq!(got.status, 400, "a $ref to nothing");
    assert_eq!(got.json()["errorCode"], "PARSE_ERROR");
    assert!(
        got.json()["errorDetails"]
            .as_str()
            .unwrap()
            .contains("no_such_evaluator")
    );
    // Case 29.
    let got = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags/theme"),
        "not json",
        &[],
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.json()["errorCode"], "INVALID_CONTEXT");
    let got = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags/theme"),
        &format!(r#"{{"context": {{"pad": "{}"}}}}"#, "x".repeat(300)),
        &[],
    )
    .await;
    assert_eq!(got.status, 413);
    assert!(got.json()["errorDetails"].is_string());
    // Case 30.
    let got = post(&f.ofrep_url("/ofrep/v1/evaluate/flags/legacy"), "", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json(),
        json!({"key": "legacy", "reason": "DISABLED", "metadata": {"flagSetId": "shop", "version": "7"}})
    );
    let got = call(&f.ofrep_url("/ofrep/v1/evaluate/flags/theme"), "GET", &[]).await;
    assert_eq!(got.status, 405);
    assert_eq!(got.headers.get("allow").unwrap(), "POST");
    // Case 31: bulk, its ETag, 304, and a new tag after an edit.
    let bulk = post(&f.ofrep_url("/ofrep/v1/evaluate/flags"), "", &[]).await;
    assert_eq!(bulk.status, 200);
    let body = bulk.json();
    let keys: Vec<&str> = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "sorted by key");
    assert_eq!(
        body["metadata"],
        json!({"flagSetId": "shop", "version": "7"})
    );
    let broken = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "broken")
        .unwrap();
    assert_eq!(broken["errorCode"], "PARSE_ERROR", "errors inline");
    let etag = bulk
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(etag.len() == 34 && etag.starts_with('"'), "{etag}");
    let again = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags/"),
        "",
        &[("if-none-match", &format!("W/{etag}"))],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.headers.get("etag").unwrap().to_str().unwrap(), etag);
    std::fs::write(f.file("flags.json"), FLAGS.replace("café", "thé")).unwrap();
    assert!(
        eventually(10, async || {
            let got = post(
                &f.ofrep_url("/ofrep/v1/evaluate/flags"),
                "",
                &[("if-none-match", &etag)],
            )
            .await;
            got.status == 200 && got.headers.get("etag").unwrap().to_str().unwrap() != etag
        })
        .await
    );
    f.a.assert_metrics(&[
        r#"attache_flag_evaluations_total{flag="theme",variant="dark",reason="TARGETING_MATCH",path="ofrep"} 1"#,
    ]);
    // Each bulk request (their number depends on the loop above) evaluates every flag once:
    // `theme` without a context as often as the static `beta`.
    let m = f.a.metrics_text();
    let bulk = |series: &str| metrics::value(&m, series).unwrap_or(0.0);
    let theme = bulk(
        r#"attache_flag_evaluations_total{flag="theme",variant="light",reason="DEFAULT",path="ofrep_bulk"}"#,
    );
    let beta = bulk(
        r#"attache_flag_evaluations_total{flag="beta",variant="on",reason="STATIC",path="ofrep_bulk"}"#,
    );
    assert!(theme >= 2.0 && theme == beta, "theme {theme}, beta {beta}");
}

/// Cases 7 and 34: a 10/90 split over 10,000 keys lands within ±2%, identically in two
/// processes; v1, v2 and v3 bucketing reproduce §4.1's worked example.
#[tokio::test]
async fn fractional_splits_are_stable_across_processes() {
    let app = App::start("app").await;
    let one = flagged(&app, FLAGS, "", "");
    let two = flagged(&app, FLAGS, "", "");
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let variants = async |f: &Flagged| -> Vec<String> {
        let url = f.ofrep_url("/ofrep/v1/evaluate/flags/split");
        let client = http1();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(50) {
            let calls = chunk.iter().map(|k| {
                let req = Request::post(url.as_str())
                    .body(Full::new(Bytes::from(
                        json!({"context": {"targetingKey": k}}).to_string(),
                    )))
                    .unwrap();
                send(&client, req)
            });
            for got in futures_util::future::join_all(calls).await {
                out.push(got.unwrap().json()["variant"].as_str().unwrap().to_owned());
            }
        }
        out
    };
    let a = within(120, variants(&one)).await;
    let b = within(120, variants(&two)).await;
    assert_eq!(a, b, "two processes decide identically");
    let v2 = a.iter().filter(|v| *v == "v2").count();
    assert!((800..=1200).contains(&v2), "10% ± 2%: {v2} of 10,000");

    for (version, want) in [("v1", "spades"), ("v2", "hearts"), ("v3", "diamonds")] {
        let f = flagged(
            &app,
            FLAGS,
            &format!("    fractional_version: {version}\n"),
            "",
        );
        let got = ofrep_value(&f, "fractional-flag", json!({"user": {"name": "jack"}})).await;
        assert_eq!(got["variant"], want, "{version}: {got}");
    }
}

/// Case 35: YAML and JSON twins, and the array form of `flags`, evaluate identically.
#[tokio::test]
async fn yaml_json_and_array_forms_agree() {
    let app = App::start("app").await;
    let dir = TempDir::new();
    let json_doc: Value = serde_json::from_str(FLAGS).unwrap();
    let json_file = dir.write("a.json", FLAGS);
    // The same document as YAML (JSON is YAML's subset; flow style keeps it exact), and as an
    // array of flags with keys.
    let yaml_file = dir.write(
        "b.yaml",
        &format!(
            "# YAML twin\n{}",
            serde_json::to_string_pretty(&json_doc).unwrap()
        ),
    );
    let mut array = json_doc.clone();
    let flags: Vec<Value> = json_doc["flags"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v["key"] = json!(k);
            v
        })
        .collect();
    array["flags"] = Value::Array(flags);
    let array_file = dir.write("c.json", &array.to_string());
    let mut bulks = Vec::new();
    for file in [&json_file, &yaml_file, &array_file] {
        let f = start(&app, TempDir::new(), &file_sources(&[file]), "", "", &[]);
        let got = post(
            &f.ofrep_url("/ofrep/v1/evaluate/flags"),
            r#"{"context": {"targetingKey": "u-dark", "user": {"plan": "pro", "name": "jack"}}}"#,
            &[],
        )
        .await;
        assert_eq!(got.status, 200);
        bulks.push(got.json());
    }
    assert_eq!(bulks[0], bulks[1], "YAML twin");
    assert_eq!(bulks[0], bulks[2], "array form");
    assert_eq!(bulks[0]["flags"].as_array().unwrap().len(), 12);
}

/// Case 33: one `feature_flag.evaluation` event per delivered flag on the SERVER span, with
/// the semantic-convention attributes and none of the deprecated names.
#[tokio::test]
async fn span_events_reach_the_collector() {
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let f = flagged(
        &app,
        FLAGS,
        "    deliver: { flags: [beta, theme, missing] }
    context: { targeting_key: [ { header: x-user-id } ] }
    telemetry: { include_value: true, include_context_id: true }
",
        &format!(
            "  telemetry:
    otlp: {{ endpoint: '{}', protocol: http/protobuf, timeout: 2s }}
    batch: {{ scheduled_delay: 100ms }}
",
            collector.endpoint()
        ),
    );
    let got = call(&f.a.url("/"), "GET", &[("x-user-id", "u-dark")]).await;
    assert_eq!(got.status, 200);
    assert!(eventually(10, async || !collector.spans().is_empty()).await);
    let spans = collector.spans();
    let span = &spans[0].span;
    let events: Vec<_> = span
        .events
        .iter()
        .filter(|e| e.name == "feature_flag.evaluation")
        .collect();
    assert_eq!(events.len(), 3, "{events:#?}");
    let attrs = |i: usize| -> HashMap<String, String> {
        events[i]
            .attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    };
    let theme = attrs(1);
    assert_eq!(theme["feature_flag.key"], "theme");
    assert_eq!(theme["feature_flag.result.variant"], "dark");
    assert_eq!(theme["feature_flag.result.reason"], "targeting_match");
    assert_eq!(theme["feature_flag.provider.name"], "attache");
    assert_eq!(theme["feature_flag.set.id"], "shop");
    assert_eq!(theme["feature_flag.version"], "7");
    assert_eq!(theme["feature_flag.result.value"], "\"dark\"");
    assert_eq!(theme["feature_flag.context.id"], "u-dark");
    let missing = attrs(2);
    assert_eq!(missing["error.type"], "flag_not_found");
    assert!(missing.contains_key("feature_flag.error.message"));
    for i in 0..3 {
        for deprecated in [
            "feature_flag.variant",
            "feature_flag.provider_name",
            "feature_flag.evaluation.reason",
            "feature_flag.evaluation.error.message",
        ] {
            assert!(!attrs(i).contains_key(deprecated), "{deprecated}");
        }
    }
    assert!(events[0].time_unix_nano >= span.start_time_unix_nano);

    // A single OFREP evaluation adds one event to its request's span, which continues the
    // caller's trace; a bulk evaluation adds none.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let got = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags/theme"),
        r#"{"context": {"targetingKey": "u-dark"}}"#,
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(got.json()["variant"], "dark");
    let bulk = post(
        &f.ofrep_url("/ofrep/v1/evaluate/flags"),
        "",
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(bulk.status, 200);
    let ofrep_spans = async || -> Vec<attache_tests::otlp::Received> {
        collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace)
            .collect()
    };
    assert!(eventually(10, async || ofrep_spans().await.len() == 2).await);
    let spans = ofrep_spans().await;
    let single = spans
        .iter()
        .find(|s| s.attr("url.path").as_deref() == Some("/ofrep/v1/evaluate/flags/theme"))
        .expect("the single evaluation's span");
    assert_eq!(single.parent_id(), "00f067aa0ba902b7");
    let events: Vec<_> = single
        .span
        .events
        .iter()
        .filter(|e| e.name == "feature_flag.evaluation")
        .collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    let bulk_span = spans
        .iter()
        .find(|s| s.attr("url.path").as_deref() == Some("/ofrep/v1/evaluate/flags"))
        .expect("the bulk evaluation's span");
    assert!(bulk_span.span.events.is_empty(), "bulk adds no events");
    // OFREP calls come from the app beside attache: not counted as traffic.
    assert!(
        !metrics(&f.a).contains("method=\"POST\""),
        "OFREP requests stay out of attache_http_requests_total"
    );
}

/// Case 36: reloading 1,000 flags while requests flow fails none of them.
#[tokio::test]
async fn reloading_a_thousand_flags_under_load_fails_nothing() {
    let app = App::start("app").await;
    let doc = |variant: &str| {
        let flags: serde_json::Map<String, Value> = (0..1000)
            .map(|i| {
                (
                    format!("flag-{i}"),
                    json!({"state": "ENABLED", "variants": {"a": variant, "b": "b"}, "defaultVariant": "a",
                           "targeting": {"if": [{"==": [{"var": "targetingKey"}, format!("u{i}")]}, "b"]}}),
                )
            })
            .collect();
        json!({ "flags": flags }).to_string()
    };
    let f = flagged(
        &app,
        &doc("a0"),
        "    deliver: { flags: [flag-7, flag-500] }\n",
        "",
    );
    // Each reload is a new document written beside the file and renamed over it. Batches of
    // 8 concurrent requests keep going until one of them carries the new decision (the swap
    // happened while requests were in flight), then 4 more batches run on the new snapshot.
    let path = f.file("flags.json");
    let client = http1();
    let url = f.a.url("/");
    let (mut sent, mut failed) = (0, 0);
    let mut seen = std::collections::BTreeSet::new();
    let mut batch = async || -> Vec<String> {
        let calls = (0..8).map(|_| get(&client, &url));
        let mut decisions = Vec::new();
        for got in futures_util::future::join_all(calls).await {
            sent += 1;
            match got {
                Ok(g) if g.status == 200 => decisions.push(
                    g.json()["headers"]["x-flag-flag-500"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                _ => failed += 1,
            }
        }
        decisions
    };
    for n in 1..=6 {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, doc(&format!("a{n}"))).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let new = format!("a{n}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let decisions = batch().await;
            let swapped = decisions.contains(&new);
            seen.extend(decisions);
            if swapped {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reload {n} never seen"
            );
        }
        for _ in 0..4 {
            let decisions = batch().await;
            assert!(
                decisions.iter().all(|d| *d == new),
                "after the swap every request sees reload {n}: {decisions:?}"
            );
        }
    }
    assert_eq!(failed, 0, "{failed} of {sent} failed");
    assert!(!seen.contains(""), "every request had the header");
    let want: std::collections::BTreeSet<String> = (0..=6).map(|n| format!("a{n}")).collect();
    assert!(
        seen.is_subset(&want) && seen.len() >= 6,
        "decisions followed the reloads: {seen:?}"
    );
}

/// `attache dev` loads ./flags.json, delivers every flag as a header and serves OFREP.
#[tokio::test]
async fn dev_loads_flags_json_from_the_working_directory() {
    let work = TempDir::new();
    work.write("flags.json", FLAGS);
    let ports = Ports::new();
    let ofrep = free_port();
    let listen = format!("127.0.0.1:{}", ports.inbound);
    let admin = format!("127.0.0.1:{}", ports.admin);
    let ofrep_addr = format!("127.0.0.1:{ofrep}");
    let mut a = Attache::spawn_in(
        ports,
        TempDir::new(),
        &[
            "dev",
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--ofrep",
            &ofrep_addr,
        ],
        &[],
        work.path(),
    );
    a.wait_ready();
    let h = app_headers(&a.url("/"), &[]).await;
    assert_eq!(h["x-flag-beta"], "true");
    assert_eq!(h["x-flag-theme"], "light");
    assert_eq!(h["x-flag-split"], "v1", "no targeting key: the default");
    let combined: Value = serde_json::from_str(&h["x-flags"]).unwrap();
    assert_eq!(combined.as_object().unwrap().len(), 12, "every flag");
    let got = post(
        &format!("http://{ofrep_addr}/ofrep/v1/evaluate/flags/beta"),
        "",
        &[],
    )
    .await;
    assert_eq!(got.json()["value"], true);
    // The targeting key comes from `x-user-id`: each user is bucketed, exactly as OFREP
    // buckets the same key, and the 10/90 split puts some of 100 users on each side.
    let mut seen = HashSet::new();
    for i in 0..100 {
        let user = format!("user-{i}");
        let h = app_headers(&a.url("/"), &[("x-user-id", &user)]).await;
        let combined: Value = serde_json::from_str(&h["x-flags"]).unwrap();
        assert_eq!(combined["split"]["reason"], "TARGETING_MATCH", "{user}");
        let ofrep = post(
            &format!("http://{ofrep_addr}/ofrep/v1/evaluate/flags/split"),
            &json!({"context": {"targetingKey": user}}).to_string(),
            &[("content-type", "application/json")],
        )
        .await;
        assert_eq!(ofrep.json()["value"], h["x-flag-split"], "{user}");
        seen.insert(h["x-flag-split"].clone());
    }
    assert_eq!(seen.len(), 2, "both variants among 100 users: {seen:?}");
}

/// Case 32: an OpenFeature SDK with the OFREP provider, configured only by `OFREP_ENDPOINT`,
/// resolves flags against attache. Needs Python with `openfeature-sdk` and
/// `openfeature-provider-ofrep` (`.ci/run` installs them into a venv and sets
/// `OPENFEATURE_PYTHON`). Without it the test says so and passes nothing off as checked on a
/// developer's machine, and fails under `CI=true`, where the SDK must be there.
#[tokio::test]
async fn openfeature_sdk_resolves_over_ofrep() {
    let Ok(python) = std::env::var("OPENFEATURE_PYTHON") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and OPENFEATURE_PYTHON is not set: the OpenFeature SDK test cannot run \
             (bash .ci/run installs the SDK and sets it)"
        );
        eprintln!("SKIPPED: OPENFEATURE_PYTHON is not set (bash .ci/run sets it up)");
        return;
    };
    let app = App::start("app").await;
    let f = flagged(&app, FLAGS, "", "");
    let script = r#"
import json, os
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.contrib.provider.ofrep import OFREPProvider
api.set_provider(OFREPProvider(os.environ["OFREP_ENDPOINT"]))
c = api.get_client()
out = {
  "beta": c.get_boolean_value("beta", False),
  "theme": c.get_string_details("theme", "none", EvaluationContext(targeting_key="u-dark")).value,
  "theme_reason": str(c.get_string_details("theme", "none", EvaluationContext(targeting_key="u-dark")).reason),
  "missing": c.get_string_value("missing", "fallback"),
  "layout": c.get_object_value("layout", {}),
}
print(json.dumps(out))
"#;
    let out = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .env("OFREP_ENDPOINT", f.ofrep_url(""))
        .output();
    let out = within(60, out).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["beta"], true);
    assert_eq!(got["theme"], "dark");
    assert!(
        got["theme_reason"]
            .as_str()
            .unwrap()
            .contains("TARGETING_MATCH"),
        "{got}"
    );
    assert_eq!(got["missing"], "fallback");
    assert_eq!(got["layout"], json!({"cols": [1, 2]}));
}

/// Bad input never fails the app's request: a flag in error, malformed baggage, and a
/// client decision header all end in a normal 200 from the app.
#[tokio::test]
async fn bad_input_never_fails_the_request() {
    let app = App::start("app").await;
    let f = flagged(
        &app,
        FLAGS,
        "    deliver: { flags: [broken, missing, theme] }
    context: { targeting_key: [ { cookie: uid } ], attributes: [ { baggage: plan } ] }
",
        "",
    );
    for headers in [
        vec![("baggage", "not a baggage,,=")],
        vec![("cookie", ";;;=;uid")],
        vec![("x-flag-theme", "dark"), ("x-flags", "{")],
    ] {
        let h: Vec<(&str, &str)> = headers.clone();
        let got = call(&f.a.url("/"), "GET", &h).await;
        assert_eq!(got.status, StatusCode::OK.as_u16(), "{headers:?}");
        assert_eq!(got.json()["headers"]["x-flag-theme"], "light");
    }
}

/// A config reload that changes `spec.flags` keeps the flags of sources it still lists: no
/// request in between misses them. Removing `spec.flags` stops delivery (and the watchers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_keep_the_flags_of_unchanged_sources() {
    let app = App::start("app").await;
    let f = flagged(&app, FLAGS, "    deliver: { flags: [beta] }\n", "");
    let config = std::fs::read_to_string(f.a.config_path()).unwrap();
    let url = f.a.url("/");
    let client = http1();
    let hammer = async |rounds: usize| -> (usize, usize) {
        let (mut with, mut without) = (0, 0);
        for _ in 0..rounds {
            let got = get(&client, &url).await.unwrap();
            match got.json()["headers"]["x-flag-beta"].as_str() {
                Some("true") => with += 1,
                _ => without += 1,
            }
        }
        (with, without)
    };
    // A second source (optional, never reachable): a new source list.
    let file = f.file("flags.json");
    let changed = config.replace(
        &format!("      - {{ file: '{}' }}\n", file.display()),
        &format!(
            "      - {{ file: '{}' }}\n      - {{ url: 'http://127.0.0.1:{}/none', optional: true }}\n",
            file.display(),
            free_port()
        ),
    );
    assert_ne!(changed, config);
    std::fs::write(f.a.config_path(), &changed).unwrap();
    let (with, without) = hammer(300).await;
    assert_eq!(
        without,
        0,
        "{without} of {} requests missed the flag",
        with + without
    );
    assert!(
        eventually(10, async || {
            let flags: Value = get(&http1(), &f.a.admin_url("/flags"))
                .await
                .unwrap()
                .json();
            flags["sources"].as_array().is_some_and(|s| s.len() == 2)
        })
        .await,
        "the reload applied"
    );
    // Without spec.flags, nothing is delivered and client headers pass untouched.
    let start = config.find("  flags:").unwrap();
    std::fs::write(f.a.config_path(), &config[..start]).unwrap();
    assert!(
        eventually(10, async || !app_headers(&url, &[])
            .await
            .contains_key("x-flag-beta"))
        .await
    );
}

/// URL sources over HTTPS: rustls, trusting the CA that `SSL_CERT_FILE` names; without that
/// CA the certificate is refused and the error shows on the admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_url_sources_trust_the_configured_ca() {
    let app = App::start("app").await;
    let doc = r#"{"flags": {"secure": {"state": "ENABLED", "variants": {"y": "over-tls"}, "defaultVariant": "y"}}}"#;
    let (_server, addr, ca_pem) = FlagServer::start_tls(doc).await;
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", &ca_pem);
    let other_ca = dir.write("other.pem", &FlagServer::start_tls(doc).await.2);
    let run = |ca: &std::path::Path, optional: bool| {
        let source = format!(
            "      - {{ url: 'https://127.0.0.1:{}/flags.json', poll_interval: 300ms, timeout: 2s, optional: {optional} }}\n",
            addr.port()
        );
        let env = [("SSL_CERT_FILE", ca.to_str().unwrap())];
        start(&app, TempDir::new(), &source, "", "", &env)
    };
    let trusted = run(&ca, false);
    assert_eq!(
        ofrep_value(&trusted, "secure", json!({})).await["value"],
        "over-tls"
    );
    let untrusted = run(&other_ca, true);
    let admin = async || -> Value {
        get(&http1(), &untrusted.a.admin_url("/flags"))
            .await
            .unwrap()
            .json()
    };
    assert!(
        eventually(10, async || admin().await["sources"][0]["state"] == "error").await,
        "{}",
        admin().await
    );
    let error = admin().await["sources"][0]["last_error"].to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_eq!(
        ofrep_value(&untrusted, "secure", json!({})).await["errorCode"],
        "FLAG_NOT_FOUND"
    );
}
