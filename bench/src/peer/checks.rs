//! What shows the HAProxy pair's hop is mTLS over TLS 1.3 only: the probes of the api
//! HAProxy's TLS port before the runs, and its statistics (the TLS frontend's 2xx count) read
//! before and after them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use weft_identity::spiffe::SpiffeId;
use weft_identity::tls::{self, CertStore, TrustBundle};
use weft_runtime::testing::http_get;

use crate::Error;
use crate::report::PeerCheck;

use super::config::Certs;

/// The SPIFFE ID the api HAProxy presents (the mesh's `api` workload).
const API_ID: &str = "spiffe://weft.local/ns/default/sa/api";

/// Probes the api HAProxy's TLS port at `api`: plain text, TLS 1.3 without a client
/// certificate, a TLS 1.2 hello, TLS 1.3 with web's certificate (`web`). A request through the
/// web HAProxy answered 200 before this (its readiness wait).
pub(super) fn probe(api: SocketAddr, web: &Certs, host: &str) -> Result<PeerCheck, Error> {
    let bundle_pem = std::fs::read(&web.bundle)
        .map_err(|e| format!("cannot read {}: {e}", web.bundle.display()))?;
    let bundle = TrustBundle::from_pem(&bundle_pem).map_err(|e| format!("trust bundle: {e}"))?;
    let api_id = SpiffeId::parse(API_ID).map_err(|e| format!("{API_ID}: {e}"))?;
    let alpn: &[&[u8]] = &[tls::ALPN_HTTP11];
    let without_cert = tls::client_config(&bundle, api_id.clone(), None, alpn)
        .map_err(|e| format!("TLS client config: {e}"))?;
    let with_cert = tls::client_config(&bundle, api_id.clone(), Some(web_key(web)?), alpn)
        .map_err(|e| format!("TLS client config: {e}"))?;
    let name = tls::server_name(&api_id);

    let plaintext = http_get(api, "/", host);
    let no_cert = tls_get(api, without_cert, name.clone(), host);
    let (mtls, version) = match tls_get(api, with_cert, name, host) {
        Ok((status, version)) => (Some(status), version),
        Err(e) => {
            eprintln!("warning: TLS 1.3 probe with web's certificate to {api}: {e}");
            (None, String::new())
        }
    };
    Ok(PeerCheck {
        plaintext_refused: !matches!(plaintext, Some((200, _))),
        without_client_cert_refused: !matches!(no_cert, Ok((200, _))),
        tls12_refused: tls12_refused(api),
        mtls_200: mtls == Some(200),
        mtls_version: version,
        // Checked by the readiness wait through web.
        through_web_200: true,
        ..PeerCheck::default()
    })
}

/// Web's key and certificate chain (as `weft cert issue` wrote them) as a client certificate.
fn web_key(web: &Certs) -> Result<Arc<dyn ResolvesClientCert>, Error> {
    let read = |name: &str| {
        let p = web.dir.join(name);
        std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let mut chain =
        tls::certs_from_pem(&read("cert.pem")?).map_err(|e| format!("cert.pem: {e}"))?;
    chain.extend(tls::certs_from_pem(&read("chain.pem")?).map_err(|e| format!("chain.pem: {e}"))?);
    let key =
        PrivateKeyDer::from_pem_slice(&read("key.pem")?).map_err(|e| format!("key.pem: {e}"))?;
    let key = tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key.pem: {e}"))?;
    Ok(CertStore::new(Arc::new(CertifiedKey::new(chain, key))))
}

/// `GET /` over TLS with `Connection: close`: the status and the protocol version
/// negotiated (`TLSv1_3`). Bounded by connect, read and write timeouts.
fn tls_get(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    name: ServerName<'static>,
    host: &str,
) -> Result<(u16, String), Error> {
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    for t in [
        sock.set_read_timeout(Some(Duration::from_secs(5))),
        sock.set_write_timeout(Some(Duration::from_secs(5))),
    ] {
        t.map_err(|e| format!("socket: {e}"))?;
    }
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| format!("TLS: {e}"))?;
    let mut out = Vec::new();
    let read = {
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| format!("TLS write: {e}"))?;
        // Whatever was read stays in `out` when the read ends in an error (e.g. no
        // close_notify).
        (&mut tls).take(1 << 20).read_to_end(&mut out)
    };
    let version = conn
        .protocol_version()
        .map_or(String::new(), |v| format!("{v:?}"));
    let text = String::from_utf8_lossy(&out);
    match text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) {
        Some(status) if text.starts_with("HTTP/1.") => Ok((status, version)),
        _ => Err(match read {
            Err(e) => format!("TLS read: {e}"),
            Ok(_) => format!("no HTTP answer: {text:?}"),
        }),
    }
}

