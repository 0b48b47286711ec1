//! The peer scenario of `weft-bench mesh`: the hop weft makes, made by what users would
//! otherwise run for service-to-service mTLS, two HAProxy instances (Debian package
//! `haproxy`):
//!
//! load generator → HAProxy `web` (plain HTTP/1.1 on loopback) → HTTP/1.1 over mTLS, TLS 1.3
//! only → HAProxy `api` (TLS frontend requiring and verifying a client certificate, TLS 1.3
//! only) → the same app as the other scenarios.
//!
//! Both get their certificates from the mesh's own identity service, with the tokens the mesh
//! minted for the `web` and `api` workloads (`weft cert issue`), so they present the same
//! SPIFFE identities as the weft proxies and verify each other against the same trust bundle.
//! Each runs one thread (`nbthread 1`), as each weft proxy runs one runtime thread; both keep
//! connections alive on both sides and share idle backend connections (`http-reuse always`),
//! as weft's pooled connection does. The configurations are written by [`web_config`] and
//! [`api_config`], in the mesh's temporary directory beside the logs.
//!
//! Before the runs, [`Peer::start`] checks that the hop really is mTLS over TLS 1.3: probes of
//! the api HAProxy's TLS port (plain text, TLS 1.3 without a client certificate and a TLS 1.2
//! hello get no answer; TLS 1.3 with web's certificate gets a 200 from a server proving api's
//! SPIFFE ID) and a 200 through the web HAProxy. After them, [`Peer::check`] compares the api
//! HAProxy's TLS frontend's 2xx count with the requests the load generator measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use weft_identity::spiffe::SpiffeId;
use weft_identity::tls::{self, CertStore, TrustBundle};
use weft_runtime::child::Child;
use weft_runtime::testing::http_get;

use crate::Error;
use crate::mesh::{self, Mesh, free_addr, write_file};
use crate::report::{HAPROXY_API, HAPROXY_WEB, PeerCheck, Run, Scenario};

/// The Debian package that provides `haproxy`.
pub const HAPROXY_PACKAGE: &str = "haproxy";
/// Where `haproxy` is looked for after `PATH` (Debian installs it in `/usr/sbin`, which is not
/// on a normal user's `PATH`).
const HAPROXY_PLACES: &[&str] = &["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"];
/// How long `weft cert issue` may take.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(30);
/// The api HAProxy's TLS frontend, as its statistics name it.
pub const API_FRONTEND: &str = "api_mtls";
/// The SPIFFE ID the api HAProxy presents (the mesh's `api` workload).
const API_ID: &str = "spiffe://weft.local/ns/default/sa/api";

/// The `haproxy` binary: `explicit`, else `haproxy` on `PATH`, else `/usr/sbin/haproxy`.
pub fn find_haproxy(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--haproxy {}: no such file", p.display()))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("haproxy"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(HAPROXY_PLACES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "haproxy is not installed (not on PATH, nor at {}): the mesh benchmark's peer \
                 scenario needs it; install the Debian package `{HAPROXY_PACKAGE}` \
                 (`apt-get install {HAPROXY_PACKAGE}`), pass --haproxy PATH, or skip the peer \
                 scenario with --no-peer",
                HAPROXY_PLACES.join(" or ")
            )
        })
}

/// `haproxy -v`'s first line, e.g. `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - …`.
pub fn haproxy_version(haproxy: &Path) -> Result<String, Error> {
    let o = Command::new(haproxy)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} -v: {e}", haproxy.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    match text.lines().next() {
        Some(line) if o.status.success() => Ok(line.trim().to_string()),
        _ => Err(format!(
            "{} -v failed: {}",
            haproxy.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
    }
}

/// Settings shared by both HAProxies: one thread, TLS 1.3 only on both sides, keep-alive,
/// bounded timeouts, no request logging (the weft proxies log at `warn`).
const COMMON: &str = "\
global
    # One thread, as each weft proxy runs one runtime thread.
    nbthread 1
    maxconn 4096
    # TLS 1.3 only, whichever side of the hop.
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode http
    # Keep-alive on both sides (HAProxy's default, said out loud).
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s
";

/// The web HAProxy: plain HTTP/1.1 in on `listen`; out over mTLS to the api HAProxy at `api`,
/// presenting `crt` (web's certificate, chain and key in one PEM) and verifying api's chain
/// against `ca` (the mesh's trust bundle). Idle connections to api are shared by every client
/// connection (`http-reuse always`).
pub fn web_config(listen: SocketAddr, api: SocketAddr, crt: &Path, ca: &Path) -> String {
    format!(
        "{COMMON}
frontend web_plain
    bind {listen}
    default_backend api_over_mtls

backend api_over_mtls
    http-reuse always
    server api {api} ssl crt {crt} ca-file {ca} verify required ssl-min-ver TLSv1.3 alpn http/1.1
",
        crt = crt.display(),
        ca = ca.display()
    )
}

