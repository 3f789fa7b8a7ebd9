//! `attache inject`: Kubernetes manifests in, the same manifests out with attache added to
//! every pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! ReplicationController, Job, CronJob, and the items of a `List`).
//!
//! Each document is read with the order of its keys kept; the pod template is read into
//! `k8s-openapi`'s typed `PodTemplateSpec` (so a malformed one is an error naming the document
//! and the field), changed there (`sidecar.rs`), and merged back into the document, so that
//! everything else comes out as it went in (comments aside). A pod already injected gets its
//! attache replaced by the same one: injecting twice is injecting once. Pods that opt out
//! (`attache.dev/inject: disabled`) and host-network pods are left alone, with a note.

use std::collections::BTreeMap;

use attache_config::yaml::{Node, NodeKind};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use super::emit;
use super::sidecar::{self, PREFIX, Settings};

/// The command line's part.
#[derive(Debug, Default, Clone)]
pub struct Options {
    pub image: Option<String>,
    pub classic: bool,
    /// Transparent capture for every pod (`attache.dev/transparent` decides per pod).
    pub transparent: bool,
}

/// Injects every document of `text` (read from `source`, for messages): the YAML to print,
/// and the notes for stderr. An error names the source, the document and the field.
pub fn inject(
    text: &str,
    source: &str,
    options: &Options,
) -> Result<(String, Vec<String>), String> {
    let mut docs =
        attache_config::yaml::parse_stream(text).map_err(|e| format!("{source}: {e}"))?;
    let mut notes = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        let at = format!("{source}: document {}", i + 1);
        document(doc, &at, options, &BTreeMap::new(), &mut notes)?;
    }
    Ok((emit::stream(&docs), notes))
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

fn document(
    doc: &mut Node,
    at: &str,
    options: &Options,
    outer: &BTreeMap<String, String>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let value = json(doc);
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let at = format!("{at} ({kind} {name})");
    if kind == "List" {
        if let Some(NodeKind::Seq(items)) = child(doc, &["items"]).map(|n| &mut n.kind) {
            for (i, item) in items.iter_mut().enumerate() {
                document(item, &format!("{at}, items[{i}]"), options, outer, notes)?;
            }
        }
        return Ok(());
    }
    let Some(path) = template_path(kind) else {
        return Ok(());
    };
    // The workload's annotations, under the pod template's.
    let mut annotations = outer.clone();
    annotations.extend(string_map(value.pointer("/metadata/annotations")));
    let labels = string_map(value.pointer("/metadata/labels"));
    let template_node = if path.is_empty() {
        Some(&mut *doc)
    } else {
        child(doc, path)
    };
    let Some(template_node) = template_node else {
        return Err(format!("{at}: {} is missing", path.join(".")));
    };
    let template_value = match json(template_node) {
        Value::Object(mut m) if kind == "Pod" => {
            m.retain(|k, _| k == "metadata" || k == "spec");
            Value::Object(m)
        }
        other => other,
    };
    let mut template: PodTemplateSpec =
        serde_path_to_error::deserialize(&template_value).map_err(|e| {
            let field = e.path().to_string();
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{}.", path.join("."))
            };
            format!("{at}: {prefix}{field}: {}", e.inner())
        })?;
    match mutate(&mut template, annotations, &labels, &name, options)
        .map_err(|e| format!("{at}: {e}"))?
    {
        Outcome::LeftAlone(why) => {
            notes.push(format!("{at}: left alone ({why})"));
            return Ok(());
        }
        Outcome::Injected => {}
    }
    let new = serde_json::to_value(&template).map_err(|e| format!("{at}: {e}"))?;
    if kind == "Pod" {
        // The pod's other fields (apiVersion, kind, status) stay as they were.
        let mut whole = json(template_node);
        if let (Value::Object(w), Value::Object(n)) = (&mut whole, new) {
            w.extend(n);
        }
        *template_node = emit::merge(&whole, Some(template_node));
    } else {
        *template_node = emit::merge(&new, Some(template_node));
    }
    Ok(())
}

/// What [`mutate`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Why the pod was left as it was.
    LeftAlone(String),
}

