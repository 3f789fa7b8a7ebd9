//! Reading a flagd document (specs/feature-flags.md §2): its flags in object or array form,
//! `$evaluators` references expanded, targeting compiled once, metadata merged (set, then
//! flag). A flag whose targeting does not compile loads with a warning; a malformed document
//! is refused whole, naming the path at fault.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::eval::{Flag, FlagSet, Variants};
use super::logic;

/// Why a document was refused as a whole; the last good one stays.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    /// JSON path of the fault, e.g. `flags.new-checkout.defaultVariant`.
    pub path: String,
    pub message: String,
}

fn load_error(path: impl Into<String>, message: impl Into<String>) -> LoadError {
    LoadError {
        path: path.into(),
        message: message.into(),
    }
}

impl FlagSet {
    /// Parses and compiles a flagd document.
    pub fn parse(doc: &Value) -> Result<FlagSet, LoadError> {
        Self::parse_source(doc, 0)
    }

    /// [`FlagSet::parse`] for source number `source` of a merged store.
    pub fn parse_source(doc: &Value, source: usize) -> Result<FlagSet, LoadError> {
        let Value::Object(top) = doc else {
            return Err(load_error("$", "a flag document is a JSON object"));
        };
        let evaluators = top
            .get("$evaluators")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut set_metadata = top
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut set = FlagSet::default();
        for (key, f) in entries(top)? {
            let doc = FlagDoc {
                key: &key,
                source,
                evaluators: &evaluators,
                set_metadata: &set_metadata,
            };
            let flag = doc.parse(f, &mut set.warnings)?;
            set.flags.insert(key, Arc::new(flag));
        }
        set_metadata.retain(|_, v| !v.is_null());
        set.metadata = set_metadata;
        Ok(set)
    }
}

/// The document's flags with their keys: `flags` as an object, or an array of flags that
/// each carry a `key`.
fn entries(top: &Map<String, Value>) -> Result<Vec<(String, &Value)>, LoadError> {
    match top.get("flags") {
        Some(Value::Object(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v)).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let key = f.get("key").and_then(Value::as_str).ok_or_else(|| {
                    load_error(format!("flags[{i}].key"), "a flag in an array needs a key")
                })?;
                Ok((key.to_owned(), f))
            })
            .collect(),
        _ => Err(load_error("flags", "missing, or not an object or array")),
    }
}

/// What one flag of a document is read with.
struct FlagDoc<'a> {
    key: &'a str,
    source: usize,
    evaluators: &'a Map<String, Value>,
    set_metadata: &'a Map<String, Value>,
}

impl FlagDoc<'_> {
    fn at(&self, field: &str) -> String {
        format!("flags.{}.{field}", self.key)
    }

    /// One flag: its state, variants, default and targeting checked and compiled; a rule that
    /// does not compile is a warning (the flag then evaluates with an error).
    fn parse(&self, f: &Value, warnings: &mut Vec<String>) -> Result<Flag, LoadError> {
        let enabled = match f.get("state").and_then(Value::as_str) {
            Some("ENABLED") => true,
            Some("DISABLED") => false,
            _ => return Err(load_error(self.at("state"), "must be ENABLED or DISABLED")),
        };
        let variants = match f.get("variants") {
            Some(Value::Object(v)) if !v.is_empty() => Variants::from(v),
            _ => {
                return Err(load_error(
                    self.at("variants"),
                    "must be a non-empty object",
                ));
            }
        };
        if let Some((name, _)) = variants.iter().find(|(_, v)| v.is_null() || v.is_array()) {
            return Err(load_error(
                self.at(&format!("variants.{name}")),
                "a variant is a boolean, string, number or object",
            ));
        }
        let default_variant = match f.get("defaultVariant") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) if variants.contains_key(d) => Some(d.clone()),
            Some(Value::String(d)) => {
                return Err(load_error(
                    self.at("defaultVariant"),
                    format!("names no variant: {d:?}"),
                ));
            }
            Some(_) => {
                return Err(load_error(
                    self.at("defaultVariant"),
                    "must be a string or null",
                ));
            }
        };
        let targeting = match f.get("targeting") {
            None => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(t) => {
                let compiled = expand_refs(t, self.evaluators)
                    .map_err(|e| e.to_string())
                    .and_then(|t| logic::compile(&t).map_err(|e| e.to_string()));
                if let Err(e) = &compiled {
                    warnings.push(format!("{}: {e}", self.at("targeting")));
                }
                Some(compiled)
            }
        };
        let mut metadata = self.set_metadata.clone();
        if let Some(Value::Object(m)) = f.get("metadata") {
            for (k, v) in m {
                metadata.insert(k.clone(), v.clone());
            }
        }
        metadata.retain(|_, v| !v.is_null());
        Ok(Flag {
            source: self.source,
            enabled,
            variants,
            default_variant,
            targeting,
            metadata,
            counters: Default::default(),
        })
    }
}

/// Replaces each object that is exactly `{"$ref": name}` with `$evaluators.name`.
fn expand_refs(v: &Value, evaluators: &Map<String, Value>) -> Result<Value, String> {
    Ok(match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("$ref") => {
            let name = m.get("$ref").and_then(Value::as_str).unwrap_or_default();
            evaluators
                .get(name)
                .cloned()
                .ok_or_else(|| format!("$ref to an unknown evaluator {name:?}"))?
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), expand_refs(v, evaluators)?)))
                .collect::<Result<_, String>>()?,
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| expand_refs(v, evaluators))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}
