use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(text, "test.yaml", &no_env)
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound:
    app: http://127.0.0.1:8080
";

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = load(MINIMAL).unwrap();
    let inbound = c.spec.inbound.as_ref().unwrap();
    assert_eq!(inbound.listen.to_string(), "0.0.0.0:15006");
    assert_eq!(inbound.app.authority(), "127.0.0.1:8080");
    assert_eq!(c.spec.admin.listen.to_string(), "127.0.0.1:15000");
    assert_eq!(c.spec.limits.max_header_bytes.0, 65536);
    assert_eq!(c.spec.timeouts.request.0.as_secs(), 60);
    assert_eq!(c.spec.drain.grace_period.to_string(), "30s");
    assert_eq!(c.metadata.name, "attache");
}

#[test]
fn invalid_url_names_path_line_and_column() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
metadata:
  name: checkout
spec:
  inbound:
    app:   htp:/x
";
    assert_eq!(
        errors(text),
        [
            "spec.inbound.app: invalid URL \"htp:/x\" (expected http://host:port) at line 7, column 12"
        ]
    );
}

#[test]
fn unknown_fields_suggest_the_closest_name_and_all_errors_are_listed() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound:
    lisen: 0.0.0.0:1
    app: http://a:1
  limits:
    max_headers: lots
    idle_timeout: 30
  upstreams:
    pay:
      endpoints: [http://p:1]
      balance: round_robbin
";
    let errs = errors(text);
    assert_eq!(
        errs,
        [
            "spec.inbound.lisen: unknown field `lisen`; did you mean `listen`? at line 5, column 5",
            "spec.limits.max_headers: invalid type: string \"lots\", expected u32 at line 8, column 18",
            "spec.limits.idle_timeout: invalid duration 30 (write it as a string with a unit, like \"30s\") at line 9, column 19",
            "spec.upstreams.pay.balance: unknown value `round_robbin`; did you mean `round_robin`? at line 13, column 16",
        ]
    );
}

#[test]
fn a_typo_and_a_mistake_across_fields_are_listed_together() {
    // Unknown fields leave the rest of the model as written, so the checks across fields run
    // in the same pass.
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://a:1', lisen: '0.0.0.0:1' }
  outbound:
    - { listen: 127.0.0.1:15001, upstream: payy }
  upstreams:
    pay: { endpoints: ['http://p:1'], balanse: round_robin }
";
    assert_eq!(
        errors(text),
        [
            "spec.inbound.lisen: unknown field `lisen`; did you mean `listen`? at line 4, column 33",
            "spec.outbound[0].upstream: upstream `payy` is not defined in spec.upstreams (defined: `pay`) at line 6, column 44",
            "spec.upstreams.pay.balanse: unknown field `balanse`; did you mean `balance`? at line 8, column 39",
        ]
    );
    // After a bad value the model holds a default in its place: those checks wait for a
    // clean file rather than report what the file does not say.
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://a:1' }
  outbound:
    - { listen: 127.0.0.1:15001, upstream: pay }
  upstreams:
    pay: { endpoints: 'http://p:1' }
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("spec.upstreams.pay.endpoints"),
        "{errs:?}"
    );
}

#[test]
fn semantic_errors_point_at_the_field() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://127.0.0.1:8080', listen: '0.0.0.0:9000' }
  outbound:
    - { listen: '127.0.0.1:9000', upstream: payments }
  upstreams:
    billing: { endpoints: [] }
";
    assert_eq!(
        errors(text),
        [
            "spec.outbound[0].listen: listen address 127.0.0.1:9000 clashes with `spec.inbound.listen` at line 6, column 17",
            "spec.outbound[0].upstream: upstream `payments` is not defined in spec.upstreams (defined: `billing`) at line 6, column 45",
            "spec.upstreams.billing.endpoints: needs at least one endpoint at line 8, column 16",
        ]
    );
}

#[test]
fn missing_sections() {
    let errs = errors("apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: {}\n");
    assert_eq!(
        errs,
        ["spec.inbound: missing required field `app` at line 4, column 12"]
    );
    let errs = errors("kind: Sidecar\nspec: {}\n");
    assert_eq!(
        errs,
        ["missing required field `apiVersion` at line 1, column 1"]
    );
    let errs = errors("apiVersion: attache.dev/v2\nkind: Sidecar\nspec: {}\n");
    assert!(
        errs[0].starts_with(
            "apiVersion: unknown value `attache.dev/v2`; did you mean `attache.dev/v1`?"
        ),
        "{errs:?}"
    );
    assert_eq!(
        errors("- a\n- b\n")[0],
        "the document must be a mapping with apiVersion, kind and spec at line 1, column 1"
    );
}

