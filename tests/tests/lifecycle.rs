//! Hot reload and graceful drain of the real binary.

use std::time::{Duration, Instant};

use attache_tests::client::{self, get, http1};
use attache_tests::{
    App, Attache, Ports, TempDir, eventually, free_port, metrics, sidecar_config, within,
};

/// Replaces a file the way editors and config tools do: write aside, then rename over.
fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn app_name(url: &str) -> String {
    match get(&http1(), url).await {
        Ok(g) if g.status == 200 => g.json()["app"].as_str().unwrap_or_default().to_owned(),
        Ok(g) => format!("status {}", g.status),
        Err(e) => e,
    }
}

/// Whether `sample` (`name{labels} value`) is in the admin port's `/metrics`, value and all.
fn metric(a: &Attache, sample: &str) -> bool {
    client::blocking_get(&a.admin_url("/metrics")).is_ok_and(|(_, m)| metrics::has(&m, sample))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_file_and_keeps_the_running_config_on_a_bad_one() {
    let (blue, green) = (App::start("blue").await, App::start("green").await);
    let a = Attache::sidecar(blue.addr, "");
    assert_eq!(app_name(&a.url("/")).await, "blue");

    replace_file(&a.config_path(), &sidecar_config(a.ports, green.addr, ""));
    assert!(
        eventually(10, async || app_name(&a.url("/")).await == "green").await,
        "the new app was never used"
    );
    assert!(metric(
        &a,
        "attache_config_reloads_total{result=\"success\"} 1"
    ));

    // An invalid file: the running config stays, the error is logged, counted and shown.
    let broken = sidecar_config(a.ports, blue.addr, "").replace("app: http://", "app: htp:/");
    replace_file(&a.config_path(), &broken);
    assert!(
        eventually(10, async || metric(
            &a,
            "attache_config_reloads_total{result=\"failure\"} 1"
        ))
        .await
    );
    assert_eq!(
        app_name(&a.url("/")).await,
        "green",
        "the running config is kept"
    );
    let (_, body) = client::blocking_get(&a.admin_url("/config")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let err = v["reload"]["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("spec.inbound.app: invalid URL") && err.contains("at line 7, column"),
        "{err}"
    );
    assert_eq!(
        v["config"]["spec"]["inbound"]["app"],
        format!("http://{}", green.addr)
    );
    assert!(
        a.log_text()
            .contains("config reload failed; keeping the running config")
    );

    // Fixing the file clears the error.
    replace_file(&a.config_path(), &sidecar_config(a.ports, blue.addr, ""));
    assert!(eventually(10, async || app_name(&a.url("/")).await == "blue").await);
    let (_, body) = client::blocking_get(&a.admin_url("/config")).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["reload"]["last_error"].is_null()
    );
}

/// A client connection kept open across a reload: its next request goes by the new config
/// (attache keeps the stack of the last request's snapshot per connection, and must notice
/// that the snapshot was replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_follows_a_reload() {
    use http_body_util::{BodyExt, Empty};

    let (blue, green) = (App::start("blue").await, App::start("green").await);
    let a = Attache::sidecar(blue.addr, "");
    let stream = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    let (mut conn, task) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(task);
    let mut app_on_this_connection = async || {
        conn.ready().await.unwrap();
        let req = http::Request::get("/")
            .header(http::header::HOST, "x")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = within(5, conn.send_request(req)).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["app"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(app_on_this_connection().await, "blue");

    replace_file(&a.config_path(), &sidecar_config(a.ports, green.addr, ""));
    assert!(
        eventually(10, async || metric(
            &a,
            "attache_config_reloads_total{result=\"success\"} 1"
        ))
        .await
    );
    assert_eq!(app_on_this_connection().await, "green");
    assert_eq!(app_on_this_connection().await, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_even_without_a_change() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    a.signal("HUP");
    assert!(
        eventually(10, async || metric(
            &a,
            "attache_config_reloads_total{result=\"success\"} 1"
        ))
        .await
    );
    assert_eq!(app_name(&a.url("/")).await, "app");
}

/// An idle attache reads its files only at its periodic checks: watching its config file and a
/// flag file costs at most the checks' reads (every 5 s, two reads per file) until one changes.
/// (With inotify, reading a file is an event too: each check of the file used to wake the
/// next, about 20 read calls a second for as long as attache ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_attache_reads_its_files_only_at_periodic_checks() {
    let app = App::start("app").await;
    let dir = attache_tests::TempDir::new();
    let flags = dir.write(
        "flags.json",
        r#"{"flags": {"on": {"state": "ENABLED", "variants": {"y": true}, "defaultVariant": "y"}}}"#,
    );
    let a = Attache::sidecar(
        app.addr,
        &format!(
            "  flags:\n    sources: [ {{ file: '{}' }} ]\n    ofrep: null\n",
            flags.display()
        ),
    );
    assert_eq!(app_name(&a.url("/")).await, "app");
    let reads = || -> u64 {
        std::fs::read_to_string(format!("/proc/{}/io", a.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("syscr: ")?.trim().parse().ok())
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = reads();
    assert!(before > 0, "/proc/<pid>/io is readable");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // At most the periodic checks (every 5 s) of the two files, two reads each.
    let during = reads() - before;
    assert!(during <= 4, "{during} read calls in 3 idle seconds");
    // And a change is still seen.
    replace_file(
        &a.config_path(),
        &std::fs::read_to_string(a.config_path())
            .unwrap()
            .replace("name: e2e", "name: e2e-renamed"),
    );
    assert!(
        eventually(10, async || metric(
            &a,
            "attache_config_reloads_total{result=\"success\"} 1"
        ))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap_is_picked_up() {
    // A ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/.
    // An update writes a new timestamped directory and atomically re-points ..data.
    let (old, new) = (App::start("old").await, App::start("new").await);
    let ports = Ports::new();
    let dir = attache_tests::TempDir::new();
    let v1 = dir.path().join("..2026_11_23_v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("config.yaml"), sidecar_config(ports, old.addr, "")).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", dir.path().join("config.yaml")).unwrap();
    let config = dir.path().join("config.yaml");
    let mut a = Attache::spawn(
        ports,
        attache_tests::TempDir::new(),
        &["run", "-c", config.to_str().unwrap()],
    );
    a.wait_ready();
    assert_eq!(app_name(&a.url("/")).await, "old");

    let v2 = dir.path().join("..2026_11_23_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("config.yaml"), sidecar_config(ports, new.addr, "")).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    assert!(eventually(10, async || app_name(&a.url("/")).await == "new").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_is_rebound_without_dropping_open_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    // A kept-alive connection on the old port.
    let mut kept = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    kept.write_all(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(5, kept.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let moved = Ports {
        inbound: free_port(),
        ..a.ports
    };
    replace_file(&a.config_path(), &sidecar_config(moved, app.addr, ""));
    let new_url = format!("http://127.0.0.1:{}/", moved.inbound);
    assert!(
        eventually(10, async || app_name(&new_url).await == "app").await,
        "the new address never served"
    );
    // The old port no longer accepts...
    assert!(
        tokio::net::TcpStream::connect(a.inbound()).await.is_err(),
        "the old address still accepts"
    );
    // ...but the connection opened before the change is still served.
    kept.write_all(b"GET /2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within(5, kept.read_to_end(&mut rest)).await.unwrap();
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_finishes_every_in_flight_request() {
    drain_under_load(2).await;
}

/// The same with one worker, where attache runs tokio's current-thread scheduler (as the
/// Kubernetes sidecar manifest configures it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_finishes_every_in_flight_request_on_one_worker() {
    drain_under_load(1).await;
}

async fn drain_under_load(workers: usize) {
    let app = App::start("app").await;
    let mut a = Attache::sidecar_on(app.addr, "  drain: { grace_period: 10s }\n", workers);
    let c = http1();
    // Warm keep-alive connections, then 60 requests that take 1 s each at the app.
    let mut inflight = Vec::new();
    for i in 0..60 {
        let (c, url) = (c.clone(), a.url(&format!("/slow/1000?{i}")));
        inflight.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    assert!(
        eventually(5, async || app.hits() == 60).await,
        "all requests reached the app"
    );
    // A client that connected and has said nothing yet does not hold the drain up (its
    // header-read deadline is 10 s).
    let mut silent = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    a.signal("TERM");
    let started = Instant::now();
    // /ready fails at once, while the admin port stays up.
    assert!(
        eventually(2, async || client::blocking_get(&a.admin_url("/ready"))
            .is_ok_and(|(s, b)| s == 503 && b == "draining\n"))
        .await
    );
    let mut ok = 0;
    for r in inflight {
        let got = within(15, r)
            .await
            .unwrap()
            .expect("an in-flight request failed during drain");
        assert_eq!(got.status, 200);
        ok += 1;
    }
    assert_eq!(ok, 60);
    let status = a
        .wait_exit(Duration::from_secs(10))
        .expect("attache did not exit after draining");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain waited for the requests, not the grace period"
    );
    assert!(tokio::net::TcpStream::connect(a.inbound()).await.is_err());
    let mut buf = [0u8; 64];
    let n = within(1, tokio::io::AsyncReadExt::read(&mut silent, &mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the silent connection was closed without a response");
    assert!(a.log_text().contains("drained: all connections closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_serving_while_not_ready() {
    let app = App::start("app").await;
    let mut a = Attache::sidecar(app.addr, "  drain: { delay: 1500ms, grace_period: 5s }\n");
    a.signal("TERM");
    assert!(
        eventually(2, async || client::blocking_get(&a.admin_url("/ready"))
            .is_ok_and(|(s, _)| s == 503))
        .await
    );
    // Not ready, but still serving new requests until the delay is over.
    let got = within(5, get(&http1(), &a.url("/during-delay")))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let status = a
        .wait_exit(Duration::from_secs(10))
        .expect("attache did not exit");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_bounds_the_drain() {
    let app = App::start("app").await;
    let mut a = Attache::sidecar(app.addr, "  drain: { grace_period: 500ms }\n");
    let url = a.url("/slow/5000");
    let slow = tokio::spawn(async move { get(&http1(), &url).await });
    assert!(eventually(5, async || app.hits() == 1).await);
    a.signal("TERM");
    let started = Instant::now();
    let status = a
        .wait_exit(Duration::from_secs(5))
        .expect("attache outlived its grace period");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        within(10, slow).await.unwrap().is_err(),
        "the cut request fails rather than hanging"
    );
    assert!(a.log_text().contains("grace period over"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    // Started as many systems start processes: a soft limit far under the hard one.
    let app = App::start("app").await;
    for (limits, soft, warned) in [("256:8192", 8192, false), ("256:256", 256, true)] {
        let ports = Ports::new();
        let dir = TempDir::new();
        let config = dir.write(
            "config.yaml",
            &attache_tests::sidecar_config(ports, app.addr, ""),
        );
        let nofile = format!("--nofile={limits}");
        let mut a = Attache::spawn_under(
            ports,
            dir,
            &["prlimit", &nofile],
            &["run", "-c", config.to_str().unwrap()],
        );
        a.wait_ready();
        let proc_limits = std::fs::read_to_string(format!("/proc/{}/limits", a.pid())).unwrap();
        let line = proc_limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let now: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(now[3], soft.to_string(), "{limits}: {line}");
        assert_eq!(
            a.log_text().contains("the open-file limit is low"),
            warned,
            "{limits}: {}",
            a.log_text()
        );
        let got = within(10, get(&http1(), &a.url("/"))).await.unwrap();
        assert_eq!(got.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_access_log_output_loses_lines_countably_and_nothing_else() {
    // stdout is a pipe nobody reads any more (`attache run ... | head -1` after head exits).
    let app = App::start("app").await;
    let ports = Ports::new();
    let dir = TempDir::new();
    let config = dir.write(
        "config.yaml",
        &attache_tests::sidecar_config(ports, app.addr, ""),
    );
    let mut child = std::process::Command::new(attache_tests::attache_bin())
        .args(["run", "-c", config.to_str().unwrap()])
        .env("ATTACHE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let admin = format!("http://127.0.0.1:{}/metrics", ports.admin);
    assert!(
        eventually(10, async || get(&http1(), &admin).await.is_ok()).await,
        "attache did not start"
    );
    for _ in 0..3 {
        let got = within(
            10,
            get(&http1(), &format!("http://127.0.0.1:{}/", ports.inbound)),
        )
        .await
        .unwrap();
        assert_eq!(got.status, 200, "requests are served");
    }
    let counted = eventually(5, async || {
        get(&http1(), &admin)
            .await
            .is_ok_and(|m| metrics::has(&m.text(), "attache_access_log_dropped_total 3"))
    })
    .await;
    let _ = child.kill();
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let _ = child.wait();
    assert!(counted, "the three lost lines are counted");
    assert!(stderr.contains("the access log output failed"), "{stderr}");
}
