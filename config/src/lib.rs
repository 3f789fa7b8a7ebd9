//! attache's configuration: the declarative model, loading from YAML or JSON with `${VAR}`
//! interpolation, validation whose errors name the field path and the line and column, the
//! generated JSON schema, and the redacted view served on the admin port.
//!
//! Loading runs in stages, each reporting every problem it finds:
//! 1. [`yaml::parse`] reads the text into a tree that remembers positions;
//! 2. [`yaml::interpolate`] expands `${VAR}` and `${VAR:-default}` in scalars;
//! 3. serde deserializes the model (unknown fields are errors, with a "did you mean");
//! 4. `validate` checks what types cannot: references between sections, clashing ports.

#![forbid(unsafe_code)]

mod authz;
mod context;
mod error;
mod flags;
mod forward_proxy;
mod idempotency;
mod model;
mod ratelimit;
mod telemetry;
mod types;
mod validate;
pub mod yaml;

use std::path::Path;

use serde_json::Value;

pub use authz::*;
pub use context::{Context, ContextLimits, Push, TtlMode};
pub use error::{ConfigError, ConfigErrors};
pub use flags::*;
pub use forward_proxy::*;
pub use idempotency::*;
pub use model::*;
pub use ratelimit::*;
pub use telemetry::*;
pub use types::{ByteSize, Duration, ListenAddr, Rate, Scheme, UpstreamUrl};

/// Checks a caller adds to loading (the `attache` crate compiles the authorization policy with
/// the parsers that match it); their errors get the line and column as validation's do.
pub type Check<'a> = &'a dyn Fn(&Config) -> Vec<ConfigError>;

/// Reads a YAML or JSON document (a flag file, say) into JSON, without `${VAR}`
/// interpolation; errors carry the line and column.
pub fn parse_document(text: &str) -> Result<Value, ConfigError> {
    let root = yaml::parse(text)?;
    let mut index = yaml::PosIndex::default();
    Ok(yaml::to_json(&root, "", None, &mut index))
}

/// The largest config document attache reads: a real one is a few KiB, and one past this is a
/// mistake (a wrong file, a generated one run away) that should not be parsed and held.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Loads and validates a config file (YAML or JSON, `${VAR}` from the process environment).
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_with(path, &|_| Vec::new())
}

/// [`load_file`], with `check` run after validation.
pub fn load_file_with(path: &Path, check: Check<'_>) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let fail = |message: String| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError::new("", message)],
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    let text = read_capped(file).map_err(fail)?;
    load_str_with(&text, &source, &|name| std::env::var(name).ok(), check)
}

/// Reads a config document (a file, standard input) as UTF-8 text of at most
/// [`MAX_CONFIG_BYTES`]; a larger one is refused without reading the rest.
pub fn read_capped(input: impl std::io::Read) -> Result<String, String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut input.take(MAX_CONFIG_BYTES + 1), &mut text)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "the document is larger than {} KiB, the most a config file may be",
            MAX_CONFIG_BYTES / 1024
        ));
    }
    Ok(text)
}

/// Loads and validates a document held in memory; `env` resolves `${VAR}`.
pub fn load_str(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    load_str_with(text, source, env, &|_| Vec::new())
}

/// [`load_str`], with `check` run after validation.
pub fn load_str_with(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    check: Check<'_>,
) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        source: source.to_owned(),
        errors,
    };
    let mut root = yaml::parse(text).map_err(|e| fail(vec![e]))?;
    let mut errors = Vec::new();
    yaml::interpolate(&mut root, "", env, &mut errors);
    let mut index = yaml::PosIndex::default();
    let value = yaml::to_json(&root, "", None, &mut index);
    if !value.is_object() {
        errors.push(
            ConfigError::new(
                "",
                "the document must be a mapping with apiVersion, kind and spec",
            )
            .at(Some(root.pos)),
        );
        return Err(fail(errors));
    }
    // Values that failed interpolation are already reported; deserialize without them.
    let mut value = value;
    let failed: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    for path in &failed {
        remove(&mut value, path);
    }
    let interpolated_ok = failed.is_empty();
    let (config, only_unknown_fields) = deserialize_all(value, &index, failed, &mut errors);
    // The checks across fields run on a model that is the file's: with no errors so far, or
    // with only unknown fields (left out, they change nothing else), so that one run lists a
    // typo and, say, an undefined upstream together. After a bad value the model holds a
    // default in its place, and checks on it could report mistakes the file does not make.
    if let Some(config) = &config
        && (errors.is_empty() || (only_unknown_fields && interpolated_ok))
    {
        let valid = validate::validate(config);
        let checked = if valid.is_empty() && errors.is_empty() {
            check(config)
        } else {
            Vec::new()
        };
        for e in valid.into_iter().chain(checked) {
            let at = index.best(&e.path);
            errors.push(e.at(at));
        }
    }
    // serde visits keys alphabetically; users read files top to bottom.
    errors.sort_by_key(|e| e.location.unwrap_or((usize::MAX, 0)));
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(fail(errors)),
    }
}

