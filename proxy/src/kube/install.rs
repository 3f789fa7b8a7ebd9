//! `attache install`: the cluster side of automatic injection, printed as YAML for
//! `kubectl apply -f -` (as `linkerd install` does): the namespace, the webhook's
//! ServiceAccount, its serving certificate (a Secret made here, or a cert-manager
//! Certificate), its Deployment and Service, the `MutatingWebhookConfiguration` that sends
//! pod creations in labelled namespaces to it, and the default sidecar config for each
//! namespace named.
//!
//! Given the same inputs the output is the same: with `--ca-file`, `--cert-file` and
//! `--key-file` (an existing certificate, e.g. read back from the Secret of an earlier
//! install), nothing is generated; without them a new CA and serving certificate are made
//! (rcgen, ECDSA P-256), which a rerun replaces.
//!
//! The webhook reads no API object, so its ServiceAccount is granted nothing and mounts no
//! token: least privilege.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, HTTPGetAction, Namespace, PodSpec, PodTemplateSpec, Probe,
    Secret, SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::sidecar::{self, PREFIX};

pub const WEBHOOK: &str = "attache-webhook";
const WEBHOOK_PORT: i32 = 8443;

/// `attache install`'s settings.
pub struct Settings {
    pub namespace: String,
    /// The attache image, for the webhook and the sidecars it injects.
    pub image: String,
    /// Namespaces that get the default sidecar config (`ConfigMap attache`).
    pub inject_namespaces: Vec<String>,
    /// Request the serving certificate from cert-manager.
    pub cert_manager: bool,
    /// An existing CA and serving certificate (PEM text), for a stable rerun.
    pub existing: Option<Existing>,
    pub fail_closed: bool,
}

pub struct Existing {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// The manifests, in the order they apply.
pub fn manifests(s: &Settings) -> Result<Vec<Value>, String> {
    let ns = s.namespace.as_str();
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(labels()),
        ..Default::default()
    };
    let to = |v: Result<Value, serde_json::Error>| v.map_err(|e| e.to_string());
    let mut out = vec![to(serde_json::to_value(Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            labels: Some(labels()),
            ..Default::default()
        },
        ..Default::default()
    }))?];
    out.push(to(serde_json::to_value(ServiceAccount {
        metadata: meta(WEBHOOK),
        automount_service_account_token: Some(false),
        ..Default::default()
    }))?);
    let dns = [
        format!("{WEBHOOK}.{ns}.svc"),
        format!("{WEBHOOK}.{ns}.svc.cluster.local"),
    ];
    let ca_bundle = if s.cert_manager {
        out.extend(cert_manager(ns, &dns));
        None
    } else {
        let pki = match &s.existing {
            Some(e) => Existing {
                ca: e.ca.clone(),
                cert: e.cert.clone(),
                key: e.key.clone(),
            },
            None => generate(&dns)?,
        };
        out.push(to(serde_json::to_value(Secret {
            metadata: meta(&format!("{WEBHOOK}-tls")),
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("ca.crt".to_owned(), ByteString(pki.ca.clone().into_bytes())),
                ("tls.crt".to_owned(), ByteString(pki.cert.into_bytes())),
                ("tls.key".to_owned(), ByteString(pki.key.into_bytes())),
            ])),
            ..Default::default()
        }))?);
        Some(pki.ca)
    };
    out.push(to(serde_json::to_value(deployment(s, meta(WEBHOOK))))?);
    out.push(to(serde_json::to_value(Service {
        metadata: meta(WEBHOOK),
        spec: Some(ServiceSpec {
            selector: Some(selector()),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                target_port: Some(IntOrString::String("https".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }))?);
    out.push(to(serde_json::to_value(webhook_configuration(
        s, ca_bundle,
    )))?);
    for target in &s.inject_namespaces {
        out.push(to(serde_json::to_value(default_config(target)))?);
    }
    Ok(out)
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/part-of".to_owned(), "attache".to_owned())])
}

fn selector() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), WEBHOOK.to_owned())])
}

/// A CA (valid ten years) and a serving certificate for the webhook's Service names (two
/// years), made here.
fn generate(dns: &[String]) -> Result<Existing, String> {
    let e = |e: rcgen::Error| e.to_string();
    let year = 1970
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 31_556_952) as i32;
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "attache webhook CA");
    ca.not_before = rcgen::date_time_ymd(year, 1, 1);
    ca.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let ca = ca.self_signed(&ca_key).map_err(e)?;
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut leaf = rcgen::CertificateParams::new(dns.to_vec()).map_err(e)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, dns[0].as_str());
    leaf.not_before = rcgen::date_time_ymd(year, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let leaf = leaf.signed_by(&key, &ca, &ca_key).map_err(e)?;
    Ok(Existing {
        ca: ca.pem(),
        cert: leaf.pem(),
        key: key.serialize_pem(),
    })
}

