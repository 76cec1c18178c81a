use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, Version};
use prost::Message;

use super::context::{self, hex};
use super::otlp::{self, AnyValue, ExportTraceServiceRequest, Value};
use super::{SpanContext, TraceStats, Tracer};
use crate::config::TracingSpec;
use crate::observe::{Detail, Flags, Record};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn spec(sample_percent: f64) -> TracingSpec {
    TracingSpec {
        otlp_endpoint: "http://127.0.0.1:9/v1/traces".to_owned(),
        sample_percent,
        service_name: "pymesh".to_owned(),
        max_queue_spans: 64,
        batch_size: 16,
        flush_interval_ms: 1000,
        export_timeout_ms: 500,
        request_id: true,
        listeners: None,
    }
}

/// A tracer whose queue nobody reads: what `end` does is left in `rx` for the test.
fn tracer(sample_percent: f64, queue: usize) -> (Tracer, mpsc::Receiver<Arc<Record>>) {
    let (tx, rx) = mpsc::sync_channel(queue);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let threshold = (sample_percent / 100.0 * 4_294_967_296.0) as u64;
    let t = Tracer {
        spec: spec(sample_percent),
        threshold,
        request_id: true,
        queue: tx,
        stats: Arc::new(TraceStats::default()),
    };
    (t, rx)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap()
}

// === traceparent ===

#[test]
fn a_valid_traceparent_parses_and_formats_back() {
    let got = context::parse_traceparent(TP.as_bytes()).unwrap();
    let (trace, span) = got.ids.unwrap();
    assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&span), "00f067aa0ba902b7");
    assert_eq!(got.sampled, Some(true));
    assert_eq!(&context::format_traceparent(&trace, &span, true)[..], TP.as_bytes());
    let unsampled = context::parse_traceparent(TP.replace("-01", "-00").as_bytes()).unwrap();
    assert_eq!(unsampled.sampled, Some(false));
}

#[test]
fn malformed_traceparents_are_refused() {
    let cases = [
        "",
        "00",
        // Uppercase hex.
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        // Version ff is invalid; version 00 has exactly 55 characters.
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
        // All-zero ids.
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        // Wrong lengths, separators and characters.
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // A later version must separate what it adds with '-'.
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
    ];
    for case in cases {
        assert_eq!(context::parse_traceparent(case.as_bytes()), None, "{case:?}");
    }
    // A later version is read by its version-00 fields.
    let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
    assert!(context::parse_traceparent(future.as_bytes()).is_some());
}

// === B3 ===

#[test]
fn b3_single_headers_parse() {
    let full =
        context::parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
            .unwrap();
    assert_eq!(hex(&full.ids.unwrap().0), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(hex(&full.ids.unwrap().1), "e457b5a2e4d86bd1");
    assert_eq!(full.sampled, Some(true));
    assert!(!full.short_trace_id);

    let short = context::parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
    assert_eq!(hex(&short.ids.unwrap().0), "000000000000000064fe8b2a57d3eff7");
    assert!(short.short_trace_id);
    assert_eq!(short.sampled, None, "no decision: the proxy draws one");

    let debug = context::parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d").unwrap();
    assert_eq!(debug.sampled, Some(true));
    assert_eq!(
        context::parse_b3_single(b"0").unwrap(),
        context::Incoming { sampled: Some(false), ..Default::default() }
    );

    for bad in [
        "",
        "x",
        "64fe8b2a57d3eff7",
        "64FE8B2A57D3EFF7-e457b5a2e4d86bd1",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
        "64fe8b2a57d3eff7-0000000000000000-1",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
    ] {
        assert_eq!(context::parse_b3_single(bad.as_bytes()), None, "{bad:?}");
    }
}

#[test]
fn b3_multi_headers_parse() {
    let h = headers(&[
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "0"),
    ]);
    let got = context::parse_b3_multi(&h).unwrap();
    assert_eq!(hex(&got.ids.unwrap().1), "e457b5a2e4d86bd1");
    assert_eq!(got.sampled, Some(false));
    let debug = headers(&[("x-b3-flags", "1")]);
    assert_eq!(context::parse_b3_multi(&debug).unwrap().sampled, Some(true));
    assert_eq!(context::parse_b3_multi(&HeaderMap::new()), None);
    let bad_ids = headers(&[("x-b3-traceid", "nothex"), ("x-b3-spanid", "e457b5a2e4d86bd1")]);
    assert_eq!(context::parse_b3_multi(&bad_ids).unwrap().ids, None);
}

