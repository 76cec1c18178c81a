use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Version};

use super::{parse_template, AccessLog, Field, Format, Piece, Sink};
use crate::config::{AccessLogFormat, AccessLogSpec};
use crate::metrics::Counter;
use crate::observe::trace::SpanContext;
use crate::observe::{Detail, Flags, Record};

pub(crate) fn record() -> Arc<Record> {
    let mut flags = Flags::default();
    flags.set(Flags::UPSTREAM_CONNECT_FAILURE);
    flags.set(Flags::RETRY_LIMIT_EXCEEDED);
    Arc::new(Record {
        listener: "web".into(),
        route: Some("api".into()),
        cluster: Some("backend".into()),
        endpoint: Some("10.0.0.1:8080".parse().unwrap()),
        status: 503,
        grpc_status: None,
        flags,
        attempts: 3,
        response_bytes: 42,
        duration: Duration::from_micros(12_345),
        upstream_first_byte: None,
        upstream_sent: None,
        trace: Some(SpanContext {
            trace_id: [0xab; 16],
            span_id: [1; 8],
            parent_span_id: None,
            client_span_id: [2; 8],
            sampled: true,
            trace_state: None,
        }),
        detail: Box::new(Detail::new(
            // 2024-01-02T03:04:05.678Z
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_164_645_678),
            Method::POST,
            Version::HTTP_2,
            "127.0.0.1:5000".parse::<SocketAddr>().unwrap(),
            ["example.com", "/api/v1?x=1", "req-1", ""],
            Some(7),
            true,
        )),
    })
}

fn line(format: &Format, r: &Record) -> String {
    let mut out = Vec::new();
    format.write(r, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn json_lines_carry_every_field() {
    let text = line(&Format::Json, &record());
    assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["time"], "2024-01-02T03:04:05.678Z");
    assert_eq!(v["request_id"], "req-1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["authority"], "example.com");
    assert_eq!(v["path"], "/api/v1?x=1");
    assert_eq!(v["protocol"], "HTTP/2");
    assert_eq!(v["status"], 503);
    assert_eq!(v["flags"], "UF,URX");
    assert_eq!(v["request_bytes"], 7);
    assert_eq!(v["response_bytes"], 42);
    assert_eq!(v["duration_ms"], 12.345);
    assert!(v["upstream_first_byte_ms"].is_null());
    assert_eq!(v["upstream"], "10.0.0.1:8080");
    assert_eq!(v["attempts"], 3);
    assert_eq!(v["route"], "api");
    assert_eq!(v["cluster"], "backend");
    assert_eq!(v["listener"], "web");
    assert_eq!(v["trace_id"], "ab".repeat(16));
    assert_eq!(v["downstream_peer"], "127.0.0.1:5000");
    assert!(v["user_agent"].is_null(), "an empty user agent is null");
    assert!(v["grpc_status"].is_null());
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), super::FIELDS.len(), "{keys:?}");
}

#[test]
fn text_templates_fill_placeholders_and_dash_what_is_unknown() {
    let t =
        parse_template("{method} {path} {status} [{flags}] ua={user_agent} {{lit}} {upstream_first_byte_ms}")
            .unwrap();
    assert_eq!(t[0], Piece::Field(Field::Method));
    assert_eq!(line(&Format::Text(t), &record()), "POST /api/v1?x=1 503 [UF,URX] ua=- {lit} -\n");
}

#[test]
fn bad_templates_are_refused_with_a_reason() {
    let e = parse_template("{method} {nope}").unwrap_err();
    assert!(e.contains("unknown field {nope}") && e.contains("request_id"), "{e}");
    assert!(parse_template("{method").unwrap_err().contains("unclosed"));
    assert!(parse_template("a } b").unwrap_err().contains("unmatched"));
    assert!(parse_template("").unwrap().is_empty());
}

fn spec(sample_percent: f64) -> AccessLogSpec {
    AccessLogSpec { format: AccessLogFormat::Json, template: None, path: None, sample_percent }
}

