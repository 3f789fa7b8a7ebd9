//! The leg's exchange with one target, in the outbound tail between the route and the
//! balancer (see `crate::upstream` for the whole tail).
//!
//! It removes hop-by-hop headers (RFC 9110 §7.6.1), writes `X-Forwarded-*` on the inbound leg,
//! puts the request in the target's protocol, gives it its deadline (the target's request
//! timeout), passes HTTP Upgrade (WebSocket) through as a byte tunnel, refuses responses it
//! will not pass on, and turns every failure the tail reports into one problem+json response,
//! through [`Failure`]: 502 when the target cannot be reached or breaks the exchange, 504 when
//! it is too slow, 413 when the body limit trips.

use attache_filters::authz::tunnels::Grant;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use attache_config::{ForwardedHeaders, Protocol};
use attache_filters::Body;
use attache_filters::errors::{Problem, ProxyError, problem_response};
use attache_filters::facts::UpstreamInfo;
use attache_filters::metrics::{Direction, Metrics};
use attache_filters::telemetry::families::HttpFamilies;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::conn::ConnInfo;
use crate::hop_by_hop::{is_upgrade, not_chunked, strip_hop_by_hop, upgrade_answers};
use crate::metrics::ProxyFamilies;
use crate::upstream::failure::{Counted, Failure, SendError};
use crate::upstream::{Exchange, Outgoing, Target, Unanswered};

/// How the forwarder treats requests on one leg.
#[derive(Clone)]
pub struct Leg {
    pub direction: Direction,
    /// Inbound: `X-Forwarded-*` handling.
    pub forwarded: ForwardedHeaders,
    /// Inbound: peers whose `X-Forwarded-Proto`/`-Host` are kept under `append`.
    pub trusted_proxies: Arc<[attache_config::Cidr]>,
    /// Outbound: the upstream sees its own authority in `Host`, not the ambassador port's.
    pub rewrite_host: bool,
    /// A successful response carries the exchange's [`UpstreamInfo`] up to the span and the
    /// access log. Off when the leg has neither: then only the responses attache makes on a
    /// failure carry it (the idempotency step reads their error).
    pub hand_up: bool,
    /// Outbound: the baggage member naming the context, removed on calls to listed hosts
    /// (`spec.context.strip_on_egress`).
    pub strip: Option<Arc<Strip>>,
}

/// `spec.context.strip_on_egress`: the member, the hosts, and the upstreams whose endpoints
/// are all or partly among them (their calls always lose it).
#[derive(Debug, Default)]
pub struct Strip {
    pub member: String,
    pub hosts: Vec<String>,
    pub upstreams: std::collections::HashSet<String>,
}

impl Strip {
    /// Whether `host` (no port; any case) is listed: exactly, or under a `*.domain`.
    pub fn covers(&self, host: &str) -> bool {
        self.hosts
            .iter()
            .any(|p| attache_filters::codec::host::matches(p, host))
    }
}

/// Removes the baggage member `key` from every `baggage` line (a line left empty goes).
fn strip_member(headers: &mut http::HeaderMap, key: &str) {
    let baggage = http::header::HeaderName::from_static("baggage");
    let lines: Vec<HeaderValue> = headers.get_all(&baggage).iter().cloned().collect();
    let mut changed = false;
    let mut kept = Vec::with_capacity(lines.len());
    for line in &lines {
        let Ok(text) = line.to_str() else {
            kept.push(line.clone());
            continue;
        };
        let members: Vec<&str> = text
            .split(',')
            .filter(|m| {
                let name = m.split(['=', ';']).next().unwrap_or("").trim();
                let drop = name == key;
                changed |= drop;
                !drop
            })
            .collect();
        let rest = members.join(",");
        if !rest.trim().is_empty()
            && let Ok(v) = HeaderValue::from_str(rest.trim())
        {
            kept.push(v);
        }
    }
    if changed {
        headers.remove(&baggage);
        for v in kept {
            headers.append(&baggage, v);
        }
    }
}

/// The leg's exchange with one target.
#[derive(Clone)]
pub struct Forward {
    target: Arc<Target>,
    metrics: Arc<ProxyFamilies>,
    http_metrics: Arc<HttpFamilies>,
    leg: Leg,
    /// This target's calls always lose the context's baggage member.
    strip_always: bool,
}