#[test]
fn environment_interpolation() {
    let env = |name: &str| match name {
        "APP_PORT" => Some("9090".to_owned()),
        _ => None,
    };
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound:
    app: http://127.0.0.1:${APP_PORT}
    listen: ${LISTEN:-0.0.0.0:16000}
  limits:
    max_headers: ${MAX_HEADERS:-50}
";
    let c = load_str(text, "t", &env).unwrap();
    assert_eq!(c.spec.inbound.as_ref().unwrap().app.port, 9090);
    assert_eq!(c.spec.inbound.as_ref().unwrap().listen.0.port(), 16000);
    assert_eq!(c.spec.limits.max_headers, 50);

    let e = load_str(
        "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound:\n    app: http://${HOST}:1\n",
        "t",
        &env,
    )
    .unwrap_err();
    assert_eq!(
        e.errors[0].to_string(),
        "spec.inbound.app: environment variable `HOST` is not set (use `${HOST:-default}` for a default) at line 5, column 10"
    );
}

#[test]
fn json_documents_load() {
    let c = load(r#"{"apiVersion": "attache.dev/v1", "kind": "Sidecar", "spec": {"outbound": [{"listen": "127.0.0.1:15001", "upstream": "p"}], "upstreams": {"p": {"endpoints": ["http://p:80"]}}}}"#).unwrap();
    assert_eq!(c.spec.outbound[0].upstream, "p");
}

#[test]
fn redaction_hides_credentials() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://app:1' }
  upstreams:
    p: { endpoints: ['http://user:hunter2@p:80'] }
";
    let c = load(text).unwrap();
    let shown = c.redacted().to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("http://REDACTED@p:80"), "{shown}");

    // Header maps hide every value, whatever the header is called; lists of header names
    // (what restoration carries) stay readable; an `@` past the authority is not userinfo.
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://app:1' }
  trace: { restore: { headers: [x-request-id, x-tenant-id] } }
  flags:
    sources:
      - url: 'http://flags:80/f.json?owner=team@example.com'
        headers: { authorization: 'Bearer flagtoken', x-api-key: k123 }
  telemetry:
    otlp: { endpoint: 'http://user:otlppass@collector:4318', headers: { x-honeycomb-team: hc1 } }
";
    let c = load(text).unwrap();
    let shown = c.redacted().to_string();
    for secret in ["flagtoken", "k123", "otlppass", "hc1"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains(r#""headers":["x-request-id","x-tenant-id"]"#),
        "{shown}"
    );
    assert!(
        shown.contains("http://flags:80/f.json?owner=team@example.com"),
        "{shown}"
    );
    let effective = c.spec.telemetry.effective("x", &|_| None).redacted();
    let effective = serde_json::to_string(&effective).unwrap();
    assert!(!effective.contains("otlppass"), "{effective}");
    assert!(effective.contains("REDACTED@collector:4318"), "{effective}");
}

#[test]
fn a_flag_source_url_with_credentials_is_refused_without_echoing_them() {
    let e = load(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://app:1' }
  flags:
    sources: [ { url: 'https://bot:hunter2@flags.internal/f.json' } ]
",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("credentials in the URL are not sent"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn committed_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == schema_json(),
        "config/schema.json is stale; regenerate it with `cargo run -p attache -- schema > config/schema.json`"
    );
}

#[test]
fn every_deploy_example_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples");
    // Examples must work with nothing set: every ${VAR} in them has a default.
    let env = |_: &str| None;
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "yaml" | "yml" | "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = load_str(&text, &path.display().to_string(), &env) {
            panic!("{e}");
        }
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected the examples in deploy/examples, found {seen}"
    );
}

#[test]
fn kubernetes_manifests_embed_valid_configs() {
    // Each ConfigMap key ending in .yaml under deploy/kubernetes is an attache config.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text.split("\n---\n") {
            let node = yaml::parse(doc).unwrap();
            let v = yaml::to_json(&node, "", None, &mut yaml::PosIndex::default());
            if v["kind"] != "ConfigMap" {
                continue;
            }
            for (key, value) in v["data"].as_object().into_iter().flatten() {
                if key.ends_with(".yaml") {
                    let source = format!("{}: data.{key}", path.display());
                    if let Err(e) = load_str(value.as_str().unwrap(), &source, &no_env) {
                        panic!("{e}");
                    }
                    seen += 1;
                }
            }
        }
    }
    assert!(seen >= 1, "no attache config found in deploy/kubernetes");
}

