//! The authorization step (spec §3, §5): one layer on the inbound stack, after trace context
//! (a denial has its span, metrics and log line) and before rate limits, flags and
//! idempotency (a denied request costs no quota, no flag evaluation, no Redis and no
//! restoration entry).
//!
//! Per request: identity headers a client sent (`X-Forwarded-Client-Cert`, `X-Spiffe-Id`) are
//! removed; the path is normalized (refused with 400 when it cannot be judged) and the
//! request goes on with the normalized path, so the policy and the app read the same one; the
//! peer is read from the connection, never from a header; the policy decides. A denial is a
//! 403 problem (for gRPC, HTTP 200 with `grpc-status: 7`) naming the request id and neither
//! the rule nor the peer. An allowed request costs no allocation here (with spans and the
//! access log off; with them on, the decision is handed up as a shared, prebuilt fact).

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::metrics::Counters;
use super::path::{Refused, normalize};
use super::policy::{Ask, Decision, Peer, Policy, Verdict};
use super::tunnels::{Grant, OwnedAsk, Tunnels};
use crate::Body;
use crate::errors::{Problem, problem_response};
use crate::log_throttle::LogThrottle;

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_SPIFFE_ID: HeaderName = HeaderName::from_static("x-spiffe-id");

/// Who is calling, as the connection knows it.
#[derive(Debug, Clone, Copy)]
pub struct ConnPeer<'a> {
    pub peer: Peer<'a>,
    /// The direct peer's address.
    pub addr: IpAddr,
}

/// Reads the connection's peer from a request's extensions (the listener put it there).
pub type PeerReader = for<'a> fn(&'a http::Extensions) -> Option<ConnPeer<'a>>;

/// What the layer is made from.
pub struct Settings {
    pub policy: Arc<Policy>,
    pub peer_of: PeerReader,
    pub counters: Counters,
    /// The request-id header (`spec.trace.request_id.header`) quoted in a 403.
    pub request_id: Option<HeaderName>,
    /// Hand the decision up for the span and the access log.
    pub hand_up: bool,
    /// Where allowed upgrades are held, for a reload to revise.
    pub tunnels: Arc<Tunnels>,
    /// At most one log line per rule per interval, with the count held back.
    pub log_interval: Duration,
}

struct Shared {
    s: Settings,
    /// One per rule, and one for the default.
    throttles: Vec<LogThrottle>,
    /// The fact an allowed request hands up, per rule and for the default, made once.
    allowed: Vec<Arc<AuthzInfo>>,
}

/// The authorization step of one snapshot's inbound stack.
#[derive(Clone)]
pub struct AuthzLayer {
    shared: Arc<Shared>,
}

