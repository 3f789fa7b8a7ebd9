//! A YAML (and therefore JSON) reader that keeps where every value came from.
//!
//! serde alone cannot say "line 7, column 10" for an error found after deserialization, such as
//! an outbound listener naming an upstream that does not exist. So the document is read into a
//! small positioned tree first; `${VAR}` interpolation happens on that tree (scalars only, so an
//! environment variable can never inject YAML structure, and positions stay exact); then the
//! tree becomes a `serde_json::Value` plus an index from field path to position.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

use crate::error::ConfigError;

/// 1-based (line, column).
pub type Pos = (usize, usize);

fn pos(span: &Span) -> Pos {
    (span.start.line(), span.start.col() + 1)
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A scalar as written; `plain` scalars are resolved to null/bool/number per YAML 1.2's core
    /// schema after interpolation, quoted ones always stay strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(String, Pos, Node)>),
}

/// Field path → (value position, key position). Keys use the same spelling as
/// `path::Path`'s display: `spec.outbound[0].listen`.
#[derive(Debug, Default, Clone)]
pub struct PosIndex {
    /// path → (value position, key position, whether the value is a mapping or sequence)
    map: HashMap<String, (Pos, Option<Pos>, bool)>,
}

impl PosIndex {
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.map.get(path).map(|p| p.0)
    }
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.map.get(path).and_then(|p| p.1.or(Some(p.0)))
    }
    /// Where an error about `path` should point: the key of a section (mapping or sequence),
    /// the value of a scalar, or the nearest ancestor when `path` is not in the file.
    pub fn best(&self, path: &str) -> Option<Pos> {
        match self.map.get(path) {
            Some((_, Some(key), true)) => Some(*key),
            Some((value, _, _)) => Some(*value),
            None => self.nearest(path),
        }
    }
    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn nearest(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(found) = self.value(p) {
                return Some(found);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Parses one YAML document. An empty document is an empty map.
pub fn parse(text: &str) -> Result<Node, ConfigError> {
    let docs = read(text, true)?;
    Ok(docs.into_iter().next().unwrap_or(Node {
        kind: NodeKind::Map(Vec::new()),
        pos: (1, 1),
    }))
}

/// Reads every document of a YAML stream (`---`-separated, as Kubernetes manifests are
/// written); empty documents are left out. An error's position is within the whole text.
pub fn parse_stream(text: &str) -> Result<Vec<Node>, ConfigError> {
    read(text, false)
}

/// The documents of `text`; with `one`, a second document is an error.
fn read(text: &str, one: bool) -> Result<Vec<Node>, ConfigError> {
    let mut events = Parser::new_from_str(text);
    let mut builder = Builder::default();
    let mut starts = 0;
    let mut docs = Vec::new();
    while let Some(ev) = events.next_event() {
        let (ev, span) = ev.map_err(|e| {
            ConfigError::new("", format!("invalid YAML: {}", e.info()))
                .at(Some((e.marker().line(), e.marker().col() + 1)))
        })?;
        match ev {
            Event::DocumentStart(_) => {
                starts += 1;
                if one && starts > 1 {
                    return Err(ConfigError::new(
                        "",
                        "the file holds more than one YAML document; attache reads exactly one",
                    )
                    .at(Some(pos(&span))));
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            other => {
                if let Some(node) = builder.push(other, span)? {
                    docs.push(node);
                }
            }
        }
    }
    Ok(docs)
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
}

enum Frame {
    Seq(Node, usize),
    /// map node, anchor id, pending key
    Map(Node, usize, Option<(String, Pos)>),
}

impl Builder {
    /// Feeds one event; returns the root node once it is complete.
    fn push(&mut self, ev: Event<'_>, span: Span) -> Result<Option<Node>, ConfigError> {
        let at = pos(&span);
        let node = match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    kind: NodeKind::Scalar {
                        text: text.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                    pos: at,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => Node {
                    kind: n.kind.clone(),
                    pos: at,
                },
                None => {
                    return Err(ConfigError::new("", "unknown YAML alias").at(Some(at)));
                }
            },
            Event::SequenceStart(anchor, _) => {
                let node = Node {
                    kind: NodeKind::Seq(Vec::new()),
                    pos: at,
                };
                self.stack.push(Frame::Seq(node, anchor));
                return Ok(None);
            }
            Event::MappingStart(anchor, _) => {
                let node = Node {
                    kind: NodeKind::Map(Vec::new()),
                    pos: at,
                };
                self.stack.push(Frame::Map(node, anchor, None));
                return Ok(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(n, a)) | Some(Frame::Map(n, a, _)) => (n, a),
                    None => return Err(ConfigError::new("", "unbalanced YAML").at(Some(at))),
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                node
            }
            _ => return Ok(None),
        };
        self.attach(node)
    }

    fn attach(&mut self, node: Node) -> Result<Option<Node>, ConfigError> {
        match self.stack.last_mut() {
            None => Ok(Some(node)),
            Some(Frame::Seq(seq, _)) => {
                if let NodeKind::Seq(items) = &mut seq.kind {
                    items.push(node);
                }
                Ok(None)
            }
            Some(Frame::Map(map, _, pending)) => {
                match pending.take() {
                    None => match node.kind {
                        NodeKind::Scalar { text, .. } => *pending = Some((text, node.pos)),
                        _ => {
                            return Err(ConfigError::new("", "mapping keys must be plain strings")
                                .at(Some(node.pos)));
                        }
                    },
                    Some((key, key_pos)) => {
                        if let NodeKind::Map(entries) = &mut map.kind {
                            if entries.iter().any(|(k, _, _)| *k == key) {
                                return Err(ConfigError::new("", format!("duplicate key `{key}`"))
                                    .at(Some(key_pos)));
                            }
                            entries.push((key, key_pos, node));
                        }
                    }
                }
                Ok(None)
            }
        }
    }
}

// === interpolation ===

/// Replaces `${VAR}` and `${VAR:-default}` in every scalar; `$${` stands for a literal `${`.
/// Unset variables without a default are errors that name the field.
pub fn interpolate(
    node: &mut Node,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match &mut node.kind {
        NodeKind::Scalar { text, .. } => {
            if text.contains('$') {
                match expand(text, env) {
                    Ok(s) => *text = s,
                    Err(msg) => errors.push(ConfigError::new(path, msg).at(Some(node.pos))),
                }
            }
        }
        NodeKind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        NodeKind::Map(entries) => {
            for (k, _, v) in entries.iter_mut() {
                interpolate(v, &join(path, k), env, errors);
            }
        }
    }
}

fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {text:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("invalid variable name in `${{{expr}}}`"));
            }
            match (
                env(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

// === conversion ===

/// Converts the tree into JSON, filling the position index.
pub fn to_json(node: &Node, path: &str, key_pos: Option<Pos>, index: &mut PosIndex) -> Value {
    let collection = !matches!(node.kind, NodeKind::Scalar { .. });
    index
        .map
        .insert(path.to_owned(), (node.pos, key_pos, collection));
    match &node.kind {
        NodeKind::Scalar { text, plain } => {
            if *plain {
                resolve_plain(text)
            } else {
                Value::String(text.clone())
            }
        }
        NodeKind::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, n)| to_json(n, &format!("{path}[{i}]"), None, index))
                .collect(),
        ),
        NodeKind::Map(entries) => {
            let mut m = Map::with_capacity(entries.len());
            for (k, kp, v) in entries {
                m.insert(k.clone(), to_json(v, &join(path, k), Some(*kp), index));
            }
            Value::Object(m)
        }
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Ok(u) = s.parse::<u64>() {
            return Value::Number(u.into());
        }
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Number(i.into());
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Number(i.into());
    }
    let looks_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_float
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let node = parse("a:\n  b: x\n  c: [1, 2]\n").unwrap();
        let mut idx = PosIndex::default();
        let v = to_json(&node, "", None, &mut idx);
        assert_eq!(v["a"]["c"][1], 2);
        assert_eq!(idx.value("a.b"), Some((2, 6)));
        assert_eq!(idx.key("a.b"), Some((2, 3)));
        assert_eq!(idx.value("a.c[1]"), Some((3, 10)));
        assert_eq!(idx.nearest("a.b.zz[3]"), Some((2, 6)));
    }

    #[test]
    fn plain_scalars_resolve_and_quoted_stay_strings() {
        let node = parse("a: 10\nb: '10'\nc: true\nd: ~\ne: 1.5\nf: 1.2.3\ng: 0x10\n").unwrap();
        let v = to_json(&node, "", None, &mut PosIndex::default());
        assert_eq!(v["a"], 10);
        assert_eq!(v["b"], "10");
        assert_eq!(v["c"], true);
        assert!(v["d"].is_null());
        assert_eq!(v["e"], 1.5);
        assert_eq!(v["f"], "1.2.3");
        assert_eq!(v["g"], 16);
    }

    #[test]
    fn interpolation_defaults_escapes_and_errors() {
        assert_eq!(expand("p=${PORT}", &env).unwrap(), "p=8080");
        assert_eq!(expand("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand("$${PORT} $5", &env).unwrap(), "${PORT} $5");
        assert!(
            expand("${NOPE}", &env)
                .unwrap_err()
                .contains("`NOPE` is not set")
        );
        assert!(expand("${PORT", &env).is_err());
        assert!(expand("${A B}", &env).is_err());
    }

    #[test]
    fn interpolated_plain_scalars_get_their_type() {
        let mut node = parse("port: ${PORT}\nname: '${PORT}'\n").unwrap();
        let mut errs = Vec::new();
        interpolate(&mut node, "", &env, &mut errs);
        assert!(errs.is_empty());
        let v = to_json(&node, "", None, &mut PosIndex::default());
        assert_eq!(v["port"], 8080);
        assert_eq!(v["name"], "8080");
    }

    #[test]
    fn syntax_errors_and_duplicates_have_positions() {
        let e = parse("a: [1, 2\n").unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
        assert!(e.location.is_some());
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.to_string(), "duplicate key `a` at line 2, column 1");
    }

    #[test]
    fn anchors_and_aliases_are_copied() {
        let node = parse("x: &t {a: 1}\ny: *t\n").unwrap();
        let v = to_json(&node, "", None, &mut PosIndex::default());
        assert_eq!(v["y"]["a"], 1);
    }

    #[test]
    fn json_documents_parse_too() {
        let node = parse("{\"a\": {\"b\": [1, \"two\"]}}").unwrap();
        let v = to_json(&node, "", None, &mut PosIndex::default());
        assert_eq!(v["a"]["b"][1], "two");
    }
}
