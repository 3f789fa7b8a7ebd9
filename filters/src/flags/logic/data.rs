//! What a rule reads: the data (a JSON document or a flat context), where a rule's `var` paths
//! land in a flat context, and the scope with flagd's built-ins.

use std::borrow::Cow;

use serde_json::Value;

use super::values::{descend, var_str};
use super::{FractionalVersion, Rule};
use crate::flags::semver::number_text;

/// The data a rule reads with `var` and `missing`.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// A JSON document: what OFREP callers send, and the items of `map` and friends.
    Json(&'a Value),
    /// A flat context: values at whole dotted paths, e.g. `targetingKey`, `user.plan`,
    /// `request.method`. A path reads the field it names or a path inside one; no field is
    /// inside another. The proxy builds this for a request when no rule of the snapshot reads
    /// a parent of a field or the whole data (`Needs`, in `context.rs`, checks), so that every
    /// read answers as it would against the same context as a JSON document.
    Fields(Flat<'a>),
}

/// A flat context, and where the `var` paths of the rule being evaluated land in it.
#[derive(Debug, Clone, Copy)]
pub struct Flat<'a> {
    pub fields: &'a [Field<'a>],
    /// Worked out once per plan ([`Slot::of_rule`]); a path not listed here is found by
    /// comparing it with the fields' paths.
    pub slots: &'a [Slot],
}

/// One value of a flat context.
#[derive(Debug, Clone)]
pub struct Field<'a> {
    pub path: &'a str,
    /// `None` when the request has no value for it.
    pub value: Option<Cow<'a, Value>>,
}

/// Where a path lands among the fields of a flat context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The field at this index.
    Field(usize),
    /// Inside the field at this index; the rest of the path starts at this byte.
    Inside(usize, usize),
    /// In no field.
    Nowhere,
}

impl Place {
    /// Where `path` lands among fields at `paths` (no one inside another, so at most one
    /// matches).
    pub fn of<'p>(paths: impl Iterator<Item = &'p str>, path: &str) -> Place {
        for (i, f) in paths.enumerate() {
            if let Some(rest) = path.strip_prefix(f) {
                if rest.is_empty() {
                    return Place::Field(i);
                }
                if rest.starts_with('.') {
                    return Place::Inside(i, f.len() + 1);
                }
            }
        }
        Place::Nowhere
    }
}

/// One constant `var` path of a compiled rule, and where it lands in a flat layout. The path
/// is known by the address and length of its text inside the rule, which the plan that holds
/// the slots keeps alive (and unchanged): equal addresses are the same text, so a read finds
/// its field without comparing strings, and any other text is compared as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    text: (usize, usize),
    pub place: Place,
}

impl Slot {
    /// The slots of every constant `var` path in `rule`, against fields at `paths`.
    pub fn of_rule(rule: &Rule, paths: &[String]) -> Vec<Slot> {
        let mut slots: Vec<Slot> = Vec::new();
        rule.var_texts(&mut |text| {
            let key = (text.as_ptr() as usize, text.len());
            if !slots.iter().any(|s| s.text == key) {
                slots.push(Slot {
                    text: key,
                    place: Place::of(paths.iter().map(String::as_str), text),
                });
            }
        });
        slots
    }
}

impl<'a> Flat<'a> {
    pub(super) fn get(self, path: &str) -> Option<&'a Value> {
        let key = (path.as_ptr() as usize, path.len());
        let place = match self.slots.iter().find(|s| s.text == key) {
            Some(s) => s.place,
            None => Place::of(self.fields.iter().map(|f| f.path), path),
        };
        match place {
            Place::Field(i) => self.fields.get(i)?.value.as_deref(),
            Place::Inside(i, at) => descend(self.fields.get(i)?.value.as_deref()?, path.get(at..)?),
            Place::Nowhere => None,
        }
    }
}

impl<'a> Data<'a> {
    /// The value at a dotted path; the empty path is the whole data.
    pub fn get(self, path: &str) -> Option<&'a Value> {
        match self {
            Data::Json(v) => var_str(v, path),
            Data::Fields(flat) => flat.get(path),
        }
    }
}

/// What a rule runs against.
pub struct Scope<'a> {
    pub data: Data<'a>,
    /// flagd's built-ins, `$flagd.flagKey` and `$flagd.timestamp`, which shadow any caller
    /// value at `$flagd` (top level only: inside `map` and friends the data is the item).
    pub flagd: Option<Flagd<'a>>,
    pub fractional: FractionalVersion,
}

#[derive(Debug, Clone, Copy)]
pub struct Flagd<'a> {
    pub flag_key: &'a str,
    pub timestamp: u64,
}

impl<'a> Scope<'a> {
    /// `var` with the built-ins overlaid.
    pub(super) fn lookup(&self, path: &Value) -> Option<Cow<'a, Value>> {
        if let (Some(f), Value::String(p)) = (self.flagd, path)
            && let Some(rest) = p.strip_prefix("$flagd")
        {
            match rest {
                "" => {
                    return Some(Cow::Owned(
                        serde_json::json!({"flagKey": f.flag_key, "timestamp": f.timestamp}),
                    ));
                }
                ".flagKey" => return Some(Cow::Owned(Value::String(f.flag_key.to_owned()))),
                ".timestamp" => return Some(Cow::Owned(Value::from(f.timestamp))),
                r if r.starts_with('.') => return None,
                _ => {}
            }
        }
        match path {
            Value::Null => match self.data {
                Data::Json(v) => Some(Cow::Borrowed(v)),
                // Never built for rules that read the whole data.
                Data::Fields(_) => None,
            },
            Value::String(p) => self.data.get(p).map(Cow::Borrowed),
            Value::Number(n) => self.data.get(&number_text(n)).map(Cow::Borrowed),
            _ => None,
        }
    }

    /// `$flagd.flagKey` as `fractional` reads it, without building a path.
    pub(super) fn flag_key(&self) -> Option<Cow<'a, str>> {
        match self.flagd {
            Some(f) => Some(Cow::Borrowed(f.flag_key)),
            None => match self.data.get("$flagd.flagKey")? {
                Value::String(k) => Some(Cow::Borrowed(k)),
                _ => None,
            },
        }
    }
}
