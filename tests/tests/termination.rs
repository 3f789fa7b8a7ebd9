//! TLS termination on the inbound listener, end to end: the real binary with certificates the
//! test makes up (rcgen), HTTP/1.1 and HTTP/2 chosen by ALPN, mutual TLS with the client's
//! identity handed to the app in `X-Forwarded-Client-Cert` (a client's own removed), a
//! certificate renewed on disk while connections stay open, and two attaches speaking mutual
//! TLS to each other.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use attache_tests::app::App;
use attache_tests::client::exchange;
use attache_tests::pki::{Ca, Leaf, TlsConn, replace, wait_for_certificate};
use attache_tests::{Attache, Ports, TempDir};

const SERVER_ID: &str = "spiffe://test.local/ns/shop/sa/payments";
const CLIENT_ID: &str = "spiffe://test.local/ns/shop/sa/orders";

/// A sidecar in front of `app` whose inbound listener speaks TLS with `tls` (flow YAML).
fn tls_sidecar(app: SocketAddr, tls: &str) -> Attache {
    tls_sidecar_with(app, tls, "")
}

/// [`tls_sidecar`] with `extra` under `spec:`.
fn tls_sidecar_with(app: SocketAddr, tls: &str, extra: &str) -> Attache {
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound:
    listen: 127.0.0.1:{inbound}
    app: http://{app}
    tls: {tls}
  admin: {{ listen: 127.0.0.1:{admin} }}
{extra}",
        inbound = ports.inbound,
        admin = ports.admin
    );
    Attache::run(ports, &config)
}

fn files(dir: &TempDir, leaf: &Leaf, ca: &Ca) -> (String, String, String) {
    let p = |f: &Path| f.display().to_string();
    (
        p(&dir.write("tls.crt", &leaf.pem)),
        p(&dir.write("tls.key", &leaf.key_pem)),
        p(&dir.write("ca.pem", &ca.pem)),
    )
}

