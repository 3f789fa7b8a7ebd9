//! Flag sets and their evaluation (specs/feature-flags.md §2–§3): a flagd document parsed and
//! compiled once, then evaluated per request with flagd's reasons and error codes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

use super::logic::{self, Data, FractionalVersion, Rule, Scope};

#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    /// Index of the source the flag came from, in the merged snapshot.
    pub source: usize,
    pub enabled: bool,
    pub variants: Variants,
    pub default_variant: Option<String>,
    /// `None`: no targeting (or `{}`); `Err`: it did not compile (`PARSE_ERROR`).
    pub targeting: Option<Result<Rule, String>>,
    /// The flag set's metadata overridden by the flag's, nulls dropped.
    pub metadata: Map<String, Value>,
    /// Metric handles, made on first use (see `cache::Counters`).
    pub counters: super::cache::Counters,
}

/// A flag's variants, in name order (the order of flagd's JSON object as read, and of
/// everything rendered once per variant). There are a few per flag: a vector scanned in order
/// finds a name faster than a map, and its position directly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Variants(Vec<(String, Value)>);

impl Variants {
    /// The variant named `name`: its position, its name as held here, and its value.
    pub fn find(&self, name: &str) -> Option<(usize, &str, &Value)> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, (k, _))| k == name)
            .map(|(i, (k, v))| (i, k.as_str(), v))
    }

    /// The variant at position `i`: its name and value.
    pub fn at(&self, i: usize) -> Option<(&str, &Value)> {
        self.0.get(i).map(|(k, v)| (k.as_str(), v))
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }
}

impl From<&Map<String, Value>> for Variants {
    fn from(m: &Map<String, Value>) -> Self {
        let mut v: Vec<(String, Value)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // A `Map` iterates in key order already (unless serde_json keeps insertion order).
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Variants(v)
    }
}

impl serde::Serialize for Variants {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// One compiled flag document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagSet {
    pub flags: HashMap<String, Arc<Flag>>,
    /// The flag-set metadata (merged key by key across sources), for OFREP bulk answers.
    pub metadata: Map<String, Value>,
    /// Flags that loaded with a problem (did not compile), for the admin port.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Static,
    Default,
    TargetingMatch,
    Disabled,
    Cached,
    Error,
}

impl Reason {
    /// The reason in lower case, as OpenTelemetry's `feature_flag.result.reason` and OFREP's
    /// events spell it.
    pub fn as_lower(self) -> &'static str {
        match self {
            Reason::Static => "static",
            Reason::Default => "default",
            Reason::TargetingMatch => "targeting_match",
            Reason::Disabled => "disabled",
            Reason::Cached => "cached",
            Reason::Error => "error",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Disabled => "DISABLED",
            Reason::Cached => "CACHED",
            Reason::Error => "ERROR",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    FlagNotFound,
    ParseError,
    TypeMismatch,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::General => "GENERAL",
        }
    }
}

/// The type a caller asked for; `Any` (OFREP, delivery) never mismatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Any,
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

/// One evaluation. `value: None` means "use the caller's code default".
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub value: Option<Value>,
    pub variant: Option<String>,
    pub reason: Reason,
    pub error: Option<(ErrorCode, String)>,
    pub metadata: Map<String, Value>,
}

/// A targeting result as a variant name: strings as they are, booleans as `true`/`false`,
/// numbers as their shortest decimal.
pub(super) fn variant_name(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(super::semver::number_text(n))),
        _ => None,
    }
}

/// One evaluation, borrowed from the snapshot: a static flag allocates nothing (§13).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<'a> {
    pub value: Option<Cow<'a, Value>>,
    pub variant: Option<&'a str>,
    pub reason: Reason,
    pub error: Option<(ErrorCode, String)>,
    pub metadata: &'a Map<String, Value>,
    /// The flag, when the snapshot has it.
    pub flag: Option<&'a Flag>,
    /// The variant's position among the flag's variants (in their sorted order), which
    /// indexes what is rendered once per variant.
    pub index: Option<usize>,
}

static NO_METADATA: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

