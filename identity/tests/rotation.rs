//! CA rotation at the level of the CA's files and a running service, in-process: the steps of
//! an anchor rotation (idempotent, abandoned at the first step), a service following its files
//! without a restart (and refusing files that share no anchor), the service rotating its own
//! issuer, clients moving to a new issuer early when asked, and a token pinning a rotated-out
//! anchor bootstrapping through the link.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use weft_identity::authority::rotate::{
    self, AnchorKeys, AnchorOptions, IssuerOptions, NEXT_ANCHOR_KEY_FILE,
};
use weft_identity::authority::state::{AnchorStep, CaState};
use weft_identity::authority::{ANCHOR_KEY_FILE, Authority, AuthorityConfig};
use weft_identity::client::{self, ClientSettings, IdentityClient, leaf_issuer};
use weft_identity::server::Running;
use weft_identity::tls::Credentials;
use weft_runtime::metrics::Registry;

fn cfg(dir: &Path) -> AuthorityConfig {
    AuthorityConfig::new(dir)
}

fn anchor_opts(link: bool) -> AnchorOptions {
    AnchorOptions {
        lifetime: Duration::from_secs(3600),
        new_key: None,
        link,
        issuer: IssuerOptions {
            lifetime: Duration::from_secs(3600),
            reissue_within: None,
        },
    }
}

fn keys(dir: &Path) -> AnchorKeys {
    AnchorKeys::gather(dir, &[]).unwrap()
}

/// The whole anchor rotation, without asking the mesh.
fn rotate_anchor(dir: &Path, link: bool) -> String {
    let c = cfg(dir);
    let r = rotate::anchor_start(&c, &keys(dir), &anchor_opts(link)).unwrap();
    rotate::anchor_switch(&c, &keys(dir), &anchor_opts(link).issuer).unwrap();
    rotate::anchor_finish(&c).unwrap();
    r.new
}

#[test]
fn the_anchor_rotation_steps_can_be_repeated_and_the_first_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = authority(d).anchor_fingerprint();
    let c = cfg(d);

    // Started, then abandoned: as before.
    let r = rotate::anchor_start(&c, &keys(d), &anchor_opts(true)).unwrap();
    assert_eq!(
        authority(d).bundle().fingerprints(),
        vec![old.clone(), r.new.clone()]
    );
    assert!(d.join(NEXT_ANCHOR_KEY_FILE).exists());
    let again = rotate::anchor_start(&c, &keys(d), &anchor_opts(true)).unwrap_err();
    assert!(again.to_string().contains("is under way"), "{again}");
    rotate::anchor_abort(&c).unwrap();
    let a = authority(d);
    assert_eq!(a.bundle().fingerprints(), vec![old.clone()]);
    assert!(a.links().is_empty());
    assert!(!d.join(NEXT_ANCHOR_KEY_FILE).exists());
    assert!(CaState::load(d).unwrap().anchor_rotation.is_none());

    // Started again and taken through; every step may be run twice.
    let r = rotate::anchor_start(&c, &keys(d), &anchor_opts(true)).unwrap();
    let s1 = rotate::anchor_switch(&c, &keys(d), &anchor_opts(true).issuer).unwrap();
    let issuer = authority(d).issuer_fingerprint();
    let s2 = rotate::anchor_switch(&c, &keys(d), &anchor_opts(true).issuer).unwrap();
    assert_eq!(s1.step, AnchorStep::Issuing);
    assert_eq!(s2.step, AnchorStep::Issuing);
    assert_eq!(
        authority(d).issuer_fingerprint(),
        issuer,
        "a second switch made another issuer"
    );
    let abandon = rotate::anchor_abort(&c).unwrap_err();
    assert!(abandon.to_string().contains("can only go on"), "{abandon}");
    rotate::anchor_finish(&c).unwrap();
    rotate::anchor_finish(&c).unwrap();
    let a = authority(d);
    assert_eq!(a.bundle().fingerprints(), vec![r.new.clone()]);
    assert_eq!(a.anchor_fingerprint(), r.new);
    // The next anchor's key file is gone, moved to the anchor's (the issuer rotation below
    // signs with it).
    assert!(d.join(ANCHOR_KEY_FILE).exists() && !d.join(NEXT_ANCHOR_KEY_FILE).exists());
    let state = CaState::load(d).unwrap();
    assert!(state.anchor_rotation.is_none());
    assert!(
        state
            .history
            .iter()
            .any(|e| e.what.contains("anchor rotation finished"))
    );
    // An issuer rotation afterwards signs under the new anchor with the key in the directory.
    let fp = rotate::rotate_issuer(&c, &keys(d), &anchor_opts(true).issuer).unwrap();
    assert_eq!(authority(d).issuer_fingerprint(), fp);
    assert_eq!(authority(d).anchor_fingerprint(), r.new);
}

