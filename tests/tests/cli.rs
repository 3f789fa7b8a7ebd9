//! The command line of the real binary: `validate`, `schema`, `dev`, `--version`, and how
//! `run` fails when it cannot start.

use std::process::Command;
use std::time::Duration;

use attache_tests::client::{get, http1};
use attache_tests::{App, Attache, Ports, TempDir, attache_bin, free_port, within};

fn validate(files: &[&std::path::Path]) -> (i32, String, String) {
    let mut cmd = Command::new(attache_bin());
    cmd.arg("validate");
    for f in files {
        cmd.arg("-c").arg(f);
    }
    let out = cmd.output().expect("run attache validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_lists_every_error_with_path_line_and_column() {
    let dir = TempDir::new();
    let typos = dir.write(
        "typos.yaml",
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  inbound:
    app: htp:/x
    lisen: 0.0.0.0:1
  limits:
    idle_timeout: forever
",
    );
    let refs = dir.write(
        "refs.yaml",
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound:
    - { listen: 127.0.0.1:15001, upstream: payments }
    - { listen: 127.0.0.1:15001, upstream: payments }
",
    );
    let syntax = dir.write(
        "syntax.yaml",
        "apiVersion: attache.dev/v1\nspec: [unclosed\n",
    );
    let env = dir.write(
        "env.yaml",
        "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: { app: 'http://${ATTACHE_TEST_SURELY_UNSET}:1' }\n",
    );
    let good = dir.write("good.yaml", "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: { app: 'http://127.0.0.1:8080' }\n");

    let (code, stdout, stderr) = validate(&[&good, &typos, &refs, &syntax, &env]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains("good.yaml: valid"), "{stdout}");
    for line in [
        "typos.yaml: 3 configuration errors",
        "  spec.inbound.app: invalid URL \"htp:/x\" (expected http://host:port) at line 5, column 10",
        "  spec.inbound.lisen: unknown field `lisen`; did you mean `listen`? at line 6, column 5",
        "  spec.limits.idle_timeout: invalid duration \"forever\" (write it like 500ms, 30s, 5m or 1h) at line 8, column 19",
        "refs.yaml: 3 configuration errors",
        "  spec.outbound[1].listen: listen address 127.0.0.1:15001 clashes with `spec.outbound[0].listen` at line 6, column 17",
        "  spec.outbound[0].upstream: upstream `payments` is not defined (add it under spec.upstreams) at line 5, column 44",
        "syntax.yaml: 1 configuration error",
        "  invalid YAML:",
        "env.yaml: 1 configuration error",
        "  spec.inbound.app: environment variable `ATTACHE_TEST_SURELY_UNSET` is not set",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }

    let examples: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    let refs: Vec<&std::path::Path> = examples.iter().map(|p| p.as_path()).collect();
    let (code, stdout, stderr) = validate(&refs);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches(": valid").count(), examples.len());
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = Command::new(attache_bin()).arg("schema").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/schema.json"
    ))
    .unwrap();
    assert!(
        out.stdout == committed,
        "config/schema.json is stale: run `cargo run -p attache -- schema > config/schema.json`"
    );
}