fn header(got: &attache_tests::client::Got, name: &str) -> Option<String> {
    got.json()["headers"][name].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_served_over_http1_and_http2_by_alpn() {
    let ca = Ca::new("termination CA");
    let server = ca.issue("payments", &["localhost", "127.0.0.1"], Some(SERVER_ID));
    let dir = TempDir::new();
    let (cert, key, _) = files(&dir, &server, &ca);
    let app = App::start("app").await;
    let a = tls_sidecar(
        app.addr,
        &format!("{{ cert_file: '{cert}', key_file: '{key}' }}"),
    );

    // HTTP/1.1: the app learns the client came over HTTPS; a client's own
    // X-Forwarded-Client-Cert never reaches it (there is no verified certificate to tell of).
    let mut h1 = TlsConn::connect(a.inbound(), &ca.pem, "localhost", &["http/1.1"], None)
        .await
        .expect("TLS handshake");
    assert_eq!(h1.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(h1.server_cert, server.der);
    let got = h1
        .get(
            "/x",
            &[("x-forwarded-client-cert", "URI=spiffe://evil/admin")],
        )
        .await
        .expect("GET over TLS");
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(header(&got, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(header(&got, "x-forwarded-client-cert"), None);
    // The connection is kept alive.
    let again = h1.get("/y", &[]).await.expect("second request");
    assert_eq!(again.status, 200);

    // HTTP/2 when the client offers it first.
    let mut h2 = TlsConn::connect(a.inbound(), &ca.pem, "localhost", &["h2", "http/1.1"], None)
        .await
        .expect("TLS handshake");
    assert_eq!(h2.alpn.as_deref(), Some("h2"));
    let got = h2.get("/z", &[]).await.expect("GET over h2");
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["path"], "/z");

    // Cleartext on the TLS port: no answer from the app, the failed handshake counted.
    let hits = app.hits();
    let raw = attache_tests::client::raw(
        a.inbound(),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!raw.contains("200"), "{raw}");
    assert_eq!(app.hits(), hits);
    a.assert_metrics(&["attache_inbound_tls_handshake_failures_total{reason=\"protocol\"} 1"]);
    let expiry = a
        .metric("attache_inbound_tls_certificate_expiry_timestamp_seconds")
        .expect("the expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(expiry > now, "{expiry} <= {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_names_the_client_to_the_app_and_refuses_strangers() {
    let ca = Ca::new("mesh CA");
    let server = ca.issue("payments", &["localhost"], Some(SERVER_ID));
    let client = ca.issue("orders", &["orders.shop"], Some(CLIENT_ID));
    let stranger = Ca::new("another CA").issue("orders", &["orders.shop"], Some(CLIENT_ID));
    let dir = TempDir::new();
    let (cert, key, client_ca) = files(&dir, &server, &ca);
    let app = App::start("app").await;
    let a = tls_sidecar(
        app.addr,
        &format!("{{ cert_file: '{cert}', key_file: '{key}', client_ca_file: '{client_ca}' }}"),
    );

    let mut conn = TlsConn::connect(a.inbound(), &ca.pem, "localhost", &["h2"], Some(&client))
        .await
        .expect("mutual TLS handshake");
    let got = conn
        .get(
            "/x",
            &[("x-forwarded-client-cert", "URI=spiffe://evil/admin")],
        )
        .await
        .expect("GET");
    assert_eq!(got.status, 200, "{}", got.text());
    let xfcc = header(&got, "x-forwarded-client-cert").expect("XFCC set");
    let hash = sha256_hex(&client.der);
    assert_eq!(
        xfcc,
        format!("By={SERVER_ID};Hash={hash};Subject=\"CN=orders\";URI={CLIENT_ID};DNS=orders.shop")
    );

    // No certificate, or one from a CA attache was not told to trust: the handshake fails (in
    // TLS 1.3 the client learns it at its first read), and nothing reaches the app.
    let hits = app.hits();
    for (who, leaf) in [("no certificate", None), ("unknown CA", Some(&stranger))] {
        let refused =
            match TlsConn::connect(a.inbound(), &ca.pem, "localhost", &["http/1.1"], leaf).await {
                Ok(mut c) => c.get("/x", &[]).await.map(|g| g.status),
                Err(e) => Err(e),
            };
        assert!(refused.is_err(), "{who}: {refused:?}");
    }
    assert_eq!(app.hits(), hits);
    a.assert_metrics(&[
        "attache_inbound_tls_handshake_failures_total{reason=\"no_certificate\"} 1",
        "attache_inbound_tls_handshake_failures_total{reason=\"unknown_issuer\"} 1",
    ]);

    // `client_cert: optional`: a client without one is served, and the app is told nothing.
    let b = tls_sidecar(
        app.addr,
        &format!(
            "{{ cert_file: '{cert}', key_file: '{key}', client_ca_file: '{client_ca}', \
             client_cert: optional }}"
        ),
    );
    let mut anon = TlsConn::connect(b.inbound(), &ca.pem, "localhost", &["http/1.1"], None)
        .await
        .expect("handshake without a client certificate");
    let got = anon
        .get(
            "/x",
            &[("x-forwarded-client-cert", "URI=spiffe://evil/admin")],
        )
        .await
        .expect("GET");
    assert_eq!(got.status, 200);
    assert_eq!(header(&got, "x-forwarded-client-cert"), None);
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_reaches_new_connections_and_open_ones_carry_on() {
    let ca = Ca::new("rotating CA");
    let first = ca.issue("payments", &["localhost"], None);
    let dir = TempDir::new();
    let (cert, key, _) = files(&dir, &first, &ca);
    let app = App::start("app").await;
    let a = tls_sidecar(
        app.addr,
        &format!("{{ cert_file: '{cert}', key_file: '{key}' }}"),
    );
    let mut open = TlsConn::connect(a.inbound(), &ca.pem, "localhost", &["http/1.1"], None)
        .await
        .expect("handshake");
    assert_eq!(open.server_cert, first.der);
    assert_eq!(open.get("/before", &[]).await.expect("GET").status, 200);

    // A new key and certificate: new connections get the new one once it is read.
    let renewed = ca.issue("payments", &["localhost"], None);
    replace(Path::new(&key), &renewed.key_pem);
    replace(Path::new(&cert), &renewed.pem);
    wait_for_certificate(a.inbound(), &ca.pem, &renewed.der).await;
    assert!(
        a.metric("attache_inbound_tls_reloads_total{result=\"success\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    // The connection opened under the first certificate was not dropped.
    assert_eq!(open.get("/after", &[]).await.expect("GET").status, 200);

    // A file that does not load is counted and changes nothing.
    replace(
        Path::new(&cert),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while a
        .metric("attache_inbound_tls_reloads_total{result=\"failure\"}")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "the broken file was never read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = TlsConn::connect(a.inbound(), &ca.pem, "localhost", &["http/1.1"], None)
        .await
        .expect("handshake after a broken renewal");
    assert_eq!(c.server_cert, renewed.der);
    assert_eq!(c.get("/still", &[]).await.expect("GET").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_attaches_speak_mutual_tls_and_the_callee_app_learns_the_caller() {
    let ca = Ca::new("mesh CA");
    let dir = TempDir::new();
    let server = ca.issue("payments", &["127.0.0.1"], Some(SERVER_ID));
    let caller = ca.issue("orders", &[], Some(CLIENT_ID));
    let (cert, key, ca_file) = files(&dir, &server, &ca);
    let caller_cert = dir.write("caller.crt", &caller.pem).display().to_string();
    let caller_key = dir
        .write("caller.key", &caller.key_pem)
        .display()
        .to_string();
    let app = App::start("payments").await;
    let callee = tls_sidecar(
        app.addr,
        &format!("{{ cert_file: '{cert}', key_file: '{key}', client_ca_file: '{ca_file}' }}"),
    );

    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ {{ listen: '127.0.0.1:{out}', upstream: payments }} ]
  upstreams:
    payments:
      endpoints: ['https://127.0.0.1:{port}']
      tls: {{ ca_file: '{ca_file}', client_cert_file: '{caller_cert}', client_key_file: '{caller_key}' }}
  admin: {{ listen: 127.0.0.1:{admin} }}
",
        out = ports.outbound,
        port = callee.inbound().port(),
        admin = ports.admin
    );
    let _caller = Attache::run(ports, &config);
    let got = exchange(
        "GET",
        &format!("http://127.0.0.1:{}/pay", ports.outbound),
        &[("x-forwarded-client-cert", "URI=spiffe://evil/admin")],
        "",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let xfcc = header(&got, "x-forwarded-client-cert").expect("XFCC set by the callee");
    assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
    assert!(
        xfcc.ends_with(&format!(";Subject=\"CN=orders\";URI={CLIENT_ID}")),
        "{xfcc}"
    );
    assert_eq!(header(&got, "x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_span_says_https_and_names_the_verified_client() {
    use attache_tests::otlp::{Collector, Protocol, SpanKind};
    let collector = Collector::start(Protocol::Http).await;
    let ca = Ca::new("span CA");
    let server = ca.issue("payments", &["localhost"], Some(SERVER_ID));
    let client = ca.issue("orders", &[], Some(CLIENT_ID));
    let dir = TempDir::new();
    let (cert, key, client_ca) = files(&dir, &server, &ca);
    let app = App::start("app").await;
    let a = tls_sidecar_with(
        app.addr,
        &format!("{{ cert_file: '{cert}', key_file: '{key}', client_ca_file: '{client_ca}' }}"),
        &format!(
            "  telemetry:
    otlp: {{ endpoint: '{}', protocol: http/protobuf }}
    batch: {{ scheduled_delay: 100ms }}
",
            collector.endpoint()
        ),
    );
    let mut conn = TlsConn::connect(
        a.inbound(),
        &ca.pem,
        "localhost",
        &["http/1.1"],
        Some(&client),
    )
    .await
    .expect("mutual TLS");
    assert_eq!(conn.get("/x", &[]).await.expect("GET").status, 200);
    let spans = collector.wait_spans(1, 10).await;
    let span = spans
        .iter()
        .find(|s| s.kind() == SpanKind::Server)
        .expect("a SERVER span");
    assert_eq!(span.attr("url.scheme").as_deref(), Some("https"));
    assert_eq!(span.attr("tls.protocol.version").as_deref(), Some("1.3"));
    assert_eq!(
        span.attr("tls.client.subject").as_deref(),
        Some("CN=orders")
    );
    assert_eq!(
        span.attr("attache.client.spiffe_id").as_deref(),
        Some(CLIENT_ID)
    );
}

/// A limit keyed by `peer_identity` counts per verified SPIFFE ID: each workload has its own
/// budget, and what a client writes in `x-forwarded-client-cert` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_keyed_by_peer_identity_counts_per_verified_workload() {
    let ca = Ca::new("termination CA");
    let server = ca.issue("payments", &["localhost", "127.0.0.1"], Some(SERVER_ID));
    let orders = ca.issue("orders", &[], Some(CLIENT_ID));
    let carts = ca.issue("carts", &[], Some("spiffe://test.local/ns/shop/sa/carts"));
    let dir = TempDir::new();
    let (cert, key, client_ca) = files(&dir, &server, &ca);
    let app = App::start("app").await;
    let a = tls_sidecar_with(
        app.addr,
        &format!("{{ cert_file: '{cert}', key_file: '{key}', client_ca_file: '{client_ca}' }}"),
        "  rate_limits:
    limits: [ { name: per-workload, rate: 1/m, burst: 2, key: peer_identity } ]
",
    );
    let mut statuses = Vec::new();
    for (leaf, spoof) in [
        (&orders, "URI=spiffe://test.local/ns/shop/sa/a"),
        (&orders, "URI=spiffe://test.local/ns/shop/sa/b"),
        (&orders, "URI=spiffe://test.local/ns/shop/sa/c"),
        (&carts, ""),
        (&carts, ""),
        (&carts, ""),
    ] {
        // A new connection each time: the budget is the workload's, not the connection's.
        let mut conn = TlsConn::connect(a.inbound(), &ca.pem, "localhost", &["h2"], Some(leaf))
            .await
            .expect("mutual TLS handshake");
        let got = conn
            .get("/", &[("x-forwarded-client-cert", spoof)])
            .await
            .expect("GET");
        statuses.push(got.status);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    assert_eq!(app.hits(), 4);
}
