//! Access logs: one line per request, written off the request path.
//!
//! Placeholder until the access-log writer lands: no listener has one yet.

use std::sync::Arc;

use super::Record;

/// One listener's access log.
#[derive(Debug)]
pub(crate) struct AccessLog {}

impl AccessLog {
    /// Whether this request is logged (sampling, drawn once at the request's start).
    pub(crate) fn sampled(&self) -> bool {
        false
    }

    /// Queue `record` for writing, never waiting.
    pub(crate) fn log(&self, _record: &Arc<Record>) {}
}
