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
