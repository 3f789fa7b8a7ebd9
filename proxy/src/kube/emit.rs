//! Writing YAML back out: a document tree (`attache_config::yaml::Node`, which keeps the order
//! keys were written in) as block-style YAML, and a JSON value merged into the tree it came
//! from, so that what `inject` did not touch comes out in its original order and style
//! (comments aside: the reader drops them).
//!
//! Strings are written plain when YAML reads them back as the same string, as a literal block
//! (`|`) when they span lines (a ConfigMap's embedded file), and double-quoted otherwise.

use attache_config::yaml::{Node, NodeKind, resolve_plain};
use serde_json::Value;

/// The YAML text of `docs`, `---` between them.
pub fn stream(docs: &[Node]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        document(&mut out, doc);
    }
    out
}

fn document(out: &mut String, node: &Node) {
    match &node.kind {
        NodeKind::Map(entries) if !entries.is_empty() => map(out, entries, 0),
        NodeKind::Seq(items) if !items.is_empty() => seq(out, items, 0),
        _ => {
            inline(out, node, 0);
            out.push('\n');
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn map(out: &mut String, entries: &[(String, attache_config::yaml::Pos, Node)], at: usize) {
    for (i, (key, _, value)) in entries.iter().enumerate() {
        if i > 0 {
            indent(out, at);
        }
        if plain_safe(key) {
            out.push_str(key);
        } else {
            out.push_str(&Value::String(key.clone()).to_string());
        }
        out.push(':');
        after_key(out, value, at);
    }
}

/// A value after `key:` (or `-`): on the same line when it is a scalar or empty, else on the
/// lines below.
fn after_key(out: &mut String, value: &Node, at: usize) {
    match &value.kind {
        NodeKind::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            indent(out, at + 2);
            map(out, entries, at + 2);
        }
        // A sequence under a key is written at the key's indentation, as kubectl does.
        NodeKind::Seq(items) if !items.is_empty() => {
            out.push('\n');
            indent(out, at);
            seq(out, items, at);
        }
        _ => {
            out.push(' ');
            inline(out, value, at);
            out.push('\n');
        }
    }
}

fn seq(out: &mut String, items: &[Node], at: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            indent(out, at);
        }
        out.push('-');
        match &item.kind {
            NodeKind::Map(entries) if !entries.is_empty() => {
                out.push(' ');
                map(out, entries, at + 2);
            }
            NodeKind::Seq(inner) if !inner.is_empty() => {
                out.push(' ');
                seq(out, inner, at + 2);
            }
            _ => {
                out.push(' ');
                inline(out, item, at);
                out.push('\n');
            }
        }
    }
}

/// A scalar, or an empty collection, where it stands.
fn inline(out: &mut String, node: &Node, at: usize) {
    match &node.kind {
        NodeKind::Map(_) => out.push_str("{}"),
        NodeKind::Seq(_) => out.push_str("[]"),
        NodeKind::Scalar { text, plain: true } => match resolve_plain(text) {
            // null, booleans and numbers as written (`~`, `0x1f`); a plain string goes
            // through the string rules (it was read as one, and must stay one).
            Value::String(_) => string(out, text, at),
            _ => out.push_str(text),
        },
        NodeKind::Scalar { text, plain: false } => string(out, text, at),
    }
}

/// A string: plain when that reads back as the same string, a literal block for text of
/// several lines, else double-quoted (JSON's escapes are YAML's).
fn string(out: &mut String, s: &str, at: usize) {
    if plain_safe(s) {
        out.push_str(s);
    } else if let Some(chomp) = block_chomping(s) {
        out.push('|');
        out.push_str(chomp);
        for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
            out.push('\n');
            if !line.is_empty() {
                indent(out, at + 2);
                out.push_str(line);
            }
        }
    } else {
        out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
    }
}

/// Whether `s` can be written as a literal block, and its chomping indicator: `` (one final
/// line break) or `-` (none). Text with trailing spaces, tabs or other control characters,
/// several final breaks, or a first line that starts with a space is quoted instead.
fn block_chomping(s: &str) -> Option<&'static str> {
    if !s.contains('\n') || s.starts_with(' ') || s.starts_with('\n') || s.ends_with("\n\n") {
        return None;
    }
    let clean = s
        .split('\n')
        .all(|l| !l.ends_with(' ') && l.chars().all(|c| c == '\t' || !c.is_control()));
    if !clean {
        return None;
    }
    Some(if s.ends_with('\n') { "" } else { "-" })
}

/// Whether `s` written plain reads back as the same string.
fn plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !matches!(resolve_plain(s), Value::String(_))
        || matches!(s, "yes" | "no" | "on" | "off" | "y" | "n" | "Yes" | "No" | "On" | "Off")
        || s.parse::<f64>().is_ok()
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace)
        || ",[]{}#&*!|>'\"%@`".contains(first)
        // `-`, `?` and `:` start a plain scalar only when something other than a space
        // follows (`-c` is plain, `- c` a list item).
        || ("-?:".contains(first) && s[1..].starts_with([' ', '\t']))
        || (s.len() == 1 && "-?:".contains(first))
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
    {
        return false;
    }
    s.chars().all(|c| !c.is_control())
}

