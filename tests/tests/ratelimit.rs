//! Rate limits through the real binary: local limits (a burst's exact 429s and their fields,
//! keys, matches, outbound limits, reloads), and shared limits over a real redis-server and a
//! real three-primary Redis Cluster, with Redis paused and killed under them.

use std::time::{Duration, Instant};

use attache_tests::client::{Got, exchange};
use attache_tests::otlp::{Collector, Protocol, SpanKind};
use attache_tests::redis::{Cluster, Redis};
use attache_tests::{App, Attache, Ports, eventually, metrics, sidecar_config};

async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    exchange("GET", url, headers, "").await
}

fn assert_limited(got: &Got, policy: &str, retry_after: std::ops::RangeInclusive<u64>) {
    assert_eq!(got.status, 429, "{}", got.text());
    assert_eq!(got.headers["content-type"], "application/problem+json");
    assert_eq!(
        got.json()["type"],
        "https://attache.dev/problems/rate-limited"
    );
    assert_eq!(got.headers["ratelimit-policy"], policy);
    let after: u64 = got.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after.contains(&after), "Retry-After {after}");
    let field = got.headers["ratelimit"].to_str().unwrap();
    assert!(field.contains(";r=0;t="), "{field}");
}

/// A `spec.rate_limits` section over `store` with the given `limits` lines.
fn shared(store: &str, timeout: &str, limits: &str) -> String {
    format!(
        "  rate_limits:\n    store: '{store}'\n    store_timeout: {timeout}\n    limits:\n{limits}"
    )
}

