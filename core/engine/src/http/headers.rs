//! Header rules a proxy must apply on both sides.

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are never
/// forwarded. `Connection` may name more, which go too.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

/// Remove hop-by-hop headers in place. The common case (a request with no `Connection`
/// header) costs a handful of hash lookups and no allocation.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(listed) = headers.get(header::CONNECTION) {
        if let Ok(listed) = listed.to_str() {
            let named: Vec<HeaderName> =
                listed.split(',').filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()).collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // `TE: trailers` is the one TE that HTTP/2 allows, and gRPC needs it end to end.
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_standard_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("proxy-connection", HeaderValue::from_static("close"));
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(h.contains_key(header::HOST));
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn te_trailers_is_kept_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }
}
