//! The forward proxy (`spec.forward_proxy`), end to end: absolute-form requests through the
//! outbound stack, CONNECT tunnels (HTTPS through them untouched), the allowlist's 403s, and
//! the refusal of cloud metadata addresses, tested with attache inside a network namespace of
//! its own so that even a bug could not send a packet off the machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attache_tests::app::App;
use attache_tests::client::raw;
use attache_tests::pki::{Ca, https_server, provider};
use attache_tests::{Attache, Ports, TempDir};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// An attache whose only listener is a forward proxy on `ports.outbound` allowing `allow`
/// (flow YAML).
fn forward_proxy(allow: &str) -> (Attache, SocketAddr) {
    forward_proxy_with(allow, "")
}

/// [`forward_proxy`] with `extra` under `spec:`.
fn forward_proxy_with(allow: &str, extra: &str) -> (Attache, SocketAddr) {
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  forward_proxy: {{ listen: '127.0.0.1:{fp}', allow: {allow} }}
  admin: {{ listen: 127.0.0.1:{admin} }}
  timeouts: {{ connect: 1s }}
{extra}",
        fp = ports.outbound,
        admin = ports.admin
    );
    let a = Attache::run(ports, &config);
    (a, SocketAddr::from(([127, 0, 0, 1], ports.outbound)))
}