/// Sends a TLS 1.2 ClientHello ([`tls12_client_hello`]) to `addr`: refused when what comes
/// back is not a handshake record (a ServerHello) but an alert, a close or nothing.
fn tls12_refused(addr: SocketAddr) -> bool {
    let answer = (|| -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&tls12_client_hello())?;
        let mut buf = [0u8; 5];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].to_vec())
    })();
    !matches!(answer.as_deref(), Ok([0x16, 0x03, ..]))
}

/// A ClientHello offering only TLS 1.2 (no `supported_versions` extension), with
/// ECDHE-ECDSA and ECDHE-RSA AES-128-GCM on P-256: what a TLS 1.2-only client sends.
pub fn tls12_client_hello() -> Vec<u8> {
    let ext = |kind: u16, data: &[u8]| -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend((data.len() as u16).to_be_bytes());
        e.extend(data);
        e
    };
    let extensions = [
        // supported_groups: secp256r1, x25519
        ext(0x000a, &[0x00, 0x04, 0x00, 0x17, 0x00, 0x1d]),
        // ec_point_formats: uncompressed
        ext(0x000b, &[0x01, 0x00]),
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
        ext(0x000d, &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]),
    ]
    .concat();
    let mut body = vec![0x03, 0x03]; // client_version: TLS 1.2
    body.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11))); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // two cipher suites
    body.extend([0x01, 0x00]); // compression: null
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 record version
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// HAProxy's statistics as CSV from `addr` (HAProxy sends them chunked). `None` when it is
/// not a 200 within a few seconds.
pub(super) fn stats_csv(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /stats;csv HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = Vec::new();
    s.take(16 << 20).read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head.split(' ').nth(1)? != "200" {
        return None;
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if chunked {
        dechunk(body)
    } else {
        Some(body.to_string())
    }
}

/// The body of a chunked HTTP/1.1 answer (`<hex size>\r\n<data>\r\n` …, then `0\r\n`).
pub fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// The `hrsp_2xx` of `frontend`'s `FRONTEND` row in HAProxy's CSV statistics
/// (`# pxname,svname,…` header).
pub fn frontend_2xx(csv: &str, frontend: &str) -> Option<f64> {
    let mut lines = csv.lines();
    let header = lines.next()?.trim_start_matches('#').trim();
    let column = header.split(',').position(|c| c == "hrsp_2xx")?;
    lines.find_map(|l| {
        let fields: Vec<&str> = l.split(',').collect();
        if fields.first() == Some(&frontend) && fields.get(1) == Some(&"FRONTEND") {
            fields.get(column)?.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls12_hello_is_well_formed() {
        let h = tls12_client_hello();
        assert_eq!(&h[..3], &[0x16, 0x03, 0x01]);
        assert_eq!(u16::from_be_bytes([h[3], h[4]]) as usize, h.len() - 5);
        assert_eq!(h[5], 0x01);
        let len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(len, h.len() - 9);
        assert_eq!(&h[9..11], &[0x03, 0x03]);
        // Past the random, the session id, the cipher suites and the compression methods:
        // the extensions, none of them supported_versions (0x002b): TLS 1.2 only.
        let mut at = 11 + 32 + 1 + 6 + 2;
        assert_eq!(
            u16::from_be_bytes([h[at], h[at + 1]]) as usize,
            h.len() - at - 2
        );
        at += 2;
        let mut kinds = vec![];
        while at < h.len() {
            kinds.push(u16::from_be_bytes([h[at], h[at + 1]]));
            at += 4 + u16::from_be_bytes([h[at + 2], h[at + 3]]) as usize;
        }
        assert_eq!(at, h.len());
        assert_eq!(kinds, [0x000a, 0x000b, 0x000d]);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\n# pxn\r\n3;x=1\r\name\r\n0\r\n\r\n").as_deref(),
            Some("# pxname")
        );
        assert_eq!(dechunk("5\r\nab"), None);
        assert_eq!(dechunk("zz\r\n"), None);
    }

    #[test]
    fn frontend_2xx_is_read_from_the_csv_statistics() {
        let csv = "# pxname,svname,qcur,hrsp_1xx,hrsp_2xx,hrsp_3xx\n\
                   api_mtls,FRONTEND,,0,1234,0\n\
                   app,app,0,0,1200,0\n\
                   app,BACKEND,0,0,1234,0\n\
                   stats,FRONTEND,,0,2,0\n";
        assert_eq!(frontend_2xx(csv, "api_mtls"), Some(1234.0));
        assert_eq!(frontend_2xx(csv, "stats"), Some(2.0));
        assert_eq!(frontend_2xx(csv, "other"), None);
        assert_eq!(frontend_2xx("pxname,svname\n", "api_mtls"), None);
    }
}
