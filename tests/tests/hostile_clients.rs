//! Regressions found by a hostile-client probe of the release binary: each test sends what an
//! untrusted client (or app) sent, through the real binary, to a recording app, and checks
//! that the client could not forge what the app or the next hop trusts.

use attache_tests::app::Canned;
use attache_tests::client::{get, http1, http2, raw};
use attache_tests::{App, Attache, TempDir, within};
use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// Issue 20, bug 3: a client's malformed chunked body is the client's fault. It gets 400
/// `malformed-request`, counted as a client error; the upstream-error and 5xx signals that
/// alerts watch do not move, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_client_error_not_an_upstream_one() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let long_extension = format!("5;{}=x\r\nhello\r\n0\r\n\r\n", "e".repeat(20_000));
    let bodies: [(&str, &str); 5] = [
        (
            "a chunk size that overflows",
            "10000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        ("a chunk size with 0x", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("a bare LF", "5\nhello\r\n0\r\n\r\n"),
        ("no CRLF after the data", "5\r\nhelloX0\r\n\r\n"),
        ("an oversized extension", &long_extension),
    ];
    for (what, body) in bodies {
        let request =
            format!("POST /x HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n{body}");
        let out = raw(a.inbound(), request.as_bytes(), Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
        assert!(out.contains("malformed-request"), "{what}: {out}");
    }
    // The proxy keeps serving, and the marker request is counted after the five.
    let ok = raw(
        a.inbound(),
        b"GET /ok HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    a.assert_metrics(&[
        "attache_client_errors_total{result=\"malformed_body\"} 5",
        "attache_http_requests_total{direction=\"inbound\",method=\"POST\",status_class=\"4xx\"} 5",
    ]);
    let text = a.metrics_text();
    assert!(
        !text.contains("attache_upstream_errors_total{"),
        "a client's body is not an upstream error:\n{text}"
    );
    assert!(!text.contains("status_class=\"5xx\""), "{text}");
}

/// Issue 20, bug 3: a client that goes away in the middle of its body (a closed HTTP/1.1
/// connection, a reset HTTP/2 stream) is counted as a client abort, not as an upstream reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_aborts_mid_body_is_counted_as_a_client_abort() {
    use tokio::io::AsyncWriteExt;
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    // HTTP/1.1: ten bytes of a hundred, then the connection closes.
    let mut s = tokio::net::TcpStream::connect(a.inbound())
        .await
        .expect("connect");
    s.write_all(b"POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    app.wait_hits(1).await;
    drop(s);
    // HTTP/2: a stream reset by the client in the middle of its body (hyper resets the stream
    // when the body it sends fails) while the connection stays open.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let chunks = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (b.map(Frame::data), rx))
    }));
    let stream = tokio::net::TcpStream::connect(a.inbound())
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let request = http::Request::post("http://app/y")
        .body(StreamBody::new(chunks))
        .expect("request");
    let pending = tokio::spawn(send.send_request(request));
    tx.send(Ok(Bytes::from_static(b"0123456789")))
        .await
        .expect("send a chunk");
    app.wait_hits(2).await;
    tx.send(Err(std::io::Error::other("the client gives up")))
        .await
        .expect("fail the body");
    let reset = within(10, pending).await.expect("the request task");
    assert!(reset.is_err(), "the client's own request fails: {reset:?}");
    let counted = attache_tests::eventually(10, async || {
        a.metric("attache_client_errors_total{result=\"aborted\"}") == Some(2.0)
    })
    .await;
    let text = a.metrics_text();
    assert!(counted, "two client aborts:\n{text}");
    assert!(
        !text.contains("attache_upstream_errors_total{"),
        "a client's abort is not an upstream error:\n{text}"
    );
    assert!(!text.contains("status_class=\"5xx\""), "{text}");
}

/// Issue 20, bug 4: an app's response with both `Content-Length` and `Transfer-Encoding:
/// chunked` is read as chunked (RFC 9112 §6.3), and the length is removed before the response
/// goes on: the client gets the whole body, not the first `Content-Length` bytes of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_response_with_length_and_chunked_reaches_the_client_whole() {
    let app = Canned::start(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let a = Attache::sidecar(app.addr, "");
    for client in [http1(), http2()] {
        let got = within(10, get(&client, &a.url("/x")))
            .await
            .expect("a response");
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "hello world");
        assert!(
            got.headers.get("content-length").is_none_or(|v| v == "11"),
            "{:?}",
            got.headers
        );
    }
    assert_eq!(app.hits(), 2);
}

