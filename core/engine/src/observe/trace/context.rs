//! Trace context on the wire: W3C `traceparent` and B3 (single `b3` header and the multi
//! `X-B3-*` headers), read strictly and written back for the upstream.
//!
//! Written by hand: the formats are a few fixed-width hex fields, and the crates that parse
//! them (opentelemetry's propagators) bring a whole SDK and allocate on every request.
//! Everything here works on stack buffers.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub(crate) const B3: HeaderName = HeaderName::from_static("b3");
pub(crate) const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(crate) const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(crate) const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(crate) const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub(crate) const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A trace context as a caller sent it: its ids, when it had valid ones, and its sampling
/// decision, when it made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Incoming {
    /// The trace id and the caller's span id (the parent of the proxy's span).
    pub(crate) ids: Option<([u8; 16], [u8; 8])>,
    pub(crate) sampled: Option<bool>,
    /// A B3 trace id came as 64 bits (16 hex digits); B3 headers sent on keep that width.
    pub(crate) short_trace_id: bool,
}

// === W3C trace context ===

/// Parse one `traceparent` value (W3C Trace Context, level 1): `version-traceid-parentid-flags`
/// in lowercase hex. Version `00` is exactly 55 characters; a later version (not `ff`) is read
/// by its first 55 characters when what follows starts with `-`. All-zero ids are invalid.
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<Incoming> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    match version {
        0x00 if value.len() != 55 => return None,
        0xff => return None,
        0x00 => {}
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = hex_array(&value[3..35])?;
    let span_id: [u8; 8] = hex_array(&value[36..52])?;
    let flags = hex_byte(&value[53..55])?;
    if is_zero(&trace_id) || is_zero(&span_id) {
        return None;
    }
    Some(Incoming { ids: Some((trace_id, span_id)), sampled: Some(flags & 1 == 1), short_trace_id: false })
}

/// `00-<trace id>-<span id>-<flags>`: the value this proxy sends.
pub(crate) fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    let mut out = [0u8; 55];
    out[0..3].copy_from_slice(b"00-");
    write_hex(&mut out[3..35], trace_id);
    out[35] = b'-';
    write_hex(&mut out[36..52], span_id);
    out[52] = b'-';
    out[53..55].copy_from_slice(if sampled { b"01" } else { b"00" });
    out
}

// === B3 ===

/// Parse a single `b3` header: `{trace id}-{span id}[-{sampling}[-{parent span id}]]`, or a
/// lone sampling decision (`0`, `1`, `d`). Trace ids are 16 or 32 lowercase hex digits.
pub(crate) fn parse_b3_single(value: &[u8]) -> Option<Incoming> {
    if value.len() == 1 {
        return Some(Incoming { ids: None, sampled: Some(b3_sampling(value)?), short_trace_id: false });
    }
    let mut parts = value.split(|&b| b == b'-');
    let (trace_id, short) = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        Some(s) => Some(b3_sampling(s)?),
        None => None,
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Incoming { ids: Some((trace_id, span_id)), sampled, short_trace_id: short })
}

/// Read the multi-header B3 form. Ids count only when both the trace and the span id are
/// valid; `X-B3-Flags: 1` (debug) means sampled. None when no B3 header is there at all.
pub(crate) fn parse_b3_multi(headers: &HeaderMap) -> Option<Incoming> {
    let trace = headers.get(B3_TRACE_ID);
    let span = headers.get(B3_SPAN_ID);
    let sampled = headers.get(B3_SAMPLED);
    let debug = headers.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    if trace.is_none() && span.is_none() && sampled.is_none() && !debug {
        return None;
    }
    let ids =
        match (trace.and_then(|t| b3_trace_id(t.as_bytes())), span.and_then(|s| b3_span_id(s.as_bytes()))) {
            (Some(t), Some(s)) => Some((t, s)),
            _ => None,
        };
    let sampled = if debug {
        Some(true)
    } else {
        sampled.and_then(|v| match v.as_bytes() {
            b"1" | b"true" => Some(true),
            b"0" | b"false" => Some(false),
            _ => None,
        })
    };
    Some(Incoming {
        ids: ids.map(|((t, _), s)| (t, s)),
        sampled,
        short_trace_id: ids.is_some_and(|((_, short), _)| short),
    })
}

/// `{trace id}-{span id}-{0|1}-{parent span id}`; the trace id 16 digits wide when `short`.
pub(crate) fn format_b3_single(
    trace_id: &[u8; 16],
    short: bool,
    span_id: &[u8; 8],
    sampled: bool,
    parent: &[u8; 8],
) -> ([u8; 68], usize) {
    let mut out = [0u8; 68];
    let mut at = 0;
    let trace = if short { &trace_id[8..] } else { &trace_id[..] };
    write_hex(&mut out[..trace.len() * 2], trace);
    at += trace.len() * 2;
    out[at] = b'-';
    write_hex(&mut out[at + 1..at + 17], span_id);
    at += 17;
    out[at..at + 3].copy_from_slice(if sampled { b"-1-" } else { b"-0-" });
    at += 3;
    write_hex(&mut out[at..at + 16], parent);
    (out, at + 16)
}

fn b3_trace_id(v: &[u8]) -> Option<([u8; 16], bool)> {
    let mut id = [0u8; 16];
    let short = match v.len() {
        16 => {
            id[8..].copy_from_slice(&hex_array::<8>(v)?);
            true
        }
        32 => {
            id = hex_array(v)?;
            false
        }
        _ => return None,
    };
    (!is_zero(&id)).then_some((id, short))
}

fn b3_span_id(v: &[u8]) -> Option<[u8; 8]> {
    let id: [u8; 8] = if v.len() == 16 { hex_array(v)? } else { return None };
    (!is_zero(&id)).then_some(id)
}

fn b3_sampling(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

// === ids and hex ===

/// A random id that is not all zeroes (the formats reserve zero for "invalid").
pub(crate) fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        for chunk in id.chunks_mut(8) {
            let r = fastrand::u64(..).to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if !is_zero(&id) {
            return id;
        }
    }
}

/// A random (version 4) UUID in its 36-character text form.
pub(crate) fn uuid_v4() -> [u8; 36] {
    let mut b = fastrand::u128(..).to_le_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, group) in [4usize, 2, 2, 2, 6].iter().enumerate() {
        let start: usize = [0usize, 4, 6, 8, 10][i];
        write_hex(&mut out[at..at + group * 2], &b[start..start + group]);
        at += group * 2 + 1;
    }
    out
}

pub(crate) fn header_value(bytes: &[u8]) -> HeaderValue {
    // Only ever called with the ASCII hex, digits and dashes written above.
    HeaderValue::from_bytes(bytes).expect("trace context values are ASCII")
}

fn is_zero(id: &[u8]) -> bool {
    id.iter().all(|&b| b == 0)
}

/// Lowercase hex only: the W3C and B3 formats both forbid uppercase.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn hex_array<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair)?;
    }
    Some(out)
}

pub(crate) fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Lowercase hex of `bytes` (for access logs, the tap and tests; not on the request path).
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex is ASCII")
}
