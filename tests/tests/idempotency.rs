//! Idempotency-Key enforcement through the real binary (`specs/idempotency.md` §10), with the
//! memory store and with a real redis-server. The app counts the requests that reached it.

use std::time::Duration;

use attache_tests::client::{Got, http1, send};
use attache_tests::redis::Redis;
use attache_tests::{App, Attache, Ports, sidecar_config, within};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

async fn post(a: &Attache, path: &str, key: Option<&str>, body: &str) -> Got {
    request(a, "POST", path, key, body).await
}

async fn request(a: &Attache, method: &str, path: &str, key: Option<&str>, body: &str) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(a.url(path))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    within(
        15,
        send(
            &http1(),
            req.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
        ),
    )
    .await
    .unwrap()
}

fn assert_problem(got: &Got, status: u16, name: &str) {
    assert_eq!(got.status, status, "{}", got.text());
    assert_eq!(got.headers["content-type"], "application/problem+json");
    assert_eq!(got.headers["cache-control"], "no-store", "case 42");
    assert_eq!(
        got.json()["type"],
        format!("https://attache.dev/problems/{name}")
    );
}

fn with_idempotency(app: &App, idem: &str) -> Attache {
    let ports = Ports::new();
    Attache::run(
        ports,
        &sidecar_config(ports, app.addr, &format!("  idempotency:\n{idem}")),
    )
}

/// Cases 9–12, 14, 15, 17: the first request runs, its retries replay it.
async fn first_runs_and_retries_replay(a: &Attache, app: &App) {
    let first = post(a, "/created?a=1&b=2", Some("K1"), "{\"x\":1}").await;
    assert_eq!(first.status, 201);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    assert_eq!(first.headers["set-cookie"], "session=1");
    assert_eq!(app.hits(), 1);

    let again = post(a, "/created?b=2&a=1", Some("\"K1\""), "{\"x\":1}").await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body, "the same bytes");
    assert_eq!(again.headers["location"], "/orders/1");
    assert_eq!(again.headers["etag"], "\"v1\"");
    assert_eq!(
        again.headers["content-length"],
        first.body.len().to_string()
    );
    assert_eq!(again.headers["cache-control"], "no-store");
    assert!(again.headers.contains_key("date"), "a fresh Date");
    for gone in ["set-cookie", "x-request-id"] {
        assert!(
            !again.headers.contains_key(gone),
            "{gone} is never replayed"
        );
    }
    let links: Vec<_> = again.headers.get_all("link").iter().collect();
    assert_eq!(links.len(), 2, "case 13: field lines are kept one by one");
    assert_eq!(links[0], "</a>; rel=\"x, y\"");
    assert_eq!(app.hits(), 1, "the retry did not reach the app");

    // Case 14/15: the same key with another request.
    let other = post(a, "/created?a=1&b=2", Some("K1"), "{\"x\":2}").await;
    assert_problem(&other, 422, "idempotency-key-reused");
    let dry = post(a, "/created?a=1&b=2&dry=1", Some("K1"), "{\"x\":1}").await;
    assert_problem(&dry, 422, "idempotency-key-reused");
    let patch = request(a, "PATCH", "/created?a=1&b=2", Some("K1"), "{\"x\":1}").await;
    assert_problem(&patch, 422, "idempotency-key-reused");
    assert_eq!(app.hits(), 1);
}

