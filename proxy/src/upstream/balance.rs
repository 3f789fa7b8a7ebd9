//! Balancing: which endpoint of a target a request goes to, and where it goes when no
//! connection to that one could be made. [`Balance`] is the tower service over a target's
//! endpoints; it asks a [`Balancer`] for the first endpoint and, after a failed connection, for
//! the next. A `Balancer` is the seam where other policies (P2C over latency, sharding by key)
//! plug in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use std::task::{Context, Poll, ready};

use attache_filters::Body;
use attache_filters::errors::error_chain;
use http::Request;

use super::endpoint::{Endpoint, Sending};
use super::failure::Failure;
use super::health::Health;
use super::{Exchange, Outgoing, Unanswered};

/// Picks endpoints, by index, out of `len`.
pub trait Balancer: Send + Sync {
    /// The endpoint for a new request; `None` when the policy refuses it (a sharded upstream
    /// that rejects requests without a key).
    fn pick(&self, req: &Request<Body>, len: usize) -> Option<usize>;

    /// The endpoint to try after no connection to `failed` could be made (the request went
    /// nowhere, so it may go anywhere, whatever its method).
    fn next_after(&self, failed: usize, len: usize) -> usize {
        (failed + 1) % len
    }

    /// Whether it learns from each try ([`Balancer::started`], [`Balancer::finished`]); the
    /// balance reads the clock for it only then.
    fn measures(&self) -> bool {
        false
    }

    /// A try at endpoint `i` began.
    fn started(&self, _i: usize) {}

    /// A try at endpoint `i` ended after `rtt` (to its response head, or its failure).
    fn finished(&self, _i: usize, _rtt: std::time::Duration) {}
}

/// Each request to the next endpoint in turn; a failover goes to the one after the failed.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The next endpoint in turn.
    pub fn turn(&self, len: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % len.max(1)
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, _: &Request<Body>, len: usize) -> Option<usize> {
        Some(self.turn(len))
    }
}

/// One set of a target's endpoints, with the policy state made for it: the balancer's and
/// passive health's, both by endpoint index.
pub struct Set {
    pub endpoints: Arc<[Endpoint]>,
    pub balancer: Arc<dyn Balancer>,
    /// Which endpoints are ejected for failing (passive health).
    pub health: Arc<Health>,
}

impl Set {
    /// The endpoints' addresses (`host:port`, or the resolved address), in order.
    pub fn addresses(&self) -> Vec<String> {
        self.endpoints.iter().map(Endpoint::address).collect()
    }

    /// The balancer's pick, or the next endpoint not ejected.
    fn choose(&self, picked: usize) -> usize {
        let len = self.endpoints.len();
        self.health
            .choose(picked, |i| self.balancer.next_after(i, len))
    }
}

/// A target's endpoints and the policy that picks among them, as a tower service. Cheap to
/// clone. The set can be made replaceable while requests run (DNS re-resolution,
/// `resolve.rs`): each request then takes the set current when it starts, and keeps it
/// through its failover. A set nothing replaces is read without the swap.
#[derive(Clone)]
pub struct Balance {
    current: Current,
}

#[derive(Clone)]
enum Current {
    Fixed(Arc<Set>),
    Swapped(Arc<ArcSwap<Set>>),
}

impl Balance {
    pub fn new(endpoints: Vec<Endpoint>, balancer: Arc<dyn Balancer>, health: Health) -> Self {
        Self::of(Set {
            endpoints: endpoints.into(),
            balancer,
            health: Arc::new(health),
        })
    }

    fn of(set: Set) -> Self {
        Self {
            current: Current::Fixed(Arc::new(set)),
        }
    }

