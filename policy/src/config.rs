//! Settings of `weft policy` (and `weft-policy`) and `weft policy check`: every flag with a
//! `WEFT_*` environment variable and a default, named here; and the process entry points.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser};
use weft_identity::config::{
    DEFAULT_IDENTITY_ADDR, DEFAULT_TOKEN_FILE, DEFAULT_TRUST_REFRESH, ENV_IDENTITY_ADDR,
    ENV_TOKEN_FILE, ENV_TRUST_REFRESH,
};
use weft_runtime::config::{parse_duration, parse_from_vars};
use weft_runtime::process::shutdown_signal;
use weft_runtime::serve::bind;

use crate::api::ApiSettings;
use crate::authz::DefaultPolicy;
use crate::server::{Listeners, Security, Settings};

pub const ENV_LISTEN: &str = "WEFT_POLICY_LISTEN";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
pub const ENV_ADMIN: &str = "WEFT_POLICY_ADMIN_LISTEN";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9991";
pub const ENV_DIR: &str = "WEFT_POLICY_DIR";
pub const DEFAULT_DIR: &str = "/etc/weft/policy";
pub const ENV_STORE: &str = "WEFT_POLICY_STORE";
pub const DEFAULT_STORE: &str = "dir";
pub const ENV_STORE_PREFIX: &str = "WEFT_POLICY_STORE_PREFIX";
pub const DEFAULT_STORE_PREFIX: &str = "/weft/";
pub const ENV_ETCD_CA: &str = "WEFT_POLICY_ETCD_CA";
pub const ENV_ETCD_CERT: &str = "WEFT_POLICY_ETCD_CERT";
pub const ENV_ETCD_KEY: &str = "WEFT_POLICY_ETCD_KEY";
pub const ENV_DEFAULT_POLICY: &str = "WEFT_POLICY_DEFAULT_POLICY";
pub const DEFAULT_DEFAULT_POLICY: &str = "all-authenticated";
pub const ENV_POLL_INTERVAL: &str = "WEFT_POLICY_POLL_INTERVAL";
pub const DEFAULT_POLL_INTERVAL: &str = "200ms";
pub const ENV_DEFAULT_LEASE: &str = "WEFT_POLICY_DEFAULT_LEASE";
pub const DEFAULT_DEFAULT_LEASE: &str = "30s";
pub const ENV_MAX_LEASE: &str = "WEFT_POLICY_MAX_LEASE";
pub const DEFAULT_MAX_LEASE: &str = "5m";
pub const ENV_HEARTBEAT: &str = "WEFT_POLICY_HEARTBEAT";
pub const DEFAULT_HEARTBEAT: &str = "10s";
pub const ENV_MAX_WATCHES: &str = "WEFT_POLICY_MAX_WATCHES_PER_IDENTITY";
pub const DEFAULT_MAX_WATCHES: usize = crate::api::DEFAULT_MAX_WATCHES_PER_IDENTITY;
pub const ENV_MAX_REQUESTS: &str = "WEFT_POLICY_MAX_REQUESTS_PER_IDENTITY";
pub const DEFAULT_MAX_REQUESTS: usize = crate::api::DEFAULT_MAX_REQUESTS_PER_IDENTITY;
pub const ENV_MAX_REGISTRATIONS: &str = "WEFT_POLICY_MAX_REGISTRATIONS_PER_IDENTITY";
pub const DEFAULT_MAX_REGISTRATIONS: usize = crate::api::DEFAULT_MAX_REGISTRATIONS_PER_IDENTITY;
pub const ENV_MAX_CONNECTIONS: &str = "WEFT_POLICY_MAX_CONNECTIONS_PER_IP";
pub const DEFAULT_MAX_CONNECTIONS: usize = crate::api::DEFAULT_MAX_CONNECTIONS_PER_IP;
pub const ENV_INSECURE_DEV: &str = "WEFT_POLICY_INSECURE_DEV";
/// Where workloads find the control plane.
pub const ENV_POLICY_ADDR: &str = "WEFT_POLICY_ADDR";
pub const DEFAULT_POLICY_ADDR: &str = crate::client::DEFAULT_ADDR;