impl<'a> Decision<'a> {
    fn error(flag: Option<&'a Flag>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some((code, message.into())),
            metadata: flag.map_or(&NO_METADATA, |f| &f.metadata),
            flag,
            index: None,
        }
    }

    /// `FLAG_NOT_FOUND` for `key`.
    pub fn not_found(key: &str) -> Self {
        Self::error(
            None,
            ErrorCode::FlagNotFound,
            format!("flag {key:?} not found"),
        )
    }

    pub(super) fn no_value(flag: &'a Flag, reason: Reason) -> Self {
        Self {
            value: None,
            variant: None,
            reason,
            error: None,
            metadata: &flag.metadata,
            flag: Some(flag),
            index: None,
        }
    }

    /// The variant at `index` of `flag`'s variants, as [`Flag::decide_in`] decides it
    /// untyped; `None` when there is no such variant.
    pub(super) fn by_index(flag: &'a Flag, index: usize, reason: Reason) -> Option<Self> {
        let (name, value) = flag.variants.at(index)?;
        Some(Self {
            value: Some(Cow::Borrowed(value)),
            variant: Some(name),
            reason,
            error: None,
            metadata: &flag.metadata,
            flag: Some(flag),
            index: Some(index),
        })
    }

    /// A decision another sidecar made (§8): `variant`'s value, with reason `CACHED`; `None`
    /// when the flag or the variant is unknown here (skew).
    pub fn cached(flag: &'a Flag, variant: &str) -> Option<Self> {
        let (index, _, _) = flag.variant(variant)?;
        Self::by_index(flag, index, Reason::Cached)
    }

    pub fn to_resolution(&self) -> Resolution {
        Resolution {
            value: self.value.as_ref().map(|v| v.clone().into_owned()),
            variant: self.variant.map(str::to_owned),
            reason: self.reason,
            error: self.error.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

impl FlagSet {
    /// Evaluates `key` for `context` (a JSON object) at `now` (Unix seconds).
    pub fn evaluate(
        &self,
        key: &str,
        context: &Value,
        now: u64,
        kind: Kind,
        fractional: FractionalVersion,
    ) -> Resolution {
        self.decide(key, context, now, kind, fractional)
            .to_resolution()
    }

    /// [`FlagSet::evaluate`], borrowing from the snapshot. `context` is only read when the
    /// flag has targeting, so a caller may pass `Value::Null` for flags without it.
    pub fn decide<'a>(
        &'a self,
        key: &str,
        context: &Value,
        now: u64,
        kind: Kind,
        fractional: FractionalVersion,
    ) -> Decision<'a> {
        let Some(flag) = self.flags.get(key) else {
            return Decision::not_found(key);
        };
        flag.decide(key, context, now, kind, fractional)
    }
}

impl Flag {
    /// The variant named `name`: its position, its name as the flag holds it, its value.
    /// One scan of the (few, sorted) variants finds all three.
    pub fn variant(&self, name: &str) -> Option<(usize, &str, &Value)> {
        self.variants.find(name)
    }

    /// Whether evaluating the flag reads the context.
    pub fn needs_context(&self) -> bool {
        self.enabled && matches!(self.targeting, Some(Ok(_)))
    }

