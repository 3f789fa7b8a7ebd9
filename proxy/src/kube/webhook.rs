//! `attache webhook`: a mutating admission webhook that injects attache into pods as they are
//! created, with the very mutation `attache inject` makes (`inject::mutate`), answered as an
//! RFC 6902 JSON Patch from the pod it was sent to the pod injected.
//!
//! It serves HTTPS only (rustls; the certificate and key are read again when their files
//! change, as the inbound listener's are: a cert-manager renewal needs no restart):
//! `POST /inject` takes an `admission.k8s.io/v1` `AdmissionReview`, `GET /ready` answers once
//! it listens, `GET /metrics` counts reviews by result. A review it cannot read is allowed
//! unchanged with a warning (the pod starts without attache rather than not at all), or
//! refused with `--fail-closed`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use attache_config::{ClientCert, InboundTls};
use attache_filters::metrics::{Families, Metrics, ResultLabels};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};

use super::inject::{self, Outcome};
use crate::tls::server::ServerTls;

/// The largest review read (a pod with a large spec is a few tens of KiB).
const MAX_REVIEW_BYTES: usize = 4 << 20;

/// `attache webhook`'s settings.
pub struct Settings {
    pub listen: SocketAddr,
    pub cert_file: String,
    pub key_file: String,
    /// Refuse the pod when its review cannot be read (default: allow it uninjected).
    pub fail_closed: bool,
    pub inject: inject::Options,
}

/// Reviews by result: `injected`, `left_alone` (opted out, host network, not a pod), `malformed`.
struct WebhookFamilies {
    reviews: Family<ResultLabels, Counter>,
}

impl Families for WebhookFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            reviews: Family::default(),
        };
        registry.register(
            "webhook_reviews",
            "Admission reviews answered, by result (injected, left_alone, malformed)",
            f.reviews.clone(),
        );
        f
    }
}

pub fn command(settings: Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let families: Arc<WebhookFamilies> = metrics.family();
    let tls = ServerTls::start(
        &InboundTls {
            cert_file: settings.cert_file.clone(),
            key_file: settings.key_file.clone(),
            client_ca_file: None,
            client_cert: ClientCert::Required,
        },
        metrics.family(),
    )?;
    let listener = crate::listener::bind(settings.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    tracing::info!(listen = %settings.listen, "admission webhook ready");
    let shared = Arc::new((settings, metrics, families));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (tls, shared) = (tls.clone(), shared.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(stream));
            let Ok(Ok((stream, _))) = handshake.await else {
                tracing::debug!(%peer, "TLS handshake with a webhook client failed");
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared.0, &shared.1, &shared.2).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    settings: &Settings,
    metrics: &Metrics,
    families: &WebhookFamilies,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n".into()),
        (&Method::GET, "/metrics") => text(StatusCode::OK, metrics.encode()),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the review: {e}\n"),
                    );
                }
            };
            let (answer, result) = review(&body, settings);
            families
                .reviews
                .get_or_create(&ResultLabels { result })
                .inc();
            let mut res = text(StatusCode::OK, answer.to_string());
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            res
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

#[derive(Deserialize)]
struct Review {
    request: Option<ReviewRequest>,
}

#[derive(Deserialize)]
struct ReviewRequest {
    uid: String,
    kind: Option<Gvk>,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    kind: String,
}

/// The answer to one review body, and its result for the metric.
pub fn review(body: &[u8], settings: &Settings) -> (Value, &'static str) {
    let uid = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/request/uid")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let answer = |response: Value| json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
    let malformed = |why: String| {
        tracing::warn!(%uid, "admission review not understood: {why}");
        let message = format!("attache: {why}");
        let response = if settings.fail_closed {
            json!({"uid": uid, "allowed": false,
                   "status": {"code": 400, "message": message}})
        } else {
            json!({"uid": uid, "allowed": true, "warnings": [format!("{message}; the pod was not injected")]})
        };
        (answer(response), "malformed")
    };
    let review: Review = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return malformed(format!("not an AdmissionReview: {e}")),
    };
    let Some(request) = review.request else {
        return malformed("the AdmissionReview has no request".into());
    };
    let allowed = json!({"uid": request.uid, "allowed": true});
    if request.kind.as_ref().is_some_and(|k| k.kind != "Pod") {
        return (answer(allowed), "left_alone");
    }
    let Some(object) = request.object else {
        return malformed("the review carries no pod".into());
    };
    let pod: Pod = match serde_path_to_error::deserialize(&object) {
        Ok(p) => p,
        Err(e) => {
            return malformed(format!(
                "the pod does not read: {}: {}",
                e.path(),
                e.inner()
            ));
        }
    };
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| {
            pod.metadata
                .generate_name
                .clone()
                .map(|g| g.trim_end_matches('-').to_owned())
        })
        .unwrap_or_default();
    let mut template = PodTemplateSpec {
        metadata: Some(pod.metadata),
        spec: pod.spec,
    };
    let outcome = inject::mutate(
        &mut template,
        BTreeMap::new(),
        &BTreeMap::new(),
        &name,
        &settings.inject,
    );
    match outcome {
        Ok(Outcome::Injected) => {}
        Ok(Outcome::LeftAlone(why)) => {
            tracing::debug!(pod = %name, "left alone: {why}");
            return (answer(allowed), "left_alone");
        }
        Err(e) => return malformed(e),
    }
    let mut injected = object.clone();
    if let (Value::Object(whole), Ok(Value::Object(new))) =
        (&mut injected, serde_json::to_value(&template))
    {
        whole.extend(new);
    }
    let patch = json_patch::diff(&object, &injected);
    let patch = match serde_json::to_vec(&patch) {
        Ok(p) => p,
        Err(e) => return malformed(format!("cannot write the patch: {e}")),
    };
    let response = json!({
        "uid": request.uid,
        "allowed": true,
        "patchType": "JSONPatch",
        "patch": base64::engine::general_purpose::STANDARD.encode(patch),
    });
    (answer(response), "injected")
}