/// The api HAProxy: TLS 1.3 only on `listen`, presenting `crt` (api's certificate, chain and
/// key) and requiring a client certificate that chains to `ca`; to the app at `app` over kept-alive
/// HTTP/1.1. Statistics (CSV at `/stats;csv`) on `stats`, read before and after the runs.
pub fn api_config(
    listen: SocketAddr,
    app: SocketAddr,
    stats: SocketAddr,
    crt: &Path,
    ca: &Path,
) -> String {
    format!(
        "{COMMON}
frontend {API_FRONTEND}
    bind {listen} ssl crt {crt} ca-file {ca} verify required ssl-min-ver TLSv1.3 alpn http/1.1
    default_backend app

backend app
    http-reuse always
    server app {app}

listen stats
    bind {stats}
    stats enable
    stats uri /stats
",
        crt = crt.display(),
        ca = ca.display()
    )
}

/// The running HAProxy pair. Dropping it kills both.
#[derive(Debug)]
pub(crate) struct Peer {
    web: Child,
    api: Child,
    /// Where the load goes: the web HAProxy's plain HTTP port.
    pub(crate) web_addr: SocketAddr,
    stats: SocketAddr,
    /// `haproxy -v`'s first line.
    pub(crate) version: String,
    /// The probes' results, before the runs.
    probes: PeerCheck,
    /// The api frontend's 2xx count after the probes.
    frontend_2xx_before: f64,
}

impl Peer {
    /// Gets web's and api's certificates from the mesh's identity service, writes both
    /// configurations, starts both HAProxies, waits until a request through web answers 200,
    /// and probes the hop.
    pub(crate) fn start(mesh: &Mesh, weft: &Path, haproxy: &Path) -> Result<Self, Error> {
        let version = haproxy_version(haproxy)?;
        let d = mesh.dir();
        let web_certs = issue(weft, d, "web", mesh.identity_api)?;
        let api_certs = issue(weft, d, "api", mesh.identity_api)?;

        let (api_addr, stats, web_addr) = (free_addr()?, free_addr()?, free_addr()?);
        let api_cfg = d.join("haproxy-api.cfg");
        write_file(
            &api_cfg,
            &api_config(
                api_addr,
                mesh.app,
                stats,
                &api_certs.combined,
                &api_certs.bundle,
            ),
        )?;
        let web_cfg = d.join("haproxy-web.cfg");
        write_file(
            &web_cfg,
            &web_config(web_addr, api_addr, &web_certs.combined, &web_certs.bundle),
        )?;

        let start = |name: &'static str, cfg: &Path| {
            let cfg = cfg.display().to_string();
            // -db: in the foreground, not as a daemon, so it is our child and dies with us.
            mesh::spawn(d, name, haproxy, &["-db", "-f", &cfg], &[])
        };
        let mut api = start("haproxy-api", &api_cfg)?;
        api.wait_for_200(stats, "/stats", "localhost")?;
        let mut web = start("haproxy-web", &web_cfg)?;
        // The readiness wait is also the check that a request through web arrives.
        web.wait_for_200(web_addr, "/", &mesh.host())
            .map_err(|e| format!("{e}\nthe api HAProxy's log:\n{}", api.logs()))?;

        let probes = probe(api_addr, &web_certs, &mesh.host())?;
        // Fail before measuring anything: the pair would not be a peer of weft's hop.
        let failures = probes.probe_failures();
        if !failures.is_empty() {
            return Err(format!(
                "the HAProxy pair's hop is not mTLS over TLS 1.3 only: {}; the api HAProxy's \
                 log:\n{}\nthe web HAProxy's log:\n{}",
                failures.join("; "),
                api.logs(),
                web.logs()
            ));
        }
        let mut peer = Self {
            web,
            api,
            web_addr,
            stats,
            version,
            probes,
            frontend_2xx_before: 0.0,
        };
        peer.frontend_2xx_before = peer.frontend_2xx()?;
        eprintln!(
            "HAProxy pair up ({}): web {web_addr} → mTLS → api {api_addr}",
            peer.version
        );
        Ok(peer)
    }

    /// The two HAProxies, as the reports name them, and their process ids.
    pub(crate) fn pids(&self) -> Vec<(&'static str, u32)> {
        vec![(HAPROXY_WEB, self.web.pid()), (HAPROXY_API, self.api.pid())]
    }

    /// 2xx answers of the api HAProxy's TLS frontend so far.
    fn frontend_2xx(&self) -> Result<f64, Error> {
        let csv = match stats_csv(self.stats) {
            Some(csv) => csv,
            None => {
                return Err(format!(
                    "cannot read the api HAProxy's statistics at http://{}/stats;csv; its \
                     log:\n{}",
                    self.stats,
                    self.api.logs()
                ));
            }
        };
        frontend_2xx(&csv, API_FRONTEND).ok_or_else(|| {
            format!("the api HAProxy's statistics have no hrsp_2xx for {API_FRONTEND}: {csv}")
        })
    }

    /// The probes' results and whether the api frontend answered at least as many requests
    /// over the runs as the load generator measured through the pair.
    pub(crate) fn check(&self, runs: &[Run]) -> Result<PeerCheck, Error> {
        let peer_requests_measured = runs
            .iter()
            .filter(|r| r.scenario == Scenario::Peer)
            .map(|r| r.load.requests)
            .sum();
        Ok(PeerCheck {
            api_frontend_2xx: self.frontend_2xx()? - self.frontend_2xx_before,
            peer_requests_measured,
            ..self.probes.clone()
        }
        .conclude())
    }
}

