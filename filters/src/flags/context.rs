//! The evaluation context of a request (§6): where values are read from (headers, cookies,
//! the query string, baggage), the built-in `request.*` attributes a rule may read, and the
//! context as JSON or as the flat layout compiled rules read.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, Method, Uri, header};
use serde_json::{Map, Value};

use super::logic::{Field, Rule};
use crate::codec::percent;
use crate::trace_context::baggage;

/// Which built-in `request.*` attributes the context carries: only those a rule may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub method: bool,
    pub path: bool,
    pub host: bool,
    pub client_address: bool,
}

impl Needs {
    pub const ALL: Needs = Needs {
        method: true,
        path: true,
        host: true,
        client_address: true,
    };

    /// What `rule` may read of the built-ins: every part named by one of its constant
    /// strings, or all of them when a path is computed.
    pub fn of(rule: &Rule) -> Needs {
        let mut needs = Needs::default();
        let reads = |s: &str, part: &str| {
            s.is_empty()
                || s == "request"
                || s.strip_prefix("request.").is_some_and(|rest| {
                    rest.strip_prefix(part)
                        .is_some_and(|tail| tail.is_empty() || tail.starts_with('.'))
                })
        };
        let known = rule.constant_strings(&mut |s| {
            needs.method |= reads(s, "method");
            needs.path |= reads(s, "path");
            needs.host |= reads(s, "host");
            needs.client_address |= reads(s, "client_address");
        });
        if known { needs } else { Needs::ALL }
    }

    pub(super) fn union(self, o: Needs) -> Needs {
        Needs {
            method: self.method || o.method,
            path: self.path || o.path,
            host: self.host || o.host,
            client_address: self.client_address || o.client_address,
        }
    }

    pub fn any(self) -> bool {
        self.method || self.path || self.host || self.client_address
    }
}

/// Where a context value is read from.
#[derive(Debug, Clone)]
pub enum Source {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Baggage(String),
}

impl Source {
    /// The value, when the request has a non-empty one.
    pub(super) fn read(&self, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        let v = match self {
            // UTF-8 text is read as sent (a user name with an accent, say); other bytes are not.
            // Most values are ASCII, which `to_str` checks faster.
            Source::Header(h) => headers
                .get(h)
                .and_then(|v| {
                    v.to_str()
                        .ok()
                        .or_else(|| std::str::from_utf8(v.as_bytes()).ok())
                })
                .map(str::to_owned),
            Source::Cookie(name) => cookie(headers, name),
            Source::Query(name) => query_param(uri.query()?, name),
            Source::Baggage(name) => baggage::members(headers)
                .flatten()
                .find(|m| m.key == name)
                .map(|m| percent::decode_str(m.value, false)),
        };
        v.filter(|v| !v.is_empty())
    }
}

/// The cookie `name`, read as bytes: a cookie elsewhere in the header with bytes outside ASCII
/// (browsers send UTF-8 values) does not hide it. Its value must be UTF-8.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let (_, v) = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
        })
        .find(|(n, _)| *n == name.as_bytes())?;
    let v = v
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v);
    std::str::from_utf8(v).ok().map(str::to_owned)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent::decode_str(n, true) == name).then(|| percent::decode_str(v, true))
    })
}

/// `request.method` as a context value, made once for the standard methods.
fn method_value(method: &Method) -> Option<&'static Value> {
    static METHODS: LazyLock<Vec<(Method, Value)>> = LazyLock::new(|| {
        [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::HEAD,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ]
        .into_iter()
        .map(|m| {
            let v = Value::String(m.as_str().to_owned());
            (m, v)
        })
        .collect()
    });
    METHODS.iter().find(|(m, _)| m == method).map(|(_, v)| v)
}

/// How the evaluation context is built (§6).
#[derive(Debug, Clone, Default)]
pub struct ContextRules {
    pub targeting_key: Vec<Source>,
    /// Each source and the path it lands under (`user.plan` → `["user", "plan"]`).
    pub attributes: Vec<(Source, Vec<String>)>,
    pub static_attributes: Map<String, Value>,
}

/// The request parts the context reads.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub peer: Option<SocketAddr>,
}

