//! Zero-trust authorization through the real binary, over real mutual TLS with a CA and SVIDs
//! the test makes (rcgen): decisions by peer set, default deny and its 403, deny over allow,
//! probes without a certificate, spoofed identity headers, one-segment wildcards, SVID rules
//! at the handshake, path normalization, gRPC denials, both dry runs, reloads on open
//! HTTP/1.1 and HTTP/2 connections, WebSocket revocation, `attache authz explain` against the
//! running proxy, the `authenticated` and `trust_domain` defaults across two trust domains,
//! and denials that cost nothing downstream.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use attache_tests::client::{Got, exchange};
use attache_tests::otlp::{Collector, Protocol, SpanKind};
use attache_tests::pki::{Ca, Leaf, TlsConn};
use attache_tests::{App, Attache, Ports, TempDir, attache_bin, eventually, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ATTACHE_ID: &str = "spiffe://test.local/ns/shop/sa/orders";
const WEB: &str = "spiffe://test.local/ns/web/sa/frontend";
const OPS: &str = "spiffe://test.local/ns/ops/sa/deployer";
const OPS_DEEPER: &str = "spiffe://test.local/ns/ops/sa/deployer/extra";
const PARTNER: &str = "spiffe://partner.example/ns/billing/sa/api";

/// The policy most tests run: a peer set, a short form, a probe rule, a wildcard, a deny.
const POLICY: &str = "  authz:
    default: deny
    peers:
      web: [spiffe://test.local/ns/web/sa/frontend]
    probe_paths: [/healthz]
    rules:
      - { name: web-orders, from: web, to: [/v1/orders, /v1/orders/*] }
      - { name: probes, from: any, to: { methods: [GET], paths: [/healthz] } }
      - { name: ops-admin, from: { ids: ['spiffe://test.local/ns/ops/sa/*'] }, to: { paths: [/admin/**] } }
      - { name: no-debug, action: deny, to: { paths: [/v1/orders/debug] } }
";

/// A CA (or two, for two trust domains), attache's own certificate, and the files.
struct Mesh {
    ca: Ca,
    /// Holds the files while the mesh lives.
    _dir: TempDir,
    tls: String,
}

impl Mesh {
    fn new() -> Mesh {
        Self::with_bundle(&[])
    }

    /// A mesh whose trust bundle also holds `others` (other trust domains' CAs).
    fn with_bundle(others: &[&Ca]) -> Mesh {
        let ca = Ca::new("test.local CA");
        let server = ca.issue("orders", &["localhost", "127.0.0.1"], Some(ATTACHE_ID));
        let dir = TempDir::new();
        let mut bundle = ca.pem.clone();
        for o in others {
            bundle.push_str(&o.pem);
        }
        let p = |f: std::path::PathBuf| f.display().to_string();
        let tls = format!(
            "{{ cert_file: '{}', key_file: '{}', client_ca_file: '{}', client_cert: optional }}",
            p(dir.write("tls.crt", &server.pem)),
            p(dir.write("tls.key", &server.key_pem)),
            p(dir.write("ca.pem", &bundle)),
        );
        Mesh { ca, _dir: dir, tls }
    }

    fn svid(&self, id: &str) -> Leaf {
        self.ca.issue_uris("client", &[id], false)
    }

    fn config(&self, ports: Ports, app: SocketAddr, authz: &str) -> String {
        format!(
            "apiVersion: attache.dev/v1
kind: Sidecar
metadata: {{ name: zt }}
spec:
  inbound:
    listen: 127.0.0.1:{}
    app: http://{app}
    tls: {}
  admin: {{ listen: 127.0.0.1:{} }}
{authz}",
            ports.inbound, self.tls, ports.admin
        )
    }

    fn start(&self, app: SocketAddr, authz: &str) -> (Attache, Ports) {
        let ports = Ports::new();
        (Attache::run(ports, &self.config(ports, app, authz)), ports)
    }

    /// A connection as `peer` (`None`: TLS without a certificate), offering `alpn`.
    async fn conn(&self, a: &Attache, peer: Option<&Leaf>, alpn: &[&str]) -> TlsConn {
        TlsConn::connect(a.inbound(), &self.ca.pem, "localhost", alpn, peer)
            .await
            .expect("TLS handshake")
    }

    /// One request as `peer` on a fresh connection.
    async fn call(&self, a: &Attache, peer: Option<&Leaf>, method: &str, path: &str) -> Got {
        self.conn(a, peer, &["http/1.1"])
            .await
            .request(method, path, &[], bytes::Bytes::new())
            .await
            .expect("a response")
    }
}

fn assert_denied(got: &Got) {
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.headers["content-type"], "application/problem+json");
    let body = got.json();
    assert_eq!(body["type"], "https://attache.dev/problems/forbidden");
    let id = body["request_id"].as_str().unwrap_or_default();
    assert_eq!(id.len(), 36, "a request id in {body}");
    let text = got.text();
    for secret in ["spiffe://", "web-orders", "no-debug", "ops-admin", "rule"] {
        assert!(!text.contains(secret), "{secret:?} leaked in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verified_peer_decides_and_nothing_else_can_claim_to_be_it() {
    let collector = Collector::start(Protocol::Http).await;
    let mesh = Mesh::new();
    let app = App::start("app").await;
    let telemetry = format!(
        "  telemetry:\n    otlp: {{ endpoint: '{}', timeout: 2s }}\n    batch: {{ scheduled_delay: 100ms }}\n",
        collector.endpoint()
    );
    let (a, _) = mesh.start(app.addr, &format!("{POLICY}{telemetry}"));
    let (web, ops) = (mesh.svid(WEB), mesh.svid(OPS));

    // Allowed by the peer set; the app sees the verified identity, and nothing else.
    let got = mesh.call(&a, Some(&web), "GET", "/v1/orders/7").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let xfcc = got.json()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(xfcc.contains(&format!("URI={WEB}")), "{xfcc}");
    assert_eq!(app.hits(), 1);

    // Default deny: a known peer on a path no rule gives it.
    let got = mesh.call(&a, Some(&web), "GET", "/v1/payments").await;
    assert_denied(&got);
    // Deny beats a matching allow.
    assert_denied(&mesh.call(&a, Some(&web), "GET", "/v1/orders/debug").await);
    assert_eq!(app.hits(), 1, "a denied request never reaches the app");

    // No certificate: unauthenticated; yet the probe rule answers.
    assert_denied(&mesh.call(&a, None, "GET", "/v1/orders").await);
    assert_eq!(mesh.call(&a, None, "GET", "/healthz").await.status, 200);
    assert_eq!(app.hits(), 2);

    // Identity headers from a client without a certificate change nothing, and never arrive.
    let mut anon = mesh.conn(&a, None, &["http/1.1"]).await;
    for (name, value) in [
        (
            "x-forwarded-client-cert",
            format!("By={ATTACHE_ID};URI={WEB}"),
        ),
        ("x-spiffe-id", WEB.to_owned()),
    ] {
        let got = anon
            .get("/v1/orders", &[(name, value.as_str())])
            .await
            .unwrap();
        assert_denied(&got);
    }
    let got = anon.get("/healthz", &[("x-spiffe-id", WEB)]).await.unwrap();
    assert_eq!(got.status, 200);
    assert!(
        got.json()["headers"]["x-spiffe-id"].is_null(),
        "{}",
        got.text()
    );
    assert_eq!(app.hits(), 3);

    // `*` stands for exactly one segment.
    let got = mesh.call(&a, Some(&ops), "GET", "/admin/users").await;
    assert_eq!(got.status, 200);
    let deeper = mesh.svid(OPS_DEEPER);
    assert_denied(&mesh.call(&a, Some(&deeper), "GET", "/admin/users").await);

    // Paths are judged, and reach the app, normalized.
    for raw in ["/v1/orders/../../admin", "/%61dmin", "//admin"] {
        assert_denied(&mesh.call(&a, Some(&web), "GET", raw).await);
        let got = mesh.call(&a, Some(&ops), "GET", raw).await;
        assert_eq!(got.status, 200, "{raw}: {}", got.text());
        assert_eq!(got.json()["path"], "/admin", "{raw}");
    }
    let got = mesh.call(&a, Some(&ops), "GET", "/admin%2Fusers").await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(
        got.json()["type"],
        "https://attache.dev/problems/path-refused"
    );
    let hits = app.hits();

    // Metrics carry rules and reasons, never a peer's ID.
    a.assert_metrics(&[
        "attache_authz_decisions_total{decision=\"allow\",rule=\"web-orders\",reason=\"allowed_by_rule\",authenticated=\"true\"} 1",
        "attache_authz_decisions_total{decision=\"deny\",rule=\"no-debug\",reason=\"denied_by_rule\",authenticated=\"true\"} 1",
        "attache_authz_decisions_total{decision=\"allow\",rule=\"probes\",reason=\"allowed_by_rule\",authenticated=\"false\"} 2",
        "attache_authz_decisions_total{decision=\"deny\",rule=\"\",reason=\"unauthenticated\",authenticated=\"false\"} 3",
        "attache_authz_paths_refused_total{reason=\"encoded_separator\"} 1",
    ]);
    let metrics = a.metrics_text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("attache_authz") && l.contains("spiffe")),
        "{metrics}"
    );
    assert_eq!(app.hits(), hits);

    // One log line per denial, naming the rule and the peer (rate-limited per rule).
    let log = a.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("request denied") && l.contains("no-debug"))
        .unwrap_or_else(|| panic!("no denial line:\n{log}"));
    assert!(
        line.contains(WEB) && line.contains("/v1/orders/debug"),
        "{line}"
    );

    // The SERVER span says what was decided, and by which rule.
    let spans = collector.wait_spans(10, 10).await;
    let denied = spans
        .iter()
        .find(|s| {
            s.kind() == SpanKind::Server
                && s.attr("attache.authz.rule").as_deref() == Some("no-debug")
        })
        .expect("the denied request's span");
    assert_eq!(
        denied.attr("attache.authz.decision").as_deref(),
        Some("deny")
    );
    assert_eq!(
        denied.attr("attache.authz.reason").as_deref(),
        Some("denied_by_rule")
    );
    assert_eq!(denied.attr("attache.peer.id").as_deref(), Some(WEB));
    assert!(spans.iter().any(|s| {
        s.kind() == SpanKind::Server
            && s.attr("attache.authz.reason").as_deref() == Some("unauthenticated")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_is_not_a_valid_svid_fails_the_handshake() {
    let mesh = Mesh::new();
    let app = App::start("app").await;
    let (a, _) = mesh.start(app.addr, POLICY);
    let bad = [
        (
            "two URI SANs",
            mesh.ca
                .issue_uris("two", &[WEB, "spiffe://test.local/ns/web/sa/other"], false),
        ),
        (
            "an upper-case trust domain",
            mesh.ca
                .issue_uris("upper", &["spiffe://Test.Local/ns/web/sa/frontend"], false),
        ),
        (
            "a `..` segment",
            mesh.ca
                .issue_uris("dots", &["spiffe://test.local/ns/web/../ops/sa/x"], false),
        ),
        ("a CA as leaf", mesh.ca.issue_uris("ca", &[WEB], true)),
        (
            "no SPIFFE ID at all",
            mesh.ca.issue_uris("plain", &[], false),
        ),
    ];
    for (what, leaf) in &bad {
        // Under TLS 1.3 the client learns of the refusal on its first read.
        let refused = match TlsConn::connect(
            a.inbound(),
            &mesh.ca.pem,
            "localhost",
            &["http/1.1"],
            Some(leaf),
        )
        .await
        {
            Err(_) => true,
            Ok(mut c) => c.get("/healthz", &[]).await.is_err(),
        };
        assert!(refused, "{what}: the handshake was accepted");
    }
    assert_eq!(app.hits(), 0);
    // A valid SVID passes.
    let got = mesh
        .call(&a, Some(&mesh.svid(WEB)), "GET", "/v1/orders")
        .await;
    assert_eq!(got.status, 200);
    a.assert_metrics(&[&format!(
        "attache_inbound_tls_handshake_failures_total{{reason=\"bad_certificate\"}} {}",
        bad.len()
    )]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_is_denied_with_status_7_in_http_200() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let config = attache_tests::sidecar_config(
        ports,
        app.addr,
        "  authz:\n    rules: [ { name: health, to: [/grpc.health.v1.Health/Check] } ]\n",
    );
    let a = Attache::run(ports, &config);
    let client = attache_tests::client::http2();
    let req = |path: &str| {
        http::Request::post(a.url(path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"\0\0\0\0\0",
            )))
            .unwrap()
    };
    let got = attache_tests::client::send(&client, req("/orders.v1.Orders/Create"))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["grpc-status"], "7");
    assert_eq!(got.headers["content-type"], "application/grpc");
    assert!(got.body.is_empty());
    assert_eq!(app.hits(), 0);
    let got = attache_tests::client::send(&client, req("/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    assert!(got.headers.get("grpc-status").is_none_or(|s| s == "0"));
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_pass_every_request_and_count_what_would_be_denied() {
    let mesh = Mesh::new();
    let app = App::start("app").await;
    let web = mesh.svid(WEB);
    // A rule in dry run: the freeze is reported, not enforced.
    let (a, ports) = mesh.start(
        app.addr,
        &format!(
            "{POLICY}      - {{ name: freeze-writes, action: deny, dry_run: true, to: {{ methods: [POST] }} }}\n"
        ),
    );
    let got = mesh.call(&a, Some(&web), "POST", "/v1/orders").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        mesh.call(&a, Some(&web), "GET", "/v1/orders").await.status,
        200
    );
    a.assert_metrics(&[
        "attache_authz_dry_run_mismatches_total{enforced=\"allow\",shadow=\"deny\"} 1",
        "attache_authz_dry_run_decisions_total{decision=\"deny\",rule=\"freeze-writes\",reason=\"denied_by_rule\",authenticated=\"true\"} 1",
        "attache_authz_dry_run_decisions_total{decision=\"allow\",rule=\"web-orders\",reason=\"allowed_by_rule\",authenticated=\"true\"} 1",
    ]);
    assert!(a.log_text().contains("request would be denied (dry run)"));

    // The whole section in dry run: nothing is refused; each would-be denial is a mismatch.
    a.reconfigure(&mesh.config(
        ports,
        app.addr,
        &POLICY.replace("default: deny", "default: deny\n    mode: dry_run"),
    ))
    .await;
    let before = app.hits();
    assert_eq!(mesh.call(&a, None, "GET", "/v1/payments").await.status, 200);
    assert_eq!(
        mesh.call(&a, Some(&web), "GET", "/v1/orders/debug")
            .await
            .status,
        200
    );
    assert_eq!(
        mesh.call(&a, Some(&web), "GET", "/v1/orders").await.status,
        200
    );
    assert_eq!(app.hits(), before + 3);
    a.assert_metrics(&[
        "attache_authz_dry_run_mismatches_total{enforced=\"allow\",shadow=\"deny\"} 3",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_open_connections_and_a_bad_policy_changes_nothing() {
    let mesh = Mesh::new();
    let app = App::start("app").await;
    let (a, ports) = mesh.start(app.addr, POLICY);
    let web = mesh.svid(WEB);
    let mut h1 = mesh.conn(&a, Some(&web), &["http/1.1"]).await;
    let mut h2 = mesh.conn(&a, Some(&web), &["h2"]).await;
    assert_eq!(h2.alpn.as_deref(), Some("h2"));
    for c in [&mut h1, &mut h2] {
        assert_eq!(c.get("/v1/orders/1", &[]).await.unwrap().status, 200);
    }
    // The web peers lose their rule: the next request on each open connection is denied.
    a.reconfigure(&mesh.config(
        ports,
        app.addr,
        &POLICY.replace(
            "web-orders, from: web",
            "web-orders, from: { ids: [spiffe://test.local/ns/other/sa/x] }",
        ),
    ))
    .await;
    for c in [&mut h1, &mut h2] {
        assert_denied(&c.get("/v1/orders/1", &[]).await.unwrap());
    }
    // A policy that does not compile is refused; the running one keeps deciding.
    let failures = "attache_config_reloads_total{result=\"failure\"}";
    for bad in [
        POLICY.replace("sa/*'", "sa/dep*'"),
        POLICY.replace("[/admin/**]", "[/admin/**/x]"),
        POLICY.replace("from: web", "from: webb"),
    ] {
        let before = a.metric(failures).unwrap_or(0.0);
        attache_tests::pki::replace(&a.config_path(), &mesh.config(ports, app.addr, &bad));
        assert!(
            eventually(10, async || a.metric(failures).unwrap_or(0.0) > before).await,
            "the bad policy was not refused"
        );
    }
    let log = a.log_text();
    assert!(log.contains("spec.authz.rules[2].from.ids[0]"), "{log}");
    assert!(log.contains("spec.authz.rules[2].to.paths[0]"), "{log}");
    assert!(log.contains("spec.authz.rules[0].from"), "{log}");
    assert_denied(&h1.get("/v1/orders/1", &[]).await.unwrap());
    let ops = mesh.svid(OPS);
    assert_eq!(mesh.call(&a, Some(&ops), "GET", "/admin").await.status, 200);
}

/// Opens a WebSocket through attache and checks the echo; the stream stays open.
async fn websocket(addr: SocketAddr) -> tokio::net::TcpStream {
    let (mut s, head) = attache_tests::client::websocket(addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    within(10, s.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"ping");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_the_reloaded_policy_no_longer_allows_is_closed() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let policy = |paths: &str| {
        attache_tests::sidecar_config(
            ports,
            app.addr,
            &format!("  authz:\n    rules: [ {{ name: sockets, to: [{paths}] }} ]\n"),
        )
    };
    let a = Attache::run(ports, &policy("/ws, /other"));
    let mut ws = websocket(a.inbound()).await;
    // A reload that still allows it leaves it open.
    a.reconfigure(&policy("/ws")).await;
    ws.write_all(b"pong").await.unwrap();
    let mut back = [0u8; 4];
    within(10, ws.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"pong");
    // One that does not closes it within 2 s.
    a.reconfigure(&policy("/other")).await;
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), ws.read(&mut buf))
        .await
        .expect("the tunnel was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the tunnel still delivers");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    a.assert_metrics(&["attache_authz_tunnels_closed_total 1"]);
    // And a new one is refused.
    let mut s = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    within(10, s.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 403");
}

fn explain(config: &std::path::Path, peer: &str, method: &str, path: &str) -> (i32, String) {
    let out = Command::new(attache_bin())
        .args(["authz", "explain", "-c"])
        .arg(config)
        .args(["--peer", peer, "--method", method, "--path", path])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_running_proxy() {
    let mesh = Mesh::new();
    let app = App::start("app").await;
    let (a, _) = mesh.start(app.addr, POLICY);
    let peers: Vec<(&str, Option<Leaf>)> = vec![
        (WEB, Some(mesh.svid(WEB))),
        (OPS, Some(mesh.svid(OPS))),
        (OPS_DEEPER, Some(mesh.svid(OPS_DEEPER))),
        ("tls", None),
    ];
    let methods = ["GET", "POST"];
    let paths = [
        "/v1/orders",
        "/v1/orders/7",
        "/v1/orders/debug",
        "/healthz",
        "/admin/x/y",
        "/v1/orders/../../admin",
    ];
    let mut cases = 0;
    for (i, (name, leaf)) in peers.iter().enumerate() {
        for (j, method) in methods.iter().enumerate() {
            for (k, path) in paths.iter().enumerate() {
                // A spread of the 48 combinations, each peer, method and path among them.
                if (i + j + k) % 2 == 1 {
                    continue;
                }
                let got = mesh.call(&a, leaf.as_ref(), method, path).await;
                let (code, text) = explain(&a.config_path(), name, method, path);
                assert_eq!(
                    (got.status != 403) as i32,
                    (code == 0) as i32,
                    "{name} {method} {path}: proxy {} explain {code}\n{text}",
                    got.status
                );
                cases += 1;
            }
        }
    }
    assert!(cases >= 20, "{cases}");
    // It says why, rule by rule.
    let (code, text) = explain(&a.config_path(), WEB, "GET", "/v1/orders/debug");
    assert_eq!(code, 1);
    assert!(
        text.contains("decision: deny (denied_by_rule, by rule no-debug)"),
        "{text}"
    );
    assert!(
        text.contains("web-orders") && text.contains("MATCH"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_and_trust_domain_defaults_across_two_trust_domains() {
    let partner_ca = Ca::new("partner.example CA");
    let mesh = Mesh::with_bundle(&[&partner_ca]);
    let app = App::start("app").await;
    let ours = mesh.svid(WEB);
    let theirs = partner_ca.issue_uris("partner", &[PARTNER], false);
    let (a, ports) = mesh.start(app.addr, "  authz: { default: authenticated }\n");
    assert_eq!(mesh.call(&a, Some(&ours), "GET", "/x").await.status, 200);
    assert_eq!(mesh.call(&a, Some(&theirs), "GET", "/x").await.status, 200);
    assert_denied(&mesh.call(&a, None, "GET", "/x").await);
    // `trust_domain`: ours only, read from attache's own certificate.
    a.reconfigure(&mesh.config(ports, app.addr, "  authz: { default: trust_domain }\n"))
        .await;
    assert_eq!(mesh.call(&a, Some(&ours), "GET", "/x").await.status, 200);
    assert_denied(&mesh.call(&a, Some(&theirs), "GET", "/x").await);
    assert_denied(&mesh.call(&a, None, "GET", "/x").await);
    a.assert_metrics(&[
        "attache_authz_decisions_total{decision=\"deny\",rule=\"\",reason=\"no_rule_matched\",authenticated=\"true\"} 1",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_names_its_trust_domain_vouches_for_that_domain_only() {
    // The partner's CA says which domain it serves (as SPIRE's do); ours names none.
    let partner_ca = Ca::with_uri("partner.example CA", Some("spiffe://partner.example"));
    let mesh = Mesh::with_bundle(&[&partner_ca]);
    let app = App::start("app").await;
    let (a, _) = mesh.start(app.addr, "  authz: { default: authenticated }\n");
    let theirs = partner_ca.issue_uris("partner", &[PARTNER], false);
    assert_eq!(mesh.call(&a, Some(&theirs), "GET", "/x").await.status, 200);
    assert_eq!(
        mesh.call(&a, Some(&mesh.svid(WEB)), "GET", "/x")
            .await
            .status,
        200
    );
    // The partner's CA minting one of our identities: refused at the handshake.
    let forged = partner_ca.issue_uris("forged", &[WEB], false);
    let refused = match TlsConn::connect(
        a.inbound(),
        &mesh.ca.pem,
        "localhost",
        &["http/1.1"],
        Some(&forged),
    )
    .await
    {
        Err(_) => true,
        Ok(mut c) => c.get("/x", &[]).await.is_err(),
    };
    assert!(refused, "a partner CA vouched for our trust domain");
    a.assert_metrics(&[
        "attache_inbound_tls_handshake_failures_total{reason=\"unknown_issuer\"} 1",
    ]);
    assert_eq!(app.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_denials_touch_no_quota_no_store_and_no_restoration_entry() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let config = attache_tests::sidecar_config(
        ports,
        app.addr,
        "  idempotency: { store: memory }
  rate_limits:
    limits: [ { name: all, rate: 1/m, burst: 5 } ]
  authz:
    rules: [ { name: orders, to: [/orders] } ]
",
    );
    let a = Attache::run(ports, &config);
    let client = attache_tests::client::http1();
    for i in 0..1000 {
        let req = http::Request::post(a.url("/admin"))
            .header("idempotency-key", format!("k{i}"))
            .header(
                "traceparent",
                format!("00-{:032x}-00f067aa0ba902b7-01", i + 1),
            )
            .header("baggage", "tenant=acme")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        let got = attache_tests::client::send(&client, req).await.unwrap();
        assert_eq!(got.status, 403);
    }
    assert_eq!(app.hits(), 0);
    assert_eq!(a.metric("attache_trace_restore_entries"), Some(0.0));
    assert_eq!(
        a.metric("attache_idempotency_outcomes_total{route=\"default\",outcome=\"completed\"}"),
        None
    );
    a.assert_metrics(&[
        "attache_authz_decisions_total{decision=\"deny\",rule=\"\",reason=\"unauthenticated\",authenticated=\"false\"} 1000",
        "attache_ratelimit_decisions_total{limit=\"all\",decision=\"allowed\"} 0",
        "attache_ratelimit_decisions_total{limit=\"all\",decision=\"limited\"} 0",
    ]);
    // The whole burst is still there for allowed requests, each claiming its key once.
    for i in 0..5 {
        let got = exchange(
            "POST",
            &a.url("/orders"),
            &[("idempotency-key", &format!("o{i}"))],
            "{}",
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(
        exchange("POST", &a.url("/orders"), &[], "{}").await.status,
        429
    );
    a.assert_metrics(&[
        "attache_ratelimit_decisions_total{limit=\"all\",decision=\"allowed\"} 5",
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"completed\"} 5",
    ]);
    assert!(a.metric("attache_trace_restore_entries").unwrap_or(0.0) >= 1.0);
}

#[test]
fn validate_names_the_field_and_warns_about_probes() {
    let dir = TempDir::new();
    let base = "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: { app: http://127.0.0.1:8080 }\n";
    let bad = dir.write(
        "bad.yaml",
        &format!(
            "{base}  authz:
    peers: {{ web: [spiffe://test.local/ns/web/sa/frontend] }}
    rules:
      - {{ name: a, from: 'spiffe://test.local/ns/*x/sa', to: [/a] }}
      - {{ name: b, from: nobody, to: {{ paths: ['/b/**/c'], methods: [get] }} }}
      - {{ name: a, from: {{ idz: [x] }} }}
"
        ),
    );
    let out = Command::new(attache_bin())
        .args(["validate", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        "spec.authz.rules[1].from: \"nobody\" is not `any`, `authenticated`, a SPIFFE ID or a peer set (defined: web)",
        "spec.authz.rules[1].to.methods[0]: \"get\" is not a method",
        "spec.authz.rules[2].from: unknown field `idz`; did you mean `ids`?",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // The grammar errors come once the shape is right.
    let grammar = dir.write(
        "grammar.yaml",
        &format!(
            "{base}  authz:
    rules:
      - {{ name: a, from: 'spiffe://test.local/ns/*x/sa', to: [/a] }}
      - {{ name: b, to: {{ paths: ['/b/**/c'] }} }}
"
        ),
    );
    let out = Command::new(attache_bin())
        .args(["validate", "-c"])
        .arg(&grammar)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("spec.authz.rules[0].from: "), "{err}");
    assert!(err.contains("`*` stands for a whole segment"), "{err}");
    assert!(err.contains("spec.authz.rules[1].to.paths[0]: "), "{err}");
    assert!(err.contains("at line"), "{err}");

    // Valid, but the probe path is denied: a warning, exit 0.
    let probes = dir.write(
        "probes.yaml",
        &format!(
            "{base}  authz:\n    probe_paths: [/healthz]\n    rules: [ {{ name: web, from: authenticated, to: [/v1/**] }} ]\n  context:\n    push: [ {{ context: shop, queue: orders, path: /events/orders }} ]\n"
        ),
    );
    let out = Command::new(attache_bin())
        .args(["validate", "-c"])
        .arg(&probes)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("spec.authz.probe_paths[0]: no rule allows GET /healthz"),
        "{err}"
    );
    assert!(
        err.contains("spec.context.push[0].path: no rule allows POST /events/orders"),
        "{err}"
    );

    // A Kubernetes manifest: its ConfigMap's config is checked against its pods' probes.
    let manifest = dir.write(
        "manifest.yaml",
        "apiVersion: v1
kind: ConfigMap
metadata: { name: checkout-attache }
data:
  config.yaml: |
    apiVersion: attache.dev/v1
    kind: Sidecar
    spec:
      inbound: { app: http://127.0.0.1:8080 }
      authz:
        rules: [ { name: live, from: any, to: { methods: [GET], paths: [/live] } } ]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: checkout }
spec:
  template:
    spec:
      containers:
        - name: app
          image: checkout
          readinessProbe: { httpGet: { path: /ready, port: 8080 } }
          livenessProbe: { httpGet: { path: /live, port: 8080 } }
",
    );
    let out = Command::new(attache_bin())
        .args(["validate", "-c"])
        .arg(&manifest)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("ConfigMap checkout-attache config.yaml: valid")
    );
    assert!(
        err.contains(
            "Deployment checkout, container app, readinessProbe: no rule allows GET /ready"
        ),
        "{err}"
    );
    assert!(!err.contains("GET /live"), "{err}");

    // The shipped manifests and examples validate without a warning.
    let mut shipped = Vec::new();
    for dir in ["deploy/kubernetes", "deploy/examples"] {
        for e in std::fs::read_dir(format!("{}/../{dir}", env!("CARGO_MANIFEST_DIR"))).unwrap() {
            shipped.push(e.unwrap().path());
        }
    }
    let out = Command::new(attache_bin())
        .args(["validate", "-c"])
        .args(&shipped)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_authorization_no_client_can_claim_an_identity_to_the_app_either() {
    let app = App::start("app").await;
    for mode in ["append", "replace", "off"] {
        let ports = Ports::new();
        let config = attache_tests::sidecar_config(ports, app.addr, "").replace(
            "    app: http://",
            &format!("    forwarded_headers: {mode}\n    app: http://"),
        );
        let a = Attache::run(ports, &config);
        let got = exchange(
            "GET",
            &a.url("/echo"),
            &[
                ("x-spiffe-id", WEB),
                (
                    "x-forwarded-client-cert",
                    "URI=spiffe://test.local/ns/ops/sa/x",
                ),
                ("x-kept", "yes"),
            ],
            "",
        )
        .await;
        let headers = &got.json()["headers"];
        assert!(headers["x-spiffe-id"].is_null(), "{mode}: {headers}");
        assert!(
            headers["x-forwarded-client-cert"].is_null(),
            "{mode}: {headers}"
        );
        assert_eq!(headers["x-kept"], "yes", "{mode}");
    }
}