impl AuthzLayer {
    pub fn new(s: Settings) -> Self {
        let n = s.policy.rules().len();
        let throttles = (0..=n).map(|_| LogThrottle::new(s.log_interval)).collect();
        let allowed = (0..=n)
            .map(|i| {
                let v = Verdict {
                    allow: true,
                    rule: (i < n).then_some(i),
                    reason: if i < n {
                        super::policy::Reason::AllowedByRule
                    } else {
                        super::policy::Reason::NoRuleMatched
                    },
                };
                Arc::new(AuthzInfo::of(
                    &s.policy,
                    &Decision {
                        enforced: v,
                        shadow: None,
                    },
                ))
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                s,
                throttles,
                allowed,
            }),
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.shared.s.policy
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The host a request names (`:authority` or `Host`), without its port.
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    if let Some(h) = req.uri().host() {
        return Some(h);
    }
    let h = req.headers().get(header::HOST)?.to_str().ok()?;
    Some(crate::codec::host::split_host_port(h).0)
}

/// `uri` with `path` in place of its path, the query kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// The trace id of the request as the trace-context step left it, for the log line.
fn trace_id(headers: &http::HeaderMap) -> &str {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok())
        && let Some(id) = tp.get(3..35)
    {
        return id;
    }
    headers
        .get("x-b3-traceid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl<S> Service<Request<Body>> for Authz<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AuthzFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let sh = &*self.shared;
        let s = &sh.s;
        // Identity comes from the TLS session only: a client's claims never reach a rule, a
        // later step or the app.
        // One pass over the names (most requests carry neither): a removal by name hashes it.
        let (mut spoofed, mut upgrade) = (false, false);
        for name in req.headers().keys() {
            if name == header::UPGRADE {
                upgrade = true;
            } else if name == XFCC || name == X_SPIFFE_ID {
                spoofed = true;
            }
        }
        if spoofed {
            let h = req.headers_mut();
            h.remove(XFCC);
            h.remove(X_SPIFFE_ID);
        }
        match normalize(req.uri().path()) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(normal)) => match with_path(req.uri(), &normal) {
                Some(uri) => *req.uri_mut() = uri,
                None => return self.refuse(Refused::NotAbsolute),
            },
            Err(refused) => return self.refuse(refused),
        }
        let conn = (s.peer_of)(req.extensions());
        let peer = conn.map_or(Peer::Plaintext, |c| c.peer);
        let ask = Ask {
            peer,
            addr: conn.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.addr),
            method: req.method(),
            path: req.uri().path(),
            host: if s.policy.reads_hosts() {
                host_of(&req)
            } else {
                None
            },
            headers: req.headers(),
        };
        let d = s.policy.decide(&ask);
        let authenticated = matches!(peer, Peer::Svid(_));
        s.counters.decided(&d.enforced, authenticated);
        if let Some(shadow) = &d.shadow {
            s.counters.shadowed(shadow, authenticated, d.enforced.allow);
        }
        let would_deny = d.shadow.filter(|v| !v.allow);
        if !d.enforced.allow {
            sh.log(&ask, &d.enforced, false);
        } else if let Some(v) = would_deny {
            sh.log(&ask, &v, true);
        }
        if !d.enforced.allow {
            let grpc = ask
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let mut res = if grpc {
                grpc_denied()
            } else {
                let request_id = s
                    .request_id
                    .as_ref()
                    .and_then(|n| ask.headers.get(n))
                    .and_then(|v| v.to_str().ok());
                problem_response(&Denied { request_id })
            };
            let mut info = AuthzInfo::of(&s.policy, &d);
            // The request never reaches the forwarder, which tells the span of the connection.
            if let Peer::Svid(id) = peer {
                info.peer = Some(id.as_str().into());
            }
            crate::facts::hand_up(res.extensions_mut(), Arc::new(info));
            return AuthzFuture::Ready { res: Some(res) };
        }
        let grant = upgrade.then(|| Grant {
            tunnels: s.tunnels.clone(),
            ask: OwnedAsk::of(&ask),
        });
        let info = s.hand_up.then(|| match d.shadow {
            None => sh
                .allowed
                .get(d.enforced.rule.unwrap_or(sh.allowed.len() - 1))
                .cloned()
                .unwrap_or_else(|| Arc::new(AuthzInfo::of(&s.policy, &d))),
            Some(_) => Arc::new(AuthzInfo::of(&s.policy, &d)),
        });
        if let Some(grant) = grant {
            req.extensions_mut().insert(grant);
        }
        AuthzFuture::Inner {
            fut: self.inner.call(req),
            info,
        }
    }
}

impl<S> Authz<S> {
    fn refuse<F>(&self, refused: Refused) -> AuthzFuture<F> {
        self.shared.s.counters.path_refused(match refused {
            Refused::EncodedSeparator(_) => "encoded_separator",
            Refused::MalformedPercent => "malformed_percent",
            Refused::NotAbsolute => "not_absolute",
        });
        AuthzFuture::Ready {
            res: Some(problem_response(&PathRefused(refused))),
        }
    }
}

impl Shared {
    /// One INFO line per denial (or would-deny), at most one per rule per interval.
    fn log(&self, ask: &Ask<'_>, v: &Verdict, dry_run: bool) {
        let n = self.throttles.len() - 1;
        let Some(suppressed) = self
            .throttles
            .get(v.rule.unwrap_or(n))
            .and_then(LogThrottle::admit)
        else {
            return;
        };
        let peer = match ask.peer {
            Peer::Plaintext => "plaintext",
            Peer::Anonymous => "tls-without-certificate",
            Peer::Svid(id) => id.as_str(),
        };
        let request_id = self
            .s
            .request_id
            .as_ref()
            .and_then(|h| ask.headers.get(h))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let rule = self.s.policy.rule_name(v).unwrap_or("");
        let message = if dry_run {
            "request would be denied (dry run)"
        } else {
            "request denied"
        };
        tracing::info!(
            rule,
            reason = v.reason.as_str(),
            peer,
            method = %ask.method,
            path = ask.path,
            request_id,
            trace_id = trace_id(ask.headers),
            dry_run,
            suppressed,
            "{message}"
        );
    }
}

/// HTTP 200, trailers-only, `grpc-status: 7` (PERMISSION_DENIED), as gRPC clients expect.
fn grpc_denied() -> Response<Body> {
    let mut res = Response::new(crate::empty());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("7"));
    h.insert(
        "grpc-message",
        HeaderValue::from_static("denied by the authorization policy"),
    );
    res
}

pin_project! {
    #[project = AuthzProj]
    pub enum AuthzFuture<F> {
        Ready { res: Option<Response<Body>> },
        Inner {
            #[pin]
            fut: F,
            info: Option<Arc<AuthzInfo>>,
        },
    }
}

