//! Mirroring: a percentage of a route's requests is also sent to a shadow cluster, fire and
//! forget. The copy is spawned on its own task and its answer is dropped: it never delays or
//! changes the real response. Only requests whose body is buffered (or empty) are mirrored;
//! the shadow's `Host` gets a `-shadow` suffix (as Envoy does) so its logs can tell.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri};
use http_body_util::{Either, Full};

use super::{per_million, roll};
use crate::cluster::Cluster;
use crate::config::MirrorSpec;
use crate::error::Error;

/// A shadow request that takes longer than this is abandoned.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct Mirror {
    cluster: Arc<Cluster>,
    ppm: u32,
}

impl Mirror {
    pub(crate) fn compile(
        spec: &MirrorSpec,
        path: &str,
        clusters: &std::collections::BTreeMap<String, Arc<Cluster>>,
    ) -> Result<Option<Self>, Error> {
        let cluster = clusters.get(&spec.cluster).ok_or_else(|| {
            Error::config(format!("{path}.cluster"), format!("unknown cluster {:?}", spec.cluster))
        })?;
        let ppm = per_million(spec.percent, &format!("{path}.percent"))?;
        Ok((ppm > 0).then(|| Self { cluster: Arc::clone(cluster), ppm }))
    }

    /// Whether this request is one of the mirrored.
    #[inline]
    pub(crate) fn wanted(&self) -> bool {
        roll(self.ppm)
    }

    /// Send a copy of the request (`parts` and `pq` as they go upstream, with `body`) to the
    /// shadow cluster (`peer`: the client, for balancers that hash its address).
    pub(crate) fn send(&self, parts: &Parts, pq: PathAndQuery, body: Bytes, peer: SocketAddr) {
        let cluster = Arc::clone(&self.cluster);
        let mut req = Request::new(Either::Right(Either::Left(Full::new(body))));
        *req.method_mut() = parts.method.clone();
        *req.headers_mut() = parts.headers.clone();
        let Some((endpoint, _)) = cluster.pick(req.headers(), peer) else { return };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(cluster.upstream.scheme.clone());
        uri.authority = Some(endpoint.clone());
        uri.path_and_query = Some(pq);
        let Ok(uri) = Uri::from_parts(uri) else { return };
        *req.uri_mut() = uri;
        if let Some(host) = parts.headers.get(HOST).and_then(|h| h.to_str().ok()) {
            let shadow = host.split(':').next().unwrap_or(host);
            if let Ok(v) = HeaderValue::from_str(&format!("{shadow}-shadow")) {
                req.headers_mut().insert(HOST, v);
            }
        }
        cluster.upstream.stats.mirrored.inc();
        tokio::spawn(async move {
            let breaker = cluster.policy.breaker.as_ref().map(|b| b.admit(super::breaker::Limit::Requests));
            if matches!(breaker, Some(None)) {
                return;
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(SHADOW_TIMEOUT, cluster.upstream.request(req)).await {
                // Read the answer to its end (keeping none of it) so the connection can go
                // back to the pool.
                let mut body = resp.into_body();
                let drain =
                    async { while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {} };
                let _ = tokio::time::timeout(SHADOW_TIMEOUT, drain).await;
            }
        });
    }
}
