//! HTTP/2 for the load generator: the `h2` crate's client (the HTTP/2 engine hyper uses),
//! one connection shared by `streams` concurrent request loops, as h2load's `-m` does.

use std::rc::Rc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, Uri};
use tokio::sync::Mutex;

use super::conn::{Exchange, Failure};
use super::transport::Transport;

/// Flow-control windows: large, so the generator never throttles the target.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 24;

/// The request every stream sends.
pub(crate) struct H2Request {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// One HTTP/2 connection, shared by the stream loops of one connection slot; `None` until
/// connected, and again after it failed.
pub(crate) type Shared = Rc<Mutex<Option<SendRequest<Bytes>>>>;

async fn connect(transport: &Transport) -> Result<SendRequest<Bytes>, Failure> {
    let io = transport.connect().await?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|_| Failure::Protocol)?;
    // The connection task reads and writes frames for every stream; it ends with the socket.
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn failure(e: &h2::Error) -> Failure {
    if e.is_io() || e.is_go_away() || e.is_reset() {
        Failure::Reset
    } else {
        Failure::Protocol
    }
}

/// One request and its whole response on the shared connection.
pub(crate) async fn exchange(
    shared: &Shared,
    transport: &Transport,
    req: &H2Request,
) -> Result<Exchange, Failure> {
    let send = {
        let mut slot = shared.lock().await;
        if slot.is_none() {
            *slot = Some(connect(transport).await?);
        }
        slot.clone().expect("just connected")
    };
    let result = send_one(send, req).await;
    if let Err(e) = &result {
        if e.is_io() || e.is_go_away() {
            // The connection is gone: the next request on this slot opens another.
            *shared.lock().await = None;
        }
    }
    result.map_err(|e| failure(&e))
}

async fn send_one(send: SendRequest<Bytes>, req: &H2Request) -> Result<Exchange, h2::Error> {
    let mut send = send.ready().await?;
    let mut head =
        Request::builder().method(req.method.clone()).uri(req.uri.clone()).body(()).expect("valid parts");
    *head.headers_mut() = req.headers.clone();
    let (response, mut stream) = send.send_request(head, req.body.is_empty())?;
    let mut rest = req.body.clone();
    while !rest.is_empty() {
        stream.reserve_capacity(rest.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .ok_or_else(|| h2::Error::from(h2::Reason::CANCEL))??;
        let chunk = rest.split_to(granted.min(rest.len()));
        stream.send_data(chunk, rest.is_empty())?;
    }
    let (parts, mut body) = response.await?.into_parts();
    let mut bytes = 0u64;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let _ = body.trailers().await?;
    Ok(Exchange { status: parts.status.as_u16(), bytes, reusable: true })
}
