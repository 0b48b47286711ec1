use http::Response;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;
use weft_policy::registry::ServiceEndpoints;
use weft_policy::routes::{RequestMatch, Retry, RetryBudget, Timeouts};
use weft_policy::wire::{Dur, HeaderMatch, HeaderMatchSpec, StringMatchType};

use super::*;
use crate::body::{self, Body};
use crate::testing::{Handle, Mock, Watches, destination, finish, rule};

/// One routes watch per service, driven by the test; no service has endpoints.
#[derive(Default)]
struct Table(Watches<ServiceRoutes>);

impl Table {
    fn set(&self, service: &str, rules: Vec<RouteRule>) {
        self.0
            .sender(service)
            .send_replace(Some(Arc::new(ServiceRoutes {
                namespace: "default".into(),
                service: service.into(),
                rules,
            })));
    }
}

impl Resolve for Table {
    fn resolve(&self, _ns: &str, _service: &str) -> watch::Receiver<Option<Arc<ServiceEndpoints>>> {
        watch::channel(None).1
    }

    fn routes(&self, _ns: &str, service: &str) -> watch::Receiver<Option<Arc<ServiceRoutes>>> {
        self.0.subscribe(service)
    }
}

fn router(table: &Arc<Table>) -> (Router<Mock>, Handle) {
    let (svc, handle) = mock::pair();
    (RouterLayer::new(table.clone()).layer(svc), handle)
}

fn request(service: &str, user_agent: Option<&str>) -> Request<Body> {
    let mut req = Request::get("/items").body(body::empty()).unwrap();
    if let Some(ua) = user_agent {
        req.headers_mut()
            .insert(http::header::USER_AGENT, ua.parse().unwrap());
    }
    req.extensions_mut().insert(destination(service));
    req
}

/// Sends `req` through the router and returns the route the service below saw on it.
async fn route_of(svc: &mut Router<Mock>, handle: &mut Handle, req: Request<Body>) -> Arc<Route> {
    let call = tokio::spawn(svc.ready().await.unwrap().call(req));
    let (seen, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(body::empty()));
    finish(call).await.unwrap();
    seen.extensions().get::<Arc<Route>>().unwrap().clone()
}

/// The one backend of a route, as `namespace/service`.
fn backend(route: &Route) -> String {
    let backends: Vec<_> = route.backends.items().collect();
    assert_eq!(backends.len(), 1, "{route:?}");
    backends[0].0.label().to_string()
}

/// `user-agent` matching `.*mobile.*` → `api-v3`; everything else → `api-v2`. The catch-all
/// comes first: precedence, not order, decides.
fn mobile_rules() -> Vec<RouteRule> {
    let mobile = HeaderMatch::try_from(HeaderMatchSpec {
        name: "User-Agent".into(),
        kind: StringMatchType::RegularExpression,
        value: ".*mobile.*".into(),
    })
    .unwrap();
    let mut v3 = rule("mobile", &[("api-v3", 1)]);
    v3.matches = vec![RequestMatch {
        headers: vec![mobile],
        ..Default::default()
    }];
    vec![rule("all", &[("api-v2", 1)]), v3]
}

#[tokio::test]
async fn a_request_takes_the_most_specific_matching_rule() {
    let table = Arc::new(Table::default());
    table.set("api", mobile_rules());
    let (mut svc, mut handle) = router(&table);

    let r = route_of(
        &mut svc,
        &mut handle,
        request("api", Some("acme mobile 2.0")),
    )
    .await;
    assert_eq!((&*r.route, &*r.rule), ("default/api", "mobile"));
    assert_eq!(backend(&r), "default/api-v3");

    for ua in [Some("curl/8"), None] {
        let r = route_of(&mut svc, &mut handle, request("api", ua)).await;
        assert_eq!(&*r.rule, "all", "{ua:?}");
        assert_eq!(backend(&r), "default/api-v2");
    }
}

#[tokio::test]
async fn unmatched_requests_and_services_without_rules_take_the_default_route() {
    let table = Arc::new(Table::default());
    // Only mobile clients have a rule.
    table.set("api", mobile_rules().split_off(1));
    table.set("web", Vec::new());
    let (mut svc, mut handle) = router(&table);

    for (service, ua) in [("api", Some("curl/8")), ("web", Some("acme mobile"))] {
        let r = route_of(&mut svc, &mut handle, request(service, ua)).await;
        assert_eq!((&*r.route, &*r.rule), (DEFAULT_ROUTE, DEFAULT_ROUTE));
        assert_eq!(backend(&r), format!("default/{service}"));
        assert_eq!(r.request_timeout, None);
        assert!(r.breaker.is_none() && r.fault.is_none());
    }
}