#[test]
fn the_kubernetes_manifest_wires_ports_probes_and_ordering_consistently() {
    // What a cluster would only show at deploy time: attache is a native sidecar (started
    // before the app, stopped after it), its probes reach admin paths attache serves on the
    // admin port its config listens on, the Service reaches attache's inbound port, and the
    // inbound forwards to the app's container port.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/sidecar.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| {
            yaml::to_json(
                &yaml::parse(d).unwrap(),
                "",
                None,
                &mut yaml::PosIndex::default(),
            )
        })
        .collect();
    let of_kind =
        |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    let config_map = of_kind("ConfigMap")
        .into_iter()
        .find(|d| d["data"]["config.yaml"].is_string())
        .expect("the attache ConfigMap");
    let config = load_str(
        config_map["data"]["config.yaml"].as_str().unwrap(),
        "config.yaml",
        &no_env,
    )
    .unwrap();
    let port_of = |listen: &crate::ListenAddr| {
        listen
            .to_string()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let inbound = config.spec.inbound.as_ref().expect("an inbound listener");

    let deployment = of_kind("Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let attache = pod["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "attache"))
        .expect("attache among the init containers");
    assert_eq!(attache["restartPolicy"], "Always", "a native sidecar");
    let named_port = |c: &Value, name: &str| {
        c["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no port {name} on {}", c["name"]))
    };
    assert_eq!(
        named_port(attache, "admin"),
        port_of(&config.spec.admin.listen)
    );
    assert_eq!(named_port(attache, "http"), port_of(&inbound.listen));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &attache[probe]["httpGet"];
        assert_eq!(get["port"], "admin", "{probe}");
        assert!(
            ["/ready", "/live"].contains(&get["path"].as_str().unwrap_or_default()),
            "{probe}: {get}"
        );
    }
    let app = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "app"))
        .expect("the app container");
    assert_eq!(named_port(app, "app"), u64::from(inbound.app.port));

    let service = of_kind("Service")[0];
    let target = service["spec"]["ports"][0]["targetPort"].as_str().unwrap();
    assert_eq!(named_port(attache, target), port_of(&inbound.listen));
    assert_eq!(
        config.spec.drain.delay.get(),
        std::time::Duration::ZERO,
        "stopped after the app, attache has nothing to wait for"
    );
}

#[test]
fn trace_settings_are_validated() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://a:1' }
  trace:
    extract: [tracecontext, zipkin]
    tracestate_max_len: 100
    sampling: { ratio: 1.5 }
    baggage: { max_members: 10 }
";
    assert_eq!(
        errors(text),
        [
            "spec.trace.extract[1]: unknown value `zipkin` (expected one of `tracecontext`, `b3`, `b3multi`, `jaeger`) at line 6, column 29",
        ]
    );
    let text = text.replace(", zipkin", "");
    assert_eq!(
        errors(&text),
        [
            "spec.trace.tracestate_max_len: must be at least 512 (the W3C minimum) at line 7, column 25",
            "spec.trace.sampling.ratio: must be between 0 and 1, not 1.5 at line 8, column 24",
            "spec.trace.baggage.max_members: must be at least 64 (the W3C minimum) at line 9, column 29",
        ]
    );
}

#[test]
fn context_mappings_need_baggage_and_valid_names() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://a:1' }
  trace:
    inject: [tracecontext]
    context:
      to_baggage: [ { header: 'x tenant', key: tenant } ]
      from_baggage: [ { key: 'plan,x', header: x-plan } ]
";
    assert_eq!(
        errors(text),
        [
            "spec.trace.context: mapping headers and baggage needs `baggage` in spec.trace.inject at line 7, column 5",
            "spec.trace.context.to_baggage[0].header: `x tenant` is not a valid header name at line 8, column 31",
            "spec.trace.context.from_baggage[0].key: `plan,x` is not a valid baggage key at line 9, column 30",
        ]
    );
}

#[test]
fn outbound_listen_defaults_to_15001() {
    let c = load("apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  outbound: [ { upstream: p } ]\n  upstreams: { p: { endpoints: ['http://p:80'] } }\n").unwrap();
    assert_eq!(c.spec.outbound[0].listen.to_string(), "127.0.0.1:15001");
    let errs = errors(
        "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  outbound: [ { upstream: p }, { upstream: p } ]\n  upstreams: { p: { endpoints: ['http://p:80'] } }\n",
    );
    assert!(
        errs[0].contains("clashes with `spec.outbound[0].listen`"),
        "{errs:?}"
    );
}

