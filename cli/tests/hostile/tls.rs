//! TLS at api's inbound: every certificate that must not get a request through is refused,
//! at the handshake (an alert, the connection closed, a handshake failure counted by reason)
//! or, when the certificate is the mesh's own but names an identity the policy does not allow,
//! by authorization (403 `forbidden`).

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::certs::{Cert, MeshCa, client_config, connect, foreign, self_signed, spiffe};
use crate::mesh::{GoodClient, Mesh, case, errors, runtime, wait_errors, wait_metric};
use crate::raw::{exchange, header, status};
use crate::support::require_tools;

/// `GET /<case>` to api, as a peer proxy would send it.
fn request(mesh: &Mesh, case: &str) -> Vec<u8> {
    format!(
        "GET /{case} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        mesh.authority()
    )
    .into_bytes()
}

/// A TLS 1.3 handshake with `cert`, then a request: what came back, and whether the
/// connection was closed (a failed handshake: nothing, closed).
async fn attempt(mesh: &Mesh, case: &str, cert: Option<Cert>) -> (String, bool) {
    let cfg = client_config(cert, &[&rustls::version::TLS13], b"http/1.1");
    match connect(mesh.api.inbound, cfg).await {
        Ok(tls) => exchange(tls, &request(mesh, case), Duration::from_secs(5)).await,
        Err(e) => {
            eprintln!("{case}: handshake failed on the client: {e}");
            (String::new(), true)
        }
    }
}

/// `openssl s_client -tls1_2` to api's inbound presenting `cert`, which must fail: its stderr.
fn openssl_tls12(mesh: &Mesh, cert: &Cert) -> String {
    require_tools(&["openssl"], "openssl");
    let dir = mesh.dir.path();
    let pem = |label: &str, der: &[u8]| weft_identity::tls::der_to_pem(label, der);
    let chain: String = cert.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(dir.join("tls12.pem"), chain).unwrap();
    std::fs::write(
        dir.join("tls12.key"),
        pem("PRIVATE KEY", cert.key.secret_der()),
    )
    .unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-connect",
            &mesh.api.inbound.to_string(),
        ])
        .arg("-cert")
        .arg(dir.join("tls12.pem"))
        .arg("-key")
        .arg(dir.join("tls12.key"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "TLS 1.2 was accepted:\n{stderr}");
    stderr
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn bad_certificates_are_refused_at_api_inbound() {
    let mesh = Mesh::start();
    let ca = MeshCa::load(&mesh.data);
    let good = GoodClient::start(&mesh);
    let rt = runtime();
    let web = spiffe("web");
    // (case, certificate, the reason counted)
    let handshake_failures: Vec<(&str, Option<Cert>, &str)> = vec![
        ("no-certificate", None, "no_client_certificate"),
        ("self-signed", Some(self_signed(&web)), "untrusted_peer"),
        ("foreign-ca", Some(foreign(&web)), "untrusted_peer"),
        (
            "expired",
            Some(ca.leaf(Some(&web), -7200, -3600)),
            "certificate_expired",
        ),
        (
            "not-yet-valid",
            Some(ca.leaf(Some(&web), 3600, 7200)),
            "certificate_expired",
        ),
    ];
    let metric = "weft_proxy_tls_handshake_failures_total";
    for (name, cert, reason) in handshake_failures {
        case(&mesh, &good, name, || {
            let labels = ["direction=\"inbound\"", &format!("reason=\"{reason}\"")];
            let before = mesh.api.metric(metric, &labels);
            let (answer, closed) = rt.block_on(attempt(&mesh, name, cert));
            assert!(answer.is_empty() && closed, "{name}: answered {answer:?}");
            wait_metric(&mesh.api, metric, &labels, before + 1.0, name);
        });
    }
    // TLS 1.2 with the mesh's own valid certificate (openssl: the workspace's rustls is built
    // without TLS 1.2): a protocol_version alert.
    case(&mesh, &good, "tls12", || {
        let labels = ["direction=\"inbound\"", "reason=\"incompatible\""];
        let before = mesh.api.metric(metric, &labels);
        let stderr = openssl_tls12(&mesh, &ca.workload("web"));
        assert!(stderr.contains("alert protocol version"), "{stderr}");
        wait_metric(&mesh.api, metric, &labels, before + 1.0, "tls12");
    });
    // The mesh's CA signed them, so the handshake completes; the policy lets only web in.
    let refused_by_policy: Vec<(&str, Option<Cert>)> = vec![
        ("plaintext", None),
        ("wrong-identity", Some(ca.workload("mallory"))),
        ("no-spiffe-id", Some(ca.leaf(None, -60, 3600))),
    ];
    for (name, cert) in refused_by_policy {
        case(&mesh, &good, name, || {
            let before = errors(&mesh.api, "inbound", "forbidden");
            let (answer, _) = rt.block_on(async {
                match cert {
                    Some(c) => attempt(&mesh, name, Some(c)).await,
                    None => {
                        let tcp = tokio::net::TcpStream::connect(mesh.api.inbound)
                            .await
                            .unwrap();
                        exchange(tcp, &request(&mesh, name), Duration::from_secs(5)).await
                    }
                }
            });
            assert_eq!(status(&answer), 403, "{name}: {answer}");
            assert_eq!(
                header(&answer, "weft-error").as_deref(),
                Some("forbidden"),
                "{answer}"
            );
            wait_errors(&mesh.api, "inbound", "forbidden", before, 1.0, name);
        });
    }
    // A ClientHello that never ends: the handshake times out (10 s), counted.
    case(&mesh, &good, "handshake-never-ends", || {
        let labels = ["direction=\"inbound\"", "reason=\"timeout\""];
        let metric = "weft_proxy_tls_handshake_failures_total";
        let before = mesh.api.metric(metric, &labels);
        let (answer, closed) = rt.block_on(async {
            let mut tcp = tokio::net::TcpStream::connect(mesh.api.inbound)
                .await
                .unwrap();
            // A handshake record announcing 512 bytes, and the first of them.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
            crate::raw::read_until_closed(&mut tcp, Duration::from_secs(20)).await
        });
        assert!(answer.is_empty() && closed, "{answer:?}");
        wait_metric(
            &mesh.api,
            metric,
            &labels,
            before + 1.0,
            "handshake-never-ends",
        );
    });
    for name in [
        "no-certificate",
        "expired",
        "plaintext",
        "wrong-identity",
        "tls12",
    ] {
        assert_eq!(
            mesh.seen.count(name),
            0,
            "the app saw a request from {name}"
        );
    }
}