impl Forward {
    pub fn new(target: Arc<Target>, metrics: &Metrics, leg: Leg) -> Self {
        let strip_always = leg
            .strip
            .as_ref()
            .is_some_and(|s| s.upstreams.contains(&*target.name));
        Self {
            target,
            http_metrics: metrics.family(),
            metrics: metrics.family(),
            leg,
            strip_always,
        }
    }
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.clone().forward(req))
    }
}

impl Forward {
    /// The whole exchange; its future is the one `call` boxes (no wrapper future around it, so
    /// the state is moved once, into the box).
    async fn forward(self, mut req: Request<Body>) -> Result<Response<Body>, Infallible> {
        if req.method() == http::Method::CONNECT {
            return Ok(problem_response(&ProxyError::BadRequest(
                "CONNECT is not supported on this listener".into(),
            )));
        }
        let upgrade = is_upgrade(&req);
        // The offers the app may pick from (the limits step kept only allowed ones).
        let asked = upgrade
            .then(|| req.headers().get(header::UPGRADE).cloned())
            .flatten();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // Authorization's leave for the tunnel, held while it is open (a reload may revoke it).
        let grant = req.extensions_mut().remove::<Grant>();
        let conn = req.extensions().get::<ConnInfo>().cloned();
        self.prepare(&mut req, upgrade, conn.as_ref());

        let started = tokio::time::Instant::now();
        let out = Outgoing {
            request: req,
            started,
            deadline: started + self.target.timeouts.request.get(),
        };
        let result = match &self.target.retry {
            Some(retry) => retry.send(out).await,
            None => self.target.balance.send(out).await,
        };
        let (mut res, info) = match result {
            Ok(Exchange {
                response,
                upstream,
                failed_over,
            }) => {
                self.count_failover(failed_over);
                (response, upstream)
            }
            Err(Unanswered {
                error,
                upstream,
                failed_over,
                ..
            }) => {
                self.count_failover(failed_over);
                return Ok(self.failed(&error, upstream));
            }
        };
        if res.status() == StatusCode::SWITCHING_PROTOCOLS
            && !upgrade_answers(asked.as_ref(), res.headers())
        {
            // A 101 to a request that did not ask for it, or to another protocol than it
            // offered: passed on, it would be a raw tunnel past every filter.
            return Ok(self.refused(
                "it switched protocols (101) to one the request did not ask for".to_owned(),
                info,
            ));
        }
        if let Some(coding) = res
            .headers()
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .find_map(not_chunked)
        {
            return Ok(self.refused(
                format!(
                    "its response uses the transfer coding `{coding}`, which attache does not \
                     decode; passed on, the body would reach the client coded and unlabelled"
                ),
                info,
            ));
        }
        if self.leg.hand_up {
            res.extensions_mut().insert(info);
            if let Some(known) = conn
                .as_ref()
                .and_then(|c| c.known())
                .filter(|k| k.tls.is_some())
            {
                attache_filters::facts::hand_up(res.extensions_mut(), known.clone());
            }
        }
        if res.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            tunnel(client_upgrade, &mut res, conn.as_ref(), grant);
            return Ok(res);
        }

