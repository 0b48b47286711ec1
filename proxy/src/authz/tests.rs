use std::collections::BTreeMap;

use http::{Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;
use weft_identity::SpiffeId;
use weft_policy::authz::{AllowRule, DefaultPolicy, InboundPolicy, InboundPolicySpec};

use super::*;
use crate::body::{self, Body};
use crate::edge::proxy_error;

fn id(sa: &str) -> SpiffeId {
    format!("spiffe://weft.local/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

/// Port 8080: only `web` may call; every other port: any authenticated peer.
fn policy() -> WorkloadPolicy {
    let spec = InboundPolicySpec {
        name: "server:default/api-http".into(),
        rules: vec![AllowRule {
            policy: "default/api-from-web".into(),
            identities: vec![id("web")],
            ..AllowRule::default()
        }],
    };
    WorkloadPolicy {
        namespace: "default".into(),
        service: "api".into(),
        ports: BTreeMap::from([(8080, InboundPolicy::new(spec))]),
        default: InboundPolicy::default_policy(DefaultPolicy::AllAuthenticated),
        opaque_ports: Vec::new(),
    }
}

type Mock = mock::Mock<Request<Body>, Response<Body>>;

/// The layer under test, the app behind it, the policy watch and the metrics.
type Fixture = (
    Authorize<Mock>,
    mock::Handle<Request<Body>, Response<Body>>,
    watch::Sender<Option<Arc<WorkloadPolicy>>>,
    Arc<ProxyMetrics>,
);

fn stack(policy: Option<WorkloadPolicy>) -> Fixture {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (tx, rx) = watch::channel(policy.map(Arc::new));
    let metrics = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
    let svc = AuthorizeLayer::new(CheckPolicy::new(rx, 8080, metrics.clone())).layer(svc);
    (svc, handle, tx, metrics)
}

fn request(peer: Option<&str>, authority: &str) -> Request<Body> {
    let mut req = Request::get(format!("http://{authority}/items"))
        .body(body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ClientIdentity::new(peer.map(id)));
    req
}

/// The code of the error `svc`, kept for more requests, refuses `req` with.
async fn refused(svc: &mut Authorize<Mock>, req: Request<Body>) -> &'static str {
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    proxy_error(err.as_ref()).code()
}

#[tokio::test]
async fn allowed_peer_reaches_the_app_with_its_port() {
    let (svc, mut handle, _tx, metrics) = stack(Some(policy()));
    let call = tokio::spawn(svc.oneshot(request(Some("web"), "api:8080")));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<AppPort>(), Some(&AppPort(8080)));
    send.send_response(Response::new(body::empty()));
    assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    let text = metrics.registry.render();
    assert!(
        text.contains(r#"weft_proxy_authz_total{decision="allow",policy="default/api-from-web",peer="spiffe://weft.local/ns/default/sa/web"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn other_peer_is_forbidden_naming_the_policy() {
    let (svc, mut handle, _tx, metrics) = stack(Some(policy()));
    let err = svc
        .oneshot(request(Some("other"), "api:8080"))
        .await
        .unwrap_err();
    let e = proxy_error(err.as_ref());
    assert_eq!(e.code(), "forbidden");
    assert!(e.to_string().contains("server:default/api-http"), "{e}");
    assert!(e.to_string().contains("sa/other"), "{e}");
    // The app never saw it (the service is gone, so the handle's queue is final).
    assert!(handle.next_request().await.is_none());
    let text = metrics.registry.render();
    assert!(text.contains(r#"decision="deny""#), "{text}");
    // And it is among the recent denials, whole.
    let page = metrics.denials.page();
    assert_eq!(page.total, 1);
    let d = &page.recent[0];
    assert_eq!(
        (d.peer.as_str(), d.method.as_str(), d.path.as_str(), d.port),
        (
            "spiffe://weft.local/ns/default/sa/other",
            "GET",
            "/items",
            8080
        )
    );
    assert_eq!(d.policy, "server:default/api-http");
    assert!(!d.reason.is_empty());
}

#[tokio::test]
async fn plaintext_is_refused_where_only_mesh_peers_are_allowed() {
    // Port 9000 falls under the default policy: any authenticated peer.
    let (svc, _handle, _tx, _) = stack(Some(policy()));
    let err = svc.oneshot(request(None, "api:9000")).await.unwrap_err();
    assert_eq!(proxy_error(err.as_ref()).code(), "forbidden");
}

#[tokio::test]
async fn nothing_is_authorized_before_the_first_policy_and_edits_apply_to_the_next_request() {
    let (mut svc, mut handle, tx, _) = stack(None);
    assert_eq!(
        refused(&mut svc, request(Some("web"), "api:8080")).await,
        "not_ready"
    );

    tx.send_replace(Some(Arc::new(policy())));
    let call = svc
        .ready()
        .await
        .unwrap()
        .call(request(Some("web"), "api:8080"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(body::empty()));
    assert!(call.await.is_ok());

    // The policy now denies everyone on every port.
    let mut deny = policy();
    deny.ports.clear();
    deny.default = InboundPolicy::default_policy(DefaultPolicy::Deny);
    tx.send_replace(Some(Arc::new(deny)));
    assert_eq!(
        refused(&mut svc, request(Some("web"), "api:8080")).await,
        "forbidden"
    );
}

#[tokio::test]
async fn the_original_destination_port_picks_the_policy_and_the_app_port() {
    // The authority says 8080 (only `web`), but the peer dialled 9090 (any authenticated peer):
    // the connection's original destination decides.
    let (svc, mut handle, _tx, _metrics) = stack(Some(policy()));
    let mut req = request(Some("other"), "api:8080");
    req.extensions_mut()
        .insert(crate::orig_dst::OrigDst("10.0.0.2:9090".parse().unwrap()));
    let call = tokio::spawn(svc.oneshot(req));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.extensions().get::<AppPort>(), Some(&AppPort(9090)));
    send.send_response(Response::new(body::empty()));
    assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);

    // And to 8080, `other` is denied even where the authority names another port.
    let (svc, _handle, _tx, _metrics) = stack(Some(policy()));
    let mut req = request(Some("other"), "api:9090");
    req.extensions_mut()
        .insert(crate::orig_dst::OrigDst("10.0.0.2:8080".parse().unwrap()));
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(proxy_error(&*err).code(), "forbidden");
}

#[tokio::test]
async fn the_proxys_own_ports_are_never_reached_whatever_the_policy() {
    let (svc, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let everyone = WorkloadPolicy {
        default: InboundPolicy::default_policy(DefaultPolicy::AllAuthenticated),
        ..policy()
    };
    let (_tx, rx) = watch::channel(Some(Arc::new(everyone)));
    let metrics = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
    let check = CheckPolicy::new(rx, 8080, metrics).refusing(&[4143, 4140, 4191]);
    let mut svc = AuthorizeLayer::new(check).layer(svc);
    // The outbound listener (acting as this workload) and the admin endpoint.
    for port in [4140, 4191] {
        let req = request(Some("web"), &format!("api:{port}"));
        assert_eq!(refused(&mut svc, req).await, "forbidden");
    }
}
