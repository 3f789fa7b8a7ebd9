//! One endpoint of a target as a tower service: it addresses a request to the endpoint, sends it
//! through the endpoint's pool, and reports the hop.
//!
//! Addressing is what differs between the endpoints of one target, and nothing else: the
//! HTTP/2 `:authority`, a `Host` when the forwarder left it to the endpoint (the leg rewrites
//! it, or the client sent none), and `Authorization: Basic` from credentials in the endpoint's
//! URL when the request carries no `Authorization` of its own. A request that comes back unsent
//! (no connection could be made) has what this endpoint added taken off again, so the next
//! endpoint addresses it afresh.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use attache_config::{Protocol, UpstreamUrl};
use attache_filters::Body;
use attache_filters::facts::UpstreamInfo;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Uri, Version};

use super::pool::{self, NoResponse, Resent};
use super::{Client, Exchange, Outgoing, Unanswered};
use crate::metrics::{EndpointMeters, ProxyFamilies};

/// What an endpoint's exchange resolves to.
pub type Sending = Pin<Box<dyn Future<Output = Result<Exchange, Unanswered>> + Send>>;

/// An endpoint of a target, cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    /// Its keep-alive connections.
    pool: Arc<pool::Endpoint>,
    authority: Authority,
    host: HeaderValue,
    /// `Authorization: Basic` from credentials in the endpoint URL.
    authorization: Option<HeaderValue>,
    http2: bool,
    /// TLS to the endpoint: the HTTP/2 `:scheme` is `https`.
    https: bool,
    /// What spans and the access log say about a call to it (host, port, the URL with
    /// credentials redacted), copied into each exchange's report.
    info: UpstreamInfo,
    /// Its request counts and latency, for an endpoint of a named upstream.
    meters: Option<EndpointMeters>,
    /// What it is known by in metrics and to balancers: `host:port`, or the address a name
    /// resolved to.
    address: String,
}

/// What `Inner::address` added to a request.
#[derive(Clone, Copy, Default)]
struct Added {
    host: bool,
    authorization: bool,
}

impl Endpoint {
    /// The endpoint at `url` of the target `name`, with its pool from `client`.
    pub fn new(
        name: &Arc<str>,
        url: &UpstreamUrl,
        client: &Client,
        protocol: Protocol,
        metered: Option<&ProxyFamilies>,
        tls: Option<&attache_config::UpstreamTls>,
    ) -> anyhow::Result<Self> {
        Self::at(name, url, None, client, protocol, metered, tls)
    }

    /// The endpoint at `url`, connected to at `addr` (one of the addresses its name resolved
    /// to) when given: requests still name `url`'s host (`Host`, the HTTP/2 authority, TLS
    /// server name), metrics and balancers know it by the address.
    pub fn at(
        name: &Arc<str>,
        url: &UpstreamUrl,
        addr: Option<std::net::SocketAddr>,
        client: &Client,
        protocol: Protocol,
        metered: Option<&ProxyFamilies>,
        tls: Option<&attache_config::UpstreamTls>,
    ) -> anyhow::Result<Self> {
        let https = url.scheme == attache_config::Scheme::Https;
        let authority: Authority = url.authority().parse()?;
        let host = HeaderValue::from_str(authority.as_str())?;
        let authorization = match &url.userinfo {
            Some(userinfo) => Some(
                basic_authorization(userinfo)
                    .ok_or_else(|| anyhow::anyhow!("credentials that fit no header"))?,
            ),
            None => None,
        };
        let scheme = if https { "https" } else { "http" };
        let url_base = match url.userinfo {
            Some(_) => format!("{scheme}://REDACTED:REDACTED@{authority}"),
            None => format!("{scheme}://{authority}"),
        };
        let http2 = protocol == Protocol::Http2;
        let info = UpstreamInfo {
            name: name.clone(),
            url_base: Arc::from(url_base),
            host: Arc::from(url.host.as_str()),
            port: url.port,
            version: if http2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            },
            resend_count: 0,
            error: None,
        };
        let address = match addr {
            Some(a) => a.to_string(),
            None => format!("{}:{}", url.host, url.port),
        };
        let connect_to = match addr {
            Some(a) => a.to_string(),
            None => authority.as_str().to_owned(),
        };
        let meters = metered.map(|f| EndpointMeters::new(f, name, &connect_to));
        let pool = match https {
            true => {
                let origin = super::tls::TlsOrigin::new(tls, &url.host, protocol)?;
                client.endpoint_with(&connect_to, Some(Arc::new(origin)))
            }
            false => client.endpoint(&connect_to),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                https,
                authority,
                host,
                authorization,
                http2,
                info,
                meters,
                address,
            }),
        })
    }

    /// What spans and the access log say about a call to this endpoint, before it is made.
    pub fn info(&self) -> UpstreamInfo {
        self.inner.info.clone()
    }

    /// `host:port`, as metrics name it.
    pub fn address(&self) -> String {
        self.inner.address.clone()
    }

    /// Sends `out` to this endpoint.
    pub fn send(&self, out: Outgoing) -> Sending {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Outgoing {
                mut request,
                started,
                deadline,
            } = out;
            let mut upstream = inner.info.clone();
            let added = inner.address(&mut request);
            let sent = inner.pool.send(request, started, deadline).await;
            if let Some(m) = &inner.meters {
                let status = sent.as_ref().ok().map(|r| r.status().as_u16());
                m.record(status, started.elapsed());
            }
            match sent {
                Ok(mut response) => {
                    if response.extensions_mut().remove::<Resent>().is_some() {
                        upstream.resend_count += 1;
                    }
                    Ok(Exchange {
                        response,
                        upstream,
                        failed_over: None,
                    })
                }
                Err(NoResponse { error, unsent }) => Err(Unanswered {
                    error,
                    unsent: unsent.map(|mut req| {
                        inner.unaddress(&mut req, added);
                        req
                    }),
                    upstream,
                    failed_over: None,
                }),
            }
        })
    }
}

