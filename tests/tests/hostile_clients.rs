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
