//! The ambassador's balancing and passive health, end to end: the real binary in front of
//! real endpoints, one of them failing.

use std::net::SocketAddr;
use std::time::Duration;

use attache_tests::app::{App, Canned};
use attache_tests::client::exchange;
use attache_tests::{Attache, Ports};

/// An attache with one outbound port to the upstream `name` over `endpoints`, with more of
/// the upstream's settings in `settings` (flow YAML, e.g. `balance: shard`), the access log off.
fn ambassador(name: &str, endpoints: &[SocketAddr], settings: &str) -> (Attache, Ports) {
    let ports = Ports::new();
    let list: Vec<String> = endpoints.iter().map(|e| format!("'http://{e}'")).collect();
    let more = if settings.is_empty() {
        String::new()
    } else {
        format!(", {settings}")
    };
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ {{ listen: '127.0.0.1:{out}', upstream: {name} }} ]
  upstreams:
    {name}: {{ endpoints: [{list}]{more} }}
  telemetry: {{ access_log: {{ enabled: false }} }}
  admin: {{ listen: 127.0.0.1:{admin} }}
",
        list = list.join(", "),
        out = ports.outbound,
        admin = ports.admin
    );
    (Attache::run(ports, &config), ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_keeps_failing_is_ejected_and_comes_back() {
    let broken = Canned::start(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    let healthy = App::start("healthy").await;
    let (a, ports) = ambassador(
        "pay",
        &[broken.addr, healthy.addr],
        "ejection: { consecutive_failures: 3, base_time: 1s }",
    );
    let url = format!("http://127.0.0.1:{}/x", ports.outbound);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(exchange("GET", &url, &[], "").await.status);
    }
    // Round robin: the broken endpoint answers requests 1, 3 and 5 with 500; the third
    // failure in a row ejects it, and everything after goes to the healthy one.
    assert_eq!(broken.hits(), 3, "{statuses:?}");
    assert_eq!(healthy.hits(), 9);
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 3);
    assert!(statuses[5..].iter().all(|s| *s == 200), "{statuses:?}");
    a.assert_metrics(&[
        &format!(
            "attache_upstream_ejections_total{{upstream=\"pay\",endpoint=\"{}\"}} 1",
            broken.addr
        ),
        // Per endpoint: tries by status class, their latency, connections open now (the
        // healthy one keeps its one alive; the broken one closes after each answer).
        &format!(
            "attache_upstream_requests_total{{upstream=\"pay\",endpoint=\"{}\",status_class=\"5xx\"}} 3",
            broken.addr
        ),
        &format!(
            "attache_upstream_requests_total{{upstream=\"pay\",endpoint=\"{}\",status_class=\"2xx\"}} 9",
            healthy.addr
        ),
        &format!(
            "attache_upstream_request_duration_seconds_count{{upstream=\"pay\",endpoint=\"{}\"}} 9",
            healthy.addr
        ),
        &format!(
            "attache_upstream_open_connections{{endpoint=\"{}\"}} 1",
            healthy.addr
        ),
    ]);

    // After base_time it takes requests again (one failure does not put it back out).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..4 {
        exchange("GET", &url, &[], "").await;
    }
    assert_eq!(broken.hits(), 5, "back in the rotation: two of four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_upstream_sends_each_key_to_one_endpoint_and_refuses_keyless_requests() {
    let apps = [
        App::start("shard-a").await,
        App::start("shard-b").await,
        App::start("shard-c").await,
    ];
    let addrs: Vec<SocketAddr> = apps.iter().map(|a| a.addr).collect();
    let (a, ports) = ambassador(
        "users",
        &addrs,
        "balance: shard, shard: { path: '^/users/([^/]+)/', fallback: reject }",
    );
    let mut owners = std::collections::HashMap::new();
    for round in 0..3 {
        for user in 0..20 {
            let url = format!("http://127.0.0.1:{}/users/u{user}/orders", ports.outbound);
            let got = exchange("GET", &url, &[], "").await;
            assert_eq!(got.status, 200, "{}", got.text());
            let app = got.json()["app"].as_str().unwrap_or_default().to_owned();
            let first = owners.entry(user).or_insert_with(|| app.clone());
            assert_eq!(*first, app, "user {user}, round {round}: the same endpoint");
        }
    }
    let used: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(used.len(), 3, "20 keys spread over all three: {owners:?}");

    // A request without the key is refused: 400, and no endpoint sees it.
    let before: usize = apps.iter().map(App::hits).sum();
    let got = exchange(
        "GET",
        &format!("http://127.0.0.1:{}/health", ports.outbound),
        &[],
        "",
    )
    .await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(got.text().contains("shard key"), "{}", got.text());
    assert_eq!(apps.iter().map(App::hits).sum::<usize>(), before);
    a.assert_metrics(&["attache_client_errors_total{result=\"no_shard_key\"} 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_steers_away_from_a_slow_endpoint_where_round_robin_does_not() {
    let fast = [App::start("fast-a").await, App::start("fast-b").await];
    let slow = App::start_slow("slow", Duration::from_millis(60)).await;
    let run = |balance: &'static str| {
        ambassador(
            "pay",
            &[fast[0].addr, fast[1].addr, slow.addr],
            &format!("balance: {balance}, ejection: {{ consecutive_failures: 0 }}"),
        )
    };
    // Four clients at a time, 200 requests each way; count what the slow endpoint got.
    async fn load(ports: Ports) {
        let url = format!("http://127.0.0.1:{}/x", ports.outbound);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let got = exchange("GET", &url, &[], "").await;
                    assert_eq!(got.status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let (_rr, rr_ports) = run("round_robin");
    load(rr_ports).await;
    let rr_share = slow.hits();
    let (_p2c, p2c_ports) = run("p2c_ewma");
    load(p2c_ports).await;
    let p2c_share = slow.hits() - rr_share;
    assert!(
        (60..=75).contains(&rr_share),
        "round robin gives the slow one a third: {rr_share} of 200"
    );
    assert!(
        p2c_share * 4 < rr_share,
        "p2c_ewma sends it far fewer: {p2c_share} against round robin's {rr_share}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_ten_thousand_requests_evenly() {
    let apps = [
        App::start("rr-a").await,
        App::start("rr-b").await,
        App::start("rr-c").await,
        App::start("rr-d").await,
    ];
    let addrs: Vec<SocketAddr> = apps.iter().map(|a| a.addr).collect();
    let (_a, ports) = ambassador("four", &addrs, "");
    let url = format!("http://127.0.0.1:{}/x", ports.outbound);
    // Eight clients at once, 1,250 requests each, over kept-alive connections.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = attache_tests::client::http1();
            for _ in 0..1250 {
                let got = attache_tests::client::get(&client, &url).await.unwrap();
                assert_eq!(got.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let hits: Vec<usize> = apps.iter().map(App::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 10_000);
    for h in &hits {
        assert!(
            (2375..=2625).contains(h),
            "each of four within 5% of 2,500: {hits:?}"
        );
    }
}
