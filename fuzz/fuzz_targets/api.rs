//! The control plane's API (`weft_policy::api::Api::handle`): request paths and query
//! parameters, registration bodies, and what the proxy's client makes of the answers.
//!
//! Input: one byte choosing the method, the path and query up to the first `\n`, then the
//! body. The API runs in development mode (no mTLS) over a small resource set.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use weft_policy::api::{
    Api, ApiSettings, Auth, DEFAULT_MAX_REGISTRATIONS_PER_IDENTITY, Limits, encode, fuzzing::decode,
};
use weft_policy::authz::{DefaultPolicy, WorkloadPolicy};
use weft_policy::client::decode_event;
use weft_policy::metrics::Metrics;
use weft_policy::registry::{AddressInfo, Registered, Registration, ServiceEndpoints};
use weft_policy::routes::ServiceRoutes;
use weft_policy::store::Store;
use weft_runtime::metrics::Registry;
use weft_runtime::serve::{ConnInfo, ErrorBody};

const RESOURCES: &str = "\
kind: Service
metadata: {name: api, namespace: default}
spec: {ports: [{port: 8080}, {port: 5432, appProtocol: opaque}], endpoints: [{address: 10.0.0.1:8080}]}
---
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: api, port: 8080}]
  rules: [{backendRefs: [{name: api, port: 8080}], timeouts: {request: 2s}}]
";

struct Setup {
    api: Arc<Api>,
    conn: Arc<ConnInfo>,
    _stop: tokio::sync::watch::Sender<bool>,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let sources = [(PathBuf::from("mesh.yaml"), RESOURCES.to_string())];
    let config = weft_policy::load::compile(&sources, DefaultPolicy::default())
        .expect("the fuzz target's resources are valid");
    let store = Store::new(
        config,
        "fuzz".into(),
        Metrics::new(&Registry::new()),
        DEFAULT_MAX_REGISTRATIONS_PER_IDENTITY,
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // No warm-up: a resumed endpoints watch would otherwise send nothing until its first
    // heartbeat (as designed), and the target reads each watch's first event.
    let settings = ApiSettings {
        registry_warmup: Duration::ZERO,
        ..ApiSettings::default()
    };
    let limits = Limits::new(
        settings.max_watches_per_identity,
        settings.max_requests_per_identity,
    );
    let api = Arc::new(Api {
        store,
        auth: Auth::InsecureDev,
        settings,
        stop,
        started: tokio::time::Instant::now(),
        limits,
        manage: None,
    });
    let conn = Arc::new(ConnInfo {
        remote: "127.0.0.1:40000".parse().expect("an address"),
        peer_certs: None,
    });
    Setup {
        api,
        conn,
        _stop: stop_tx,
    }
});

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::DELETE, Method::PUT];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    // Percent-decoding undoes the client's encoding, whatever the text.
    let text = String::from_utf8_lossy(target);
    assert_eq!(decode(&encode(&text)), text);

    let method = METHODS[usize::from(m) % METHODS.len()].clone();
    // hyper refuses what `http` cannot parse before the API sees it.
    let Ok(req) = Request::builder()
        .method(method.clone())
        .uri(target)
        .body(Full::new(Bytes::copy_from_slice(body)))
    else {
        return;
    };
    let sent = Bytes::copy_from_slice(body);
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    weft_fuzz::block_on(async {
        let (status, body) = call(req).await;
        check(&method, &path, &query, status, &body, sent).await;
        // Let watch streams whose client went away notice it and end.
        tokio::task::yield_now().await;
    });
});

/// Sends `req` and reads the answer: all of it, or the first chunk of a watch stream.
async fn call(req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let s = &*SETUP;
    let rsp = s.api.clone().handle(req, s.conn.clone()).await;
    let status = rsp.status();
    let mut body = rsp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("the first event of a watch comes at once");
    let first = match first {
        Some(Ok(f)) => f.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    (status, first)
}

/// What an answer must be, given the request (`sent`: its body).
async fn check(
    method: &Method,
    path: &str,
    query: &str,
    status: StatusCode,
    body: &[u8],
    sent: Bytes,
) {
    // Nothing a client sends is the server's fault.
    assert!(
        !status.is_server_error(),
        "{status} for {method} {path}?{query}"
    );
    if !status.is_success() {
        let e: ErrorBody = serde_json::from_slice(body).expect("refusals are JSON ErrorBody");
        assert!(!e.error.is_empty());
        return;
    }
    match (method.as_str(), path) {
        // Every answer of a watch path decodes as the proxy's client decodes it.
        ("GET", _) => {
            let line = body.strip_suffix(b"\n").expect("events are whole lines");
            let decoded = match path {
                "/v1/endpoints" => decode_event::<ServiceEndpoints>(line).map(|e| e.is_some()),
                "/v1/inbound" => decode_event::<WorkloadPolicy>(line).map(|e| e.is_some()),
                "/v1/routes" => decode_event::<ServiceRoutes>(line).map(|e| e.is_some()),
                "/v1/address" => decode_event::<AddressInfo>(line).map(|e| e.is_some()),
                other => panic!("200 for GET {other}"),
            };
            let snapshot = decoded.expect("the client decodes what the server sends");
            let watch = query.contains("watch=");
            assert!(snapshot || watch, "a list answer is a snapshot");
        }
        // A registration is granted for what was asked, and its registrant can remove it.
        ("POST", "/v1/register") => {
            let granted: Registered = serde_json::from_slice(body).expect("a Registered");
            let asked: Registration =
                serde_json::from_slice(&sent).expect("the API accepted this body");
            assert_eq!(granted.service, asked.service);
            assert_eq!(granted.address, asked.address);
            let target = format!(
                "/v1/register?namespace={}&address={}",
                encode(&granted.namespace),
                encode(&granted.address.to_string())
            );
            let req = Request::delete(target)
                .body(Full::new(Bytes::new()))
                .expect("a request");
            let (status, _) = call(req).await;
            assert_eq!(
                status,
                StatusCode::NO_CONTENT,
                "{granted:?} was not removed"
            );
        }
        ("DELETE", "/v1/register") => assert_eq!(status, StatusCode::NO_CONTENT),
        (m, p) => panic!("{status} for {m} {p}"),
    }
}
