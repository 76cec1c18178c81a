//! A route's actions beyond picking a cluster: header edits, path and host rewrites, and
//! the answers the proxy gives itself (direct responses and redirects).
//!
//! Everything is compiled with the snapshot: header names and values are parsed once, and
//! applying an edit to a request is a few `HeaderMap` operations on ready values (cloning
//! a `HeaderName` or `HeaderValue` bumps a refcount; nothing is parsed per request).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};

use super::ProxyBody;
use crate::config::{DirectResponseSpec, HeaderActionsSpec, RedirectSpec, RewriteSpec};
use crate::error::Error;
use crate::metrics::{RouteStats, StatusCounters};
use crate::router::{check_path, PathMatch};

/// The largest direct-response body a snapshot may carry.
pub(crate) const MAX_DIRECT_BODY: usize = 64 * 1024;

/// Headers that header actions may not touch: they frame the message or name its target,
/// which the proxy owns (`rewrite.host` is the way to change the host).
const RESERVED: [HeaderName; 9] = [
    header::HOST,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

// === impl HeaderActions ===

/// Header edits, applied as `remove`, then `set`, then `add`.
#[derive(Debug, Default)]
pub(crate) struct HeaderActions {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderActions {
    pub(crate) fn compile(spec: &HeaderActionsSpec, path: &str) -> Result<Self, Error> {
        let name = |n: &str, at: String| {
            let parsed = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| Error::config(&at, format!("{n:?} is not a header name")))?;
            if RESERVED.contains(&parsed) || n.starts_with(':') {
                return Err(Error::config(at, format!("{n:?} is managed by the proxy and cannot be edited")));
            }
            Ok(parsed)
        };
        let pairs = |list: &[crate::config::HeaderSpec], field: &str| {
            list.iter()
                .enumerate()
                .map(|(i, h)| {
                    let at = format!("{path}.{field}.{i}");
                    let n = name(&h.name, format!("{at}.name"))?;
                    let v = HeaderValue::from_str(&h.value).map_err(|_| {
                        Error::config(
                            format!("{at}.value"),
                            format!("{:?} is not a header value (visible ASCII, spaces and tabs)", h.value),
                        )
                    })?;
                    Ok((n, v))
                })
                .collect::<Result<Box<[_]>, Error>>()
        };
        let remove = spec
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| name(n, format!("{path}.remove.{i}")))
            .collect::<Result<Box<[_]>, Error>>()?;
        Ok(Self { remove, set: pairs(&spec.set, "set")?, add: pairs(&spec.add, "add")? })
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    #[inline]
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

// === impl ForwardActions ===

/// What a forwarding route does to the request on its way up and the response on its way
/// back; shared by the route's targets.
#[derive(Debug, Default)]
pub(crate) struct ForwardActions {
    /// `(bytes of the path the route matched, replacement)`.
    prefix_rewrite: Option<(usize, Box<str>)>,
    host_rewrite: Option<HeaderValue>,
    request_headers: HeaderActions,
    response_headers: HeaderActions,
}

impl ForwardActions {
    /// `path` is the route's place in the snapshot; `matched` its compiled path match.
    pub(crate) fn compile(
        rewrite: &RewriteSpec,
        request_headers: &HeaderActionsSpec,
        response_headers: &HeaderActionsSpec,
        matched: &PathMatch,
        path: &str,
    ) -> Result<Self, Error> {
        let prefix_rewrite = match &rewrite.path_prefix {
            None => None,
            Some(with) => {
                let at = format!("{path}.rewrite.path_prefix");
                check_path(with).map_err(|m| Error::config(&at, m))?;
                let len = matched
                    .rewritable_len()
                    .ok_or_else(|| Error::config(&at, "a path_regex match has no prefix to rewrite"))?;
                Some((len, with.as_str().into()))
            }
        };
        let host_rewrite = rewrite
            .host
            .as_deref()
            .map(|h| parse_authority(h).map_err(|m| Error::config(format!("{path}.rewrite.host"), m)))
            .transpose()?;
        Ok(Self {
            prefix_rewrite,
            host_rewrite,
            request_headers: HeaderActions::compile(request_headers, &format!("{path}.request_headers"))?,
            response_headers: HeaderActions::compile(response_headers, &format!("{path}.response_headers"))?,
        })
    }

    /// The path and query to send upstream, when a prefix rewrite changes it.
    #[inline]
    pub(crate) fn rewrite_path(&self, original: Option<&PathAndQuery>) -> Option<PathAndQuery> {
        let (len, with) = self.prefix_rewrite.as_ref()?;
        let original = original?;
        let rest = original.path().get(*len..)?;
        let query = original.query();
        let mut out = String::with_capacity(with.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
        out.push_str(with);
        out.push_str(rest);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        PathAndQuery::try_from(out).ok()
    }

    /// Edit the headers of the request going upstream (after hop-by-hop headers are gone).
    #[inline]
    pub(crate) fn apply_request(&self, headers: &mut HeaderMap) {
        if let Some(host) = &self.host_rewrite {
            headers.insert(header::HOST, host.clone());
        }
        if !self.request_headers.is_empty() {
            self.request_headers.apply(headers);
        }
    }

    /// Whether the route edits the response's headers (which must then be in its map: an
    /// upstream head is not passed on as read, h1pool.rs `RawHead`).
    #[inline]
    pub(crate) fn edits_response(&self) -> bool {
        !self.response_headers.is_empty()
    }

    /// Edit the headers of the response going back to the client.
    #[inline]
    pub(crate) fn apply_response(&self, headers: &mut HeaderMap) {
        if !self.response_headers.is_empty() {
            self.response_headers.apply(headers);
        }
    }
}

/// A `host` or `host:port` for a Host header or a redirect.
fn parse_authority(text: &str) -> Result<HeaderValue, String> {
    let ok = text.parse::<http::uri::Authority>().is_ok_and(|a| !a.as_str().contains('@') && a.host() != "");
    if !ok || text.is_empty() {
        return Err(format!("{text:?} is not a host or host:port"));
    }
    HeaderValue::from_str(text).map_err(|_| format!("{text:?} is not a host or host:port"))
}

// === impl Local ===

/// A route that answers itself, and the metric handles its answers count in (the route's,
/// with an empty cluster label).
#[derive(Debug)]
pub(crate) struct Local {
    answer: Answer,
    response_headers: HeaderActions,
    counters: Arc<StatusCounters>,
    route_stats: Arc<RouteStats>,
}

#[derive(Debug)]
enum Answer {
    Direct { status: StatusCode, body: Bytes },
    Redirect(Redirect),
}

impl Local {
    pub(crate) fn direct(
        spec: &DirectResponseSpec,
        response_headers: &HeaderActionsSpec,
        path: &str,
        counters: Arc<StatusCounters>,
        route_stats: Arc<RouteStats>,
    ) -> Result<Self, Error> {
        let at = format!("{path}.direct_response");
        let status =
            StatusCode::from_u16(spec.status).ok().filter(|s| (200..=599).contains(&s.as_u16())).ok_or_else(
                || Error::config(format!("{at}.status"), format!("{} is not a status 200-599", spec.status)),
            )?;
        if spec.body.len() > MAX_DIRECT_BODY {
            return Err(Error::config(format!("{at}.body"), format!("longer than {MAX_DIRECT_BODY} bytes")));
        }
        Ok(Self {
            answer: Answer::Direct { status, body: Bytes::from(spec.body.clone()) },
            response_headers: HeaderActions::compile(response_headers, &format!("{path}.response_headers"))?,
            counters,
            route_stats,
        })
    }

    pub(crate) fn redirect(
        spec: &RedirectSpec,
        response_headers: &HeaderActionsSpec,
        matched: &PathMatch,
        path: &str,
        counters: Arc<StatusCounters>,
        route_stats: Arc<RouteStats>,
    ) -> Result<Self, Error> {
        Ok(Self {
            answer: Answer::Redirect(Redirect::compile(spec, matched, &format!("{path}.redirect"))?),
            response_headers: HeaderActions::compile(response_headers, &format!("{path}.response_headers"))?,
            counters,
            route_stats,
        })
    }

    /// The route's stats (observe.rs counts the answer's bytes there).
    pub(crate) fn route_stats(&self) -> Arc<RouteStats> {
        Arc::clone(&self.route_stats)
    }

    /// Answer `req`, and count the answer as the route's.
    pub(crate) fn respond<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let mut resp = match &self.answer {
            Answer::Direct { status, body } => {
                let mut resp = Response::new(Either::Right(Full::new(body.clone())));
                *resp.status_mut() = *status;
                if !body.is_empty() {
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                }
                resp
            }
            Answer::Redirect(redirect) => match redirect.location(req) {
                Some(location) => {
                    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
                    *resp.status_mut() = redirect.status;
                    resp.headers_mut().insert(header::LOCATION, location);
                    resp
                }
                None => super::local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
            },
        };
        self.response_headers.apply(resp.headers_mut());
        self.counters.record(resp.status().as_u16());
        resp
    }
}

// === impl Redirect ===

#[derive(Debug)]
pub(crate) struct Redirect {
    status: StatusCode,
    scheme: Option<&'static str>,
    /// Replaces the request's authority.
    host: Option<Box<str>>,
    path: RedirectPath,
    strip_query: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum RedirectPath {
    Keep,
    Replace(Box<str>),
    /// `(bytes of the path the route matched, replacement)`.
    Prefix(usize, Box<str>),
}

impl Redirect {
    pub(crate) fn compile(spec: &RedirectSpec, matched: &PathMatch, path: &str) -> Result<Self, Error> {
        let status = match spec.status {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(spec.status).expect("a known status"),
            s => {
                return Err(Error::config(
                    format!("{path}.status"),
                    format!("{s} is not a redirect status (301, 302, 303, 307 or 308)"),
                ))
            }
        };
        let scheme = match spec.scheme.as_deref() {
            None => None,
            Some("http") => Some("http"),
            Some("https") => Some("https"),
            Some(other) => {
                return Err(Error::config(
                    format!("{path}.scheme"),
                    format!("{other:?} is not http or https"),
                ))
            }
        };
        if let Some(h) = &spec.host {
            parse_authority(h).map_err(|m| Error::config(format!("{path}.host"), m))?;
        }
        let new_path = match (&spec.path, &spec.prefix_rewrite) {
            (None, None) => RedirectPath::Keep,
            (Some(p), None) => {
                check_path(p).map_err(|m| Error::config(format!("{path}.path"), m))?;
                RedirectPath::Replace(p.as_str().into())
            }
            (None, Some(p)) => {
                let at = format!("{path}.prefix_rewrite");
                check_path(p).map_err(|m| Error::config(&at, m))?;
                let len = matched
                    .rewritable_len()
                    .ok_or_else(|| Error::config(&at, "a path_regex match has no prefix to rewrite"))?;
                RedirectPath::Prefix(len, p.as_str().into())
            }
            (Some(_), Some(_)) => {
                return Err(Error::config(path, "set at most one of path and prefix_rewrite"));
            }
        };
        Ok(Self {
            status,
            scheme,
            host: spec.host.as_deref().map(Into::into),
            path: new_path,
            strip_query: spec.strip_query,
        })
    }

    /// The `Location` for `req`: an absolute URL when the host is known (the redirect's, or
    /// the request's), else just the path and query. When only the scheme changes, a port
    /// that was the old scheme's default (80 for http, 443 for https) is dropped.
    pub(crate) fn location<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let uri = req.uri();
        let old_scheme = uri.scheme_str().unwrap_or("http");
        let scheme = self.scheme.unwrap_or(old_scheme);
        let authority: Option<&str> = match &self.host {
            Some(h) => Some(h),
            None => uri.authority().map(|a| a.as_str()).or_else(|| {
                req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty())
            }),
        };
        let authority = authority.map(|a| {
            if self.host.is_none() && scheme != old_scheme {
                let default_port = if old_scheme == "https" { ":443" } else { ":80" };
                a.strip_suffix(default_port).unwrap_or(a)
            } else {
                a
            }
        });
        // The request's own host is echoed back only if it looks like one.
        if self.host.is_none() && !authority.is_none_or(plausible_authority) {
            return None;
        }
        let old_path = uri.path();
        let mut out = String::with_capacity(64 + old_path.len());
        if let Some(a) = authority {
            out.push_str(scheme);
            out.push_str("://");
            out.push_str(a);
        }
        match &self.path {
            RedirectPath::Keep => out.push_str(old_path),
            RedirectPath::Replace(p) => out.push_str(p),
            RedirectPath::Prefix(len, with) => {
                out.push_str(with);
                out.push_str(old_path.get(*len..).unwrap_or(""));
            }
        }
        if let Some(q) = uri.query().filter(|_| !self.strip_query) {
            out.push('?');
            out.push_str(q);
        }
        HeaderValue::try_from(out).ok()
    }
}

/// Letters, digits and `-._:[]`: what a host, IPv4/IPv6 address and port are made of.
fn plausible_authority(a: &str) -> bool {
    a.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']'))
}

#[cfg(test)]
pub(crate) mod tests_support {
    //! Builders shared by the router's unit tests.
    use super::*;
    use crate::config::HeaderSpec;

    pub(crate) fn header_actions(
        set: &[(&str, &str)],
        add: &[(&str, &str)],
        remove: &[&str],
    ) -> HeaderActionsSpec {
        let pairs = |l: &[(&str, &str)]| {
            l.iter().map(|(n, v)| HeaderSpec { name: (*n).into(), value: (*v).into() }).collect()
        };
        HeaderActionsSpec {
            set: pairs(set),
            add: pairs(add),
            remove: remove.iter().map(|n| (*n).into()).collect(),
        }
    }
}
