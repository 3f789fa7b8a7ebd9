//! A test OTLP collector: the protocol peer attache's exporter talks to. HTTP/protobuf is
//! served with hyper and `opentelemetry-proto`'s messages; gRPC with tonic's generated
//! `TraceService` server (its framing, compression and status trailers, not attache's).
//!
//! It records every export request, and can be told to fail the next N with a retryable
//! status (HTTP 503 / gRPC `UNAVAILABLE`).

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<ExportTraceServiceRequest>>,
    /// Export requests to fail with a retryable status before accepting again.
    fail_next: AtomicUsize,
    /// Requests that arrived gzip-compressed.
    gzipped: AtomicUsize,
    failed: AtomicUsize,
    /// Count spans without keeping them (for long benchmark runs).
    count_only: bool,
    counted: AtomicUsize,
    batches: AtomicUsize,
    /// The `Authorization` of each HTTP export request ("" without one).
    authorizations: Mutex<Vec<String>>,
}

impl State {
    /// Records a request, or says it must fail.
    fn take(&self, req: ExportTraceServiceRequest) -> bool {
        let fail = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.counted.fetch_add(n, Ordering::SeqCst);
        self.batches.fetch_add(1, Ordering::SeqCst);
        if !self.count_only {
            self.requests.lock().unwrap().push(req);
        }
        true
    }
}

/// A running collector on 127.0.0.1, stopped when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Served over TLS (`https://`).
    tls: bool,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A received span with its resource.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: HashMap<String, String>,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.clone(),
                    Some(Value::IntValue(i)) => i.to_string(),
                    Some(Value::BoolValue(b)) => b.to_string(),
                    other => format!("{other:?}"),
                },
            )
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }
    pub fn is_error(&self) -> bool {
        self.span
            .status
            .as_ref()
            .is_some_and(|s| s.code == StatusCode::Error as i32)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Collector {
    pub async fn start(protocol: Protocol) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        Self::serve(listener, protocol, false)
    }

    /// Serves over TLS with `acceptor` (its endpoint is `https://`).
    pub async fn start_tls(protocol: Protocol, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        Self::serve_with(listener, protocol, false, Some(acceptor))
    }

    /// Serves on an already-bound listener; `count_only` keeps no spans, only their number.
    pub fn serve(listener: tokio::net::TcpListener, protocol: Protocol, count_only: bool) -> Self {
        Self::serve_with(listener, protocol, count_only, None)
    }

    fn serve_with(
        listener: tokio::net::TcpListener,
        protocol: Protocol,
        count_only: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let with_tls = tls.is_some();
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            count_only,
            ..State::default()
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_connection(TokioIo::new(s), protocol, st).await;
                            }
                        }
                        None => serve_connection(TokioIo::new(stream), protocol, st).await,
                    }
                });
            }
        });
        Self {
            addr,
            protocol,
            tls: with_tls,
            state,
            task,
        }
    }

    /// The endpoint to configure: the base address (HTTP gets `/v1/traces` added by attache).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// One connection to the collector, over plain TCP or TLS.
async fn serve_connection<I>(io: I, protocol: Protocol, st: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http => {
            let svc = hyper::service::service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, std::convert::Infallible>(http_export(&st, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        }
        Protocol::Grpc => {
            let svc = TraceServiceServer::new(Grpc(st))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        }
    }
}

impl Collector {
    /// The `Authorization` header of every HTTP export request so far ("" when absent).
    pub fn authorizations(&self) -> Vec<String> {
        self.state
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Export requests accepted so far.
    pub fn batches(&self) -> usize {
        self.state.batches.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Spans accepted so far (kept or only counted).
    pub fn counted(&self) -> usize {
        self.state.counted.load(Ordering::SeqCst)
    }

    pub fn gzipped(&self) -> usize {
        self.state.gzipped.load(Ordering::SeqCst)
    }

    pub fn spans(&self) -> Vec<Received> {
        let requests = self.state.requests.lock().unwrap();
        let mut out = Vec::new();
        for req in requests.iter() {
            for rs in &req.resource_spans {
                let resource: HashMap<String, String> = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                        _ => None,
                    })
                    .collect();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(Received {
                            span: span.clone(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits up to `secs` until at least `n` spans have arrived.
    pub async fn wait_spans(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn http_export(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let respond = |status: u16, body: Vec<u8>| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        res.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        res
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return respond(404, Vec::new());
    }
    if req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_none_or(|v| v != "application/x-protobuf")
    {
        return respond(415, Vec::new());
    }
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    st.authorizations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(authorization);
    let gzip = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v == "gzip");
    let Ok(body) = req.into_body().collect().await else {
        return respond(400, Vec::new());
    };
    let mut bytes = body.to_bytes().to_vec();
    if gzip {
        st.gzipped.fetch_add(1, Ordering::SeqCst);
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return respond(400, Vec::new());
        }
        bytes = out;
    }
    let Ok(msg) = ExportTraceServiceRequest::decode(&bytes[..]) else {
        return respond(400, Vec::new());
    };
    if st.take(msg) {
        respond(200, ExportTraceServiceResponse::default().encode_to_vec())
    } else {
        respond(503, Vec::new())
    }
}

struct Grpc(Arc<State>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|v| v == "gzip")
        {
            self.0.gzipped.fetch_add(1, Ordering::SeqCst);
        }
        if self.0.take(request.into_inner()) {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        } else {
            Err(tonic::Status::unavailable("collector is busy (test)"))
        }
    }
}