/// `weft policy` / `weft-policy`: run the control plane.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "weft-policy",
    version,
    about = "weft's control plane: mesh resources, endpoint registry and the list+watch API"
)]
pub struct PolicyArgs {
    /// Address of the API (list+watch, registration).
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Address of the admin endpoint (/metrics, /live, /ready, /status).
    #[arg(long, env = ENV_ADMIN, default_value = DEFAULT_ADMIN)]
    pub admin_listen: SocketAddr,
    /// Directory of YAML resources, watched for changes.
    #[arg(long, env = ENV_DIR, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Policy of ports no Server or AuthorizationPolicy covers, unless a MeshConfig sets one:
    /// all-authenticated, all-unauthenticated or deny.
    /// Where the resources are: `dir` (the directory `--dir`), or an etcd cluster
    /// (`etcd://host:2379,host:2379,...`) that every replica of the control plane follows.
    #[arg(long, env = ENV_STORE, default_value = DEFAULT_STORE)]
    pub store: String,
    /// The prefix of every key the mesh keeps in etcd.
    #[arg(long, env = ENV_STORE_PREFIX, default_value = DEFAULT_STORE_PREFIX)]
    pub store_prefix: String,
    /// TLS to etcd: the CA that signed its members' certificates (the store is then reached
    /// over TLS).
    #[arg(long, env = ENV_ETCD_CA)]
    pub etcd_ca: Option<PathBuf>,
    /// TLS to etcd: the control plane's client certificate (PEM), with --etcd-key.
    #[arg(long, env = ENV_ETCD_CERT)]
    pub etcd_cert: Option<PathBuf>,
    /// TLS to etcd: the client certificate's private key (PEM).
    #[arg(long, env = ENV_ETCD_KEY)]
    pub etcd_key: Option<PathBuf>,
    #[arg(long, env = ENV_DEFAULT_POLICY, default_value = DEFAULT_DEFAULT_POLICY)]
    pub default_policy: DefaultPolicy,
    /// How often the directory is checked for changes.
    #[arg(long, env = ENV_POLL_INTERVAL, default_value = DEFAULT_POLL_INTERVAL, value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Lease granted to a registration that asks for none.
    #[arg(long, env = ENV_DEFAULT_LEASE, default_value = DEFAULT_DEFAULT_LEASE, value_parser = parse_duration)]
    pub default_lease: Duration,
    /// Longest lease granted.
    #[arg(long, env = ENV_MAX_LEASE, default_value = DEFAULT_MAX_LEASE, value_parser = parse_duration)]
    pub max_lease: Duration,
    /// Interval of heartbeats on idle watch streams.
    #[arg(long, env = ENV_HEARTBEAT, default_value = DEFAULT_HEARTBEAT, value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Watch streams one client may hold open at once (a client: the identity its certificate
    /// proves, or its IP address with --insecure-dev); past it, 429 too_many_watches.
    #[arg(long, env = ENV_MAX_WATCHES, default_value_t = DEFAULT_MAX_WATCHES, value_parser = parse_cap)]
    pub max_watches_per_identity: usize,
    /// Requests one client may have in flight at once; past it, 429 too_many_requests.
    #[arg(long, env = ENV_MAX_REQUESTS, default_value_t = DEFAULT_MAX_REQUESTS, value_parser = parse_cap)]
    pub max_requests_per_identity: usize,
    /// Live registrations (addresses) one identity may hold; past it, 429
    /// too_many_registrations (with --insecure-dev: the identity a registration claims).
    #[arg(long, env = ENV_MAX_REGISTRATIONS, default_value_t = DEFAULT_MAX_REGISTRATIONS, value_parser = parse_cap)]
    pub max_registrations_per_identity: usize,
    /// Connections open at once from one IP address; one more is closed as soon as it is
    /// accepted.
    #[arg(long, env = ENV_MAX_CONNECTIONS, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = parse_cap)]
    pub max_connections_per_ip: usize,
    /// Serve plain HTTP without mTLS, trusting registrations as sent. Development only.
    #[arg(long, env = ENV_INSECURE_DEV, value_parser = BoolishValueParser::new())]
    pub insecure_dev: bool,
    /// The identity service the control plane gets its certificate from (unless --insecure-dev).
    #[arg(long, env = ENV_IDENTITY_ADDR, default_value = DEFAULT_IDENTITY_ADDR)]
    pub identity_addr: String,
    /// Bootstrap token of the control plane (for spiffe://<td>/ns/weft/sa/policy).
    #[arg(long, env = ENV_TOKEN_FILE, default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// How often to ask the identity service for the CA's bundle and issuer between renewals,
    /// so a CA rotation reaches this process within about this long.
    #[arg(long, env = ENV_TRUST_REFRESH, default_value = DEFAULT_TRUST_REFRESH, value_parser = parse_duration)]
    pub identity_trust_refresh: Duration,
}