#[test]
fn sampling_at_0_and_100_percent_is_never_and_always() {
    let dropped = Arc::new(Counter::default());
    let none = AccessLog::compile(&spec(0.0), "listeners.0.access_log", &dropped).unwrap();
    let all = AccessLog::compile(&spec(100.0), "listeners.0.access_log", &dropped).unwrap();
    let half = AccessLog::compile(&spec(50.0), "listeners.0.access_log", &dropped).unwrap();
    assert!((0..10_000).all(|_| !none.sampled()));
    assert!((0..10_000).all(|_| all.sampled()));
    let n = (0..10_000).filter(|_| half.sampled()).count();
    assert!((4_000..6_000).contains(&n), "50% sampled {n} of 10000");
}

#[test]
fn bad_settings_are_refused_with_their_field_path() {
    let dropped = Arc::new(Counter::default());
    let at = "listeners.2.access_log";
    let e = AccessLog::compile(&spec(100.5), at, &dropped).unwrap_err();
    assert_eq!(e.path, "listeners.2.access_log.sample_percent");
    let e = AccessLog::compile(&spec(f64::NAN), at, &dropped).unwrap_err();
    assert_eq!(e.path, "listeners.2.access_log.sample_percent");
    let json_with_template = AccessLogSpec { template: Some("{status}".into()), ..spec(1.0) };
    assert_eq!(
        AccessLog::compile(&json_with_template, at, &dropped).unwrap_err().path,
        format!("{at}.template")
    );
    let text = AccessLogSpec { format: AccessLogFormat::Text, template: Some("{bogus}".into()), ..spec(1.0) };
    let e = AccessLog::compile(&text, at, &dropped).unwrap_err();
    assert_eq!(e.path, format!("{at}.template"));
    assert!(e.message.contains("{bogus}"), "{e}");
    let nowhere = AccessLogSpec { path: Some("/nonexistent-dir/pymesh/access.log".into()), ..spec(1.0) };
    let e = AccessLog::compile(&nowhere, at, &dropped).unwrap_err();
    assert_eq!(e.path, format!("{at}.path"));
    assert!(e.message.contains("/nonexistent-dir/pymesh/access.log"), "{e}");
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pymesh-accesslog-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("access.log")
}

#[test]
fn records_reach_the_file_and_one_path_has_one_writer() {
    let path = temp_path("file");
    let dropped = Arc::new(Counter::default());
    let s = AccessLogSpec { path: Some(path.to_str().unwrap().to_owned()), ..spec(100.0) };
    let a = AccessLog::compile(&s, "listeners.0.access_log", &dropped).unwrap();
    let b = AccessLog::compile(&s, "listeners.1.access_log", &dropped).unwrap();
    assert!(Arc::ptr_eq(a.sink(), b.sink()), "the same path shares its writer");
    a.log(&record());
    b.log(&record());
    drop((a, b));
    // The writer flushes when its queue is empty; poll with a bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() == 2 {
            assert!(text.lines().all(|l| l.contains("\"status\":503")), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "two lines never arrived: {text:?}");
        // Poll interval of a bounded wait: the writer thread drains every 20 ms.
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dropped.get(), 0);
}

/// A sink whose writes wait until the test lets them go, and says when one started.
struct Gate {
    entered: mpsc::SyncSender<()>,
    release: mpsc::Receiver<()>,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.entered.try_send(());
        let _ = self.release.recv();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let (entered_tx, entered) = mpsc::sync_channel(1);
    let (release, release_rx) = mpsc::channel();
    let dropped = Arc::new(Counter::default());
    let gate = Gate { entered: entered_tx, release: release_rx };
    let sink = Arc::new(Sink::start(Box::new(gate), 2, Arc::clone(&dropped)).unwrap());
    let log = AccessLog {
        per_million: 1_000_000,
        format: Arc::new(Format::Json),
        sink,
        dropped: Arc::clone(&dropped),
    };
    log.log(&record());
    entered.recv_timeout(Duration::from_secs(5)).expect("the writer took the first record");
    // The writer is stuck in a write: two more fit the queue, the other eight are dropped.
    let started = Instant::now();
    for _ in 0..10 {
        log.log(&record());
    }
    assert!(started.elapsed() < Duration::from_secs(1), "logging waited for the sink");
    assert_eq!(dropped.get(), 8);
    drop(release);
}
