//! Settings of `weft identity`, `weft token create` and `weft cert issue`: every one a flag with
//! a `WEFT_*` environment variable and a default, named here.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser};
use tokio::net::TcpListener;

use crate::authority::{Authority, AuthorityConfig};
use crate::server::IdentityService;
use crate::spiffe::TrustDomain;
use weft_runtime::config::parse_duration;
use weft_runtime::metrics::Registry;
use weft_runtime::process::{run_process, shutdown_signal, wait_true};
use weft_runtime::serve::bind;

pub const ENV_LISTEN: &str = "WEFT_IDENTITY_LISTEN";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const ENV_ADMIN: &str = "WEFT_IDENTITY_ADMIN_LISTEN";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9990";
pub const ENV_DATA_DIR: &str = "WEFT_IDENTITY_DATA_DIR";
pub const ENV_TRUST_DOMAIN: &str = "WEFT_TRUST_DOMAIN";
pub const ENV_LEAF_LIFETIME: &str = "WEFT_IDENTITY_LEAF_LIFETIME";
pub const DEFAULT_LEAF_LIFETIME: &str = "24h";
pub const ENV_CLOCK_SKEW: &str = "WEFT_IDENTITY_CLOCK_SKEW";
pub const DEFAULT_CLOCK_SKEW_STR: &str = "60s";
pub const ENV_TRUST_ANCHOR: &str = "WEFT_IDENTITY_TRUST_ANCHOR";
pub const ENV_ISSUER_CERT: &str = "WEFT_IDENTITY_ISSUER_CERT";
pub const ENV_ISSUER_KEY: &str = "WEFT_IDENTITY_ISSUER_KEY";
pub const ENV_ISSUER_LIFETIME: &str = "WEFT_IDENTITY_ISSUER_LIFETIME";
pub const DEFAULT_ISSUER_LIFETIME: &str = "365d";
pub const ENV_ROTATE_AT: &str = "WEFT_IDENTITY_ROTATE_AT";
pub const DEFAULT_ROTATE_AT: &str = "80%";
pub const ENV_DNS_NAMES: &str = "WEFT_IDENTITY_DNS_NAMES";
pub const DEFAULT_DNS_NAMES: &str = "localhost";
/// Where workloads find the identity service.
pub const ENV_IDENTITY_ADDR: &str = "WEFT_IDENTITY_ADDR";
pub const DEFAULT_IDENTITY_ADDR: &str = "127.0.0.1:8443";
/// How often a workload asks the CA for its bundle and issuer between renewals.
pub const ENV_TRUST_REFRESH: &str = "WEFT_IDENTITY_TRUST_REFRESH";
pub const DEFAULT_TRUST_REFRESH: &str = "60s";
/// Where a workload's bootstrap token is.
pub const ENV_TOKEN_FILE: &str = "WEFT_TOKEN_FILE";
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/weft/token";

/// The data directory when none is given: `$HOME/.local/share/weft/identity`, or
/// `/var/lib/weft/identity` without a home directory.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".local/share/weft/identity"),
        _ => PathBuf::from("/var/lib/weft/identity"),
    }
}

/// Where the CA's material is: shared by the service and `weft token create`.
#[derive(Debug, Clone, Args)]
pub struct CaArgs {
    /// Data directory holding the trust anchor, issuer and token-signing key
    /// [default: $HOME/.local/share/weft/identity]
    #[arg(long, env = ENV_DATA_DIR)]
    pub data_dir: Option<PathBuf>,
    /// Trust domain of every identity issued [default: the one the data directory records;
    /// `weft.local` for a new CA]. A CA serves one: another is refused.
    #[arg(long, env = ENV_TRUST_DOMAIN)]
    pub trust_domain: Option<TrustDomain>,
    /// Operator-supplied trust anchor certificate(s), PEM (with --issuer-cert and --issuer-key).
    #[arg(long, env = ENV_TRUST_ANCHOR, requires_all = ["issuer_cert", "issuer_key"])]
    pub trust_anchor: Option<PathBuf>,
    /// Operator-supplied issuer certificate, PEM, signed by the trust anchor.
    #[arg(long, env = ENV_ISSUER_CERT, requires_all = ["trust_anchor", "issuer_key"])]
    pub issuer_cert: Option<PathBuf>,
    /// Operator-supplied issuer private key, PEM (PKCS#8).
    #[arg(long, env = ENV_ISSUER_KEY, requires_all = ["trust_anchor", "issuer_cert"])]
    pub issuer_key: Option<PathBuf>,
}

impl CaArgs {
    pub fn authority_config(&self) -> AuthorityConfig {
        let mut cfg = AuthorityConfig::new(self.data_dir.clone().unwrap_or_else(default_data_dir));
        cfg.trust_domain = self.trust_domain.clone();
        cfg.anchor_file = self.trust_anchor.clone();
        cfg.issuer_cert_file = self.issuer_cert.clone();
        cfg.issuer_key_file = self.issuer_key.clone();
        cfg
    }
}

