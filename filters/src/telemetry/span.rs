//! One finished span per request and leg (specs/trace-context.md §8): the SERVER span of the
//! inbound leg, the CLIENT span of the outbound leg.
//!
//! Only sampled exchanges that have somewhere to go become a [`SpanRecord`], and even then the
//! request path only moves what it already holds into it (the request head's shared header
//! values, the trace decision, the status). The attributes, which follow the stable
//! OpenTelemetry HTTP semantic conventions, are produced where the span is encoded, in the
//! export task, straight into the OTLP message.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Uri, Version};

use crate::facts::{Facts, UpstreamInfo, Value};
use crate::metrics::Direction;
use crate::trace_context::propagate::{Restored, TraceCtx};
use crate::trace_context::{Format, SpanId, TraceId};

/// A finished span, ready for export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub direction: Direction,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    /// The `tracestate` forwarded with this span as parent.
    pub trace_state: Option<HeaderValue>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub head: RequestHead,
    /// The status attache sent (inbound) or passed on (outbound).
    pub status: Option<u16>,
    pub upstream: Option<UpstreamInfo>,
    pub ending: Ending,
    /// The format a continued context arrived in.
    pub format: Option<Format>,
    /// Outbound with restoration on: what it found.
    pub restored: Option<Restored>,
    /// What the layers below handed up (flag decisions, the idempotency outcome, ...).
    pub facts: Facts,
    pub settings: Arc<SpanSettings>,
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

/// What the span and the access log need of the request, copied when it arrives into one
/// small buffer: a queued span must not pin the connection's read buffer, which the header
/// values would otherwise share.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub version: Version,
    pub peer: Option<SocketAddr>,
    /// It came over TLS (`url.scheme` is `https`).
    pub secure: bool,
    text: String,
    path: Field,
    query: Option<Field>,
    authority: Option<Field>,
    user_agent: Option<Field>,
    forwarded: Option<Field>,
    x_forwarded_for: Option<Field>,
    x_forwarded_host: Option<Field>,
}

/// A range of [`RequestHead::text`].
#[derive(Debug, Clone, Copy)]
struct Field(u32, u32);

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
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| header(http::header::HOST));
        let parts = [
            Some(uri.path()),
            uri.query(),
            authority,
            header(http::header::USER_AGENT),
            header(http::header::FORWARDED),
            header(XFF),
            header(XFH),
        ];
        let len = parts.iter().flatten().map(|p| p.len()).sum();
        let mut text = String::with_capacity(len);
        let mut fields = parts.map(|p| {
            p.map(|p| {
                let start = text.len() as u32;
                text.push_str(p);
                Field(start, text.len() as u32)
            })
        });
        let mut take = |i: usize| fields[i].take();
        Self {
            method: method.clone(),
            version,
            peer,
            secure: false,
            path: take(0).unwrap_or(Field(0, 0)),
            query: take(1),
            authority: take(2),
            user_agent: take(3),
            forwarded: take(4),
            x_forwarded_for: take(5),
            x_forwarded_host: take(6),
            text,
        }
    }

    fn get(&self, f: Option<Field>) -> Option<&str> {
        f.and_then(|Field(a, b)| self.text.get(a as usize..b as usize))
    }

    pub fn path(&self) -> &str {
        self.get(Some(self.path)).unwrap_or("/")
    }

    pub fn query(&self) -> Option<&str> {
        self.get(self.query)
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.get(self.user_agent)
    }

    /// `:authority`, else `Host`: what the client addressed.
    pub fn authority(&self) -> Option<&str> {
        self.get(self.authority)
    }

    /// The original client: `Forwarded: for=`, the first `X-Forwarded-For`, else the peer.
    pub fn client_address(&self) -> Option<Cow<'_, str>> {
        if let Some(f) = self.get(self.forwarded)
            && let Some(v) = forwarded_param(f, "for")
        {
            return Some(Cow::Borrowed(strip_port(v)));
        }
        if let Some(first) = self
            .get(self.x_forwarded_for)
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            return Some(Cow::Borrowed(first));
        }
        self.peer.map(|p| Cow::Owned(ip_text(p.ip())))
    }

    /// The server the client meant: `Forwarded: host=`, `X-Forwarded-Host`, `:authority`,
    /// `Host`, split into host and port.
    fn server(&self) -> Option<(&str, Option<u16>)> {
        let forwarded = self
            .get(self.forwarded)
            .and_then(|f| forwarded_param(f, "host"));
        let xfh = self
            .get(self.x_forwarded_host)
            .and_then(|v| v.split(',').next())
            .map(str::trim);
        let raw = forwarded.or(xfh).or_else(|| self.authority())?;
        Some(crate::codec::host::split_host_port(raw))
    }
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

