//! The collector's end of span export: one HTTP client per exporter, the OTLP request (HTTP
//! protobuf, or gRPC framing), and what the collector's answer means (rejected spans, or a
//! failure and whether to retry it).

use std::io::Write as _;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use super::export_settings::{ExportSettings, Protocol};
use crate::errors::error_chain;

/// Why an attempt failed, and whether another may succeed.
pub(super) struct Failure {
    pub(super) retryable: bool,
    pub(super) reason: String,
}

/// The HTTP client and request shape of one protocol.
pub(super) struct Transport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    protocol: Protocol,
    headers: Vec<(HeaderName, HeaderValue)>,
    gzip: bool,
}

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Transport {
    pub(super) fn new(s: &ExportSettings) -> Option<Self> {
        let endpoint = s.endpoint.clone()?;
        let uri = match s.protocol {
            Protocol::HttpProtobuf => endpoint,
            Protocol::Grpc => {
                let base = endpoint.to_string();
                let url = format!("{}{GRPC_PATH}", base.trim_end_matches('/'));
                url.parse().ok()?
            }
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(s.timeout));
        http.enforce_http(false);
        // `https://` collectors: rustls against the system's roots (`SSL_CERT_FILE` or
        // `SSL_CERT_DIR` name others). Without any root an https endpoint fails each export
        // with the reason, and `http://` ones work as ever.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_max_idle_per_host(2)
            .http2_only(s.protocol == Protocol::Grpc)
            .build(connector);
        Some(Self {
            client,
            uri,
            protocol: s.protocol,
            headers: s.headers.clone(),
            gzip: s.gzip,
        })
    }

    /// One attempt. `Ok` holds the number of spans the collector rejected.
    pub(super) async fn send(&self, message: &[u8], timeout: Duration) -> Result<u64, Failure> {
        let req = self.request(message, timeout).map_err(|e| Failure {
            retryable: false,
            reason: format!("invalid export request: {e}"),
        })?;
        let res = self.client.request(req).await.map_err(|e| Failure {
            // A connection that could not be made or broke may work on the next try.
            retryable: true,
            reason: error_chain(&e),
        })?;
        let status = res.status();
        let headers = res.headers().clone();
        let collected = res.into_body().collect().await.map_err(|e| Failure {
            retryable: true,
            reason: format!("reading the collector's answer: {e}"),
        })?;
        let trailers = collected.trailers().cloned();
        let bytes = collected.to_bytes();
        if !status.is_success() {
            let http = if self.protocol == Protocol::Grpc {
                "HTTP "
            } else {
                ""
            };
            return Err(Failure {
                retryable: matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
                reason: format!("the collector answered {http}{status}"),
            });
        }
        match self.protocol {
            Protocol::HttpProtobuf => Ok(rejected(&bytes)),
            Protocol::Grpc => grpc_answer(&headers, trailers.as_ref(), &bytes),
        }
    }

    /// The export request for `message`: compressed when asked, framed for gRPC.
    fn request(&self, message: &[u8], timeout: Duration) -> http::Result<Request<Full<Bytes>>> {
        let payload = if self.gzip {
            gzip(message)
        } else {
            Bytes::copy_from_slice(message)
        };
        let mut req = Request::post(self.uri.clone());
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req = req.header(
            http::header::USER_AGENT,
            concat!("attache/", env!("CARGO_PKG_VERSION")),
        );
        let body = match self.protocol {
            Protocol::HttpProtobuf => {
                req = req.header(http::header::CONTENT_TYPE, "application/x-protobuf");
                if self.gzip {
                    req = req.header(http::header::CONTENT_ENCODING, "gzip");
                }
                payload
            }
            Protocol::Grpc => {
                req = req
                    .version(http::Version::HTTP_2)
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
                    .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)));
                if self.gzip {
                    req = req.header("grpc-encoding", "gzip");
                }
                let mut framed = BytesMut::with_capacity(payload.len() + 5);
                framed.put_u8(u8::from(self.gzip));
                framed.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
                framed.put_slice(&payload);
                framed.freeze()
            }
        };
        req.body(Full::new(body))
    }
}

/// A gRPC answer that came with HTTP 200: `grpc-status` is in the trailers, or in the headers
/// of a trailers-only answer. 14 (`UNAVAILABLE`) may work on the next try.
fn grpc_answer(
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    bytes: &[u8],
) -> Result<u64, Failure> {
    let grpc = |name: &str| {
        trailers
            .and_then(|t| t.get(name))
            .or_else(|| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let code: u32 = grpc("grpc-status")
        .and_then(|c| c.parse().ok())
        .unwrap_or(2);
    match code {
        0 => Ok(bytes.get(5..).map_or(0, rejected)),
        14 => Err(Failure {
            retryable: true,
            reason: "gRPC UNAVAILABLE".to_owned(),
        }),
        c => Err(Failure {
            retryable: false,
            reason: format!(
                "gRPC status {c}: {}",
                grpc("grpc-message").unwrap_or_default()
            ),
        }),
    }
}

/// TLS settings for collectors: the system's roots, TLS 1.2 and 1.3 (ring, which supports
/// both: `None` does not happen).
fn client_tls() -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot read is skipped.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Some(config)
}

/// Spans the collector said it rejected (OTLP partial success).
fn rejected(body: &[u8]) -> u64 {
    ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

fn gzip(data: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}
