//! The admin port: `/live`, `/ready`, `/metrics` (Prometheus text) and `/config` (the
//! effective config, secrets redacted, with the state of the last reload).
//!
//! It listens on loopback unless configured otherwise, and stays up while traffic drains so
//! probes see `/ready` fail rather than a refused connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use attache_filters::Body;
use attache_filters::errors::{Problem, problem_response};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::shared::Shared;

/// The admin port's service: each request answered from the shared state.
pub fn service(
    shared: Arc<Shared>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &req)) }
    })
}

#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("no admin endpoint at {0}; try /live, /ready, /metrics, /config or /flags")]
    NotFound(String),
    #[error("use GET")]
    Method,
}

impl Problem for AdminError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
    fn slug(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "admin-not-found",
            Self::Method => "admin-method",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "No such admin endpoint",
            Self::Method => "Method not allowed",
        }
    }
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return problem_response(&AdminError::Method);
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if shared.draining.load(std::sync::atomic::Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !shared.flags_ready() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for flag sources (see /flags)\n",
                )
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
        "/metrics" if !shared.snapshot.load().config.spec.telemetry.metrics.enabled => {
            problem_response(&AdminError::NotFound(
                "/metrics (telemetry.metrics.enabled is false)".to_owned(),
            ))
        }
        "/metrics" => {
            let mut res = Response::new(attache_filters::full(shared.lasting.metrics.encode()));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            res
        }
        "/config" => config(shared),
        "/flags" => match &shared.snapshot.load().flags {
            Some(f) => json(&f.admin()),
            None => problem_response(&AdminError::NotFound(
                "/flags (spec.flags is not configured)".to_owned(),
            )),
        },
        "/" => text(
            StatusCode::OK,
            "attache admin: /live /ready /metrics /config /flags\n",
        ),
        other => problem_response(&AdminError::NotFound(other.to_owned())),
    }
}

fn json(doc: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(attache_filters::full(
        serde_json::to_vec_pretty(doc).unwrap_or_default(),
    ));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn config(shared: &Shared) -> Response<Body> {
    let snap = shared.snapshot.load();
    let status = shared.reload.lock().map(|s| s.clone()).unwrap_or_default();
    let ts = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let doc = serde_json::json!({
        "source": shared.source.as_ref().map(|p| p.display().to_string()),
        "config": snap.config.redacted(),
        "effective": {
            "trace_sampling": snap.config.spec.trace.sampling.effective(&|k| std::env::var(k).ok()),
            "telemetry": snap.config.spec.telemetry.effective(&snap.config.metadata.name, &|k| std::env::var(k).ok()).redacted(),
            "idempotency": snap.config.spec.idempotency.as_ref().map(|i| i.policies()),
        },
        "reload": {
            "last_attempt_unix": ts(status.last_attempt),
            "last_success_unix": ts(status.last_success),
            "last_error": status.last_error,
        },
    });
    let mut res = Response::new(attache_filters::full(
        serde_json::to_vec_pretty(&doc).unwrap_or_default(),
    ));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(attache_filters::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
