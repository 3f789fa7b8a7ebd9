//! The Context API's store conformance suite (`tests/src/context_suite.rs`) on every backend:
//! the memory store, a real redis-server and a real three-primary Redis Cluster.

use std::time::Duration;

use attache_filters::context::memory::MemoryStore;
use attache_filters::context::redis_store::RedisStore;
use attache_filters::context::store::Limits;
use attache_tests::context_suite::conformance;
use attache_tests::redis::{Cluster, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_passes_the_conformance_suite() {
    conformance(&MemoryStore::new(Limits::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_passes_the_conformance_suite() {
    let redis = Redis::start();
    let store = RedisStore::new(
        &redis.url(),
        "suite",
        Duration::from_secs(2),
        Limits::default(),
    )
    .unwrap();
    conformance(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_passes_the_conformance_suite_on_a_cluster() {
    let cluster = Cluster::start();
    let store = RedisStore::new(
        &cluster.url(),
        "suite",
        Duration::from_secs(2),
        Limits::default(),
    )
    .unwrap();
    conformance(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_passes_the_conformance_suite_through_sentinel() {
    let s = attache_tests::redis::Sentinel::start();
    let store =
        RedisStore::new(&s.url(), "suite", Duration::from_secs(2), Limits::default()).unwrap();
    conformance(&store).await;
}
