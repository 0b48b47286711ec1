//! The HAProxy pair's configurations, and the certificates they name: web's and api's, from
//! the mesh's own identity service.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::mesh::write_file;

/// How long `weft cert issue` may take.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(30);
/// The api HAProxy's TLS frontend, as its statistics name it.
pub const API_FRONTEND: &str = "api_mtls";

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

/// A workload's certificate files as `weft cert issue` wrote them, plus the one PEM HAProxy's
/// `crt` wants.
#[derive(Debug)]
pub(super) struct Certs {
    pub(super) dir: PathBuf,
    /// cert.pem, chain.pem and key.pem, in that order.
    pub(super) combined: PathBuf,
    pub(super) bundle: PathBuf,
}

/// `weft cert issue` for the mesh's `workload` (with the token the mesh minted for it) into
/// `<dir>/haproxy-<workload>/`, then the combined PEM.
pub(super) fn issue(
    weft: &Path,
    dir: &Path,
    workload: &str,
    identity: SocketAddr,
) -> Result<Certs, Error> {
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
}