impl ContextRules {
    /// The context of a proxied request, lowest precedence first: the built-ins in `needs`,
    /// `static`, attributes, `targetingKey`.
    pub fn build(&self, r: &RequestView<'_>, needs: Needs) -> Value {
        let mut root = Map::new();
        if needs.any() {
            let mut request = Map::new();
            if needs.method {
                request.insert("method".into(), r.method.as_str().into());
            }
            if needs.path {
                request.insert("path".into(), r.uri.path().into());
            }
            // The target's authority first, as the proxy forwards it (RFC 9112 §3.2.2).
            let host = || {
                r.uri
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| r.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
            };
            if needs.host
                && let Some(host) = host()
            {
                request.insert("host".into(), host.into());
            }
            if needs.client_address
                && let Some(peer) = r.peer
            {
                request.insert("client_address".into(), peer.ip().to_string().into());
            }
            root.insert("request".into(), Value::Object(request));
        }
        for (k, v) in &self.static_attributes {
            root.insert(k.clone(), v.clone());
        }
        self.add_attributes(&mut root, r.uri, r.headers);
        if let Some(key) = self
            .targeting_key
            .iter()
            .find_map(|s| s.read(r.uri, r.headers))
        {
            root.insert("targetingKey".into(), key.into());
        }
        Value::Object(root)
    }

    /// The paths of a flat context's fields, in the order [`ContextRules::fields`] gives
    /// them: `targetingKey` (read by every `fractional`, so first), the built-ins in `needs`,
    /// the attributes (at their dotted `paths`), the static attributes.
    pub fn layout(&self, needs: Needs, paths: &[String]) -> Vec<String> {
        let built_ins = [
            (needs.method, "request.method"),
            (needs.path, "request.path"),
            (needs.host, "request.host"),
            (needs.client_address, "request.client_address"),
        ];
        std::iter::once("targetingKey")
            .chain(built_ins.iter().filter(|(on, _)| *on).map(|(_, p)| *p))
            .chain(paths.iter().map(String::as_str))
            .chain(self.static_attributes.keys().map(String::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// The context of a proxied request as a flat list of fields, for a plan that allows it
    /// (`Plan::flat`, which holds the attributes' dotted `paths`): what [`ContextRules::build`]
    /// would put in a JSON document, without its maps and their keys. There is one field per
    /// path of [`ContextRules::layout`], in its order, with no value when the request has none.
    pub fn fields<'a>(
        &'a self,
        r: &RequestView<'_>,
        needs: Needs,
        paths: &'a [String],
    ) -> Vec<Field<'a>> {
        let mut fields =
            Vec::with_capacity(5 + self.attributes.len() + self.static_attributes.len());
        let mut add = |path: &'a str, value: Option<Cow<'a, Value>>| {
            fields.push(Field { path, value });
        };
        let text = |v: String| Cow::Owned(Value::String(v));
        add(
            "targetingKey",
            self.targeting_key
                .iter()
                .find_map(|s| s.read(r.uri, r.headers))
                .map(text),
        );
        if needs.method {
            let method = match method_value(r.method) {
                Some(m) => Cow::Borrowed(m),
                None => text(r.method.as_str().to_owned()),
            };
            add("request.method", Some(method));
        }
        if needs.path {
            add("request.path", Some(text(r.uri.path().to_owned())));
        }
        if needs.host {
            let host = r
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| r.headers.get(header::HOST).and_then(|h| h.to_str().ok()));
            add("request.host", host.map(|h| text(h.to_owned())));
        }
        if needs.client_address {
            add(
                "request.client_address",
                r.peer.map(|peer| text(peer.ip().to_string())),
            );
        }
        for ((source, _), path) in self.attributes.iter().zip(paths) {
            add(path, source.read(r.uri, r.headers).map(text));
        }
        fields.extend(self.static_attributes.iter().map(|(k, v)| Field {
            path: k,
            value: Some(Cow::Borrowed(v)),
        }));
        fields
    }

    /// Adds the attributes read from `headers` (and `uri`) to `root`; later ones win.
    pub fn add_attributes(&self, root: &mut Map<String, Value>, uri: &Uri, headers: &HeaderMap) {
        for (source, path) in &self.attributes {
            if let Some(v) = source.read(uri, headers) {
                insert_path(root, path, Value::String(v));
            }
        }
    }
}

/// Sets `root[path[0]][path[1]]… = value`, making (or replacing non-object) levels objects.
pub(super) fn insert_path(root: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = root;
    for p in parents {
        let slot = at
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(m) = slot else {
            return;
        };
        at = m;
    }
    at.insert(last.clone(), value);
}
