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

/// The names `strip_hop_by_hop` rules on: `HOP_BY_HOP`, `Proxy-Connection`, and `TE` (kept
/// only as `trailers`).
const HOP_BY_HOP_NAMES: [&str; 8] = [
    "connection",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
    "te",
];

/// The lengths of `HOP_BY_HOP_NAMES`, as bits: a name of any other length is none of them.
const HOP_BY_HOP_LENGTHS: u32 = {
    let mut bits = 0u32;
    let mut i = 0;
    while i < HOP_BY_HOP_NAMES.len() {
        bits |= 1 << HOP_BY_HOP_NAMES[i].len();
        i += 1;
    }
    bits
};

/// Whether `name` (as read, any case) is a hop-by-hop header `strip_hop_by_hop` rules on.
/// Most names fail the length test and cost nothing more.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    name.len() < 32
        && HOP_BY_HOP_LENGTHS & (1 << name.len()) != 0
        && HOP_BY_HOP_NAMES.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Remove hop-by-hop headers in place. One pass over the names comes first: most messages
/// carry none of them, or only `Connection` (every keep-alive response of an HTTP/1.1
/// upstream), and the pass costs less than a hash lookup per hop-by-hop name.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut connection = false;
    let mut others = false;
    for (name, value) in headers.iter() {
        if name == header::CONNECTION {
            connection = true;
        } else if HOP_BY_HOP.contains(name)
            || name == "proxy-connection"
            // `TE: trailers` is the one TE that HTTP/2 allows, and gRPC needs it end to end.
            || (name == header::TE && value != "trailers")
        {
            others = true;
        }
    }
    if connection {
        // Names the `Connection` header lists go too; its own tokens need no lookup.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| connection_names(v.as_bytes()))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if others {
        for name in &HOP_BY_HOP[1..] {
            headers.remove(name);
        }
        if headers.get(header::TE).is_some_and(|te| te != "trailers") {
            headers.remove(header::TE);
        }
        headers.remove("proxy-connection");
    }
}

/// The header names a `Connection` value lists, past its own options `close` and
/// `keep-alive`: the other hop-by-hop headers of this message.
pub(crate) fn connection_names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_byte_test_knows_every_name_strip_removes() {
        for name in HOP_BY_HOP.iter().map(HeaderName::as_str).chain(["proxy-connection", "te"]) {
            assert!(is_hop_by_hop(name.to_ascii_uppercase().as_bytes()), "{name}");
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), http::HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert!(h.is_empty(), "{name} is kept by strip_hop_by_hop");
        }
        for name in ["host", "date", "server", "content-length", "x-te", "tee", "upgrades"] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

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
    fn each_kind_of_message_loses_exactly_its_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::CONTENT_LENGTH]);

        // No `Connection`, yet a hop-by-hop header: still removed.
        let mut h = HeaderMap::new();
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::DATE, HeaderValue::from_static("now"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::DATE]);

        // Two `Connection` headers: what both list goes.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close, x-a"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("x-c", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-c"]);
    }

    #[test]
    fn te_trailers_is_kept_for_grpc() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }
}
