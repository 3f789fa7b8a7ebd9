//! The forward proxy (`spec.forward_proxy`): the tail of the stack for apps that set
//! `HTTP_PROXY`/`HTTPS_PROXY`. Above it the leg is an outbound one (the CLIENT span, metrics,
//! the access log, limits, trace context); here each request's destination is read from the
//! request itself:
//!
//! - an absolute-form request (`GET http://api.internal/x`) goes to its host through the
//!   outbound tail (`forward` → balance → endpoint → pool), as an ambassador's would: the
//!   destination's `Host`, hop-by-hop headers removed, the timeouts, keep-alive pools;
//! - `CONNECT host:port` opens a byte tunnel to it (HTTPS passes through untouched): `200`,
//!   then bytes both ways until either side closes.
//!
//! Every destination is checked against the allowlist (`allow.rs`) on its name, resolved, and
//! checked again on the address, which is the one connected to (a name that resolves to a
//! metadata address is refused like the address). A refusal is a 403 problem+json, counted
//! by reason.

pub mod allow;
pub mod metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use attache_config::{Protocol, Timeouts, UpstreamUrl};
use attache_filters::Body;
use attache_filters::errors::{ProxyError, problem_response};
use attache_filters::facts::UpstreamInfo;
use attache_filters::metrics::Metrics;
use attache_filters::metrics::ReasonLabels;
use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use self::allow::{Allow, Refusal};
use self::metrics::ForwardProxyFamilies;
use crate::conn::ConnInfo;
use crate::forward::{Forward, Leg};
use crate::upstream::{Client, Target};

/// The name calls through the forward proxy go by in metrics and errors (one name: the
/// destinations are many and chosen by the app, so they are no label).
pub const NAME: &str = "forward_proxy";
/// The name of captured calls.
pub const CAPTURE: &str = "capture";

/// Destinations whose exchanges (target, pools) are kept; past this many the map starts over.
const KEPT_DESTINATIONS: usize = 1024;

#[derive(Clone)]
pub struct ForwardProxy {
    inner: Arc<Inner>,
}

/// Where each request's destination comes from.
pub enum Mode {
    /// The request names it (absolute-form, CONNECT), within the allowlist.
    Proxy(Allow),
    /// Transparent capture: the address the app's connection was sent to before the pod's
    /// iptables rules redirected it (`SO_ORIGINAL_DST`, in `ConnInfo`). The app could reach
    /// it without attache, so no allowlist applies.
    Capture,
}

struct Inner {
    mode: Mode,
    leg: Leg,
    metrics: Arc<Metrics>,
    families: Arc<ForwardProxyFamilies>,
    client: Client,
    timeouts: Timeouts,
    /// The exchange with each destination address reached lately.
    forwards: Mutex<HashMap<SocketAddr, Forward>>,
}

impl ForwardProxy {
    pub fn new(
        mode: Mode,
        leg: Leg,
        metrics: &Arc<Metrics>,
        client: Client,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                mode,
                leg,
                families: metrics.family(),
                metrics: metrics.clone(),
                client,
                timeouts,
                forwards: Mutex::default(),
            }),
        }
    }
}

impl tower::Service<Request<Body>> for ForwardProxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.serve(req).await) })
    }
}

