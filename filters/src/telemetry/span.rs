//! One finished span per request and leg (specs/trace-context.md §8): the SERVER span of the
//! inbound leg, the CLIENT span of the outbound leg. A span is built only when it is sampled
//! and has somewhere to go; its attributes follow the stable OpenTelemetry HTTP semantic
//! conventions.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, Uri, Version};

use super::Direction;
use crate::trace_context::propagate::{Restored, TraceCtx};
use crate::trace_context::{SpanId, TraceId};

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}

/// A finished span, ready for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub direction: Direction,
    /// The method, or `HTTP` for methods outside RFC 9110, PATCH and QUERY.
    pub name: Cow<'static, str>,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    /// A continued context's parent is in another process.
    pub remote_parent: bool,
    /// The `tracestate` forwarded with this span as parent.
    pub trace_state: Option<HeaderValue>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// Status `Error` (else `Unset`).
    pub error: bool,
}

/// How a SERVER span records the query string (`telemetry.url_query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryMode {
    Full,
    #[default]
    Redacted,
    Omit,
}

/// Query keys whose values are always redacted (OpenTelemetry's list).
const SENSITIVE_KEYS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

/// What the span needs of the request, taken when it arrives: cheap clones of header values
/// that share the request's buffer.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub forwarded: Option<HeaderValue>,
    pub x_forwarded_for: Option<HeaderValue>,
    pub x_forwarded_host: Option<HeaderValue>,
    pub peer: Option<SocketAddr>,
}

impl RequestHead {
    pub fn of(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Self {
        const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
        const XFH: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");
        Self {
            method: method.clone(),
            uri: uri.clone(),
            version,
            host: headers.get(http::header::HOST).cloned(),
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            forwarded: headers.get(http::header::FORWARDED).cloned(),
            x_forwarded_for: headers.get(XFF).cloned(),
            x_forwarded_host: headers.get(XFH).cloned(),
            peer,
        }
    }

    /// `:authority`, else `Host`: what the client addressed.
    pub fn authority(&self) -> Option<&str> {
        self.uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
    }

    /// The original client: `Forwarded: for=`, the first `X-Forwarded-For`, else the peer.
    pub fn client_address(&self) -> Option<String> {
        if let Some(f) = self.forwarded.as_ref().and_then(|v| v.to_str().ok())
            && let Some(v) = forwarded_param(f, "for")
        {
            return Some(strip_port(v).to_owned());
        }
        if let Some(first) = self
            .x_forwarded_for
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            return Some(first.to_owned());
        }
        self.peer.map(|p| p.ip().to_string())
    }

    /// The server the client meant: `Forwarded: host=`, `X-Forwarded-Host`, `:authority`,
    /// `Host`, split into host and port.
    fn server(&self) -> Option<(String, Option<u16>)> {
        let forwarded = self
            .forwarded
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|f| forwarded_param(f, "host"));
        let xfh = self
            .x_forwarded_host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim);
        let raw = forwarded.or(xfh).or_else(|| self.authority())?;
        Some(split_host_port(raw))
    }
}

/// What the forwarder reports about the hop below it, in the response's extensions.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// `app`, or the upstream's name.
    pub name: std::sync::Arc<str>,
    /// The endpoint's `http://host:port`, credentials shown as `REDACTED:REDACTED`.
    pub url_base: std::sync::Arc<str>,
    pub host: std::sync::Arc<str>,
    pub port: u16,
    pub version: Version,
    /// Attempts after the first (another endpoint after a refused connection).
    pub resend_count: u32,
    /// Set when no response came: `timeout`, `connection_refused`, `connection_reset`,
    /// `protocol`, `body` or `_OTHER`.
    pub error: Option<&'static str>,
}

/// How a request ended, for its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The response body finished.
    Complete,
    /// The response body failed midway.
    BodyFailed,
    /// The caller went away (not an error).
    Abandoned,
}

/// One finished exchange on one leg, as the observe layer saw it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub direction: Direction,
    pub head: &'a RequestHead,
    pub ctx: &'a TraceCtx,
    /// The status attache sent (inbound) or passed on (outbound).
    pub status: Option<u16>,
    pub upstream: Option<&'a UpstreamInfo>,
    pub ending: Ending,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

/// Settings that shape the attributes.
#[derive(Debug, Clone, Default)]
pub struct SpanSettings {
    pub url_query: QueryMode,
    pub redact_query_keys: Vec<String>,
}

impl SpanSettings {
    /// A query string per `url_query`; `None` when omitted or empty.
    pub fn query(&self, query: Option<&str>) -> Option<String> {
        let q = query.filter(|q| !q.is_empty())?;
        match self.url_query {
            QueryMode::Full => Some(q.to_owned()),
            QueryMode::Omit => None,
            QueryMode::Redacted => Some(self.redact(q)),
        }
    }

