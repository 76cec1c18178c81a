//! The snapshot: the one immutable description of what the core should serve.
//!
//! Python validates the user's configuration (pydantic), resolves defaults and policies, and
//! hands the core this fully resolved form as JSON. Every field is explicit here: defaults
//! live in one place (the Python models), and the core refuses unknown fields so that a
//! mismatch between the two sides is an error at apply time, never a silent no-op.

use serde::Deserialize;

/// The whole snapshot, as `Core.apply` receives it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The config version this snapshot was built from (assigned by the Python host).
    pub version: u64,
    pub listeners: Vec<ListenerSpec>,
    pub clusters: Vec<ClusterSpec>,
    /// Distributed tracing; null: off. Python always writes it; absent reads as null, so that
    /// hand-written snapshots (tests, tools) stay short.
    #[serde(default)]
    pub tracing: Option<TracingSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: String,
    /// `host:port`; port 0 lets the OS choose (the bound address is reported back).
    pub listen: String,
    pub protocol: ListenerProtocol,
    /// HTTP routes (`protocol: http` only).
    pub routes: Vec<RouteSpec>,
    /// TLS termination (`protocol: http` only).
    pub tls: Option<ServerTlsSpec>,
    /// Where raw bytes go (`protocol: tcp` only).
    pub to: Vec<WeightedClusterSpec>,
    /// Routes by the ClientHello's server name (`protocol: tls-passthrough` only).
    pub sni_routes: Vec<SniRouteSpec>,
    /// A TCP or passthrough connection with no bytes either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// What one downstream client may send (`protocol: http` only, and required there; `null`
    /// on other listeners). The field itself must be present.
    #[serde(deserialize_with = "Option::deserialize")]
    pub limits: Option<LimitsSpec>,
    /// One line per request (`protocol: http` only); absent or null: no access log.
    #[serde(default)]
    pub access_log: Option<AccessLogSpec>,
}

/// A listener's access log; see docs/config.md (the Python models hold the defaults).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    pub format: AccessLogFormat,
    /// `text` only (and required there): the line, with `{field}` placeholders.
    pub template: Option<String>,
    /// The file appended to; `None`: the process's standard output.
    pub path: Option<String>,
    /// Share of requests logged, 0-100, drawn per request.
    pub sample_percent: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[serde(rename = "json")]
    Json,
    /// The `template`, its placeholders filled in.
    #[serde(rename = "text")]
    Text,
}

/// Limits on what a downstream client may send an HTTP listener; see docs/config.md for
/// their defaults (the Python models hold them).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Header fields in one request; more gets 431.
    pub max_request_headers: u32,
    /// Bytes of the request head (request line and headers; HTTP/2: the decoded header
    /// list); more gets 431. At least 8192.
    pub max_request_header_bytes: u32,
    /// An HTTP/1 client must send a whole request head within this, counted from when the
    /// connection starts waiting for it; a slower one is disconnected.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no bytes either way for this long is
    /// closed (HTTP/2: GOAWAY first).
    pub idle_timeout_ms: u64,
    /// HTTP/2 streams one connection may have open; more are refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// Request body bytes; `None`: unlimited. More gets 413 (up front by Content-Length,
    /// or when the streamed body passes it).
    pub max_request_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (h2c by prior knowledge, or h2 by ALPN over TLS) on one port.
    #[serde(rename = "http")]
    Http,
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "tls-passthrough")]
    TlsPassthrough,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsSpec {
    /// One or more certificates; the first whose names cover the client's SNI is used, and
    /// the first is the default (no SNI, or no match).
    pub certificates: Vec<CertificateSpec>,
    /// ALPN protocols offered, in order of preference (`h2`, `http/1.1`).
    pub alpn: Vec<String>,
    /// Oldest TLS version accepted: `"1.2"` or `"1.3"`.
    pub min_version: String,
    /// PEM file of CAs that client certificates must chain to; none: no client certificates.
    pub client_ca: Option<String>,
    /// With `client_ca`: refuse clients that present no certificate.
    pub require_client_certificate: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// PEM file: the certificate chain, leaf first.
    pub cert: String,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniRouteSpec {
    pub name: String,
    /// An exact server name or a `*.suffix` wildcard; `*` matches anything (and no SNI).
    pub sni: String,
    pub to: Vec<WeightedClusterSpec>,
}

/// One route: a match and exactly one action (`to` non-empty, `direct_response` or
/// `redirect`); the header and rewrite actions refine it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique within its listener; used as the `route` metric label.
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Weighted clusters to forward to; empty when the route answers itself.
    pub to: Vec<WeightedClusterSpec>,
    pub direct_response: Option<DirectResponseSpec>,
    pub redirect: Option<RedirectSpec>,
    /// Only with `to`: rewrites of the request sent upstream.
    pub rewrite: RewriteSpec,
    /// Only with `to`: edits of the request's headers before it goes upstream.
    pub request_headers: HeaderActionsSpec,
    /// Edits of the response's headers, whoever answered (upstream, direct, redirect).
    pub response_headers: HeaderActionsSpec,
    /// Traffic policies (policy/), as the Python policy engine resolved them. Python always
    /// writes it; absent or null: no policy at all (the request path pays nothing).
    pub policy: Option<RoutePolicySpec>,
}

