//! `attache inject`, run as a real process over a corpus of manifests (`tests/golden/inject`):
//! each `<case>.in.yaml` injected must equal `<case>.out.yaml` (regenerate them with
//! `ATTACHE_UPDATE_GOLDEN=1` and read the diff), injecting the output again must change nothing,
//! and every output, and every manifest shipped in `deploy/kubernetes`, must pass the
//! Kubernetes OpenAPI schemas of 1.29 and of the newest release (`kubernetes-validate`, which
//! `.ci/run` installs into a venv and names in `KUBERNETES_VALIDATE`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/inject")
}

/// `attache inject <args>` with `stdin`: (exit success, stdout, stderr).
fn inject(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(attache_tests::attache_bin())
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attache inject");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("stdin");
    }
    let out = child.wait_with_output().expect("attache inject");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("the corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "{cases:?}");
    cases
}

#[test]
fn every_case_matches_its_golden_output_and_injecting_twice_is_injecting_once() {
    let update = std::env::var_os("ATTACHE_UPDATE_GOLDEN").is_some();
    for case in cases() {
        let input = case.to_str().expect("path");
        let (ok, out, err) = inject(&[input], None);
        assert!(ok, "{input}: {err}");
        let golden = PathBuf::from(input.replace(".in.yaml", ".out.yaml"));
        if update {
            std::fs::write(&golden, &out).expect("write golden");
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} is missing: ATTACHE_UPDATE_GOLDEN=1", golden.display()));
        assert_eq!(out, expected, "{input}");
        let (ok, again, err) = inject(&["-"], Some(&out));
        assert!(ok, "{input} again: {err}");
        assert_eq!(again, out, "{input}: injecting the output changed it");
    }
}

#[test]
fn what_is_left_alone_says_why_and_gets_no_sidecar() {
    let case = corpus().join("left-alone.in.yaml");
    let (ok, out, err) = inject(&[case.to_str().expect("path")], None);
    assert!(ok, "{err}");
    assert!(
        err.contains("document 1 (Pod debug-shell): left alone (attache.dev/inject: disabled)"),
        "{err}"
    );
    assert!(
        err.contains("document 2 (DaemonSet node-agent): left alone (hostNetwork"),
        "{err}"
    );
    assert!(!out.contains("name: attache"), "{out}");
}

#[test]
fn the_injected_pod_is_a_native_sidecar_with_its_defaults_and_annotations() {
    let (ok, out, err) = inject(
        &[corpus().join("deployment.in.yaml").to_str().expect("path")],
        None,
    );
    assert!(ok, "{err}");
    let docs = attache_config::yaml::parse_stream(&out).expect("YAML out");
    let deployment = attache_config::yaml::to_json(&docs[0], "", None, &mut Default::default());
    let spec = &deployment["spec"]["template"]["spec"];
    let init = spec["initContainers"].as_array().expect("init containers");
    // First among the init containers, before the app's own `migrate`.
    assert_eq!(init[0]["name"], "attache");
    assert_eq!(init[0]["restartPolicy"], "Always");
    assert_eq!(init[1]["name"], "migrate");
    let attache = &init[0];
    let env: Vec<(String, String)> = attache["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let v = e.get("value").and_then(|v| v.as_str()).map(str::to_owned);
            let from = e
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(|v| v.as_str());
            (
                e["name"].as_str().expect("name").to_owned(),
                v.or(from.map(|f| format!("fieldRef:{f}")))
                    .expect("a value"),
            )
        })
        .collect();
    for (name, value) in [
        ("POD_NAME", "fieldRef:metadata.name"),
        ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
        ("APP_PORT", "3000"),
        ("OTEL_SERVICE_NAME", "shop"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability:4318",
        ),
    ] {
        assert!(
            env.contains(&(name.to_owned(), value.to_owned())),
            "{name}={value} in {env:?}"
        );
    }
    let sc = &attache["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        attache["readinessProbe"]["httpGet"]["port"],
        "attache-admin"
    );
    assert_eq!(spec["volumes"][1]["configMap"]["name"], "attache");
    // The app's containers are untouched, in their order.
    assert_eq!(spec["containers"][0]["name"], "web");
    assert_eq!(spec["containers"][1]["name"], "metrics-exporter");

    // The pod template's annotations choose a classic container and the rest.
    let (ok, out, err) = inject(
        &[corpus()
            .join("statefulset-annotated.in.yaml")
            .to_str()
            .expect("path")],
        None,
    );
    assert!(ok, "{err}");
    let docs = attache_config::yaml::parse_stream(&out).expect("YAML out");
    let sts = attache_config::yaml::to_json(&docs[0], "", None, &mut Default::default());
    let spec = &sts["spec"]["template"]["spec"];
    assert!(spec.get("initContainers").is_none(), "{out}");
    let attache = &spec["containers"][1];
    assert_eq!(attache["name"], "attache");
    assert_eq!(attache["image"], "registry.internal/attache:pinned");
    assert_eq!(attache["resources"]["limits"]["cpu"], "500m");
    assert!(attache.get("restartPolicy").is_none());
    assert_eq!(spec["volumes"][0]["configMap"]["name"], "ledger-attache");

    // --transparent: the capture init container first, with NET_ADMIN, then attache.
    let (ok, out, err) = inject(
        &[
            "--transparent",
            corpus().join("deployment.in.yaml").to_str().expect("path"),
        ],
        None,
    );
    assert!(ok, "{err}");
    let docs = attache_config::yaml::parse_stream(&out).expect("YAML out");
    let d = attache_config::yaml::to_json(&docs[0], "", None, &mut Default::default());
    let init = &d["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(init[0]["name"], "attache-init");
    assert_eq!(init[0]["args"][0], "init-iptables");
    assert_eq!(
        init[0]["securityContext"]["capabilities"]["add"][0],
        "NET_ADMIN"
    );
    assert_eq!(init[1]["name"], "attache");
    assert_eq!(init[2]["name"], "migrate");
}

