//! Compiled route tables: the first route whose match holds wins, in config order, and a
//! route's action says what happens next (a weighted split over clusters, or an answer the
//! proxy gives itself).
//!
//! Everything a match needs is prepared when the snapshot compiles: header names parsed,
//! regexes compiled (anchored), host patterns lowercased. Matching a request allocates
//! nothing.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HOST};
use http::{Method, Request};
use regex::Regex;

use crate::cluster::Cluster;
use crate::config::{MatchSpec, ValueMatchSpec};
use crate::error::Error;
use crate::http::actions::{ForwardActions, Local};
use crate::metrics::{RouteStats, StatusCounters};

// === impl PathMatch ===

#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    Exact(Box<str>),
    /// A plain string prefix, as Envoy's `prefix`: `/api` matches `/api`, `/api/x` and `/apix`.
    Prefix(Box<str>),
    /// An anchored regex: it must match the whole path.
    Regex(Regex),
}

impl PathMatch {
    #[inline]
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == &**p,
            Self::Prefix(p) => path.starts_with(&**p),
            Self::Regex(re) => re.is_match(path),
        }
    }

    /// How many leading bytes of a matching path a prefix rewrite replaces: the prefix, or
    /// the whole path of an exact match. `None` for a regex (no prefix to replace).
    pub(crate) fn rewritable_len(&self) -> Option<usize> {
        match self {
            Self::Exact(p) | Self::Prefix(p) => Some(p.len()),
            Self::Regex(_) => None,
        }
    }
}

/// Compile `pattern` as a regex that must match a whole value. The pattern is checked on its
/// own first, so that wrapping it in `^(?:...)$` cannot turn an unbalanced pattern such as
/// `a)|(b` into a valid one with another meaning.
pub(crate) fn compile_anchored(pattern: &str) -> Result<Regex, String> {
    /// Bounds the compiled size of one pattern, so that a config cannot make the proxy
    /// build a huge automaton (the regex crate's default allows 10 MiB).
    const SIZE_LIMIT: usize = 1 << 20;
    let build = |p: &str| {
        regex::RegexBuilder::new(p).size_limit(SIZE_LIMIT).build().map_err(|e| match e {
            // The crate's message draws a caret under the pattern over several lines; the
            // last line says what is wrong, which is what fits in a one-line error.
            regex::Error::Syntax(msg) => {
                let what = msg.lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or(&msg);
                format!("invalid regex: {what}")
            }
            regex::Error::CompiledTooBig(_) => "the regex is too large once compiled".to_owned(),
            other => format!("invalid regex: {other}"),
        })
    };
    build(pattern)?;
    build(&format!("^(?:{pattern})$"))
}

// === impl HostMatch ===

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// Lowercased.
    Exact(Box<str>),
    /// Lowercased and with its leading dot: `*.example.com` is kept as `.example.com` and
    /// matches any longer name that ends with it.
    Suffix(Box<str>),
}

impl HostMatch {
    fn compile(pattern: &str, path: &str) -> Result<Self, Error> {
        let lower = pattern.to_ascii_lowercase();
        let (name, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        if !valid_host(name) {
            return Err(Error::config(
                path,
                format!("{pattern:?} is not a host name, IP address or \"*.suffix\" (no port)"),
            ));
        }
        Ok(if wildcard { Self::Suffix(format!(".{name}").into()) } else { Self::Exact(name.into()) })
    }

    #[inline]
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// A DNS name or IPv4 address (letters, digits, `-`, `_`, dot-separated, non-empty labels),
/// or a bracketed IPv6 address.
fn valid_host(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

/// The host a request is for, without its port: the URI's authority (absolute-form and
/// HTTP/2), else the `Host` header.
#[inline]
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.host());
    }
    let host = req.headers().get(HOST)?.to_str().ok()?;
    Some(strip_port(host))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rfind(':').map_or(host, |colon| &host[..colon])
}

// === impl ValueMatch ===

#[derive(Debug, Clone)]
pub(crate) enum ValueMatch {
    Exact(Box<str>),
    Regex(Regex),
    Present,
    Absent,
}