#[test]
fn restore_settings_are_validated() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound: { app: 'http://a:1' }
  trace:
    restore:
      headers: [x-request-id, 'x-b3-*', 'bad header']
      correlation: single_in_flight
";
    assert_eq!(
        errors(text),
        [
            "spec.trace.restore.headers[2]: `bad header` is not a header name (or a prefix ending in `*`) at line 7, column 41",
        ]
    );
}

#[test]
fn sampling_comes_from_the_file_then_otel_variables_then_the_default() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let unset = Sampling::default();
    let e = unset.effective(&env(&[]));
    assert_eq!((e.ratio, e.parent_based, e.source), (1.0, true, "default"));
    let e = unset.effective(&env(&[("OTEL_TRACES_SAMPLER_ARG", "0")]));
    assert_eq!(
        (e.ratio, e.parent_based, e.source),
        (0.0, true, "OTEL_TRACES_SAMPLER")
    );
    let e = unset.effective(&env(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ]));
    assert_eq!((e.ratio, e.parent_based), (0.25, false));
    let e = unset.effective(&env(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]));
    assert_eq!((e.ratio, e.parent_based), (0.0, true));
    let e = unset.effective(&env(&[("OTEL_TRACES_SAMPLER", "always_on")]));
    assert_eq!((e.ratio, e.parent_based), (1.0, false));
    let e = unset.effective(&env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]));
    assert_eq!((e.ratio, e.source), (1.0, "default"));
    assert!(e.warning.unwrap().contains("jaeger_remote"));
    let e = unset.effective(&env(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
    ]));
    assert_eq!(e.ratio, 1.0);
    assert!(e.warning.is_some());
    // The file beats the environment.
    let set = Sampling { ratio: Some(0.5) };
    let e = set.effective(&env(&[("OTEL_TRACES_SAMPLER", "always_off")]));
    assert_eq!((e.ratio, e.parent_based, e.source), (0.5, true, "file"));
}

#[test]
fn telemetry_keys_come_from_the_file_then_otel_variables_then_defaults() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let c = load(MINIMAL).unwrap();
    let t = &c.spec.telemetry;
    // Nothing set: no export, documented defaults, service.name from metadata.name.
    let e = t.effective(&c.metadata.name, &no_env);
    assert_eq!(e.endpoint, None);
    assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(e.timeout.as_secs(), 10);
    assert_eq!((e.max_queue_size, e.max_export_batch_size), (2048, 512));
    assert_eq!(e.resource["service.name"], "attache");
    assert_eq!(e.sources["service_name"], "metadata.name");

    // Case 42: OTEL_SERVICE_NAME and the downward-API variables.
    let e = t.effective(
        "attache",
        &env(&[
            ("OTEL_SERVICE_NAME", "a"),
            ("POD_NAME", "p"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=b,team=pay%20ments",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "9000"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
        ]),
    );
    assert_eq!(e.resource["service.name"], "a");
    assert_eq!(e.resource["k8s.pod.name"], "p");
    assert_eq!(e.resource["team"], "pay ments");
    assert!(!e.resource.contains_key("k8s.namespace.name"));
    assert_eq!(
        e.endpoint.as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(e.timeout.as_millis(), 2500, "the _TRACES_ variant wins");
    assert_eq!(e.sources["timeout"], "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT");
    assert_eq!(e.headers["api-key"], "s=cret");
    assert_eq!(e.redacted().headers["api-key"], "<redacted>");
    assert_eq!(e.max_export_batch_size, 64);

    // The file beats the environment; a signal-specific variable is used as is.
    let c = load(&format!(
        "{MINIMAL}  telemetry:\n    service_name: file\n    resource: {{ service.name: pinned }}\n    otlp: {{ protocol: grpc, timeout: 1s }}\n"
    ))
    .unwrap();
    let e = c.spec.telemetry.effective(
        "attache",
        &env(&[
            ("OTEL_SERVICE_NAME", "a"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "9000"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317",
            ),
        ]),
    );
    assert_eq!(e.protocol, OtlpProtocol::Grpc);
    assert_eq!(e.sources["protocol"], "file");
    assert_eq!(e.timeout.as_secs(), 1);
    assert_eq!(e.endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!(
        e.resource["service.name"], "pinned",
        "telemetry.resource overrides all"
    );

    // Values attache cannot use warn and fall back.
    let e = t.effective(
        "attache",
        &env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4318"),
        ]),
    );
    assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(e.endpoint, None);
    assert_eq!(e.warnings.len(), 2, "{:?}", e.warnings);
}