    /// The endpoints' addresses, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.set().addresses()
    }

    /// The current set.
    pub fn set(&self) -> Arc<Set> {
        match &self.current {
            Current::Fixed(set) => set.clone(),
            Current::Swapped(swap) => swap.load_full(),
        }
    }

    /// The same balance, its set replaceable through the returned handle (held weakly by
    /// the resolver, so it ends with the balance): requests from then on go to the new set.
    pub fn swappable(self) -> (Self, std::sync::Weak<ArcSwap<Set>>) {
        let swap = match self.current {
            Current::Swapped(swap) => swap,
            Current::Fixed(set) => Arc::new(ArcSwap::new(set)),
        };
        let weak = Arc::downgrade(&swap);
        (
            Self {
                current: Current::Swapped(swap),
            },
            weak,
        )
    }

    /// The same endpoints under another policy (while the target is built).
    pub fn with_balancer(self, balancer: Arc<dyn Balancer>) -> Self {
        let set = self.set();
        Self::of(Set {
            endpoints: set.endpoints.clone(),
            balancer,
            health: set.health.clone(),
        })
    }

    /// The same endpoints with another health policy (while the target is built).
    pub fn with_health(self, health: Health) -> Self {
        let set = self.set();
        Self::of(Set {
            endpoints: set.endpoints.clone(),
            balancer: set.balancer.clone(),
            health: Arc::new(health),
        })
    }

    /// Sends `out` to the endpoint the balancer picks; when no connection to it could be
    /// made, to the next one, once, whatever the method (nothing of the request was sent).
    pub fn send(&self, out: Outgoing) -> Failover {
        let set = self.set();
        let Some(picked) = set.balancer.pick(&out.request, set.endpoints.len()) else {
            return refused(set, out);
        };
        let at = set.choose(picked);
        let deadline = (out.started, out.deadline);
        let measured = set.balancer.measures().then(|| {
            set.balancer.started(at);
            tokio::time::Instant::now()
        });
        Failover {
            sending: set.endpoints[at].send(out),
            set,
            at,
            deadline,
            failed_over: None,
            refused: false,
            measured,
        }
    }
}

/// A request the balancer refused (no shard key): it goes nowhere.
fn refused(set: Arc<Set>, out: Outgoing) -> Failover {
    let upstream = set.endpoints[0].info();
    Failover {
        sending: Box::pin(std::future::ready(Err(Unanswered {
            error: super::failure::SendError::NoShardKey,
            unsent: Some(Box::new(out.request)),
            upstream,
            failed_over: None,
        }))),
        set,
        at: 0,
        deadline: (out.started, out.deadline),
        // Nothing to fail over to: the refusal is the policy's, not an endpoint's.
        failed_over: Some(Failure::NoShardKey),
        refused: true,
        measured: None,
    }
}

impl tower::Service<Outgoing> for Balance {
    type Response = Exchange;
    type Error = Unanswered;
    type Future = Failover;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Unanswered>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outgoing) -> Failover {
        self.send(out)
    }
}

/// The exchange with the picked endpoint and, after a connection that could not be made, with
/// the next. Written out rather than an `async` block so that it needs no allocation of its own.
pub struct Failover {
    sending: Sending,
    /// The set the request started with.
    set: Arc<Set>,
    at: usize,
    /// The exchange's start and deadline, which a failover keeps.
    deadline: (tokio::time::Instant, tokio::time::Instant),
    /// Set once the request failed over: why the first endpoint could not be reached.
    failed_over: Option<Failure>,
    /// The balancer refused the request: no endpoint was tried.
    refused: bool,
    /// When the try in flight began, for a balancer that learns from tries.
    measured: Option<tokio::time::Instant>,
}

impl Future for Failover {
    type Output = Result<Exchange, Unanswered>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let result = ready!(this.sending.as_mut().poll(cx));
            if this.refused {
                return Poll::Ready(result);
            }
            let len = this.set.endpoints.len();
            let failed = match &result {
                Ok(exchange) => exchange.response.status().is_server_error(),
                Err(unanswered) => Failure::of(&unanswered.error).is_upstream(),
            };
            this.set.health.record(this.at, failed);
            if let Some(began) = this.measured.take() {
                this.set.balancer.finished(this.at, began.elapsed());
            }
            match result {
                Ok(mut exchange) => {
                    if this.failed_over.is_some() {
                        exchange.upstream.resend_count += 1;
                        exchange.failed_over = this.failed_over;
                    }
                    return Poll::Ready(Ok(exchange));
                }
                Err(mut unanswered) => {
                    let unsent = unanswered.unsent.take();
                    match unsent {
                        Some(req) if len > 1 && this.failed_over.is_none() => {
                            tracing::debug!(
                                upstream = %unanswered.upstream.name,
                                error = %error_chain(&unanswered.error),
                                "no connection to the endpoint; trying the next one"
                            );
                            this.failed_over = Some(Failure::of(&unanswered.error));
                            // The next endpoint that is not ejected, unless that is the one
                            // that just failed.
                            let next = this.set.balancer.next_after(this.at, len);
                            let chosen = this.set.choose(next);
                            this.at = if chosen == this.at { next } else { chosen };
                            if this.set.balancer.measures() {
                                this.set.balancer.started(this.at);
                                this.measured = Some(tokio::time::Instant::now());
                            }
                            let (started, deadline) = this.deadline;
                            this.sending = this.set.endpoints[this.at].send(Outgoing {
                                request: *req,
                                started,
                                deadline,
                            });
                        }
                        unsent => {
                            unanswered.unsent = unsent;
                            if this.failed_over.is_some() {
                                unanswered.upstream.resend_count += 1;
                                unanswered.failed_over = this.failed_over;
                            }
                            return Poll::Ready(Err(unanswered));
                        }
                    }
                }
            }
        }
    }
}

