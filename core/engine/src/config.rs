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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique within its listener; used as the `route` metric label.
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    pub to: Vec<WeightedClusterSpec>,
}

/// A path match: exactly one of `path` (exact) and `path_prefix` is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
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
    /// `host:port` of each endpoint.
    pub endpoints: Vec<String>,
    pub lb: LbKind,
    pub connect_timeout_ms: u64,
    /// Idle pooled connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// How long an idle pooled connection is kept before it is closed.
    pub idle_timeout_ms: u64,
    /// The protocol spoken to the endpoints.
    pub protocol: ClusterProtocol,
    /// TLS to the endpoints; none: plaintext.
    pub tls: Option<ClientTlsSpec>,
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

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LbKind {
    RoundRobin,
}

impl Snapshot {
    /// Parse the JSON form that crosses the Python/Rust boundary.
    pub fn from_json(text: &str) -> Result<Self, crate::Error> {
        serde_json::from_str(text).map_err(|e| crate::Error::config("", format!("snapshot: {e}")))
    }
}
