//! One exchange with the identity service: fetch and check the trust bundle, certify a fresh
//! key, by token (bootstrap) or by the current certificate (renewal).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::PrivatePkcs8KeyDer;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{ClientError, ClientSettings, REQUEST_TIMEOUT};
use crate::authority::links::{links_from_pem, pin_reaches};
use crate::server::{
    CA_PATH, CERTIFY_PATH, CaInfo, CertifyRequest, CertifyResponse, service_identity,
};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::tls::{self, CertStore, Credentials, TrustBundle};
use weft_runtime::serve::ErrorBody;

/// Fetches the trust bundle for a workload that holds nothing but its token, and accepts it
/// only if it holds the anchor `pinned` (`sha256:<hex>`), or if the CA's anchor links lead from
/// the pinned anchor to one of its anchors (the pinned one was rotated out since the token
/// was made; see `authority::links`).
pub async fn fetch_trust_bundle(addr: &str, pinned: &str) -> Result<TrustBundle, ClientError> {
    let cfg = tls::unverified_client_config().map_err(|e| ClientError::Tls {
        addr: addr.to_string(),
        detail: e.to_string(),
    })?;
    let name = rustls::pki_types::ServerName::try_from("identity.weft.invalid")
        .map_err(|e| ClientError::Key(e.to_string()))?;
    let info = get_ca(addr, Arc::new(cfg), name).await?;
    let bundle = TrustBundle::from_pem(info.trust_bundle.as_bytes())
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let links = links_from_pem(info.anchor_links.as_bytes()).map_err(ClientError::BadResponse)?;
    if !pin_reaches(pinned, &bundle, &links) {
        return Err(ClientError::AnchorMismatch {
            addr: addr.to_string(),
            pinned: pinned.to_string(),
        });
    }
    Ok(bundle)
}

/// What the CA says now (`GET /v1/ca`), from the identity service verified by `bundle` as the
/// service of `identity`'s trust domain.
pub async fn fetch_ca(
    addr: &str,
    bundle: &TrustBundle,
    identity: &SpiffeId,
) -> Result<CaInfo, ClientError> {
    let server_id = service_identity(
        &TrustDomain::new(identity.trust_domain()).map_err(|e| ClientError::Key(e.to_string()))?,
    )
    .map_err(|e| ClientError::Key(e.to_string()))?;
    let cfg =
        tls::client_config(bundle, server_id.clone(), None, &[tls::ALPN_HTTP11]).map_err(|e| {
            ClientError::Tls {
                addr: addr.to_string(),
                detail: e.to_string(),
            }
        })?;
    get_ca(addr, Arc::new(cfg), tls::server_name(&server_id)).await
}

async fn get_ca(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
) -> Result<CaInfo, ClientError> {
    let (status, body) = request(
        addr,
        Exchange {
            cfg,
            name,
            method: Method::GET,
            path: CA_PATH,
            authorization: None,
            body: Bytes::new(),
        },
    )
    .await?;
    if status != StatusCode::OK {
        return Err(ClientError::BadResponse(format!(
            "GET {CA_PATH} answered {status}"
        )));
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse(e.to_string()))
}

/// How a certify request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    Token(&'a str),
    Certificate(&'a Credentials),
}

