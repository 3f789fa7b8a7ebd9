//! The last step of both request flows: send the request to one endpoint of a target (the app
//! or a named upstream) and stream the response back.
//!
//! It removes hop-by-hop headers (RFC 9110 §7.6.1), writes `X-Forwarded-*` on the inbound leg,
//! bounds the wait for the response head, passes HTTP Upgrade (WebSocket) through as a byte
//! tunnel, and turns every failure into one problem+json response: 502 when the target cannot
//! be reached or breaks the exchange, 504 when it is too slow, 413 when the body limit trips.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use attache_config::{ForwardedHeaders, Protocol, Timeouts, UpstreamUrl};
use attache_filters::Body;
use attache_filters::errors::{Problem, ProxyError, error_chain, problem_response};
use attache_filters::facts::UpstreamInfo;
use attache_filters::flags::settings::RouteTarget;
use attache_filters::metrics::{Direction, Metrics};
use attache_filters::telemetry::families::HttpFamilies;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::balance::{Balancer, RoundRobin};
use crate::conn::ConnInfo;
use crate::hop_by_hop::{is_upgrade, not_chunked, strip_hop_by_hop, upgrade_answers};
use crate::metrics::ProxyFamilies;
use crate::pool::{self, SendError};
use crate::upstream_failure::Failure;

pub type HttpClient = pool::Client;

/// The connection pools for a connect timeout, pool policy and protocol.
pub fn client(
    connect_timeout: std::time::Duration,
    pool: attache_config::Pool,
    protocol: Protocol,
    metrics: &Arc<Metrics>,
) -> HttpClient {
    pool::Client::new(
        pool::Settings {
            connect_timeout,
            idle_timeout: pool.idle_timeout.get(),
            max_idle: pool.max_idle_per_endpoint as usize,
            protocol,
        },
        metrics.clone(),
    )
}

/// A place requests are sent: the app, or a named upstream with its endpoints.
pub struct Target {
    /// `app` for the inbound app, else the name in `spec.upstreams`.
    pub name: Arc<str>,
    endpoints: Vec<Endpoint>,
    /// Which endpoint each request goes to (round robin today).
    balancer: Box<dyn Balancer>,
    pub timeouts: Timeouts,
    pub protocol: Protocol,
}

struct Endpoint {
    /// Its keep-alive connections.
    pool: Arc<pool::Endpoint>,
    authority: Authority,
    host: HeaderValue,
    /// `Authorization: Basic` from credentials in the endpoint URL, sent when the request
    /// has no `Authorization` of its own.
    authorization: Option<HeaderValue>,
    /// For spans: the host and port, and `http://host:port` with credentials redacted.
    span_host: Arc<str>,
    port: u16,
    url_base: Arc<str>,
}