/// A try still in flight when the exchange is dropped (the client went away, the deadline
/// passed) ends here for the balancer, so that its count of requests in flight stays true.
impl Drop for Failover {
    fn drop(&mut self) {
        if let Some(began) = self.measured.take() {
            self.set.balancer.finished(self.at, began.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_turns_and_fails_over_to_the_next() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..7).map(|_| rr.turn(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(rr.next_after(2, 3), 0);
        assert_eq!(rr.next_after(0, 3), 1);
        // One endpoint: every pick is it.
        let one = RoundRobin::default();
        assert_eq!((0..3).map(|_| one.turn(1)).collect::<Vec<_>>(), [0, 0, 0]);
    }

    use std::net::SocketAddr;

    use attache_config::{Protocol, UpstreamUrl};
    use attache_filters::metrics::Metrics;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// An HTTP/1.1 upstream that answers each request with its own port and the request's
    /// method and body.
    async fn upstream() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| async move {
                            let method = req.method().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let text = format!("{} {method} {}", addr.port(), body.len());
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(text),
                            )))
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn closed_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    fn balance(ports: &[u16]) -> Balance {
        let client = crate::upstream::client(
            std::time::Duration::from_secs(2),
            attache_config::Pool::default(),
            Protocol::Http1,
            &Arc::new(Metrics::new()),
        );
        let name: Arc<str> = Arc::from("orders");
        let endpoints = ports
            .iter()
            .map(|p| {
                let url: UpstreamUrl = format!("http://127.0.0.1:{p}").parse().unwrap();
                Endpoint::new(&name, &url, &client, Protocol::Http1, None, None).unwrap()
            })
            .collect();
        Balance::new(
            endpoints,
            Arc::new(RoundRobin::default()),
            crate::upstream::health::Health::off(ports.len()),
        )
    }

    fn post(body: &'static str) -> Outgoing {
        let started = tokio::time::Instant::now();
        Outgoing {
            request: Request::post("/")
                .body(attache_filters::full(bytes::Bytes::from(body)))
                .unwrap(),
            started,
            deadline: started + std::time::Duration::from_secs(5),
        }
    }

    async fn text(exchange: Exchange) -> String {
        let body = exchange.response.into_body().collect().await.unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_balancer_takes_turns_and_a_refused_connection_goes_to_the_next_once() {
        let (a, b) = (upstream().await.port(), upstream().await.port());
        let both = balance(&[a, b]);
        let mut answered = Vec::new();
        for _ in 0..4 {
            let exchange = both.clone().oneshot(post("x")).await.ok().unwrap();
            assert_eq!(exchange.upstream.resend_count, 0);
            assert!(exchange.failed_over.is_none());
            answered.push(text(exchange).await);
        }
        let expect = |p: u16| format!("{p} POST 1");
        assert_eq!(answered, [expect(a), expect(b), expect(a), expect(b)]);

        // The first endpoint refuses: a POST, body and all, goes to the second, and the hop
        // says it was a resend after a refused connection.
        let down = closed_port().await;
        let failing = balance(&[down, b]);
        let exchange = failing.oneshot(post("body")).await.ok().unwrap();
        assert_eq!(exchange.upstream.resend_count, 1);
        assert_eq!(exchange.upstream.port, b);
        assert_eq!(exchange.failed_over, Some(Failure::Refused));
        assert_eq!(text(exchange).await, format!("{b} POST 4"));

        // Both refuse: one failover, then the second endpoint's failure is the answer.
        let (d1, d2) = (closed_port().await, closed_port().await);
        let Err(unanswered) = balance(&[d1, d2]).oneshot(post("x")).await else {
            panic!("nothing listens");
        };
        assert_eq!(Failure::of(&unanswered.error), Failure::Refused);
        assert_eq!(unanswered.upstream.port, d2);
        assert_eq!(unanswered.upstream.resend_count, 1);
        assert_eq!(unanswered.failed_over, Some(Failure::Refused));

        // One endpoint: nowhere to fail over to.
        let Err(alone) = balance(&[d1]).oneshot(post("x")).await else {
            panic!("nothing listens");
        };
        assert_eq!(alone.upstream.resend_count, 0);
        assert!(alone.failed_over.is_none());
        assert!(alone.unsent.is_some(), "the request comes back unsent");
    }
}