/// Deserializes the model, collecting as many errors as possible: each failing node is removed
/// and deserialization retried, so one run lists every unknown field and bad value. Returns
/// the model once it deserializes (without the failing nodes), and whether every error was
/// an unknown field.
fn deserialize_all(
    mut value: Value,
    index: &yaml::PosIndex,
    mut removed: Vec<String>,
    errors: &mut Vec<ConfigError>,
) -> (Option<Config>, bool) {
    let mut only_unknown_fields = true;
    // Array elements removed so far, so that paths found after a removal name the element the
    // file has at that place, not the one that moved up into it.
    let mut shifts = Shifts::default();
    for _ in 0..64 {
        let err = match serde_path_to_error::deserialize::<_, Config>(&value) {
            Ok(config) => return (Some(config), only_unknown_fields),
            Err(e) => e,
        };
        let current = err.path().to_string();
        let current = if current == "." {
            String::new()
        } else {
            current
        };
        let path = shifts.original(&current);
        let raw = err.into_inner().to_string();
        if let Some(name) = raw
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            && removed.contains(&yaml::join(&path, name))
        {
            // A required field removed for an earlier error is not a second mistake: drop
            // its parent too and look on for errors elsewhere.
            if current.is_empty() || !shifts.remove(&mut value, &current, &path) {
                return (None, false);
            }
            removed.push(path);
            continue;
        }
        only_unknown_fields &= raw.starts_with("unknown field `");
        let (message, key) = humanize(&raw);
        let at = if key {
            index.key(&path).or_else(|| index.nearest(&path))
        } else {
            index.nearest(&path)
        };
        errors.push(ConfigError::new(path.clone(), message).at(at));
        if current.is_empty() || !shifts.remove(&mut value, &current, &path) {
            return (None, false);
        }
        removed.push(path);
    }
    (None, false)
}

/// The array elements [`deserialize_all`] removed: for each array (its path as the file has
/// it), the indices the file gave the removed elements.
#[derive(Default)]
struct Shifts(std::collections::HashMap<String, Vec<usize>>);