impl ValueMatch {
    fn compile(spec: &ValueMatchSpec, path: &str) -> Result<Self, Error> {
        match (&spec.exact, &spec.regex, spec.present) {
            (Some(v), None, None) => Ok(Self::Exact(v.as_str().into())),
            (None, Some(re), None) => {
                compile_anchored(re).map(Self::Regex).map_err(|m| Error::config(format!("{path}.regex"), m))
            }
            (None, None, Some(true)) => Ok(Self::Present),
            (None, None, Some(false)) => Ok(Self::Absent),
            _ => Err(Error::config(path, "set exactly one of exact, regex and present")),
        }
    }

    /// Whether the condition holds for a value that is there (`Some`) or not (`None`).
    #[inline]
    fn holds(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (Self::Absent, v) => v.is_none(),
            (_, None) => false,
            (Self::Present, Some(_)) => true,
            (Self::Exact(e), Some(v)) => v == e.as_bytes(),
            (Self::Regex(re), Some(v)) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
        }
    }
}

#[derive(Debug, Clone)]
struct HeaderCondition {
    name: HeaderName,
    value: ValueMatch,
}

impl HeaderCondition {
    /// A header with several values satisfies `exact` and `regex` when any one of them
    /// does, and `present` when there is at least one; `absent` when there is none.
    #[inline]
    fn holds(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match &self.value {
            ValueMatch::Absent => values.next().is_none(),
            ValueMatch::Present => values.next().is_some(),
            m => values.any(|v| m.holds(Some(v.as_bytes()))),
        }
    }
}

#[derive(Debug, Clone)]
struct QueryCondition {
    name: Box<str>,
    value: ValueMatch,
}

impl QueryCondition {
    /// The parameter's first occurrence decides, compared raw (not percent-decoded), as
    /// Envoy does; `?flag` (no `=`) is present with an empty value.
    #[inline]
    fn holds(&self, query: Option<&str>) -> bool {
        let value = query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == &*self.name).then_some(v)
            })
        });
        self.value.holds(value.map(str::as_bytes))
    }
}

// === impl RouteMatch ===

/// All the conditions of one route, cheapest first.
#[derive(Debug, Clone)]
pub(crate) struct RouteMatch {
    methods: Box<[Method]>,
    pub(crate) path: PathMatch,
    host: Option<HostMatch>,
    headers: Box<[HeaderCondition]>,
    query: Box<[QueryCondition]>,
}

impl RouteMatch {
    /// Compile `spec`; `path` is its place in the snapshot, for errors.
    pub(crate) fn compile(spec: &MatchSpec, path: &str) -> Result<Self, Error> {
        let (field, value) = match (&spec.path, &spec.path_prefix, &spec.path_regex) {
            (Some(p), None, None) => ("path", p),
            (None, Some(p), None) => ("path_prefix", p),
            (None, None, Some(p)) => ("path_regex", p),
            _ => return Err(Error::config(path, "set exactly one of path, path_prefix and path_regex")),
        };
        let at = format!("{path}.{field}");
        let path_match = if field == "path_regex" {
            PathMatch::Regex(compile_anchored(value).map_err(|m| Error::config(&at, m))?)
        } else {
            check_path(value).map_err(|m| Error::config(&at, m))?;
            if field == "path" {
                PathMatch::Exact(value.as_str().into())
            } else {
                PathMatch::Prefix(value.as_str().into())
            }
        };
        let host =
            spec.host.as_deref().map(|h| HostMatch::compile(h, &format!("{path}.host"))).transpose()?;
        let mut methods = Vec::with_capacity(spec.methods.len());
        for (i, m) in spec.methods.iter().enumerate() {
            let method = Method::from_bytes(m.as_bytes()).map_err(|_| {
                Error::config(format!("{path}.methods.{i}"), format!("{m:?} is not a method"))
            })?;
            if methods.contains(&method) {
                return Err(Error::config(format!("{path}.methods.{i}"), format!("{m:?} is listed twice")));
            }
            methods.push(method);
        }
        let mut headers = Vec::with_capacity(spec.headers.len());
        for (i, h) in spec.headers.iter().enumerate() {
            let at = format!("{path}.headers.{i}");
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                Error::config(format!("{at}.name"), format!("{:?} is not a header name", h.name))
            })?;
            headers.push(HeaderCondition { name, value: ValueMatch::compile(h, &at)? });
        }
        let mut query = Vec::with_capacity(spec.query.len());
        for (i, q) in spec.query.iter().enumerate() {
            let at = format!("{path}.query.{i}");
            if q.name.is_empty() || q.name.contains(['&', '=', '#']) {
                return Err(Error::config(
                    format!("{at}.name"),
                    format!("{:?} is not a query parameter name (non-empty, no '&', '=' or '#')", q.name),
                ));
            }
            query.push(QueryCondition { name: q.name.as_str().into(), value: ValueMatch::compile(q, &at)? });
        }
        Ok(Self {
            methods: methods.into(),
            path: path_match,
            host,
            headers: headers.into(),
            query: query.into(),
        })
    }

    #[inline]
    pub(crate) fn matches<B>(&self, req: &Request<B>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method()))
            && self.path.matches(req.uri().path())
            && self.host.as_ref().is_none_or(|h| request_host(req).is_some_and(|host| h.matches(host)))
            && self.headers.iter().all(|c| c.holds(req.headers()))
            && self.query.iter().all(|c| c.holds(req.uri().query()))
    }
}

