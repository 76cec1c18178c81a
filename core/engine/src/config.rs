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
    pub routes: Vec<RouteSpec>,
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

impl Snapshot {
    /// Parse the JSON form that crosses the Python/Rust boundary.
    pub fn from_json(text: &str) -> Result<Self, crate::Error> {
        serde_json::from_str(text).map_err(|e| crate::Error::config("", format!("snapshot: {e}")))
    }
}