impl PolicyArgs {
    /// The defaults with the given `WEFT_*` variables applied, as if they were flags (for
    /// tests and embedding; variables in the process environment still apply to flags not
    /// given here, as clap reads them). The names are the `env` of the arguments above
    /// ([`weft_runtime::config::parse_from_vars`]).
    pub fn from_lookup(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        parse_from_vars(vars)
    }

    /// The resources in etcd, when `--store` names an etcd cluster.
    pub fn etcd_resources(&self) -> Result<Option<crate::etcd::follow::EtcdResources>, String> {
        use crate::etcd::{Etcd, EtcdConfig, EtcdTls};
        if self.store == DEFAULT_STORE {
            return Ok(None);
        }
        let members = EtcdConfig::members(&self.store)
            .map_err(|e| format!("--store ({ENV_STORE}): {e}, or `dir`"))?;
        let tls = self.etcd_ca.clone().map(|ca| EtcdTls {
            ca,
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        });
        if tls.is_none() && (self.etcd_cert.is_some() || self.etcd_key.is_some()) {
            return Err("--etcd-cert and --etcd-key need --etcd-ca (the members' CA)".into());
        }
        let etcd = Etcd::new(&EtcdConfig {
            members,
            tls,
            timeout: crate::etcd::DEFAULT_TIMEOUT,
        })
        .map_err(|e| e.to_string())?;
        let mut prefix = self.store_prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Some(crate::etcd::follow::EtcdResources { etcd, prefix }))
    }

    fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            default_lease: self.default_lease,
            max_lease: self.max_lease,
            heartbeat: self.heartbeat,
            registry_warmup: ApiSettings::warmup_for(self.default_lease),
            max_watches_per_identity: self.max_watches_per_identity,
            max_requests_per_identity: self.max_requests_per_identity,
            max_registrations_per_identity: self.max_registrations_per_identity,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }
}

/// A cap: a whole number of at least 1.
fn parse_cap(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number of at least 1")),
    }
}

/// `weft-policy`'s command line: run the control plane, or `check DIR`.
#[derive(Debug, Parser)]
#[command(
    name = "weft-policy",
    version,
    about = "weft's control plane: mesh resources, endpoint registry and the list+watch API",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: PolicyArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a resource directory without serving it.
    Check(CheckArgs),
}

/// `weft policy check DIR`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The directory of YAML resources.
    pub dir: PathBuf,
}

