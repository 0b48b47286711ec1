//! The request path of both directions, composed in one place, in request order.
//!
//! Each layer is its own module; requests carry what layers learn (destination, peer identity,
//! chosen endpoint) in their extensions; the stacks are type-erased here ([`HttpService`]).

use std::net::IpAddr;
use std::sync::Arc;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::app::{AppIp, Forward};
use crate::authz::{AuthorizeLayer, CheckPolicy, PolicyWatch};
use crate::balance::{Backends, BalanceLayer};
use crate::destination::{Destinations, FindDestinationLayer};
use crate::discovery::{Limits, Resolve};
use crate::edge::EdgeLayer;
use crate::endpoint::Connect;
use crate::fault::InjectFaultsLayer;
use crate::identity::{ClientIdentity, IdentityLayer};
use crate::metrics::ProxyMetrics;
use crate::orig_dst::OrigDst;
use crate::retry::RetryFailuresLayer;
use crate::route::RouterLayer;
use crate::route::metrics::RouteMetricsLayer;
use crate::split::{ChooseBackend, SplitLayer};
use crate::svc::HttpService;
use crate::timeout::TimeoutLayer;
use crate::unmeshed::{Addresses, Intercepted, OwnSockets};

/// The outbound HTTP stack, shared by every connection from the application. `namespace`: the
/// namespace of names given without one (the workload's own); `own`: the proxy's own sockets
/// to original destinations (loop detection, [`OwnSockets`]); `limits`: how many destinations
/// the router and the balancer each follow, and for how long unused.
pub fn outbound(
    namespace: &str,
    connect: Connect,
    resolver: Arc<dyn Resolve>,
    addresses: Arc<Addresses>,
    metrics: Arc<ProxyMetrics>,
    own: OwnSockets,
    limits: Limits,
) -> HttpService {
    // The balancer's discovery cache, which the switch of intercepted traffic asks too.
    let backends = Backends::new(resolver.clone(), limits);
    let mesh = BoxCloneSyncService::new(
        ServiceBuilder::new()
            // Which service the request is for: routing and everything after depends on it.
            .layer(FindDestinationLayer::new(Destinations::new(namespace)))
            // Which rule of the service's HTTPRoutes (or its default route): the settings of
            // every layer below.
            .layer(RouterLayer::with_limits(resolver, limits))
            // Which backend of the rule, by weight.
            .layer(SplitLayer::new(ChooseBackend))
            // Golden signals per route and backend, once per request, whoever answered.
            .layer(RouteMetricsLayer::new(metrics.clone()))
            // The route's whole-request timeout: injected delays and retries count against it.
            .layer(TimeoutLayer::request())
            // Injected faults, above retries: the application sees them as configured.
            .layer(InjectFaultsLayer::new(metrics.clone()))
            // Retries within the route's budget.
            .layer(RetryFailuresLayer::new(metrics.clone()))
            // One attempt's timeout.
            .layer(TimeoutLayer::per_try())
            // One endpoint of the backend, from discovery's current view, skipping endpoints
            // the circuit breaker ejected.
            .layer(BalanceLayer::over(backends.clone()).with_metrics(metrics.clone()))
            // The endpoint: pooled mTLS HTTP/2 to its proxy, or plaintext when unmeshed.
            .service(connect.clone()),
    );
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            // First, so that whatever fails below becomes the response the error describes
            // (`weft-error` header), and every request is counted once, however it ends.
            .layer(EdgeLayer::new("outbound", None, metrics.clone()))
            // On a connection `weft init` redirected: a request for a meshed workload's
            // address goes to that workload over mTLS; one for an address or a name the mesh
            // does not know goes, as it is, to the original destination; the rest, and every
            // request on a connection without one, takes the mesh.
            .service(Intercepted::new(
                mesh,
                BoxCloneSyncService::new(connect),
                namespace,
                backends,
                addresses,
                own,
                metrics,
            )),
    )
}

/// The inbound HTTP stack: built once, and finished per connection with the identity the peer
/// proved ([`InboundStack::for_connection`]).
#[derive(Clone)]
pub struct InboundStack {
    edge: EdgeLayer,
    /// Authorization and the application, shared by every connection.
    authorized: HttpService,
}

impl std::fmt::Debug for InboundStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundStack").finish_non_exhaustive()
    }
}

impl InboundStack {
    /// `service`: the local workload's service (`<namespace>/<name>`), the destination label
    /// of every request; the application listens on `app_ip`, and requests whose authority
    /// names no port go to `default_app_port`. Requests for `own_ports` (the proxy's own
    /// listeners) are refused whatever the policy says: through them a peer would act as this
    /// workload (its outbound) or reach its admin endpoint.
    pub fn new(
        service: &str,
        app_ip: IpAddr,
        (default_app_port, own_ports): (u16, &[u16]),
        policy: PolicyWatch,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        let edge = EdgeLayer::new("inbound", Some(Arc::from(service)), metrics.clone());
        let authorized = BoxCloneSyncService::new(
            ServiceBuilder::new()
                // Before anything reaches the application: a denied request costs it nothing.
                .layer(AuthorizeLayer::new(
                    CheckPolicy::new(policy, default_app_port, metrics.clone()).refusing(own_ports),
                ))
                .service(Forward::new(app_ip, default_app_port, metrics)),
        );
        Self { edge, authorized }
    }

    /// The stack for one connection whose peer proved `client` (or nothing, over plaintext)
    /// and, when `weft init` redirected it, its original destination (whose port is then the
    /// application port, for authorization and forwarding); its requests go to the
    /// application at `app`.
    pub fn for_connection(
        &self,
        client: ClientIdentity,
        orig: Option<OrigDst>,
        app: AppIp,
    ) -> HttpService {
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                // First: errors become responses (403 naming the policy), every request counted.
                .layer(self.edge.clone())
                // The connection's original destination, for authz's choice of port.
                .map_request(move |mut req: http::Request<crate::body::Body>| {
                    if let Some(o) = orig {
                        req.extensions_mut().insert(o);
                    }
                    req.extensions_mut().insert(app);
                    req
                })
                // The peer identity from the connection's mTLS handshake, for authz and labels.
                .layer(IdentityLayer::new(client))
                .service(self.authorized.clone()),
        )
    }
}