        strip_hop_by_hop(res.headers_mut(), false);
        Ok(res)
    }

    /// Rewrites the request for the target: the origin-form target, the target's protocol
    /// version, hop-by-hop and forwarding headers, and `Host` when it is the client's (else
    /// the endpoint fills it in).
    fn prepare(&self, req: &mut Request<Body>, upgrade: bool, conn: Option<&ConnInfo>) {
        // The request target's authority when it has one (HTTP/2's `:authority`, an HTTP/1.1
        // absolute-form target), else Host: RFC 9112 §3.2.2 has a server ignore Host for an
        // absolute-form target, and RFC 9113 §8.3.1 prefers `:authority`.
        let original_host = match req.uri().authority() {
            // Without userinfo: Host is `host[:port]`.
            Some(a) => HeaderValue::from_str(a.as_str().rsplit('@').next().unwrap_or("")).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        // attache speaks the target's protocol whatever the client spoke: HTTP/1.1 with the
        // origin-form target (`/path?query`); for HTTP/2 the endpoint adds its scheme and
        // authority.
        if req.uri().scheme().is_some() || req.uri().path_and_query().is_none() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        let http2 = self.target.protocol == Protocol::Http2;
        *req.version_mut() = if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        let chunked = !http2 && body_needs_chunked(req);
        let headers = req.headers_mut();
        // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
        let te_trailers = http2
            && headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(headers, upgrade);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if chunked {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        // The endpoint's own authority goes in `Host` when the leg rewrites it or the client
        // sent none: the endpoint fills in a missing one.
        if let Some(strip) = &self.leg.strip {
            // The destination: the upstream's endpoints, or the host the app named (the
            // forward proxy's and transparent capture's calls).
            let named = || {
                original_host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.parse::<http::uri::Authority>().ok())
                    .is_some_and(|a| strip.covers(a.host().trim_matches(['[', ']'])))
            };
            if self.strip_always || (!self.leg.rewrite_host && named()) {
                strip_member(headers, &strip.member);
            }
        }
        match original_host.as_ref().filter(|_| !self.leg.rewrite_host) {
            Some(h) => headers.insert(header::HOST, h.clone()),
            None => headers.remove(header::HOST),
        };
        if self.leg.direction == Direction::Inbound {
            let seen = match conn {
                Some(conn) => {
                    let trusted = self
                        .leg
                        .trusted_proxies
                        .iter()
                        .any(|c| c.contains(conn.peer.ip()));
                    set_forwarded(headers, self.leg.forwarded, conn, original_host, trusted)
                }
                None => None,
            };
            client_cert(headers, conn, seen);
        }
    }

    /// A connection that could not be made before the request went to another endpoint:
    /// counted as the upstream's error, though the client got its answer.
    fn count_failover(&self, failed_over: Option<Failure>) {
        if let Some(Counted::Upstream(kind)) = failed_over.map(Failure::counted) {
            self.metrics
                .upstream_error(self.leg.direction, &self.target.name, kind);
        }
    }

    /// Answers a failed exchange: counted under its kind, its type on the span and the access
    /// log, and the client answered with the status the kind gives.
    fn failed(&self, e: &SendError, mut info: UpstreamInfo) -> Response<Body> {
        let failure = Failure::of(e);
        if failure == Failure::Tls {
            self.metrics
                .tls_failure(&self.target.name, crate::upstream::failure::tls_reason(e));
        }
        match failure.counted() {
            Counted::Upstream(kind) => {
                self.metrics
                    .upstream_error(self.leg.direction, &self.target.name, kind)
            }
            Counted::Client(result) => self.http_metrics.client_error(result),
            Counted::Elsewhere => {}
        }
        info.error = Some(failure.error_type());
        let err = failure.answer(e, &self.target.name, &self.target.timeouts);
        let direction = self.leg.direction.as_str();
        if failure.is_upstream() {
            tracing::warn!(direction, status = err.status().as_u16(), "{err}");
        } else {
            tracing::debug!(direction, "{err}");
        }
        let mut res = problem_response(&err);
        res.extensions_mut().insert(info);
        res
    }

    /// A response attache will not pass on: 502, counted as the upstream's protocol error.
    fn refused(&self, reason: String, info: UpstreamInfo) -> Response<Body> {
        self.failed(&SendError::Unacceptable(reason), info)
    }
}

