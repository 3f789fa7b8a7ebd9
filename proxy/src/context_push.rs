//! Push delivery of queue messages to the app (`spec.context.push`, specs/context-api.md §4):
//! one task per pushed queue leases a message, POSTs it through attache's own inbound
//! listener (so the app's steps apply: its idempotency makes a redelivered message run once),
//! and acknowledges it, retries it with backoff, or dead-letters it by the answer.
//!
//! The tasks belong to the store they read (`context.rs` keeps them with it) and end when a
//! reload replaces them: they watch a channel whose sender goes with the `Pushers`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attache_config::Push;
use attache_filters::context::error::ContextError;
use attache_filters::context::metrics::ContextFamilies;
use attache_filters::context::op::{Message, Op, Outcome};
use attache_filters::context::store::{Ran, Store};
use attache_filters::log_throttle::LogThrottle;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The running delivery tasks; dropping this stops them.
pub struct Pushers {
    _stop: tokio::sync::watch::Sender<()>,
}

/// What one delivery came to.
enum Delivery {
    Delivered,
    /// Try again after this long.
    Retry(Duration),
    /// Refused for good: dead-letter it.
    Refused(StatusCode),
}

/// Starts a task per entry of `push`, delivering to the inbound listener at `inbound`.
pub fn start(
    push: &[Push],
    store: Arc<dyn Store>,
    inbound: SocketAddr,
    max_attempts: u32,
    metrics: Arc<ContextFamilies>,
) -> Pushers {
    let (tx, rx) = tokio::sync::watch::channel(());
    // A listener on every address is reached on loopback.
    let target = match inbound.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], inbound.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, inbound.port()))
        }
        _ => inbound,
    };
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        for p in push {
            runtime.spawn(deliver_all(
                p.clone(),
                store.clone(),
                target,
                max_attempts,
                rx.clone(),
                metrics.clone(),
            ));
        }
    }
    Pushers { _stop: tx }
}

async fn deliver_all(
    push: Push,
    store: Arc<dyn Store>,
    target: SocketAddr,
    max_attempts: u32,
    mut stop: tokio::sync::watch::Receiver<()>,
    metrics: Arc<ContextFamilies>,
) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let errors = LogThrottle::new(Duration::from_secs(30));
    let lease = Op::Lease {
        name: push.queue.clone(),
        max: 1,
        visibility: push.visibility.get(),
        max_attempts,
    };
    loop {
        let leased = match store.run(&push.context, &lease, None).await {
            Ok(Ran {
                outcome: Outcome::Messages(m),
                ..
            }) => m.into_iter().next(),
            Ok(_) | Err(ContextError::NotFound(_)) => None,
            Err(e) => {
                if let Some(held_back) = errors.admit() {
                    tracing::warn!(context = %push.context, queue = %push.queue, error = %e, held_back, "push delivery could not lease from the context store");
                }
                None
            }
        };
        let Some(message) = leased else {
            tokio::select! {
                changed = stop.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        let delivery = tokio::select! {
            changed = stop.changed() => if changed.is_err() { return } else { continue },
            d = deliver(&client, target, &push, &message) => d,
        };
        let (op, result) = match delivery {
            Delivery::Delivered => (
                Op::Ack {
                    name: push.queue.clone(),
                    receipt: message.receipt.clone(),
                },
                "delivered",
            ),
            Delivery::Retry(after) => (
                Op::Extend {
                    name: push.queue.clone(),
                    receipt: message.receipt.clone(),
                    visibility: after,
                },
                "retried",
            ),
            Delivery::Refused(status) => {
                tracing::info!(context = %push.context, queue = %push.queue, id = %message.id, %status, "the app refused a pushed message; it is a dead letter now");
                (
                    Op::Bury {
                        name: push.queue.clone(),
                        receipt: message.receipt.clone(),
                    },
                    "dead",
                )
            }
        };
        metrics.pushed(result);
        if let Err(e) = store.run(&push.context, &op, None).await
            && let Some(held_back) = errors.admit()
        {
            tracing::warn!(context = %push.context, queue = %push.queue, error = %e, held_back, "push delivery could not settle a message (it will be delivered again)");
        }
    }
}

/// One delivery: the message POSTed to the app, within the lease.
async fn deliver(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: SocketAddr,
    push: &Push,
    m: &Message,
) -> Delivery {
    let backoff = push
        .backoff
        .get()
        .saturating_mul(1 << m.attempt.saturating_sub(1).min(16))
        .min(push.max_backoff.get());
    let mut req = Request::post(format!("http://{target}{}", push.path));
    let source = format!("attache://contexts/{}/queues/{}", push.context, push.queue);
    for (name, value) in [
        ("content-type", Some(m.content_type.as_str())),
        ("idempotency-key", Some(m.id.as_str())),
        ("ce-specversion", Some("1.0")),
        ("ce-id", Some(m.id.as_str())),
        ("ce-source", Some(source.as_str())),
        ("ce-type", Some("dev.attache.context.message")),
        ("traceparent", m.traceparent.as_deref()),
        ("baggage", m.baggage.as_deref()),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            req = req.header(name, v);
        }
    }
    req = req.header("attache-attempt", m.attempt.to_string());
    let Ok(req) = req.body(Full::new(Bytes::from(m.body.clone()))) else {
        return Delivery::Refused(StatusCode::BAD_REQUEST);
    };
    match tokio::time::timeout(push.visibility.get(), client.request(req)).await {
        Ok(Ok(res)) => {
            let status = res.status();
            if status.is_success() {
                return Delivery::Delivered;
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let retry_after = res
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or_default();
                return Delivery::Retry(backoff.max(retry_after));
            }
            Delivery::Refused(status)
        }
        // No connection, or no answer within the lease: again, later.
        _ => Delivery::Retry(backoff),
    }
}
