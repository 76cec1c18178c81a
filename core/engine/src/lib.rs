//! pymesh's data plane, as a plain Rust crate.
//!
//! Nothing here knows about Python: `core/pybind` wraps [`Engine`] for `pymesh._core`, and
//! everything below can be built, tested and benchmarked with cargo alone.
//!
//! The shape: [`Engine::apply`] takes one [`config::Snapshot`], compiles it into immutable
//! runtime tables (routers, clusters, metric handles), binds any new listeners, and swaps
//! the tables in with a single `ArcSwap` store. Each request reads the tables once, at its
//! start, and keeps the pieces it needs (its cluster) alive until it ends.
// Denied, not forbidden: sys.rs makes the one system call no safe crate wraps.
#![deny(unsafe_code)]

pub mod bench;
mod cluster;
pub mod config;
mod echo;
mod engine;
mod error;
mod http;
mod lazy;
mod listener;
mod metrics;
mod observe;
mod policy;
mod router;
mod sys;
mod tables;
mod tcp;
#[cfg(test)]
mod testing;
mod tls;
mod workers;

pub use engine::{Engine, EngineOptions};
pub use error::{Error, ErrorKind};
pub use observe::tap::{TapEvent, TapFilter, TapSubscription};

/// Check a route regex (`path_regex`, header and query `regex`) the way the core compiles
/// it: answers the reason it is refused. Lets the Python models refuse a bad pattern with
/// the regex crate's own message, before a snapshot is built.
pub fn check_regex(pattern: &str) -> Result<(), String> {
    router::compile_anchored(pattern).map(drop)
}

/// Check an access-log text template the way the core compiles it: answers why it is
/// refused (an unknown `{field}`, an unmatched brace). Lets the Python models refuse it
/// with the same message, before a snapshot is built.
pub fn check_access_log_template(template: &str) -> Result<(), String> {
    observe::accesslog::parse_template(template).map(drop)
}

/// The fields an access-log line has, by the name a template and the JSON line use.
pub fn access_log_fields() -> &'static [&'static str] {
    &observe::accesslog::FIELDS
}