#[test]
fn telemetry_settings_are_validated() {
    let errs = errors(&format!(
        "{MINIMAL}  telemetry:\n    otlp: {{ endpoint: \"ftp://c:4318\", headers: {{ \"bad name\": x }} }}\n    batch: {{ max_queue_size: 10, max_export_batch_size: 20 }}\n    url_query: hidden\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("spec.telemetry.url_query: unknown value `hidden` (expected one of `full`, `redacted`, `omit`)")),
        "{errs:?}"
    );
    let c = load(&format!(
        "{MINIMAL}  telemetry:\n    otlp: {{ endpoint: \"ftp://c:4318\", headers: {{ \"bad name\": x }} }}\n    batch: {{ max_queue_size: 10, max_export_batch_size: 20 }}\n"
    ));
    let errs: Vec<String> = match c {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    };
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.telemetry.otlp.endpoint")
                && e.contains("the scheme must be http or https")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("spec.telemetry.otlp.headers.bad name")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("max_export_batch_size: must not exceed max_queue_size (10)")),
        "{errs:?}"
    );
}

#[test]
fn idempotency_settings_are_validated_and_resolved_per_route() {
    let errs = errors(&format!(
        "{MINIMAL}  idempotency:
    store: redis://127.0.0.1:6379
    methods: [POST, GET]
    mismatch_status: 409
    replay_headers: [Set-Cookie, X-Trace-Tag]
    release_statuses: [429, 500]
    in_flight_wait: 2m
    routes:
      - {{ name: a, match: {{ path: /a }} }}
      - {{ name: a, match: {{ path: /b }}, cloudevents: {{ strict: true }} }}
"
    ));
    for want in [
        "spec.idempotency.scope_secret: required with a Redis store",
        "spec.idempotency.methods: GET cannot be enforced",
        "spec.idempotency.mismatch_status: must be 422 or 400",
        "spec.idempotency.replay_headers: Set-Cookie is never replayed",
        "spec.idempotency.release_statuses: 500 is not a 4xx status",
        "spec.idempotency.in_flight_wait: must be at most 60s",
        "spec.idempotency.routes[1].name: route names must be unique",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
    let c = load(&format!(
        "{MINIMAL}  idempotency:
    required: true
    retention: 1h
    routes:
      - {{ name: orders, match: {{ path_prefix: /orders }}, retention: 10m }}
      - {{ name: rest, match: {{ path_prefix: / }}, required: false }}
"
    ))
    .unwrap();
    let p = c.spec.idempotency.as_ref().unwrap().policies();
    assert_eq!(
        (
            p[0].route.as_str(),
            p[0].retention.0.as_secs(),
            p[0].required
        ),
        ("orders", 600, true)
    );
    assert_eq!((p[1].retention.0.as_secs(), p[1].required), (3600, false));
    assert_eq!(p[1].methods, ["POST", "PATCH"]);
    assert_eq!(p[1].mismatch_status, 422);
    assert_eq!(p[1].release_statuses, [401, 403, 407, 408, 425, 429]);
}

#[test]
fn flags_validation_names_each_field() {
    let errs = errors(
        "apiVersion: attache.dev/v1
kind: Sidecar
metadata: {name: shop}
spec:
  inbound: {app: http://127.0.0.1:8080}
  upstreams:
    checkout: {endpoints: [http://127.0.0.1:9000]}
  flags:
    sources:
      - {file: /f.json, url: http://x/}
      - {url: ftp://x/}
    context:
      targeting_key: [{header: x-user, cookie: uid}]
      attributes: [{header: x-plan, as: request.plan}, {baggage: t, as: targetingKeyX}]
    deliver:
      flags: [New_Checkout, new-checkout]
    trust_upstream_decisions: true
    routes:
      - {upstream: payments, flag: v, variants: {v2: checkout-v2}}
      - {upstream: app, flag: v, variants: {v2: checkout}}
    ofrep: {listen: 127.0.0.1:15006}
",
    );
    let expected = [
        "spec.flags.sources[0]: a source is exactly one of `file: PATH` or `url: URL`",
        "spec.flags.sources[1].url: \"ftp://x/\" is not an http:// or https:// URL",
        "spec.flags.context.targeting_key[0]: name exactly one of `header`, `cookie`, `query` or `baggage`",
        "spec.flags.context.attributes[0].as: \"request.plan\" is reserved",
        "spec.flags.context.attributes[1].as: \"targetingKeyX\" is reserved",
        "spec.flags.deliver.flags[1]: `new-checkout` and `New_Checkout` both map to the header x-flag-new-checkout",
        "spec.flags.trusted_peers: trust_upstream_decisions is true but no peer is trusted",
        "spec.flags.routes[0].upstream: upstream `payments` is not defined",
        "spec.flags.routes[0].variants.v2: upstream `checkout-v2` is not defined",
        "spec.flags.ofrep.listen: listen address 127.0.0.1:15006 clashes with `spec.inbound.listen`",
    ];
    for e in expected {
        assert!(
            errs.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    let errs = errors(
        "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: {app: http://127.0.0.1:8080}\n  flags: {sorces: []}\n",
    );
    assert!(
        errs[0].starts_with("spec.flags.sorces: unknown field `sorces`; did you mean `sources`?"),
        "{errs:?}"
    );
}

#[test]
fn flags_cidrs() {
    let c: crate::Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains("10.2.3.4".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(
        c.contains("::ffff:10.0.0.9".parse().unwrap()),
        "v4-mapped v6"
    );
    let one: crate::Cidr = "127.0.0.1".parse().unwrap();
    assert_eq!(one.prefix, 32);
    assert!("10.0.0.0/33".parse::<crate::Cidr>().is_err());
    let all: crate::Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("8.8.8.8".parse().unwrap()));
}

#[test]
fn upgrade_protocols_are_tokens_and_never_h2c() {
    let with = |list: &str| format!("{MINIMAL}  limits: {{ upgrade_protocols: {list} }}\n");
    let c = load(&with("[websocket, TLS/1.2]")).unwrap();
    assert_eq!(c.spec.limits.upgrade_protocols, ["websocket", "TLS/1.2"]);
    let h2c = errors(&with("[websocket, H2C]")).join("\n");
    assert!(
        h2c.contains("spec.limits.upgrade_protocols[1]") && h2c.contains("RFC 9113"),
        "{h2c}"
    );
    let bad = errors(&with("['web socket']")).join("\n");
    assert!(bad.contains("not a protocol name"), "{bad}");
    assert_eq!(
        load(MINIMAL).unwrap().spec.limits.upgrade_protocols,
        ["websocket"]
    );
}

#[test]
fn error_messages_never_quote_a_credential() {
    let env = |name: &str| (name == "PASS").then(|| "hunter2".to_owned());
    for app in [
        "'http://user:${PASS}@bad host:80'",
        "'http://user:${PASS}@host:80/path'",
        "'user:${PASS}@host:80'",
        "'ftp://user:pa/${PASS}@host'",
    ] {
        let text = MINIMAL.replace("http://127.0.0.1:8080", app);
        let e = load_str(&text, "t.yaml", &env).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{app}: {e}");
        assert!(e.contains("REDACTED"), "{app}: {e}");
        assert!(e.contains("spec.inbound.app"), "{app}: {e}");
    }
    assert_eq!(
        redact_text("invalid \"http://h/p?access_token=abc&x=1&sig=s\" (why)"),
        "invalid \"http://h/p?access_token=REDACTED&x=1&sig=REDACTED\" (why)"
    );
    assert_eq!(
        redact_text("no secrets: http://h:80/a"),
        "no secrets: http://h:80/a"
    );
}

#[test]
fn retry_policies_get_defaults_and_bad_ones_are_named() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ { upstream: pay } ]
  upstreams:
    pay: { endpoints: ['http://p:1'], retry: {} }
";
    let c = load(text).unwrap();
    let r = c.spec.upstreams["pay"].retry.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(r.backoff.0.as_millis(), 25);
    assert_eq!(r.max_backoff.0.as_millis(), 250);
    assert_eq!(r.statuses, [502, 503, 504]);
    assert_eq!(r.max_body_bytes.0, 64 * 1024);
    assert_eq!(r.per_try_timeout, None);
    assert_eq!((r.budget.ratio, r.budget.min_per_second), (0.2, 10));

    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ { upstream: pay } ]
  upstreams:
    pay:
      endpoints: ['http://p:1']
      retry: { attempts: 0, backoff: 1s, max_backoff: 100ms, statuses: [200, 503], per_try_timeout: 0s, budget: { ratio: 1.5 } }
";
    let errs = errors(text);
    let paths: Vec<&str> = errs
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        [
            "spec.upstreams.pay.retry.attempts",
            "spec.upstreams.pay.retry.backoff",
            "spec.upstreams.pay.retry.statuses[0]",
            "spec.upstreams.pay.retry.per_try_timeout",
            "spec.upstreams.pay.retry.budget.ratio",
        ],
        "{errs:?}"
    );
}

#[test]
fn ejection_defaults_and_bad_values() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ { upstream: pay } ]
  upstreams:
    pay: { endpoints: ['http://p:1'] }
";
    let c = load(text).unwrap();
    let e = c.spec.upstreams["pay"].ejection;
    assert_eq!(e.consecutive_failures, 5);
    assert_eq!(e.base_time.0.as_secs(), 10);
    assert_eq!(e.max_time.0.as_secs(), 300);
    assert_eq!(e.max_ejected_percent, 50);
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ { upstream: pay } ]
  upstreams:
    pay: { endpoints: ['http://p:1'], ejection: { base_time: 10m, max_time: 1m, max_ejected_percent: 150 } }
";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("spec.upstreams.pay.ejection.base_time"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("spec.upstreams.pay.ejection.max_ejected_percent"),
        "{errs:?}"
    );
}