/// Metrics samples summed over every attache given (`series` with its labels).
fn total(attaches: &[Attache], series: &str) -> f64 {
    attaches
        .iter()
        .map(|a| a.metric(series).unwrap_or(0.0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_limit_gets_exactly_its_429s_and_nothing_reaches_the_app() {
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let extra = format!(
        "  idempotency: {{ store: memory }}
  telemetry:
    otlp: {{ endpoint: '{}', timeout: 2s }}
    batch: {{ scheduled_delay: 100ms }}
  rate_limits:
    limits:
      - {{ name: orders, rate: 1/m, burst: 5, key: client_address, headers_on_allowed: true,
          match: {{ methods: [POST], path_prefix: /orders }} }}
",
        collector.endpoint()
    );
    let a = Attache::sidecar(app.addr, &extra);
    let mut got = Vec::new();
    for i in 0..8 {
        let key = format!("order-{i}");
        got.push(
            exchange(
                "POST",
                &a.url("/orders"),
                &[
                    ("idempotency-key", &key),
                    ("content-type", "application/json"),
                ],
                "{}",
            )
            .await,
        );
    }
    let statuses: Vec<u16> = got.iter().map(|g| g.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    // Allowed responses count the burst down; the policy is the burst and its refill time.
    for (i, g) in got[..5].iter().enumerate() {
        assert_eq!(g.headers["ratelimit-policy"], "\"orders\";q=5;w=300");
        let field = g.headers["ratelimit"].to_str().unwrap();
        assert!(
            field.starts_with(&format!("\"orders\";r={};t=", 4 - i)),
            "{field}"
        );
    }
    for g in &got[5..] {
        assert_limited(g, "\"orders\";q=5;w=300", 1..=60);
    }
    // The limited requests reached neither the idempotency step nor the app.
    assert_eq!(app.hits(), 5);
    a.assert_metrics(&[
        "attache_ratelimit_decisions_total{limit=\"orders\",decision=\"allowed\"} 5",
        "attache_ratelimit_decisions_total{limit=\"orders\",decision=\"limited\"} 3",
        "attache_idempotency_outcomes_total{route=\"default\",outcome=\"completed\"} 5",
        "attache_http_requests_total{direction=\"inbound\",method=\"POST\",status_class=\"4xx\"} 3",
    ]);
    // Other methods and paths are not limited.
    assert_eq!(get(&a.url("/orders"), &[]).await.status, 200);
    assert_eq!(
        exchange("POST", &a.url("/carts"), &[], "").await.status,
        200
    );
    // The access log and the span name the limit.
    let lines = a.wait_access_log(5, |l| l["status"] == 429);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines.iter().all(|l| l["rate_limited"] == "orders"));
    let spans = collector.wait_spans(10, 10).await;
    let limited: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.kind() == SpanKind::Server
                && s.attr("http.response.status_code").as_deref() == Some("429")
        })
        .collect();
    assert_eq!(limited.len(), 3);
    for s in limited {
        assert_eq!(s.attr("attache.ratelimit.limit").as_deref(), Some("orders"));
        assert_eq!(s.attr("attache.ratelimit.limited").as_deref(), Some("true"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_split_the_budget_and_a_missing_key_shares_one_bucket_or_skips() {
    let app = App::start("app").await;
    let extra = "  rate_limits:
    limits:
      - { name: tenant, rate: 1/m, burst: 2, key: { header: x-tenant-id } }
      - { name: plan, rate: 1/m, burst: 1, key: { baggage: plan }, missing_key: skip,
          match: { path_regex: '/v[0-9]+/reports' } }
";
    let a = Attache::sidecar(app.addr, extra);
    let status =
        async |path: &str, headers: &[(&str, &str)]| get(&a.url(path), headers).await.status;
    for tenant in ["acme", "globex"] {
        let h = [("x-tenant-id", tenant)];
        assert_eq!(status("/", &h).await, 200, "{tenant}");
        assert_eq!(status("/", &h).await, 200, "{tenant}");
        assert_eq!(status("/", &h).await, 429, "{tenant}");
    }
    // Requests without the header share one bucket: leaving it out escapes nothing.
    assert_eq!(status("/", &[]).await, 200);
    assert_eq!(status("/", &[]).await, 200);
    assert_eq!(status("/", &[]).await, 429);
    // The second limit reads a baggage member on matching paths only, and skips requests
    // without it.
    let h = |plan: &'static str| [("x-tenant-id", "initech"), ("baggage", plan)];
    assert_eq!(status("/v1/reports", &h("plan=free")).await, 200);
    assert_eq!(status("/v2/reports", &h("plan=free")).await, 429);
    let got = get(&a.url("/v1/reports"), &h("plan=pro")).await;
    assert_eq!(got.status, 429, "the tenant's own burst is spent by now");
    assert_eq!(got.headers["ratelimit-policy"], "\"tenant\";q=2;w=120");
    assert_eq!(
        status("/v1/reportsX", &[("x-tenant-id", "hooli")]).await,
        200
    );
    a.assert_metrics(&[
        "attache_ratelimit_decisions_total{limit=\"plan\",decision=\"limited\"} 1",
        "attache_ratelimit_decisions_total{limit=\"plan\",decision=\"allowed\"} 1",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_limit_answers_the_app_with_the_429() {
    let app = App::start("app").await;
    let payments = App::start("payments").await;
    let ports = Ports::new();
    let extra = format!(
        "  outbound: [ {{ listen: '127.0.0.1:{}', upstream: payments }} ]
  upstreams: {{ payments: {{ endpoints: ['http://{}'] }} }}
  rate_limits:
    limits:
      - {{ name: payments-calls, rate: 1/m, burst: 3, match: {{ listener: outbound, upstream: payments }} }}
",
        ports.outbound, payments.addr
    );
    let a = Attache::run(ports, &sidecar_config(ports, app.addr, &extra));
    let out = format!("http://127.0.0.1:{}/charge", ports.outbound);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&out, &[]).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(payments.hits(), 3);
    // Inbound requests are not limited by it.
    for _ in 0..5 {
        assert_eq!(get(&a.url("/"), &[]).await.status, 200);
    }
    a.assert_metrics(&[
        "attache_ratelimit_decisions_total{limit=\"payments-calls\",decision=\"limited\"} 2",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_limit_and_starts_a_changed_one_afresh() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let config = |limits: &str| {
        sidecar_config(
            ports,
            app.addr,
            &format!("  rate_limits:\n    limits:\n{limits}"),
        )
    };
    let kept = "      - { name: kept, rate: 1/m, burst: 2, match: { path_prefix: /kept } }\n";
    let changed = |burst: u32| {
        format!(
            "      - {{ name: changed, rate: 1/m, burst: {burst}, match: {{ path_prefix: /changed }} }}\n"
        )
    };
    let a = Attache::run(ports, &config(&format!("{kept}{}", changed(2))));
    for path in ["/kept", "/changed"] {
        assert_eq!(get(&a.url(path), &[]).await.status, 200);
        assert_eq!(get(&a.url(path), &[]).await.status, 200);
        assert_eq!(get(&a.url(path), &[]).await.status, 429);
    }
    a.reconfigure(&config(&format!("{kept}{}", changed(3))))
        .await;
    assert_eq!(
        get(&a.url("/kept"), &[]).await.status,
        429,
        "the unchanged limit kept its spent burst"
    );
    for _ in 0..3 {
        assert_eq!(get(&a.url("/changed"), &[]).await.status, 200);
    }
    assert_eq!(get(&a.url("/changed"), &[]).await.status, 429);
}

/// Sends `GET path` to every attache in turn, every `pace`, for `run`; the statuses seen.
async fn load(
    attaches: &[Attache],
    path: &str,
    pace: Duration,
    run: Duration,
) -> (u64, u64, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in attaches {
        let url = a.url(path);
        tasks.push(tokio::spawn(async move {
            let client = attache_tests::client::http1();
            let (mut ok, mut limited) = (0u64, 0u64);
            let mut tick = tokio::time::interval(pace);
            let start = Instant::now();
            while start.elapsed() < run {
                tick.tick().await;
                match attache_tests::client::get(&client, &url).await {
                    Ok(g) if g.status == 200 => ok += 1,
                    Ok(g) if g.status == 429 => limited += 1,
                    Ok(g) => panic!("unexpected status {}: {}", g.status, g.text()),
                    Err(e) => panic!("request failed: {e}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    (ok, limited, started.elapsed())
}

/// Four attache processes share one limit of 40/s with a burst of 20 through `store`, under
/// about 200 requests a second for 10 s: together they allow what one limit would, within 5%.
/// Returns how many requests were sent.
async fn four_replicas_enforce_one_global_limit(store: &str) -> u64 {
    let app = App::start("app").await;
    let extra = shared(
        store,
        "500ms",
        "      - { name: global, rate: 40/s, burst: 20, shared: true }\n",
    );
    let attaches: Vec<Attache> = (0..4).map(|_| Attache::sidecar(app.addr, &extra)).collect();
    let (ok, limited, took) = load(
        &attaches,
        "/",
        Duration::from_millis(20),
        Duration::from_secs(10),
    )
    .await;
    let expected = 20.0 + 40.0 * took.as_secs_f64();
    let allowed = total(
        &attaches,
        "attache_ratelimit_decisions_total{limit=\"global\",decision=\"allowed\"}",
    );
    assert_eq!(allowed, ok as f64, "every 200 was an allowed decision");
    assert!(limited > 0, "the load was over the limit");
    let off = (ok as f64 - expected).abs() / expected;
    eprintln!(
        "{store}: {ok} allowed, {limited} limited in {took:?}; one limit allows {expected:.0} ({:+.2}%)",
        (ok as f64 - expected) / expected * 100.0
    );
    assert!(
        off <= 0.05,
        "{ok} allowed in {took:?} ({limited} limited); one limit allows {expected:.0}: {:.1}% off",
        off * 100.0
    );
    assert_eq!(app.hits() as u64, ok);
    assert_eq!(
        total(
            &attaches,
            "attache_ratelimit_store_errors_total{limit=\"global\",error=\"timeout\",action=\"allowed\"}"
        ) + total(
            &attaches,
            "attache_ratelimit_store_errors_total{limit=\"global\",error=\"unavailable\",action=\"allowed\"}"
        ),
        0.0
    );
    ok + limited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_share_one_limit_through_one_redis_in_one_round_trip_each() {
    let redis = Redis::start();
    let sent = four_replicas_enforce_one_global_limit(&redis.url()).await;
    // One script call per request: one round trip each (a failed `EVALSHA` answered
    // `NOSCRIPT`, the script then loaded, is not counted).
    assert_eq!(redis.calls("evalsha") + redis.calls("eval"), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_share_one_limit_through_a_redis_cluster() {
    let cluster = Cluster::start();
    let sent = four_replicas_enforce_one_global_limit(&cluster.url()).await;
    assert_eq!(cluster.script_calls(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_dead_redis_fails_open_or_closed_as_configured_within_the_timeout() {
    let mut redis = Redis::start();
    let app = App::start("app").await;
    let extra = shared(
        &redis.url(),
        "100ms",
        "      - { name: open, rate: 1/m, burst: 2, shared: true, match: { path_prefix: /open } }
      - { name: closed, rate: 1/m, burst: 2, shared: true, on_store_error: deny, match: { path_prefix: /closed } }
",
    );
    let a = Attache::sidecar(app.addr, &extra);
    for path in ["/open", "/closed"] {
        assert_eq!(get(&a.url(path), &[]).await.status, 200);
        assert_eq!(get(&a.url(path), &[]).await.status, 200);
        assert_eq!(get(&a.url(path), &[]).await.status, 429);
    }
    // Paused: Redis accepts but never answers, the slowest failure there is.
    redis.pause();
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        for (path, status) in [("/open", 200), ("/closed", 429)] {
            let started = Instant::now();
            let got = get(&a.url(path), &[]).await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(got.status, status, "{path}: {}", got.text());
        }
    }
    redis.resume();
    // 100 ms of store timeout, and the rest of a request on a loaded CI machine.
    assert!(
        slowest < Duration::from_millis(1000),
        "a request took {slowest:?}"
    );
    a.assert_metrics(&[
        "attache_ratelimit_store_errors_total{limit=\"open\",error=\"timeout\",action=\"allowed\"} 5",
        "attache_ratelimit_store_errors_total{limit=\"closed\",error=\"timeout\",action=\"denied\"} 5",
    ]);
    // Back: the limits hold again, with their state intact.
    assert!(
        eventually(10, async || get(&a.url("/open"), &[]).await.status == 429).await,
        "the limit is enforced again once Redis answers"
    );
    // Killed: refused connections, answered at once.
    redis.stop();
    for (path, status) in [("/open", 200), ("/closed", 429)] {
        let got = get(&a.url(path), &[]).await;
        assert_eq!(got.status, status, "{path}");
        if status == 429 {
            assert!(
                got.json()["detail"]
                    .as_str()
                    .unwrap()
                    .contains("could not be checked")
            );
        }
    }
    let text = a.metrics_text();
    assert!(metrics::value(&text, "attache_ratelimit_store_errors_total{limit=\"open\",error=\"unavailable\",action=\"allowed\"}").is_some_and(|v| v >= 1.0), "{text}");
    assert!(
        a.log_text().contains("a shared rate limit"),
        "the outage is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_lives_on_the_primary_a_sentinel_names() {
    let s = attache_tests::redis::Sentinel::start();
    let app = App::start("app").await;
    let extra = shared(
        &s.url(),
        "500ms",
        "      - { name: sentinel, rate: 1/m, burst: 2, key: { header: x-api-key }, shared: true }\n",
    );
    // Two replicas: the second sees what the first spent.
    let a = Attache::sidecar(app.addr, &extra);
    let b = Attache::sidecar(app.addr, &extra);
    let key = [("x-api-key", "ak_live_1")];
    assert_eq!(get(&a.url("/"), &key).await.status, 200);
    assert_eq!(get(&b.url("/"), &key).await.status, 200);
    let got = get(&a.url("/"), &key).await;
    assert_limited(&got, "\"sentinel\";q=2;w=120", 1..=60);
    assert_eq!(
        get(&b.url("/"), &[("x-api-key", "ak_live_2")]).await.status,
        200
    );
    // The key is on the primary, hashed: the API key itself is never written to Redis.
    let keys = s.primary.cli(&["KEYS", "attache:rl:*"]);
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(
        keys.lines()
            .all(|k| k.starts_with("attache:rl:{sentinel:") && k.ends_with('}')),
        "{keys}"
    );
    assert!(!keys.contains("ak_live"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_keys_shares_one_overflow_bucket() {
    let app = App::start("app").await;
    let a = Attache::sidecar(
        app.addr,
        "  rate_limits:
    limits: [ { name: api-keys, rate: 1/m, burst: 2, key: { header: x-api-key }, max_keys: 5 } ]
",
    );
    for i in 0..5 {
        let key = format!("known-{i}");
        assert_eq!(get(&a.url("/"), &[("x-api-key", &key)]).await.status, 200);
    }
    // Past max_keys, twenty made-up keys draw on one bucket with one key's burst.
    let mut flood = Vec::new();
    for i in 0..20 {
        let key = format!("made-up-{i}");
        flood.push(get(&a.url("/"), &[("x-api-key", &key)]).await.status);
    }
    assert_eq!(flood.iter().filter(|s| **s == 200).count(), 2, "{flood:?}");
    assert_eq!(flood.iter().filter(|s| **s == 429).count(), 18, "{flood:?}");
    // A tracked key kept its own budget through the flood.
    assert_eq!(
        get(&a.url("/"), &[("x-api-key", "known-3")]).await.status,
        200
    );
    assert_eq!(
        get(&a.url("/"), &[("x-api-key", "known-3")]).await.status,
        429
    );
    a.assert_metrics(&["attache_ratelimit_overflow_total{limit=\"api-keys\"} 20"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attache_dev_rate_limit_limits_each_client_and_shows_the_budget() {
    let ports = Ports::new();
    let listen = format!("127.0.0.1:{}", ports.inbound);
    let admin = format!("127.0.0.1:{}", ports.admin);
    let mut a = Attache::spawn(
        ports,
        attache_tests::TempDir::new(),
        &[
            "dev",
            "--rate-limit",
            "2/m",
            "--listen",
            &listen,
            "--admin",
            &admin,
        ],
    );
    a.wait_ready();
    let first = get(&a.url("/"), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["ratelimit-policy"], "\"dev\";q=2;w=60");
    assert!(
        first.headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"dev\";r=1;t=")
    );
    assert_eq!(get(&a.url("/"), &[]).await.status, 200);
    assert_limited(&get(&a.url("/"), &[]).await, "\"dev\";q=2;w=60", 1..=30);
}
