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
use crate::metrics::Registry;
use crate::server::IdentityService;
use crate::spiffe::TrustDomain;

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
pub const ENV_DNS_NAMES: &str = "WEFT_IDENTITY_DNS_NAMES";
pub const DEFAULT_DNS_NAMES: &str = "localhost";
/// Where workloads find the identity service.
pub const ENV_IDENTITY_ADDR: &str = "WEFT_IDENTITY_ADDR";
pub const DEFAULT_IDENTITY_ADDR: &str = "127.0.0.1:8443";
/// Where a workload's bootstrap token is.
pub const ENV_TOKEN_FILE: &str = "WEFT_TOKEN_FILE";
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/weft/token";
/// Log filter (tracing `EnvFilter` syntax).
pub const ENV_LOG: &str = "WEFT_LOG";
pub const DEFAULT_LOG: &str = "info";

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
    /// Trust domain of every identity issued.
    #[arg(long, env = ENV_TRUST_DOMAIN, default_value = crate::spiffe::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: TrustDomain,
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
    /// DNS names for the service's own certificate, besides its SPIFFE ID (comma-separated).
    #[arg(long, env = ENV_DNS_NAMES, default_value = DEFAULT_DNS_NAMES, value_delimiter = ',')]
    pub dns_name: Vec<String>,
}

impl IdentityArgs {
    pub fn authority_config(&self) -> AuthorityConfig {
        let mut cfg = self.ca.authority_config();
        cfg.leaf_lifetime = self.leaf_lifetime;
        cfg.clock_skew = self.clock_skew;
        cfg
    }
}

/// Parses `500ms`, `30s`, `5m`, `24h`, `1h30m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{s}` is missing a unit (ms, s, m, h, d)"))?;
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration such as 500ms, 30s, 5m or 24h"
            ));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}` is not a duration such as 500ms, 30s, 5m or 24h"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => {
                return Err(format!(
                    "`{s}` has the unknown unit `{other}` (use ms, s, m, h or d)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(value * unit);
    }
    Ok(total)
}

/// Logs to stderr, filtered by `WEFT_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_with_default(DEFAULT_LOG);
}

/// Logs to stderr, filtered by `WEFT_LOG`, or by `default` when it is unset.
pub fn init_tracing_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Binds and runs the identity service until `shutdown`.
pub async fn run(args: IdentityArgs, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let authority =
        Authority::load_or_create(&args.authority_config()).map_err(|e| e.to_string())?;
    let registry = Registry::new();
    let fingerprint = authority.anchor_fingerprint();
    let svc = IdentityService::new(authority, &registry, args.dns_name.clone())?;
    let api = TcpListener::bind(args.listen).await.map_err(|e| {
        format!(
            "cannot listen on {} for the identity API: {e} (set --listen or {ENV_LISTEN})",
            args.listen
        )
    })?;
    let admin = TcpListener::bind(args.admin_listen).await.map_err(|e| {
        format!(
            "cannot listen on {} for the admin endpoint: {e} (set --admin-listen or {ENV_ADMIN})",
            args.admin_listen
        )
    })?;
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        api = %local(&api),
        admin = %local(&admin),
        trust_domain = %args.ca.trust_domain,
        trust_anchor = %fingerprint,
        leaf_lifetime = ?args.leaf_lifetime,
        "identity service ready"
    );
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(crate::admin::run(
        admin,
        crate::admin::Admin {
            registry,
            ready: ready_rx,
            extra: None,
        },
        wait_true(stop_rx),
    ));
    svc.run(api, shutdown).await;
    let _ = ready_tx.send(false);
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    Ok(())
}

/// Completes when the watch holds `true` (or its sender is gone).
pub async fn wait_true(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs the identity service as a process: a multi-threaded runtime, exits 1 with the error on
/// a start-up failure.
pub fn run_main(args: IdentityArgs) -> ExitCode {
    run_process("identity", run(args, shutdown_signal()))
}

/// Runs a component's `main` future on a multi-threaded runtime until it ends (its shutdown is
/// Ctrl-C or SIGTERM): exit 0, or exit 1 with its error logged and printed as
/// `weft <component>: <error>`.
pub fn run_process(component: &str, main: impl Future<Output = Result<(), String>>) -> ExitCode {
    run_process_on(component, 0, main)
}

/// [`run_process`] on a runtime of `workers` threads: 1 is a single-threaded runtime (every
/// task on the main thread: no cross-thread wake-ups), 0 one worker per CPU.
pub fn run_process_on(
    component: &str,
    workers: usize,
    main: impl Future<Output = Result<(), String>>,
) -> ExitCode {
    let rt = match workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Runtime::new(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft {component}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("weft {component}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A free loopback address for a child process to listen on.
///
/// The port is checked free here and bound by the child a moment later; in between, any
/// outgoing connection on the machine may take an ephemeral port as its local port. So the
/// port is drawn at random below the kernel's ephemeral range when there is room
/// (`/proc/sys/net/ipv4/ip_local_port_range`), and never handed out twice by one process
/// (two children given the same port would fail the same way).
pub fn free_loopback_addr(what: &str) -> Result<SocketAddr, String> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut given = GIVEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FIRST: u16 = 10_000;
    if low > FIRST + 1000 {
        for _ in 0..500 {
            let addr = SocketAddr::from(([127, 0, 0, 1], fastrand::u16(FIRST..low)));
            if !given.contains(&addr.port()) && std::net::TcpListener::bind(addr).is_ok() {
                given.insert(addr.port());
                return Ok(addr);
            }
        }
    }
    for _ in 0..100 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port for {what}: {e}"))?;
        if given.insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(format!("cannot find a free port for {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_loopback_addrs_are_free_distinct_and_below_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let addrs: Vec<_> = (0..200)
            .map(|_| free_loopback_addr("a test").unwrap())
            .collect();
        let ports: std::collections::HashSet<_> = addrs.iter().map(|a| a.port()).collect();
        assert_eq!(ports.len(), addrs.len(), "a port was handed out twice");
        for a in &addrs {
            assert!(a.ip().is_loopback());
            if low > 11_000 {
                assert!(a.port() < low, "{a} is in the ephemeral range (from {low})");
            }
        }
        std::net::TcpListener::bind(addrs[0]).expect("the port is free");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "h", "10x", "ten seconds", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_parse() {
        let args = IdentityArgs::try_parse_from(["weft-identity"]).unwrap();
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.leaf_lifetime, Duration::from_secs(86400));
        assert_eq!(args.clock_skew, crate::authority::DEFAULT_CLOCK_SKEW);
    }
}