impl Inner {
    fn address(&self, req: &mut Request<Body>) -> Added {
        if self.http2 {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if self.https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = req.uri().path_and_query().cloned();
            // With a path (the forwarder always leaves one), scheme and authority make a URI.
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        let headers = req.headers_mut();
        let mut added = Added::default();
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, self.host.clone());
            added.host = true;
        }
        if let Some(auth) = &self.authorization
            && !headers.contains_key(header::AUTHORIZATION)
        {
            headers.insert(header::AUTHORIZATION, auth.clone());
            added.authorization = true;
        }
        added
    }

    /// Takes off what [`Inner::address`] added (the HTTP/2 authority is replaced by the next
    /// endpoint's, so it stays).
    fn unaddress(&self, req: &mut Request<Body>, added: Added) {
        let headers = req.headers_mut();
        if added.host {
            headers.remove(header::HOST);
        }
        if added.authorization {
            headers.remove(header::AUTHORIZATION);
        }
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

impl tower::Service<Outgoing> for Endpoint {
    type Response = Exchange;
    type Error = Unanswered;
    type Future = Sending;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Unanswered>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outgoing) -> Sending {
        self.send(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::failure::Failure;
    use attache_filters::metrics::Metrics;
    use tower::ServiceExt;

    fn url(text: &str) -> UpstreamUrl {
        text.parse().expect("url")
    }

    fn outgoing(req: Request<Body>) -> Outgoing {
        let started = tokio::time::Instant::now();
        Outgoing {
            request: req,
            started,
            deadline: started + std::time::Duration::from_secs(5),
        }
    }

    fn client(protocol: Protocol) -> Client {
        crate::upstream::client(
            std::time::Duration::from_secs(2),
            attache_config::Pool::default(),
            protocol,
            &Arc::new(Metrics::new()),
        )
    }

    /// A port nothing listens on (just released).
    async fn closed_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn an_unsent_request_comes_back_without_what_the_endpoint_added() {
        let port = closed_port().await;
        let name: Arc<str> = Arc::from("orders");
        let ep = Endpoint::new(
            &name,
            &url(&format!("http://u:p@127.0.0.1:{port}")),
            &client(Protocol::Http1),
            Protocol::Http1,
            None,
            None,
        )
        .expect("endpoint");
        let req = Request::get("/x").body(attache_filters::empty()).unwrap();
        let Err(failed) = ep.clone().oneshot(outgoing(req)).await else {
            panic!("nothing listens there");
        };
        assert_eq!(Failure::of(&failed.error), Failure::Refused);
        let back = failed.unsent.expect("a refused connection sends nothing");
        assert!(back.headers().get(header::HOST).is_none(), "{back:?}");
        assert!(back.headers().get(header::AUTHORIZATION).is_none());
        assert_eq!(&*failed.upstream.name, "orders");
        assert_eq!(failed.upstream.port, port);
        assert_eq!(
            &*failed.upstream.url_base,
            &format!("http://REDACTED:REDACTED@127.0.0.1:{port}")
        );

        // The client's own Host and Authorization are the client's: they stay.
        let req = Request::get("/x")
            .header(header::HOST, "shop.example")
            .header(header::AUTHORIZATION, "Bearer t")
            .body(attache_filters::empty())
            .unwrap();
        let Err(failed) = ep.oneshot(outgoing(req)).await else {
            panic!("nothing listens there");
        };
        let back = failed.unsent.expect("unsent");
        assert_eq!(back.headers()[header::HOST], "shop.example");
        assert_eq!(back.headers()[header::AUTHORIZATION], "Bearer t");
    }

    #[tokio::test]
    async fn an_endpoint_addresses_the_request_to_itself() {
        let name: Arc<str> = Arc::from("orders");
        let ep = Endpoint::new(
            &name,
            &url("http://u:p@127.0.0.1:9"),
            &client(Protocol::Http2),
            Protocol::Http2,
            None,
            None,
        )
        .expect("endpoint");
        let mut req = Request::get("/x?y=1")
            .body(attache_filters::empty())
            .unwrap();
        let added = ep.inner.address(&mut req);
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:9/x?y=1");
        assert_eq!(req.headers()[header::HOST], "127.0.0.1:9");
        assert_eq!(req.headers()[header::AUTHORIZATION], "Basic dTpw");
        assert!(added.host && added.authorization);
        ep.inner.unaddress(&mut req, added);
        assert!(req.headers().is_empty());
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