#[test]
fn a_shard_key_is_one_source_and_a_path_has_a_group() {
    let up = |body: &str| {
        format!(
            "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ {{ upstream: pay }} ]
  upstreams:
    pay: {{ endpoints: ['http://p:1'], {body} }}
"
        )
    };
    assert!(load(&up("balance: shard, shard: { header: x-user }")).is_ok());
    let cases = [
        (
            "balance: shard",
            "spec.upstreams.pay.shard: `balance: shard` needs the key",
        ),
        (
            "balance: shard, shard: { header: x-user, baggage: u }",
            "spec.upstreams.pay.shard: needs exactly one of",
        ),
        (
            "balance: shard, shard: { path: '^/users/[^/]+' }",
            "spec.upstreams.pay.shard.path: needs a capture group",
        ),
        (
            "balance: shard, shard: { path: '^/users/(' }",
            "spec.upstreams.pay.shard.path: is not a regular expression",
        ),
        (
            "shard: { header: x-user }",
            "spec.upstreams.pay.shard: is read only with `balance: shard`",
        ),
    ];
    for (body, expected) in cases {
        let errs = errors(&up(body));
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{body}: {errs:?}"
        );
    }
}

#[test]
fn https_endpoints_and_their_tls_settings() {
    let text = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ { upstream: pay } ]
  upstreams:
    pay: { endpoints: ['https://pay.internal'], tls: { ca_file: /etc/ca.pem } }
