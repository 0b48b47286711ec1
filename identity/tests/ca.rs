//! The CA's files and the certificates it issues, checked with independent tools (openssl,
//! rustls/webpki, x509-parser).
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use support::*;
use weft_identity::authority::{self, Authority, AuthorityConfig, AuthorityError};
use weft_identity::tls::{self, CertStore, ClientAuth};
use x509_parser::prelude::*;

#[test]
fn first_start_creates_files_and_restart_keeps_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let first = authority(&data);
    for (file, mode) in [
        (authority::ANCHOR_KEY_FILE, 0o600),
        (authority::ISSUER_KEY_FILE, 0o600),
        (authority::TOKEN_KEY_FILE, 0o600),
        (authority::ANCHOR_CERT_FILE, 0o644),
        (authority::ISSUER_CERT_FILE, 0o644),
    ] {
        let meta = std::fs::metadata(data.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    let second = authority(&data);
    assert_eq!(first.anchor_fingerprint(), second.anchor_fingerprint());
    assert_eq!(first.token_key().kid(), second.token_key().kid());
    // A token made before the restart still verifies after it.
    let t = token(&first, "web", Duration::from_secs(60));
    assert_eq!(
        second
            .token_key()
            .verify(&t, SystemTime::now())
            .unwrap()
            .sub,
        id("web")
    );
}

#[test]
fn corrupt_key_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    authority(dir.path());
    std::fs::write(
        dir.path().join(authority::ISSUER_KEY_FILE),
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = Authority::load_or_create(&AuthorityConfig::new(dir.path())).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AuthorityError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("issuer.key is corrupt"), "{msg}");
    assert!(msg.contains("Restore it from a backup"), "{msg}");

    // Garbage in the anchor is named too.
    let dir = tempfile::tempdir().unwrap();
    authority(dir.path());
    std::fs::write(dir.path().join(authority::ANCHOR_CERT_FILE), "garbage").unwrap();
    let msg = Authority::load_or_create(&AuthorityConfig::new(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("trust-anchor.pem is corrupt"), "{msg}");
}

#[test]
fn unreadable_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    authority(dir.path());
    // A directory where the key should be cannot be read, even by root.
    let key = dir.path().join(authority::ISSUER_KEY_FILE);
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    let msg = Authority::load_or_create(&AuthorityConfig::new(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot read") && msg.contains("issuer.key"),
        "{msg}"
    );
    assert!(msg.contains("check that the file exists"), "{msg}");
}

/// Writes an operator CA (anchor, issuer cert, issuer key) into `dir` and returns the config.
fn operator_ca(
    dir: &Path,
    issuer_lifetime: (i64, i64),
    sign_with_other_anchor: bool,
) -> AuthorityConfig {
    let now = ::time::OffsetDateTime::now_utc();
    let ca = |cn: &str, path_len: u8| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = now - ::time::Duration::days(1);
        p.not_after = now + ::time::Duration::days(365);
        p
    };
    let anchor_key = KeyPair::generate().unwrap();
    let anchor_params = ca("operator root", 1);
    let anchor = anchor_params.self_signed(&anchor_key).unwrap();
    let other_key = KeyPair::generate().unwrap();
    let signer_key = if sign_with_other_anchor {
        &other_key
    } else {
        &anchor_key
    };
    let signer = Issuer::from_params(&anchor_params, signer_key);
    let issuer_key = KeyPair::generate().unwrap();
    let mut issuer_params = ca("operator issuer", 0);
    issuer_params.not_before = now + ::time::Duration::hours(issuer_lifetime.0);
    issuer_params.not_after = now + ::time::Duration::hours(issuer_lifetime.1);
    let issuer = issuer_params.signed_by(&issuer_key, &signer).unwrap();
    let files: Vec<PathBuf> = ["anchor.pem", "issuer.pem", "issuer.key"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    std::fs::write(&files[0], anchor.pem()).unwrap();
    std::fs::write(&files[1], issuer.pem()).unwrap();
    std::fs::write(&files[2], issuer_key.serialize_pem()).unwrap();
    let mut cfg = AuthorityConfig::new(dir.join("data"));
    cfg.anchor_file = Some(files[0].clone());
    cfg.issuer_cert_file = Some(files[1].clone());
    cfg.issuer_key_file = Some(files[2].clone());
    cfg
}

#[test]
fn operator_supplied_ca_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = operator_ca(dir.path(), (-1, 24 * 30), false);
    let a = Authority::load_or_create(&cfg).unwrap();
    let creds = issue_direct(&a, &id("web"));
    let anchor = std::fs::read(dir.path().join("anchor.pem")).unwrap();
    let bundle = tls::TrustBundle::from_pem(&anchor).unwrap();
    assert_eq!(
        tls::verify_client_chain(&bundle, &creds.chain, SystemTime::now()).unwrap(),
        id("web")
    );
    // Nothing of the operator's CA was copied into the data directory.
    assert!(
        !dir.path()
            .join("data")
            .join(authority::ANCHOR_CERT_FILE)
            .exists()
    );
}