    fn redact(&self, q: &str) -> String {
        let mut out = String::with_capacity(q.len());
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (k, v) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            let sensitive =
                SENSITIVE_KEYS.contains(&k) || self.redact_query_keys.iter().any(|r| r == k);
            out.push_str(k);
            match v {
                Some(_) if sensitive => out.push_str("=REDACTED"),
                Some(v) => {
                    out.push('=');
                    out.push_str(v);
                }
                None => {}
            }
        }
        out
    }

    /// Builds the span of one exchange.
    pub fn build(&self, x: &Exchange<'_>) -> SpanRecord {
        let Exchange {
            direction,
            head,
            ctx,
            status,
            upstream,
            ending,
            start_unix_nanos,
            end_unix_nanos,
        } = *x;
        let mut attrs: Vec<(&'static str, Value)> = Vec::with_capacity(16);
        let (name, known) = method_name(&head.method);
        attrs.push(("http.request.method", Value::from(known)));
        if known == "_OTHER" {
            attrs.push((
                "http.request.method_original",
                Value::from(head.method.as_str().to_owned()),
            ));
        }
        if let Some(ua) = head.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            attrs.push(("user_agent.original", Value::from(ua.to_owned())));
        }
        attrs.push(("url.scheme", Value::from("http")));

        // The status this leg saw: SERVER sent one unless the exchange broke; CLIENT received
        // one unless the forwarder reports an error instead.
        let received = match direction {
            Direction::Inbound => status,
            Direction::Outbound => status.filter(|_| upstream.is_none_or(|u| u.error.is_none())),
        };
        if let Some(s) = received {
            attrs.push(("http.response.status_code", Value::Int(i64::from(s))));
        }
        let error_status = received.filter(|s| match direction {
            Direction::Inbound => *s >= 500,
            Direction::Outbound => *s >= 400,
        });
        let error_type: Option<Cow<'static, str>> = if let Some(s) = error_status {
            Some(Cow::Owned(s.to_string()))
        } else if let Some(e) = upstream
            .and_then(|u| u.error)
            .filter(|_| direction == Direction::Outbound || received.is_none())
        {
            Some(Cow::Borrowed(e))
        } else if ending == Ending::BodyFailed {
            Some(Cow::Borrowed("body"))
        } else {
            None
        };

        match direction {
            Direction::Inbound => {
                attrs.push(("url.path", Value::from(head.uri.path().to_owned())));
                if let Some(q) = self.query(head.uri.query()) {
                    attrs.push(("url.query", Value::from(q)));
                }
                if let Some((host, port)) = head.server() {
                    attrs.push(("server.address", Value::from(host)));
                    if let Some(p) = port {
                        attrs.push(("server.port", Value::Int(i64::from(p))));
                    }
                }
                if let Some(client) = head.client_address() {
                    attrs.push(("client.address", Value::from(client)));
                }
                attrs.push((
                    "network.protocol.version",
                    Value::from(protocol_version(head.version)),
                ));
            }
            Direction::Outbound => {
                if let Some(u) = upstream {
                    let mut full = String::with_capacity(u.url_base.len() + 64);
                    full.push_str(&u.url_base);
                    full.push_str(head.uri.path());
                    if let Some(q) = self.query(head.uri.query()) {
                        full.push('?');
                        full.push_str(&q);
                    }
                    attrs.push(("url.full", Value::from(full)));
                    attrs.push(("server.address", Value::from(u.host.to_string())));
                    attrs.push(("server.port", Value::Int(i64::from(u.port))));
                    attrs.push((
                        "network.protocol.version",
                        Value::from(protocol_version(u.version)),
                    ));
                    if u.resend_count > 0 {
                        attrs.push((
                            "http.request.resend_count",
                            Value::Int(i64::from(u.resend_count)),
                        ));
                    }
                }
            }
        }
        if let Some(e) = &error_type {
            attrs.push(("error.type", Value::Str(e.clone())));
        }
        if let Some(f) = ctx.format {
            attrs.push(("attache.trace.format", Value::from(f.as_str())));
        }
        if let Some(r) = ctx.restored {
            let (restored, correlation) = match r {
                Restored::Hit => (true, "trace_context"),
                Restored::Miss => (false, "trace_context"),
                Restored::SingleInFlight => (true, "single_in_flight"),
                Restored::NoContext | Restored::Ambiguous => (false, "none"),
            };
            attrs.push(("attache.restored", Value::Bool(restored)));
            attrs.push(("attache.correlation", Value::from(correlation)));
        }
        SpanRecord {
            direction,
            name,
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_id: ctx.parent_id,
            remote_parent: ctx.parent_id.is_some(),
            trace_state: ctx.tracestate.clone(),
            start_unix_nanos,
            end_unix_nanos,
            attributes: attrs,
            error: error_type.is_some(),
        }
    }
}