impl Shifts {
    /// `current` (a path into the value as it is now) as a path into the file.
    fn original(&self, current: &str) -> String {
        let mut out = String::with_capacity(current.len());
        let mut rest = current;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find(']').map(|c| open + c) else {
                break;
            };
            match rest[open + 1..close].parse::<usize>() {
                Ok(mut i) => {
                    let mut gone = self.0.get(&out).cloned().unwrap_or_default();
                    gone.sort_unstable();
                    for g in gone {
                        if g <= i {
                            i += 1;
                        }
                    }
                    out.push_str(&format!("[{i}]"));
                }
                Err(_) => out.push_str(&rest[open..=close]),
            }
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Removes the node at `current`, noting it when it is an array element (`original` is the
    /// same path as the file has it).
    fn remove(&mut self, value: &mut Value, current: &str, original: &str) -> bool {
        if !remove(value, current) {
            return false;
        }
        if let Some(open) = original.rfind('[')
            && original.ends_with(']')
            && let Ok(i) = original[open + 1..original.len() - 1].parse::<usize>()
        {
            self.0
                .entry(original[..open].to_owned())
                .or_default()
                .push(i);
        }
        true
    }
}

/// Rewrites serde's messages into attache's voice. Returns the message and whether it is about
/// a key (so the position should point at the key, not the value).
fn humanize(raw: &str) -> (String, bool) {
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let expected = quoted_names(rest.split_once("expected").map_or("", |x| x.1));
        return (unknown("field", name, &expected), true);
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let name = rest.split('`').next().unwrap_or_default();
        let expected = quoted_names(rest.split_once("expected").map_or("", |x| x.1));
        return (unknown("value", name, &expected), false);
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return (format!("missing required field `{name}`"), false);
    }
    (raw.to_owned(), false)
}

fn unknown(what: &str, name: &str, expected: &[String]) -> String {
    let best = expected
        .iter()
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!("unknown {what} `{name}`; did you mean `{c}`?"),
        None if expected.is_empty() => format!("unknown {what} `{name}`"),
        None => format!(
            "unknown {what} `{name}` (expected one of {})",
            expected
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn quoted_names(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Removes the node at a serde path (`a.b[2].c`) from a JSON value; false if not found.
fn remove(value: &mut Value, path: &str) -> bool {
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (name, idxs) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(Err(name));
        }
        for idx in idxs.split('[').filter(|s| !s.is_empty()) {
            match idx.trim_end_matches(']').parse::<usize>() {
                Ok(i) => segs.push(Ok(i)),
                Err(_) => return false,
            }
        }
    }
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, cur) {
            (Ok(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            (Err(k), Value::Object(m)) => match m.get_mut(*k) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Err(k), Value::Object(m)) => m.remove(*k).is_some(),
        // Later elements move up; `Shifts` maps their paths back to the file's.
        (Ok(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

impl Config {
    /// The config `attache dev` runs with when no file is given: inbound on `listen` in front
    /// of `app`, admin on its default port.
    pub fn dev(app: UpstreamUrl, listen: ListenAddr) -> Config {
        Config {
            api_version: ApiVersion::V1,
            kind: Kind::Sidecar,
            metadata: Metadata {
                name: "attache-dev".to_owned(),
            },
            spec: Spec {
                inbound: Some(Inbound::new(app, listen)),
                ..Spec::default()
            },
        }
    }

    /// The effective config as JSON with secrets redacted: credentials in URLs and values of
    /// keys that look like secrets. This is what `/config` serves and startup logs.
    pub fn redacted(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        redact(&mut v, false);
        v
    }

    /// Re-validates a config built in code (CLI flags applied over a file, for example).
    pub fn check(&self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors {
                source: "<command line>".to_owned(),
                errors,
            })
        }
    }
}

fn redact(v: &mut Value, secret_key: bool) {
    match v {
        Value::String(s) if secret_key => *s = "REDACTED".to_owned(),
        Value::String(s) => {
            if let Some(shown) = redact_url(s) {
                *s = shown;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, secret_key)),
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                let k = k.to_ascii_lowercase();
                // A map of request headers to send (a flag source's, the OTLP exporter's)
                // carries credentials under any name: `x-api-key`, `x-honeycomb-team`...
                let header_map = k == "headers" && val.is_object();
                let secret = header_map
                    || [
                        "password",
                        "secret",
                        "token",
                        "authorization",
                        "credential",
                        "api-key",
                        "api_key",
                        "apikey",
                    ]
                    .iter()
                    .any(|w| k.contains(w));
                redact(val, secret_key || secret);
            }
        }
        _ => {}
    }
}

/// `scheme://user:pass@host/...` as (`scheme://`, `user:pass`, `host/...`); `None` when the
/// URL carries no userinfo. Only the authority counts: an `@` in the path or query is not
/// userinfo.
fn userinfo_parts(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    Some((&url[..start], &rest[..at], &rest[at + 1..]))
}

/// The URL with its userinfo and the values of its secret query parameters
/// ([`is_secret_param`]) replaced by `REDACTED`; `None` when it carries neither.
pub fn redact_url(url: &str) -> Option<String> {
    let shown = match userinfo_parts(url) {
        Some((head, _, tail)) => format!("{head}REDACTED@{tail}"),
        None => url.to_owned(),
    };
    let shown = redact_query(&shown);
    (shown != url).then_some(shown)
}

/// `…?a=1&token=x#f` → `…?a=1&token=REDACTED#f`: the values of parameters named like
/// credentials.
fn redact_query(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, rest) = url.split_at(q + 1);
    let (query, fragment) = match rest.find('#') {
        Some(f) => rest.split_at(f),
        None => (rest, ""),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_param(k) => format!("{k}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}{}{fragment}", query.join("&"))
}

/// Names of query parameters that carry credentials (`?access_token=`, `?api_key=`, a signed
/// URL's `sig`): matched as parts of the lowercased name.
const SECRET_PARAMS: [&str; 9] = [
    "token",
    "secret",
    "password",
    "passwd",
    "key",
    "sig",
    "auth",
    "credential",
    "session",
];

/// Whether a query parameter's name says it carries a credential.
pub fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|w| name.contains(w))
}

/// Free text (an error message, a log line) with every credential it may quote replaced by
/// `REDACTED`: in each word (split at whitespace and quotes) the userinfo before an `@` (with
/// or without a scheme, so a URL too broken to parse still hides its password), and the values
/// of query parameters whose names say they are credentials. It errs on the side of hiding.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '`') {
            out.push_str(&redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&redact_word(&word));
    out
}

fn redact_word(word: &str) -> String {
    let mut w = word.to_owned();
    if let Some(at) = w.rfind('@') {
        let start = w.find("://").map_or(0, |i| i + 3);
        if at > start {
            w.replace_range(start..at, "REDACTED");
        }
    }
    redact_query(&w)
}

/// The URL without its userinfo, and the userinfo; `None` when it carries none.
pub fn strip_userinfo(url: &str) -> Option<(String, String)> {
    let (head, userinfo, tail) = userinfo_parts(url)?;
    Some((format!("{head}{tail}"), userinfo.to_owned()))
}

/// The JSON schema of the config file, as committed in `config/schema.json`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Config);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests;
