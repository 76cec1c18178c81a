//! The exporter: one thread per tracer that takes finished requests off the queue, batches
//! their spans (by count or by time) and posts them as OTLP/HTTP protobuf.
//!
//! The thread has a small current-thread tokio runtime of its own for hyper's client, so a
//! slow collector costs the proxy's workers nothing: while a post is in flight (bounded by
//! the export timeout) the queue fills, and what does not fit is dropped and counted by
//! `Tracer::end`. A failed post drops its batch and counts it. The thread ends when the
//! tracer is dropped (its queue's sender goes), after one last flush.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prost::Message;

use super::otlp;
use super::TraceStats;
use crate::config::{ClientTlsSpec, TracingSpec};
use crate::error::Error;
use crate::observe::Record;

/// How often the exporter takes finished spans off its queue (at most `flush_interval`).
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// Where spans go: a checked `http://` or `https://` URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    uri: Uri,
}

impl Target {
    pub(crate) fn parse(url: &str, path: &str) -> Result<Self, Error> {
        let uri: Uri = url.parse().map_err(|_| Error::config(path, format!("{url:?} is not a URL")))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(Error::config(path, format!("{url:?}: the scheme must be http or https"))),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(Error::config(path, format!("{url:?} has no host")));
        }
        Ok(Self { uri })
    }

    fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }
}

type ExportClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub(crate) struct Exporter {
    target: Target,
    service_name: String,
    batch_size: usize,
    flush_interval: Duration,
    timeout: Duration,
    stats: Arc<TraceStats>,
}

impl Exporter {
    /// Start the exporter thread of a tracer; it runs until `rx`'s sender is dropped.
    pub(crate) fn start(
        target: Target,
        spec: &TracingSpec,
        rx: Receiver<Arc<Record>>,
        stats: Arc<TraceStats>,
    ) -> Result<(), Error> {
        let tls = if target.is_https() {
            let none = ClientTlsSpec { sni: None, ca: None, client_certificate: None };
            crate::tls::client_config(&none, "tracing.otlp_endpoint")?
        } else {
            // Never used for http://; the connector wants one all the same.
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::internal(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let exporter = Self {
            target,
            service_name: spec.service_name.clone(),
            batch_size: usize::try_from(spec.batch_size).unwrap_or(usize::MAX),
            flush_interval: Duration::from_millis(spec.flush_interval_ms),
            timeout: Duration::from_millis(spec.export_timeout_ms),
            stats,
        };
        std::thread::Builder::new()
            .name("pymesh-trace-export".into())
            .spawn(move || exporter.run(rx, tls))
            .map(drop)
            .map_err(|e| Error::internal(format!("cannot start the span exporter: {e}")))
    }

    fn run(self, rx: Receiver<Arc<Record>>, tls: rustls::ClientConfig) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            // Without a runtime nothing can be sent: drain and count until the tracer goes.
            for record in rx {
                self.stats.spans_dropped.add(otlp::spans_of(&record));
            }
            return;
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: ExportClient = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);

        // The queue is drained on a timer, not by blocking in `recv`: a thread blocked there
        // is woken by every span the workers push (a futex call on the request path each
        // time), as the access log's writer was before it measured so (observe/accesslog.rs).
        let poll = self.flush_interval.min(DRAIN_EVERY);
        let mut batch: Vec<Arc<Record>> = Vec::with_capacity(self.batch_size.min(4096));
        let mut spans = 0usize;
        let mut deadline: Option<Instant> = None;
        loop {
            loop {
                match rx.try_recv() {
                    Ok(record) => {
                        if batch.is_empty() {
                            deadline = Some(Instant::now() + self.flush_interval);
                        }
                        spans += usize::try_from(otlp::spans_of(&record)).unwrap_or(1);
                        batch.push(record);
                        if spans >= self.batch_size {
                            self.flush(&runtime, &client, &mut batch);
                            spans = 0;
                            deadline = None;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if !batch.is_empty() {
                            self.flush(&runtime, &client, &mut batch);
                        }
                        return;
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.flush(&runtime, &client, &mut batch);
                spans = 0;
                deadline = None;
            }
            // Not synchronisation: the exporter drains on a timer by design, as the access
            // log's writer does (a blocked receiver made every request pay a wake-up).
            std::thread::sleep(poll);
        }
    }

    /// Post `batch` (emptied); count what the collector took or what was lost.
    fn flush(&self, runtime: &tokio::runtime::Runtime, client: &ExportClient, batch: &mut Vec<Arc<Record>>) {
        let mut spans = Vec::with_capacity(batch.len() * 2);
        for record in batch.drain(..) {
            otlp::spans(&record, &mut spans);
        }
        let n = spans.len() as u64;
        let body = otlp::request(&self.service_name, spans).encode_to_vec();
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.target.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else {
            self.failed(n);
            return;
        };
        let sent = runtime.block_on(async {
            tokio::time::timeout(self.timeout, async {
                let resp = client.request(req).await.ok()?;
                let ok = resp.status().is_success();
                // Read the (small) answer so the connection can be reused.
                resp.into_body().collect().await.ok()?;
                Some(ok)
            })
            .await
        });
        if sent == Ok(Some(true)) {
            self.stats.spans_exported.add(n);
        } else {
            self.failed(n);
        }
    }

    fn failed(&self, spans: u64) {
        self.stats.export_failures.inc();
        self.stats.spans_dropped.add(spans);
    }
}