/// A route's conditions; all of them must hold. Exactly one of `path`, `path_prefix` and
/// `path_regex` is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// `example.com` (exact) or `*.example.com` (any name ending in `.example.com`);
    /// compared without the request's port and ignoring case. `None`: any host.
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    /// A `regex` crate pattern that must match the whole path (it is compiled anchored).
    pub path_regex: Option<String>,
    /// Request methods, case-sensitive; empty: any method.
    pub methods: Vec<String>,
    pub headers: Vec<ValueMatchSpec>,
    pub query: Vec<ValueMatchSpec>,
}

/// A condition on one header or query parameter: exactly one of `exact`, `regex` (anchored,
/// whole value) and `present` (true: present with any value; false: absent) is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    pub name: String,
    pub exact: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseSpec {
    /// 200-599.
    pub status: u16,
    pub body: String,
}

/// A redirect in the manner of Envoy's: each set field replaces its part of the request's
/// URL; `path` and `prefix_rewrite` exclude each other.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Replaces the authority (`host` or `host:port`).
    pub host: Option<String>,
    /// Replaces the whole path.
    pub path: Option<String>,
    /// Replaces the part of the path the route's `path_prefix` (or `path`) matched.
    pub prefix_rewrite: Option<String>,
    /// Drop the request's query string instead of keeping it.
    pub strip_query: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// Replaces the part of the path the route's `path_prefix` (or `path`) matched.
    pub path_prefix: Option<String>,
    /// Sets the `Host` (authority) sent upstream.
    pub host: Option<String>,
}

/// Header edits, applied in this order: `remove`, then `set` (replaces every value), then
/// `add` (appends a value).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderActionsSpec {
    pub set: Vec<HeaderSpec>,
    pub add: Vec<HeaderSpec>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterSpec {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    pub endpoints: Vec<EndpointSpec>,
    pub lb: LbKind,
    /// Where `ring_hash` and `maglev` take a request's key from; `None` for other balancers.
    pub hash_on: Option<HashOnSpec>,
    pub connect_timeout_ms: u64,
    /// Idle pooled connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// How long an idle pooled connection is kept before it is closed.
    pub idle_timeout_ms: u64,
    /// Active health checking; `None` = no checks, every endpoint is healthy.
    pub health_check: Option<HealthCheckSpec>,
    /// Below this percentage of healthy endpoints, balance over all of them (0 = never).
    pub panic_threshold_percent: u32,
    /// The protocol spoken to the endpoints.
    pub protocol: ClusterProtocol,
    /// TLS to the endpoints; none: plaintext.
    pub tls: Option<ClientTlsSpec>,
    /// Circuit breaker and outlier detection (policy/); absent or null: neither.
    pub policy: Option<ClusterPolicySpec>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterProtocol {
    Http1,
    /// HTTP/2; over plaintext by prior knowledge (h2c).
    Http2,
    /// HTTP/2 when the endpoint's TLS ALPN picks it, else HTTP/1.1 (plaintext: HTTP/1.1).
    Auto,
}

/// TLS origination to a cluster's endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsSpec {
    /// Server name sent and verified; none: the endpoint's host.
    pub sni: Option<String>,
    /// PEM file of trusted CAs; none: the system's roots.
    pub ca: Option<String>,
    /// Client certificate for mutual TLS.
    pub client_certificate: Option<CertificateSpec>,
}

// === load balancing and health (balancing branch) ===

/// An endpoint: `{"address": "host:port", "weight": 1}`. The bare string `"host:port"` is
/// read as weight 1: the Python host always sends the object, and the short form keeps
/// hand-written snapshots (tests, tools) short.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EndpointSpec {
    Address(String),
    Weighted(WeightedEndpointSpec),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpointSpec {
    pub address: String,
    pub weight: u32,
}

