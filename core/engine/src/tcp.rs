//! Layer 4: raw TCP proxying to a cluster, and TLS passthrough routed by the ClientHello's
//! server name (the TLS session is end to end; the proxy never decrypts it).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::task::AbortOnDropHandle;

use crate::cluster::Cluster;
use crate::http::server::Activity;
use crate::lazy::Socket;
use crate::metrics::OpenConnection;

/// Clusters by weight, for a TCP listener or an SNI route.
#[derive(Debug)]
pub(crate) struct Split {
    /// `(cumulative weight, cluster)`; zero weights left out.
    clusters: Box<[(u32, Arc<Cluster>)]>,
    total: u32,
}

impl Split {
    pub(crate) fn new(weighted: Vec<(u32, Arc<Cluster>)>) -> Self {
        let mut total = 0u32;
        let clusters = weighted
            .into_iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, c)| {
                total = total.saturating_add(w);
                (total, c)
            })
            .collect();
        Self { clusters, total }
    }

    pub(crate) fn pick(&self) -> Option<&Arc<Cluster>> {
        if self.total == 0 {
            return None;
        }
        let at = fastrand::u32(0..self.total);
        let idx = self.clusters.partition_point(|(c, _)| *c <= at);
        self.clusters.get(idx).map(|(_, c)| c)
    }
}

/// A server-name pattern of a passthrough route: exact, `*.suffix`, or `*` (anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SniPattern {
    Exact(Box<str>),
    /// Holds the `.suffix` part: `*.example.com` matches `a.example.com`, not `example.com`.
    Suffix(Box<str>),
    Any,
}

impl SniPattern {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        if lower == "*" {
            return Ok(Self::Any);
        }
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = !name.is_empty()
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid {
            return Err(format!("{text:?} is not a server name, a *.suffix wildcard, or *"));
        }
        Ok(match lower.strip_prefix('*') {
            Some(suffix) => Self::Suffix(suffix.into()),
            None => Self::Exact(lower.into()),
        })
    }

    fn matches(&self, sni: Option<&str>) -> bool {
        match (self, sni) {
            (Self::Any, _) => true,
            (Self::Exact(n), Some(s)) => s.eq_ignore_ascii_case(n),
            (Self::Suffix(suffix), Some(s)) => {
                s.len() > suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            (_, None) => false,
        }
    }
}

/// The passthrough routes of a listener, first match wins.
#[derive(Debug)]
pub(crate) struct SniRouter {
    pub(crate) routes: Box<[(SniPattern, Split)]>,
}

impl SniRouter {
    fn find(&self, sni: Option<&str>) -> Option<&Split> {
        self.routes.iter().find(|(p, _)| p.matches(sni)).map(|(_, s)| s)
    }
}

/// How long to wait for a whole ClientHello before giving up on a passthrough connection.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest ClientHello accepted: one full TLS record.
const MAX_HELLO: usize = 16 * 1024 + 5;

/// Proxy `down` to an endpoint of a cluster chosen from `split`.
pub(crate) async fn proxy(down: Socket, split: &Split, idle: Duration) {
    let Some(cluster) = split.pick() else { return };
    let _ = relay(down, cluster, idle).await;
}

/// Read the ClientHello without consuming it, route by its server name, and relay the
/// untouched bytes both ways.
pub(crate) async fn passthrough(down: Socket, router: &SniRouter, idle: Duration) {
    let Ok(Ok(sni)) = tokio::time::timeout(HELLO_TIMEOUT, peek_sni(&down)).await else {
        return; // not TLS, too slow, or too large: close
    };
    let Some(cluster) = router.find(sni.as_deref()).and_then(Split::pick) else { return };
    let _ = relay(down, cluster, idle).await;
}

/// The server name of the ClientHello at the head of `stream` (None: no SNI extension).
///
/// rustls' `Acceptor` does the parsing; it is fed a copy of the peeked bytes, so nothing is
/// taken off the socket and the upstream receives the hello exactly as the client sent it.
async fn peek_sni(stream: &Socket) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_HELLO];
    let mut seen = 0;
    loop {
        let n = stream.peek_more(&mut buf, seen).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor.read_tls(&mut &buf[..n])?;
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(accepted.client_hello().server_name().map(str::to_owned)),
            // Not all of it yet: wait for more bytes than these.
            Ok(None) if n < MAX_HELLO => seen = n,
            _ => return Err(io::ErrorKind::InvalidData.into()),
        }
    }
}