/// A path to match or to rewrite to: starts with `/`, and is a valid URI path (no spaces,
/// control characters, `?` or `#`).
pub(crate) fn check_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("{value:?} must start with \"/\""));
    }
    if value.contains(['?', '#']) || value.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("{value:?} is not a URI path (no spaces, control characters, '?' or '#')"));
    }
    Ok(())
}

// === impl Route ===

/// Where a request goes, with every handle it needs on its way: one `Arc` clone per request
/// keeps the cluster (and so its pool) and the route's actions alive for as long as the
/// request runs, even when a new snapshot replaces the tables it came from.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) counters: Arc<StatusCounters>,
    pub(crate) route_stats: Arc<RouteStats>,
    /// The route's rewrites and header edits, shared by its targets.
    pub(crate) actions: Arc<ForwardActions>,
    /// The route's traffic policies (policy/), shared by its targets; none: no policy.
    pub(crate) policy: Option<Arc<crate::policy::RoutePolicy>>,
}

/// A weighted split over targets.
#[derive(Debug)]
pub(crate) struct Weighted {
    /// `(cumulative weight, target)`, in config order; zero-weight targets are left out.
    targets: Box<[(u32, Arc<Target>)]>,
    total_weight: u32,
}

impl Weighted {
    /// `weighted` must hold at least one positive weight (checked when the snapshot compiles).
    pub(crate) fn new(weighted: Vec<(u32, Arc<Target>)>) -> Self {
        let mut total_weight = 0u32;
        let targets = weighted
            .into_iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, t)| {
                total_weight = total_weight.saturating_add(w);
                (total_weight, t)
            })
            .collect();
        Self { targets, total_weight }
    }

    /// Pick a target by weight.
    #[inline]
    pub(crate) fn pick(&self) -> &Arc<Target> {
        if self.targets.len() == 1 {
            return &self.targets[0].1;
        }
        self.pick_at(fastrand::u32(0..self.total_weight))
    }

    /// The target that owns point `at` of `0..total_weight`.
    fn pick_at(&self, at: u32) -> &Arc<Target> {
        let idx = self.targets.partition_point(|(cumulative, _)| *cumulative <= at);
        &self.targets[idx.min(self.targets.len() - 1)].1
    }
}

/// What a route does with the requests it takes.
#[derive(Debug)]
pub(crate) enum RouteAction {
    /// Forward upstream to one of the weighted clusters.
    Forward(Weighted),
    /// Answer without an upstream: a direct response or a redirect.
    Local(Local),
}

#[derive(Debug)]
pub(crate) struct Route {
    // Read by tests today, and by access logs and tracing when they come.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: Arc<str>,
    matcher: RouteMatch,
    pub(crate) action: RouteAction,
}

impl Route {
    pub(crate) fn new(name: Arc<str>, matcher: RouteMatch, action: RouteAction) -> Self {
        Self { name, matcher, action }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Router {
    routes: Box<[Route]>,
}

impl Router {
    pub(crate) fn new(routes: Vec<Route>) -> Self {
        Self { routes: routes.into() }
    }

    /// The first route whose every condition holds for `req`.
    #[inline]
    pub(crate) fn find<B>(&self, req: &Request<B>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

#[cfg(test)]
mod tests;