#[test]
fn expired_issuer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = operator_ca(dir.path(), (-48, -24), false);
    let msg = Authority::load_or_create(&cfg).unwrap_err().to_string();
    assert!(msg.contains("issuer.pem expired at"), "{msg}");
    assert!(msg.contains("issue a new issuer"), "{msg}");
}

#[test]
fn issuer_not_chaining_to_anchor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = operator_ca(dir.path(), (-1, 24), true);
    let msg = Authority::load_or_create(&cfg).unwrap_err().to_string();
    assert!(msg.contains("is not signed by any trust anchor"), "{msg}");
}

#[test]
fn issued_leaf_is_a_valid_x509_svid() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let before = SystemTime::now();
    let creds = issue_direct(&a, &id("web"));
    let (_, leaf) = X509Certificate::from_der(creds.leaf()).unwrap();

    // Exactly one URI SAN, the identity; no DNS SAN.
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, vec!["URI(spiffe://weft.local/ns/default/sa/web)"]);
    // cA=false, KeyUsage digitalSignature only and critical, EKU serverAuth + clientAuth.
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    // ECDSA P-256 key.
    assert_eq!(
        leaf.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    );
    // Lifetime: 24h by default from now, NotBefore back-dated by the skew allowance.
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    let now = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (na - now - 24 * 3600).abs() <= 2,
        "not_after {na} now {now}"
    );
    let backdate = now - nb;
    assert!((55..=62).contains(&backdate), "back-dated {backdate}s");
    // Random serials: the same key certified twice gets two serials.
    let again = issue_direct(&a, &id("web"));
    let (_, leaf2) = X509Certificate::from_der(again.leaf()).unwrap();
    assert_ne!(leaf.raw_serial(), leaf2.raw_serial());
    assert!(leaf.raw_serial().len() >= 16);

    // The issuer is a CA with keyCertSign.
    let (_, issuer) = X509Certificate::from_der(&creds.chain[1]).unwrap();
    assert!(issuer.basic_constraints().unwrap().unwrap().value.ca);
    assert!(issuer.key_usage().unwrap().unwrap().value.key_cert_sign());
}

#[test]
fn openssl_verifies_the_leaf_and_shows_one_uri_san() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let creds = issue_direct(&a, &id("web"));
    let leaf = dir.path().join("leaf.pem");
    let issuer = dir.path().join("issuer-chain.pem");
    std::fs::write(&leaf, tls::der_to_pem("CERTIFICATE", creds.leaf())).unwrap();
    std::fs::write(&issuer, tls::der_to_pem("CERTIFICATE", &creds.chain[1])).unwrap();
    let anchor = dir.path().join(authority::ANCHOR_CERT_FILE);
    let out = openssl(&[
        "verify",
        "-CAfile",
        anchor.to_str().unwrap(),
        "-untrusted",
        issuer.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openssl verify failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with(": OK"), "{stdout}");
    // Purpose checks as both TLS server and TLS client.
    for purpose in ["sslserver", "sslclient"] {
        let out = openssl(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            anchor.to_str().unwrap(),
            "-untrusted",
            issuer.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{purpose}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(
        text.contains("URI:spiffe://weft.local/ns/default/sa/web"),
        "{text}"
    );
    assert!(!text.contains("DNS:"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("NIST CURVE: P-256"), "{text}");
    // The lifetime: openssl prints both ends; 24h plus the back-dated minute apart.
    let dates = openssl(&[
        "x509",
        "-in",
        leaf.to_str().unwrap(),
        "-noout",
        "-startdate",
        "-enddate",
    ]);
    let dates = String::from_utf8_lossy(&dates.stdout);
    let parse = |key: &str| {
        let line = dates.lines().find(|l| l.starts_with(key)).unwrap();
        let v = line.split_once('=').unwrap().1;
        let fmt = ::time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
        );
        ::time::PrimitiveDateTime::parse(v, &fmt)
            .unwrap()
            .assume_utc()
    };
    let lifetime = parse("notAfter") - parse("notBefore");
    assert_eq!(lifetime.whole_seconds(), 24 * 3600 + 60, "{dates}");
}

#[tokio::test]
async fn rustls_accepts_the_leaf_as_server_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let server = issue_direct(&a, &id("api"));
    let client = issue_direct(&a, &id("web"));
    let server_cfg = tls::server_config(
        CertStore::new(server.certified_key().unwrap()),
        ClientAuth::Required(a.bundle().clone()),
        &[],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        let peer = tls::client_identity(conn);
        let version = conn.protocol_version();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(b"pong").await.unwrap();
        tls.flush().await.unwrap();
        (peer, version)
    });

    let client_cfg = tls::client_config(
        a.bundle(),
        id("api"),
        Some(CertStore::new(client.certified_key().unwrap())),
        &[],
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(tls::server_name(&id("api")), tcp)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    let (peer, version) = server_task.await.unwrap();
    assert_eq!(peer, Some(id("web")));
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));

    // A client expecting another identity refuses the same server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_cfg = tls::server_config(
        CertStore::new(server.certified_key().unwrap()),
        ClientAuth::None,
        &[],
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let wrong = tls::client_config(a.bundle(), id("db"), None, &[]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(Arc::new(wrong))
        .connect(tls::server_name(&id("db")), tcp)
        .await
        .unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap();
    let mismatch = tls::identity_mismatch(inner).unwrap();
    assert_eq!(mismatch.found, id("api").to_string());
}

