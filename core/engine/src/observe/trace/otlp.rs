//! The OTLP trace messages the exporter sends, and the spans of a finished request.
//!
//! The messages are the subset of opentelemetry-proto (`collector/trace/v1`, `trace/v1`,
//! `common/v1`, `resource/v1`) that pymesh fills in, written as prost derive structs with the
//! field numbers of those .proto files: prost encodes them without protoc or a build
//! script, and the `opentelemetry-proto` crate would bring tonic and a code generator for
//! four small messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Version;

use crate::observe::{Flags, Record};

/// `opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub(crate) resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub(crate) resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub(crate) attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub(crate) scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub(crate) trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub(crate) name: String,
    /// `Span.SpanKind`: [`KIND_SERVER`] or [`KIND_CLIENT`].
    #[prost(int32, tag = "6")]
    pub(crate) kind: i32,
    #[prost(fixed64, tag = "7")]
    pub(crate) start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub(crate) end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub(crate) attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub(crate) status: Option<Status>,
    /// The W3C trace flags in the low 8 bits.
    #[prost(fixed32, tag = "16")]
    pub(crate) flags: u32,
}

pub(crate) const KIND_SERVER: i32 = 2;
pub(crate) const KIND_CLIENT: i32 = 3;
pub(crate) const STATUS_ERROR: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Status {
    #[prost(string, tag = "2")]
    pub(crate) message: String,
    /// `Status.StatusCode`: 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub(crate) code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KeyValue {
    #[prost(string, tag = "1")]
    pub(crate) key: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3")]
    pub(crate) value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }) }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, Value::String(value.to_owned()))
}

fn int(key: &str, value: impl Into<i64>) -> KeyValue {
    kv(key, Value::Int(value.into()))
}

/// The spans a record makes: SERVER, and CLIENT when the request went upstream.
pub(crate) fn spans_of(record: &Record) -> u64 {
    if record.attempts > 0 {
        2
    } else {
        1
    }
}

/// The request that carries `spans` for the service `service_name`.
pub(crate) fn request(service_name: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![text("service.name", service_name)] }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "pymesh".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                spans,
            }],
        }],
    }
}

/// The flags that mean the proxy failed the request (not the client, not a policy doing
/// what it was told).
const FAILURE: [Flags; 7] = [
    Flags::NO_HEALTHY_UPSTREAM,
    Flags::UPSTREAM_CONNECT_FAILURE,
    Flags::UPSTREAM_OVERFLOW,
    Flags::UPSTREAM_TIMEOUT,
    Flags::UPSTREAM_RESET,
    Flags::RETRY_LIMIT_EXCEEDED,
    Flags::DOWNSTREAM_TERMINATED,
];

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `host` and `port` of an authority (`[::1]:80`, `example.com`).
fn host_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            (host.trim_start_matches('[').trim_end_matches(']'), port.parse().ok())
        }
        _ => (authority, None),
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The SERVER span of `record`, and its CLIENT span when the request went upstream. The
/// record must carry a trace context.
pub(crate) fn spans(record: &Record, out: &mut Vec<Span>) {
    let Some(ctx) = &record.trace else { return };
    let d = &record.detail;
    let start = nanos(d.time);
    let end = start.saturating_add(u64::try_from(record.duration.as_nanos()).unwrap_or(u64::MAX));
    let trace_state = ctx.trace_state.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default();
    let flags_text = record.flags.text();
    let failed = FAILURE.iter().any(|f| record.flags.contains(*f));
    let status = |error: bool| {
        Some(Status {
            message: if error { flags_text.clone() } else { String::new() },
            code: if error { STATUS_ERROR } else { 0 },
        })
    };
    let method = d.method.as_str();
    let path = d.path().split_once('?').map_or(d.path(), |(p, _)| p);

    let mut attributes = vec![
        text("http.request.method", method),
        text("url.path", path),
        text("network.protocol.name", "http"),
        text("network.protocol.version", protocol_version(d.version)),
        int("http.response.status_code", record.status),
        text("client.address", &d.peer.ip().to_string()),
        text("pymesh.listener", &record.listener),
        int("pymesh.attempts", record.attempts),
        text("pymesh.flags", &flags_text),
        int("http.response.body.size", i64::try_from(record.response_bytes).unwrap_or(i64::MAX)),
    ];
    let (host, port) = host_port(d.authority());
    if !host.is_empty() {
        attributes.push(text("server.address", host));
    }
    if let Some(port) = port {
        attributes.push(int("server.port", port));
    }
    if let Some(route) = &record.route {
        attributes.push(text("pymesh.route", route));
    }
    if let Some(cluster) = &record.cluster {
        attributes.push(text("pymesh.cluster", cluster));
    }
    if let Some(grpc) = record.grpc_status {
        attributes.push(int("rpc.grpc.status_code", grpc));
    }
    if !d.request_id().is_empty() {
        attributes.push(text("pymesh.request_id", d.request_id()));
    }
    if !d.user_agent().is_empty() {
        attributes.push(text("user_agent.original", d.user_agent()));
    }
    let name = match &record.route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    out.push(Span {
        trace_id: ctx.trace_id.to_vec(),
        span_id: ctx.span_id.to_vec(),
        trace_state: trace_state.to_owned(),
        parent_span_id: ctx.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name,
        kind: KIND_SERVER,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: status(record.status >= 500 || failed),
        flags: 1,
    });

    if record.attempts == 0 {
        return;
    }
    let sent = start.saturating_add(
        u64::try_from(record.upstream_sent.unwrap_or(Duration::ZERO).as_nanos()).unwrap_or(u64::MAX),
    );
    let mut attributes = vec![
        text("http.request.method", method),
        text("url.path", path),
        int("http.response.status_code", record.status),
        int("pymesh.attempts", record.attempts),
        text("pymesh.flags", &flags_text),
    ];
    if record.attempts > 1 {
        attributes.push(int("http.request.resend_count", record.attempts - 1));
    }
    if let Some(endpoint) = &record.endpoint {
        attributes.push(text("server.address", endpoint.host()));
        if let Some(port) = endpoint.port_u16() {
            attributes.push(int("server.port", port));
        }
    }
    if let Some(route) = &record.route {
        attributes.push(text("pymesh.route", route));
    }
    if let Some(cluster) = &record.cluster {
        attributes.push(text("pymesh.cluster", cluster));
    }
    if let Some(grpc) = record.grpc_status {
        attributes.push(int("rpc.grpc.status_code", grpc));
    }
    let name = match &record.cluster {
        Some(cluster) => format!("{method} {cluster}"),
        None => method.to_owned(),
    };
    out.push(Span {
        trace_id: ctx.trace_id.to_vec(),
        span_id: ctx.client_span_id.to_vec(),
        trace_state: trace_state.to_owned(),
        parent_span_id: ctx.span_id.to_vec(),
        name,
        kind: KIND_CLIENT,
        start_time_unix_nano: sent.min(end),
        end_time_unix_nano: end,
        attributes,
        status: status(record.status >= 400 || failed),
        flags: 1,
    });
}