impl<F> Future for AuthzFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthzProj::Ready { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
            AuthzProj::Inner { fut, info } => {
                let mut res = std::task::ready!(fut.poll(cx))?;
                if let Some(info) = info.take() {
                    crate::facts::hand_up(res.extensions_mut(), info);
                }
                Poll::Ready(Ok(res))
            }
        }
    }
}

/// A denial: neither the rule nor the peer is named (they are in the log line and the span).
struct Denied<'a> {
    request_id: Option<&'a str>,
}

impl std::fmt::Display for Denied<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the authorization policy does not allow this request")
    }
}

impl Problem for Denied<'_> {
    fn status(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }
    fn slug(&self) -> &'static str {
        "forbidden"
    }
    fn title(&self) -> &'static str {
        "Forbidden"
    }
    fn request_id(&self) -> Option<&str> {
        self.request_id
    }
}

struct PathRefused(Refused);

impl std::fmt::Display for PathRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Problem for PathRefused {
    fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
    fn slug(&self) -> &'static str {
        "path-refused"
    }
    fn title(&self) -> &'static str {
        "Path refused"
    }
}

/// The decision, handed up for the span (`attache.authz.*`) and the access log.
#[derive(Debug)]
pub struct AuthzInfo {
    pub allow: bool,
    pub rule: Option<Arc<str>>,
    pub reason: &'static str,
    /// The shadow decision, when one was made: `allow` or `deny`.
    pub dry_run: Option<&'static str>,
    /// The peer's SPIFFE ID, on a denied request (an allowed one's span has it from its
    /// connection).
    pub peer: Option<Box<str>>,
}

impl AuthzInfo {
    fn of(policy: &Policy, d: &Decision) -> Self {
        Self {
            allow: d.enforced.allow,
            rule: d
                .enforced
                .rule
                .and_then(|i| policy.rules().get(i))
                .map(|r| r.name.clone()),
            reason: d.enforced.reason.as_str(),
            dry_run: d.shadow.map(|v| if v.allow { "allow" } else { "deny" }),
            peer: None,
        }
    }
}

impl crate::facts::Fact for AuthzInfo {
    fn attributes(&self, attr: crate::facts::Attributes<'_>) {
        use crate::facts::Value;
        attr(
            "attache.authz.decision",
            Value::from(if self.allow { "allow" } else { "deny" }),
        );
        if let Some(rule) = &self.rule {
            attr("attache.authz.rule", Value::from(&**rule));
        }
        attr("attache.authz.reason", Value::from(self.reason));
        if let Some(shadow) = self.dry_run {
            attr("attache.authz.dry_run.decision", Value::from(shadow));
        }
        if let Some(peer) = &self.peer {
            attr("attache.peer.id", Value::from(&**peer));
        }
    }

    fn log_fields(&self, field: crate::facts::Attributes<'_>) {
        use crate::facts::Value;
        if !self.allow {
            field("authz_denied", Value::from(self.reason));
        }
        if self.dry_run == Some("deny") {
            field("authz_dry_run", Value::from("deny"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::policy::{Action, Default, Rule, Source, To, When};
    use std::task::Waker;

    /// A rule on an identity header can never be met by a client's own copy: the step removes
    /// it before the decision.
    #[test]
    fn a_client_identity_header_never_reaches_a_rule() {
        let rule = |header: HeaderName| Rule {
            name: "by-header".into(),
            action: Action::Allow,
            dry_run: false,
            from: Source {
                any: true,
                ..Source::default()
            },
            to: To::default(),
            when: vec![When {
                header,
                values: vec![],
                present: Some(true),
            }],
        };
        let rules = vec![rule(X_SPIFFE_ID), rule(XFCC)];
        let policy = Arc::new(Policy::new(Default::Deny, false, rules));
        let metrics = crate::metrics::Metrics::new();
        let layer = AuthzLayer::new(Settings {
            counters: Counters::new(metrics.family(), &policy),
            policy,
            peer_of: |_| None,
            request_id: None,
            hand_up: false,
            tunnels: Arc::default(),
            log_interval: Duration::from_secs(60),
        });
        let ok = || Ok::<_, Infallible>(Response::new(crate::empty()));
        let mut svc = layer.layer(tower::service_fn(move |_req| std::future::ready(ok())));
        let mut cx = Context::from_waker(Waker::noop());
        for spoof in [X_SPIFFE_ID, XFCC] {
            let mut req = Request::new(crate::empty());
            *req.uri_mut() = Uri::from_static("/x");
            req.headers_mut().insert(
                spoof,
                HeaderValue::from_static("spiffe://prod.example/ns/a/sa/b"),
            );
            let mut fut = std::pin::pin!(svc.call(req));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(res)) => assert_eq!(res.status(), StatusCode::FORBIDDEN),
                _ => panic!("no answer"),
            }
        }
    }
}