impl Target {
    pub fn new(
        name: &str,
        urls: &[UpstreamUrl],
        timeouts: Timeouts,
        client: HttpClient,
        protocol: Protocol,
    ) -> anyhow::Result<Self> {
        let endpoints = urls
            .iter()
            .map(|u| {
                let authority: Authority = u.authority().parse()?;
                let host = HeaderValue::from_str(authority.as_str())?;
                let authorization = match &u.userinfo {
                    Some(userinfo) => Some(
                        basic_authorization(userinfo)
                            .ok_or_else(|| anyhow::anyhow!("credentials that fit no header"))?,
                    ),
                    None => None,
                };
                let url_base = match u.userinfo {
                    Some(_) => format!("http://REDACTED:REDACTED@{}", authority),
                    None => format!("http://{authority}"),
                };
                Ok(Endpoint {
                    pool: client.endpoint(authority.as_str()),
                    authority,
                    host,
                    authorization,
                    span_host: Arc::from(u.host.as_str()),
                    port: u.port,
                    url_base: Arc::from(url_base),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!endpoints.is_empty(), "upstream `{name}` has no endpoints");
        Ok(Self {
            name: Arc::from(name),
            endpoints,
            balancer: Box::new(RoundRobin::default()),
            timeouts,
            protocol,
        })
    }

    /// The index of the endpoint for a new request.
    fn pick(&self) -> usize {
        self.balancer.pick(self.endpoints.len())
    }

    /// What spans and the access log say about a call to `endpoint`.
    fn info(&self, endpoint: &Endpoint) -> UpstreamInfo {
        UpstreamInfo {
            name: self.name.clone(),
            url_base: endpoint.url_base.clone(),
            host: endpoint.span_host.clone(),
            port: endpoint.port,
            version: match self.protocol {
                Protocol::Http2 => Version::HTTP_2,
                Protocol::Http1 => Version::HTTP_11,
            },
            resend_count: 0,
            error: None,
        }
    }
}

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
}

/// What [`Forward::prepare`] took from the endpoint, for [`Forward::retarget`] to change.
struct Prepared {
    /// `Host` is the endpoint's (the leg rewrites it, or the client sent none).
    endpoint_host: bool,
    /// `Authorization` is the endpoint's credentials (the client sent none).
    endpoint_auth: bool,
}

/// Upstreams a flag route may pick instead of a leg's own (specs/feature-flags.md §9).
pub type Routed = std::collections::HashMap<Arc<str>, Arc<Target>>;

/// The tower service at the bottom of a stack.
#[derive(Clone)]
pub struct Forward {
    target: Arc<Target>,
    metrics: Arc<ProxyFamilies>,
    http_metrics: Arc<HttpFamilies>,
    leg: Leg,
    routed: Arc<Routed>,
}

impl Forward {
    pub fn new(target: Arc<Target>, metrics: Arc<Metrics>, leg: Leg) -> Self {
        Self {
            target,
            http_metrics: metrics.family(),
            metrics: metrics.family(),
            leg,
            routed: Arc::default(),
        }
    }

    pub fn routed(mut self, routed: Arc<Routed>) -> Self {
        self.routed = routed;
        self
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
    async fn forward(mut self, mut req: Request<Body>) -> Result<Response<Body>, Infallible> {
        if let Some(RouteTarget(name)) = req.extensions().get::<RouteTarget>()
            && let Some(target) = self.routed.get(name)
        {
            self.target = target.clone();
        }
        if req.method() == http::Method::CONNECT {
            return Ok(problem_response(&ProxyError::BadRequest(
                "CONNECT is not supported on this listener".into(),
            )));
        }
        let mut at = self.target.pick();
        let mut endpoint = &self.target.endpoints[at];
        let upgrade = is_upgrade(&req);
        // The offers the app may pick from (the limits step kept only allowed ones).
        let asked = upgrade
            .then(|| req.headers().get(header::UPGRADE).cloned())
            .flatten();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let conn = req.extensions().get::<ConnInfo>().cloned();
        // When no connection to the endpoint can be made, the request comes back unsent (body
        // unread) and goes to the next endpoint, once, whatever its method.
        let mut may_retry = self.target.endpoints.len() > 1;
        let mut info = self.target.info(endpoint);

        let mut prepared = match self.prepare(&mut req, endpoint, upgrade, conn.as_ref()) {
            Ok(p) => p,
            Err(e) => return Ok(problem_response(&e)),
        };

        let timeout = self.target.timeouts.request.get();
        let started = tokio::time::Instant::now();
        let mut res = loop {
            match endpoint.pool.send(req, started, started + timeout).await {
                Ok(mut res) => {
                    if res.extensions_mut().remove::<pool::Resent>().is_some() {
                        info.resend_count += 1;
                    }
                    break res;
                }
                Err(pool::Failure { error, unsent }) => {
                    if let Some(unsent) = unsent.filter(|_| may_retry) {
                        may_retry = false;
                        self.metrics.upstream_error(
                            self.leg.direction,
                            &self.target.name,
                            Failure::of(&error).metric_kind(),
                        );
                        tracing::debug!(upstream = %self.target.name, error = %error_chain(&error), "no connection to the endpoint; trying the next one");
                        at = self
                            .target
                            .balancer
                            .next_after(at, self.target.endpoints.len());
                        endpoint = &self.target.endpoints[at];
                        info = self.target.info(endpoint);
                        info.resend_count = 1;
                        req = *unsent;
                        if let Err(e) = self.retarget(&mut req, endpoint, &mut prepared) {
                            return Ok(problem_response(&e));
                        }
                        continue;
                    }
                    return Ok(self.failed(&error, info));
                }
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
        }
        if res.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut res);
            if let Some(conn) = &conn {
                conn.state.mark_upgraded();
            }
            let guard = conn.as_ref().map(|c| c.tracker.track());
            tokio::spawn(async move {
                let _guard = guard;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(e) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            return Ok(res);
        }

        strip_hop_by_hop(res.headers_mut(), false);
        Ok(res)
    }

    /// Rewrites the request for the endpoint: URI, version, Host, hop-by-hop and forwarding
    /// headers.
    fn prepare(
        &self,
        req: &mut Request<Body>,
        endpoint: &Endpoint,
        upgrade: bool,
        conn: Option<&ConnInfo>,
    ) -> Result<Prepared, ProxyError> {
        // The request target's authority when it has one (HTTP/2's `:authority`, an HTTP/1.1
        // absolute-form target), else Host: RFC 9112 §3.2.2 has a server ignore Host for an
        // absolute-form target, and RFC 9113 §8.3.1 prefers `:authority`.
        let original_host = match req.uri().authority() {
            // Without userinfo: Host is `host[:port]`.
            Some(a) => HeaderValue::from_str(a.as_str().rsplit('@').next().unwrap_or("")).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // attache speaks the target's protocol whatever the client spoke: HTTP/1.1 with the
        // origin-form target (`/path?query`), HTTP/2 with scheme and authority.
        let http2 = self.target.protocol == Protocol::Http2;
        *req.uri_mut() = if http2 {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(endpoint.authority.clone());
            parts.path_and_query = Some(pq);
            Uri::from_parts(parts)
                .map_err(|e| ProxyError::BadRequest(format!("invalid request target: {e}")))?
        } else {
            Uri::from(pq)
        };
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
        let mut prepared = Prepared {
            endpoint_host: self.leg.rewrite_host || original_host.is_none(),
            endpoint_auth: false,
        };
        match original_host.as_ref().filter(|_| !prepared.endpoint_host) {
            Some(h) => headers.insert(header::HOST, h.clone()),
            None => headers.insert(header::HOST, endpoint.host.clone()),
        };
        if let Some(auth) = &endpoint.authorization
            && !headers.contains_key(header::AUTHORIZATION)
        {
            headers.insert(header::AUTHORIZATION, auth.clone());
            prepared.endpoint_auth = true;
        }
        if self.leg.direction == Direction::Inbound
            && let Some(conn) = conn
        {
            let trusted = self
                .leg
                .trusted_proxies
                .iter()
                .any(|c| c.contains(conn.peer.ip()));
            set_forwarded(headers, self.leg.forwarded, conn, original_host, trusted);
        }
        Ok(prepared)
    }

    /// Points a prepared request that no connection took at another endpoint: only what
    /// `prepare` took from the endpoint changes (the HTTP/2 authority, a `Host` that was the
    /// endpoint's, the endpoint's credentials); hop-by-hop and `X-Forwarded-*` handling was
    /// done once and is not repeated.
    fn retarget(
        &self,
        req: &mut Request<Body>,
        endpoint: &Endpoint,
        prepared: &mut Prepared,
    ) -> Result<(), ProxyError> {
        if self.target.protocol == Protocol::Http2 {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(endpoint.authority.clone());
            parts.path_and_query = req.uri().path_and_query().cloned();
            *req.uri_mut() = Uri::from_parts(parts)
                .map_err(|e| ProxyError::BadRequest(format!("invalid request target: {e}")))?;
        }
        let headers = req.headers_mut();
        if prepared.endpoint_host {
            headers.insert(header::HOST, endpoint.host.clone());
        }
        if prepared.endpoint_auth {
            headers.remove(header::AUTHORIZATION);
            prepared.endpoint_auth = false;
        }
        if let Some(auth) = &endpoint.authorization
            && !headers.contains_key(header::AUTHORIZATION)
        {
            headers.insert(header::AUTHORIZATION, auth.clone());
            prepared.endpoint_auth = true;
        }
        Ok(())
    }

    fn failed(&self, e: &SendError, mut info: UpstreamInfo) -> Response<Body> {
        if has_source::<crate::limits::BodyLimitExceeded>(e) {
            info.error = Some("body");
            let mut res = problem_response(&ProxyError::BodyTooLarge {
                limit: body_limit(e).unwrap_or_default(),
            });
            res.extensions_mut().insert(info);
            return res;
        }
        if let Some(fault) = client_body_fault(e) {
            // The request's own body failed: the client (the app, outbound) broke its framing or
            // went away. Not an upstream error, whatever the exchange looked like from there.
            let (result, err) = match fault {
                ClientBody::Malformed(reason) => {
                    ("malformed_body", ProxyError::MalformedBody(reason))
                }
                ClientBody::Aborted => ("aborted", ProxyError::ClientAborted),
            };
            // A client abort is counted by the observe layer, which also sees the exchanges
            // dropped before they got this far.
            if matches!(err, ProxyError::MalformedBody(_)) {
                self.http_metrics.client_error(result);
            }
            info.error = Some(result);
            tracing::debug!(direction = self.leg.direction.as_str(), "{err}");
            let mut res = problem_response(&err);
            res.extensions_mut().insert(info);
            return res;
        }
        let failure = Failure::of(e);
        let reason = match e {
            SendError::Connect(_) if failure == Failure::Refused => "connection refused".to_owned(),
            SendError::Exchange(h) if h.is_parse_too_large() => {
                // hyper's limits for a response head, as Envoy's defaults: say which.
                "its response head is too large (more than 100 header lines, or over 400 KiB)"
                    .to_owned()
            }
            _ => error_chain(e),
        };
        let after = match failure {
            Failure::ConnectTimeout => self.target.timeouts.connect.get(),
            _ => self.target.timeouts.request.get(),
        };
        self.fail(failure, reason, after, info)
    }

    /// Answers an upstream failure: counted under its kind, its type on the span and the
    /// access log, and the client answered 502 or 504.
    fn fail(
        &self,
        failure: Failure,
        reason: String,
        after: Duration,
        mut info: UpstreamInfo,
    ) -> Response<Body> {
        self.metrics
            .upstream_error(self.leg.direction, &self.target.name, failure.metric_kind());
        info.error = Some(failure.error_type());
        let err = failure.answer(self.target.name.to_string(), reason, after);
        self.problem(err, info)
    }

    /// A response attache will not pass on: 502, counted as the upstream's protocol error.
    fn refused(&self, reason: String, info: UpstreamInfo) -> Response<Body> {
        self.fail(Failure::Protocol, reason, Duration::ZERO, info)
    }

    fn problem(&self, err: ProxyError, info: UpstreamInfo) -> Response<Body> {
        tracing::warn!(
            direction = self.leg.direction.as_str(),
            status = err.status().as_u16(),
            "{err}"
        );
        let mut res = problem_response(&err);
        res.extensions_mut().insert(info);
        res
    }
}

/// `Authorization: Basic` for a URL's `user:password` (RFC 7617: standard base64 with padding),
/// marked sensitive so that it is never logged or indexed by HPACK.
pub fn basic_authorization(userinfo: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(userinfo);
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn has_source<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// How a request's own body failed, when that is why an exchange failed.
#[derive(Debug, PartialEq)]
enum ClientBody {
    /// The body broke HTTP framing: a bad chunk size or line, an oversized chunk extension, a
    /// length the stream did not keep to.
    Malformed(String),
    /// The client went away mid-body: the connection closed or reset, the stream was reset.
    Aborted,
}

/// Whether `e` is hyper's "error from user's Body stream" caused by reading the client's body
/// from its connection (another `hyper::Error` under it), and which of the two faults it was.
/// Read from the error types (io kinds, HTTP/2 reasons), not from their text.
fn client_body_fault(e: &(dyn std::error::Error + 'static)) -> Option<ClientBody> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            break;
        }
        cur = err.source();
    }
    let read = cur?.source()?;
    read.downcast_ref::<hyper::Error>()?;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(read);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    ClientBody::Malformed(io.to_string())
                }
                _ => ClientBody::Aborted,
            });
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // A reason attache's side found (a length the stream broke, a flow-control
            // violation) is the client's malformed stream; a reset, GOAWAY or I/O error from the
            // client's side is the client leaving.
            let local = !h2.is_remote() && !h2.is_io();
            return Some(match h2.reason() {
                Some(reason) if local && reason != h2::Reason::CANCEL => {
                    ClientBody::Malformed(h2.to_string())
                }
                _ => ClientBody::Aborted,
            });
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() {
                return Some(ClientBody::Malformed(h.to_string()));
            }
            if h.is_incomplete_message() {
                return Some(ClientBody::Aborted);
            }
        }
        cur = err.source();
    }
    Some(ClientBody::Aborted)
}

