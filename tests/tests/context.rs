//! The Context API through the real binary (specs/context-api.md, first stage: counters, maps
//! and sets in the memory store): versions and preconditions, TTL, retries applied once,
//! limits, `allow`, names, and state kept across a reload.

use std::time::Duration;

use attache_tests::client::{Got, exchange};
use attache_tests::{App, Attache, Ports, eventually, free_port, sidecar_config};

struct Api {
    base: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Got {
        exchange(method, &format!("{}{path}", self.base), headers, body).await
    }
}

fn problem(got: &Got, status: u16, slug: &str) {
    assert_eq!(got.status, status, "{}", got.text());
    assert_eq!(got.headers["content-type"], "application/problem+json");
    assert_eq!(
        got.json()["type"],
        format!("https://attache.dev/problems/{slug}")
    );
}

async fn with_context(extra: &str) -> (Attache, Api) {
    let app = App::start("app").await;
    let port = free_port();
    let ports = Ports::new();
    let config = sidecar_config(
        ports,
        app.addr,
        &format!("  context:\n    listen: 127.0.0.1:{port}\n{extra}"),
    );
    let a = Attache::run(ports, &config);
    let api = Api {
        base: format!("http://127.0.0.1:{port}/v1/contexts"),
    };
    (a, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_within_bounds_and_honour_versions() {
    let (a, api) = with_context("").await;
    let first = api
        .call("POST", "/order-42/counters/stock", &[], r#"{"by":5}"#)
        .await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.json()["value"], 5);
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    // Bounds: refused, and nothing changes.
    let over = api
        .call(
            "POST",
            "/order-42/counters/stock",
            &[],
            r#"{"by":-6,"min":0}"#,
        )
        .await;
    problem(&over, 409, "counter-out-of-bounds");
    let got = api.call("GET", "/order-42/counters/stock", &[], "").await;
    assert_eq!(got.json()["value"], 5);
    assert_eq!(got.headers["etag"], etag.as_str());
    // If-Match: the current version passes once; a stale one gets 412 with the current ETag.
    let set = api
        .call(
            "PUT",
            "/order-42/counters/stock",
            &[("if-match", &etag)],
            r#"{"value":9}"#,
        )
        .await;
    assert_eq!(set.status, 200);
    let stale = api
        .call(
            "PUT",
            "/order-42/counters/stock",
            &[("if-match", &etag)],
            r#"{"value":1}"#,
        )
        .await;
    problem(&stale, 412, "precondition-failed");
    assert_eq!(stale.json()["etag"], set.headers["etag"].to_str().unwrap());
    // If-None-Match: * creates only.
    let exists = api
        .call(
            "PUT",
            "/order-42/counters/stock",
            &[("if-none-match", "*")],
            r#"{"value":1}"#,
        )
        .await;
    problem(&exists, 412, "precondition-failed");
    let created = api
        .call(
            "PUT",
            "/order-42/counters/fresh",
            &[("if-none-match", "*")],
            r#"{"value":1}"#,
        )
        .await;
    assert_eq!(created.status, 201);
    // Missing: 404; another type: 409.
    problem(
        &api.call("GET", "/order-42/counters/none", &[], "").await,
        404,
        "context-not-found",
    );
    problem(
        &api.call("GET", "/order-42/maps/stock", &[], "").await,
        409,
        "type-mismatch",
    );
    assert_eq!(
        api.call("DELETE", "/order-42/counters/stock", &[], "")
            .await
            .status,
        204
    );
    problem(
        &api.call("DELETE", "/order-42/counters/stock", &[], "")
            .await,
        404,
        "context-not-found",
    );
    a.assert_metrics(&[
        "attache_context_operations_total{operation=\"counter_add\",outcome=\"out_of_bounds\"} 1",
        "attache_context_operations_total{operation=\"counter_set\",outcome=\"precondition_failed\"} 2",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_patch_atomically_and_sets_count_their_members() {
    let (_a, api) = with_context("").await;
    let patched = api
        .call(
            "PATCH",
            "/cart-7/maps/cart",
            &[],
            r#"{"set":{"owner":"ada","items":["x"]},"incr":{"views":2}}"#,
        )
        .await;
    assert_eq!(patched.status, 201, "{}", patched.text());
    // A patch whose incr fails applies none of its parts.
    let bad = api
        .call(
            "PATCH",
            "/cart-7/maps/cart",
            &[],
            r#"{"set":{"owner":"eve"},"incr":{"owner":1}}"#,
        )
        .await;
    problem(&bad, 400, "context-invalid-request");
    let merged = api
        .call(
            "PATCH",
            "/cart-7/maps/cart",
            &[("content-type", "application/merge-patch+json")],
            r#"{"items":null,"address":{"city":"Lyon"}}"#,
        )
        .await;
    assert_eq!(
        merged.json()["fields"],
        serde_json::json!({"owner": "ada", "views": 2, "address": {"city": "Lyon"}})
    );
    let some = api
        .call("GET", "/cart-7/maps/cart?fields=owner,views", &[], "")
        .await;
    assert_eq!(
        some.json()["fields"],
        serde_json::json!({"owner": "ada", "views": 2})
    );
    let field = api
        .call("GET", "/cart-7/maps/cart/fields/owner", &[], "")
        .await;
    assert_eq!(field.json()["value"], "ada");
    // Per-field TTL names the capability it needs.
    let per_field = api
        .call(
            "PATCH",
            "/cart-7/maps/cart",
            &[],
            r#"{"set":{"a":1},"field_ttl":{"a":"30s"}}"#,
        )
        .await;
    problem(&per_field, 501, "not-implemented");
    assert!(
        per_field.json()["detail"]
            .as_str()
            .unwrap()
            .contains("HEXPIRE")
    );
    let put = api
        .call(
            "PUT",
            "/cart-7/maps/cart",
            &[],
            r#"{"fields":{"only":true}}"#,
        )
        .await;
    assert_eq!(put.json()["fields"], serde_json::json!({"only": true}));

    let added = api
        .call(
            "POST",
            "/cart-7/sets/skus",
            &[],
            r#"{"add":["a","b","c","a"]}"#,
        )
        .await;
    assert_eq!(
        added.json(),
        serde_json::json!({"added": 3, "removed": 0, "count": 3})
    );
    let again = api
        .call(
            "POST",
            "/cart-7/sets/skus",
            &[],
            r#"{"add":["a"],"remove":["b","zz"]}"#,
        )
        .await;
    assert_eq!(
        again.json(),
        serde_json::json!({"added": 0, "removed": 1, "count": 2})
    );
    assert_eq!(
        api.call("HEAD", "/cart-7/sets/skus/members/a", &[], "")
            .await
            .status,
        204
    );
    assert_eq!(
        api.call("HEAD", "/cart-7/sets/skus/members/b", &[], "")
            .await
            .status,
        404
    );
    let page = api.call("GET", "/cart-7/sets/skus?count=1", &[], "").await;
    assert_eq!(
        page.json(),
        serde_json::json!({"members": ["a"], "cursor": 1, "count": 2})
    );

    let listed = api.call("GET", "/cart-7", &[], "").await;
    let paths: Vec<String> = listed.json()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["maps/cart", "sets/skus"]);
    assert_eq!(api.call("DELETE", "/cart-7", &[], "").await.status, 204);
    problem(
        &api.call("GET", "/cart-7/maps/cart", &[], "").await,
        404,
        "context-not-found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_written_with_the_data_and_retries_apply_once() {
    let (a, api) = with_context("    ttl_mode: touch\n").await;
    let made = api
        .call("POST", "/s-1/counters/visits", &[], r#"{"ttl":"600ms"}"#)
        .await;
    let ttl = made.json()["ttl_ms"].as_u64().unwrap();
    assert!(ttl > 0 && ttl <= 600, "{ttl}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // touch (the configured mode): a write restarts the window.
    let touched = api
        .call("POST", "/s-1/counters/visits", &[], r#"{"ttl":"600ms"}"#)
        .await;
    assert!(touched.json()["ttl_ms"].as_u64().unwrap() > 400);
    assert!(
        eventually(3, async || api
            .call("GET", "/s-1/counters/visits", &[], "")
            .await
            .status
            == 404)
        .await,
        "the counter expired"
    );

    // A retried increment (same Idempotency-Key and body) applies once.
    let key = [("idempotency-key", "charge-1")];
    let first = api
        .call("POST", "/s-1/counters/charges", &key, r#"{"by":10}"#)
        .await;
    let retry = api
        .call("POST", "/s-1/counters/charges", &key, r#"{"by":10}"#)
        .await;
    assert_eq!(first.json()["value"], 10);
    assert_eq!(retry.json()["value"], 10);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert!(!first.headers.contains_key("idempotent-replayed"));
    let now = api.call("GET", "/s-1/counters/charges", &[], "").await;
    assert_eq!(now.json()["value"], 10);
    // The key with another request: refused, nothing applied.
    let other = api
        .call("POST", "/s-1/counters/charges", &key, r#"{"by":99}"#)
        .await;
    problem(&other, 422, "idempotency-key-reused");
    a.assert_metrics(&[
        "attache_context_operations_total{operation=\"counter_add\",outcome=\"replayed\"} 1",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_allow_and_limits_are_enforced() {
    let (_a, api) = with_context(
        "    allow: ['order-*']\n    limits: { max_value_bytes: 32, max_members_per_request: 3 }\n",
    )
    .await;
    problem(
        &api.call("GET", "/cart-1/counters/x", &[], "").await,
        403,
        "context-not-allowed",
    );
    problem(
        &api.call("GET", "/_reserved/counters/x", &[], "").await,
        400,
        "context-invalid-name",
    );
    // `_current` without an inbound request of this call's trace.
    problem(
        &api.call("GET", "/_current/counters/x", &[], "").await,
        400,
        "no-current-context",
    );
    problem(
        &api.call("GET", "/order-1/counters/a/../b", &[], "").await,
        400,
        "context-invalid-name",
    );
    problem(
        &api.call("GET", "/order-1/queues/q", &[], "").await,
        404,
        "context-not-found",
    );
    let big = format!(r#"{{"set":{{"note":"{}"}}}}"#, "x".repeat(40));
    problem(
        &api.call("PATCH", "/order-1/maps/m", &[], &big).await,
        413,
        "context-too-large",
    );
    problem(
        &api.call(
            "POST",
            "/order-1/sets/s",
            &[],
            r#"{"add":["a","b","c","d"]}"#,
        )
        .await,
        400,
        "context-too-many",
    );
    problem(
        &api.call(
            "POST",
            "/order-1/counters/c",
            &[],
            r#"{"by":1,"ttl":"31d"}"#,
        )
        .await,
        400,
        "context-invalid-request",
    );
    problem(
        &api.call("POST", "/order-1/counters/c", &[], r#"{"bye":1}"#)
            .await,
        400,
        "context-invalid-request",
    );
    let fresh = api.call("POST", "", &[], r#"{"prefix":"order-"}"#).await;
    assert_eq!(fresh.status, 201);
    let name = fresh.json()["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("order-") && name.len() == 32, "{name}");
    problem(
        &api.call("POST", "", &[], r#"{"prefix":"cart-"}"#).await,
        403,
        "context-not-allowed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_outlives_a_reload_that_keeps_the_store() {
    let (a, api) = with_context("").await;
    api.call("POST", "/order-9/counters/n", &[], r#"{"by":3}"#)
        .await;
    // A reload that changes something else (the default TTL): the store and its state stay.
    let config = std::fs::read_to_string(a.config_path()).unwrap();
    a.reconfigure(&config.replace("  context:\n", "  context:\n    ttl: 1h\n"))
        .await;
    assert_eq!(
        api.call("GET", "/order-9/counters/n", &[], "").await.json()["value"],
        3
    );
    let made = api.call("POST", "/order-9/counters/m", &[], "").await;
    assert!(
        made.json()["ttl_ms"].as_u64().unwrap() > 3_500_000,
        "the new default TTL applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_grant_one_lease_at_a_time_with_fencing_tokens() {
    let (a, api) = with_context("").await;
    let take = |owner: &'static str, extra: &'static str| {
        let api = &api;
        async move {
            api.call(
                "POST",
                "/batch-7/locks/nightly",
                &[],
                &format!(r#"{{"owner":"{owner}","ttl":"600ms"{extra}}}"#),
            )
            .await
        }
    };
    let first = take("a", "").await;
    assert_eq!(first.status, 201, "{}", first.text());
    let lease = first.json()["lease"].as_str().unwrap().to_owned();
    let t1 = first.json()["token"].as_u64().unwrap();
    assert!(first.json()["expires_at"].as_str().unwrap().ends_with('Z'));
    let held = take("b", "").await;
    problem(&held, 409, "lock-held");
    assert_eq!(held.headers["retry-after"], "1");
    let holder = api.call("GET", "/batch-7/locks/nightly", &[], "").await;
    assert_eq!(holder.json()["owner"], "a");
    assert!(
        holder.json().get("lease").is_none(),
        "the lease is the holder's secret"
    );

    // A write fenced by the holder's token applies.
    let fence = format!("nightly={t1}");
    let write = async |fence: &str| {
        api.call(
            "PATCH",
            "/batch-7/maps/report",
            &[("attache-fence", fence)],
            r#"{"set":{"done":true}}"#,
        )
        .await
    };
    assert_eq!(write(&fence).await.status, 201);
    // Renewed by its lease only.
    let renew = api
        .call(
            "PUT",
            &format!("/batch-7/locks/nightly/leases/{lease}"),
            &[],
            r#"{"ttl":"300ms"}"#,
        )
        .await;
    assert_eq!(renew.status, 200);
    assert_eq!(renew.json()["token"].as_u64(), Some(t1));
    problem(
        &api.call("PUT", "/batch-7/locks/nightly/leases/0123", &[], "")
            .await,
        409,
        "lease-lost",
    );
    // The holder pauses past its lease; another takes the lock (waiting for it), and the
    // paused holder's fenced write is refused.
    let waited = take("b", r#","wait":"2s""#).await;
    assert_eq!(waited.status, 201, "{}", waited.text());
    let t2 = waited.json()["token"].as_u64().unwrap();
    assert!(t2 > t1);
    problem(&write(&fence).await, 412, "stale-fencing-token");
    problem(
        &api.call(
            "DELETE",
            &format!("/batch-7/locks/nightly/leases/{lease}"),
            &[],
            "",
        )
        .await,
        409,
        "lease-lost",
    );
    let lease2 = waited.json()["lease"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/batch-7/locks/nightly/leases/{lease2}"),
            &[],
            ""
        )
        .await
        .status,
        204
    );
    // A retried acquire (same Idempotency-Key) gets the same lease.
    let key = [("idempotency-key", "acquire-42")];
    let body = r#"{"owner":"c","ttl":"30s"}"#;
    let got = api.call("POST", "/batch-7/locks/nightly", &key, body).await;
    let retry = api.call("POST", "/batch-7/locks/nightly", &key, body).await;
    assert_eq!(got.json()["lease"], retry.json()["lease"]);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert!(got.json()["token"].as_u64().unwrap() > t2);
    a.assert_metrics(&[
        "attache_context_operations_total{operation=\"lock_acquire\",outcome=\"lock_held\"} 1",
        "attache_context_operations_total{operation=\"map_patch\",outcome=\"stale_fence\"} 1",
    ]);
}

/// Four attache processes, one Context API store in `url`: each increments one counter 1,000
/// times (every tenth increment sent twice under the same Idempotency-Key, as a client retries
/// after a lost answer); the counter ends at exactly 4,000.
async fn four_replicas_count_exactly_once(url: &str) {
    let app = App::start("app").await;
    let replicas: Vec<(Attache, String)> = (0..4)
        .map(|_| {
            let port = free_port();
            let ports = Ports::new();
            let config = sidecar_config(
                ports,
                app.addr,
                &format!("  context:\n    listen: 127.0.0.1:{port}\n    store: '{url}'\n"),
            );
            let a = Attache::run(ports, &config);
            (
                a,
                format!("http://127.0.0.1:{port}/v1/contexts/order-1/counters/paid"),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for (r, (_, url)) in replicas.iter().enumerate() {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = attache_tests::client::http1();
            for i in 0..1000 {
                let key = format!("r{r}-{i}");
                let sends = if i % 10 == 0 { 2 } else { 1 };
                for _ in 0..sends {
                    let req = http::Request::post(&url)
                        .header("idempotency-key", &key)
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            b"{\"by\":1}",
                        )))
                        .unwrap();
                    let got = attache_tests::client::send(&client, req).await.unwrap();
                    assert!(got.status == 200 || got.status == 201, "{}", got.text());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = exchange("GET", &replicas[0].1, &[], "").await;
    assert_eq!(got.json()["value"], 4000, "{}", got.text());
    let replayed: f64 = replicas
        .iter()
        .map(|(a, _)| {
            a.metric(
                "attache_context_operations_total{operation=\"counter_add\",outcome=\"replayed\"}",
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(replayed, 400.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_over_one_redis_count_exactly_once() {
    let redis = attache_tests::redis::Redis::start();
    four_replicas_count_exactly_once(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_over_a_redis_cluster_count_exactly_once() {
    let cluster = attache_tests::redis::Cluster::start();
    four_replicas_count_exactly_once(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_hold_one_lock_at_once_and_a_paused_holder_is_fenced() {
    let redis = attache_tests::redis::Redis::start();
    let extra = format!("    store: '{}'\n", redis.url());
    let (_a, a) = with_context(&extra).await;
    let (_b, b) = with_context(&extra).await;
    // Each replica's worker takes the lock (waiting for it), marks itself in, checks it is
    // alone, marks itself out and releases; twenty times each, at once.
    let worker = |api: Api, who: &'static str| async move {
        for _ in 0..20 {
            let got = api
                .call(
                    "POST",
                    "/jobs/locks/nightly",
                    &[],
                    &format!(r#"{{"owner":"{who}","ttl":"5s","wait":"10s"}}"#),
                )
                .await;
            assert_eq!(got.status, 201, "{}", got.text());
            let (lease, token) = (
                got.json()["lease"].as_str().unwrap().to_owned(),
                got.json()["token"].as_u64().unwrap(),
            );
            let fence = format!("nightly={token}");
            let inside = api
                .call(
                    "PATCH",
                    "/jobs/maps/holders",
                    &[("attache-fence", &fence)],
                    r#"{"incr":{"n":1}}"#,
                )
                .await;
            assert_eq!(
                inside.json()["fields"]["n"],
                1,
                "two holders at once: {}",
                inside.text()
            );
            let out = api
                .call(
                    "PATCH",
                    "/jobs/maps/holders",
                    &[("attache-fence", &fence)],
                    r#"{"incr":{"n":-1}}"#,
                )
                .await;
            assert_eq!(out.json()["fields"]["n"], 0);
            let released = api
                .call(
                    "DELETE",
                    &format!("/jobs/locks/nightly/leases/{lease}"),
                    &[],
                    "",
                )
                .await;
            assert_eq!(released.status, 204);
        }
    };
    let base = |api: &Api| Api {
        base: api.base.clone(),
    };
    let (ta, tb) = (
        tokio::spawn(worker(base(&a), "a")),
        tokio::spawn(worker(base(&b), "b")),
    );
    ta.await.unwrap();
    tb.await.unwrap();

    // A holder paused past its lease: the other replica takes the lock, and the first
    // holder's fenced write, arriving late, is refused.
    let first = a
        .call(
            "POST",
            "/jobs/locks/nightly",
            &[],
            r#"{"owner":"a","ttl":"300ms"}"#,
        )
        .await;
    let stale = format!("nightly={}", first.json()["token"]);
    let second = b
        .call(
            "POST",
            "/jobs/locks/nightly",
            &[],
            r#"{"owner":"b","ttl":"30s","wait":"5s"}"#,
        )
        .await;
    assert_eq!(second.status, 201);
    let late = a
        .call(
            "PATCH",
            "/jobs/maps/report",
            &[("attache-fence", &stale)],
            r#"{"set":{"by":"a"}}"#,
        )
        .await;
    problem(&late, 412, "stale-fencing-token");
    problem(
        &a.call("GET", "/jobs/maps/report", &[], "").await,
        404,
        "context-not-found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_is_a_quick_503_and_a_paused_one_no_slower_than_the_timeout() {
    let mut redis = attache_tests::redis::Redis::start();
    let (_a, api) = with_context(&format!(
        "    store: '{}'\n    store_timeout: 200ms\n",
        redis.url()
    ))
    .await;
    assert_eq!(
        api.call("POST", "/o-1/counters/c", &[], "").await.status,
        201
    );
    redis.pause();
    let started = std::time::Instant::now();
    let paused = api.call("POST", "/o-1/counters/c", &[], "").await;
    let took = started.elapsed();
    redis.resume();
    problem(&paused, 503, "context-store-unavailable");
    assert_eq!(paused.headers["retry-after"], "1");
    assert!(took < Duration::from_secs(2), "{took:?}");
    redis.stop();
    let dead = api.call("GET", "/o-1/counters/c", &[], "").await;
    problem(&dead, 503, "context-store-unavailable");
}

/// §6: a request arrives with `baggage: attache.ctx=order-42`; the app forwards only
/// `traceparent` on its own calls. Through `_current`, the app behind the first attache and
/// the app behind the second (reached through the first's outbound port, restoration adding
/// the baggage back) address the same context in the Redis both attaches share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_follows_the_request_across_two_attaches_sharing_redis() {
    let redis = attache_tests::redis::Redis::start();
    let downstream_app = App::start("downstream").await;
    let (b_ctx, b_ports) = (free_port(), Ports::new());
    let b = Attache::run(
        b_ports,
        &sidecar_config(
            b_ports,
            downstream_app.addr,
            &format!(
                "  context:\n    listen: 127.0.0.1:{b_ctx}\n    store: '{}'\n",
                redis.url()
            ),
        ),
    );
    let upstream_app = App::start("upstream").await;
    let (a_ctx, a_ports) = (free_port(), Ports::new());
    let a = Attache::run(
        a_ports,
        &sidecar_config(
            a_ports,
            upstream_app.addr,
            &format!(
                "  outbound: [ {{ listen: '127.0.0.1:{}', upstream: next }} ]
  upstreams: {{ next: {{ endpoints: ['http://127.0.0.1:{}'] }} }}
  context:\n    listen: 127.0.0.1:{a_ctx}\n    store: '{}'\n",
                a_ports.outbound,
                b_ports.inbound,
                redis.url()
            ),
        ),
    );
    // The request, as a client sends it: the app sees attache's traceparent and the baggage.
    let seen = exchange(
        "GET",
        &a.url("/checkout"),
        &[("baggage", "attache.ctx=order-42")],
        "",
    )
    .await;
    let traceparent = seen.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    // The app's call to its Context API carries only traceparent.
    let a_api = Api {
        base: format!("http://127.0.0.1:{a_ctx}/v1/contexts"),
    };
    let got = a_api
        .call(
            "POST",
            "/_current/counters/steps",
            &[("traceparent", &traceparent)],
            "",
        )
        .await;
    assert_eq!(got.status, 201, "{}", got.text());
    // Its outbound call, again with only traceparent: restoration adds the baggage back, and
    // the next app sees it.
    let out = exchange(
        "GET",
        &format!("http://127.0.0.1:{}/pay", a_ports.outbound),
        &[("traceparent", &traceparent)],
        "",
    )
    .await;
    let downstream = out.json();
    assert!(
        downstream["headers"]["baggage"]
            .as_str()
            .unwrap_or_default()
            .contains("attache.ctx=order-42"),
        "{downstream}"
    );
    let next_traceparent = downstream["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_api = Api {
        base: format!("http://127.0.0.1:{b_ctx}/v1/contexts"),
    };
    let got = b_api
        .call(
            "POST",
            "/_current/counters/steps",
            &[("traceparent", &next_traceparent)],
            "",
        )
        .await;
    assert_eq!(got.json()["value"], 2, "the same context: {}", got.text());
    // Named directly, it is order-42.
    assert_eq!(
        b_api
            .call("GET", "/order-42/counters/steps", &[], "")
            .await
            .json()["value"],
        2
    );
    // A call of another trace has no current context.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    problem(
        &a_api
            .call(
                "GET",
                "/_current/counters/steps",
                &[("traceparent", other)],
                "",
            )
            .await,
        400,
        "no-current-context",
    );
    problem(
        &a_api.call("GET", "/_current/counters/steps", &[], "").await,
        400,
        "no-current-context",
    );
    a.assert_metrics(&[
        "attache_context_current_total{result=\"resolved\"} 1",
        // A call without a traceparent starts a trace of its own on the way in (as any
        // request attache serves does): no inbound request belongs to it either.
        "attache_context_current_total{result=\"no_request\"} 2",
    ]);
    drop(b);
}

/// The OpenAPI document the listener serves is the committed one, and it is the API: every
/// operation it lists answers with a status it documents (its request body being the
/// document's example), and every method it does not list is refused with 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_api() {
    let (_a, api) = with_context("").await;
    let root = api.base.trim_end_matches("/v1/contexts").to_owned();
    let served = exchange("GET", &format!("{root}/openapi.json"), &[], "").await;
    assert_eq!(served.status, 200);
    let doc = served.json();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../filters/src/context/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc, committed);
    assert_eq!(doc["openapi"], "3.1.0");
    // The listener speaks HTTP/2 with prior knowledge (h2c) too.
    let h2 = attache_tests::client::get(
        &attache_tests::client::http2(),
        &format!("{root}/openapi.json"),
    )
    .await
    .unwrap();
    assert_eq!(h2.status, 200);
    assert_eq!(h2.json(), doc);
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{ctx}", "oa-1")
            .replace("{name}", "o1")
            .replace("{field}", "f")
            .replace("{member}", "m")
            .replace("{lease}", "l");
        for method in ["get", "head", "post", "put", "patch", "delete"] {
            let url = format!("{root}{path}");
            let upper = method.to_ascii_uppercase();
            let Some(operation) = item.get(method) else {
                if method != "head" {
                    let got = exchange(&upper, &url, &[], "").await;
                    assert_eq!(
                        got.status,
                        405,
                        "{upper} {template} is not documented: {}",
                        got.text()
                    );
                }
                continue;
            };
            let example =
                operation["requestBody"]["content"]["application/json"]["example"].clone();
            let body = if example.is_null() {
                String::new()
            } else {
                example.to_string()
            };
            let got = exchange(&upper, &url, &[("content-type", "application/json")], &body).await;
            let documented = operation["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&got.status.to_string()),
                "{upper} {template} answered {}, which its responses do not list: {}",
                got.status,
                got.text()
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} operations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applies_all_or_nothing() {
    let (_a, api) = with_context("").await;
    let order = api
        .call(
            "PATCH",
            "/o-7/maps/order",
            &[],
            r#"{"set":{"status":"new"}}"#,
        )
        .await;
    let etag = order.headers["etag"].to_str().unwrap().to_owned();
    api.call("PUT", "/o-7/counters/stock", &[], r#"{"value":1}"#)
        .await;
    let batch = |etag: &str| {
        serde_json::json!({
            "if": [{"object": "maps/order", "etag": etag}],
            "ops": [
                {"method": "POST", "path": "counters/stock", "body": {"by": -1, "min": 0}},
                {"method": "PATCH", "path": "maps/order", "body": {"set": {"status": "paid"}}},
                {"method": "POST", "path": "sets/outbox", "body": {"add": ["order-7-paid"]}},
                {"method": "POST", "path": "queues/events/messages", "body": {"paid": "order-7"}}
            ]
        })
        .to_string()
    };
    let done = api.call("POST", "/o-7/batch", &[], &batch(&etag)).await;
    assert_eq!(done.status, 200, "{}", done.text());
    let results = done.json()["results"].clone();
    assert_eq!(results[0]["body"]["value"], 0);
    assert_eq!(results[2]["status"], 200);
    assert_eq!(results[3]["status"], 201);
    assert!(results[3]["body"]["id"].is_string());
    // Again: the precondition is stale, and the stock bound would fail too: nothing changes.
    let refused = api.call("POST", "/o-7/batch", &[], &batch(&etag)).await;
    problem(&refused, 412, "precondition-failed");
    let fresh = api.call("GET", "/o-7/maps/order", &[], "").await;
    let now = fresh.headers["etag"].to_str().unwrap().to_owned();
    let refused = api.call("POST", "/o-7/batch", &[], &batch(&now)).await;
    problem(&refused, 409, "counter-out-of-bounds");
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("batch ops[0]")
    );
    let outbox = api.call("GET", "/o-7/sets/outbox", &[], "").await;
    assert_eq!(
        outbox.json()["count"],
        1,
        "nothing of the refused batches applied"
    );
    let events = api.call("GET", "/o-7/queues/events", &[], "").await;
    assert_eq!(
        events.json()["ready"],
        1,
        "one message: the refused batches enqueued none"
    );
    problem(
        &api.call(
            "POST",
            "/o-7/batch",
            &[],
            r#"{"ops":[{"method":"GET","path":"counters/stock"}]}"#,
        )
        .await,
        400,
        "context-invalid-request",
    );
}

/// `strip_on_egress`: the app's calls to a listed host leave without the context's baggage
/// member (other members go on); calls to other hosts keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_member_is_stripped_on_egress_to_listed_hosts() {
    let app = App::start("app").await;
    let partner = App::start("partner").await;
    let (ports, out2) = (Ports::new(), free_port());
    let config = sidecar_config(
        ports,
        app.addr,
        &format!(
            "  outbound:
    - {{ listen: '127.0.0.1:{}', upstream: partner }}
    - {{ listen: '127.0.0.1:{out2}', upstream: internal }}
  upstreams:
    partner: {{ endpoints: ['http://127.0.0.1:{port}'] }}
    internal: {{ endpoints: ['http://localhost:{port}'] }}
  context:
    listen: 127.0.0.1:{}
    strip_on_egress: ['127.0.0.1', '*.partner.example']
",
            ports.outbound,
            free_port(),
            port = partner.addr.port(),
        ),
    );
    let _a = Attache::run(ports, &config);
    let baggage = [("baggage", "attache.ctx=order-42,tenant=acme")];
    let listed = exchange(
        "GET",
        &format!("http://127.0.0.1:{}/x", ports.outbound),
        &baggage,
        "",
    )
    .await;
    assert_eq!(listed.json()["headers"]["baggage"], "tenant=acme");
    let other = exchange("GET", &format!("http://127.0.0.1:{out2}/x"), &baggage, "").await;
    assert_eq!(
        other.json()["headers"]["baggage"],
        "attache.ctx=order-42,tenant=acme"
    );
}

/// Queues through two attaches sharing Redis: a consumer that takes a message and dies loses
/// nothing (the other replica's consumer gets it after the visibility timeout, as attempt 2);
/// a message that always fails reaches the dead letters after `queue_max_attempts`, and is
/// replayed from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_messages_survive_a_dead_consumer_and_poison_reaches_the_dead_letters() {
    let redis = attache_tests::redis::Redis::start();
    let extra = format!("    store: '{}'\n    queue_max_attempts: 2\n", redis.url());
    let (_a, a) = with_context(&extra).await;
    let (_b, b) = with_context(&extra).await;
    let sent = a
        .call(
            "POST",
            "/shop/queues/emails/messages?dedupe_id=welcome-7",
            &[("content-type", "application/json")],
            r#"{"to":"ada@example.com"}"#,
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text());
    let id = sent.json()["id"].as_str().unwrap().to_owned();
    // A retry of the send (same dedupe id) is the same message.
    let dup = a
        .call(
            "POST",
            "/shop/queues/emails/messages?dedupe_id=welcome-7",
            &[],
            r#"{"to":"ada@example.com"}"#,
        )
        .await;
    assert_eq!(
        (dup.status, dup.json()["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let take = async |api: &Api, wait: &str| {
        api.call(
            "POST",
            "/shop/queues/emails/leases",
            &[],
            &format!(r#"{{"max":5,"visibility":"300ms","wait":"{wait}"}}"#),
        )
        .await
        .json()["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let first = take(&a, "0s").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["body"]["to"], "ada@example.com");
    assert_eq!(first[0]["attempt"], 1);
    // Replica a's consumer dies holding it; replica b's, waiting, gets it once the lease runs
    // out, as attempt 2.
    let second = take(&b, "3s").await;
    assert_eq!(second.len(), 1, "redelivered");
    assert_eq!(
        (second[0]["id"].as_str(), second[0]["attempt"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    // The dead consumer's receipt no longer acknowledges anything.
    let stale = first[0]["receipt"].as_str().unwrap();
    problem(
        &a.call(
            "DELETE",
            &format!("/shop/queues/emails/leases/{stale}"),
            &[],
            "",
        )
        .await,
        409,
        "lease-lost",
    );
    // It fails again: after two deliveries the message is a dead letter, not delivered again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(take(&a, "0s").await.is_empty());
    let dead = a.call("GET", "/shop/queues/emails/dead", &[], "").await;
    assert_eq!(dead.json()["messages"][0]["id"], id.as_str());
    let counts = a.call("GET", "/shop/queues/emails", &[], "").await;
    assert_eq!(
        counts.json(),
        serde_json::json!({"ready": 0, "leased": 0, "dead": 1})
    );
    // Replayed, taken and acknowledged: gone.
    assert_eq!(
        a.call("POST", &format!("/shop/queues/emails/dead/{id}"), &[], "")
            .await
            .status,
        204
    );
    let again = take(&b, "0s").await;
    assert_eq!(again[0]["attempt"], 1);
    let receipt = again[0]["receipt"].as_str().unwrap();
    assert_eq!(
        b.call(
            "DELETE",
            &format!("/shop/queues/emails/leases/{receipt}"),
            &[],
            ""
        )
        .await
        .status,
        204
    );
    let counts = a.call("GET", "/shop/queues/emails", &[], "").await;
    assert_eq!(
        counts.json(),
        serde_json::json!({"ready": 0, "leased": 0, "dead": 0})
    );
}

/// Push delivery: the app behind attache runs attache's idempotency; its handler fails the
/// first delivery with a 503, and the retry (same Idempotency-Key, a later attempt, the
/// CloudEvents headers and the trace context of the enqueue) succeeds: the message is
/// acknowledged. A message the app refuses for good (400) becomes a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_messages_reach_the_app_through_its_steps_and_retry_after_a_503() {
    let app = App::start("app").await;
    let port = free_port();
    let ports = Ports::new();
    let config = sidecar_config(
        ports,
        app.addr,
        &format!(
            "  idempotency: {{ store: memory }}
  context:
    listen: 127.0.0.1:{port}
    push:
      - {{ context: shop, queue: orders, path: /flaky/1/503, backoff: 100ms }}
      - {{ context: shop, queue: refused, path: /status/400, backoff: 100ms }}
"
        ),
    );
    let a = Attache::run(ports, &config);
    let api = Api {
        base: format!("http://127.0.0.1:{port}/v1/contexts"),
    };
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sent = api
        .call(
            "POST",
            "/shop/queues/orders/messages",
            &[("traceparent", tp)],
            r#"{"order":7}"#,
        )
        .await;
    assert_eq!(sent.status, 201, "{}", sent.text());
    let id = sent.json()["id"].as_str().unwrap().to_owned();
    assert!(
        eventually(10, async || a
            .metric("attache_context_push_total{result=\"delivered\"}")
            == Some(1.0))
        .await,
        "{}",
        a.metrics_text()
    );
    a.assert_metrics(&["attache_context_push_total{result=\"retried\"} 1"]);
    // The app counts its hits across paths: the second queue's message goes after.
    api.call(
        "POST",
        "/shop/queues/refused/messages",
        &[],
        r#"{"bad":true}"#,
    )
    .await;
    // Both deliveries went through attache's inbound leg with the message's id as the key:
    // the 503 released it, the retry ran and stored its answer.

    let lines = a.wait_access_log(5, |l| l["path"] == "/flaky/1/503" && l["status"] == 200);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the enqueue's trace"
    );
    let counts = api.call("GET", "/shop/queues/orders", &[], "").await;
    assert_eq!(
        counts.json(),
        serde_json::json!({"ready": 0, "leased": 0, "dead": 0})
    );
    assert!(
        eventually(10, async || api
            .call("GET", "/shop/queues/refused", &[], "")
            .await
            .json()["dead"]
            == 1)
        .await
    );
    let _ = id;
}

/// The memory store with a snapshot file: what was written before a drain (SIGTERM) is there
/// after a restart, fencing tokens included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_file_keeps_the_memory_store_across_a_restart() {
    let app = App::start("app").await;
    let dir = attache_tests::TempDir::new();
    let file = dir.path().join("context.json");
    let port = free_port();
    let ports = Ports::new();
    let config = sidecar_config(
        ports,
        app.addr,
        &format!(
            "  drain: {{ delay: 0s, grace_period: 1s }}
  context:
    listen: 127.0.0.1:{port}
    snapshot_file: '{}'
    snapshot_interval: 1h
",
            file.display()
        ),
    );
    let api = Api {
        base: format!("http://127.0.0.1:{port}/v1/contexts"),
    };
    let mut first = Attache::run(ports, &config);
    api.call("POST", "/laptop/counters/n", &[], r#"{"by":41}"#)
        .await;
    let lock = api
        .call("POST", "/laptop/locks/l", &[], r#"{"ttl":"1s"}"#)
        .await;
    let token = lock.json()["token"].as_u64().unwrap();
    first.signal("TERM");
    assert!(
        first
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    assert!(file.exists(), "the snapshot was written on drain");
    drop(first);
    let _second = Attache::run(ports, &config);
    let got = api.call("POST", "/laptop/counters/n", &[], "").await;
    assert_eq!(got.json()["value"], 42);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = api
        .call("POST", "/laptop/locks/l", &[], r#"{"ttl":"1s"}"#)
        .await;
    assert!(
        again.json()["token"].as_u64().unwrap() > token,
        "{}",
        again.text()
    );
}

/// `confirm_replicas`: a write is answered once a replica acknowledged it; with the replica
/// gone, a write is made but answered 503 within the confirmation timeout, and a retry under
/// its Idempotency-Key gets its outcome without applying it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_can_wait_for_a_replica_to_acknowledge_them() {
    let mut s = attache_tests::redis::Sentinel::start();
    let primary = format!("redis://127.0.0.1:{}", s.primary.port);
    let (_a, api) = with_context(&format!(
        "    store: '{primary}'\n    confirm_replicas: 1\n    confirm_timeout: 300ms\n    store_timeout: 2s\n"
    ))
    .await;
    // The replica has synced with the primary before the first write.
    assert!(
        eventually(10, async || s
            .primary
            .cli(&["INFO", "replication"])
            .contains("state=online"))
        .await
    );
    let got = api.call("POST", "/d-1/counters/n", &[], "").await;
    assert_eq!(got.status, 201, "{}", got.text());
    s.replica.stop();
    let key = [("idempotency-key", "k-1")];
    let started = std::time::Instant::now();
    let unconfirmed = api.call("POST", "/d-1/counters/n", &key, "").await;
    problem(&unconfirmed, 503, "context-store-unavailable");
    assert!(
        unconfirmed.json()["detail"]
            .as_str()
            .unwrap()
            .contains("acknowledged by 0 of 1")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // It was written; the retry gets its outcome and applies nothing more.
    let retried = api.call("POST", "/d-1/counters/n", &key, "").await;
    assert_eq!(retried.json()["value"], 2, "{}", retried.text());
    assert_eq!(retried.headers["idempotent-replayed"], "true");
}