impl Inner {
    async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let allow = match &self.mode {
            Mode::Proxy(allow) => allow,
            Mode::Capture => return self.captured(req).await,
        };
        let connect = req.method() == Method::CONNECT;
        let (host, port) = match destination(&req, connect) {
            Ok(d) => d,
            Err(why) => return problem_response(&ProxyError::BadRequest(why)),
        };
        let addrs = match self.check(allow, &host, port).await {
            Ok(addrs) => addrs,
            Err(answer) => return answer,
        };
        if connect {
            self.tunnel(req, &addrs, &host).await
        } else {
            // The first allowed address (the tail's pool keeps its connections).
            let mut forward = match self.forward_to(addrs[0]) {
                Ok(f) => f,
                Err(e) => return self.unreachable(e),
            };
            match tower::Service::call(&mut forward, req).await {
                Ok(res) => res,
                Err(never) => match never {},
            }
        }
    }

    /// The allowlist on the name, the lookup, the allowlist on each address: the allowed
    /// addresses (at least one), or the answer to give instead.
    async fn check(
        &self,
        allow: &Allow,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Response<Body>> {
        let named = allow.by_name(host, port);
        let lookup = tokio::net::lookup_host((host, port));
        let addrs: Vec<SocketAddr> =
            match tokio::time::timeout(self.timeouts.connect.get(), lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => return Err(self.unreachable(format!("cannot resolve {host}: {e}"))),
                Err(_) => {
                    return Err(self.unreachable(format!(
                        "resolving {host} took longer than {:?}",
                        self.timeouts.connect.get()
                    )));
                }
            };
        let mut refusal = Refusal::NotAllowed;
        let mut allowed = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            match allow.address(*addr, named) {
                Ok(()) => allowed.push(*addr),
                // The most telling reason among the addresses: metadata, then admin.
                Err(r) if r == Refusal::Metadata || refusal == Refusal::NotAllowed => refusal = r,
                Err(_) => {}
            }
        }
        if !allowed.is_empty() {
            return Ok(allowed);
        }
        self.families
            .denied
            .get_or_create(&ReasonLabels {
                reason: refusal.label(),
            })
            .inc();
        tracing::info!(
            host,
            port,
            reason = refusal.label(),
            "forward proxy refused a destination"
        );
        Err(problem_response(&ProxyError::Forbidden(
            refusal.detail(host, port),
        )))
    }

    /// A captured HTTP request: to the address the app's connection was sent to.
    async fn captured(&self, req: Request<Body>) -> Response<Body> {
        let Some(addr) = req
            .extensions()
            .get::<ConnInfo>()
            .and_then(ConnInfo::original_dst)
        else {
            return self.unreachable("the connection's original destination is unknown".into());
        };
        let mut forward = match self.forward_to(addr) {
            Ok(f) => f,
            Err(e) => return self.unreachable(e),
        };
        match tower::Service::call(&mut forward, req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }

    fn unreachable(&self, reason: String) -> Response<Body> {
        problem_response(&ProxyError::UpstreamUnreachable {
            upstream: NAME.to_owned(),
            reason,
        })
    }

    /// The exchange with `addr` through the outbound tail, kept while it is used.
    fn forward_to(&self, addr: SocketAddr) -> Result<Forward, String> {
        let mut forwards = self.forwards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = forwards.get(&addr) {
            return Ok(f.clone());
        }
        if forwards.len() >= KEPT_DESTINATIONS {
            forwards.clear();
        }
        let url: UpstreamUrl = format!("http://{addr}").parse()?;
        let name = match self.mode {
            Mode::Proxy(_) => NAME,
            Mode::Capture => CAPTURE,
        };
        let target = Target::new(
            name,
            std::slice::from_ref(&url),
            self.timeouts,
            self.client.clone(),
            Protocol::Http1,
            None,
            None,
        )
        .map_err(|e| e.to_string())?;
        let forward = Forward::new(Arc::new(target), &self.metrics, self.leg.clone());
        forwards.insert(addr, forward.clone());
        Ok(forward)
    }

    /// `CONNECT`: a TCP connection to the first of `addrs` that takes one (within the
    /// connect timeout, for all of them), `200`, then the client's upgraded connection joined
    /// to it until either side closes.
    async fn tunnel(
        &self,
        mut req: Request<Body>,
        addrs: &[SocketAddr],
        host: &str,
    ) -> Response<Body> {
        let timeout = self.timeouts.connect.get();
        let connect = async {
            let mut last = None;
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => return Ok((s, *addr)),
                    Err(e) => last = Some(format!("{addr}: {e}")),
                }
            }
            Err(last.unwrap_or_default())
        };
        let (stream, addr) = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.unreachable(format!("cannot connect to {host} ({e})")),
            Err(_) => {
                return self.unreachable(format!("no connection to {host} within {timeout:?}"));
            }
        };
        let _ = stream.set_nodelay(true);
        let upgrade = hyper::upgrade::on(&mut req);
        let conn = req.extensions().get::<ConnInfo>().cloned();
        if let Some(c) = &conn {
            c.state.mark_upgraded();
        }
        let guard = conn.as_ref().map(|c| c.tracker.track());
        let families = self.families.clone();
        families.tunnels.inc();
        families.open_tunnels.inc();
        tokio::spawn(async move {
            let _guard = guard;
            match upgrade.await {
                Ok(client) => {
                    let mut client = TokioIo::new(client);
                    let mut stream = stream;
                    match tokio::io::copy_bidirectional(&mut client, &mut stream).await {
                        Ok((up, down)) => {
                            tracing::debug!(%addr, up, down, "tunnel closed")
                        }
                        Err(e) => tracing::debug!(%addr, error = %e, "tunnel ended"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
            families.open_tunnels.dec();
        });
        let mut res = Response::new(attache_filters::empty());
        *res.status_mut() = StatusCode::OK;
        if self.leg.hand_up {
            // The CLIENT span names the tunnel's destination (the span covers opening it).
            res.extensions_mut().insert(UpstreamInfo {
                name: Arc::from(NAME),
                url_base: Arc::from(format!("tcp://{host}:{}", addr.port())),
                host: Arc::from(host),
                port: addr.port(),
                version: http::Version::HTTP_11,
                resend_count: 0,
                error: None,
            });
        }
        res
    }
}

/// The destination of a proxy request: `CONNECT host:port`, or an absolute-form `http://`
/// target (port 80 by default). Hosts come back lowercase, IPv6 without brackets.
fn destination(req: &Request<Body>, connect: bool) -> Result<(String, u16), String> {
    let uri = req.uri();
    let Some(authority) = uri.authority() else {
        return Err(if connect {
            "CONNECT needs a host:port target".to_owned()
        } else {
            "this listener is a forward proxy: send absolute-form requests \
             (`GET http://host/path`, as HTTP_PROXY clients do) or CONNECT"
                .to_owned()
        });
    };
    if authority.as_str().contains('@') {
        return Err("a proxy request target must not carry credentials".to_owned());
    }
    if !connect {
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https:// through the forward proxy goes by CONNECT (HTTPS_PROXY)".to_owned(),
                );
            }
            _ => return Err("only http:// targets are proxied".to_owned()),
        }
    }
    let port = match authority.port_u16() {
        Some(p) if p > 0 => p,
        Some(_) => return Err("port 0 is not a destination".to_owned()),
        None if connect => return Err("CONNECT needs a host:port target".to_owned()),
        None => 80,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err("the target names no host".to_owned());
    }
    Ok((host, port))
}