/// The status code of a raw HTTP/1.1 response.
fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn body(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_requests_go_through_the_outbound_stack() {
    let app = App::start("dest").await;
    let port = app.addr.port();
    let (_a, fp) = forward_proxy(&format!("['127.0.0.1:{port}']"));

    let request = format!(
        "GET http://127.0.0.1:{port}/through?q=1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
         proxy-authorization: Basic c2VjcmV0\r\nconnection: close\r\n\r\n"
    );
    let got = raw(fp, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status(&got), 200, "{got}");
    let seen = body(&got);
    assert_eq!(seen["path"], "/through");
    let headers = &seen["headers"];
    // The destination's own authority, the trace context started by attache, and nothing
    // meant for the proxy.
    assert_eq!(headers["host"], format!("127.0.0.1:{port}"));
    assert!(headers["traceparent"].as_str().is_some(), "{headers}");
    assert!(headers.get("proxy-authorization").is_none(), "{headers}");
    assert_eq!(app.hits(), 1);

    // Origin-form is not a proxy request: a clear 400.
    let got = raw(
        fp,
        b"GET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status(&got), 400, "{got}");
    assert!(got.contains("absolute-form"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_pass_bytes_and_https_untouched() {
    let app = App::start("dest").await;
    let ca = Ca::new("tunnel CA");
    let https = https_server(&ca.issue("dest", &["localhost"], None)).await;
    let (a, fp) = forward_proxy(&format!(
        "['127.0.0.1:{}', '127.0.0.1:{}']",
        app.addr.port(),
        https.port()
    ));

    // A plain tunnel: after the 200, the app's own bytes, with no header of attache's.
    let mut s = tunnel(fp, app.addr.port()).await;
    s.write_all(b"GET /tunnelled HTTP/1.1\r\nhost: dest\r\nconnection: close\r\n\r\n")
        .await
        .expect("write through the tunnel");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let got = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(status(&got), 200, "{got}");
    let seen = body(&got);
    assert_eq!(seen["path"], "/tunnelled");
    assert!(
        seen["headers"].get("traceparent").is_none(),
        "untouched: {seen}"
    );

    // HTTPS through a tunnel: the client's TLS session (verified for `localhost`) is with the
    // destination itself.
    let s = tunnel(fp, https.port()).await;
    assert_eq!(tls_get(s, &ca.pem).await, "tls ok http/1.1");
    a.assert_metrics(&["attache_forward_proxy_tunnels_total 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_calls_and_tunnels_get_client_spans() {
    use attache_tests::otlp::{Collector, Protocol, SpanKind};
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("dest").await;
    let port = app.addr.port();
    let (_a, fp) = forward_proxy_with(
        &format!("['127.0.0.1:{port}']"),
        &format!(
            "  telemetry:
    otlp: {{ endpoint: '{}', protocol: http/protobuf }}
    batch: {{ scheduled_delay: 100ms }}
",
            collector.endpoint()
        ),
    );
    let request = format!(
        "GET http://127.0.0.1:{port}/spanned HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
    );
    let got = raw(fp, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status(&got), 200, "{got}");
    drop(tunnel(fp, port).await);
    let spans = collector.wait_spans(2, 10).await;
    let method = |m: &str| {
        spans
            .iter()
            .find(|s| s.attr("http.request.method").as_deref() == Some(m))
            .unwrap_or_else(|| panic!("no {m} span"))
    };
    let get = method("GET");
    assert_eq!(get.kind(), SpanKind::Client);
    assert_eq!(get.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        get.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    let connect = method("CONNECT");
    assert_eq!(connect.kind(), SpanKind::Client);
    assert_eq!(
        connect.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(connect.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(connect.attr("server.port"), Some(port.to_string()));
}

/// A CONNECT tunnel through `fp` to `127.0.0.1:port`, past its `200`.
async fn tunnel(fp: SocketAddr, port: u16) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(fp).await.expect("connect");
    let connect = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(connect.as_bytes()).await.expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

/// Reads a response head byte by byte (nothing past it: the tunnel's bytes follow).
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A TLS session over `s` for `localhost`, trusting `ca`, and one GET on it: the body.
async fn tls_get(s: tokio::net::TcpStream, ca: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, s)
        .await
        .expect("TLS through the tunnel");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP over TLS");
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_outside_the_allowlist_get_403_and_nothing_is_sent() {
    let allowed = App::start("allowed").await;
    let other = App::start("other").await;
    let (a, fp) = forward_proxy(&format!(
        "['127.0.0.1:{}', '*.internal']",
        allowed.addr.port()
    ));
    let port = other.addr.port();
    for request in [
        format!(
            "GET http://127.0.0.1:{port}/x HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
        ),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n"),
    ] {
        let got = raw(fp, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(status(&got), 403, "{got}");
        assert!(got.contains("application/problem+json"), "{got}");
        assert!(got.contains("not an allowed destination"), "{got}");
    }
    assert_eq!(other.hits(), 0);
    // attache's own admin port, even under a rule that allows every address.
    let (b, fp_any) = forward_proxy("['*', '0.0.0.0/0']");
    let admin = b.ports.admin;
    let got = raw(
        fp_any,
        format!("CONNECT 127.0.0.1:{admin} HTTP/1.1\r\nhost: 127.0.0.1:{admin}\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status(&got), 403, "{got}");
    assert!(got.contains("admin"), "{got}");
    a.assert_metrics(&["attache_forward_proxy_denied_total{reason=\"not_allowed\"} 2"]);
    b.assert_metrics(&["attache_forward_proxy_denied_total{reason=\"admin\"} 1"]);
}

/// Cloud metadata addresses are refused even when every destination is allowed. attache runs
/// inside a network namespace of its own (`unshare -n`, loopback up), and the requests are
/// made from inside it too: nothing can leave the machine, bug or not.
#[test]
fn metadata_addresses_are_refused_inside_a_network_namespace() {
    let dir = TempDir::new();
    let config = dir.write(
        "config.yaml",
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  forward_proxy: { listen: '127.0.0.1:15002', allow: ['*', '0.0.0.0/0', '[::/0]'] }
  admin: { listen: 127.0.0.1:15000 }
  timeouts: { connect: 1s }
",
    );
    let bin = attache_tests::attache_bin();
    let script = format!(
        r#"set -e
ip link set lo up
ATTACHE_LOG=warn {bin} run -c {config} >{log} 2>&1 &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/15002) 2>/dev/null && break; sleep 0.1; done
ask() {{
  exec 3<>/dev/tcp/127.0.0.1/15002
  printf "$1" >&3
  timeout 5 head -c 300 <&3 | head -1
  echo
  exec 3<&-
}}
ask 'CONNECT 169.254.169.254:80 HTTP/1.1\r\nhost: 169.254.169.254:80\r\n\r\n'
ask 'GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nhost: 169.254.169.254\r\nconnection: close\r\n\r\n'
ask 'CONNECT [fd00:ec2::254]:80 HTTP/1.1\r\nhost: [fd00:ec2::254]:80\r\n\r\n'
ask 'GET http://[::ffff:169.254.169.254]/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n'
curl_metrics() {{
  exec 4<>/dev/tcp/127.0.0.1/15000
  printf 'GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n' >&4
  timeout 5 cat <&4 | grep '^attache_forward_proxy_denied_total' || true
}}
curl_metrics
kill $pid
"#,
        bin = bin.display(),
        config = config.display(),
        log = dir.path().join("attache.log").display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["-n", "bash", "-c", &script])
        .output()
        .expect("unshare (util-linux) and ip (iproute2) are installed by .ci/run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("attache.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the namespace script failed: {}\n{stdout}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .collect();
    assert_eq!(statuses.len(), 4, "{stdout}\n{log}");
    for s in &statuses {
        assert!(s.starts_with("HTTP/1.1 403"), "{stdout}\n{log}");
    }
    assert!(
        attache_tests::metrics::has(
            &stdout,
            "attache_forward_proxy_denied_total{reason=\"metadata\"} 4"
        ),
        "{stdout}"
    );
}
