//! The first layer of the outbound path: which service a request is for.
//!
//! The destination comes from the request's authority: the absolute-form URI of a request sent
//! to the proxy as `HTTP_PROXY`, the `Host` header, or HTTP/2's `:authority`. It names a
//! service as `<service>[.<namespace>[.svc.cluster.local]][:<port>]`. A request naming no
//! destination is a bad request (400); an IP literal is not a service of the mesh (502).

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::Request;
use http::uri::Authority;
use tower::filter::{Filter, FilterLayer, Predicate};

use crate::error::ProxyError;
use crate::svc::{BoxError, Labels};

/// The service a request is for (a request extension from this layer on). Shared: the
/// layers below and every retry attempt clone it, which copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination(Arc<Parts>);

/// What a [`Destination`] holds (its fields read through it: `dst.namespace`).
#[derive(Debug, PartialEq, Eq)]
pub struct Parts {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    /// The authority as the application wrote it, which the destination's application sees.
    pub authority: Authority,
    /// `<namespace>/<service>`, made once: the metric label and the balancer's key.
    label: Arc<str>,
}

impl std::ops::Deref for Destination {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl Destination {
    /// `api`, `api.default`, `api.default.svc.cluster.local`, each with an optional port
    /// (default 80). `None` for IP literals.
    pub fn parse(authority: &Authority, default_ns: &str) -> Option<Self> {
        let host = authority.host();
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return None;
        }
        let mut labels = host.split('.');
        let service = labels.next().filter(|s| !s.is_empty())?.to_string();
        let namespace = labels
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or(default_ns)
            .to_string();
        Some(Self(Arc::new(Parts {
            label: Arc::from(format!("{namespace}/{service}")),
            namespace,
            service,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.clone(),
        })))
    }

    /// The destination `label` (`<namespace>/<service>`) of a request the mesh knew by the
    /// address it was going to, sent on with `authority`.
    pub fn of_service(
        namespace: &str,
        service: &str,
        label: Arc<str>,
        authority: Authority,
    ) -> Self {
        Self(Arc::new(Parts {
            namespace: namespace.to_string(),
            service: service.to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority,
            label,
        }))
    }

    /// `<namespace>/<service>`: the metric label and the balancer's key.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// `<service>.<namespace>:<port>`, for messages.
    pub fn display(&self) -> String {
        format!("{}.{}:{}", self.service, self.namespace, self.port)
    }
}

/// Finds the destination of each request (tower's [`Filter`]: the request goes on with its
/// [`Destination`], or fails at once).
pub type FindDestination<S> = Filter<S, Destinations>;

/// Builds [`FindDestination`] services: `FindDestinationLayer::new(Destinations::new(ns))`.
pub type FindDestinationLayer = FilterLayer<Destinations>;

/// The destinations of requests' authorities, remembered.
#[derive(Debug, Clone)]
pub struct Destinations {
    namespace: Arc<str>,
    cache: Arc<Cache>,
}

impl Destinations {
    /// `namespace`: the namespace of names given without one (`http://api:8080`), the
    /// workload's own.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
            cache: Arc::default(),
        }
    }
}

/// At most this many authorities are remembered; past it the cache starts over (an
/// application naming ever new hosts costs a parse per request, no memory).
const CACHE_CAPACITY: usize = 256;

/// The destinations of the authorities seen: a request names the same few services again
/// and again, and parsing one costs four allocations (callgrind).
#[derive(Debug, Default)]
pub struct Cache(RwLock<HashMap<Box<str>, Destination>>);

impl Cache {
    fn get(&self, authority: &str) -> Option<Destination> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(authority)
            .cloned()
    }

    fn insert(&self, authority: &str, dst: &Destination) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert(Box::from(authority), dst.clone());
    }
}

impl<B> Predicate<Request<B>> for Destinations {
    type Request = Request<B>;

    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, BoxError> {
        let raw = raw_authority(&req);
        let found = match raw.and_then(|a| self.cache.get(a)) {
            Some(dst) => Ok(dst),
            None => destination(&req, &self.namespace).inspect(|dst| {
                if let Some(a) = raw {
                    self.cache.insert(a, dst);
                }
            }),
        };
        let dst = found?;
        Labels::set_dst(&req, || dst.label().clone());
        req.extensions_mut().insert(dst);
        Ok(req)
    }
}

/// The authority of `req` as written (see [`crate::http::authority`]), unparsed.
fn raw_authority<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    }
}

fn destination<B>(req: &Request<B>, namespace: &str) -> Result<Destination, ProxyError> {
    let Some(authority) = crate::http::authority(req) else {
        return Err(ProxyError::BadRequest {
            detail: "the request names no destination (no Host header or absolute URI)".into(),
        });
    };
    Destination::parse(&authority, namespace).ok_or_else(|| ProxyError::UnknownDestination {
        destination: authority.to_string(),
    })
}