/// Issue 20, bug 4, the request side: a client's request with both `Content-Length` and
/// `Transfer-Encoding: chunked` is read by its coding, or refused; the app never receives a
/// length that cuts the body short or leaves bytes for a smuggled request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_length_and_chunked_reaches_the_app_by_its_coding() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let out = raw(
        a.inbound(),
        b"POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\
          connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    if out.starts_with("HTTP/1.1 400") {
        assert_eq!(app.hits(), 0, "refused: {out}");
        return;
    }
    let echo = echoed(&out);
    assert_eq!(echo["body_bytes"], 11, "{echo}");
    assert_eq!(app.hits(), 1, "{out}");
}

/// Issue 20, bug 5: a transfer coding attache does not decode. A request's `gzip, chunked`
/// would reach the app as gzip bytes without their label: 501 (RFC 9112 §6.1). An app's
/// response with one would reach the client the same way: 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_attache_does_not_decode_is_refused_both_ways() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let out = raw(
        a.inbound(),
        b"POST /x HTTP/1.1\r\nhost: app\r\ntransfer-encoding: gzip, chunked\r\n\
          connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    assert!(out.contains("transfer-coding-not-implemented"), "{out}");
    assert_eq!(app.hits(), 0, "nothing of it reached the app");

    let coded = Canned::start(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    let b = Attache::sidecar(coded.addr, "");
    let got = within(10, get(&http1(), &b.url("/x")))
        .await
        .expect("a response");
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(got.text().contains("gzip"), "{}", got.text());
    b.assert_metrics(&[
        "attache_upstream_errors_total{direction=\"inbound\",upstream=\"app\",kind=\"protocol\"} 1",
    ]);
}

/// Issue 20, bug 6: only upgrade protocols on the allow-list (`websocket` by default) reach
/// the app; `h2c` never does (RFC 9113 §3.1). An app's 101 to a request that did not ask for
/// it (or for another protocol) would open a raw tunnel past every filter: 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_upgrades_reach_the_app_and_an_unsolicited_101_is_refused() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    for (upgrade, extra) in [
        ("h2c", "http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
        ("foo/2", ""),
    ] {
        let request = format!(
            "GET /x HTTP/1.1\r\nhost: app\r\nconnection: upgrade, http2-settings\r\n\
             upgrade: {upgrade}\r\n{extra}\r\n"
        );
        let out = raw(a.inbound(), request.as_bytes(), Duration::from_secs(3)).await;
        let h = &echoed(&out)["headers"];
        assert!(h.get("upgrade").is_none(), "{upgrade}: {h}");
        assert!(h.get("connection").is_none(), "{upgrade}: {h}");
        assert!(h.get("http2-settings").is_none(), "{upgrade}: {h}");
    }

    // An app that answers 101 whatever it was asked.
    let tunnel = Canned::start(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\nraw bytes",
    )
    .await;
    let b = Attache::sidecar(tunnel.addr, "");
    for request in [
        "GET /plain HTTP/1.1\r\nhost: app\r\n\r\n",
        "GET /h2c HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
        "GET /ws HTTP/1.1\r\nhost: app\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    ] {
        let out = raw(b.inbound(), request.as_bytes(), Duration::from_secs(3)).await;
        assert!(out.starts_with("HTTP/1.1 502"), "{request:?}: {out}");
        assert!(!out.contains("raw bytes"), "{request:?}: {out}");
    }
    let heads = tunnel.heads.lock().expect("heads").join("\n");
    assert!(
        !heads.to_ascii_lowercase().contains("upgrade: h2c"),
        "{heads}"
    );
}

/// Issue 20, risks: a header name with an underscore (`X_Flag_Tier`) is what CGI-style apps
/// (WSGI, Rack, PHP) read as `HTTP_X_FLAG_TIER`, the same variable as attache's own
/// `x-flag-tier`. Dropped by default; `reject` answers 400; `allow` passes it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_with_underscores_are_dropped_by_default() {
    let app = App::start("app").await;
    let dir = TempDir::new();
    let a = flagged(&app, &dir);
    let request = b"GET /x HTTP/1.1\r\nhost: app\r\nX_Flag_Tier: gold\r\nx_custom: 1\r\n\
                    x-kept: 1\r\nconnection: close\r\n\r\n";
    let h = &echoed(&raw(a.inbound(), request, Duration::from_secs(5)).await)["headers"];
    assert!(h.get("x_flag_tier").is_none(), "{h}");
    assert!(h.get("x_custom").is_none(), "{h}");
    assert_eq!(h["x-flag-tier"], "basic", "{h}");
    assert_eq!(h["x-kept"], "1", "{h}");
    a.assert_metrics(&["attache_client_errors_total{result=\"header_with_underscore\"} 1"]);

    for (action, allowed) in [("reject", false), ("allow", true)] {
        let b = Attache::sidecar(
            app.addr,
            &format!("  limits: {{ headers_with_underscores: {action} }}\n"),
        );
        let out = raw(b.inbound(), request, Duration::from_secs(5)).await;
        if allowed {
            assert_eq!(echoed(&out)["headers"]["x_custom"], "1", "{out}");
        } else {
            assert!(out.starts_with("HTTP/1.1 400"), "{out}");
            assert!(out.contains("underscore"), "{out}");
        }
    }
}

