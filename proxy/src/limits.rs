//! Request limits, checked before anything else looks at a request: header count and size
//! (431), the Host lines (400: missing, several, invalid, or not the HTTP/2 `:authority`) and
//! body size (413). hyper enforces looser limits of its own on the raw bytes as a
//! safety net; these are the exact, documented ones, counted the same way for HTTP/1.1 and
//! HTTP/2, and answered with problem+json.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use attache_config::{Limits, UnderscoreHeaders};
use attache_filters::errors::{ProxyError, problem_response};
use attache_filters::metrics::Metrics;
use attache_filters::telemetry::families::HttpFamilies;
use attache_filters::{Body, BoxError};
use bytes::Bytes;
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct LimitsLayer {
    max_header_bytes: u64,
    max_headers: u32,
    max_body: Option<u64>,
    /// `spec.limits.upgrade_protocols`, lowercased: a name, or `name/version`.
    upgrades: Arc<[String]>,
    underscores: UnderscoreHeaders,
    metrics: Arc<HttpFamilies>,
}

impl LimitsLayer {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            max_header_bytes: limits.max_header_bytes.0,
            max_headers: limits.max_headers,
            max_body: limits.max_request_body_bytes.map(|b| b.0),
            upgrades: limits
                .upgrade_protocols
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            underscores: limits.headers_with_underscores,
            metrics: metrics.family(),
        }
    }

    /// Whether an `Upgrade` offer (`websocket`, `h2c`, `TLS/1.2`) is on the allow-list: by
    /// name, or by `name/version` exactly. `h2c` never is (the config refuses to list it).
    fn upgrade_allowed(&self, offer: &str) -> bool {
        let name = offer.split('/').next().unwrap_or_default();
        !name.eq_ignore_ascii_case("h2c")
            && self
                .upgrades
                .iter()
                .any(|p| p.eq_ignore_ascii_case(name) || p.eq_ignore_ascii_case(offer))
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LimitsService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LimitsService<S> {
    inner: S,
    layer: LimitsLayer,
}

impl<S> Service<Request<Body>> for LimitsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<Body>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let l = &self.layer;
        let count = req.headers().len();
        if count > l.max_headers as usize {
            l.metrics.client_error("headers_too_large");
            return reject(ProxyError::TooManyHeaders {
                count,
                limit: l.max_headers,
            });
        }
        // One pass over the fields: the section's size as attache counts it (name + value + 4
        // bytes for `: ` and CRLF per field, the bytes on the wire for HTTP/1.1), and the Host
        // lines.
        let (mut size, mut hosts, mut host) = (0, 0, None);
        let (mut underscores, mut upgrade, mut coding) = (false, false, None);
        for (n, v) in req.headers() {
            size += n.as_str().len() + v.len() + 4;
            if n == header::HOST {
                hosts += 1;
                host = Some(v);
            } else if n == header::UPGRADE {
                upgrade = true;
            } else if n == header::TRANSFER_ENCODING && coding.is_none() {
                coding = crate::hop_by_hop::not_chunked(v);
            }
            underscores |= n.as_str().contains('_');
        }
        if size as u64 > l.max_header_bytes {
            l.metrics.client_error("headers_too_large");
            return reject(ProxyError::HeadersTooLarge {
                size,
                limit: l.max_header_bytes,
            });
        }
        let authority = req.uri().authority().map(|a| a.as_str());
        if let Some(why) = host_problem(req.version(), hosts, host, authority) {
            l.metrics.client_error("bad_host");
            return reject(ProxyError::BadRequest(why.into()));
        }
        if let Some(why) = target_problem(&req) {
            l.metrics.client_error("bad_target");
            return reject(ProxyError::BadRequest(why.into()));
        }
        if let Some(coding) = coding {
            l.metrics.client_error("transfer_coding");
            return reject(ProxyError::UnsupportedTransferCoding(coding));
        }
        if underscores {
            let named: Vec<_> = req
                .headers()
                .keys()
                .filter(|n| n.as_str().contains('_'))
                .cloned()
                .collect();
            match l.underscores {
                UnderscoreHeaders::Allow => {}
                UnderscoreHeaders::Drop => {
                    l.metrics.client_error("header_with_underscore");
                    for n in named {
                        req.headers_mut().remove(n);
                    }
                }
                UnderscoreHeaders::Reject => {
                    l.metrics.client_error("header_with_underscore");
                    let first = named.first().map_or("", |n| n.as_str());
                    return reject(ProxyError::BadRequest(format!(
                        "the header field `{first}` has an underscore in its name, which CGI-style \
                         apps read as a dash (spec.limits.headers_with_underscores: reject)"
                    )));
                }
            }
        }
        if upgrade {
            keep_allowed_upgrades(l, req.headers_mut());
        }
        let Some(limit) = l.max_body else {
            return Either::Right(self.inner.call(req));
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            l.metrics.client_error("body_too_large");
            return reject(ProxyError::BodyTooLarge { limit });
        }
        let req = req.map(|body| {
            attache_filters::boxed(LimitedBody {
                inner: body,
                remaining: limit,
                limit,
            })
        });
        Either::Right(self.inner.call(req))
    }
}