";
    let c = load(text).unwrap();
    let up = &c.spec.upstreams["pay"];
    assert_eq!(up.endpoints[0].scheme, Scheme::Https);
    assert_eq!(up.endpoints[0].port, 443, "443 by default");
    assert_eq!(up.endpoints[0].to_string(), "https://pay.internal:443");
    let bad = "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ { upstream: pay } ]
  upstreams:
    pay: { endpoints: ['http://pay:80'], tls: { client_cert_file: /c.pem } }
";
    let errs = errors(bad);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter().all(|e| e.starts_with("spec.upstreams.pay.tls")),
        "{errs:?}"
    );
}

#[test]
fn rate_limits_read_rates_keys_and_matches() {
    let c = load(&format!(
        "{MINIMAL}  rate_limits:
    store: redis://127.0.0.1:6379
    limits:
      - {{ name: a, rate: 100/s }}
      - {{ name: b, rate: 5/10s, burst: 2, key: client_address, shared: true, on_store_error: deny }}
      - {{ name: c, rate: 600/min, key: {{ header: X-Tenant-Id }}, missing_key: skip,
          match: {{ methods: [post], path_prefix: /api/, path_regex: '/api/v[0-9]+/.*' }} }}
"
    ))
    .unwrap();
    let rl = c.spec.rate_limits.unwrap();
    assert_eq!(rl.store_timeout.to_string(), "50ms");
    let [a, b, cc] = &rl.limits[..] else {
        panic!("three limits")
    };
    assert_eq!(
        (a.rate.count, a.rate.per.as_secs(), a.burst()),
        (100, 1, 100)
    );
    assert_eq!(a.key, LimitKey::None);
    assert_eq!((b.rate.count, b.rate.per.as_secs(), b.burst()), (5, 10, 2));
    assert_eq!(b.on_store_error, OnStoreError::Deny);
    assert_eq!(cc.rate.to_string(), "600/m");
    assert_eq!(cc.key, LimitKey::Header("X-Tenant-Id".into()));
    assert_eq!(cc.missing_key, MissingKey::Skip);
    assert_eq!(cc.matches.methods, ["post"]);
}

