//! HTTP: the proxy's server side (downstream), its client side (upstream pools), and the
//! header rules they share.

pub(crate) mod actions;
pub(crate) mod client;
pub(crate) mod h1pool;
pub(crate) mod h1server;
pub(crate) mod h2pool;
pub(crate) mod headers;
pub(crate) mod limits;
pub(crate) mod proxy;
pub(crate) mod server;

use bytes::Bytes;
use http_body_util::{Either, Full};
/// What the proxy answers with: the upstream's streamed body (with what policies attach to
/// it), or a small local one.
pub(crate) type ProxyBody = Either<crate::policy::timeouts::UpstreamBody, Full<Bytes>>;

/// A short plain-text answer the proxy gives itself (404 no route, 503 no upstream...).
pub(crate) fn local_reply(status: http::StatusCode, text: &'static str) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(Either::Right(Full::new(Bytes::from_static(text.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