/// RFC 9112 §3.2: the asterisk-form (`*`) is for `OPTIONS` only, and the authority-form
/// (`host:port`) for `CONNECT` only (which the forwarder refuses with its own answer). Neither
/// names a resource of the app; forwarded, they would reach it as `GET /`.
fn target_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let uri = req.uri();
    if uri.path() == "*" && uri.query().is_none() && req.method() != http::Method::OPTIONS {
        return Some("the request target `*` is for OPTIONS only");
    }
    if uri.scheme().is_none() && uri.authority().is_some() && req.method() != http::Method::CONNECT
    {
        return Some("an authority-form request target (`host:port`) is for CONNECT only");
    }
    None
}

/// Cuts a request's `Upgrade` offers down to those on the allow-list; with none left the
/// field goes, and the request reaches the app as a plain one (which RFC 9110 §7.8 lets a
/// server answer as if `Upgrade` were absent).
fn keep_allowed_upgrades(l: &LimitsLayer, headers: &mut http::HeaderMap) {
    let offers: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    let kept: Vec<&str> = offers
        .iter()
        .copied()
        .filter(|o| l.upgrade_allowed(o))
        .collect();
    if kept.len() == offers.len() && headers.get_all(header::UPGRADE).iter().count() == 1 {
        return;
    }
    let value = (!kept.is_empty())
        .then(|| http::HeaderValue::from_str(&kept.join(", ")).ok())
        .flatten();
    headers.remove(header::UPGRADE);
    if let Some(v) = value {
        headers.insert(header::UPGRADE, v);
    }
}

/// RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without Host, and to any
/// request with more than one Host line or an invalid one; RFC 9113 §8.3.1: an HTTP/2 request
/// whose Host names another host than its `:authority` is malformed. Forwarding such a request
/// would let attache (its flags, spans, routes) and the app disagree on which host it is for.
/// (HTTP/2 and HTTP/1.0 may leave Host out.)
fn host_problem(
    version: http::Version,
    hosts: usize,
    host: Option<&http::HeaderValue>,
    authority: Option<&str>,
) -> Option<&'static str> {
    match (hosts, host) {
        (0, _) if version == http::Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)")
        }
        (0, _) => None,
        (1, Some(h)) if !valid_host(h.as_bytes()) => {
            Some("the Host header is not a valid host[:port]")
        }
        (1, Some(h))
            if version == http::Version::HTTP_2
                && authority.is_some_and(|a| !a.as_bytes().eq_ignore_ascii_case(h.as_bytes())) =>
        {
            Some("the Host header and :authority name different hosts (RFC 9113 §8.3.1)")
        }
        (1, _) => None,
        _ => Some("a request may carry one Host header, not several"),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986): a registered name, an IPv4 address or a bracketed IPv6
/// one, with an optional port. Empty is allowed (a target without an authority); userinfo,
/// paths, spaces and controls are not. A table lookup per byte: this runs for every request.
fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| HOST_BYTES[b as usize])
}

/// The bytes of `uri-host [ ":" port ]`: unreserved, sub-delims, `%` (percent-encoding), `:`,
/// and the brackets of an IPv6 literal.
static HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let allowed = b"-._~!$&'()*+,;=%:[]";
    let mut i = 0;
    while i < allowed.len() {
        t[allowed[i] as usize] = true;
        i += 1;
    }
    let mut b = 0;
    while b < 128 {
        if (b as u8).is_ascii_alphanumeric() {
            t[b] = true;
        }
        b += 1;
    }
    t
};

