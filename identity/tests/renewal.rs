//! The client library's renewal loop against a real identity service with certificates that
//! live a few seconds: several renewals, each seen on the watch, and an outage of the service
//! that only delays renewal.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::*;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::client::{ClientSettings, IdentityClient};
use weft_identity::server::Running;
use weft_identity::tls::Credentials;
use weft_runtime::metrics::Registry;
use weft_runtime::testing::eventually;

fn short_lived(dir: &std::path::Path) -> Authority {
    let mut cfg = AuthorityConfig::new(dir);
    cfg.leaf_lifetime = Duration::from_secs(3);
    Authority::load_or_create(&cfg).unwrap()
}

/// The client's failed attempts in a row, from its metrics.
fn consecutive_failures(registry: &Registry) -> Option<f64> {
    metric(
        &registry.render(),
        "weft_identity_client_consecutive_failures",
    )
}

/// Waits for the watch to publish a certificate other than `than`, up to `limit`.
async fn next_cert(
    rx: &mut tokio::sync::watch::Receiver<Option<Arc<Credentials>>>,
    than: Option<&Arc<Credentials>>,
    limit: Duration,
) -> Arc<Credentials> {
    tokio::time::timeout(limit, async {
        loop {
            {
                let current = rx.borrow_and_update();
                if let Some(c) = current.as_ref()
                    && than.is_none_or(|t| t.leaf() != c.leaf())
                {
                    return c.clone();
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("no new certificate in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_repeatedly_and_survives_an_identity_outage() {
    let dir = tempfile::tempdir().unwrap();
    let a = short_lived(dir.path());
    let tok = token(&a, "web", Duration::from_secs(3600));
    let running = Running::start(a, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = running.addr;

    let registry = Registry::new();
    let mut settings = ClientSettings::new(addr.to_string(), tok);
    settings.min_backoff = Duration::from_millis(100);
    settings.max_backoff = Duration::from_millis(800);
    let client = IdentityClient::start(settings, &registry);
    let mut rx = client.credentials();

    // Several renewals, each one seen on the watch, each a new leaf and a fresh key.
    let mut seen: Vec<Arc<Credentials>> = Vec::new();
    for _ in 0..4 {
        let c = next_cert(&mut rx, seen.last(), Duration::from_secs(20)).await;
        assert_eq!(c.identity, id("web"));
        if let Some(prev) = seen.last() {
            assert_ne!(prev.key.secret_pkcs8_der(), c.key.secret_pkcs8_der());
        }
        seen.push(c);
    }
    let text = registry.render();
    assert_eq!(
        metric(
            &text,
            "weft_identity_client_certify_total{kind=\"bootstrap\",result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "weft_identity_client_certify_total{kind=\"renewal\",result=\"ok\"}"
        )
        .unwrap()
            >= 3.0,
        "{text}"
    );

    // The identity service goes away: the client keeps its certificate and keeps trying.
    running.stop().await;
    let held = rx.borrow().clone().expect("a certificate is held");
    assert!(
        eventually(Duration::from_secs(20), || {
            consecutive_failures(&registry).unwrap_or(0.0) >= 2.0
        })
        .await,
        "renewal attempts should fail while the service is down"
    );
    assert!(
        rx.borrow().is_some(),
        "the last certificate stays published during the outage"
    );
    let text = registry.render();
    assert!(
        metric(
            &text,
            "weft_identity_client_certify_total{kind=\"any\",result=\"error\"}"
        )
        .unwrap()
            >= 2.0,
        "{text}"
    );

    // It comes back (same data directory, same port): renewal resumes.
    let restarted = Running::start(short_lived(dir.path()), addr).await.unwrap();
    let after = next_cert(&mut rx, Some(&held), Duration::from_secs(20)).await;
    assert!(after.not_after > held.not_after);
    assert!(after.not_after > SystemTime::now());
    assert!(
        eventually(Duration::from_secs(5), || {
            consecutive_failures(&registry) == Some(0.0)
        })
        .await
    );
    restarted.stop().await;
}

#[tokio::test]
async fn client_reports_a_missing_identity_service_and_keeps_trying() {
    let dir = tempfile::tempdir().unwrap();
    let a = short_lived(dir.path());
    let tok = token(&a, "web", Duration::from_secs(3600));
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let registry = Registry::new();
    let mut settings = ClientSettings::new(free.to_string(), tok.clone());
    settings.min_backoff = Duration::from_millis(50);
    settings.max_backoff = Duration::from_millis(200);
    let err = weft_identity::client::bootstrap(&settings)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is `weft identity` running?"),
        "{err}"
    );
    let mut client = IdentityClient::start(settings, &registry);
    assert!(
        eventually(Duration::from_secs(10), || {
            consecutive_failures(&registry).unwrap_or(0.0) >= 3.0
        })
        .await
    );
    assert!(client.credentials().borrow().is_none());
    // The service appears on that port: the client gets its certificate.
    let running = Running::start(a, free).await.unwrap();
    let creds = tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .unwrap();
    assert_eq!(creds.identity, id("web"));
    running.stop().await;
}

/// Two replicas of the identity service over the same CA material (`a:8443,b:8443`): while
/// certificates renew every few seconds, one replica goes away and renewal goes on through the
/// other without one failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_goes_on_through_another_replica() {
    let dir = tempfile::tempdir().unwrap();
    let tok = token(&short_lived(dir.path()), "web", Duration::from_secs(3600));
    let a = Running::start(short_lived(dir.path()), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let b = Running::start(short_lived(dir.path()), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let registry = Registry::new();
    let mut settings = ClientSettings::new(format!("{},{}", a.addr, b.addr), tok);
    settings.min_backoff = Duration::from_millis(100);
    settings.max_backoff = Duration::from_millis(800);
    let client = IdentityClient::start(settings, &registry);
    let mut rx = client.credentials();
    let first = next_cert(&mut rx, None, Duration::from_secs(20)).await;
    a.stop().await;
    let mut last = first;
    for _ in 0..3 {
        last = next_cert(&mut rx, Some(&last), Duration::from_secs(20)).await;
        assert_eq!(last.identity, id("web"));
    }
    let text = registry.render();
    assert_eq!(
        metric(
            &text,
            "weft_identity_client_certify_total{kind=\"any\",result=\"error\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "a renewal failed though a replica was up:\n{text}"
    );
    b.stop().await;
}
