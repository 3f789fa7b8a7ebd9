//! `attache webhook`, end to end: the real binary serving HTTPS with a certificate the test
//! makes, `AdmissionReview`s posted to it, and each JSON Patch it answers applied to the pod
//! it reviewed, which must then equal what `attache inject` makes of the same pod.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use attache_tests::pki::{Ca, TlsConn};
use attache_tests::{Attache, Ports, TempDir};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

/// A webhook on a free port with a certificate for `localhost` signed by `ca`.
async fn webhook(ca: &Ca, extra: &[&str]) -> (Attache, SocketAddr) {
    let leaf = ca.issue("attache-webhook", &["localhost"], None);
    webhook_with(ca, &leaf, extra).await
}

/// A webhook serving `leaf` (its files in the Attache's directory: `tls.crt`, `tls.key`).
async fn webhook_with(
    ca: &Ca,
    leaf: &attache_tests::pki::Leaf,
    extra: &[&str],
) -> (Attache, SocketAddr) {
    let dir = TempDir::new();
    let cert = dir.write("tls.crt", &leaf.pem).display().to_string();
    let key = dir.write("tls.key", &leaf.key_pem).display().to_string();
    let ports = Ports::new();
    let addr = SocketAddr::from(([127, 0, 0, 1], ports.inbound));
    let listen = addr.to_string();
    let mut args = vec![
        "webhook",
        "--listen",
        listen.as_str(),
        "--cert-file",
        cert.as_str(),
        "--key-file",
        key.as_str(),
    ];
    args.extend_from_slice(extra);
    let a = Attache::spawn(ports, dir, &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = TlsConn::connect(addr, &ca.pem, "localhost", &["http/1.1"], None).await
            && c.get("/ready", &[]).await.is_ok_and(|g| g.status == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (a, addr)
}

async fn post(addr: SocketAddr, ca: &Ca, body: Vec<u8>) -> Value {
    let mut c = TlsConn::connect(addr, &ca.pem, "localhost", &["h2", "http/1.1"], None)
        .await
        .expect("TLS");
    let got = c
        .request(
            "POST",
            "/inject",
            &[("content-type", "application/json")],
            Bytes::from(body),
        )
        .await
        .expect("review");
    assert_eq!(got.status, 200, "{}", got.text());
    got.json()
}

fn review(uid: &str, kind: &str, object: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": object
        }
    })
    .to_string()
    .into_bytes()
}

/// A pod as a ReplicaSet creates it.
fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7d9f8c-",
            "namespace": "shop",
            "labels": {"app": "checkout", "pod-template-hash": "7d9f8c"},
            "annotations": {"attache.dev/otlp-endpoint": "http://otel:4318"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "checkout-7d9f8c", "uid": "0b5c", "controller": true}]
        },
        "spec": {
            "containers": [{"name": "app", "image": "ghcr.io/example/checkout:1",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {}, "terminationMessagePolicy": "File"}],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst"
        }
    })
}

/// What `attache inject` makes of `object`, as JSON.
fn injected_by_cli(object: &Value) -> Value {
    use std::io::Write;
    let mut child = Command::new(attache_tests::attache_bin())
        .args(["inject", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("attache inject");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(object.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("inject");
    assert!(out.status.success());
    let docs =
        attache_config::yaml::parse_stream(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    attache_config::yaml::to_json(&docs[0], "", None, &mut Default::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patch_makes_the_pod_inject_makes() {
    let ca = Ca::new("webhook CA");
    let (a, addr) = webhook(&ca, &[]).await;
    let answer = post(addr, &ca, review("r-1", "Pod", pod())).await;
    let response = &answer["response"];
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(response["uid"], "r-1");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("RFC 6902");
    let mut patched = pod();
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    assert_eq!(patched, injected_by_cli(&pod()));
    assert_eq!(
        patched["spec"]["initContainers"][0]["name"], "attache",
        "{patched}"
    );

    // Opted out, or not a pod: allowed as it is.
    let mut opted_out = pod();
    opted_out["metadata"]["annotations"]["attache.dev/inject"] = json!("disabled");
    for (uid, kind, object) in [
        ("r-2", "Pod", opted_out),
        ("r-3", "Service", json!({"kind": "Service"})),
    ] {
        let answer = post(addr, &ca, review(uid, kind, object)).await;
        assert_eq!(answer["response"]["uid"], uid);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{answer}");
    }
    let metrics = {
        let mut c = TlsConn::connect(addr, &ca.pem, "localhost", &["http/1.1"], None)
            .await
            .expect("TLS");
        c.get("/metrics", &[]).await.expect("metrics").text()
    };
    assert!(
        attache_tests::metrics::has(
            &metrics,
            "attache_webhook_reviews_total{result=\"injected\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        attache_tests::metrics::has(
            &metrics,
            "attache_webhook_reviews_total{result=\"left_alone\"} 2"
        ),
        "{metrics}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_it_cannot_read_is_allowed_with_a_warning_or_refused_when_failing_closed() {
    let ca = Ca::new("webhook CA");
    let (_open, open) = webhook(&ca, &[]).await;
    let (_closed, closed) = webhook(&ca, &["--fail-closed"]).await;
    let mut broken = pod();
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("eighty");
    for body in [b"not json".to_vec(), review("r-9", "Pod", broken)] {
        let answer = post(open, &ca, body.clone()).await;
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let warning = answer["response"]["warnings"][0]
            .as_str()
            .expect("a warning");
        assert!(warning.contains("not injected"), "{warning}");
        let answer = post(closed, &ca, body).await;
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        assert_eq!(answer["response"]["status"]["code"], 400);
    }
    // The field at fault is named.
    let mut broken = pod();
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("eighty");
    let answer = post(closed, &ca, review("r-10", "Pod", broken)).await;
    let message = answer["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(
        message.contains("spec.containers[0].ports[0].containerPort"),
        "{message}"
    );
    assert_eq!(answer["response"]["uid"], "r-10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let ca = Ca::new("webhook CA");
    let first = ca.issue("attache-webhook", &["localhost"], None);
    let (a, addr) = webhook_with(&ca, &first, &[]).await;
    let c = TlsConn::connect(addr, &ca.pem, "localhost", &["http/1.1"], None)
        .await
        .expect("TLS");
    assert_eq!(c.server_cert, first.der);
    // cert-manager renews: the Secret's files change under the running webhook.
    let renewed = ca.issue("attache-webhook", &["localhost"], None);
    for (name, text) in [("tls.key", &renewed.key_pem), ("tls.crt", &renewed.pem)] {
        attache_tests::pki::replace(&a.dir.path().join(name), text);
    }
    attache_tests::pki::wait_for_certificate(addr, &ca.pem, &renewed.der).await;
    // And it still answers reviews.
    let answer = post(addr, &ca, review("r-20", "Pod", pod())).await;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
}