fn body_limit(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(l) = err.downcast_ref::<crate::limits::BodyLimitExceeded>() {
            return Some(l.limit);
        }
        cur = err.source();
    }
    None
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

/// `trusted`: the peer is one of `trusted_proxies`, whose `X-Forwarded-Proto`/`-Host` stand
/// under `append`; anyone else's are replaced by what attache saw (`X-Forwarded-For` is a
/// chain either way, and the app reads it from the right).
fn set_forwarded(
    headers: &mut HeaderMap,
    mode: ForwardedHeaders,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    trusted: bool,
) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    match mode {
        ForwardedHeaders::Off => {}
        ForwardedHeaders::Replace => {
            headers.insert(XFF, conn.peer_ip.clone());
            headers.insert(XFP, HeaderValue::from_static("http"));
            match host {
                Some(h) => {
                    headers.insert(XFH, h);
                }
                None => {
                    headers.remove(XFH);
                }
            }
        }
        ForwardedHeaders::Append => {
            // One pass of name comparisons finds which are present (most requests carry
            // none); each lookup by name would hash it.
            let (mut has_xff, mut has_xfp, mut has_xfh) = (false, false, false);
            for name in headers.keys() {
                match name.as_str() {
                    "x-forwarded-for" => has_xff = true,
                    "x-forwarded-proto" => has_xfp = true,
                    "x-forwarded-host" => has_xfh = true,
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
                headers.insert(XFP, HeaderValue::from_static("http"));
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn basic_credentials_are_base64() {
        let basic = |u: &str| basic_authorization(u).map(|v| v.as_bytes().to_vec());
        assert_eq!(basic("u:p"), Some(b"Basic dTpw".to_vec()));
        assert_eq!(
            basic("Aladdin:open sesame"),
            Some(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".to_vec())
        );
        assert_eq!(basic("ab"), Some(b"Basic YWI=".to_vec()));
        assert!(basic_authorization("a:b").is_some_and(|v| v.is_sensitive()));
    }
}
