//! Compiled route tables: the first route whose match holds wins, in config order, and a
//! route's weighted split picks the cluster.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::metrics::{RouteStats, StatusCounters};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Exact(Box<str>),
    /// A plain string prefix, as Envoy's `prefix`: `/api` matches `/api`, `/api/x` and `/apix`.
    Prefix(Box<str>),
}

impl PathMatch {
    #[inline]
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == &**p,
            Self::Prefix(p) => path.starts_with(&**p),
        }
    }
}

/// Where a request goes, with every handle it needs on its way: one `Arc` clone per request
/// keeps the cluster (and so its pool) alive for as long as the request runs, even when a
/// new snapshot replaces the tables it came from.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) counters: Arc<StatusCounters>,
    pub(crate) route_stats: Arc<RouteStats>,
}

#[derive(Debug)]
pub(crate) struct Route {
    // Read by tests today, and by access logs and tracing when they come.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: Arc<str>,
    matcher: PathMatch,
    /// `(cumulative weight, target)`, in config order; zero-weight targets are left out.
    targets: Box<[(u32, Arc<Target>)]>,
    total_weight: u32,
}

impl Route {
    /// `targets` must hold at least one positive weight (checked when the snapshot compiles).
    pub(crate) fn new(name: Arc<str>, matcher: PathMatch, weighted: Vec<(u32, Arc<Target>)>) -> Self {
        let mut total_weight = 0u32;
        let targets = weighted
            .into_iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, t)| {
                total_weight = total_weight.saturating_add(w);
                (total_weight, t)
            })
            .collect();
        Self { name, matcher, targets, total_weight }
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

#[derive(Debug, Default)]
pub(crate) struct Router {
    routes: Box<[Route]>,
}

impl Router {
    pub(crate) fn new(routes: Vec<Route>) -> Self {
        Self { routes: routes.into() }
    }

    /// The first route that matches `path`.
    #[inline]
    pub(crate) fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(path))
    }
}

#[cfg(test)]
mod tests;