#[test]
fn rate_limits_are_checked_with_the_field_at_fault() {
    let errs = errors(&format!(
        "{MINIMAL}  outbound: [ {{ listen: '127.0.0.1:15001', upstream: pay }} ]
  upstreams: {{ pay: {{ endpoints: ['http://127.0.0.1:9'] }}, other: {{ endpoints: ['http://127.0.0.1:9'] }} }}
  rate_limits:
    limits:
      - {{ name: a, rate: 0/s }}
      - {{ name: b, rate: 10/fortnight }}
      - {{ name: c, rate: 1/s, shared: true, burst: 0 }}
      - {{ name: c, rate: 1/s, key: {{ header: 'bad header' }} }}
      - {{ name: d, rate: 1/s, key: peer_identity }}
      - {{ name: e, rate: 1/s, match: {{ path_regex: '(', methods: ['GET POST'] }} }}
      - {{ name: f, rate: 1/s, match: {{ listener: outbound, upstream: other }} }}
      - {{ name: g, rate: 1/s, match: {{ upstream: pay }} }}
      - {{ name: 'h i', rate: 1/s }}
"
    ));
    let has = |path: &str, text: &str| {
        assert!(
            errs.iter().any(|e| e.starts_with(path) && e.contains(text)),
            "no error at {path} saying {text:?} in {errs:#?}"
        );
    };
    has(
        "spec.rate_limits.limits[0].rate",
        "the count must be at least 1",
    );
    has(
        "spec.rate_limits.limits[1].rate",
        "invalid rate \"10/fortnight\"",
    );
    // Each bad value is reported; the checks across fields wait for a file without them.
    assert_eq!(errs.len(), 2, "{errs:#?}");

    let errs = errors(&format!(
        "{MINIMAL}  outbound: [ {{ listen: '127.0.0.1:15001', upstream: pay }} ]
  upstreams: {{ pay: {{ endpoints: ['http://127.0.0.1:9'] }}, other: {{ endpoints: ['http://127.0.0.1:9'] }} }}
  rate_limits:
    limits:
      - {{ name: c, rate: 1/s, shared: true, burst: 0 }}
      - {{ name: c, rate: 1/s, key: {{ header: 'bad header' }} }}
      - {{ name: d, rate: 1/s, key: peer_identity }}
      - {{ name: e, rate: 1/s, match: {{ path_regex: '(', methods: ['GET POST'] }} }}
      - {{ name: f, rate: 1/s, match: {{ listener: outbound, upstream: other }} }}
      - {{ name: g, rate: 1/s, match: {{ upstream: pay }} }}
      - {{ name: 'h i', rate: 1/s }}
"
    ));
    let has = |path: &str, text: &str| {
        assert!(
            errs.iter().any(|e| e.starts_with(path) && e.contains(text)),
            "no error at {path} saying {text:?} in {errs:#?}"
        );
    };
    has("spec.rate_limits.limits[0].burst", "at least 1");
    has(
        "spec.rate_limits.limits[0].shared",
        "needs spec.rate_limits.store",
    );
    has(
        "spec.rate_limits.limits[1].name",
        "another limit is named \"c\"",
    );
    has(
        "spec.rate_limits.limits[1].key.header",
        "not a valid header name",
    );
    has("spec.rate_limits.limits[2].key", "client_ca_file");
    has(
        "spec.rate_limits.limits[3].match.path_regex",
        "not a regular expression",
    );
    has(
        "spec.rate_limits.limits[3].match.methods[0]",
        "not an HTTP method",
    );
    has(
        "spec.rate_limits.limits[4].match.upstream",
        "no outbound listener is bound to upstream `other`",
    );
    has(
        "spec.rate_limits.limits[5].match.upstream",
        "listener: outbound",
    );
    has("spec.rate_limits.limits[6].name", "printable ASCII");
    assert_eq!(errs.len(), 10, "{errs:#?}");
}

#[test]
fn push_delivery_is_refused_with_inbound_tls() {
    let errs = errors(
        "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound:\n    app: http://127.0.0.1:8080\n    tls: { cert_file: a.pem, key_file: k.pem }\n  context:\n    push: [ { context: shop, queue: orders, path: /events } ]\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("spec.context.push: delivers in plaintext"),
        "{errs:?}"
    );
}