/// Settings that shape the attributes.
#[derive(Debug, Clone, Default)]
pub struct SpanSettings {
    pub url_query: QueryMode,
    pub redact_query_keys: Vec<String>,
}

impl SpanSettings {
    /// A query string per `url_query`; `None` when omitted or empty. Borrowed unless a
    /// value had to be redacted.
    pub fn query<'a>(&self, query: Option<&'a str>) -> Option<Cow<'a, str>> {
        let q = query.filter(|q| !q.is_empty())?;
        match self.url_query {
            QueryMode::Full => Some(Cow::Borrowed(q)),
            QueryMode::Omit => None,
            QueryMode::Redacted => {
                let sensitive = |k: &str| {
                    SENSITIVE_KEYS.contains(&k) || self.redact_query_keys.iter().any(|r| r == k)
                };
                let any = q
                    .split('&')
                    .any(|pair| pair.split_once('=').is_some_and(|(k, _)| sensitive(k)));
                if !any {
                    return Some(Cow::Borrowed(q));
                }
                let mut out = String::with_capacity(q.len());
                for (i, pair) in q.split('&').enumerate() {
                    if i > 0 {
                        out.push('&');
                    }
                    match pair.split_once('=') {
                        Some((k, _)) if sensitive(k) => {
                            out.push_str(k);
                            out.push_str("=REDACTED");
                        }
                        _ => out.push_str(pair),
                    }
                }
                Some(Cow::Owned(out))
            }
        }
    }
}

