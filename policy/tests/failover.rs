//! A client of several replicas of the control plane (`a:8090,b:8090`) moves to another when
//! its own goes away: its watches resume there and see the next change, and its registration
//! is renewed there at once.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use weft_identity::SpiffeId;
use weft_policy::client::PolicyClient;
use weft_policy::registry::Registration;
use weft_policy::server::Settings;
use weft_policy::wire::Dur;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_to_another_replica_when_its_own_goes_away() {
    let dir = resource_dir(RESOURCES);
    let a = ControlPlane::start(Settings::insecure(dir.path())).await;
    // B's address is given before B runs: the client can only start on A.
    let b_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = PolicyClient::new(fast_settings(format!("{},{b_addr}", a.api)));
    let mut routes = client.watch_routes("default", "api");
    let limit = Duration::from_secs(5);
    wait_until(&mut routes, limit, "the first set", |r| {
        weights(r) == [90, 10]
    })
    .await;
    let registration = Registration {
        trust: None,
        service: "api".into(),
        namespace: None,
        labels: BTreeMap::from([("version".to_string(), "v1".to_string())]),
        address: "127.0.0.1:7001".parse().unwrap(),
        identity: Some(SpiffeId::parse("spiffe://weft.local/ns/default/sa/api").unwrap()),
        lease: Some(Dur(Duration::from_secs(60))),
        metrics: None,
    };
    let _kept = client.keep_registered(registration);

    let b = ControlPlane::start_on(b_addr, Settings::insecure(dir.path())).await;
    let mut at_b = b.client().watch_endpoints("default", "api");
    a.stop().await;
    // Registered again at B at once (its lease would not need renewing for 20 s).
    wait_until(&mut at_b, limit, "the registration at B", |e| {
        e.endpoints.len() == 1
    })
    .await;
    write(dir.path(), &resources_with_weights(50, 50));
    wait_until(&mut routes, limit, "the change, through B", |r| {
        weights(r) == [50, 50]
    })
    .await;
    assert!(client.connections() >= 2);
    b.stop().await;
}
