//! TLS origination to `https://` upstreams, end to end: the real binary, an upstream that
//! speaks TLS with a certificate signed by a CA the test makes up (rcgen), and the three ways
//! a handshake fails.

use std::net::SocketAddr;
use std::sync::Arc;

use attache_tests::client::exchange;
use attache_tests::pki::{Ca, Leaf};
use attache_tests::{Attache, Ports, TempDir};
use tokio_rustls::rustls;

/// A CA, and a leaf for 127.0.0.1 and localhost signed by it.
struct Pki {
    ca_pem: String,
    leaf: Leaf,
}

fn pki(name: &str) -> Pki {
    let ca = Ca::new(name);
    let leaf = ca.issue("server", &["127.0.0.1", "localhost"], None);
    Pki {
        ca_pem: ca.pem,
        leaf,
    }
}

async fn https_upstream(pki: &Pki) -> SocketAddr {
    attache_tests::pki::https_server(&pki.leaf).await
}

/// An attache with an outbound port to `url`, with `tls` (flow YAML) for the upstream.
fn ambassador(url: &str, tls: &str) -> (Attache, Ports) {
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ {{ listen: '127.0.0.1:{out}', upstream: secure }} ]
  upstreams:
    secure:
      endpoints: ['{url}']
      tls: {tls}
  admin: {{ listen: 127.0.0.1:{admin} }}
",
        out = ports.outbound,
        admin = ports.admin
    );
    (Attache::run(ports, &config), ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_and_each_refusal_names_its_reason() {
    let pki = pki("attache test CA");
    let upstream = https_upstream(&pki).await;
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let other = dir.write("other-ca.pem", &self::pki("another CA").ca_pem);
    let port = upstream.port();

    // Trusted CA, the right name: the call goes through TLS (ALPN http/1.1).
    let (a, ports) = ambassador(
        &format!("https://localhost:{port}"),
        &format!("{{ ca_file: '{}' }}", ca.display()),
    );
    let url = format!("http://127.0.0.1:{}/x", ports.outbound);
    let got = exchange("GET", &url, &[], "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "tls ok http/1.1");

    // The name verified is not in the certificate: 502, the reason says so, counted as tls.
    let (b, ports) = ambassador(
        &format!("https://localhost:{port}"),
        &format!(
            "{{ ca_file: '{}', server_name: payments.example }}",
            ca.display()
        ),
    );
    let got = exchange(
        "GET",
        &format!("http://127.0.0.1:{}/x", ports.outbound),
        &[],
        "",
    )
    .await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(
        got.text().contains("TLS handshake failed") && got.text().contains("not valid for name"),
        "{}",
        got.text()
    );
    b.assert_metrics(&[
        "attache_upstream_errors_total{direction=\"outbound\",upstream=\"secure\",kind=\"tls\"} 1",
        "attache_upstream_tls_failures_total{upstream=\"secure\",reason=\"name_mismatch\"} 1",
    ]);

    // A certificate from a CA attache was not told to trust: 502, unknown issuer.
    let (c, ports) = ambassador(
        &format!("https://localhost:{port}"),
        &format!("{{ ca_file: '{}' }}", other.display()),
    );
    let got = exchange(
        "GET",
        &format!("http://127.0.0.1:{}/x", ports.outbound),
        &[],
        "",
    )
    .await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(
        got.text().contains("TLS handshake failed") && got.text().contains("UnknownIssuer"),
        "{}",
        got.text()
    );
    c.assert_metrics(&[
        "attache_upstream_tls_failures_total{upstream=\"secure\",reason=\"unknown_issuer\"} 1",
    ]);

    // The refusals changed nothing for the trusted ambassador.
    let got = exchange("GET", &url, &[], "").await;
    assert_eq!(got.status, 200);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_over_http_and_grpc() {
    use attache_tests::app::App;
    use attache_tests::otlp::{Collector, Protocol};

    let pki = pki("collector CA");
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", &pki.ca_pem);
    for protocol in [Protocol::Http, Protocol::Grpc] {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.leaf.der.clone()], pki.leaf.key.clone_key())
        .unwrap();
        config.alpn_protocols = match protocol {
            Protocol::Grpc => vec![b"h2".to_vec()],
            Protocol::Http => vec![b"http/1.1".to_vec()],
        };
        let collector =
            Collector::start_tls(protocol, tokio_rustls::TlsAcceptor::from(Arc::new(config))).await;
        assert!(collector.endpoint().starts_with("https://"));
        let app = App::start("app").await;
        let ports = Ports::new();
        let wire = match protocol {
            Protocol::Http => "http/protobuf",
            Protocol::Grpc => "grpc",
        };
        let extra = format!(
            "  telemetry:
    otlp: {{ endpoint: '{}', protocol: {wire}, timeout: 2s }}
    batch: {{ scheduled_delay: 100ms, max_export_batch_size: 1 }}
",
            collector.endpoint()
        );
        // The collector's CA is trusted the way a pod trusts one: SSL_CERT_FILE.
        let ca_path = ca.display().to_string();
        let a = Attache::run_with_env(
            ports,
            &attache_tests::sidecar_config(ports, app.addr, &extra),
            &[("SSL_CERT_FILE", ca_path.as_str())],
        );
        let got = exchange("GET", &a.url("/x"), &[], "").await;
        assert_eq!(got.status, 200);
        let spans = collector.wait_spans(1, 10).await;
        assert!(!spans.is_empty(), "{protocol:?}: a span arrived over TLS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_store_speaks_tls_to_redis() {
    use attache_tests::app::App;
    use attache_tests::redis::Redis;

    let pki = pki("redis CA");
    let dir = TempDir::new();
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let cert = dir.write("redis.pem", &pki.leaf.pem);
    let key = dir.write("redis.key", &pki.leaf.key_pem);
    let tls_port = attache_tests::free_port();
    // Plain on one port (for redis-cli), TLS on another; clients present no certificate.
    let (tls_port_s, cert_s, key_s, ca_s) = (
        tls_port.to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    );
    let redis = Redis::start_on(
        attache_tests::free_port(),
        &[
            "--tls-port",
            &tls_port_s,
            "--tls-cert-file",
            &cert_s,
            "--tls-key-file",
            &key_s,
            "--tls-ca-cert-file",
            &ca_s,
            "--tls-auth-clients",
            "no",
        ],
    );
    let app = App::start("orders").await;
    let ports = Ports::new();
    let extra = format!(
        "  idempotency: {{ store: 'rediss://127.0.0.1:{tls_port}', scope_secret: s3cret }}\n"
    );
    let a = Attache::run_with_env(
        ports,
        &attache_tests::sidecar_config(ports, app.addr, &extra),
        &[("SSL_CERT_FILE", ca_s.as_str())],
    );
    let url = a.url("/created");
    let post = || exchange("POST", &url, &[("idempotency-key", "\"k-tls\"")], "{}");
    let first = post().await;
    assert_eq!(first.status, 201, "{}", first.text());
    let again = post().await;
    assert_eq!(again.status, 201);
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "replayed from the record kept in Redis over TLS"
    );
    assert_eq!(app.hits(), 1);
    assert!(
        !redis.cli(&["KEYS", "*"]).trim().is_empty(),
        "the record is in this Redis"
    );
}