#[test]
fn directories_and_stdin_are_read_and_bad_documents_are_named() {
    // A directory: its manifests in name order, one stream.
    let (ok, out, err) = inject(&[corpus().to_str().expect("path")], None);
    assert!(ok, "{err}");
    let docs = attache_config::yaml::parse_stream(&out).expect("YAML out");
    assert!(docs.len() >= 9, "{}", docs.len());

    // A field of the wrong type: the error names the source, the document, the object and
    // the field, and nothing is printed.
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          ports: [{containerPort: eighty}]\n";
    let (ok, out, err) = inject(&["-"], Some(bad));
    assert!(!ok);
    assert_eq!(out, "");
    assert!(
        err.contains("<stdin>: document 2 (Deployment broken): spec.template.spec.containers[0].ports[0].containerPort"),
        "{err}"
    );
    // Not YAML at all: the position.
    let (ok, _, err) = inject(&["-"], Some("kind: [unclosed\n"));
    assert!(!ok);
    assert!(err.contains("<stdin>") && err.contains("line"), "{err}");
}

/// The OpenAPI schemas of Kubernetes 1.29 (native sidecars' first release) and the newest,
/// strictly (no field they do not know).
#[test]
fn every_output_and_every_shipped_manifest_passes_the_kubernetes_schemas() {
    let Some(validate) = std::env::var_os("KUBERNETES_VALIDATE") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "KUBERNETES_VALIDATE is not set under CI: .ci/run installs kubernetes-validate"
        );
        eprintln!("skipped: KUBERNETES_VALIDATE is not set (bash .ci/run sets it)");
        return;
    };
    let dir = attache_tests::TempDir::new();
    let mut files = Vec::new();
    for case in cases() {
        let (ok, out, err) = inject(&[case.to_str().expect("path")], None);
        assert!(ok, "{err}");
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .replace(".in.", ".out.");
        files.push(dir.write(&name, &out));
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    for f in std::fs::read_dir(shipped).expect("deploy/kubernetes") {
        files.push(f.expect("entry").path());
    }
    for version in ["1.29.0", "newest"] {
        let mut cmd = Command::new(&validate);
        cmd.arg("--strict").arg("--quiet");
        if version != "newest" {
            cmd.args(["-k", version]);
        }
        let out = cmd.args(&files).output().expect("kubernetes-validate");
        assert!(
            out.status.success(),
            "against {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The default config `inject` mounts is a valid attache config, with and without the
/// variables the injected container sets.
#[test]
fn the_shipped_default_config_map_holds_a_valid_config() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/attache-config.yaml");
    let text = std::fs::read_to_string(path).expect("the ConfigMap");
    let docs = attache_config::yaml::parse_stream(&text).expect("YAML");
    let cm = attache_config::yaml::to_json(&docs[0], "", None, &mut Default::default());
    assert_eq!(cm["metadata"]["name"], "attache");
    let config = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    for env in [
        vec![],
        vec![("APP_PORT", "3000"), ("OTEL_SERVICE_NAME", "shop")],
    ] {
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        };
        let c = attache_config::load_str(config, "config.yaml", &lookup)
            .unwrap_or_else(|e| panic!("{e}"));
        let inbound = c.spec.inbound.expect("inbound");
        let port = env
            .iter()
            .find(|(n, _)| *n == "APP_PORT")
            .map_or("8080", |(_, v)| v);
        assert_eq!(inbound.app.port.to_string(), port);
        assert_eq!(c.spec.admin.listen.0.to_string(), "0.0.0.0:15000");
    }
}

/// Every attache config embedded in a shipped manifest (a ConfigMap's `config.yaml`) loads.
#[test]
fn every_config_in_the_shipped_manifests_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("manifest");
        for doc in attache_config::yaml::parse_stream(&text).expect("YAML") {
            let v = attache_config::yaml::to_json(&doc, "", None, &mut Default::default());
            if let Some(config) = v.pointer("/data/config.yaml").and_then(|c| c.as_str()) {
                attache_config::load_str(config, &path.display().to_string(), &|_| None)
                    .unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
    }
    assert!(seen >= 3, "{seen} configs");
}
