//! The live tap: request records streamed to whoever listens.
//!
//! [`Tap::active`] is one relaxed atomic load, read when a request starts (to capture its
//! [`Detail`](super::Detail)) and when it ends: with nobody subscribed no record is built.
//! Each subscriber has its own bounded queue and filter; publishing tries to queue the
//! record for every subscriber whose filter takes it and drops it (counted) for one whose
//! queue is full, so a slow reader loses records and never slows traffic. The subscriber
//! list is read lock-free (`ArcSwap`); only subscribing and leaving take a lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{accesslog, Record};
use crate::error::Error;
use crate::metrics::Counter;

/// Records one subscriber's queue holds before new ones are dropped for it.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// The engine's tap hub.
#[derive(Debug, Default)]
pub(crate) struct Tap {
    active: AtomicUsize,
    subscribers: ArcSwap<Vec<Arc<Subscriber>>>,
    /// Serialises subscribing and leaving (publishing never takes it).
    changing: Mutex<()>,
    next_id: AtomicU64,
    /// Records published while someone listened.
    pub(crate) records: Counter,
    /// Records a subscriber lost because its queue was full.
    pub(crate) dropped: Counter,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    filter: Filter,
    tx: SyncSender<Arc<Record>>,
}

impl Tap {
    /// Whether anyone listens; when nobody does, no record is made for the tap.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Hand `record` to every subscriber whose filter takes it, never waiting.
    pub(crate) fn publish(&self, record: &Arc<Record>) {
        self.records.inc();
        for s in self.subscribers.load().iter() {
            if !s.filter.matches(record) {
                continue;
            }
            match s.tx.try_send(Arc::clone(record)) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => self.dropped.inc(),
            }
        }
    }

    /// Start listening: records matching `filter`, through a queue of `capacity`.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        filter: &TapFilter,
        capacity: usize,
    ) -> Result<TapSubscription, Error> {
        let filter = Filter::compile(filter)?;
        let (tx, rx) = mpsc::sync_channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut subs = Vec::clone(&self.subscribers.load());
        subs.push(Arc::new(Subscriber { id, filter, tx }));
        self.subscribers.store(Arc::new(subs));
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(TapSubscription { tap: Arc::clone(self), id, rx })
    }

    fn leave(&self, id: u64) {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut subs = Vec::clone(&self.subscribers.load());
        let before = subs.len();
        subs.retain(|s| s.id != id);
        if subs.len() < before {
            self.subscribers.store(Arc::new(subs));
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a subscriber wants; every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapFilter {
    pub listener: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
    /// An exact status (`503`) or a class (`5xx`).
    pub status: Option<String>,
    /// The request path (with its query) starts with this.
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusMatch {
    Exact(u16),
    Class(u16),
}

#[derive(Debug)]
struct Filter {
    listener: Option<String>,
    route: Option<String>,
    cluster: Option<String>,
    status: Option<StatusMatch>,
    path_prefix: Option<String>,
}

impl Filter {
    fn compile(f: &TapFilter) -> Result<Self, Error> {
        let status = match f.status.as_deref() {
            None => None,
            Some(s) => Some(parse_status(s).ok_or_else(|| {
                Error::config("status", format!("{s:?} is not a status (like 503) or a class (like 5xx)"))
            })?),
        };
        Ok(Self {
            listener: f.listener.clone(),
            route: f.route.clone(),
            cluster: f.cluster.clone(),
            status,
            path_prefix: f.path_prefix.clone(),
        })
    }

    fn matches(&self, r: &Record) -> bool {
        let same = |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| got == Some(w));
        same(&self.listener, Some(&r.listener))
            && same(&self.route, r.route.as_deref())
            && same(&self.cluster, r.cluster.as_deref())
            && self.status.is_none_or(|s| match s {
                StatusMatch::Exact(code) => r.status == code,
                StatusMatch::Class(c) => r.status / 100 == c,
            })
            && self.path_prefix.as_deref().is_none_or(|p| r.detail.path().starts_with(p))
    }
}

fn parse_status(s: &str) -> Option<StatusMatch> {
    let b = s.as_bytes();
    match b {
        [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Some(StatusMatch::Class(u16::from(c - b'0'))),
        [b'1'..=b'5', _, _] => s.parse().ok().map(StatusMatch::Exact),
        _ => None,
    }
}

/// One listener of the tap; leaves when dropped.
#[derive(Debug)]
pub struct TapSubscription {
    tap: Arc<Tap>,
    id: u64,
    rx: Receiver<Arc<Record>>,
}

impl TapSubscription {
    /// The next record, waiting up to `timeout`; `None` when none came in time.
    pub fn next(&self, timeout: Duration) -> Option<TapEvent> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => Some(TapEvent::of(&r)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }
}

impl Drop for TapSubscription {
    fn drop(&mut self) {
        self.tap.leave(self.id);
    }
}

/// A finished request as the tap shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TapEvent {
    /// When the request started, RFC 3339 with milliseconds (UTC).
    pub time: String,
    pub listener: String,
    pub route: Option<String>,
    pub cluster: Option<String>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    /// Envoy's response flags (`NR`, `UF,URX`), `-` for none.
    pub flags: String,
    pub duration_ms: f64,
    /// The upstream endpoint of the last try.
    pub endpoint: Option<String>,
    pub attempts: u32,
    pub trace_id: Option<String>,
    pub request_id: Option<String>,
}

impl TapEvent {
    fn of(r: &Record) -> Self {
        let d = &r.detail;
        Self {
            time: humantime::format_rfc3339_millis(d.time).to_string(),
            listener: r.listener.to_string(),
            route: r.route.as_deref().map(str::to_owned),
            cluster: r.cluster.as_deref().map(str::to_owned),
            method: d.method.as_str().to_owned(),
            authority: d.authority().to_owned(),
            path: d.path().to_owned(),
            status: r.status,
            flags: r.flags.text(),
            duration_ms: (r.duration.as_secs_f64() * 1e6).round() / 1e3,
            endpoint: r.endpoint.as_ref().map(|e| e.as_str().to_owned()),
            attempts: r.attempts,
            trace_id: accesslog::trace_id(r),
            request_id: (!d.request_id().is_empty()).then(|| d.request_id().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests;