/// Issue 20, bug 7: a URL too broken to parse, whose password comes from the environment,
/// must not show the password in the reload error on `/config` or in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_url_does_not_leak_its_password_in_errors() {
    let app = App::start("app").await;
    let ports = attache_tests::Ports::new();
    let config = attache_tests::sidecar_config(ports, app.addr, "");
    let a = Attache::run_with_env(ports, &config, &[("BILLING_PASSWORD", "hunter2")]);
    let broken = format!(
        "{config}  upstreams:\n    billing: {{ endpoints: ['http://svc:${{BILLING_PASSWORD}}@bad host:80'] }}\n"
    );
    let tmp = a.config_path().with_extension("tmp");
    std::fs::write(&tmp, broken).expect("write");
    std::fs::rename(&tmp, a.config_path()).expect("rename");
    let failed = attache_tests::eventually(10, async || {
        a.metric("attache_config_reloads_total{result=\"failure\"}") == Some(1.0)
    })
    .await;
    assert!(
        failed,
        "the broken file was not rejected:\n{}",
        a.log_text()
    );
    let (status, body) =
        attache_tests::client::blocking_get(&a.admin_url("/config")).expect("/config");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    let error = v["reload"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("spec.upstreams.billing"), "{error}");
    assert!(error.contains("REDACTED"), "{error}");
    assert!(!body.contains("hunter2"), "{body}");
    assert!(!a.log_text().contains("hunter2"), "{}", a.log_text());
}

/// Issue 20, risks: under `forwarded_headers: append` a client's own `X-Forwarded-Proto` and
/// `X-Forwarded-Host` would tell the app it came over HTTPS, or for another host. Only a peer in
/// `trusted_proxies` is believed; anyone else's are replaced by what attache saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_and_host_are_believed_only_from_trusted_proxies() {
    let app = App::start("app").await;
    let request = b"GET /x HTTP/1.1\r\nhost: shop.example\r\nx-forwarded-proto: https\r\n\
                    x-forwarded-host: admin.example\r\nx-forwarded-for: 1.1.1.1\r\n\
                    connection: close\r\n\r\n";
    for (trusted, proto, host) in [
        ("[]", "http", "shop.example"),
        ("['127.0.0.0/8']", "https", "admin.example"),
    ] {
        let ports = attache_tests::Ports::new();
        let config = attache_tests::sidecar_config(ports, app.addr, "").replace(
            "  admin:\n",
            &format!("    trusted_proxies: {trusted}\n  admin:\n"),
        );
        let a = Attache::run(ports, &config);
        let h = &echoed(&raw(a.inbound(), request, Duration::from_secs(5)).await)["headers"];
        assert_eq!(h["x-forwarded-proto"], proto, "trusted {trusted}: {h}");
        assert_eq!(h["x-forwarded-host"], host, "trusted {trusted}: {h}");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 127.0.0.1", "{h}");
    }
}

/// Issue 20, risks: request targets that name no resource of the app. `GET *` (asterisk-form
/// is for `OPTIONS` only) and the authority-form `GET host:port` (for `CONNECT` only, which a
/// sidecar port refuses) get 400 instead of being forwarded as `GET /`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_and_authority_form_targets_are_refused() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    for line in [
        "GET * HTTP/1.1",
        "GET app.internal:8080 HTTP/1.1",
        "POST app:80 HTTP/1.1",
    ] {
        let request =
            format!("{line}\r\nhost: app\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let out = raw(a.inbound(), request.as_bytes(), Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{line}: {out}");
    }
    assert_eq!(app.hits(), 0, "none reached the app");
    a.assert_metrics(&["attache_client_errors_total{result=\"bad_target\"} 3"]);
}