    pub fn decide<'a>(
        &'a self,
        key: &str,
        context: &Value,
        now: u64,
        kind: Kind,
        fractional: FractionalVersion,
    ) -> Decision<'a> {
        self.decide_in(key, Data::Json(context), now, kind, fractional)
    }

    /// [`Flag::decide`] against any form of context.
    pub fn decide_in<'a>(
        &'a self,
        key: &str,
        context: Data<'_>,
        now: u64,
        kind: Kind,
        fractional: FractionalVersion,
    ) -> Decision<'a> {
        let flag = self;
        if !flag.enabled {
            return Decision::no_value(flag, Reason::Disabled);
        }
        // What targeting matched, found once.
        let mut matched = None;
        let (variant, reason): (Option<&'a str>, Reason) = match &flag.targeting {
            None => match &flag.default_variant {
                Some(d) => (Some(d), Reason::Static),
                None => (None, Reason::Default),
            },
            Some(Err(e)) => return Decision::error(Some(flag), ErrorCode::ParseError, e.clone()),
            Some(Ok(rule)) => {
                let out = rule.eval_ref(&Scope {
                    data: context,
                    flagd: Some(logic::Flagd {
                        flag_key: key,
                        timestamp: now,
                    }),
                    fractional,
                });
                match &*out {
                    Value::Null => (flag.default_variant.as_deref(), Reason::Default),
                    other => match variant_name(other).and_then(|n| flag.variant(n.as_ref())) {
                        Some(found) => {
                            matched = Some(found);
                            (Some(found.1), Reason::TargetingMatch)
                        }
                        None => {
                            return Decision::error(
                                Some(flag),
                                ErrorCode::General,
                                format!("targeting returned {other}, which names no variant"),
                            );
                        }
                    },
                }
            }
        };
        let Some(name) = variant else {
            return Decision::no_value(flag, reason);
        };
        let Some((index, name, value)) = matched.or_else(|| flag.variant(name)) else {
            return Decision::error(Some(flag), ErrorCode::General, "no such variant");
        };
        let value = match (kind, value) {
            (Kind::Any, _)
            | (Kind::Boolean, Value::Bool(_))
            | (Kind::String, Value::String(_))
            | (Kind::Float, Value::Number(_))
            | (Kind::Object, Value::Object(_)) => Cow::Borrowed(value),
            (Kind::Integer, Value::Number(n)) => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match n.as_i64() {
                    Some(_) => Cow::Borrowed(value),
                    None if f.is_finite()
                        && f.trunc() >= i64::MIN as f64
                        && f.trunc() <= i64::MAX as f64 =>
                    {
                        Cow::Owned(Value::from(f.trunc() as i64))
                    }
                    None => {
                        return Decision::error(
                            Some(flag),
                            ErrorCode::TypeMismatch,
                            "not an integer",
                        );
                    }
                }
            }
            _ => {
                return Decision::error(
                    Some(flag),
                    ErrorCode::TypeMismatch,
                    format!("variant {name:?} is not of the requested type"),
                );
            }
        };
        Decision {
            value: Some(value),
            variant: Some(name),
            reason,
            error: None,
            metadata: &flag.metadata,
            flag: Some(flag),
            index: Some(index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> FlagSet {
        FlagSet::parse(&json!({
            "$evaluators": {"is_acme": {"ends_with": [{"var": "email"}, "@acme.com"]}},
            "metadata": {"team": "checkout", "version": 3},
            "flags": {
                "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
                "no-default": {"state": "ENABLED", "variants": {"a": "A"}},
                "off": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
                "targeted": {
                    "state": "ENABLED",
                    "variants": {"red": "#f00", "blue": "#00f", "1": "one", "true": "yes"},
                    "defaultVariant": "blue",
                    "metadata": {"version": null, "owner": "ux"},
                    "targeting": {"if": [{"$ref": "is_acme"}, "red",
                                  {"==": [{"var": "n"}, 1]}, 1,
                                  {"==": [{"var": "n"}, 2]}, true,
                                  {"==": [{"var": "n"}, 3]}, "purple",
                                  null]}
                },
                "broken": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"nope": []}},
                "numbers": {"state": "ENABLED", "variants": {"int": 10, "float": 10.5}, "defaultVariant": "float"}
            }
        }))
        .unwrap()
    }

    fn eval(key: &str, ctx: Value, kind: Kind) -> Resolution {
        set().evaluate(key, &ctx, 1_700_000_000, kind, FractionalVersion::V2)
    }

    #[test]
    fn reasons_and_error_codes_are_flagds() {
        let r = eval("static", json!({}), Kind::Boolean);
        assert_eq!((r.value, r.reason), (Some(json!(true)), Reason::Static));
        let r = eval("no-default", json!({}), Kind::Any);
        assert_eq!((r.value, r.reason), (None, Reason::Default));
        let r = eval("off", json!({}), Kind::Any);
        assert_eq!((r.value, r.reason), (None, Reason::Disabled));
        let r = eval("missing", json!({}), Kind::Any);
        assert_eq!(r.error.map(|e| e.0), Some(ErrorCode::FlagNotFound));
        let r = eval("targeted", json!({"email": "x@acme.com"}), Kind::String);
        assert_eq!(
            (r.value, r.reason),
            (Some(json!("#f00")), Reason::TargetingMatch)
        );
        let r = eval("targeted", json!({"n": 1}), Kind::String);
        assert_eq!(
            r.variant.as_deref(),
            Some("1"),
            "a number names variant \"1\""
        );
        let r = eval("targeted", json!({"n": 2}), Kind::String);
        assert_eq!(r.variant.as_deref(), Some("true"));
        let r = eval("targeted", json!({"n": 3}), Kind::String);
        assert_eq!(r.error.map(|e| e.0), Some(ErrorCode::General));
        let r = eval("targeted", json!({}), Kind::String);
        assert_eq!(
            (r.variant.as_deref(), r.reason),
            (Some("blue"), Reason::Default)
        );
        assert_eq!(r.metadata["team"], "checkout");
        assert_eq!(r.metadata["owner"], "ux");
        assert!(
            !r.metadata.contains_key("version"),
            "a null drops the set's value"
        );
        let r = eval("broken", json!({}), Kind::Any);
        assert_eq!(r.error.map(|e| e.0), Some(ErrorCode::ParseError));
        assert_eq!(set().warnings.len(), 1);
        let r = eval("static", json!({}), Kind::String);
        assert_eq!(r.error.map(|e| e.0), Some(ErrorCode::TypeMismatch));
        let r = eval("numbers", json!({}), Kind::Integer);
        assert_eq!(r.value, Some(json!(10)), "integers truncate toward zero");
        let r = eval("numbers", json!({}), Kind::Float);
        assert_eq!(r.value, Some(json!(10.5)));
    }

    #[test]
    fn reason_and_error_code_names_are_flagds() {
        let reasons = [
            (Reason::Static, "STATIC"),
            (Reason::Default, "DEFAULT"),
            (Reason::TargetingMatch, "TARGETING_MATCH"),
            (Reason::Disabled, "DISABLED"),
            (Reason::Cached, "CACHED"),
            (Reason::Error, "ERROR"),
        ];
        for (r, name) in reasons {
            assert_eq!(r.as_str(), name);
        }
        let codes = [
            (ErrorCode::FlagNotFound, "FLAG_NOT_FOUND"),
            (ErrorCode::ParseError, "PARSE_ERROR"),
            (ErrorCode::TypeMismatch, "TYPE_MISMATCH"),
            (ErrorCode::General, "GENERAL"),
        ];
        for (c, name) in codes {
            assert_eq!(c.as_str(), name);
        }
    }

    #[test]
    fn documents_in_array_form_empty_targeting_and_set_metadata() {
        let s = FlagSet::parse(&json!({
            "metadata": {"team": "a", "gone": null},
            "flags": [
                {"key": "f", "state": "ENABLED", "variants": {"on": true, "off": false},
                 "defaultVariant": "on", "targeting": {}},
                {"key": "huge", "state": "ENABLED", "variants": {"n": 1e20}, "defaultVariant": "n"}
            ]
        }))
        .unwrap();
        let d = s.decide("f", &json!({}), 0, Kind::Boolean, FractionalVersion::V2);
        assert_eq!((d.variant, d.reason), (Some("on"), Reason::Static));
        assert!(!s.flags["f"].needs_context());
        assert_eq!(s.metadata.get("team"), Some(&json!("a")));
        assert!(!s.metadata.contains_key("gone"), "{:?}", s.metadata);
        // An integer asked of a number past i64: a type mismatch, not a clamped value.
        let d = s.decide("huge", &json!({}), 0, Kind::Integer, FractionalVersion::V2);
        assert_eq!(d.error.map(|e| e.0), Some(ErrorCode::TypeMismatch));
        // A decision another sidecar made, for a variant this snapshot has.
        let cached = Decision::cached(&s.flags["f"], "off").expect("a known variant");
        assert_eq!(cached.reason, Reason::Cached);
        assert_eq!(cached.value.as_deref(), Some(&json!(false)));
        assert!(Decision::cached(&s.flags["f"], "nope").is_none());
    }

    #[test]
    fn targeting_sees_flagd_built_ins() {
        let s = FlagSet::parse(&json!({"flags": {"t": {
            "state": "ENABLED", "variants": {"k": "k", "late": "late"},
            "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 1]}, {"if": [{"==": [{"var": "$flagd.flagKey"}, "t"]}, "late"]}]}
        }}}))
        .unwrap();
        let r = s.evaluate(
            "t",
            &json!({"$flagd": {"flagKey": "spoofed"}}),
            5,
            Kind::Any,
            FractionalVersion::V2,
        );
        assert_eq!(
            r.variant.as_deref(),
            Some("late"),
            "attache's $flagd wins over the caller's"
        );
    }

    #[test]
    fn variants_are_held_in_name_order() {
        let map = json!({"off": false, "blue": "b", "on": true});
        let v = Variants::from(map.as_object().unwrap());
        assert_eq!(v.len(), 3);
        assert!(!v.is_empty());
        assert!(Variants::default().is_empty());
        let names: Vec<&String> = v.keys().collect();
        assert_eq!(names, ["blue", "off", "on"]);
        let pairs: Vec<(&String, &Value)> = v.iter().collect();
        assert_eq!(pairs[1], (&"off".to_owned(), &json!(false)));
        let values: Vec<&Value> = v.values().collect();
        assert_eq!(values, [&json!("b"), &json!(false), &json!(true)]);
        assert_eq!(v.at(2), Some(("on", &json!(true))));
        assert_eq!(v.at(3), None);
        assert_eq!(v.find("off"), Some((1, "off", &json!(false))));
        assert!(v.contains_key("blue") && !v.contains_key("red"));
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"blue":"b","off":false,"on":true}"#
        );
    }

    #[test]
    fn bad_documents_name_the_path() {
        let err = |doc: Value| FlagSet::parse(&doc).unwrap_err().to_string();
        assert_eq!(
            err(json!({"flags": {"f": {"state": "ON", "variants": {"a": 1}}}})),
            "flags.f.state: must be ENABLED or DISABLED"
        );
        assert_eq!(
            err(
                json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}})
            ),
            "flags.f.defaultVariant: names no variant: \"b\""
        );
        assert_eq!(
            err(json!({"flags": {"f": {"state": "ENABLED", "variants": {}}}})),
            "flags.f.variants: must be a non-empty object"
        );
        for bad in [json!(null), json!([1, 2])] {
            assert_eq!(
                err(json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1, "b": bad}}}})),
                "flags.f.variants.b: a variant is a boolean, string, number or object"
            );
        }
        let unresolved = FlagSet::parse(&json!({"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"$ref": "nope"}}}})).unwrap();
        assert!(
            unresolved.warnings[0].contains("unknown evaluator"),
            "{:?}",
            unresolved.warnings
        );
    }
}
