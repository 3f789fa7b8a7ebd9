//! OTLP encoding: spans written straight into the protobuf of an
//! `ExportTraceServiceRequest`, from the record and its borrowed attributes: no intermediate
//! message structs, no copied strings. Field numbers are those of opentelemetry-proto's
//! `trace.proto`; a test decodes the result with the generated types.

use opentelemetry_proto::tonic::trace::v1::{span, status};
use prost::encoding::{encode_varint, encoded_len_varint};

use super::span::SpanRecord;
use crate::facts::Value;
use crate::metrics::Direction;

const LEN: u32 = 2;

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    encode_varint(u64::from((field << 3) | wire), buf);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_key(buf, field, LEN);
    encode_varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

/// An `attributes` entry: `KeyValue { key = 1, value = 2: AnyValue { string = 1 | bool = 2 |
/// int = 3 } }`.
fn put_attribute(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value<'_>) {
    let any_len = match value {
        Value::Str(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
        Value::Int(i) => 1 + encoded_len_varint(*i as u64),
        Value::Bool(_) => 2,
    };
    let kv_len = 1
        + encoded_len_varint(key.len() as u64)
        + key.len()
        + 1
        + encoded_len_varint(any_len as u64)
        + any_len;
    put_key(buf, field, LEN);
    encode_varint(kv_len as u64, buf);
    put_bytes(buf, 1, key.as_bytes());
    put_key(buf, 2, LEN);
    encode_varint(any_len as u64, buf);
    match value {
        Value::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        Value::Bool(b) => {
            put_key(buf, 2, 0);
            buf.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_key(buf, 3, 0);
            encode_varint(*i as u64, buf);
        }
    }
}

/// The `Span` message of a record.
fn encode_span(s: &SpanRecord, buf: &mut Vec<u8>) {
    // Low byte: the W3C flags (sampled); bits 8 and 9: whether the parent is remote is
    // known, and is it.
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    put_bytes(buf, 1, &s.trace_id.0.to_be_bytes());
    put_bytes(buf, 2, &s.span_id.0.to_be_bytes());
    if let Some(ts) = s.trace_state.as_ref().and_then(|v| v.to_str().ok()) {
        put_bytes(buf, 3, ts.as_bytes());
    }
    if let Some(p) = s.parent_id {
        put_bytes(buf, 4, &p.0.to_be_bytes());
    }
    put_bytes(buf, 5, s.name().as_bytes());
    let kind = match s.direction {
        Direction::Inbound => span::SpanKind::Server,
        Direction::Outbound => span::SpanKind::Client,
    };
    put_key(buf, 6, 0);
    encode_varint(kind as u64, buf);
    put_key(buf, 7, 1);
    buf.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    put_key(buf, 8, 1);
    buf.extend_from_slice(&s.end_unix_nanos.to_le_bytes());
    s.attributes(|k, v| put_attribute(buf, 9, k, &v));
    // events = 11: Event { time_unix_nano = 1 (fixed64), name = 2, attributes = 3 }
    let mut event = Vec::new();
    s.events(&mut |name, write| {
        event.clear();
        put_key(&mut event, 1, 1);
        event.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
        put_bytes(&mut event, 2, name.as_bytes());
        write(&mut |k, v| put_attribute(&mut event, 3, k, &v));
        put_bytes(buf, 11, &event);
    });
    if s.error_type().is_some() {
        // Status { code = 3: ERROR }
        put_key(buf, 15, LEN);
        encode_varint(2, buf);
        put_key(buf, 3, 0);
        encode_varint(status::StatusCode::Error as u64, buf);
    }
    let mut flags = 0x01 | HAS_IS_REMOTE;
    if s.remote_parent() {
        flags |= IS_REMOTE;
    }
    put_key(buf, 16, 5);
    buf.extend_from_slice(&flags.to_le_bytes());
}

/// `ExportTraceServiceRequest { resource_spans = 1: ResourceSpans { resource = 1,
/// scope_spans = 2: ScopeSpans { scope = 1, spans = 2 } } }`.
pub fn encode_request(resource: &[u8], scope: &[u8], spans: &[SpanRecord]) -> Vec<u8> {
    let mut scope_spans = Vec::with_capacity(spans.len() * 512 + scope.len() + 8);
    put_bytes(&mut scope_spans, 1, scope);
    let mut one = Vec::with_capacity(512);
    for span in spans {
        one.clear();
        encode_span(span, &mut one);
        put_bytes(&mut scope_spans, 2, &one);
    }
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
    put_bytes(&mut resource_spans, 1, resource);
    put_bytes(&mut resource_spans, 2, &scope_spans);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    put_bytes(&mut request, 1, &resource_spans);
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::UpstreamInfo;
    use crate::telemetry::span::{Ending, QueryMode, RequestHead, SpanSettings};
    use crate::trace_context::propagate::Restored;
    use crate::trace_context::{Format, SpanId, TraceId};
    use http::{HeaderValue, Uri};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    use std::sync::Arc;

    fn record(direction: Direction, status: u16) -> SpanRecord {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("shop:8080"));
        h.insert(http::header::USER_AGENT, HeaderValue::from_static("curl/8"));
        let uri: Uri = "/pay?x=1&sig=s".parse().unwrap();
        let method = http::Method::from_bytes(b"FOO").unwrap();
        let peer = Some(std::net::SocketAddr::from(([10, 1, 2, 3], 4000)));
        SpanRecord {
            direction,
            trace_id: TraceId(0x4bf92f3577b34da6a3ce929d0e0e4736),
            span_id: SpanId(0x1111111111111111),
            parent_id: Some(SpanId(0x00f067aa0ba902b7)),
            trace_state: Some(HeaderValue::from_static("rojo=1")),
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            head: RequestHead::of(&method, &uri, http::Version::HTTP_11, &h, peer),
            status: Some(status),
            upstream: Some(UpstreamInfo {
                name: "payments".into(),
                url_base: "http://REDACTED:REDACTED@pay:8080".into(),
                host: "pay".into(),
                port: 8080,
                version: http::Version::HTTP_2,
                resend_count: 1,
                error: None,
            }),
            ending: Ending::Complete,
            format: Some(Format::B3),
            restored: Some(Restored::Hit),
            facts: Default::default(),
            settings: Arc::new(SpanSettings {
                url_query: QueryMode::Redacted,
                redact_query_keys: Vec::new(),
            }),
        }
    }

    #[test]
    fn hand_encoded_spans_decode_with_the_generated_types() {
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("svc".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let scope = InstrumentationScope {
            name: "attache".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let spans = [
            record(Direction::Inbound, 503),
            record(Direction::Outbound, 200),
        ];
        let bytes = encode_request(&resource, &scope, &spans);
        let req = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let rs = &req.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0].key,
            "service.name"
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "attache");
        assert_eq!(ss.spans.len(), 2);
        let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        let server = &ss.spans[0];
        assert_eq!(
            server.trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()
        );
        assert_eq!(server.span_id, 0x1111111111111111u64.to_be_bytes());
        assert_eq!(server.parent_span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert_eq!(server.trace_state, "rojo=1");
        assert_eq!(server.name, "HTTP");
        assert_eq!(server.kind, span::SpanKind::Server as i32);
        assert_eq!(
            (server.start_time_unix_nano, server.end_time_unix_nano),
            (1_000, 2_000)
        );
        assert_eq!(server.flags, 0x301);
        assert_eq!(
            server.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        use any_value::Value as V;
        assert_eq!(
            attr(server, "http.request.method"),
            Some(V::StringValue("_OTHER".into()))
        );
        assert_eq!(
            attr(server, "http.request.method_original"),
            Some(V::StringValue("FOO".into()))
        );
        assert_eq!(
            attr(server, "url.query"),
            Some(V::StringValue("x=1&sig=REDACTED".into()))
        );
        assert_eq!(
            attr(server, "server.address"),
            Some(V::StringValue("shop".into()))
        );
        assert_eq!(attr(server, "server.port"), Some(V::IntValue(8080)));
        assert_eq!(
            attr(server, "client.address"),
            Some(V::StringValue("10.1.2.3".into()))
        );
        assert_eq!(
            attr(server, "http.response.status_code"),
            Some(V::IntValue(503))
        );
        assert_eq!(
            attr(server, "error.type"),
            Some(V::StringValue("503".into()))
        );
        assert_eq!(
            attr(server, "attache.trace.format"),
            Some(V::StringValue("b3".into()))
        );

        let client = &ss.spans[1];
        assert_eq!(client.kind, span::SpanKind::Client as i32);
        assert!(client.status.is_none(), "CLIENT 200 is Unset");
        assert_eq!(
            attr(client, "url.full"),
            Some(V::StringValue(
                "http://REDACTED:REDACTED@pay:8080/pay?x=1&sig=REDACTED".into()
            ))
        );
        assert_eq!(
            attr(client, "http.request.resend_count"),
            Some(V::IntValue(1))
        );
        assert_eq!(
            attr(client, "network.protocol.version"),
            Some(V::StringValue("2".into()))
        );
        assert_eq!(attr(client, "attache.restored"), Some(V::BoolValue(true)));
        assert!(attr(client, "url.path").is_none());
    }
}