#[test]
fn version_and_help() {
    let out = Command::new(attache_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("attache {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(attache_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("attache dev --app 3000"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_without_an_app_serves_the_demo_echo() {
    let ports = Ports::new();
    let listen = format!("127.0.0.1:{}", ports.inbound);
    let admin = format!("127.0.0.1:{}", ports.admin);
    let mut a = Attache::spawn(
        ports,
        TempDir::new(),
        &["dev", "--listen", &listen, "--admin", &admin],
    );
    a.wait_ready();
    let got = within(10, get(&http1(), &a.url("/hello?name=dev")))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let v = got.json();
    assert_eq!(v["app"], "attache demo upstream");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["query"], "name=dev");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(
        a.log_text()
            .contains(&format!("curl -s http://{listen}/hello"))
    );
    // Without a config file there is nothing to reload: a SIGHUP (a closed terminal) ends it
    // cleanly, where the default action would have killed it mid-request.
    a.signal("HUP");
    let status = a.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        a.log_text()
            .contains("SIGHUP received: no config file to reload; exiting"),
        "{}",
        a.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_an_app_proxies_to_it() {
    let app = App::start("mine").await;
    let ports = Ports::new();
    let listen = format!("127.0.0.1:{}", ports.inbound);
    let admin = format!("127.0.0.1:{}", ports.admin);
    // A bare port is an app on this machine, as a developer types it.
    let port = app.addr.port().to_string();
    let mut a = Attache::spawn(
        ports,
        TempDir::new(),
        &[
            "dev", "--app", &port, "--listen", &listen, "--admin", &admin,
        ],
    );
    a.wait_ready();
    let got = within(10, get(&http1(), &a.url("/"))).await.unwrap();
    assert_eq!(got.json()["app"], "mine");
    assert!(
        a.log_text().contains(&format!(
            "attache dev is proxying http://{listen} -> http://127.0.0.1:{port}"
        )),
        "{}",
        a.log_text()
    );
    // The banner says what runs; the whole config is on /config, not in the terminal.
    assert!(!a.log_text().contains("effective configuration"));
}

#[test]
fn run_refuses_to_start_on_an_invalid_config_or_a_taken_port() {
    let dir = TempDir::new();
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: attache.dev/v1\nkind: Sidecar\nspec: {}\n",
    );
    let out = Command::new(attache_bin())
        .args(["run", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec: nothing to do"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.write(
        "taken.yaml",
        &format!("apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: {{ listen: '127.0.0.1:{port}', app: 'http://127.0.0.1:1' }}\n  admin: {{ listen: '127.0.0.1:{}' }}\n", free_port()),
    );
    let mut child = Command::new(attache_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attache kept running on a taken port"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let dir = TempDir::new();
    let config = dir.write(
        "config.yaml",
        &attache_tests::sidecar_config(ports, app.addr, ""),
    );
    let mut a = Attache::spawn(
        ports,
        dir,
        &[
            "run",
            "--log-format",
            "json",
            "-c",
            config.to_str().unwrap(),
        ],
    );
    a.wait_ready();
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let log = a.log_text();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
    }
    for expected in [
        "effective configuration",
        "listening",
        "attache is ready",
        "drained: all connections closed",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} in {messages:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_off_a_terminal_carry_no_colour_codes() {
    // `kubectl logs`, `docker logs` and a redirect to a file are not terminals: the default
    // text format must read as plain text there, not as ANSI escape sequences.
    let app = App::start("app").await;
    let ports = Ports::new();
    let dir = TempDir::new();
    let config = dir.write(
        "config.yaml",
        &attache_tests::sidecar_config(ports, app.addr, ""),
    );
    let mut a = Attache::spawn(ports, dir, &["run", "-c", config.to_str().unwrap()]);
    a.wait_ready();
    let log = a.log_text();
    assert!(
        !log.contains('\x1b'),
        "escape codes in a log file:\n{log:?}"
    );
    assert!(
        log.contains(&format!(
            "listening addr=127.0.0.1:{} role=\"inbound\"",
            ports.inbound
        )),
        "{log}"
    );
}

#[test]
fn dev_on_a_taken_port_says_which_flags_move_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new();
    let out = Command::new(attache_bin())
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen, --admin and --ofrep"), "{stderr}");
}

#[test]
fn validate_reads_standard_input() {
    use std::io::Write;
    let check = |text: &str| {
        let mut child = Command::new(attache_bin())
            .args(["validate", "-c", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = check(
        "apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: { app: 'http://127.0.0.1:8080' }\n",
    );
    assert_eq!((code, stdout.trim()), (Some(0), "<stdin>: valid"));
    let (code, _, stderr) =
        check("apiVersion: attache.dev/v1\nkind: Sidecar\nspec:\n  inbound: { ap: 'x' }\n");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("<stdin>") && stderr.contains("spec.inbound.ap"),
        "{stderr}"
    );
}