#[test]
fn an_anchor_key_kept_elsewhere_is_handed_over_for_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    authority(d);
    let away = tempfile::tempdir().unwrap();
    let old_key = away.path().join("old.key");
    std::fs::rename(d.join(ANCHOR_KEY_FILE), &old_key).unwrap();
    let c = cfg(d);
    // Without it: refused, saying which key and how to hand it over.
    let e = rotate::rotate_issuer(&c, &keys(d), &anchor_opts(true).issuer).unwrap_err();
    assert!(e.to_string().contains("--anchor-key"), "{e}");
    let e = rotate::anchor_start(&c, &keys(d), &anchor_opts(true)).unwrap_err();
    assert!(e.to_string().contains("--new-anchor-key"), "{e}");
    // With it, and the new key written where the operator says.
    let given = AnchorKeys::gather(d, std::slice::from_ref(&old_key)).unwrap();
    rotate::rotate_issuer(&c, &given, &anchor_opts(true).issuer).unwrap();
    let mut opts = anchor_opts(true);
    opts.new_key = Some(away.path().join("new.key"));
    let r = rotate::anchor_start(&c, &given, &opts).unwrap();
    assert!(!d.join(NEXT_ANCHOR_KEY_FILE).exists());
    rotate::anchor_switch(&c, &given, &opts.issuer).unwrap();
    rotate::anchor_finish(&c).unwrap();
    assert_eq!(authority(d).anchor_fingerprint(), r.new);
    assert!(
        !d.join(ANCHOR_KEY_FILE).exists(),
        "a key was written into the data directory"
    );
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn current(client: &IdentityClient) -> Arc<Credentials> {
    client.credentials().borrow().clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_follows_its_files_and_clients_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let a = authority(&d);
    let tok = token(&a, "web", Duration::from_secs(3600));
    let running = Running::start(a, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let _follow = running
        .service
        .follow_files(cfg(&d), Duration::from_millis(100), None);
    let mut settings = ClientSettings::new(running.addr.to_string(), tok);
    settings.trust_refresh = Duration::from_millis(200);
    let mut client = IdentityClient::start(settings, &Registry::new());
    let first = client.ready().await;

    // A new issuer, every leaf of the old one replaced within 1 s: the client moves early
    // (its leaf lives a day).
    let c = cfg(&d);
    let fp = rotate::rotate_issuer(
        &c,
        &keys(&d),
        &IssuerOptions {
            lifetime: Duration::from_secs(3600),
            reissue_within: Some(Duration::from_secs(1)),
        },
    )
    .unwrap();
    wait_for(
        "the client on the new issuer",
        Duration::from_secs(10),
        || leaf_issuer(&current(&client)) == fp,
    )
    .await;
    assert_ne!(leaf_issuer(&first), fp);

    // An anchor rotation's first step: the client trusts both, without a new certificate.
    let r = rotate::anchor_start(&c, &keys(&d), &anchor_opts(true)).unwrap();
    wait_for(
        "the client trusting the new anchor",
        Duration::from_secs(10),
        || current(&client).bundle.fingerprints().contains(&r.new),
    )
    .await;

    // Another CA's files copied in: refused by the service, which keeps serving its own.
    let other = tempfile::tempdir().unwrap();
    authority(other.path());
    for f in ["trust-anchor.pem", "issuer.pem", "issuer.key"] {
        std::fs::copy(other.path().join(f), d.join(f)).unwrap();
    }
    let refused = running.service.reload(&c).unwrap_err();
    assert!(refused.to_string().contains("share none"), "{refused}");
    assert!(
        running
            .service
            .authority()
            .bundle()
            .fingerprints()
            .contains(&r.new)
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_rotates_its_issuer_by_itself_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let mut c = cfg(&d);
    c.issuer_lifetime = Duration::from_secs(4);
    let a = Authority::load_or_create(&c).unwrap();
    let first = a.issuer_fingerprint();
    let running = Running::start(a, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let _follow = running
        .service
        .follow_files(c.clone(), Duration::from_millis(100), Some(0.5));
    // Due after 2 s: replaced, and the service issues from the new one.
    wait_for(
        "an issuer rotated by the service",
        Duration::from_secs(10),
        || running.service.authority().issuer_fingerprint() != first,
    )
    .await;
    let text = running.registry.render();
    assert_eq!(
        metric(&text, "weft_identity_issuer_rotations_total{result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    let second = running.service.authority().issuer_fingerprint();
    assert_eq!(
        metric(
            &text,
            &format!("weft_identity_issuer{{fingerprint=\"{second}\"}}")
        ),
        Some(1.0)
    );
    // Without the anchor key it cannot: counted, and the issuer stays.
    std::fs::remove_file(d.join(ANCHOR_KEY_FILE)).unwrap();
    wait_for(
        "a rotation that cannot be made, counted",
        Duration::from_secs(10),
        || {
            let text = running.registry.render();
            metric(
                &text,
                "weft_identity_issuer_rotations_total{result=\"error\"}",
            )
            .is_some_and(|v| v >= 1.0)
        },
    )
    .await;
    assert_eq!(running.service.authority().issuer_fingerprint(), second);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_pinning_a_rotated_out_anchor_bootstraps_through_the_link() {
    for link in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let tok = token(&authority(&d), "web", Duration::from_secs(3600));
        let new = rotate_anchor(&d, link);
        let running = Running::start(authority(&d), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let got = client::bootstrap(&ClientSettings::new(running.addr.to_string(), tok)).await;
        match (link, got) {
            (true, Ok(creds)) => assert_eq!(creds.bundle.fingerprints(), vec![new]),
            (false, Err(e)) => assert!(
                e.to_string().contains("does not contain the anchor pinned"),
                "{e}"
            ),
            (link, other) => panic!("link {link}: {other:?}"),
        }
        running.stop().await;
    }
}