/// Generates a key and CSR for `identity`, has them certified, and returns the credentials.
pub async fn certify(
    addr: &str,
    bundle: &TrustBundle,
    identity: &SpiffeId,
    auth: Auth<'_>,
) -> Result<Credentials, ClientError> {
    let (key, csr_pem) = generate_csr(identity)?;
    let server_id = service_identity(
        &TrustDomain::new(identity.trust_domain()).map_err(|e| ClientError::Key(e.to_string()))?,
    )
    .map_err(|e| ClientError::Key(e.to_string()))?;
    let client_cert: Option<Arc<dyn rustls::client::ResolvesClientCert>> = match auth {
        Auth::Token(_) => None,
        Auth::Certificate(creds) => Some(CertStore::new(
            creds
                .certified_key()
                .map_err(|e| ClientError::Key(e.to_string()))?,
        )),
    };
    let cfg = tls::client_config(bundle, server_id.clone(), client_cert, &[tls::ALPN_HTTP11])
        .map_err(|e| ClientError::Tls {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?;
    let body = serde_json::to_vec(&CertifyRequest {
        csr: csr_pem,
        identity: Some(identity.to_string()),
    })
    .map_err(|e| ClientError::Key(e.to_string()))?;
    let bearer = match auth {
        Auth::Token(t) => Some(format!("Bearer {t}")),
        Auth::Certificate(_) => None,
    };
    let (status, body) = request(
        addr,
        Exchange {
            cfg: Arc::new(cfg),
            name: tls::server_name(&server_id),
            method: Method::POST,
            path: CERTIFY_PATH,
            authorization: bearer.as_deref(),
            body: Bytes::from(body),
        },
    )
    .await?;
    if !status.is_success() {
        let body: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
            error: "unknown".into(),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
        return Err(ClientError::Rejected { status, body });
    }
    let rsp: CertifyResponse =
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    credentials_from(rsp, key, identity)
}

fn credentials_from(
    rsp: CertifyResponse,
    key: rcgen::KeyPair,
    identity: &SpiffeId,
) -> Result<Credentials, ClientError> {
    let bad = |e: &dyn std::fmt::Display| ClientError::BadResponse(e.to_string());
    if &rsp.identity != identity {
        return Err(ClientError::BadResponse(format!(
            "asked for {identity}, got a certificate for {}",
            rsp.identity
        )));
    }
    let mut chain = tls::certs_from_pem(rsp.certificate.as_bytes()).map_err(|e| bad(&e))?;
    chain.extend(tls::certs_from_pem(rsp.chain.as_bytes()).map_err(|e| bad(&e))?);
    if chain.is_empty() {
        return Err(ClientError::BadResponse(
            "no certificate in the answer".into(),
        ));
    }
    let bundle = TrustBundle::from_pem(rsp.trust_bundle.as_bytes()).map_err(|e| bad(&e))?;
    // Never trust a certificate the bundle does not verify, nor one for another identity.
    let verified =
        tls::verify_client_chain(&bundle, &chain, SystemTime::now()).map_err(|e| bad(&e))?;
    if &verified != identity {
        return Err(ClientError::BadResponse(format!(
            "the certificate proves {verified}, not {identity}"
        )));
    }
    let (not_before, not_after) = validity(&chain[0]).map_err(|e| bad(&e))?;
    Ok(Credentials {
        identity: identity.clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        chain,
        bundle,
        not_before,
        not_after,
    })
}

/// The validity window of a DER certificate.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok((
        crate::authority::asn1_to_system(x.validity().not_before),
        crate::authority::asn1_to_system(x.validity().not_after),
    ))
}

/// A fresh ECDSA P-256 key and a PEM CSR for it naming `identity` as its one URI SAN.
pub fn generate_csr(identity: &SpiffeId) -> Result<(rcgen::KeyPair, String), ClientError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ClientError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(identity.to_string())
        .map_err(|e| ClientError::Key(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| ClientError::Key(e.to_string()))?;
    let pem = csr.pem().map_err(|e| ClientError::Key(e.to_string()))?;
    Ok((key, pem))
}

/// Bootstraps once with the token: fetch and check the bundle, then certify.
pub async fn bootstrap(settings: &ClientSettings) -> Result<Credentials, ClientError> {
    let claims = settings.claims()?;
    let bundle = fetch_trust_bundle(&settings.addr, &claims.anchor).await?;
    certify(
        &settings.addr,
        &bundle,
        &claims.sub,
        Auth::Token(&settings.token),
    )
    .await
}

/// One exchange with the identity service at `addrs`: its address, or each of its replicas'
/// (`a:8443,b:8443`, sharing the CA). The replicas are tried from one at random (so clients
/// spread over them), the next when one cannot be reached (the request was not sent); an
/// answer, or a failure after the request went, is returned as it is.
async fn request(addrs: &str, ex: Exchange<'_>) -> Result<(StatusCode, Bytes), ClientError> {
    let replicas: Vec<&str> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if replicas.len() <= 1 {
        let addr = replicas.first().copied().unwrap_or(addrs);
        return request_at(addr, ex).await;
    }
    let first = fastrand::usize(..replicas.len());
    let mut unreachable = None;
    for n in 0..replicas.len() {
        let addr = replicas[(first + n) % replicas.len()];
        let sent = request_at(addr, ex.clone()).await;
        match sent {
            Err(e @ (ClientError::Connect { .. } | ClientError::Tls { .. })) => {
                tracing::debug!(error = %e, "identity service replica unreachable; trying the next");
                unreachable = Some(e);
            }
            other => return other,
        }
    }
    Err(unreachable.unwrap_or(ClientError::Timeout {
        addr: addrs.to_string(),
    }))
}

/// What one exchange with the identity service sends, and how.
#[derive(Clone)]
struct Exchange<'a> {
    cfg: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    method: Method,
    path: &'a str,
    authorization: Option<&'a str>,
    body: Bytes,
}

/// One exchange with the identity service at `addr`, on a connection of its own.
async fn request_at(addr: &str, ex: Exchange<'_>) -> Result<(StatusCode, Bytes), ClientError> {
    let Exchange {
        cfg,
        name,
        method,
        path,
        authorization,
        body,
    } = ex;
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls {
                addr: addr.to_string(),
                detail: e.to_string(),
            })?;
        let http_err = |e: &dyn std::fmt::Display| ClientError::Http {
            addr: addr.to_string(),
            detail: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http_err(&e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(a) = authorization {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let req = req.body(Full::new(body)).map_err(|e| http_err(&e))?;
        let rsp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = rsp.status();
        let body = Limited::new(rsp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| http_err(&e))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.to_string(),
        })?
}