/// Joins the client's upgraded connection to the upstream's once both sides have switched,
/// and copies bytes both ways until either closes. The connection counts as upgraded (its
/// deadlines no longer apply) and is tracked for a graceful shutdown.
fn tunnel(
    client_upgrade: hyper::upgrade::OnUpgrade,
    res: &mut Response<Body>,
    conn: Option<&ConnInfo>,
    grant: Option<Grant>,
) {
    let upstream_upgrade = hyper::upgrade::on(res);
    if let Some(conn) = conn {
        conn.state.mark_upgraded();
    }
    let guard = conn.map(|c| c.tracker.track());
    let held = grant.map(Grant::hold);
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let revoked = async {
                    match &held {
                        Some(held) => held.revoked().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                        if let Err(e) = copied {
                            tracing::debug!(error = %e, "upgraded connection ended");
                        }
                    }
                    () = revoked => {
                        // Both sides are dropped: their connections close.
                        tracing::debug!("upgraded connection closed: the policy no longer allows it");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

/// Whether a request going out over HTTP/1.1 must be framed as chunked by us: its body may hold
/// bytes, its length is not known, and hyper's client would otherwise send it as no body at
/// all. hyper chunks an unknown-length body itself for most methods, but assumes GET, HEAD and
/// CONNECT carry none (a body that arrived chunked, or in HTTP/2 DATA frames without
/// `content-length`, would be dropped: Elasticsearch's `_search` and some RPC setups read GET
/// bodies). Saying `chunked` here makes hyper frame it whatever the method.
fn body_needs_chunked(req: &Request<Body>) -> bool {
    use http_body::Body as _;
    let body = req.body();
    !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !req.headers().contains_key(header::CONTENT_LENGTH)
}

/// `X-Forwarded-Client-Cert` is attache's to write on the inbound leg: whatever a client sent is
/// removed, and the verified client certificate's identity (mutual TLS) takes its place. The
/// app can so believe it whoever connects, as it believes Envoy's. `X-Spiffe-Id`, which
/// attache never writes, is removed too: no client can claim an identity to the app.
/// `seen`: whether the client sent either, when `set_forwarded` already looked (it reads every
/// header name once anyway; a removal by name hashes it).
fn client_cert(headers: &mut HeaderMap, conn: Option<&ConnInfo>, seen: Option<bool>) {
    const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
    const X_SPIFFE_ID: HeaderName = HeaderName::from_static("x-spiffe-id");
    let ours = conn
        .and_then(ConnInfo::tls)
        .and_then(|t| t.peer.as_ref())
        .map(|p| p.xfcc.clone());
    if seen != Some(false) {
        headers.remove(X_SPIFFE_ID);
    }
    match ours {
        Some(v) => {
            headers.insert(XFCC, v);
        }
        None if seen != Some(false) => {
            headers.remove(XFCC);
        }
        None => {}
    }
}

/// `trusted`: the peer is one of `trusted_proxies`, whose `X-Forwarded-Proto`/`-Host` stand
/// under `append`; anyone else's are replaced by what attache saw (`X-Forwarded-For` is a
/// chain either way, and the app reads it from the right). Under `append`, says whether the
/// client sent an identity header (`X-Forwarded-Client-Cert`, `X-Spiffe-Id`; it looks at
/// every name then).
fn set_forwarded(
    headers: &mut HeaderMap,
    mode: ForwardedHeaders,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    trusted: bool,
) -> Option<bool> {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    let proto = HeaderValue::from_static(if conn.tls().is_some() {
        "https"
    } else {
        "http"
    });
    match mode {
        ForwardedHeaders::Off => None,
        ForwardedHeaders::Replace => {
            headers.insert(XFF, conn.peer_ip.clone());
            headers.insert(XFP, proto);
            match host {
                Some(h) => {
                    headers.insert(XFH, h);
                }
                None => {
                    headers.remove(XFH);
                }
            }
            None
        }
        ForwardedHeaders::Append => {
            // One pass of name comparisons finds which are present (most requests carry
            // none); each lookup by name would hash it.
            let (mut has_xff, mut has_xfp, mut has_xfh) = (false, false, false);
            let mut has_identity = false;
            for name in headers.keys() {
                match name.as_str() {
                    "x-forwarded-for" => has_xff = true,
                    "x-forwarded-proto" => has_xfp = true,
                    "x-forwarded-host" => has_xfh = true,
                    "x-forwarded-client-cert" | "x-spiffe-id" => has_identity = true,
                    _ => {}
                }
            }
            // Earlier hops' lines are kept byte for byte, whatever they hold, as one line.
            let mut chain = Vec::new();
            if has_xff {
                for v in headers.get_all(&XFF) {
                    chain.extend_from_slice(v.as_bytes());
                    chain.extend_from_slice(b", ");
                }
            }
            if chain.is_empty() {
                headers.insert(XFF, conn.peer_ip.clone());
            } else {
                chain.extend_from_slice(conn.peer_ip.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&chain) {
                    headers.insert(XFF, v);
                }
            }
            if !has_xfp || !trusted {
                headers.insert(XFP, proto);
            }
            if !has_xfh || !trusted {
                match host {
                    Some(h) => {
                        headers.insert(XFH, h);
                    }
                    None => {
                        headers.remove(XFH);
                    }
                }
            }
            Some(has_identity)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_member_is_stripped_from_every_line_and_only_for_listed_hosts() {
        let strip = Strip {
            member: "attache.ctx".into(),
            hosts: vec!["api.partner.com".into(), "*.stripe.com".into()],
            upstreams: Default::default(),
        };
        for host in [
            "api.partner.com",
            "API.Partner.com.",
            "a.stripe.com",
            "x.y.stripe.com",
        ] {
            assert!(strip.covers(host), "{host}");
        }
        for host in [
            "partner.com",
            "stripe.com",
            "evilstripe.com",
            "api.partner.com.evil",
        ] {
            assert!(!strip.covers(host), "{host}");
        }
        let mut h = HeaderMap::new();
        h.append(
            "baggage",
            HeaderValue::from_static("a=1, attache.ctx=order-42;p=1"),
        );
        h.append("baggage", HeaderValue::from_static("attache.ctx=x"));
        h.append("baggage", HeaderValue::from_static("attache.ctxx=kept"));
        strip_member(&mut h, "attache.ctx");
        assert_eq!(text(&h, "baggage"), ["a=1", "attache.ctxx=kept"]);
    }

    fn conn_from(ip: &str) -> ConnInfo {
        ConnInfo::new(
            format!("{ip}:40000").parse().expect("address"),
            Arc::default(),
            Arc::default(),
        )
    }

    fn text(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text").to_owned())
            .collect()
    }

    #[test]
    fn forwarded_headers_are_added_appended_or_replaced() {
        let host = Some(HeaderValue::from_static("shop.example"));
        let conn = conn_from("10.0.0.9");

        // Append, on a request that carries none: all three are added.
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, ForwardedHeaders::Append, &conn, host.clone(), false);
        assert_eq!(text(&h, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(text(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(text(&h, "x-forwarded-host"), ["shop.example"]);

        // Append, on a request from a trusted proxy: the chain grows, the rest stays.
        let from_proxy = || {
            let mut h = HeaderMap::new();
            h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
            h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
            h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            h.insert("x-forwarded-host", HeaderValue::from_static("edge.example"));
            h
        };
        let mut h = from_proxy();
        set_forwarded(&mut h, ForwardedHeaders::Append, &conn, host.clone(), true);
        assert_eq!(text(&h, "x-forwarded-for"), ["1.1.1.1, 2.2.2.2, 10.0.0.9"]);
        assert_eq!(text(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(text(&h, "x-forwarded-host"), ["edge.example"]);

        // The same from a peer nobody trusts: the chain grows, proto and host are attache's.
        let mut u = from_proxy();
        set_forwarded(&mut u, ForwardedHeaders::Append, &conn, host.clone(), false);
        assert_eq!(text(&u, "x-forwarded-for"), ["1.1.1.1, 2.2.2.2, 10.0.0.9"]);
        assert_eq!(text(&u, "x-forwarded-proto"), ["http"]);
        assert_eq!(text(&u, "x-forwarded-host"), ["shop.example"]);

        // Append to a line that is not text: it is kept as it came, byte for byte.
        let mut o = HeaderMap::new();
        o.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"h\xe9te").unwrap(),
        );
        o.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        set_forwarded(&mut o, ForwardedHeaders::Append, &conn, None, false);
        assert_eq!(
            o["x-forwarded-for"].as_bytes(),
            b"h\xe9te, 2.2.2.2, 10.0.0.9"
        );

        // Replace: attache's view only; no Host, no X-Forwarded-Host.
        set_forwarded(&mut h, ForwardedHeaders::Replace, &conn, None, false);
        assert_eq!(text(&h, "x-forwarded-for"), ["10.0.0.9"]);
        assert_eq!(text(&h, "x-forwarded-proto"), ["http"]);
        assert!(text(&h, "x-forwarded-host").is_empty());

        // Off: untouched; an IPv6 peer is written without brackets.
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, ForwardedHeaders::Off, &conn, host.clone(), false);
        assert!(h.is_empty());
        set_forwarded(
            &mut h,
            ForwardedHeaders::Append,
            &conn_from("[::1]"),
            host,
            false,
        );
        assert_eq!(text(&h, "x-forwarded-for"), ["::1"]);
    }
}