/// `value` as a tree, in `old`'s order and style wherever `old` has the same keys, the same
/// named list entries or the same scalars; what is new comes in the value's own order.
pub fn merge(value: &Value, old: Option<&Node>) -> Node {
    let pos = old.map_or((0, 0), |o| o.pos);
    let kind = match value {
        Value::Object(m) => {
            let old_entries = match old.map(|o| &o.kind) {
                Some(NodeKind::Map(e)) => e.as_slice(),
                _ => &[],
            };
            let mut entries = Vec::with_capacity(m.len());
            for (k, kp, o) in old_entries {
                if let Some(v) = m.get(k) {
                    entries.push((k.clone(), *kp, merge(v, Some(o))));
                }
            }
            // New keys in the value's (alphabetical) order, after `apiVersion`, `kind`,
            // `metadata` and `name`, as people write objects, containers and volumes.
            let mut fresh: Vec<_> = m
                .iter()
                .filter(|(k, _)| !old_entries.iter().any(|(ok, _, _)| ok == *k))
                .collect();
            fresh.sort_by_key(|(k, _)| {
                ["apiVersion", "kind", "metadata", "name"]
                    .iter()
                    .position(|first| first == k)
                    .unwrap_or(4)
            });
            for (k, v) in fresh {
                entries.push((k.clone(), (0, 0), merge(v, None)));
            }
            NodeKind::Map(entries)
        }
        Value::Array(items) => {
            let old_items = match old.map(|o| &o.kind) {
                Some(NodeKind::Seq(items)) => items.as_slice(),
                _ => &[],
            };
            NodeKind::Seq(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| merge(v, counterpart(v, i, old_items)))
                    .collect(),
            )
        }
        scalar => {
            if let Some(o) = old
                && let NodeKind::Scalar { text, plain } = &o.kind
                && scalar_value(text, *plain) == *scalar
            {
                return o.clone();
            }
            match scalar {
                Value::String(s) => NodeKind::Scalar {
                    text: s.clone(),
                    plain: false,
                },
                Value::Null => NodeKind::Scalar {
                    text: "null".into(),
                    plain: true,
                },
                other => NodeKind::Scalar {
                    text: other.to_string(),
                    plain: true,
                },
            }
        }
    };
    Node { kind, pos }
}

/// The old list entry a new one continues: the one with the same `name` (containers,
/// volumes, env), else the one at the same index.
fn counterpart<'a>(v: &Value, i: usize, old: &'a [Node]) -> Option<&'a Node> {
    match v.get("name").and_then(Value::as_str) {
        Some(name) => old.iter().find(|o| match &o.kind {
            NodeKind::Map(e) => e.iter().any(|(k, _, n)| {
                k == "name" && matches!(&n.kind, NodeKind::Scalar { text, .. } if text == name)
            }),
            _ => false,
        }),
        None => old.get(i),
    }
}

fn scalar_value(text: &str, plain: bool) -> Value {
    if plain {
        resolve_plain(text)
    } else {
        Value::String(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        let docs = attache_config::yaml::parse_stream(text).expect("YAML");
        stream(&docs)
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let text = "a: 1\nb:\n  - x\n  - 'true'\n  - \"010\"\n  - {}\nc:\n  d: \"two\\nlines\\n\"\n  e: ''\n  f: \"-lead\"\n  g: 'a: b'\n  h: null\n  i: [1, [2, 3]]\n---\n- k: v\n  l: 2.5\n";
        let out = roundtrip(text);
        let again = attache_config::yaml::parse_stream(&out).expect("its own output parses");
        let before = attache_config::yaml::parse_stream(text).expect("YAML");
        let json = |docs: &[Node]| -> Vec<Value> {
            docs.iter()
                .map(|d| attache_config::yaml::to_json(d, "", None, &mut Default::default()))
                .collect()
        };
        assert_eq!(json(&again), json(&before), "{out}");
        assert!(out.contains("d: |\n    two\n    lines\n"), "{out}");
        assert!(
            out.contains("- \"true\"") && out.contains("- \"010\""),
            "{out}"
        );
        // Written once, its output is a fixed point.
        assert_eq!(roundtrip(&out), out);
    }

    #[test]
    fn a_merged_value_keeps_the_old_order_and_matches_lists_by_name() {
        let old = &attache_config::yaml::parse_stream(
            "z: 1\ncontainers:\n  - name: app\n    image: a\n  - name: web\n    image: w\n",
        )
        .expect("YAML")[0];
        let value = serde_json::json!({
            "containers": [{"image": "w2", "name": "web"}, {"image": "a", "name": "app"}],
            "new": true,
            "z": 1
        });
        let out = stream(&[merge(&value, Some(old))]);
        assert_eq!(
            out,
            "z: 1\ncontainers:\n- name: web\n  image: w2\n- name: app\n  image: a\nnew: true\n"
        );
    }
}
