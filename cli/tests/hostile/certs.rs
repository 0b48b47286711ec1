//! Certificates of every wrong kind (and one right kind), made in the test with rcgen, and TLS
//! clients that present them to a proxy's inbound or the control plane.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use weft_identity::authority::{ISSUER_CERT_FILE, ISSUER_KEY_FILE};
use weft_identity::tls::provider;

/// A client certificate chain and its key.
pub struct Cert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Cert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A workload identity in the test mesh's trust domain.
pub fn spiffe(workload: &str) -> String {
    format!("spiffe://weft.local/ns/default/sa/{workload}")
}

/// Leaf parameters as the mesh's CA sets them: `uri` as the one URI SAN (none with `None`),
/// valid from `not_before` to `not_after`, for clients and servers.
fn leaf_params(
    uri: Option<&str>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.not_before = not_before.into();
    p.not_after = not_after.into();
    p.subject_alt_names = match uri {
        Some(u) => vec![SanType::URI(u.try_into().unwrap())],
        None => vec![SanType::DnsName("mallory.example".try_into().unwrap())],
    };
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// The mesh's own issuer, read from the CA's data directory.
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: CertificateDer<'static>,
}

impl MeshCa {
    pub fn load(data: &Path) -> Self {
        let pem = std::fs::read_to_string(data.join(ISSUER_CERT_FILE)).unwrap();
        let key = KeyPair::from_pem(&std::fs::read_to_string(data.join(ISSUER_KEY_FILE)).unwrap())
            .unwrap();
        let issuer_der = weft_identity::tls::certs_from_pem(pem.as_bytes()).unwrap()[0].clone();
        Self {
            issuer: Issuer::from_ca_cert_pem(&pem, key).unwrap(),
            issuer_der,
        }
    }

    /// A leaf the mesh's CA signed, valid over `from..to` relative to now (seconds, may be
    /// negative), naming `uri`.
    pub fn leaf(&self, uri: Option<&str>, from: i64, to: i64) -> Cert {
        let at = |s: i64| {
            let d = Duration::from_secs(s.unsigned_abs());
            if s < 0 {
                SystemTime::now() - d
            } else {
                SystemTime::now() + d
            }
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = leaf_params(uri, at(from), at(to))
            .signed_by(&key, &self.issuer)
            .unwrap();
        Cert {
            chain: vec![cert.der().clone(), self.issuer_der.clone()],
            key: key_der(&key),
        }
    }

    /// A valid certificate for `workload`, as the identity service would issue it.
    pub fn workload(&self, workload: &str) -> Cert {
        self.leaf(Some(&spiffe(workload)), -60, 3600)
    }
}

/// A self-signed certificate naming `uri`.
pub fn self_signed(uri: &str) -> Cert {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = SystemTime::now();
    let cert = leaf_params(
        Some(uri),
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
    .self_signed(&key)
    .unwrap();
    Cert {
        chain: vec![cert.der().clone()],
        key: key_der(&key),
    }
}

/// A certificate naming `uri` from a CA of its own (same shape as the mesh's, other key).
pub fn foreign(uri: &str) -> Cert {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "weft.local issuer");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = SystemTime::now();
    let cert = leaf_params(
        Some(uri),
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
    .signed_by(&key, &issuer)
    .unwrap();
    Cert {
        chain: vec![cert.der().clone(), ca_cert.der().clone()],
        key: key_der(&key),
    }
}

/// Accepts any server certificate: the cases attack the server, they do not check it.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config presenting `cert` (none with `None`), offering only `versions` and `alpn`.
pub fn client_config(
    cert: Option<Cert>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[u8],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut cfg = match cert {
        Some(c) => builder.with_client_auth_cert(c.chain, c.key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

/// A TLS 1.3 connection to `addr` presenting `cert`, offering `alpn`.
pub async fn connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("api.default.sa.weft.local").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// [`connect`] with a valid TLS 1.3 certificate for `cert`.
pub async fn mtls(addr: SocketAddr, cert: &Cert, alpn: &[u8]) -> TlsStream<TcpStream> {
    let cfg = client_config(Some(cert.clone()), &[&rustls::version::TLS13], alpn);
    connect(addr, cfg).await.unwrap()
}