/// Cases 1–4, 6, 8, 24, 25.
async fn admission_and_release(a: &Attache, app: &App) {
    let before = app.hits();
    // Case 1: GET is not enforced.
    let get = request(a, "GET", "/x", Some("K2"), "").await;
    assert_eq!(get.status, 200);
    assert_eq!(
        get.json()["headers"]["idempotency-key"],
        "K2",
        "the key is never stripped"
    );
    // Case 2: no key on an optional route.
    let none = post(a, "/x", None, "{}").await;
    assert_eq!(none.status, 200);
    assert!(!none.headers.contains_key("idempotent-replayed"));
    // Case 4: invalid keys.
    for bad in ["a b", &"k".repeat(256), "a, b"] {
        assert_problem(
            &post(a, "/x", Some(bad), "{}").await,
            400,
            "idempotency-key-invalid",
        );
    }
    assert!(post(a, "/x", Some(&"k".repeat(255)), "{}").await.status == 200);
    assert_eq!(app.hits(), before + 3);

    // Case 24: 400 is stored; 429 and 503 release the key.
    let before = app.hits();
    assert_eq!(post(a, "/status/400", Some("K400"), "{}").await.status, 400);
    let replay = post(a, "/status/400", Some("K400"), "{}").await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    for code in ["429", "503"] {
        let path = format!("/status/{code}");
        let key = format!("K{code}");
        post(a, &path, Some(&key), "{}").await;
        let again = post(a, &path, Some(&key), "{}").await;
        assert!(!again.headers.contains_key("idempotent-replayed"), "{code}");
    }
    assert_eq!(app.hits(), before + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_enforces_keys() {
    let app = App::start("app").await;
    let a = with_idempotency(&app, "    max_request_bytes: 1KiB\n");
    first_runs_and_retries_replay(&a, &app).await;
    admission_and_release(&a, &app).await;

    // Case 8: a keyed body over the limit; unkeyed passes.
    let before = app.hits();
    let big = "x".repeat(2048);
    assert_problem(
        &post(&a, "/x", Some("big"), &big).await,
        413,
        "idempotency-request-too-large",
    );
    assert_eq!(post(&a, "/x", None, &big).await.status, 200);
    assert_eq!(app.hits(), before + 1);

    a.assert_metrics(&[
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"replayed\"} 2",
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"mismatch_422\"} 3",
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"released\"} 4",
        "attache_idempotency_store_duration_seconds_count{op=\"claim\",result=\"ok\"} 12",
        "attache_idempotency_store_duration_seconds_count{op=\"complete\",result=\"ok\"} 3",
        "attache_idempotency_store_duration_seconds_count{op=\"release\",result=\"ok\"} 4",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_routes_and_in_flight_conflicts() {
    let app = App::start("app").await;
    let a = with_idempotency(
        &app,
        "    routes:\n      - { name: orders, match: { path_prefix: /slow }, required: true }\n",
    );
    // Case 3.
    assert_problem(
        &post(&a, "/slow/10", None, "{}").await,
        400,
        "idempotency-key-missing",
    );
    assert_eq!(app.hits(), 0);
    // Unmatched paths are not enforced.
    assert_eq!(post(&a, "/other", None, "{}").await.status, 200);

    // Case 19/20: a duplicate while the first runs gets 409; another body 422.
    let url = a.url("/slow/1500");
    let first = tokio::spawn(async move {
        let req = Request::post(url)
            .header("idempotency-key", "K19")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        send(&http1(), req).await.unwrap()
    });
    // The first is at the app (after /other): it holds the key.
    app.wait_hits(2).await;
    let dup = post(&a, "/slow/1500", Some("K19"), "{}").await;
    assert_problem(&dup, 409, "idempotency-request-in-progress");
    assert_eq!(dup.headers["retry-after"], "1");
    let other = post(&a, "/slow/1500", Some("K19"), "{\"other\":1}").await;
    assert_problem(&other, 422, "idempotency-key-reused");
    let first = within(10, first).await.unwrap();
    assert_eq!(first.status, 200);
    // Case 30: a retry right after the whole response replays.
    let after = post(&a, "/slow/1500", Some("K19"), "{}").await;
    assert_eq!(after.headers["idempotent-replayed"], "true");
    assert_eq!(app.hits(), 2, "/other and the first /slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_does_not_cancel_the_exchange() {
    // Case 27.
    let app = App::start("app").await;
    let a = with_idempotency(&app, "    retention: 1h\n");
    let url = a.url("/slow/1000");
    let gone = tokio::spawn(async move {
        let req = Request::post(url)
            .header("idempotency-key", "K27")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let _ = send(&http1(), req).await;
    });
    // The client leaves once its request is at the app.
    app.wait_hits(1).await;
    gone.abort();
    // Retries get 409 while the exchange runs on without its client, then its replay.
    let mut retry = post(&a, "/slow/1000", Some("K27"), "{}").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while retry.status == 409 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        retry = post(&a, "/slow/1000", Some("K27"), "{}").await;
    }
    assert_eq!(retry.status, 200);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_app_releases_the_key() {
    // Case 25: nothing reached the app, so the key is free: the retry is a 502 again, not 409.
    let dead = Ports::new().inbound;
    let ports = Ports::new();
    let dead_app = std::net::SocketAddr::from(([127, 0, 0, 1], dead));
    let a = Attache::run(
        ports,
        &sidecar_config(ports, dead_app, "  idempotency: {}\n"),
    );
    for _ in 0..2 {
        let got = post(&a, "/x", Some("K25"), "{}").await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(
            got.json()["type"],
            "https://attache.dev/problems/upstream-unreachable"
        );
    }
}

fn redis_config(redis: &Redis, extra: &str) -> String {
    format!(
        "    store: {}\n    scope_secret: test-secret\n{extra}",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_enforces_keys_in_two_round_trips() {
    let redis = Redis::start();
    let app = App::start("app").await;
    let a = with_idempotency(&app, &redis_config(&redis, "    max_request_bytes: 1KiB\n"));
    first_runs_and_retries_replay(&a, &app).await;
    admission_and_release(&a, &app).await;

    // §11: first = 2 round trips (claim, complete), replay = 1, no key = 0.
    let calls = || redis.calls("evalsha") + redis.calls("eval");
    let before = calls();
    post(&a, "/created", Some("RT"), "{}").await;
    assert_eq!(calls() - before, 2, "a first keyed request");
    let before = calls();
    post(&a, "/created", Some("RT"), "{}").await;
    assert_eq!(calls() - before, 1, "a replay");
    let before = calls();
    post(&a, "/created", None, "{}").await;
    assert_eq!(calls() - before, 0, "no key");

    // Case 38: no Redis key holds the raw key or a credential.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.lines().all(|k| k.starts_with("idem:{")), "{keys}");
    assert!(!keys.contains("K1") && !keys.contains("RT"), "{keys}");

    // Case 34: a foreign value at a record key gets 503 and is never overwritten.
    redis.cli(&["FLUSHALL"]);
    post(&a, "/created", Some("F34"), "{}").await;
    let record = redis.cli(&["KEYS", "*"]).trim().to_owned();
    redis.cli(&["DEL", &record]);
    redis.cli(&["SET", &record, "not-a-hash"]);
    let got = post(&a, "/created", Some("F34"), "{}").await;
    assert_problem(&got, 503, "idempotency-store-unavailable");
    assert_eq!(redis.cli(&["GET", &record]).trim(), "not-a-hash");
    redis.cli(&["DEL", &record]);
    redis.cli(&["HSET", &record, "v", "9", "st", "done"]);
    let got = post(&a, "/created", Some("F34"), "{}").await;
    assert_problem(&got, 503, "idempotency-store-unavailable");
    assert_eq!(redis.cli(&["HGET", &record, "v"]).trim(), "9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_retention_waiting_and_limits() {
    let app = App::start("app").await;
    let a = with_idempotency(
        &app,
        "    retention: 2s
    memory_max_records: 3
    routes:
      - { name: wait, match: { path_prefix: /slow }, in_flight_wait: 3s }
      - { name: all, match: { path_prefix: / } }
",
    );
    // Case 38: one key from two principals names two records.
    let with_auth = |auth: &'static str| {
        let url = a.url("/created");
        async move {
            let req = Request::post(url)
                .header("idempotency-key", "K38")
                .header("authorization", auth)
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&http1(), req).await.unwrap()
        }
    };
    assert!(
        !with_auth("Bearer alice")
            .await
            .headers
            .contains_key("idempotent-replayed")
    );
    assert!(
        !with_auth("Bearer bob")
            .await
            .headers
            .contains_key("idempotent-replayed")
    );
    assert!(
        with_auth("Bearer bob")
            .await
            .headers
            .contains_key("idempotent-replayed")
    );
    assert_eq!(app.hits(), 2);

    // Case 22: a duplicate waits for the first and gets its replay.
    let url = a.url("/slow/1000");
    let first = tokio::spawn(keyed(url, "K22"));
    app.wait_hits(3).await;
    let dup = request_raw(&a, "/slow/1000", "K22").await;
    assert_eq!(dup.status, 200);
    assert_eq!(
        dup.headers["idempotent-replayed"], "true",
        "waited, then replayed"
    );
    assert_eq!(within(10, first).await.unwrap().status, 200);
    assert_eq!(app.hits(), 3);

    // Case 37: the memory store is full at 3 live records: new keys get 503, old ones replay.
    let got = request_raw(&a, "/created", "K37").await;
    assert_eq!(
        got.json()["type"],
        "https://attache.dev/problems/idempotency-store-unavailable"
    );
    assert_eq!(got.status, 503);
    assert!(
        with_auth("Bearer bob")
            .await
            .headers
            .contains_key("idempotent-replayed")
    );

    // Case 23: after the retention (2 s) the key runs anew (and frees room): until then each
    // retry is a replay that never reaches the app.
    let stored_at = std::time::Instant::now();
    let mut replays = 0;
    while with_auth("Bearer bob")
        .await
        .headers
        .contains_key("idempotent-replayed")
    {
        replays += 1;
        assert!(
            stored_at.elapsed() < Duration::from_secs(10),
            "never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replays > 0, "replayed within the retention");
    assert_eq!(app.hits(), 4);
}

async fn request_raw(a: &Attache, path: &str, key: &str) -> Got {
    let req = Request::post(a.url(path))
        .header("idempotency-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    within(15, send(&http1(), req)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcomes_hold_the_key_and_big_responses_leave_tombstones() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let extra = "  timeouts: { request: 500ms }
  idempotency:
    lease_grace: 1s
    max_response_bytes: 1KiB
";
    let a = Attache::run(ports, &sidecar_config(ports, app.addr, extra));
    // Case 26: the app hangs past the timeout after reading the request: 504, and the key is
    // held for the lease (timeout + grace), then free.
    let got = request_raw(&a, "/slow/3000", "K26").await;
    assert_problem(&got, 504, "idempotency-outcome-unknown");
    assert_eq!(got.headers["retry-after"], "2");
    let again = request_raw(&a, "/slow/3000", "K26").await;
    assert_problem(&again, 409, "idempotency-request-in-progress");
    let after = request_raw(&a, "/slow/10", "K26b").await;
    assert_eq!(after.status, 200, "other keys are served meanwhile");
    // Retries get 409 for the lease (timeout + grace, 1.5 s), then the key runs again.
    let hits = app.hits();
    let mut retried = request_raw(&a, "/slow/3000", "K26").await;
    let mut held = 0;
    while retried.status == 409 {
        held += 1;
        assert!(held < 200, "the key was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
        retried = request_raw(&a, "/slow/3000", "K26").await;
    }
    assert!(held > 0, "held for the lease");
    assert_problem(&retried, 504, "idempotency-outcome-unknown");
    assert_eq!(app.hits(), hits + 1, "after the lease the key ran again");

    // Case 31: a response over max_response_bytes reaches the first caller whole; a retry gets
    // the status and headers only.
    let before = app.hits();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    let first = request_body(&a, "/big/4096", "K31", &big).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 4096, "the first caller got it whole");
    let retry = request_body(&a, "/big/4096", "K31", &big).await;
    assert_eq!(retry.status, 200);
    assert!(retry.body.is_empty());
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.headers["idempotency-response-stored"], "false");
    assert_eq!(app.hits(), before + 1);
}

async fn request_body(a: &Attache, path: &str, key: &str, body: &str) -> Got {
    let req = Request::post(a.url(path))
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    within(15, send(&http1(), req)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_or_open() {
    // Case 32.
    let mut redis = Redis::start();
    let app = App::start("app").await;
    let closed = with_idempotency(&app, &redis_config(&redis, "    store_timeout: 300ms\n"));
    let open = with_idempotency(
        &app,
        &redis_config(&redis, "    store_timeout: 300ms\n    fail_open: true\n"),
    );
    assert_eq!(
        post(&closed, "/created", Some("up"), "{}").await.status,
        201
    );
    redis.stop();
    let before = app.hits();
    let got = post(&closed, "/created", Some("down"), "{}").await;
    assert_problem(&got, 503, "idempotency-store-unavailable");
    assert_eq!(got.headers["retry-after"], "1");
    assert_eq!(app.hits(), before, "nothing forwarded");
    let got = post(&open, "/created", Some("down"), "{}").await;
    assert_eq!(got.status, 201);
    assert_eq!(got.headers["idempotency-enforced"], "false");
    assert_eq!(app.hits(), before + 1);
}

/// Issue 20, risks: a Redis outage fails every keyed request; each is counted, but the log
/// gets one line per `telemetry.error_log_interval`, saying how many it held back, not one
/// per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_once_per_interval_and_counted_every_time() {
    let mut redis = Redis::start();
    let app = App::start("app").await;
    let a = with_idempotency(&app, &redis_config(&redis, "    store_timeout: 300ms\n"));
    assert_eq!(post(&a, "/created", Some("up"), "{}").await.status, 201);
    redis.stop();
    for i in 0..40 {
        let got = post(&a, "/created", Some(&format!("down-{i}")), "{}").await;
        assert_problem(&got, 503, "idempotency-store-unavailable");
    }
    a.assert_metrics(&[
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"store_error\"} 40",
    ]);
    let log = a.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("idempotency claim"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line for 40 failures (interval 1m):\n{log}"
    );
    assert!(lines[0].contains("suppressed=0"), "{}", lines[0]);
}

/// Issue 20, risks: with cookie or API-key authentication (no `Authorization`), one user's
/// key must not replay another user's stored response. Those credentials are part of the
/// scope by default; `scope_credentials: false` is the old behaviour, shown here for contrast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_told_apart_by_cookie_or_api_key_never_share_a_record() {
    let app = App::start("app").await;
    let keyed = |a: &Attache, credential: (&str, &str)| {
        Request::post(a.url("/created"))
            .header("content-type", "application/json")
            .header("idempotency-key", "order-1")
            .header(credential.0, credential.1)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let a = with_idempotency(&app, "    store: memory\n");
    for (alice, bob) in [
        (("cookie", "session=alice"), ("cookie", "session=bob")),
        (("x-api-key", "alice-key"), ("x-api-key", "bob-key")),
    ] {
        let first = within(10, send(&http1(), keyed(&a, alice))).await.unwrap();
        assert_eq!(first.status, 201, "{}", first.text());
        let before = app.hits();
        let other = within(10, send(&http1(), keyed(&a, bob))).await.unwrap();
        assert_eq!(other.status, 201, "{}", other.text());
        assert!(
            !other.headers.contains_key("idempotent-replayed"),
            "{:?}",
            other.headers
        );
        assert_eq!(app.hits(), before + 1, "bob's request ran");
        let again = within(10, send(&http1(), keyed(&a, alice))).await.unwrap();
        assert_eq!(
            again.headers["idempotent-replayed"], "true",
            "alice's retry replays"
        );
        assert_eq!(again.body, first.body);
    }

    let shared = with_idempotency(&app, "    store: memory\n    scope_credentials: false\n");
    let first = within(
        10,
        send(&http1(), keyed(&shared, ("cookie", "session=alice"))),
    )
    .await
    .unwrap();
    let other = within(
        10,
        send(&http1(), keyed(&shared, ("cookie", "session=bob"))),
    )
    .await
    .unwrap();
    assert_eq!(other.headers["idempotent-replayed"], "true");
    assert_eq!(other.body, first.body, "without it, one record for both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_through_two_proxies_run_once() {
    // Case 21: 200 identical keyed POSTs through two attache processes sharing Redis.
    let redis = Redis::start();
    two_proxies_run_once(&redis_config(&redis, "")).await;
}

async fn two_proxies_run_once(config: &str) {
    let app = App::start("app").await;
    let a = with_idempotency(&app, config);
    let b = with_idempotency(&app, config);
    let urls = [a.url("/slow/300"), b.url("/slow/300")];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = urls[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::post(url)
                .header("idempotency-key", "K21")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            send(&http1(), req).await
        }));
    }
    let (mut ran, mut replayed, mut conflicts) = (0, 0, 0);
    for t in tasks {
        let got = within(30, t).await.unwrap().expect("no response lost");
        match (got.status, got.headers.contains_key("idempotent-replayed")) {
            (200, false) => ran += 1,
            (200, true) => replayed += 1,
            (409, _) => conflicts += 1,
            other => panic!("unexpected answer {other:?}: {}", got.text()),
        }
    }
    assert_eq!(ran, 1, "exactly one request ran");
    assert_eq!(ran + replayed + conflicts, 200);
    assert_eq!(app.hits(), 1, "the app ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_warned_about_or_refused() {
    // Case 36.
    let redis = Redis::start_on(
        attache_tests::free_port(),
        &["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"],
    );
    let app = App::start("app").await;
    let a = with_idempotency(&app, &redis_config(&redis, ""));
    assert!(
        attache_tests::eventually(5, async || a.log_text().contains("may evict")).await,
        "{}",
        a.log_text()
    );
    let ports = Ports::new();
    let config = sidecar_config(
        ports,
        app.addr,
        &format!(
            "  idempotency:\n{}",
            redis_config(&redis, "    eviction_check: refuse\n")
        ),
    );
    let dir = attache_tests::TempDir::new();
    let path = dir.write("config.yaml", &config);
    let mut refused = Attache::spawn(ports, dir, &["run", "-c", path.to_str().unwrap()]);
    let status = refused.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    assert!(
        refused.log_text().contains("maxmemory-policy allkeys-lru"),
        "{}",
        refused.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_spans_carry_the_idempotency_outcome() {
    use attache_tests::otlp::{Collector, Protocol};
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let a = with_idempotency(
        &app,
        &format!(
            "    routes: [ {{ name: orders, match: {{ path_prefix: / }} }} ]\n  telemetry:\n    otlp: {{ endpoint: '{}' }}\n    batch: {{ scheduled_delay: 100ms }}\n",
            collector.endpoint()
        ),
    );
    post(&a, "/created", Some("KS"), "{}").await;
    post(&a, "/created", Some("KS"), "{}").await;
    let spans = collector.wait_spans(2, 10).await;
    let outcome = |s: &attache_tests::otlp::Received| s.attr("attache.idempotency.outcome");
    let first = spans
        .iter()
        .find(|s| outcome(s).as_deref() == Some("completed"))
        .expect("first");
    let replay = spans
        .iter()
        .find(|s| outcome(s).as_deref() == Some("replayed"))
        .expect("replay");
    assert_eq!(
        first.attr("attache.idempotency.route").as_deref(),
        Some("orders")
    );
    assert_eq!(
        first.attr("attache.idempotency.replayed").as_deref(),
        Some("false")
    );
    assert_eq!(
        replay.attr("attache.idempotency.replayed").as_deref(),
        Some("true")
    );
    let record = first.attr("attache.idempotency.record").unwrap();
    assert_eq!(record.len(), 16);
    assert_eq!(replay.attr("attache.idempotency.record").unwrap(), record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_options_change_what_counts_as_the_same_request() {
    let redis = Redis::start();
    let app = App::start("app").await;
    let a = with_idempotency(
        &app,
        &redis_config(
            &redis,
            "    routes:
      - { name: strict, match: { path_prefix: /strict }, strict_sf: true }
      - { name: canonical, match: { path_prefix: /canonical }, fingerprint_body: json_canonical }
      - { name: five, match: { path_prefix: /status }, store_5xx: true }
      - { name: by-route, match: { path_prefix: /by-route }, scope_by_route: true }
      - { name: rest, match: { path_prefix: / } }
",
        ),
    );
    // Case 5: an over-long key never reaches the store.
    let before = redis.calls("evalsha") + redis.calls("eval");
    assert_problem(
        &post(&a, "/x", Some(&"k".repeat(256)), "{}").await,
        400,
        "idempotency-key-invalid",
    );
    assert_eq!(redis.calls("evalsha") + redis.calls("eval"), before);
    // Case 7: strict_sf refuses bare keys, accepts strings.
    assert_problem(
        &post(&a, "/strict", Some("abc"), "{}").await,
        400,
        "idempotency-key-invalid",
    );
    assert_eq!(post(&a, "/strict", Some("\"abc\""), "{}").await.status, 200);
    // Case 18: reordered JSON keys replay with json_canonical.
    post(&a, "/canonical/created", Some("K18"), "{\"a\":1,\"b\":2}").await;
    let again = post(&a, "/canonical/created", Some("K18"), "{\"b\":2, \"a\":1}").await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // Case 24: with store_5xx a 503 replays.
    post(&a, "/status/503", Some("K24"), "{}").await;
    let again = post(&a, "/status/503", Some("K24"), "{}").await;
    assert_eq!(
        (again.status, &again.headers["idempotent-replayed"]),
        (503, &"true".parse().unwrap())
    );
    // Case 16: the same key and body to another path mismatches, unless scope_by_route.
    post(&a, "/created", Some("K16"), "{}").await;
    assert_problem(
        &post(&a, "/other", Some("K16"), "{}").await,
        422,
        "idempotency-key-reused",
    );
    post(&a, "/by-route/created", Some("K16b"), "{}").await;
    let elsewhere = post(&a, "/by-route/other", Some("K16b"), "{}").await;
    assert_eq!(elsewhere.status, 200, "another route: another record");
    assert!(!elsewhere.headers.contains_key("idempotent-replayed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_duplicates_give_up_or_take_over() {
    // Case 22: a wait shorter than the first request gives 409 at the deadline; a first
    // request that fails with a released status lets the waiter run.
    let app = App::start("app").await;
    let a = with_idempotency(&app, "    in_flight_wait: 1s\n");
    let url = a.url("/slow/3000");
    let slow = tokio::spawn(async move {
        let req = Request::post(url)
            .header("idempotency-key", "K22a")
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&http1(), req).await
    });
    app.wait_hits(1).await;
    let started = std::time::Instant::now();
    let dup = request_raw(&a, "/slow/3000", "K22a").await;
    assert_problem(&dup, 409, "idempotency-request-in-progress");
    assert!(started.elapsed() >= Duration::from_millis(700), "it waited");
    slow.abort();

    // A duplicate waiting on a request that ends well gets its replay.
    let hits = app.hits();
    let url = a.url("/slow/600");
    let first = tokio::spawn(keyed(url, "K22b"));
    app.wait_hits(hits + 1).await;
    let waiter = request_raw(&a, "/slow/600", "K22b").await;
    assert_eq!(within(10, first).await.unwrap().status, 200);
    assert_eq!(waiter.status, 200);
    assert_eq!(waiter.headers["idempotent-replayed"], "true");
    assert_eq!(app.hits(), hits + 1);

    // One waiting on a request that ends in 503 (which releases the key) runs itself.
    let url = a.url("/slow/600?status=503");
    let first = tokio::spawn(keyed(url, "K22c"));
    app.wait_hits(hits + 2).await;
    let waiter = request_raw(&a, "/slow/600?status=503", "K22c").await;
    assert_eq!(within(10, first).await.unwrap().status, 503);
    assert_eq!(waiter.status, 503);
    assert!(
        !waiter.headers.contains_key("idempotent-replayed"),
        "the waiter executed"
    );
    assert_eq!(app.hits(), hits + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_holds_records_without_crossslot() {
    // Case 35 (Cluster): keys hash-tagged into one slot; case 21 holds across two proxies.
    let cluster = attache_tests::redis::Cluster::start();
    let app = App::start("app").await;
    let config = format!(
        "    store: {}\n    scope_secret: test-secret\n",
        cluster.url()
    );
    let a = with_idempotency(&app, &config);
    let b = with_idempotency(&app, &config);
    for i in 0..10 {
        let key = format!("C{i}");
        assert_eq!(post(&a, "/created", Some(&key), "{}").await.status, 201);
        let again = post(&b, "/created", Some(&key), "{}").await;
        assert_eq!(
            again.headers["idempotent-replayed"],
            "true",
            "{}",
            again.text()
        );
    }
    assert_eq!(app.hits(), 10);
    // The records spread over the primaries.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).trim() != "0")
        .count();
    assert!(holding >= 2, "records on {holding} node(s)");
    assert_eq!(
        cluster.script_calls(),
        30,
        "claim + complete, then one claim, per key"
    );
    drop((a, b));
    two_proxies_run_once(&config).await;
}

async fn event(a: &Attache, path: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let mut req = Request::post(a.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within(
        15,
        send(
            &http1(),
            req.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
        ),
    )
    .await
    .unwrap()
}

/// A binary-mode event: `ce-source` and `ce-id` headers.
async fn binary_event(a: &Attache, path: &str, source: &str, id: &str, body: &str) -> Got {
    event(a, path, &[("ce-source", source), ("ce-id", id)], body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_routes_use_source_and_id() {
    let app = App::start("app").await;
    let a = with_idempotency(
        &app,
        "    routes:
      - { name: events, match: { path: /events }, cloudevents: { strict: false } }
      - { name: strict, match: { path: /strict-events }, cloudevents: { strict: true } }
",
    );
    let replayed = |g: &Got| g.headers.contains_key("idempotent-replayed");
    // Case 39: the same (source, id) replays whatever else differs; another source runs.
    let first = event(
        &a,
        "/events",
        &[("ce-source", "/a"), ("ce-id", "1"), ("ce-time", "t1")],
        "{}",
    )
    .await;
    assert!(!replayed(&first));
    let again = event(
        &a,
        "/events",
        &[("ce-source", "/a"), ("ce-id", "1"), ("ce-time", "t2")],
        "{}",
    )
    .await;
    assert!(replayed(&again));
    let structured = event(
        &a,
        "/events",
        &[("content-type", "application/cloudevents+json")],
        r#"{"specversion":"1.0","source":"/a","id":"1","type":"t"}"#,
    )
    .await;
    assert!(replayed(&structured), "structured copy of the same event");
    let other = binary_event(&a, "/events", "/b", "1", "{}").await;
    assert!(!replayed(&other));
    assert_eq!(app.hits(), 2);

    // Case 40: percent-decoding, invalid UTF-8, batches, missing identity.
    binary_event(&a, "/events", "/a", "2%20", "{}").await;
    let same = event(
        &a,
        "/events",
        &[("content-type", "application/cloudevents+json")],
        r#"{"source":"/a","id":"2 "}"#,
    )
    .await;
    assert!(replayed(&same));
    let bad = binary_event(&a, "/events", "/a", "%C0%A0", "{}").await;
    assert_problem(&bad, 400, "idempotency-key-invalid");
    let missing = event(&a, "/events", &[("ce-source", "/a")], "{}").await;
    assert_problem(&missing, 400, "idempotency-key-missing");
    let hits = app.hits();
    for _ in 0..2 {
        let batch = event(
            &a,
            "/events",
            &[("content-type", "application/cloudevents-batch+json")],
            "[]",
        )
        .await;
        assert!(!replayed(&batch));
    }
    assert_eq!(app.hits(), hits + 2, "batches pass unrecorded");

    // Case 41: another payload for the same event replays; with strict it mismatches.
    let payload = binary_event(&a, "/events", "/a", "1", "{\"other\":1}").await;
    assert!(replayed(&payload));
    binary_event(&a, "/strict-events", "/s", "1", "{}").await;
    let strict = binary_event(&a, "/strict-events", "/s", "1", "{\"other\":1}").await;
    assert_problem(&strict, 422, "idempotency-key-reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_requests_succeeding() {
    // Case 35 (Sentinel).
    let mut s = attache_tests::redis::Sentinel::start();
    let app = App::start("app").await;
    let a = with_idempotency(
        &app,
        &format!("    store: {}\n    scope_secret: test-secret\n", s.url()),
    );
    assert_eq!(post(&a, "/created", Some("S1"), "{}").await.status, 201);
    assert!(
        post(&a, "/created", Some("S1"), "{}")
            .await
            .headers
            .contains_key("idempotent-replayed")
    );
    // Wait for the replica to hold the record, then lose the primary.
    let replica_port = s.replica.port.to_string();
    assert!(
        attache_tests::eventually(10, async || s.replica.cli(&["DBSIZE"]).trim() == "1").await,
        "replication"
    );
    s.primary.stop();
    assert!(
        attache_tests::eventually(20, async || s.primary_port() == replica_port).await,
        "no failover"
    );
    // The promoted replica answers: the stored record replays, and new keys work.
    let mut ok = false;
    for _ in 0..20 {
        let got = post(&a, "/created", Some("S1"), "{}").await;
        if got.status == 201 {
            assert!(
                got.headers.contains_key("idempotent-replayed"),
                "{}",
                got.text()
            );
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "no answer from the new primary:\n{}", a.log_text());
    assert_eq!(post(&a, "/created", Some("S2"), "{}").await.status, 201);
    assert_eq!(app.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_hold_the_key_while_a_long_response_streams() {
    // Case 28: a lease of 600 ms (500 ms timeout + 100 ms grace); the response body takes
    // about 2 s, more than three leases. Renewals keep duplicates out; the result is stored.
    let app = App::start("app").await;
    let ports = Ports::new();
    let extra = "  timeouts: { request: 500ms }
  idempotency:
    lease_grace: 100ms
";
    let a = Attache::run(ports, &sidecar_config(ports, app.addr, extra));
    let url = a.url("/drip/10/200");
    let first = tokio::spawn(keyed(url, "K28"));
    // Two renewals: the first lease (600 ms) is over, and the key is still held.
    let renew = "attache_idempotency_store_duration_seconds_count{op=\"renew\",result=\"ok\"}";
    assert!(
        attache_tests::eventually(10, async || a.metric(renew) >= Some(2.0)).await,
        "no renewals"
    );
    let dup = request_raw(&a, "/drip/10/200", "K28").await;
    assert_problem(&dup, 409, "idempotency-request-in-progress");
    let first = within(10, first).await.unwrap();
    assert_eq!(first.text(), "0;1;2;3;4;5;6;7;8;9;");
    let replay = request_raw(&a, "/drip/10/200", "K28").await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body, first.body);
    assert_eq!(app.hits(), 1);
    // Three leases or more went by while the body streamed: each was renewed in time.
    let renewed = a
        .metric("attache_idempotency_store_duration_seconds_count{op=\"renew\",result=\"ok\"}")
        .unwrap_or(0.0);
    assert!(renewed >= 3.0, "{renewed} renewals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_completion_still_answers_and_holds_the_key() {
    // Case 33: Redis refuses writes while the response is being stored: the client still gets
    // its answer; a retry within the lease gets 409 (the record stays in flight).
    let redis = Redis::start();
    let app = App::start("app").await;
    let a = with_idempotency(&app, &redis_config(&redis, "    store_timeout: 300ms\n"));
    let url = a.url("/slow/500");
    let first = tokio::spawn(keyed(url, "K33"));
    // The key is claimed once the request is at the app; then writes stop.
    app.wait_hits(1).await;
    redis.cli(&["CLIENT", "PAUSE", "20000", "WRITE"]);
    let first = within(10, first).await.unwrap();
    assert_eq!(first.status, 200, "the caller still gets its response");
    // The completion timed out and was counted; then Redis takes writes again.
    let store_error =
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"store_error\"}";
    assert!(
        attache_tests::eventually(10, async || a.metric(store_error) == Some(1.0)).await,
        "{}",
        a.metrics_text()
    );
    redis.cli(&["CLIENT", "UNPAUSE"]);
    let retry = request_raw(&a, "/slow/500", "K33").await;
    assert_problem(&retry, 409, "idempotency-request-in-progress");
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_policy_links_and_the_published_policy() {
    let app = App::start("app").await;
    let a = with_idempotency(
        &app,
        "    policy_url: https://example.com/idempotency
    header_aliases: [X-Idempotency-Key]
    routes:
      - { name: orders, match: { path_prefix: /orders }, required: true, retention: 10m }
",
    );
    // Case 6: a key in the header and its alias is two field lines.
    let both = {
        let req = Request::post(a.url("/orders"))
            .header("idempotency-key", "K6")
            .header("x-idempotency-key", "K6")
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&http1(), req).await.unwrap()
    };
    assert_problem(&both, 400, "idempotency-key-invalid");
    assert_eq!(
        both.headers["link"],
        "<https://example.com/idempotency>; rel=\"describedby\""
    );
    let alias = {
        let req = Request::post(a.url("/orders"))
            .header("x-idempotency-key", "K6")
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&http1(), req).await.unwrap()
    };
    assert_eq!(alias.status, 200, "the alias alone is the key");
    // The effective policy of each route is published on /config.
    let doc: serde_json::Value = serde_json::from_str(
        &attache_tests::client::blocking_get(&a.admin_url("/config"))
            .unwrap()
            .1,
    )
    .unwrap();
    let orders = &doc["effective"]["idempotency"][0];
    assert_eq!(orders["route"], "orders");
    assert_eq!(orders["required"], true);
    assert_eq!(orders["retention"], "10m");
    assert_eq!(orders["methods"], serde_json::json!(["POST", "PATCH"]));
    assert_eq!(
        orders["header_aliases"],
        serde_json::json!(["X-Idempotency-Key"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_still_answers_its_caller() {
    // Case 29: the record disappears mid-exchange (as when renewals stall past the lease); a
    // retry takes over; the original's renewals and completion find another owner and write
    // nothing, and its caller is still answered.
    let redis = Redis::start();
    let app = App::start("app").await;
    let a = with_idempotency(&app, &redis_config(&redis, ""));
    // Two exchanges with one key and different bodies, each answer naming its execution.
    let url = a.url("/drip/6/200?hit");
    let original = tokio::spawn(async move {
        let req = Request::post(url)
            .header("idempotency-key", "K29")
            .body(Full::new(Bytes::from_static(b"{\"from\":\"original\"}")))
            .unwrap();
        within(15, send(&http1(), req)).await.unwrap()
    });
    app.wait_hits(1).await;
    let record = redis.cli(&["KEYS", "*"]).trim().to_owned();
    assert!(!record.is_empty(), "the original's record is in Redis");
    redis.cli(&["DEL", &record]);
    let takeover_body = "{\"from\":\"takeover\"}";
    let takeover = request_body(&a, "/drip/6/200?hit", "K29", takeover_body).await;
    assert_eq!(takeover.status, 200);
    assert_eq!(takeover.text(), "#2;0;1;2;3;4;5;");
    let original = within(10, original).await.unwrap();
    assert_eq!(
        original.text(),
        "#1;0;1;2;3;4;5;",
        "its caller is still answered"
    );
    assert_eq!(app.hits(), 2, "the takeover ran");
    // The takeover's record survived: its body replays the takeover's answer, and the
    // original's body no longer matches the key's record.
    let replay = request_body(&a, "/drip/6/200?hit", "K29", takeover_body).await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.text(), "#2;0;1;2;3;4;5;");
    let mismatch = request_body(&a, "/drip/6/200?hit", "K29", "{\"from\":\"original\"}").await;
    assert_problem(&mismatch, 422, "idempotency-key-reused");
    assert_eq!(app.hits(), 2);
    a.assert_metrics(&[
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"lost_lease\"} 1",
    ]);
}

async fn keyed(url: String, key: &str) -> Got {
    let req = Request::post(url)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    within(15, send(&http1(), req)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attache_dev_enforces_keys_in_memory_or_in_redis() {
    let redis = Redis::start();
    for store in [None, Some(redis.url())] {
        let app = App::start("app").await;
        let ports = Ports::new();
        let (listen, admin) = (
            format!("127.0.0.1:{}", ports.inbound),
            format!("127.0.0.1:{}", ports.admin),
        );
        let app_url = format!("http://{}", app.addr);
        let mut args = vec![
            "dev", "--app", &app_url, "--listen", &listen, "--admin", &admin,
        ];
        if let Some(url) = &store {
            args.extend(["--redis", url.as_str()]);
        }
        let mut a = Attache::spawn(ports, attache_tests::TempDir::new(), &args);
        a.wait_ready();
        let first = keyed(a.url("/created"), "dev-1").await;
        let again = keyed(a.url("/created"), "dev-1").await;
        assert_eq!((first.status, again.status), (201, 201));
        assert_eq!(again.headers["idempotent-replayed"], "true", "{store:?}");
        assert_eq!(app.hits(), 1);
    }
    assert!(
        !redis.cli(&["KEYS", "idem:*"]).trim().is_empty(),
        "--redis kept the record in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_resets_after_reading_holds_the_key() {
    // The request reached the app, which closed the connection without answering: the outcome
    // is unknown, so the key is held (502) rather than freed. The same with the access log
    // off: then nothing reads the exchange's details from successful responses and they are
    // not handed up, but a failure's still are.
    app_resets_after_reading("  idempotency: {}\n").await;
    app_resets_after_reading(
        "  idempotency: {}\n  telemetry: { access_log: { enabled: false } }\n",
    )
    .await;
}

async fn app_resets_after_reading(extra: &str) {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut c, _)) = upstream.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            drop(c);
        }
    });
    let ports = Ports::new();
    let a = Attache::run(ports, &sidecar_config(ports, addr, extra));
    let got = keyed(a.url("/x"), "K-reset").await;
    assert_problem(&got, 502, "idempotency-outcome-unknown");
    let again = keyed(a.url("/x"), "K-reset").await;
    assert_problem(&again, 409, "idempotency-request-in-progress");
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no second attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_recovers_without_hanging() {
    let mut redis = Redis::start();
    let port = redis.port;
    let app = App::start("app").await;
    let a = with_idempotency(&app, &redis_config(&redis, "    store_timeout: 300ms\n"));
    assert_eq!(keyed(a.url("/created"), "R1").await.status, 201);
    redis.stop();
    assert_eq!(keyed(a.url("/created"), "R2").await.status, 503);
    assert_eq!(keyed(a.url("/created"), "R3").await.status, 503);
    // Redis stays down past any reconnection attempt those failures started.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _back = Redis::start_on(port, &[]);
    // The first keyed request once Redis answers again is served, not refused on the strength
    // of the last failed connection attempt. The record is gone with the data: R1 runs again
    // (§9).
    assert_eq!(
        keyed(a.url("/created"), "R1").await.status,
        201,
        "attache reconnected"
    );
    assert_eq!(
        keyed(a.url("/created"), "R1").await.headers["idempotent-replayed"],
        "true"
    );
    assert_eq!(app.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_event_streams_and_a_redis_that_is_down_at_start() {
    // Case 1: with `methods: [PUT]`, PUT is enforced (and POST is not).
    let app = App::start("app").await;
    let a = with_idempotency(&app, "    methods: [PUT]\n");
    request(&a, "PUT", "/created", Some("K1"), "{}").await;
    let again = request(&a, "PUT", "/created", Some("K1"), "{}").await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    post(&a, "/created", Some("K1"), "{}").await;
    assert!(
        !post(&a, "/created", Some("K1"), "{}")
            .await
            .headers
            .contains_key("idempotent-replayed")
    );
    assert_eq!(app.hits(), 3);

    // Case 31: an event stream reaches the first caller whole and leaves a tombstone.
    let a = with_idempotency(&app, "    retention: 1h\n");
    let first = keyed(a.url("/drip/3/50?sse"), "K31").await;
    assert_eq!(first.text(), "0;1;2;");
    let retry = keyed(a.url("/drip/3/50?sse"), "K31").await;
    assert!(retry.body.is_empty());
    assert_eq!(retry.headers["idempotency-response-stored"], "false");
    assert_eq!(retry.headers["content-type"], "text/event-stream");

    // An unreachable Redis delays neither start nor readiness (Attache::run waits for /ready);
    // keyed requests then fail closed.
    let dead = Ports::new().inbound;
    let a = with_idempotency(
        &app,
        &format!(
            "    store: redis://127.0.0.1:{dead}\n    scope_secret: s\n    store_timeout: 300ms\n"
        ),
    );
    assert_problem(
        &keyed(a.url("/created"), "K-dead").await,
        503,
        "idempotency-store-unavailable",
    );
    assert_eq!(
        post(&a, "/created", None, "{}").await.status,
        201,
        "unkeyed requests pass"
    );
}