/// A workload's certificate files as `weft cert issue` wrote them, plus the one PEM HAProxy's
/// `crt` wants.
#[derive(Debug)]
struct Certs {
    dir: PathBuf,
    /// cert.pem, chain.pem and key.pem, in that order.
    combined: PathBuf,
    bundle: PathBuf,
}

/// `weft cert issue` for the mesh's `workload` (with the token the mesh minted for it) into
/// `<dir>/haproxy-<workload>/`, then the combined PEM.
fn issue(weft: &Path, dir: &Path, workload: &str, identity: SocketAddr) -> Result<Certs, Error> {
    let out = dir.join(format!("haproxy-{workload}"));
    let token = dir.join(format!("{workload}.token"));
    let mut child = Command::new(weft)
        .args(["cert", "issue", "--token-file"])
        .arg(&token)
        .arg("--out-dir")
        .arg(&out)
        .args(["--identity-addr", &identity.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {} cert issue: {e}", weft.display()))?;
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "weft cert issue for {workload} took more than {ISSUE_TIMEOUT:?}: is the \
                     identity service at {identity} answering?"
                ));
            }
            Err(e) => return Err(format!("weft cert issue for {workload}: {e}")),
        }
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        return Err(format!(
            "weft cert issue for {workload} failed ({status}): {stderr}"
        ));
    }
    let read = |name: &str| {
        let p = out.join(name);
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let combined = out.join("haproxy.pem");
    let pem = [read("cert.pem")?, read("chain.pem")?, read("key.pem")?].concat();
    write_file(&combined, &pem)?;
    Ok(Certs {
        bundle: out.join("bundle.pem"),
        combined,
        dir: out,
    })
}

/// Probes the api HAProxy's TLS port at `api`: plain text, TLS 1.3 without a client
/// certificate, a TLS 1.2 hello, TLS 1.3 with web's certificate (`web`). A request through the
/// web HAProxy answered 200 before this (its readiness wait).
fn probe(api: SocketAddr, web: &Certs, host: &str) -> Result<PeerCheck, Error> {
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
fn stats_csv(addr: SocketAddr) -> Option<String> {
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
    fn configs_make_the_mtls_hop_tls13_only_on_one_thread() {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let web = web_config(
            addr(1),
            addr(2),
            Path::new("/d/web.pem"),
            Path::new("/d/ca.pem"),
        );
        assert!(web.contains("nbthread 1"));
        assert!(web.contains("bind 127.0.0.1:1\n"), "{web}");
        assert!(web.contains(
            "server api 127.0.0.1:2 ssl crt /d/web.pem ca-file /d/ca.pem verify required \
             ssl-min-ver TLSv1.3"
        ));
        assert!(web.contains("http-reuse always"));
        let api = api_config(
            addr(2),
            addr(3),
            addr(4),
            Path::new("/d/api.pem"),
            Path::new("/d/ca.pem"),
        );
        assert!(api.contains(
            "bind 127.0.0.1:2 ssl crt /d/api.pem ca-file /d/ca.pem verify required ssl-min-ver TLSv1.3"
        ));
        assert!(api.contains("server app 127.0.0.1:3\n"));
        assert!(api.contains(&format!("frontend {API_FRONTEND}\n")));
        assert!(api.contains("bind 127.0.0.1:4\n"));
        for cfg in [&web, &api] {
            for t in ["connect", "client", "server"] {
                assert!(cfg.contains(&format!("timeout {t} ")), "{cfg}");
            }
        }
    }

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
