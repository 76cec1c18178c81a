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
    /// `host:port` of each endpoint.
    pub endpoints: Vec<String>,
    pub lb: LbKind,
    pub connect_timeout_ms: u64,
    /// Idle pooled connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// How long an idle pooled connection is kept before it is closed.
    pub idle_timeout_ms: u64,
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
