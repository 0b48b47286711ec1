//! The entry points as operators use them: the `weft-policy check` binary, and `run_on` in its
//! default (mTLS) mode getting its certificate from a real identity service with its token.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::*;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::config::ENV_TOKEN_FILE;
use weft_identity::tls::CertStore;
use weft_policy::client::{ClientTls, PolicyClient, service_identity};
use weft_policy::config::{ENV_DIR, PolicyArgs, run_on};
use weft_policy::registry::Registration;
use weft_policy::server::Listeners;
use weft_runtime::testing::http_get_async;

#[test]
fn check_binary_reports_valid_and_invalid_directories() {
    let dir = resource_dir(RESOURCES);
    let out = Command::new(env!("CARGO_BIN_EXE_weft-policy"))
        .args(["check".as_ref(), dir.path().as_os_str()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "valid (1 files, 5 documents: 1 AuthorizationPolicy, 1 HTTPRoute, 3 Service)"
        ),
        "{stdout}"
    );

    write(
        dir.path(),
        &RESOURCES.replace("weight: 10}", "weight: ten}"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_weft-policy"))
        .args(["check".as_ref(), dir.path().as_os_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("resources.yaml: document 5 (HTTPRoute default/api): spec.rules[0].backendRefs[1].weight: invalid type"), "{stderr}");
    assert!(
        stderr.contains("1 error, nothing would be served"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_mode_gets_a_certificate_and_serves_mtls() {
    let ca_dir = tempfile::tempdir().unwrap();
    let authority = Authority::load_or_create(&AuthorityConfig::new(ca_dir.path())).unwrap();
    let policy_id = service_identity(authority.trust_domain()).unwrap();
    let token = authority
        .token_key()
        .create(
            &policy_id,
            &authority.anchor_fingerprint(),
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let api_id = weft_identity::SpiffeId::parse("spiffe://weft.local/ns/default/sa/api").unwrap();
    let workload = credentials(&authority, &api_id);
    let bundle = authority.bundle().clone();
    let identity = weft_identity::server::Running::start(authority, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let token_file = ca_dir.path().join("policy.token");
    std::fs::write(&token_file, token).unwrap();
    let dir = resource_dir(RESOURCES);
    let args = PolicyArgs::from_lookup([
        (ENV_DIR.to_string(), dir.path().display().to_string()),
        (ENV_TOKEN_FILE.to_string(), token_file.display().to_string()),
        (
            weft_identity::config::ENV_IDENTITY_ADDR.to_string(),
            identity.addr.to_string(),
        ),
    ])
    .unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = api.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(run_on(
        Listeners { api, admin },
        args,
        weft_runtime::process::wait_true(stop_rx),
    ));

    let certs: Arc<dyn rustls::client::ResolvesClientCert> =
        CertStore::new(workload.certified_key().unwrap());
    let mut settings = fast_settings(addr.to_string());
    settings.tls = Some(ClientTls::mesh(&bundle, policy_id, Some(certs)).unwrap());
    let client = PolicyClient::new(settings);
    let _lease = client.keep_registered(Registration {
        trust: None,
        service: "api".into(),
        namespace: None,
        labels: [("version".to_string(), "v1".to_string())].into(),
        address: "127.0.0.1:7301".parse().unwrap(),
        identity: None,
        lease: None,
        metrics: Some("127.0.0.1:4191".parse().unwrap()),
    });
    let mut endpoints = client.watch_endpoints("default", "api-v1");
    let got = wait_until(
        &mut endpoints,
        Duration::from_secs(10),
        "the registration over mTLS",
        |e| e.endpoints.len() == 1,
    )
    .await;
    assert_eq!(got.endpoints[0].identity.as_ref(), Some(&api_id));
    // Operators' tools find the workload and its proxy's metrics on the admin port.
    let (status, listed) = http_get_async(admin_addr, "/workloads", "x")
        .await
        .expect("the admin port answers");
    assert_eq!(status, 200, "{listed}");
    let workloads: Vec<weft_policy::registry::Workload> = serde_json::from_str(&listed).unwrap();
    assert_eq!(workloads.len(), 1, "{listed}");
    assert_eq!(workloads[0].service, "api");
    assert_eq!(workloads[0].identity.as_ref(), Some(&api_id));
    assert_eq!(
        workloads[0].metrics,
        Some("127.0.0.1:4191".parse().unwrap())
    );

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