impl SpanRecord {
    /// Builds a record from what the observe layer holds at the end of an exchange.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        direction: Direction,
        head: RequestHead,
        ctx: &TraceCtx,
        status: Option<u16>,
        upstream: Option<UpstreamInfo>,
        ending: Ending,
        (start_unix_nanos, end_unix_nanos): (u64, u64),
        settings: Arc<SpanSettings>,
    ) -> Self {
        Self {
            direction,
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_id: ctx.parent_id,
            trace_state: ctx.tracestate.clone(),
            start_unix_nanos,
            end_unix_nanos,
            head,
            status,
            upstream,
            ending,
            format: ctx.format,
            restored: ctx.restored,
            facts: Facts::default(),
            settings,
        }
    }

    /// The span name: the method, or `HTTP` for methods outside RFC 9110, PATCH and QUERY.
    pub fn name(&self) -> &'static str {
        method_name(&self.head.method).0
    }

    /// A continued context's parent is in another process.
    pub fn remote_parent(&self) -> bool {
        self.parent_id.is_some()
    }

    /// The status this leg saw: SERVER sent one unless the exchange broke; CLIENT received
    /// one unless the forwarder reports an error instead.
    fn received(&self) -> Option<u16> {
        match self.direction {
            Direction::Inbound => self.status,
            Direction::Outbound => self
                .status
                .filter(|_| self.upstream.as_ref().is_none_or(|u| u.error.is_none())),
        }
    }

    /// `error.type`: the status code (SERVER 5xx, CLIENT 4xx and 5xx), else the failure
    /// without a response. A caller leaving early is not an error.
    pub fn error_type(&self) -> Option<Cow<'static, str>> {
        let received = self.received();
        let error_status = received.filter(|s| match self.direction {
            Direction::Inbound => *s >= 500,
            Direction::Outbound => *s >= 400,
        });
        if let Some(s) = error_status {
            return Some(Cow::Owned(s.to_string()));
        }
        if let Some(e) = self
            .upstream
            .as_ref()
            .and_then(|u| u.error)
            .filter(|_| self.direction == Direction::Outbound || received.is_none())
        {
            return Some(Cow::Borrowed(e));
        }
        (self.ending == Ending::BodyFailed).then_some(Cow::Borrowed("body"))
    }

    /// Calls `f` with each attribute, in a stable order.
    pub fn attributes(&self, mut f: impl FnMut(&'static str, Value<'_>)) {
        let head = &self.head;
        let known = method_name(&head.method).1;
        f("http.request.method", Value::from(known));
        if known == "_OTHER" {
            f(
                "http.request.method_original",
                Value::from(head.method.as_str()),
            );
        }
        if let Some(ua) = head.user_agent() {
            f("user_agent.original", Value::from(ua));
        }
        f(
            "url.scheme",
            Value::from(if head.secure { "https" } else { "http" }),
        );
        if let Some(s) = self.received() {
            f("http.response.status_code", Value::Int(i64::from(s)));
        }
        match self.direction {
            Direction::Inbound => {
                f("url.path", Value::from(head.path()));
                if let Some(q) = self.settings.query(head.query()) {
                    f("url.query", Value::Str(q));
                }
                if let Some((host, port)) = head.server() {
                    f("server.address", Value::from(host));
                    if let Some(p) = port {
                        f("server.port", Value::Int(i64::from(p)));
                    }
                }
                if let Some(client) = head.client_address() {
                    f("client.address", Value::Str(client));
                }
                f(
                    "network.protocol.version",
                    Value::from(protocol_version(head.version)),
                );
            }
            Direction::Outbound => {
                if let Some(u) = &self.upstream {
                    let query = self.settings.query(head.query());
                    let path = head.path();
                    let mut full = String::with_capacity(
                        u.url_base.len() + path.len() + query.as_ref().map_or(0, |q| q.len() + 1),
                    );
                    full.push_str(&u.url_base);
                    full.push_str(path);
                    if let Some(q) = query {
                        full.push('?');
                        full.push_str(&q);
                    }
                    f("url.full", Value::from(full));
                    f("server.address", Value::from(&*u.host));
                    f("server.port", Value::Int(i64::from(u.port)));
                    f(
                        "network.protocol.version",
                        Value::from(protocol_version(u.version)),
                    );
                    if u.resend_count > 0 {
                        f(
                            "http.request.resend_count",
                            Value::Int(i64::from(u.resend_count)),
                        );
                    }
                }
            }
        }
        if let Some(e) = self.error_type() {
            f("error.type", Value::Str(e));
        }
        if let Some(fmt) = self.format {
            f("attache.trace.format", Value::from(fmt.as_str()));
        }
        if let Some(r) = self.restored {
            let (restored, correlation) = match r {
                Restored::Hit => (true, "trace_context"),
                Restored::Miss => (false, "trace_context"),
                Restored::SingleInFlight => (true, "single_in_flight"),
                Restored::NoContext | Restored::Ambiguous => (false, "none"),
            };
            f("attache.restored", Value::Bool(restored));
            f("attache.correlation", Value::from(correlation));
        }
        for fact in self.facts.iter() {
            fact.attributes(&mut f);
        }
    }
}

/// The span name and `http.request.method` value of a method.
fn method_name(m: &Method) -> (&'static str, &'static str) {
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
        _ => return ("HTTP", "_OTHER"),
    };
    (known, known)
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