fn reject<F>(err: ProxyError) -> Either<Ready<Result<Response<Body>, Infallible>>, F> {
    Either::Left(ready(Ok(problem_response(&err))))
}

/// The error a request body gives once it passes `limit` bytes.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyLimitExceeded {
    pub limit: u64,
}

pin_project! {
    /// Streams a body through, failing as soon as it grows past the limit.
    struct LimitedBody {
        #[pin]
        inner: Body,
        remaining: u64,
        limit: u64,
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            let n = data.len() as u64;
            if n > *this.remaining {
                return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded {
                    limit: *this.limit,
                }))));
            }
            *this.remaining -= n;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn echo_len()
    -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|req: Request<Body>| async move {
            let res = match req.into_body().collect().await {
                Ok(b) => Response::new(attache_filters::full(b.to_bytes().len().to_string())),
                Err(e) => Response::new(attache_filters::full(e.to_string())),
            };
            Ok::<_, Infallible>(res)
        })
    }

    /// An HTTP/1.1 request with the Host it needs.
    fn request(body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        req.headers_mut()
            .insert(header::HOST, http::HeaderValue::from_static("app"));
        req
    }

    #[test]
    fn host_lines_follow_rfc_9112() {
        use http::{HeaderValue, Version};
        let h = |v: &'static str| HeaderValue::from_static(v);
        let ok = |version, n, v: Option<&HeaderValue>| host_problem(version, n, v, None).is_none();
        for good in [
            "app",
            "app:8080",
            "10.0.0.1:80",
            "[::1]:8080",
            "xn--bcher-kva.example",
            "",
        ] {
            assert!(ok(Version::HTTP_11, 1, Some(&h(good))), "{good:?}");
        }
        for bad in ["a b", "user@app", "app/path", "app?x", "app#f", "\"app\""] {
            assert!(!ok(Version::HTTP_11, 1, Some(&h(bad))), "{bad:?}");
        }
        assert!(!ok(Version::HTTP_11, 0, None), "HTTP/1.1 needs Host");
        assert!(ok(Version::HTTP_10, 0, None), "HTTP/1.0 may leave it out");
        assert!(ok(Version::HTTP_2, 0, None), "HTTP/2 has :authority");
        assert!(!ok(Version::HTTP_2, 2, Some(&h("app"))), "never two");
        let h2 = |host: &'static str, authority| {
            host_problem(Version::HTTP_2, 1, Some(&h(host)), Some(authority)).is_none()
        };
        assert!(h2("app:80", "app:80") && h2("APP:80", "app:80"));
        assert!(!h2("other", "app:80"), "Host and :authority disagree");
    }

    fn limits(body: Option<u64>) -> Limits {
        Limits {
            max_headers: 3,
            max_header_bytes: attache_config::ByteSize(1024),
            max_request_body_bytes: body.map(attache_config::ByteSize),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn too_many_or_too_large_headers_get_431() {
        let svc = LimitsLayer::new(&limits(None), Arc::new(Metrics::new())).layer(echo_len());
        let mut req = request(attache_filters::empty());
        for i in 0..4 {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 431);
        let mut req = request(attache_filters::empty());
        req.headers_mut()
            .insert("x-big", "a".repeat(1020).parse().unwrap());
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 431);
        let mut req = request(attache_filters::empty());
        req.headers_mut()
            .insert("x-ok", "a".repeat(900).parse().unwrap());
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_fail_early_or_midstream() {
        let svc = LimitsLayer::new(&limits(Some(10)), Arc::new(Metrics::new())).layer(echo_len());
        let mut req = request(attache_filters::full("x".repeat(11)));
        req.headers_mut().insert(header::CONTENT_LENGTH, 11.into());
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 413);
        // Undeclared length: the body itself fails once past the limit.
        let res = svc
            .clone()
            .oneshot(request(attache_filters::full("x".repeat(11))))
            .await
            .unwrap();
        let text = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, "request body exceeds the limit of 10 bytes");
        let res = svc
            .oneshot(request(attache_filters::full("x".repeat(10))))
            .await
            .unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "10");
    }
}
