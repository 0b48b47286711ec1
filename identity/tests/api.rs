//! The identity API over real TLS: issuance by token and by renewal, and every refusal, each
//! with its 4xx, its reason code, its metric, and the service still serving afterwards.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use support::*;
use tokio::io::AsyncWriteExt;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::server::Running;
use weft_identity::tls;
use weft_runtime::testing::eventually;

fn csr_with(key: &rcgen::KeyPair, sans: Vec<rcgen::SanType>) -> String {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans;
    p.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(rcgen::string::Ia5String::try_from(s.to_string()).unwrap())
}

struct Case {
    name: &'static str,
    body: String,
    bearer: Option<String>,
    client: Option<weft_identity::tls::Credentials>,
    method: &'static str,
    path: &'static str,
    status: u16,
    reason: &'static str,
}

#[tokio::test]
async fn every_rejection_is_a_clear_4xx_and_the_service_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let bundle = a.bundle().clone();
    let web_token = token(&a, "web", Duration::from_secs(600));
    let m = bad_material(dir.path(), &a, &web_token);

    let running = Running::start(a, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = running.addr;
    assert!(
        eventually(Duration::from_secs(5), || SystemTime::now()
            > m.expired_client.not_after + Duration::from_secs(1))
        .await
    );

    let body = |csr: &str| certify_body(csr);
    let t = |s: &str| Some(s.to_string());
    let cases = vec![
        Case { name: "no credentials", body: body(&m.good_csr), bearer: None, client: None, method: "POST", path: "/v1/certify", status: 401, reason: "unauthenticated" },
        Case { name: "garbage token", body: body(&m.good_csr), bearer: t("garbage"), client: None, method: "POST", path: "/v1/certify", status: 401, reason: "token_malformed" },
        Case { name: "forged token", body: body(&m.good_csr), bearer: t(&m.forged), client: None, method: "POST", path: "/v1/certify", status: 401, reason: "token_forged" },
        Case { name: "tampered token", body: body(&m.admin_csr), bearer: t(&m.tampered), client: None, method: "POST", path: "/v1/certify", status: 401, reason: "token_tampered" },
        Case { name: "expired token", body: body(&m.good_csr), bearer: t(&m.expired), client: None, method: "POST", path: "/v1/certify", status: 401, reason: "token_expired" },
        Case { name: "token for another identity", body: serde_json::json!({"csr": m.good_csr, "identity": "spiffe://weft.local/ns/default/sa/admin"}).to_string(), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 403, reason: "token_wrong_identity" },
        Case { name: "CSR for another identity", body: body(&m.admin_csr), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 403, reason: "csr_wrong_identity" },
        Case { name: "CSR with a DNS SAN", body: body(&m.dns_csr), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "csr_extra_sans" },
        Case { name: "CSR with two URI SANs", body: body(&m.two_uri_csr), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "csr_extra_sans" },
        Case { name: "CSR with a bad signature", body: body(&m.bad_sig_csr), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "csr_bad_signature" },
        Case { name: "RSA key", body: body(&m.rsa_csr), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "csr_unsupported_key" },
        Case { name: "P-384 key", body: body(&m.p384_csr), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "csr_unsupported_key" },
        Case { name: "Ed25519 key", body: body(&m.ed_csr), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "csr_unsupported_key" },
        Case { name: "garbage CSR", body: body("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "csr_malformed" },
        Case { name: "garbage body", body: "\u{0}\u{1}not json at all".into(), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 400, reason: "body_malformed" },
        Case { name: "oversized body", body: format!("{{\"csr\": \"{}\"}}", "A".repeat(200 * 1024)), bearer: t(&web_token), client: None, method: "POST", path: "/v1/certify", status: 413, reason: "body_too_large" },
        Case { name: "expired client certificate", body: body(&m.good_csr), bearer: None, client: Some(m.expired_client.clone()), method: "POST", path: "/v1/certify", status: 401, reason: "client_cert_expired" },
        Case { name: "client certificate from another CA", body: body(&m.good_csr), bearer: None, client: Some(m.untrusted_client.clone()), method: "POST", path: "/v1/certify", status: 401, reason: "client_cert_untrusted" },
        Case { name: "unknown path", body: String::new(), bearer: None, client: None, method: "GET", path: "/v1/nope", status: 404, reason: "not_found" },
        Case { name: "wrong method", body: String::new(), bearer: None, client: None, method: "GET", path: "/v1/certify", status: 405, reason: "method_not_allowed" },
    ];

    each_case_is_refused_and_a_good_request_still_served(
        addr, bundle, &cases, m.good_csr, web_token,
    )
    .await;
    each_refusal_is_counted(&running, &cases);
    running.stop().await;
}

/// What the bad cases send: tokens and CSRs the service must refuse, and client certificates
/// it must not accept.
struct BadMaterial {
    _other_dir: tempfile::TempDir,
    forged: String,
    tampered: String,
    expired: String,
    good_csr: String,
    dns_csr: String,
    two_uri_csr: String,
    admin_csr: String,
    bad_sig_csr: String,
    p384_csr: String,
    ed_csr: String,
    rsa_csr: String,
    untrusted_client: tls::Credentials,
    expired_client: tls::Credentials,
}

fn bad_material(dir: &std::path::Path, a: &Authority, web_token: &str) -> BadMaterial {
    let now = SystemTime::now();

    // Material for the bad cases.
    let other_dir = tempfile::tempdir().unwrap();
    let other = authority(other_dir.path());
    let forged = token(&other, "web", Duration::from_secs(600));
    let tampered = {
        let claims = weft_identity::token::decode_unverified(web_token).unwrap();
        let mut c = claims.clone();
        c.sub = id("admin");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let sig = web_token.rsplit_once('.').unwrap().1;
        format!(
            "weft1.{}.{sig}",
            b64.encode(serde_json::to_vec(&c).unwrap())
        )
    };
    let expired = a
        .token_key()
        .create(
            &id("web"),
            &a.anchor_fingerprint(),
            now - Duration::from_secs(7200),
            Duration::from_secs(3600),
        )
        .unwrap();
    let (_, good_csr) = weft_identity::client::generate_csr(&id("web")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let dns_csr = csr_with(
        &key,
        vec![
            uri("spiffe://weft.local/ns/default/sa/web"),
            rcgen::SanType::DnsName("web.example.com".try_into().unwrap()),
        ],
    );
    let two_uri_csr = csr_with(
        &key,
        vec![
            uri("spiffe://weft.local/ns/default/sa/web"),
            uri("spiffe://weft.local/ns/default/sa/web2"),
        ],
    );
    let admin_csr = csr_with(&key, vec![uri("spiffe://weft.local/ns/default/sa/admin")]);
    let bad_sig_csr = {
        let der = CertificateSigningRequestDer::from_pem_slice(good_csr.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        tls::der_to_pem("CERTIFICATE REQUEST", &bytes)
    };
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384_csr = csr_with(&p384, vec![]);
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_csr = csr_with(&ed, vec![]);
    let rsa_csr = {
        let key = dir.join("rsa.key");
        let out = dir.join("rsa.csr");
        let o = openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=web",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out).unwrap()
    };
    let untrusted_client = issue_direct(&other, &id("web"));
    // An expired certificate from this very CA: same files, 1 s lifetime, no back-dating.
    let mut short = AuthorityConfig::new(dir);
    short.leaf_lifetime = Duration::from_secs(1);
    short.clock_skew = Duration::ZERO;
    let expired_client = issue_direct(&Authority::load_or_create(&short).unwrap(), &id("web"));
    BadMaterial {
        _other_dir: other_dir,
        forged,
        tampered,
        expired,
        good_csr,
        dns_csr,
        two_uri_csr,
        admin_csr,
        bad_sig_csr,
        p384_csr,
        ed_csr,
        rsa_csr,
        untrusted_client,
        expired_client,
    }
}

/// Each case gets its status, its reason code and a message that says what is wrong; after
/// each, a good request is still served.
async fn each_case_is_refused_and_a_good_request_still_served(
    addr: std::net::SocketAddr,
    bundle: tls::TrustBundle,
    cases: &[Case],
    good_csr: String,
    web_token: String,
) {
    let body = |csr: &str| certify_body(csr);
    for case in cases {
        let answer = call(
            addr,
            &bundle,
            case.method,
            case.path,
            case.body.clone(),
            case.bearer.as_deref(),
            case.client.as_ref(),
        )
        .await;
        assert_eq!(answer.status, case.status, "{}: {answer:?}", case.name);
        assert_eq!(answer.reason(), case.reason, "{}: {answer:?}", case.name);
        let message = answer.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.len() > 20,
            "{}: the message should say what is wrong: {answer:?}",
            case.name
        );
        // After every refusal, a good request is still served.
        let ok = call(
            addr,
            &bundle,
            "POST",
            "/v1/certify",
            body(&good_csr),
            Some(&web_token),
            None,
        )
        .await;
        assert_eq!(ok.status, 200, "after {}: {ok:?}", case.name);
    }
}

/// Each refusal is counted by reason, and the issuance metrics are there.
fn each_refusal_is_counted(running: &Running, cases: &[Case]) {
    let metrics = running.registry.render();
    for case in cases {
        let series = format!(
            "weft_identity_rejections_total{{reason=\"{}\"}}",
            case.reason
        );
        assert!(
            metric(&metrics, &series).unwrap_or(0.0) >= 1.0,
            "{series} missing in\n{metrics}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "weft_identity_certificates_issued_total{method=\"token\"}"
        ),
        Some(cases.len() as f64)
    );
    assert!(
        metrics.contains("weft_identity_issuance_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_identity_issuer_expiry_timestamp_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn token_issuance_then_renewal_with_the_current_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, web_token, running) = service_with_web_token(dir.path()).await;
    let settings = weft_identity::client::ClientSettings::new(running.addr.to_string(), web_token);
    let first = weft_identity::client::bootstrap(&settings).await.unwrap();
    assert_eq!(first.identity, id("web"));
    let renewed = weft_identity::client::certify(
        &running.addr.to_string(),
        &bundle,
        &id("web"),
        weft_identity::client::Auth::Certificate(&first),
    )
    .await
    .unwrap();
    assert_ne!(renewed.leaf(), first.leaf());
    assert_ne!(
        renewed.key.secret_pkcs8_der(),
        first.key.secret_pkcs8_der(),
        "a renewal uses a fresh key"
    );
    // A renewal certificate asking for another identity is refused.
    let (_, admin_csr) = weft_identity::client::generate_csr(&id("admin")).unwrap();
    let answer = call(
        running.addr,
        &bundle,
        "POST",
        "/v1/certify",
        certify_body(&admin_csr),
        None,
        Some(&renewed),
    )
    .await;
    assert_eq!(
        (answer.status, answer.reason().as_str()),
        (403, "csr_wrong_identity"),
        "{answer:?}"
    );
    let metrics = running.registry.render();
    assert_eq!(
        metric(
            &metrics,
            "weft_identity_certificates_issued_total{method=\"renewal\"}"
        ),
        Some(1.0)
    );
    // The trust bundle is served as PEM.
    let b = call(
        running.addr,
        &bundle,
        "GET",
        "/v1/trust-bundle",
        "",
        None,
        None,
    )
    .await;
    assert_eq!(b.status, 200);
    assert_eq!(
        tls::TrustBundle::from_pem(b.body.as_bytes())
            .unwrap()
            .fingerprints(),
        bundle.fingerprints()
    );
    running.stop().await;
}

#[tokio::test]
async fn a_client_pinned_to_another_anchor_refuses_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other = authority(other_dir.path());
    // A token minted by another trust domain's CA pins that CA's anchor.
    let foreign = token(&other, "web", Duration::from_secs(60));
    let running = Running::start(a, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let settings = weft_identity::client::ClientSettings::new(running.addr.to_string(), foreign);
    let err = weft_identity::client::bootstrap(&settings)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not contain the anchor pinned by the token"),
        "{err}"
    );
    running.stop().await;
}

#[tokio::test]
async fn stuck_and_garbage_connections_do_not_affect_other_callers() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, web_token, running) = service_with_web_token(dir.path()).await;
    // A connection that sends half a ClientHello and stalls, one that speaks plaintext HTTP to
    // the TLS port, and one that sends random bytes.
    let mut stalled = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut plain = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    plain
        .write_all(b"GET /v1/trust-bundle HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut noise = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    noise.write_all(&[0xffu8; 4096]).await.unwrap();
    let (_, csr) = weft_identity::client::generate_csr(&id("web")).unwrap();
    for _ in 0..5 {
        let ok = call(
            running.addr,
            &bundle,
            "POST",
            "/v1/certify",
            certify_body(&csr),
            Some(&web_token),
            None,
        )
        .await;
        assert_eq!(ok.status, 200, "{ok:?}");
    }
    drop((stalled, plain, noise));
    running.stop().await;
}

/// A CA in `dir`, its identity service running on a free port, and a 10-minute token for `web`.
async fn service_with_web_token(
    dir: &std::path::Path,
) -> (weft_identity::tls::TrustBundle, String, Running) {
    let a = authority(dir);
    let bundle = a.bundle().clone();
    let web_token = token(&a, "web", Duration::from_secs(600));
    let running = Running::start(a, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (bundle, web_token, running)
}