/// An IP address as text; IPv4 without `core::fmt`, which costs more than the rest of an
/// access log line.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if octet >= 100 {
                    s.push((b'0' + octet / 100) as char);
                }
                if octet >= 10 {
                    s.push((b'0' + (octet / 10) % 10) as char);
                }
                s.push((b'0' + octet % 10) as char);
            }
            s
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
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

impl SpanRecord {
    /// The span's events, from its facts: `f(name, write)` for each, `write` writing the
    /// event's attributes.
    pub fn events(&self, f: crate::facts::Events<'_>) {
        for fact in self.facts.iter() {
            fact.events(f);
        }
    }

    /// The span as one JSON line, for `console: true`.
    pub fn to_json_line(&self) -> String {
        let mut attrs = serde_json::Map::new();
        self.attributes(|k, v| {
            let v = match v {
                Value::Str(s) => serde_json::Value::from(s.as_ref()),
                Value::Int(i) => serde_json::Value::from(i),
                Value::Bool(b) => serde_json::Value::from(b),
            };
            attrs.insert(k.to_owned(), v);
        });
        let mut line = serde_json::json!({
            "span": self.name(),
            "kind": match self.direction {
                Direction::Inbound => "server",
                Direction::Outbound => "client",
            },
            "trace_id": format!("{:032x}", self.trace_id.0),
            "span_id": format!("{:016x}", self.span_id.0),
            "parent_span_id": self.parent_id.map(|p| format!("{:016x}", p.0)),
            "duration_ms": self.end_unix_nanos.saturating_sub(self.start_unix_nanos) as f64 / 1e6,
            "status": if self.error_type().is_some() { "error" } else { "unset" },
            "attributes": attrs,
        });
        let mut events = Vec::new();
        self.events(&mut |name, write| {
            let mut attrs = serde_json::Map::new();
            write(&mut |k, v| {
                let v = match v {
                    Value::Str(s) => serde_json::Value::from(s.as_ref()),
                    Value::Int(i) => serde_json::Value::from(i),
                    Value::Bool(b) => serde_json::Value::from(b),
                };
                attrs.insert(k.to_owned(), v);
            });
            events.push(serde_json::json!({"name": name, "attributes": attrs}));
        });
        if !events.is_empty() {
            line["events"] = serde_json::Value::Array(events);
        }
        let mut line = line.to_string();
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
        assert_eq!(head.server(), Some(("app.local", Some(8080))));

        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        h.insert("x-forwarded-host", HeaderValue::from_static("shop.example"));
        let head = RequestHead::of(&Method::GET, &uri, Version::HTTP_11, &h, peer);
        assert_eq!(head.client_address().as_deref(), Some("1.1.1.1"));
        assert_eq!(head.server(), Some(("shop.example", None)));

        h.insert(
            http::header::FORWARDED,
            HeaderValue::from_static(
                "for=\"[2001:db8::1]:4711\";host=api.example:443, for=3.3.3.3",
            ),
        );
        let head = RequestHead::of(&Method::GET, &uri, Version::HTTP_11, &h, peer);
        assert_eq!(head.client_address().as_deref(), Some("2001:db8::1"));
        assert_eq!(head.server(), Some(("api.example", Some(443))));
    }

    #[test]
    fn ipv4_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "10.0.0.9",
            "127.0.0.1",
            "192.168.100.255",
            "1.20.255.7",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(parsed), ip);
        }
        assert_eq!(ip_text("::1".parse().unwrap()), "::1");
    }

    #[test]
    fn unknown_methods_name_the_span_http() {
        assert_eq!(method_name(&Method::GET).0, "GET");
        let foo = Method::from_bytes(b"FOO").unwrap();
        assert_eq!(method_name(&foo), ("HTTP", "_OTHER"));
        let query = Method::from_bytes(b"QUERY").unwrap();
        assert_eq!(method_name(&query).1, "QUERY");
    }
}
