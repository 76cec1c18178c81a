//! The HTTP/2 pool against a real hyper HTTP/2 server on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{Either, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use super::*;
use crate::config::ClusterProtocol;
use crate::http::client::{PoolSettings, Upstream};

/// An h2c server answering with the `:authority` it got (`seen-authority`) and whether a
/// `host` header came too; counts the connections it accepted.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

async fn server_on(listener: tokio::net::TcpListener) -> Server {
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(|req: Request<Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                let authority = req.uri().authority().map_or("", |a| a.as_str()).to_owned();
                resp.headers_mut().insert("seen-authority", HeaderValue::from_str(&authority).unwrap());
                let host = if req.headers().contains_key(HOST) { "yes" } else { "no" };
                resp.headers_mut().insert("seen-host", HeaderValue::from_static(host));
                Ok::<_, Infallible>(resp)
            });
            // The connections end with the task (aborting the JoinSet closes them).
            conns.spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    Server { addr, accepted, task }
}

async fn server() -> Server {
    server_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
}

fn upstream(idle: Duration) -> Upstream {
    let settings = PoolSettings {
        connect_timeout: Duration::from_millis(500),
        max_idle_per_endpoint: 16,
        idle_timeout: idle,
        protocol: ClusterProtocol::Http2,
        max_connections: None,
    };
    Upstream::new(settings, None, Arc::default())
}

fn get(endpoint: SocketAddr, path: &str, host: Option<&str>) -> Request<OutgoingBody> {
    let mut req = Request::new(Either::Right(Either::Left(Full::new(Bytes::new()))));
    *req.uri_mut() = format!("http://{endpoint}{path}").parse().unwrap();
    if let Some(h) = host {
        req.headers_mut().insert(HOST, HeaderValue::from_str(h).unwrap());
    }
    req
}

fn header<B>(resp: &Response<B>, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_host_is_the_authority_and_one_connection_carries_every_stream() {
    let s = server().await;
    let up = upstream(Duration::from_secs(30));
    let (a, b, c, d) = tokio::join!(
        up.request(get(s.addr, "/slow", Some("api.example.com"))),
        up.request(get(s.addr, "/slow", Some("api.example.com:8080"))),
        up.request(get(s.addr, "/slow", Some("other.test"))),
        up.request(get(s.addr, "/slow", None)),
    );
    let (a, b, c, d) = (a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap());
    assert_eq!(header(&a, "seen-authority"), "api.example.com");
    assert_eq!(header(&b, "seen-authority"), "api.example.com:8080");
    assert_eq!(header(&c, "seen-authority"), "other.test");
    // No Host header: the endpoint is the authority.
    assert_eq!(header(&d, "seen-authority"), s.addr.to_string());
    // The Host header became :authority; it is not sent beside it.
    assert_eq!(header(&a, "seen-host"), "no");
    assert_eq!(a.version(), Version::HTTP_2);
    // Four concurrent requests, one connection, one connect.
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(up.stats.connections_total.get(), 1);
    assert_eq!(up.stats.active_connections.get(), 1);
    s.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_is_replaced_by_a_new_one() {
    let s = server().await;
    let up = upstream(Duration::from_secs(30));
    let r = up.request(get(s.addr, "/", Some("a.test"))).await.unwrap();
    assert_eq!(header(&r, "seen-authority"), "a.test");
    drop(r);
    // The upstream restarts on the same port: its connections close.
    s.task.abort();
    let mut listener = None;
    for _ in 0..500 {
        match tokio::net::TcpListener::bind(s.addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            // Poll interval of a bounded wait (5 s) for the aborted server's port to free.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let listener = listener.expect("the port was freed");
    let s2 = server_on(listener).await;
    let mut ok = None;
    for _ in 0..200 {
        if up.stats.active_connections.get() == 0 {
            ok = Some(up.request(get(s.addr, "/", Some("a.test"))).await.unwrap());
            break;
        }
        // Poll interval of a bounded wait (2 s) for the pool to see the connection close.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = ok.expect("the closed connection was noticed");
    assert_eq!(header(&r, "seen-authority"), "a.test");
    assert_eq!(s2.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(up.stats.connections_total.get(), 2);
    s2.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_leaves_its_slot_and_closes() {
    let s = server().await;
    let up = upstream(Duration::from_millis(50));
    drop(up.request(get(s.addr, "/", Some("a.test"))).await.unwrap());
    assert_eq!(up.stats.active_connections.get(), 1);
    for _ in 0..300 {
        if up.stats.active_connections.get() == 0 {
            break;
        }
        // Poll interval of a bounded wait (3 s) for the idle timeout to close the connection.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.stats.active_connections.get(), 0, "the idle connection closed");
    // The next request connects again.
    drop(up.request(get(s.addr, "/", Some("a.test"))).await.unwrap());
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    s.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_connect_that_times_out_share_its_failure() {
    // A TLS endpoint that accepts TCP and never answers the ClientHello: the connect hangs
    // until the cluster's connect timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            socks.push(s);
        }
    });
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let settings = PoolSettings {
        connect_timeout: Duration::from_millis(300),
        max_idle_per_endpoint: 16,
        idle_timeout: Duration::from_secs(30),
        protocol: ClusterProtocol::Http2,
        max_connections: None,
    };
    let up = Upstream::new(settings, Some((tls, Some("localhost".into()))), Arc::default());
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        up.request(get(addr, "/", None)),
        up.request(get(addr, "/", None)),
        up.request(get(addr, "/", None)),
    );
    let took = started.elapsed();
    for r in [a, b, c] {
        let e = r.unwrap_err();
        assert!(e.is_connect());
        let timed_out = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        assert!(timed_out, "{e}");
    }
    // One connect for the three, so one timeout's wait, not three in a row.
    assert_eq!(up.stats.connect_failures.get(), 1);
    assert!(took < Duration::from_millis(850), "{took:?}");
    hold.abort();
}