#[tokio::test]
async fn a_change_of_routes_applies_to_the_next_request() {
    let table = Arc::new(Table::default());
    table.set("api", vec![rule("r", &[("api-v1", 1)])]);
    let (mut svc, mut handle) = router(&table);
    let r = route_of(&mut svc, &mut handle, request("api", None)).await;
    assert_eq!(backend(&r), "default/api-v1");

    table.set("api", vec![rule("r", &[("api-v2", 1)])]);
    let r = route_of(&mut svc, &mut handle, request("api", None)).await;
    assert_eq!(backend(&r), "default/api-v2");

    // Every rule removed: the default route.
    table.set("api", Vec::new());
    let r = route_of(&mut svc, &mut handle, request("api", None)).await;
    assert_eq!(
        (&*r.rule, backend(&r).as_str()),
        (DEFAULT_ROUTE, "default/api")
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_request_waits_for_the_routes_but_not_forever() {
    let table = Arc::new(Table::default());
    let (mut svc, mut handle) = router(&table);

    // The answer comes while the request waits: the request takes its rule.
    let start = tokio::time::Instant::now();
    let call = tokio::spawn(svc.ready().await.unwrap().call(request("api", None)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    table.set("api", vec![rule("r", &[("api-v1", 1)])]);
    let (seen, send) = handle.next_request().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(&*seen.extensions().get::<Arc<Route>>().unwrap().rule, "r");
    send.send_response(Response::new(body::empty()));
    finish(call).await.unwrap();

    // Nobody ever answers about `web`: the default route after `ROUTES_TIMEOUT`.
    let start = tokio::time::Instant::now();
    let r = route_of(&mut svc, &mut handle, request("web", None)).await;
    assert_eq!(start.elapsed(), ROUTES_TIMEOUT);
    assert_eq!(
        (&*r.rule, backend(&r).as_str()),
        (DEFAULT_ROUTE, "default/web")
    );
}

#[tokio::test]
async fn a_rules_retry_budget_survives_updates_that_keep_its_settings() {
    let with_budget = |ratio: f64, timeout_ms: u64| {
        let mut r = rule("r", &[("api", 1)]);
        r.retry = Some(Retry {
            attempts: 2,
            codes: Vec::new(),
            conditions: Vec::new(),
            per_try_timeout: None,
            budget: Some(RetryBudget {
                ratio,
                min_per_second: 10,
                ttl: Dur(Duration::from_secs(10)),
            }),
        });
        r.timeouts = Some(Timeouts {
            request: Some(Dur(Duration::from_millis(timeout_ms))),
            backend_request: None,
        });
        vec![r]
    };
    let table = Arc::new(Table::default());
    table.set("api", with_budget(0.2, 1_000));
    let (mut svc, mut handle) = router(&table);
    let first = route_of(&mut svc, &mut handle, request("api", None)).await;

    // Another timeout, the same budget: a new route, the old budget.
    table.set("api", with_budget(0.2, 2_000));
    let second = route_of(&mut svc, &mut handle, request("api", None)).await;
    assert_eq!(second.request_timeout, Some(Duration::from_secs(2)));
    assert!(std::ptr::eq(first.retry.budget(), second.retry.budget()));

    // Another ratio: a new budget.
    table.set("api", with_budget(0.5, 2_000));
    let third = route_of(&mut svc, &mut handle, request("api", None)).await;
    assert!(!std::ptr::eq(second.retry.budget(), third.retry.budget()));
}

/// A destination no request used for the idle timeout is forgotten with its compiled routes,
/// its watch dropped; its next request follows it again.
#[tokio::test(start_paused = true)]
async fn idle_routes_are_forgotten_and_found_again() {
    let table = Arc::new(Table::default());
    table.set("api", vec![rule("all", &[("api", 1)])]);
    let limits = crate::discovery::Limits {
        idle_timeout: Duration::from_secs(30),
        capacity: 10,
    };
    let (svc, mut handle) = mock::pair();
    let mut svc = RouterLayer::with_limits(table.clone(), limits).layer(svc);
    let watchers = || table.0.sender("api").receiver_count();
    let route = route_of(&mut svc, &mut handle, request("api", None)).await;
    assert_eq!(&*route.rule, "all");
    assert_eq!(watchers(), 1);
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(watchers(), 0);
    let route = route_of(&mut svc, &mut handle, request("api", None)).await;
    assert_eq!(&*route.rule, "all");
    assert_eq!(watchers(), 1);
}