/// A self-signed Issuer and the Certificate cert-manager keeps in the webhook's Secret.
fn cert_manager(ns: &str, dns: &[String]) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": WEBHOOK, "namespace": ns, "labels": labels()},
            "spec": {"selfSigned": {}}
        }),
        json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": WEBHOOK, "namespace": ns, "labels": labels()},
            "spec": {
                "secretName": format!("{WEBHOOK}-tls"),
                "dnsNames": dns,
                "issuerRef": {"name": WEBHOOK, "kind": "Issuer"},
                "privateKey": {"algorithm": "ECDSA", "size": 256}
            }
        }),
    ]
}

fn deployment(s: &Settings, meta: ObjectMeta) -> Deployment {
    let mut args: Vec<String> = [
        "webhook",
        "--listen",
        "0.0.0.0:8443",
        "--cert-file",
        "/etc/attache-webhook/tls.crt",
        "--key-file",
        "/etc/attache-webhook/tls.key",
        "--log-format",
        "json",
        "--image",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(s.image.clone());
    if s.fail_closed {
        args.push("--fail-closed".into());
    }
    let probe = |period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".into()),
            port: IntOrString::String("https".into()),
            scheme: Some("HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };
    let mut pod_labels = selector();
    pod_labels.extend(labels());
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    // Its own pods are never sent to it.
                    annotations: Some(BTreeMap::from([(
                        format!("{PREFIX}inject"),
                        "disabled".to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(WEBHOOK.into()),
                    automount_service_account_token: Some(false),
                    containers: vec![Container {
                        name: "webhook".into(),
                        image: Some(s.image.clone()),
                        args: Some(args),
                        ports: Some(vec![ContainerPort {
                            name: Some("https".into()),
                            container_port: WEBHOOK_PORT,
                            ..Default::default()
                        }]),
                        readiness_probe: Some(probe(2)),
                        liveness_probe: Some(probe(10)),
                        resources: Some(sidecar::resources(("50m", "16Mi"), ("500m", "64Mi"))),
                        security_context: Some(sidecar::hardened()),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "tls".into(),
                            mount_path: "/etc/attache-webhook".into(),
                            read_only: Some(true),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "tls".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(format!("{WEBHOOK}-tls")),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pod creations in namespaces labelled `attache.dev/inject: enabled`, except pods that opt
/// out by label, go to the webhook. A webhook that cannot be reached lets the pod through
/// uninjected (`Ignore`), or, with `--fail-closed`, stops it (`Fail`).
fn webhook_configuration(s: &Settings, ca_bundle: Option<String>) -> MutatingWebhookConfiguration {
    let mut metadata = ObjectMeta {
        name: Some("attache".into()),
        labels: Some(labels()),
        ..Default::default()
    };
    if s.cert_manager {
        metadata.annotations = Some(BTreeMap::from([(
            "cert-manager.io/inject-ca-from".to_owned(),
            format!("{}/{WEBHOOK}", s.namespace),
        )]));
    }
    MutatingWebhookConfiguration {
        metadata,
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.attache.dev".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                ca_bundle: ca_bundle.map(|pem| ByteString(pem.into_bytes())),
                service: Some(ServiceReference {
                    name: WEBHOOK.into(),
                    namespace: s.namespace.clone(),
                    path: Some("/inject".into()),
                    port: Some(443),
                }),
                ..Default::default()
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    format!("{PREFIX}inject"),
                    "enabled".to_owned(),
                )])),
                ..Default::default()
            }),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: format!("{PREFIX}inject"),
                    operator: "NotIn".into(),
                    values: Some(vec!["disabled".into()]),
                }]),
                ..Default::default()
            }),
            failure_policy: Some(if s.fail_closed { "Fail" } else { "Ignore" }.into()),
            side_effects: "None".into(),
            reinvocation_policy: Some("Never".into()),
            timeout_seconds: Some(5),
            ..Default::default()
        }]),
    }
}

/// The default sidecar config (`deploy/kubernetes/attache-config.yaml`) in `namespace`.
fn default_config(namespace: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(sidecar::NAME.into()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "config.yaml".to_owned(),
            DEFAULT_CONFIG.to_owned(),
        )])),
        ..Default::default()
    }
}

/// The sidecar config every injected pod mounts unless `attache.dev/config` names another.
pub const DEFAULT_CONFIG: &str = r#"apiVersion: attache.dev/v1
kind: Sidecar
metadata: { name: "${OTEL_SERVICE_NAME:-app}" }
spec:
  inbound: { listen: "0.0.0.0:15006", app: "http://127.0.0.1:${APP_PORT:-8080}" }
  # Where the pod's outbound TCP arrives under transparent capture (attache.dev/transparent).
  capture: { listen: "127.0.0.1:15003" }
  admin: { listen: "0.0.0.0:15000" }
  # As a native sidecar attache is stopped after the app: it drains at once.
  drain: { delay: 0s, grace_period: 20s }
"#;