/// Adds attache to one pod template: `annotations` are the workload's (the template's own
/// win over them), `labels` and `name` the workload's, for the service name. The one
/// mutation `inject` and the admission webhook share.
pub fn mutate(
    template: &mut PodTemplateSpec,
    mut annotations: BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    name: &str,
    options: &Options,
) -> Result<Outcome, String> {
    let meta = template.metadata.clone().unwrap_or_default();
    annotations.extend(meta.annotations.clone().unwrap_or_default());
    let mut labels = labels.clone();
    labels.extend(meta.labels.clone().unwrap_or_default());
    let disabled = |m: &BTreeMap<String, String>| {
        m.get(&format!("{PREFIX}inject")).map(String::as_str) == Some("disabled")
    };
    if disabled(&annotations) || disabled(&labels) {
        return Ok(Outcome::LeftAlone(format!("{PREFIX}inject: disabled")));
    }
    let Some(spec) = template.spec.as_mut() else {
        return Err("the pod template has no spec".into());
    };
    if spec.host_network == Some(true) {
        return Ok(Outcome::LeftAlone(
            "hostNetwork: attache would share the node's ports".into(),
        ));
    }
    let service = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
        .cloned()
        .or_else(|| (!name.is_empty()).then(|| name.to_owned()));
    let settings = Settings::from(
        &annotations,
        options.image.as_deref(),
        options.classic,
        options.transparent,
        service,
    )?;
    sidecar::add(spec, &settings);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            format!("{PREFIX}injected"),
            env!("CARGO_PKG_VERSION").to_owned(),
        );
    Ok(Outcome::Injected)
}

fn json(node: &Node) -> Value {
    attache_config::yaml::to_json(node, "", None, &mut Default::default())
}

/// The node at `path` (mapping keys) under `node`.
fn child<'a>(node: &'a mut Node, path: &[&str]) -> Option<&'a mut Node> {
    let mut cur = node;
    for key in path {
        let NodeKind::Map(entries) = &mut cur.kind else {
            return None;
        };
        cur = entries
            .iter_mut()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, n)| n)?;
    }
    Some(cur)
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// What `attache validate` reads of a Kubernetes manifest stream: the attache configs its
/// ConfigMaps hold (where, and the text), and the HTTP probes of its pods' containers other
/// than attache itself (where, and the path), which reach the app through attache's inbound
/// listener when traffic to the pod is captured. `None` when `text` is not a manifest stream.
pub struct Manifest {
    pub configs: Vec<(String, String)>,
    pub probes: Vec<(String, String)>,
}

pub fn manifest(text: &str) -> Option<Manifest> {
    let docs = attache_config::yaml::parse_stream(text).ok()?;
    let values: Vec<Value> = docs.iter().map(json).collect();
    let kubernetes = values.iter().any(|v| {
        v.get("kind").is_some()
            && v.get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|a| !a.starts_with("attache.dev/"))
    });
    if !kubernetes {
        return None;
    }
    let mut m = Manifest {
        configs: Vec::new(),
        probes: Vec::new(),
    };
    let mut all: Vec<Value> = Vec::new();
    for v in values {
        match v.get("items").and_then(Value::as_array) {
            Some(items) if v.get("kind").and_then(Value::as_str) == Some("List") => {
                all.extend(items.iter().cloned())
            }
            _ => all.push(v),
        }
    }
    for v in &all {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if kind == "ConfigMap" {
            for (key, text) in v
                .get("data")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(text) = text.as_str().filter(|t| t.contains("attache.dev/")) {
                    m.configs
                        .push((format!("ConfigMap {name} {key}"), text.to_owned()));
                }
            }
        }
        let Some(path) = template_path(kind) else {
            continue;
        };
        let mut template = v;
        for key in path {
            match template.get(key) {
                Some(t) => template = t,
                None => break,
            }
        }
        for list in ["containers", "initContainers"] {
            let containers = template.pointer(&format!("/spec/{list}"));
            for c in containers.and_then(Value::as_array).into_iter().flatten() {
                let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
                if cname == sidecar::NAME || cname == sidecar::INIT_NAME {
                    continue;
                }
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                    if let Some(p) = c
                        .pointer(&format!("/{probe}/httpGet/path"))
                        .and_then(Value::as_str)
                    {
                        m.probes.push((
                            format!("{kind} {name}, container {cname}, {probe}"),
                            p.to_owned(),
                        ));
                    }
                }
            }
        }
    }
    Some(m)
}
