//! `attache install`, run as a real process: its manifests pass the Kubernetes schemas, a rerun
//! with the certificate of an earlier install prints the same thing, the certificate it makes
//! is one `attache webhook` serves and the webhook configuration's `caBundle` verifies, and the
//! default sidecar config it prints is the one shipped in `deploy/kubernetes`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use attache_tests::pki::TlsConn;
use attache_tests::{Attache, Ports, TempDir};
use base64::Engine;
use serde_json::Value;

fn install(args: &[&str]) -> String {
    let out = Command::new(attache_tests::attache_bin())
        .arg("install")
        .args(args)
        .output()
        .expect("attache install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docs(yaml: &str) -> Vec<Value> {
    attache_config::yaml::parse_stream(yaml)
        .expect("YAML")
        .iter()
        .map(|d| attache_config::yaml::to_json(d, "", None, &mut Default::default()))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn b64(v: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 text"))
        .expect("base64");
    String::from_utf8(bytes).expect("PEM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_it_makes_is_served_by_the_webhook_and_verified_by_the_ca_bundle() {
    let out = install(&["--inject-namespace", "shop"]);
    let all = docs(&out);
    let kinds: Vec<&str> = all.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "Secret",
            "Deployment",
            "Service",
            "MutatingWebhookConfiguration",
            "ConfigMap"
        ]
    );
    let secret = find(&all, "Secret");
    let (ca, cert, key) = (
        b64(&secret["data"]["ca.crt"]),
        b64(&secret["data"]["tls.crt"]),
        b64(&secret["data"]["tls.key"]),
    );
    let hook = &find(&all, "MutatingWebhookConfiguration")["webhooks"][0];
    assert_eq!(b64(&hook["clientConfig"]["caBundle"]), ca);
    assert_eq!(hook["clientConfig"]["service"]["name"], "attache-webhook");
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(
        hook["namespaceSelector"]["matchLabels"]["attache.dev/inject"],
        "enabled"
    );
    let sa = find(&all, "ServiceAccount");
    assert_eq!(sa["automountServiceAccountToken"], false);

    // The webhook serves that certificate; the CA bundle verifies it for the Service's name.
    let dir = TempDir::new();
    let cert_file = dir.write("tls.crt", &cert).display().to_string();
    let key_file = dir.write("tls.key", &key).display().to_string();
    let ports = Ports::new();
    let addr = SocketAddr::from(([127, 0, 0, 1], ports.inbound));
    let listen = addr.to_string();
    let _webhook = Attache::spawn(
        ports,
        dir,
        &[
            "webhook",
            "--listen",
            &listen,
            "--cert-file",
            &cert_file,
            "--key-file",
            &key_file,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TlsConn::connect(
            addr,
            &ca,
            "attache-webhook.attache-system.svc",
            &["h2"],
            None,
        )
        .await
        {
            Ok(mut c) => {
                let got = c.get("/ready", &[]).await.expect("ready");
                assert_eq!(got.status, 200);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "never verified: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[test]
fn a_rerun_with_the_earlier_certificate_prints_the_same_manifests() {
    let first = docs(&install(&[]));
    let secret = find(&first, "Secret");
    let dir = TempDir::new();
    let ca = dir.write("ca.crt", &b64(&secret["data"]["ca.crt"]));
    let cert = dir.write("tls.crt", &b64(&secret["data"]["tls.crt"]));
    let key = dir.write("tls.key", &b64(&secret["data"]["tls.key"]));
    let args = [
        "--ca-file",
        ca.to_str().expect("path"),
        "--cert-file",
        cert.to_str().expect("path"),
        "--key-file",
        key.to_str().expect("path"),
        "--fail-closed",
    ];
    let again = install(&args);
    assert_eq!(install(&args), again, "the same inputs, the same output");
    let again = docs(&again);
    assert_eq!(find(&again, "Secret"), secret);
    assert_eq!(
        find(&again, "MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"],
        "Fail"
    );
    // cert-manager instead: an Issuer and a Certificate, the CA injected by cert-manager.
    let cm = docs(&install(&["--cert-manager"]));
    assert!(cm.iter().all(|d| d["kind"] != "Secret"));
    assert_eq!(
        find(&cm, "Certificate")["spec"]["secretName"],
        "attache-webhook-tls"
    );
    let hook = find(&cm, "MutatingWebhookConfiguration");
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "attache-system/attache-webhook"
    );
    assert!(
        hook["webhooks"][0]["clientConfig"]
            .get("caBundle")
            .is_none()
    );
}

#[test]
fn the_default_config_it_prints_is_the_shipped_one_and_everything_passes_the_schemas() {
    let out = install(&["--inject-namespace", "shop", "--namespace", "mesh"]);
    let all = docs(&out);
    let cm = find(&all, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "shop");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/attache-config.yaml"),
    )
    .expect("shipped ConfigMap");
    assert_eq!(cm["data"], docs(&shipped)[0]["data"]);

    let Some(validate) = std::env::var_os("KUBERNETES_VALIDATE") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "KUBERNETES_VALIDATE is not set under CI"
        );
        eprintln!("skipped the schemas: KUBERNETES_VALIDATE is not set (bash .ci/run sets it)");
        return;
    };
    let dir = TempDir::new();
    let file = dir.write("install.yaml", &out);
    for version in [Some("1.29.0"), None] {
        let mut cmd = Command::new(&validate);
        cmd.args(["--strict", "--quiet"]);
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let res = cmd.arg(&file).output().expect("kubernetes-validate");
        assert!(
            res.status.success(),
            "{version:?}: {}{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
    }
}