impl EndpointSpec {
    pub fn address(&self) -> &str {
        match self {
            Self::Address(a) => a,
            Self::Weighted(w) => &w.address,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            Self::Address(_) => 1,
            Self::Weighted(w) => w.weight,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LbKind {
    RoundRobin,
    Random,
    LeastRequest,
    Ewma,
    RingHash,
    Maglev,
}

impl LbKind {
    /// Whether the balancer places requests by a key (and so needs `hash_on`).
    pub fn is_hashing(self) -> bool {
        matches!(self, Self::RingHash | Self::Maglev)
    }
}

/// The request key of hashing balancers: exactly one of the three is set.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HashOnSpec {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub source_ip: bool,
}

/// Active health checking of every endpoint of a cluster: an HTTP `GET path` (when `tcp` is
/// false) or a TCP connect (when `tcp` is true, and `path` is `None`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    pub tcp: bool,
    pub path: Option<String>,
    pub expected_statuses: Vec<u16>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

// === policies (resolved by pymesh/policy.py; enforced by policy/) ===

/// A route's resolved policies; `None` fields are off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicySpec {
    /// Whole request: from the route's choice to the upstream response's head, all tries and
    /// backoffs included. Expiry answers 504.
    pub timeout_ms: Option<u64>,
    /// One try: from sending to the response head. Expiry answers 504, or retries.
    pub per_try_timeout_ms: Option<u64>,
    /// Upstream idle: the longest gap between frames of the upstream response body; expiry
    /// aborts the response (its head is already sent).
    pub idle_timeout_ms: Option<u64>,
    pub retry: Option<RetrySpec>,
    pub rate_limit: Option<RateLimitSpec>,
    pub fault: Option<FaultSpec>,
    pub mirror: Option<MirrorSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the first try (0 turns retries off).
    pub attempts: u32,
    pub on: RetryOnSpec,
    /// The route's requests may be replayed whatever their method (an explicit opt-in).
    pub idempotent: bool,
    /// First backoff; each later one doubles, up to `max_backoff_ms`; jittered.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Retries may add this percentage to the cluster's request rate...
    pub budget_percent: f64,
    /// ...plus this many per second.
    pub min_retries_per_second: u32,
    /// Request bodies up to this many bytes are buffered for replay; larger ones stream
    /// through and are not retried.
    pub buffer_limit: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryOnSpec {
    pub connect_failure: bool,
    pub reset: bool,
    pub refused_stream: bool,
    /// Response statuses that are retried (100-599).
    pub statuses: Vec<u16>,
    /// `grpc-status` codes that are retried (0-16).
    pub grpc_statuses: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests_per_second: f64,
    /// Requests that may come at once after an idle spell (the bucket's size), at least 1.
    pub burst: u32,
    /// One bucket per value of this header (absent: one bucket for all).
    pub key_header: Option<String>,
    /// One bucket per client IP (not with `key_header`).
    pub key_client_ip: bool,
    /// Buckets kept for keys, at most; beyond it keys share buckets (stricter, never looser).
    pub max_keys: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub delay: Option<FaultDelaySpec>,
    pub abort: Option<FaultAbortSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultDelaySpec {
    pub duration_ms: u64,
    /// 0-100.
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortSpec {
    /// 200-599.
    pub status: u16,
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub cluster: String,
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicySpec {
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    pub outlier_detection: Option<OutlierSpec>,
}

/// Limits on what one cluster may have at once; beyond them requests get 503 at once.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    pub max_connections: u64,
    /// Requests waiting for their response head.
    pub max_pending: u64,
    /// Requests in flight (until their response body ends).
    pub max_requests: u64,
    /// Retries in flight.
    pub max_retries: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    /// Consecutive 5xx (gateway errors included) that eject an endpoint; 0: off.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504, connect failure, reset, timeout); 0: off.
    pub consecutive_gateway_errors: u32,
    /// Success-rate ejection over a window; none: off.
    pub success_rate: Option<SuccessRateSpec>,
    /// An endpoint's n-th ejection lasts n times this, up to `max_ejection_ms`.
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// At most this percentage of the endpoints is ejected at once (at least one may be).
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateSpec {
    /// Endpoints whose success percentage over a window falls below this are ejected.
    pub minimum_percent: f64,
    /// Only endpoints with at least this many requests in the window are judged.
    pub request_volume: u32,
    pub interval_ms: u64,
}

// === tracing (observe/trace.rs) ===

/// Tracing: trace context propagation on HTTP listeners, and spans exported over OTLP/HTTP.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The collector's OTLP/HTTP traces URL (`http://` or `https://`).
    pub otlp_endpoint: String,
    /// Percentage (0-100) of new traces sampled; a caller's decision is honoured.
    pub sample_percent: f64,
    /// The `service.name` resource attribute of the spans.
    pub service_name: String,
    /// Spans queued for export at most; more are dropped and counted.
    pub max_queue_spans: u32,
    /// Spans per export request, at most.
    pub batch_size: u32,
    /// A batch is sent at the latest this long after its first span.
    pub flush_interval_ms: u64,
    /// One export request may take this long; then its spans are dropped and counted.
    pub export_timeout_ms: u64,
    /// Set `x-request-id` (a random UUID) on requests that come without one.
    pub request_id: bool,
    /// The HTTP listeners that trace; `None`: all of them.
    pub listeners: Option<Vec<String>>,
}

impl Snapshot {
    /// Parse the JSON form that crosses the Python/Rust boundary.
    pub fn from_json(text: &str) -> Result<Self, crate::Error> {
        serde_json::from_str(text).map_err(|e| crate::Error::config("", format!("snapshot: {e}")))
    }
}