/// Validates `args.dir`: prints a summary and exits 0, or prints every error and exits 1.
pub fn check_main(args: CheckArgs) -> ExitCode {
    match crate::load::check_dir(&args.dir) {
        Ok(s) => {
            let kinds: Vec<String> = s
                .kinds
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            println!(
                "{}: valid ({} files, {} documents{}{})",
                args.dir.display(),
                s.files,
                s.documents,
                if kinds.is_empty() { "" } else { ": " },
                kinds.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprint!("{}", crate::load::render_errors(&errors));
            eprintln!(
                "{}: {} error{}, nothing would be served",
                args.dir.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

/// Binds the listeners of `args` and runs until `shutdown`.
pub async fn run(
    args: PolicyArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let api_set = format!("--listen or {ENV_LISTEN}");
    let api = bind(args.listen, "control plane API", &api_set).await?;
    let admin_set = format!("--admin-listen or {ENV_ADMIN}");
    let admin = bind(args.admin_listen, "admin endpoint", &admin_set).await?;
    run_on(Listeners { api, admin }, args, shutdown).await
}

/// Runs on listeners already bound (tests bind port 0) until `shutdown`. Without
/// `--insecure-dev`, first gets the control plane's certificate from the identity service
/// with the bootstrap token, and keeps it renewed.
pub async fn run_on(
    listeners: Listeners,
    args: PolicyArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (_identity, security) = if args.insecure_dev {
        (None, Security::InsecureDev)
    } else {
        let (client, security) = mesh_security(&args).await?;
        (Some(client), security)
    };
    let settings = Settings {
        dir: args.dir.clone(),
        etcd: args.etcd_resources()?,
        default_policy: args.default_policy,
        poll_interval: args.poll_interval,
        api: args.api_settings(),
        security,
    };
    crate::server::serve(listeners, settings, shutdown).await
}

/// The control plane's TLS: a certificate from the identity service, swapped in on renewal.
async fn mesh_security(
    args: &PolicyArgs,
) -> Result<(weft_identity::client::IdentityClient, Security), String> {
    let token = std::fs::read_to_string(&args.token_file).map_err(|e| {
        format!(
            "cannot read the bootstrap token {}: {e} (set --token-file or {ENV_TOKEN_FILE}, or run with --insecure-dev on a development machine)",
            args.token_file.display()
        )
    })?;
    let mut settings = weft_identity::client::ClientSettings::new(
        args.identity_addr.clone(),
        token.trim().to_string(),
    );
    settings.trust_refresh = args.identity_trust_refresh;
    let claims = settings
        .claims()
        .map_err(|e| format!("the bootstrap token is unusable: {e}"))?;
    let expected = crate::client::service_identity(
        &weft_identity::TrustDomain::new(claims.sub.trust_domain()).map_err(|e| e.to_string())?,
    )?;
    if claims.sub != expected {
        tracing::warn!(token = %claims.sub, expected = %expected, "the bootstrap token is not for the control plane's identity: proxies will refuse to talk to it");
    }
    tracing::info!(identity = %claims.sub, identity_service = %args.identity_addr, "getting the control plane's certificate");
    let mut client = weft_identity::client::IdentityClient::start(
        settings,
        &weft_runtime::metrics::Registry::new(),
    );
    let creds = client.ready().await;
    let store =
        weft_identity::tls::CertStore::new(creds.certified_key().map_err(|e| e.to_string())?);
    let tls = weft_identity::tls::server_config(
        store.clone(),
        weft_identity::tls::ClientAuth::Deferred,
        &[weft_identity::tls::ALPN_H2, weft_identity::tls::ALPN_HTTP11],
    )
    .map_err(|e| e.to_string())?;
    let mut updates = client.credentials();
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let next = updates.borrow_and_update().clone();
            if let Some(c) = next
                && let Ok(key) = c.certified_key()
            {
                store.set(key);
            }
        }
    });
    let bundle =
        weft_identity::tls::TrustSource::following(client.credentials(), creds.bundle.clone());
    Ok((
        client,
        Security::Mtls {
            tls: Arc::new(tls),
            bundle,
        },
    ))
}

/// Runs the control plane as a process: a multi-threaded runtime, exits 1 with the error on a
/// start-up failure.
pub fn run_main(args: PolicyArgs) -> ExitCode {
    weft_runtime::process::run_process("policy", run(args, shutdown_signal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env_lookup() {
        let args = PolicyArgs::from_lookup(Vec::new()).unwrap();
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.admin_listen.to_string(), DEFAULT_ADMIN);
        assert_eq!(args.default_policy, DefaultPolicy::AllAuthenticated);
        assert_eq!(args.poll_interval, Duration::from_millis(200));
        assert!(!args.insecure_dev);
        assert_eq!(args.max_watches_per_identity, 1000);
        assert_eq!(args.max_requests_per_identity, 100);
        assert_eq!(args.max_registrations_per_identity, 1000);
        assert_eq!(args.max_connections_per_ip, 1000);
        let args = PolicyArgs::from_lookup([
            (ENV_LISTEN.to_string(), "127.0.0.1:0".to_string()),
            (ENV_DEFAULT_POLICY.to_string(), "deny".to_string()),
            (ENV_INSECURE_DEV.to_string(), "true".to_string()),
            (ENV_DEFAULT_LEASE.to_string(), "5s".to_string()),
            (ENV_MAX_WATCHES.to_string(), "20".to_string()),
        ])
        .unwrap();
        assert_eq!(args.max_watches_per_identity, 20);
        assert_eq!(args.listen.port(), 0);
        assert_eq!(args.default_policy, DefaultPolicy::Deny);
        assert!(args.insecure_dev);
        assert_eq!(args.default_lease, Duration::from_secs(5));
        let err = PolicyArgs::from_lookup([(ENV_POLL_INTERVAL.to_string(), "soon".to_string())])
            .unwrap_err();
        assert!(err.contains("soon"), "{err}");
        assert!(PolicyArgs::from_lookup([(ENV_MAX_WATCHES.to_string(), "0".to_string())]).is_err());
    }

    #[test]
    fn cli_parses_check() {
        let cli = Cli::try_parse_from(["weft-policy", "check", "some/dir"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Check(c)) if c.dir == std::path::Path::new("some/dir"))
        );
        let cli = Cli::try_parse_from(["weft-policy", "--insecure-dev", "--dir", "x"]).unwrap();
        assert!(cli.command.is_none() && cli.run.insecure_dev);
    }
}