/// `weft identity` / `weft-identity`: run the identity service.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "weft-identity",
    version,
    about = "weft's identity service: issues short-lived SPIFFE certificates to workloads"
)]
pub struct IdentityArgs {
    /// Address of the HTTPS API.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Address of the admin endpoint (/metrics, /live, /ready).
    #[arg(long, env = ENV_ADMIN, default_value = DEFAULT_ADMIN)]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub ca: CaArgs,
    /// Lifetime of workload certificates (e.g. 24h, 1h, 30s).
    #[arg(long, env = ENV_LEAF_LIFETIME, default_value = DEFAULT_LEAF_LIFETIME, value_parser = parse_duration)]
    pub leaf_lifetime: Duration,
    /// How far NotBefore is back-dated for peers with slow clocks.
    #[arg(long, env = ENV_CLOCK_SKEW, default_value = DEFAULT_CLOCK_SKEW_STR, value_parser = parse_duration)]
    pub clock_skew: Duration,
    /// Lifetime of the issuers the service creates (the first one, and each rotation's).
    #[arg(long, env = ENV_ISSUER_LIFETIME, default_value = DEFAULT_ISSUER_LIFETIME, value_parser = parse_duration)]
    pub issuer_lifetime: Duration,
    /// Replace the issuer once this share of its lifetime has passed (`80%`, `0.8`), when the
    /// anchor's key is in the data directory; `never` to leave it to `weft ca rotate issuer`.
    #[arg(long, env = ENV_ROTATE_AT, default_value = DEFAULT_ROTATE_AT, value_parser = parse_rotate_at)]
    pub rotate_at: RotateAt,
    /// DNS names for the service's own certificate, besides its SPIFFE ID (comma-separated).
    #[arg(long, env = ENV_DNS_NAMES, default_value = DEFAULT_DNS_NAMES, value_delimiter = ',')]
    pub dns_name: Vec<String>,
}

impl IdentityArgs {
    pub fn authority_config(&self) -> AuthorityConfig {
        let mut cfg = self.ca.authority_config();
        cfg.leaf_lifetime = self.leaf_lifetime;
        cfg.clock_skew = self.clock_skew;
        cfg.issuer_lifetime = self.issuer_lifetime;
        cfg
    }
}

/// When the service replaces its issuer: a share of the issuer's lifetime, or never.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotateAt(pub Option<f64>);

/// `80%`, `0.8` or `never`.
pub fn parse_rotate_at(s: &str) -> Result<RotateAt, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("never") {
        return Ok(RotateAt(None));
    }
    let (num, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 100.0),
        None => (s, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if (v / scale) > 0.0 && (v / scale) < 1.0 => Ok(RotateAt(Some(v / scale))),
        _ => Err(format!(
            "`{s}` is not a share of the issuer's lifetime: give one between 0 and 1 (`0.8`), a percentage (`80%`), or `never`"
        )),
    }
}

/// Binds and runs the identity service until `shutdown`.
pub async fn run(args: IdentityArgs, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let cfg = args.authority_config();
    let authority = Authority::load_or_create(&cfg).map_err(|e| e.to_string())?;
    let registry = Registry::new();
    let fingerprint = authority.anchor_fingerprint();
    let trust_domain = authority.trust_domain().to_string();
    let svc = IdentityService::new(authority, &registry, args.dns_name.clone())?;
    let api = bind(
        args.listen,
        "identity API",
        &format!("--listen or {ENV_LISTEN}"),
    )
    .await?;
    let admin_set = format!("--admin-listen or {ENV_ADMIN}");
    let admin = bind(args.admin_listen, "admin endpoint", &admin_set).await?;
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        api = %local(&api),
        admin = %local(&admin),
        trust_domain = %trust_domain,
        trust_anchor = %fingerprint,
        leaf_lifetime = ?args.leaf_lifetime,
        "identity service ready"
    );
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(weft_runtime::admin::run(
        admin,
        weft_runtime::admin::Admin {
            registry,
            ready: ready_rx,
            extra: None,
        },
        wait_true(stop_rx),
    ));
    weft_runtime::process::notify_ready();
    let follower = svc.follow_files(cfg, crate::server::CA_FILES_CHECK, args.rotate_at.0);
    svc.run(api, shutdown).await;
    follower.abort();
    let _ = ready_tx.send(false);
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    Ok(())
}

/// Runs the identity service as a process: a multi-threaded runtime, exits 1 with the error on
/// a start-up failure.
pub fn run_main(args: IdentityArgs) -> ExitCode {
    run_process("identity", run(args, shutdown_signal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let args = IdentityArgs::try_parse_from(["weft-identity"]).unwrap();
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.leaf_lifetime, Duration::from_secs(86400));
        assert_eq!(args.clock_skew, crate::authority::DEFAULT_CLOCK_SKEW);
        assert_eq!(args.rotate_at, RotateAt(Some(0.8)));
        assert_eq!(args.issuer_lifetime, Duration::from_secs(365 * 86400));
    }

    #[test]
    fn rotate_at_takes_a_share_a_percentage_or_never() {
        assert_eq!(parse_rotate_at("0.5"), Ok(RotateAt(Some(0.5))));
        assert_eq!(parse_rotate_at("90%"), Ok(RotateAt(Some(0.9))));
        assert_eq!(parse_rotate_at("never"), Ok(RotateAt(None)));
        for bad in ["0", "1", "150%", "soon", "-0.2"] {
            let e = parse_rotate_at(bad).unwrap_err();
            assert!(e.contains("between 0 and 1"), "{e}");
        }
    }
}