/// No session resumption on either side: a second connection after a renewal is a full
/// handshake, and the server sees the certificate the client holds now, not the one of a
/// session it could have resumed.
#[tokio::test]
async fn every_connection_is_a_full_handshake_with_the_current_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let server = issue_direct(&a, &id("api"));
    let server_cfg = Arc::new(
        tls::server_config(
            CertStore::new(server.certified_key().unwrap()),
            ClientAuth::Required(a.bundle().clone()),
            &[],
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let server_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            let (_, conn) = tls.get_ref();
            let leaf = conn.peer_certificates().unwrap()[0].clone();
            seen.push((conn.handshake_kind(), leaf));
            // The answer comes after the server's session tickets, were it to send any, so
            // the client has them before its second connection.
            tls.write_all(b"pong").await.unwrap();
            tls.flush().await.unwrap();
        }
        seen
    });

    let first = issue_direct(&a, &id("web"));
    let certs = CertStore::new(first.certified_key().unwrap());
    let client_cfg =
        Arc::new(tls::client_config(a.bundle(), id("api"), Some(certs.clone()), &[]).unwrap());
    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let renewed = issue_direct(&a, &id("web"));
    assert_ne!(first.leaf(), renewed.leaf());
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = connector
            .connect(tls::server_name(&id("api")), tcp)
            .await
            .unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        kinds.push(stream.get_ref().1.handshake_kind());
        // The client renews between its two connections.
        certs.set(renewed.certified_key().unwrap());
    }
    let full = Some(rustls::HandshakeKind::Full);
    assert_eq!(kinds, [full, full], "the client's side");
    let seen = server_task.await.unwrap();
    assert_eq!(seen[0], (full, first.leaf().clone()));
    assert_eq!(
        seen[1],
        (full, renewed.leaf().clone()),
        "the second connection"
    );
}

/// The data directory records the trust domain its CA serves: asking the CA for another is
/// refused, naming the one it serves; a directory from before it recorded one has it from its
/// anchor's name (issue 19).
#[test]
fn the_data_directory_records_its_trust_domain_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let with = |td: Option<&str>| {
        let mut cfg = AuthorityConfig::new(&data);
        cfg.trust_domain = td.map(|t| weft_identity::TrustDomain::new(t).unwrap());
        Authority::load_or_create(&cfg)
    };
    let created = with(Some("corp.example")).unwrap();
    assert_eq!(created.trust_domain().as_str(), "corp.example");
    let recorded = std::fs::read_to_string(data.join(authority::TRUST_DOMAIN_FILE)).unwrap();
    assert_eq!(recorded.trim(), "corp.example");
    // Left out: the recorded one.
    assert_eq!(with(None).unwrap().trust_domain().as_str(), "corp.example");
    // Another: refused at once, naming both.
    let refused = with(Some("weft.local")).unwrap_err();
    assert!(matches!(refused, AuthorityError::OtherTrustDomain { .. }));
    let said = refused.to_string();
    assert!(
        said.contains("serves the trust domain corp.example, not weft.local"),
        "{said}"
    );

    // A directory from before the file: the anchor's name says it, and it is recorded.
    std::fs::remove_file(data.join(authority::TRUST_DOMAIN_FILE)).unwrap();
    assert_eq!(with(None).unwrap().trust_domain().as_str(), "corp.example");
    assert!(with(Some("other.example")).is_err());
    assert!(data.join(authority::TRUST_DOMAIN_FILE).exists());
}