/// Issue 20, risks: a config file past 1 MiB (a wrong or run-away file) is refused with a
/// clear error, by `attache validate` and by a reload (the running config stays); a flag file
/// past 16 MiB is refused as an HTTP source's body is, and the flags already loaded stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_config_and_flag_files_are_refused() {
    let dir = TempDir::new();
    // Valid YAML, padded with a comment: only its size is wrong.
    let app = App::start("app").await;
    let ports = attache_tests::Ports::new();
    let config = attache_tests::sidecar_config(ports, app.addr, "");
    let padded = format!("{config}# {}\n", "x".repeat(2 * 1024 * 1024));
    let big = dir.write("big.yaml", &padded);
    let out = std::process::Command::new(attache_tests::attache_bin())
        .arg("validate")
        .arg("-c")
        .arg(&big)
        .output()
        .expect("run attache validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("larger than 1024 KiB"), "{stderr}");

    let flags = dir.write("flags.json", FLAGS);
    let a = Attache::run(
        ports,
        &format!(
            "{config}  flags:\n    sources: [ {{ file: '{}' }} ]\n    ofrep: null\n    deliver: {{ flags: [tier] }}\n",
            flags.display()
        ),
    );
    let tmp = a.config_path().with_extension("tmp");
    std::fs::write(&tmp, &padded).expect("write");
    std::fs::rename(&tmp, a.config_path()).expect("rename");
    let refused = attache_tests::eventually(10, async || {
        a.metric("attache_config_reloads_total{result=\"failure\"}") == Some(1.0)
    })
    .await;
    assert!(refused, "{}", a.log_text());
    let (_, body) = attache_tests::client::blocking_get(&a.admin_url("/config")).expect("/config");
    assert!(body.contains("larger than 1024 KiB"), "{body}");

    // A flag file of 17 MiB: a JSON document whose size alone is wrong.
    let huge = format!(
        "{{\"flags\": {{}}, \"padding\": \"{}\"}}",
        "x".repeat(17 * 1024 * 1024)
    );
    let tmp = flags.with_extension("tmp");
    std::fs::write(&tmp, huge).expect("write");
    std::fs::rename(&tmp, &flags).expect("rename");
    let flags_url = a.admin_url("/flags");
    let error = attache_tests::eventually(10, async || {
        let (_, body) = attache_tests::client::blocking_get(&flags_url).expect("/flags");
        body.contains("larger than 16 MiB")
    })
    .await;
    assert!(
        error,
        "{}",
        attache_tests::client::blocking_get(&flags_url)
            .expect("/flags")
            .1
    );
    let h = &echoed(
        &raw(
            a.inbound(),
            b"GET /x HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await,
    )["headers"];
    assert_eq!(
        h["x-flag-tier"], "basic",
        "the flags loaded before stay: {h}"
    );
}

/// Issue 20, risks: a flag source URL with a token in its query (userinfo is refused by
/// validation) shows it nowhere: not on `/config`, `/flags`, in the log or in a metric label; the label
/// (and the log's name) is the URL's scheme, host and path, stable when the token rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_source_token_shows_nowhere() {
    let app = App::start("app").await;
    let port = attache_tests::free_port();
    let a = Attache::sidecar(
        app.addr,
        &format!(
            "  flags:\n    ofrep: null\n    sources:\n      - {{ url: 'http://127.0.0.1:{port}/flags.json?v=2&access_token=tok-s3cret', optional: true, poll_interval: 300ms }}\n"
        ),
    );
    let metrics_ok = attache_tests::eventually(10, async || {
        a.metrics_text().contains(&format!(
            "attache_flag_source_valid{{source=\"http://127.0.0.1:{port}/flags.json\"}} 0"
        ))
    })
    .await;
    assert!(metrics_ok, "{}", a.metrics_text());
    let (_, flags) = attache_tests::client::blocking_get(&a.admin_url("/flags")).expect("/flags");
    let v: Value = serde_json::from_str(&flags).expect("json");
    let source = &v["sources"][0];
    assert_eq!(
        source["location"],
        format!("http://127.0.0.1:{port}/flags.json?v=2&access_token=REDACTED"),
        "{v}"
    );
    assert!(
        source["last_error"].is_string(),
        "the failure is shown: {v}"
    );
    let (_, config) =
        attache_tests::client::blocking_get(&a.admin_url("/config")).expect("/config");
    for (what, text) in [
        ("/flags", flags),
        ("/config", config),
        ("/metrics", a.metrics_text()),
        ("the log", a.log_text()),
    ] {
        assert!(!text.contains("s3cret"), "a credential in {what}: {text}");
    }
}