/// Connect to an endpoint of `cluster` and copy bytes both ways until both sides are done
/// (each direction's end is passed on as a half-close) or nothing moved for `idle`.
async fn relay(down: Socket, cluster: &Cluster, idle: Duration) -> io::Result<()> {
    // --- load balancing: the connection counts in flight on its endpoint until it ends.
    let peer = down.get_ref().peer_addr()?;
    let Some((endpoint, _in_flight)) = cluster.pick_connection(peer) else {
        return Err(io::ErrorKind::ConnectionRefused.into()); // no endpoint in rotation
    };
    let stats = &cluster.upstream.stats;
    let target =
        (endpoint.host().trim_start_matches('[').trim_end_matches(']'), endpoint.port_u16().unwrap_or(0));
    let connect = tokio::time::timeout(cluster.upstream.settings.connect_timeout, connect(target));
    let up = match connect.await {
        Ok(Ok(s)) => s,
        _ => {
            stats.connect_failures.inc();
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
    };
    let _open = OpenConnection::new(Arc::clone(stats));
    let _ = up.get_ref().set_nodelay(true);

    // Each direction reads one socket and writes the other, through shared references, in a
    // task of its own: the task a wake-up reaches is the one direction waiting on that
    // socket. Joined in one task, every wake-up polled both directions, and the one with
    // nothing to do asked the reactor again for a readiness it did not have (its lock and
    // waker check), twice per exchange.
    let pair = Arc::new(Pair { down, up, activity: Activity::default() });
    // Aborted when dropped: the relay went idle, or its connection was dropped.
    let mut back = {
        let pair = Arc::clone(&pair);
        AbortOnDropHandle::new(tokio::spawn(async move {
            pump(&mut &pair.up, &mut &pair.down, &pair.activity).await
        }))
    };
    let both = async {
        let forward = pump(&mut &pair.down, &mut &pair.up, &pair.activity).await;
        // A panic in the other direction (never expected) ends the relay like an error.
        let back = (&mut back).await.unwrap_or_else(|e| Err(io::Error::other(e)));
        forward.and(back)
    };
    tokio::select! {
        // The work first: the other branch only ends it.
        biased;
        r = both => r,
        // Idle: no byte either way for `idle` (give or take a quarter: the watchdog looks
        // four times per timeout, so each chunk costs one relaxed store, not a clock reading).
        () = pair.activity.idle(idle) => Ok(()),
    }
}

/// The two ends of a relayed connection and what the idle watchdog reads, shared by the
/// tasks of its two directions.
struct Pair {
    down: Socket,
    up: Socket,
    activity: Activity,
}

/// The first address of `host` that takes a connection (an IP literal resolves at once;
/// a name is looked up off the worker).
async fn connect((host, port): (&str, u16)) -> io::Result<Socket> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the endpoint's name resolves to no address");
    for addr in tokio::net::lookup_host((host, port)).await? {
        match Socket::connect(addr).await {
            Ok(socket) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Copy one direction until EOF, then half-close the other side's write half.
async fn pump<R, W>(from: &mut R, to: &mut W, activity: &Activity) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        activity.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_patterns_match_exact_suffix_and_any() {
        let exact = SniPattern::parse("API.example.com").unwrap();
        assert!(exact.matches(Some("api.example.com")));
        assert!(!exact.matches(Some("x.api.example.com")));
        assert!(!exact.matches(None));
        let wild = SniPattern::parse("*.example.com").unwrap();
        assert!(wild.matches(Some("a.example.com")));
        assert!(wild.matches(Some("a.b.EXAMPLE.com")));
        assert!(!wild.matches(Some("example.com")));
        assert!(SniPattern::parse("*").unwrap().matches(None));
        assert!(SniPattern::parse("*.").is_err());
        assert!(SniPattern::parse("a..b").is_err());
        assert!(SniPattern::parse("a b").is_err());
    }
}
