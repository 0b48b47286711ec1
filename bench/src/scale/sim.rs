//! The simulated proxies: each a real `PolicyClient` (the proxy's own client library) with
//! its own mTLS connection, certificate and discovery stream, in this one process. Each
//! follows what a proxy follows: its own inbound policy, and the endpoints and routes of the
//! destinations it calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_identity::tls::{CertStore, Credentials};
use weft_identity::{SpiffeId, TrustDomain};
use weft_policy::authz::WorkloadPolicy;
use weft_policy::client::{ClientSettings, ClientTls, PolicyClient, Watched};
use weft_policy::registry::ServiceEndpoints;
use weft_policy::routes::ServiceRoutes;

use super::plane::{BIG, Plane, small};
use crate::Error;

/// One simulated proxy and what it follows.
pub(crate) struct SimProxy {
    pub(crate) _client: PolicyClient,
    pub(crate) _inbound: Watched<WorkloadPolicy>,
    pub(crate) endpoints: Vec<Watched<ServiceEndpoints>>,
    pub(crate) _routes: Vec<Watched<ServiceRoutes>>,
    /// The big service's endpoints, when this proxy calls it.
    pub(crate) big: Option<Watched<ServiceEndpoints>>,
}

impl SimProxy {
    /// Whether everything it follows has arrived.
    fn synced(&self) -> bool {
        self._inbound.borrow().is_some()
            && self.endpoints.iter().all(|w| w.borrow().is_some())
            && self._routes.iter().all(|w| w.borrow().is_some())
            && self.big.as_ref().is_none_or(|w| w.borrow().is_some())
    }
}

/// Credentials for `id` straight from the CA.
pub(crate) fn credentials(plane: &Plane, id: &SpiffeId) -> Result<Credentials, Error> {
    plane.authority.issue_credentials(id)
}

/// A client of the replicas presenting `creds`.
pub(crate) fn client(plane: &Plane, creds: &Credentials) -> Result<PolicyClient, Error> {
    let store = CertStore::new(creds.certified_key().map_err(|e| e.to_string())?);
    let expected = weft_policy::client::service_identity(&TrustDomain::default())?;
    let tls = ClientTls::mesh(&creds.bundle, expected, Some(store))?;
    let mut settings = ClientSettings::new(plane.addrs(), Some(tls));
    settings.request_timeout = Duration::from_secs(60);
    Ok(PolicyClient::new(settings))
}

/// Connects `proxies` simulated proxies, `per_second` new ones a second, of `services - 1`
/// small services (one identity each); the first `big_callers` also call the big service.
/// Returns them once all are in sync (at most `limit`), and how long that took.
pub(crate) async fn connect(
    plane: &Plane,
    proxies: u32,
    services: u32,
    big_callers: u32,
    per_second: u32,
    limit: Duration,
) -> Result<(Vec<SimProxy>, Duration), Error> {
    let smalls = services.saturating_sub(1).max(1);
    let td = TrustDomain::default();
    let mut creds = Vec::new();
    for i in 0..smalls.min(proxies) {
        let id = td
            .workload("default", &small(i))
            .map_err(|e| e.to_string())?;
        creds.push(credentials(plane, &id)?);
    }
    let started = Instant::now();
    let mut fleet = Vec::with_capacity(proxies as usize);
    let batch = (per_second / 10).max(1);
    for i in 0..proxies {
        let own = i % creds.len() as u32;
        let client = client(plane, &creds[own as usize])?;
        let callee = |k: u32| small((own + k * 7919) % smalls);
        let endpoints = (1..=2)
            .map(|k| client.watch_endpoints("default", &callee(k)))
            .collect();
        let routes = (1..=2)
            .map(|k| client.watch_routes("default", &callee(k)))
            .collect();
        fleet.push(SimProxy {
            _inbound: client.watch_inbound("default", &small(own)),
            endpoints,
            _routes: routes,
            big: (i < big_callers).then(|| client.watch_endpoints("default", BIG)),
            _client: client,
        });
        if (i + 1) % batch == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    loop {
        let behind = fleet.iter().filter(|p| !p.synced()).count();
        if behind == 0 {
            break;
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{behind} of {proxies} simulated proxies not in sync after {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((fleet, started.elapsed()))
}

/// Waits until every one of `watches` satisfies `done`, each at most `limit` from `from`:
/// how long each took (from `from`), sorted; an error if one did not.
pub(crate) async fn arrivals(
    watches: Vec<Watched<ServiceEndpoints>>,
    from: Instant,
    limit: Duration,
    done: Arc<dyn Fn(&ServiceEndpoints) -> bool + Send + Sync>,
) -> Result<Vec<Duration>, Error> {
    let tasks: Vec<_> = watches
        .into_iter()
        .map(|mut w| {
            let done = done.clone();
            tokio::spawn(async move {
                let arrived = tokio::time::timeout(
                    limit,
                    w.wait_for(|v| v.as_deref().is_some_and(|e| done(e))),
                )
                .await;
                match arrived {
                    Ok(Ok(_)) => Ok(from.elapsed()),
                    _ => Err(()),
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    let mut late = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(d)) => out.push(d),
            _ => late += 1,
        }
    }
    if late > 0 {
        return Err(format!(
            "{late} proxies did not get the change within {limit:?}"
        ));
    }
    out.sort();
    Ok(out)
}
