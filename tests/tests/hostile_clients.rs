//! Regressions found by a hostile-client probe of the release binary: each test sends what an
//! untrusted client (or app) sent, through the real binary, to a recording app, and checks
//! that the client could not forge what the app or the next hop trusts.

use attache_tests::client::raw;
use attache_tests::{App, Attache, TempDir};
use serde_json::Value;
use std::time::Duration;

const FLAGS: &str = r#"{"flags": {
  "tier": {"state": "ENABLED", "variants": {"gold": "gold", "basic": "basic"}, "defaultVariant": "basic"}
}}"#;

/// attache with tracing (request ids generated) and the `tier` flag delivered as a header, in
/// `x-flags` and in baggage.
fn flagged(app: &App, dir: &TempDir) -> Attache {
    let flags = dir.write("flags.json", FLAGS);
    Attache::sidecar(
        app.addr,
        &format!(
            "  trace:
    request_id: {{ header: x-request-id, generate: true }}
  flags:
    sources: [ {{ file: '{}' }} ]
    ofrep: null
    deliver: {{ flags: [tier], combined_header: x-flags }}
",
            flags.display()
        ),
    )
}

/// The JSON echo of the app, from a raw HTTP/1.1 exchange.
fn echoed(response: &str) -> Value {
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// Issue 20, bug 1: a client's `Connection` line names the headers attache adds (flag
/// decisions, baggage, trace context, request id). They concern the client's connection only:
/// the app must still receive attache's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_connection_line_cannot_remove_what_attache_adds() {
    let app = App::start("app").await;
    let dir = TempDir::new();
    let a = flagged(&app, &dir);
    let out = raw(
        a.inbound(),
        b"GET /x HTTP/1.1\r\nhost: app\r\n\
          connection: close, x-flags, x-flag-tier, baggage, traceparent, x-request-id, x-hop\r\n\
          x-hop: client-only\r\nbaggage: plan=pro\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let h = &echoed(&out)["headers"];
    assert_eq!(h["x-flag-tier"], "basic", "{h}");
    assert!(
        h["x-flags"].as_str().is_some_and(|v| v.contains("tier")),
        "{h}"
    );
    assert!(
        h["baggage"]
            .as_str()
            .is_some_and(|v| v.contains("flag.tier=basic")),
        "attache's baggage reaches the app: {h}"
    );
    assert!(
        h["traceparent"]
            .as_str()
            .is_some_and(|v| v.starts_with("00-")),
        "{h}"
    );
    assert!(
        h["x-request-id"].as_str().is_some_and(|v| v.len() == 36),
        "{h}"
    );
    assert!(
        h.get("x-hop").is_none(),
        "a header the client named is its own: {h}"
    );
    assert!(h.get("connection").is_none(), "{h}");
}

/// Issue 20, bug 2: a client's forged decision (`flag.tier=gold` in its baggage, or Jaeger's
/// `uberctx-flag.tier`) is removed for the app; it must not come back through context
/// restoration when the app calls out with only `traceparent`, where the outbound route would
/// follow it to the `gold` upstream and the next sidecar would read it as a decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_decision_does_not_come_back_through_restoration() {
    let app = App::start("app").await;
    let basic = App::start("checkout").await;
    let gold = App::start("checkout-gold").await;
    let dir = TempDir::new();
    let flags = dir.write("flags.json", FLAGS);
    let outbound = attache_tests::free_port();
    let a = Attache::sidecar(
        app.addr,
        &format!(
            "  outbound: [ {{ listen: '127.0.0.1:{outbound}', upstream: checkout }} ]
  upstreams:
    checkout: {{ endpoints: ['http://{}'] }}
    checkout-gold: {{ endpoints: ['http://{}'] }}
  flags:
    sources: [ {{ file: '{}' }} ]
    ofrep: null
    deliver: {{ flags: [tier] }}
    routes:
      - {{ upstream: checkout, flag: tier, variants: {{ gold: checkout-gold }} }}
",
            basic.addr,
            gold.addr,
            flags.display()
        ),
    );
    for forged in [
        "baggage: flag.tier=gold,plan=pro\r\n",
        "uberctx-flag.tier: gold\r\nbaggage: plan=pro\r\n",
    ] {
        let request = format!(
            "GET /call/{outbound}/order HTTP/1.1\r\nhost: app\r\n{forged}connection: close\r\n\r\n"
        );
        let out = raw(a.inbound(), request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(echoed(&out)["status"], 200, "{forged:?}: {out}");
    }
    assert_eq!(gold.hits(), 0, "a forged decision routed the app's call");
    assert_eq!(basic.hits(), 2, "each call went by attache's own decision");
}