// === begin: continue, start, propagate ===

#[test]
fn a_request_without_context_starts_a_trace_at_the_sampling_rate() {
    let (always, _rx) = tracer(100.0, 1);
    let (never, _rx2) = tracer(0.0, 1);
    for _ in 0..200 {
        let mut h = HeaderMap::new();
        let ctx = always.begin(&mut h).unwrap();
        assert!(ctx.sampled);
        assert_eq!(ctx.parent_span_id, None);
        let sent = context::parse_traceparent(get(&h, "traceparent").as_bytes()).unwrap();
        assert_eq!(
            sent.ids,
            Some((ctx.trace_id, ctx.client_span_id)),
            "the upstream's parent: the client span"
        );
        assert_ne!(ctx.span_id, ctx.client_span_id);
        assert_eq!(sent.sampled, Some(true));

        let mut h = HeaderMap::new();
        let ctx = never.begin(&mut h).unwrap();
        assert!(!ctx.sampled);
        assert!(get(&h, "traceparent").ends_with("-00"), "the decision travels on");
    }
}

#[test]
fn a_caller_s_sampled_trace_is_continued_whatever_the_rate() {
    let (never, _rx) = tracer(0.0, 1);
    let mut h = headers(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")]);
    let ctx = never.begin(&mut h).unwrap();
    assert!(ctx.sampled);
    assert_eq!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ctx.parent_span_id.map(|p| hex(&p)).as_deref(), Some("00f067aa0ba902b7"));
    let sent = get(&h, "traceparent");
    assert_eq!(sent, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", hex(&ctx.client_span_id)));
    assert_eq!(get(&h, "tracestate"), "congo=t61rcWkgMzE");
    assert_eq!(ctx.trace_state.unwrap(), "congo=t61rcWkgMzE");
}

#[test]
fn a_caller_s_unsampled_trace_stays_unsampled() {
    let (always, _rx) = tracer(100.0, 1);
    let mut h = headers(&[("traceparent", &TP.replace("-01", "-00"))]);
    let ctx = always.begin(&mut h).unwrap();
    assert!(!ctx.sampled);
    assert_eq!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(get(&h, "traceparent").ends_with("-00"));
}

#[test]
fn a_malformed_traceparent_is_replaced_not_propagated() {
    let (always, _rx) = tracer(100.0, 1);
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let mut h = headers(&[("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")]);
    let ctx = always.begin(&mut h).unwrap();
    assert_eq!(ctx.parent_span_id, None, "a new trace");
    let sent = get(&h, "traceparent");
    assert_ne!(sent, bad);
    assert_eq!(
        context::parse_traceparent(sent.as_bytes()).unwrap().ids,
        Some((ctx.trace_id, ctx.client_span_id))
    );
    assert!(h.get("tracestate").is_none(), "the state of a trace not continued goes too");
    // Two traceparent headers are one malformed one.
    let mut h = headers(&[("traceparent", TP), ("traceparent", TP)]);
    let ctx = always.begin(&mut h).unwrap();
    assert_ne!(hex(&ctx.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
}

#[test]
fn b3_in_b3_out() {
    let (never, _rx) = tracer(0.0, 1);
    let mut h = headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
    let ctx = never.begin(&mut h).unwrap();
    assert!(ctx.sampled);
    assert_eq!(ctx.parent_span_id.map(|p| hex(&p)).as_deref(), Some("e457b5a2e4d86bd1"));
    let b3 = get(&h, "b3");
    assert_eq!(b3, format!("64fe8b2a57d3eff7-{}-1-{}", hex(&ctx.client_span_id), hex(&ctx.span_id)));
    // The W3C header goes along, with the 64-bit id left-padded.
    assert_eq!(
        get(&h, "traceparent"),
        format!("00-000000000000000064fe8b2a57d3eff7-{}-01", hex(&ctx.client_span_id))
    );

    let mut h = headers(&[
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ]);
    let ctx = never.begin(&mut h).unwrap();
    assert_eq!(get(&h, "x-b3-traceid"), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(get(&h, "x-b3-spanid"), hex(&ctx.client_span_id));
    assert_eq!(get(&h, "x-b3-parentspanid"), hex(&ctx.span_id));
    assert_eq!(get(&h, "x-b3-sampled"), "1");
    assert!(h.get("b3").is_none(), "B3 goes on in the form it came in");
}

#[test]
fn a_request_id_is_set_when_absent_and_kept_when_present() {
    let (t, _rx) = tracer(0.0, 1);
    let mut h = HeaderMap::new();
    t.begin(&mut h);
    let id = get(&h, "x-request-id").to_owned();
    assert_eq!(id.len(), 36);
    let groups: Vec<&str> = id.split('-').collect();
    assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
    assert!(groups[2].starts_with('4'), "version 4: {id}");
    assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "RFC 4122 variant: {id}");
    let mut again = HeaderMap::new();
    t.begin(&mut again);
    assert_ne!(get(&again, "x-request-id"), id);

    let mut h = headers(&[("x-request-id", "mine")]);
    t.begin(&mut h);
    assert_eq!(get(&h, "x-request-id"), "mine");
}

// === end: the queue ===

fn record(ctx: SpanContext, attempts: u32, status: u16) -> Arc<Record> {
    let mut flags = Flags::default();
    if status == 503 {
        flags.set(Flags::RETRY_LIMIT_EXCEEDED);
    }
    Arc::new(Record {
        listener: "web".into(),
        route: Some("api".into()),
        cluster: Some("backend".into()),
        endpoint: Some(Authority::from_static("127.0.0.1:8081")),
        status,
        grpc_status: None,
        flags,
        attempts,
        response_bytes: 12,
        duration: Duration::from_millis(5),
        upstream_first_byte: Some(Duration::from_millis(4)),
        upstream_sent: Some(Duration::from_millis(1)),
        trace: Some(ctx),
        detail: Box::new(Detail::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            Method::GET,
            Version::HTTP_11,
            "127.0.0.1:5000".parse().unwrap(),
            ["example.com:8080", "/api/items?id=1", "req-1", "test"],
            Some(0),
            false,
        )),
    })
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let (t, rx) = tracer(100.0, 2);
    let ctx = t.begin(&mut HeaderMap::new()).unwrap();
    let started = Instant::now();
    for _ in 0..5 {
        t.end(&record(ctx.clone(), 1, 200));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(rx.try_iter().count(), 2, "the queue holds two");
    assert_eq!(t.stats.spans_dropped.get(), 6, "three requests of two spans each were dropped");
}

// === OTLP ===

fn attr<'a>(attrs: &'a [otlp::KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

#[test]
fn spans_encode_and_decode_with_their_ids_and_attributes() {
    let (t, _rx) = tracer(100.0, 1);
    let mut h = headers(&[("traceparent", TP)]);
    let ctx = t.begin(&mut h).unwrap();
    let rec = record(ctx.clone(), 3, 503);
    let mut spans = Vec::new();
    otlp::spans(&rec, &mut spans);
    let bytes = otlp::request("svc", spans).encode_to_vec();
    let back = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();

    let rs = &back.resource_spans[0];
    let service = &rs.resource.as_ref().unwrap().attributes[0];
    assert_eq!(service.key, "service.name");
    assert_eq!(service.value, Some(AnyValue { value: Some(Value::String("svc".into())) }));
    let spans = &rs.scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    let (server, client) = (&spans[0], &spans[1]);
    assert_eq!(server.kind, otlp::KIND_SERVER);
    assert_eq!(client.kind, otlp::KIND_CLIENT);
    assert_eq!(server.trace_id, ctx.trace_id.to_vec());
    assert_eq!(client.trace_id, ctx.trace_id.to_vec());
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.span_id, ctx.span_id.to_vec());
    assert_eq!(client.parent_span_id, ctx.span_id.to_vec());
    assert_eq!(client.span_id, ctx.client_span_id.to_vec());
    assert_eq!(server.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(server.end_time_unix_nano, 1_700_000_000_005_000_000);
    assert_eq!(client.start_time_unix_nano, 1_700_000_000_001_000_000);
    assert_eq!(server.status.as_ref().unwrap().code, otlp::STATUS_ERROR);
    assert_eq!(server.status.as_ref().unwrap().message, "URX");
    assert_eq!(attr(&server.attributes, "pymesh.route"), Some(&Value::String("api".into())));
    assert_eq!(attr(&server.attributes, "pymesh.attempts"), Some(&Value::Int(3)));
    assert_eq!(attr(&server.attributes, "url.path"), Some(&Value::String("/api/items".into())));
    assert_eq!(attr(&server.attributes, "server.address"), Some(&Value::String("example.com".into())));
    assert_eq!(attr(&server.attributes, "server.port"), Some(&Value::Int(8080)));
    assert_eq!(attr(&server.attributes, "http.response.status_code"), Some(&Value::Int(503)));
    assert_eq!(attr(&server.attributes, "network.protocol.version"), Some(&Value::String("1.1".into())));
    assert_eq!(attr(&client.attributes, "server.address"), Some(&Value::String("127.0.0.1".into())));
    assert_eq!(attr(&client.attributes, "server.port"), Some(&Value::Int(8081)));
    assert_eq!(attr(&client.attributes, "pymesh.cluster"), Some(&Value::String("backend".into())));
    assert_eq!(attr(&client.attributes, "http.request.resend_count"), Some(&Value::Int(2)));

    // A request answered locally has no client span.
    let mut local = Vec::new();
    otlp::spans(&record(ctx, 0, 404), &mut local);
    assert_eq!(local.len(), 1);
    assert_eq!(local[0].status.as_ref().unwrap().code, 0, "a 404 is not the proxy's failure");
}

// === config and export ===

#[test]
fn bad_tracing_config_is_refused_with_its_path() {
    let stats = || Arc::new(TraceStats::default());
    let mut s = spec(1.0);
    s.otlp_endpoint = "ftp://collector/v1/traces".into();
    assert_eq!(Tracer::new(&s, "tracing", stats()).unwrap_err().path, "tracing.otlp_endpoint");
    s.otlp_endpoint = "not a url".into();
    assert_eq!(Tracer::new(&s, "tracing", stats()).unwrap_err().path, "tracing.otlp_endpoint");
    let mut s = spec(100.5);
    assert_eq!(Tracer::new(&s, "tracing", stats()).unwrap_err().path, "tracing.sample_percent");
    s.sample_percent = f64::NAN;
    assert_eq!(Tracer::new(&s, "tracing", stats()).unwrap_err().path, "tracing.sample_percent");
    let mut s = spec(1.0);
    s.batch_size = 0;
    assert_eq!(Tracer::new(&s, "tracing", stats()).unwrap_err().path, "tracing.batch_size");
    let mut s = spec(1.0);
    s.batch_size = 65;
    assert_eq!(Tracer::new(&s, "tracing", stats()).unwrap_err().path, "tracing.batch_size");
}

#[test]
fn a_tracer_serves_the_same_spec_whatever_its_listeners() {
    let t = Tracer::new(&spec(1.0), "tracing", Arc::new(TraceStats::default())).unwrap();
    let mut other = spec(1.0);
    other.listeners = Some(vec!["web".into()]);
    assert!(t.serves(&other));
    assert!(!t.serves(&spec(2.0)));
}

/// Read one HTTP/1.1 request from `conn`: its head lines and its body.
fn read_request(conn: &mut std::net::TcpStream) -> (Vec<String>, Vec<u8>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push(line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn the_exporter_posts_otlp_protobuf_to_the_collector() {
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = collector.local_addr().unwrap();
    let mut s = spec(100.0);
    s.otlp_endpoint = format!("http://{addr}/v1/traces");
    s.batch_size = 2;
    let stats = Arc::new(TraceStats::default());
    let t = Tracer::new(&s, "tracing", Arc::clone(&stats)).unwrap();
    let ctx = t.begin(&mut HeaderMap::new()).unwrap();
    t.end(&record(ctx.clone(), 1, 200));

    collector.set_nonblocking(false).unwrap();
    let (mut conn, _) = collector.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (head, body) = read_request(&mut conn);
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
    assert!(head[0].starts_with("POST /v1/traces HTTP/1.1"), "{head:?}");
    assert!(head.iter().any(|l| l.eq_ignore_ascii_case("content-type: application/x-protobuf")), "{head:?}");
    let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].trace_id, ctx.trace_id.to_vec());

    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.spans_exported.get() < 2 {
        assert!(Instant::now() < deadline, "the export was not counted");
        // Poll interval of a bounded wait: the exporter thread counts after its POST.
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stats.spans_dropped.get(), 0);
}

#[test]
fn a_dead_collector_costs_dropped_spans_not_time() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut s = spec(100.0);
    s.otlp_endpoint = format!("http://{dead}/v1/traces");
    s.batch_size = 2;
    let stats = Arc::new(TraceStats::default());
    let t = Tracer::new(&s, "tracing", Arc::clone(&stats)).unwrap();
    let ctx = t.begin(&mut HeaderMap::new()).unwrap();
    let started = Instant::now();
    for _ in 0..100 {
        t.end(&record(ctx.clone(), 1, 200));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.export_failures.get() == 0 {
        assert!(Instant::now() < deadline, "the failed export was not counted");
        // Poll interval of a bounded wait: the exporter thread counts after its POST.
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(stats.spans_dropped.get() >= 2);
    assert_eq!(stats.spans_exported.get(), 0);
}

// === compiled with the snapshot ===

fn snapshot(tracing: &str) -> crate::config::Snapshot {
    let limits = r#"{"max_request_headers": 100, "max_request_header_bytes": 61440, "header_read_timeout_ms": 30000, "idle_timeout_ms": 3600000, "max_concurrent_streams": 100, "max_request_body_bytes": null}"#;
    let listener = |name: &str| {
        format!(
            r#"{{"name": "{name}", "listen": "127.0.0.1:0", "routes": [], "protocol": "http", "tls": null,
                "to": [], "sni_routes": [], "idle_timeout_ms": 1000, "limits": {limits}}}"#
        )
    };
    let text = format!(
        r#"{{"version": 1, "listeners": [{}, {}], "clusters": [], "tracing": {tracing}}}"#,
        listener("web"),
        listener("admin")
    );
    crate::config::Snapshot::from_json(&text).unwrap()
}

const TRACING: &str = r#"{"otlp_endpoint": "http://127.0.0.1:9/v1/traces", "sample_percent": 1.0,
    "service_name": "pymesh", "max_queue_spans": 64, "batch_size": 16, "flush_interval_ms": 1000,
    "export_timeout_ms": 500, "request_id": true, "listeners": LISTENERS}"#;

fn compiled(
    snap: &crate::config::Snapshot,
    old: Option<&Arc<Tracer>>,
) -> Result<crate::tables::Tables, crate::Error> {
    use crate::tables::{compile, HealthCache, UpstreamCache};
    let metrics = crate::metrics::Metrics::default();
    compile(snap, &[0, 1], &metrics, &UpstreamCache::new(), &HealthCache::new(), old).map(|(t, _)| t)
}

fn listener_tracer(tables: &crate::tables::Tables, slot: usize) -> Option<Arc<Tracer>> {
    match &*tables.listener(slot).unwrap().kind {
        crate::tables::ListenerKind::Http(h) => h.observe.tracer.clone(),
        _ => panic!("an http listener"),
    }
}

#[test]
fn the_tracer_is_kept_across_applies_while_its_config_is_unchanged() {
    let all = snapshot(&TRACING.replace("LISTENERS", "null"));
    let first = compiled(&all, None).unwrap();
    let tracer = first.tracer.clone().unwrap();
    assert!(Arc::ptr_eq(&listener_tracer(&first, 0).unwrap(), &tracer));
    assert!(Arc::ptr_eq(&listener_tracer(&first, 1).unwrap(), &tracer));

    // Only `web` traces now; the tracer (and its exporter) stays.
    let web_only = snapshot(&TRACING.replace("LISTENERS", r#"["web"]"#));
    let second = compiled(&web_only, Some(&tracer)).unwrap();
    assert!(Arc::ptr_eq(second.tracer.as_ref().unwrap(), &tracer));
    assert!(listener_tracer(&second, 0).is_some());
    assert!(listener_tracer(&second, 1).is_none());

    let changed = snapshot(&TRACING.replace("LISTENERS", "null").replace("1.0", "5.0"));
    let third = compiled(&changed, Some(&tracer)).unwrap();
    assert!(!Arc::ptr_eq(third.tracer.as_ref().unwrap(), &tracer));

    let off = compiled(&snapshot("null"), Some(&tracer)).unwrap();
    assert!(off.tracer.is_none() && listener_tracer(&off, 0).is_none());
}

#[test]
fn tracing_listeners_must_name_http_listeners() {
    let unknown = snapshot(&TRACING.replace("LISTENERS", r#"["web", "nope"]"#));
    let err = compiled(&unknown, None).unwrap_err();
    assert_eq!(err.path, "tracing.listeners.1");
    let bad_scheme = snapshot(&TRACING.replace("LISTENERS", "null").replace("http://", "udp://"));
    assert_eq!(compiled(&bad_scheme, None).unwrap_err().path, "tracing.otlp_endpoint");
}
