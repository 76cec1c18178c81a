//! `protocol: auto` over TLS against real TLS servers on loopback: ALPN picks the protocol
//! per endpoint, and the client's host reaches the upstream either way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{OutgoingBody, PoolSettings, Upstream};
use crate::config::ClusterProtocol;

/// A TLS server for `localhost` offering these ALPN protocols, answering with the
/// `:authority` and `Host` it got; counts the connections whose client offered `h2`. Also
/// the client config that trusts it.
async fn tls_server(alpn: &[&[u8]]) -> (SocketAddr, Arc<AtomicUsize>, rustls::ClientConfig) {
    let (server, client) = crate::testing::tls_pair(alpn);
    let server = Arc::new(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (count, server) = (Arc::clone(&count), Arc::clone(&server));
            tokio::spawn(async move {
                let lazy = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), sock);
                let Ok(start) = lazy.await else { return };
                if start.client_hello().alpn().is_some_and(|mut offered| offered.any(|p| p == b"h2")) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let Ok(tls) = start.into_stream(server).await else { return };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                    let authority = req.uri().authority().map_or("", |a| a.as_str()).to_owned();
                    let host = req.headers().get(HOST).cloned().unwrap_or(HeaderValue::from_static(""));
                    resp.headers_mut().insert("seen-authority", HeaderValue::from_str(&authority).unwrap());
                    resp.headers_mut().insert("seen-host", host);
                    Ok::<_, Infallible>(resp)
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                }
            });
        }
    });
    (addr, accepted, client)
}

fn auto(client: rustls::ClientConfig) -> Upstream {
    let settings = PoolSettings {
        connect_timeout: Duration::from_secs(2),
        max_idle_per_endpoint: 4,
        idle_timeout: Duration::from_secs(30),
        protocol: ClusterProtocol::Auto,
        max_connections: None,
    };
    Upstream::new(settings, Some((client, Some("localhost".into()))), Arc::default())
}

fn get(endpoint: SocketAddr) -> Request<OutgoingBody> {
    let mut req = Request::new(Either::Right(Either::Left(Full::new(Bytes::new()))));
    *req.uri_mut() = format!("https://{endpoint}/").parse().unwrap();
    req.headers_mut().insert(HOST, HeaderValue::from_static("api.example.com"));
    req
}

fn header<B>(resp: &Response<B>, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_speaks_http2_where_alpn_picks_it_with_the_client_host_as_authority() {
    let (addr, offered_h2, client) = tls_server(&[b"h2", b"http/1.1"]).await;
    let up = auto(client);
    for _ in 0..3 {
        let resp = up.request(get(addr)).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(header(&resp, "seen-authority"), "api.example.com");
    }
    assert_eq!(offered_h2.load(Ordering::SeqCst), 1, "one multiplexed connection");
    assert_eq!(up.stats.connections_total.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_http1_where_alpn_picks_it_and_remembers() {
    let (addr, offered_h2, client) = tls_server(&[b"http/1.1"]).await;
    let up = auto(client);
    for _ in 0..3 {
        let resp = up.request(get(addr)).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_11);
        assert_eq!(header(&resp, "seen-host"), "api.example.com");
        // Drain the body so that the connection goes back to the pool.
        http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    }
    // The first connection learnt the endpoint's choice: it alone offered h2.
    assert_eq!(offered_h2.load(Ordering::SeqCst), 1);
}