/// The span name and `http.request.method` value of a method.
fn method_name(m: &Method) -> (Cow<'static, str>, &'static str) {
    let known = match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ if m.as_str() == "QUERY" => "QUERY",
        _ => return (Cow::Borrowed("HTTP"), "_OTHER"),
    };
    (Cow::Borrowed(known), known)
}

pub fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A parameter of the first element of a `Forwarded` header (RFC 7239), unquoted.
fn forwarded_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let first = header.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// `1.2.3.4:5`, `[::1]:5` → the address alone.
fn strip_port(v: &str) -> &str {
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match v.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    }
}

fn split_host_port(raw: &str) -> (String, Option<u16>) {
    if let Some(rest) = raw.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host.to_owned(), port);
    }
    match raw.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().ok()),
        _ => (raw.to_owned(), None),
    }
}

impl SpanRecord {
    /// The span as one JSON line, for `console: true`.
    pub fn to_json_line(&self) -> String {
        let mut attrs = serde_json::Map::new();
        for (k, v) in &self.attributes {
            let v = match v {
                Value::Str(s) => serde_json::Value::from(s.as_ref()),
                Value::Int(i) => serde_json::Value::from(*i),
                Value::Bool(b) => serde_json::Value::from(*b),
            };
            attrs.insert((*k).to_owned(), v);
        }
        let mut line = serde_json::json!({
            "span": self.name,
            "kind": match self.direction {
                Direction::Inbound => "server",
                Direction::Outbound => "client",
            },
            "trace_id": format!("{:032x}", self.trace_id.0),
            "span_id": format!("{:016x}", self.span_id.0),
            "parent_span_id": self.parent_id.map(|p| format!("{:016x}", p.0)),
            "duration_ms": self.end_unix_nanos.saturating_sub(self.start_unix_nanos) as f64 / 1e6,
            "status": if self.error { "error" } else { "unset" },
            "attributes": attrs,
        })
        .to_string();
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SpanSettings {
        SpanSettings {
            url_query: QueryMode::Redacted,
            redact_query_keys: vec!["token".into()],
        }
    }

    #[test]
    fn sensitive_query_values_are_redacted() {
        let s = settings();
        assert_eq!(
            s.query(Some("x=1&sig=s")).as_deref(),
            Some("x=1&sig=REDACTED")
        );
        assert_eq!(
            s.query(Some(
                "token=t&AWSAccessKeyId=a&flag&X-Goog-Signature=g&Signature=z"
            ))
            .as_deref(),
            Some(
                "token=REDACTED&AWSAccessKeyId=REDACTED&flag&X-Goog-Signature=REDACTED&Signature=REDACTED"
            )
        );
        assert_eq!(s.query(Some("")), None);
        let omit = SpanSettings {
            url_query: QueryMode::Omit,
            ..settings()
        };
        assert_eq!(omit.query(Some("x=1")), None);
        let full = SpanSettings {
            url_query: QueryMode::Full,
            ..settings()
        };
        assert_eq!(full.query(Some("sig=s")).as_deref(), Some("sig=s"));
    }

    #[test]
    fn client_and_server_addresses_follow_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::HOST,
            HeaderValue::from_static("app.local:8080"),
        );
        let peer = Some(SocketAddr::from(([10, 0, 0, 9], 5555)));
        let uri: Uri = "/a".parse().unwrap();
        let head = RequestHead::of(&Method::GET, &uri, Version::HTTP_11, &h, peer);
        assert_eq!(head.client_address().as_deref(), Some("10.0.0.9"));
        assert_eq!(head.server(), Some(("app.local".into(), Some(8080))));

        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        h.insert("x-forwarded-host", HeaderValue::from_static("shop.example"));
        let head = RequestHead::of(&Method::GET, &uri, Version::HTTP_11, &h, peer);
        assert_eq!(head.client_address().as_deref(), Some("1.1.1.1"));
        assert_eq!(head.server(), Some(("shop.example".into(), None)));

        h.insert(
            http::header::FORWARDED,
            HeaderValue::from_static(
                "for=\"[2001:db8::1]:4711\";host=api.example:443, for=3.3.3.3",
            ),
        );
        let head = RequestHead::of(&Method::GET, &uri, Version::HTTP_11, &h, peer);
        assert_eq!(head.client_address().as_deref(), Some("2001:db8::1"));
        assert_eq!(head.server(), Some(("api.example".into(), Some(443))));
    }

    #[test]
    fn unknown_methods_name_the_span_http() {
        assert_eq!(method_name(&Method::GET).0, "GET");
        let foo = Method::from_bytes(b"FOO").unwrap();
        assert_eq!(method_name(&foo), (Cow::Borrowed("HTTP"), "_OTHER"));
        let query = Method::from_bytes(b"QUERY").unwrap();
        assert_eq!(method_name(&query).1, "QUERY");
    }
}
