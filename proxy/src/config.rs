//! Settings of `weft proxy` / `weft-proxy`. Every one has a default that works in the standard
//! layout, so the proxy starts with no flags; each is a flag and a `WEFT_*` variable, named
//! here beside its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use weft_runtime::config::{parse_duration, parse_from_vars};

pub const ENV_INBOUND: &str = "WEFT_PROXY_INBOUND_LISTEN";
pub const DEFAULT_INBOUND: &str = "0.0.0.0:4143";
pub const ENV_OUTBOUND: &str = "WEFT_PROXY_OUTBOUND_LISTEN";
pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:4140";
pub const ENV_ADMIN: &str = "WEFT_PROXY_ADMIN_LISTEN";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:4191";
/// Where the identity service and the bootstrap token are: the variables every workload
/// shares, defined by `weft identity`.
pub use weft_identity::config::{
    DEFAULT_IDENTITY_ADDR, DEFAULT_TOKEN_FILE, DEFAULT_TRUST_REFRESH, ENV_IDENTITY_ADDR,
    ENV_TOKEN_FILE, ENV_TRUST_REFRESH,
};
/// The control plane's address and its development mode: the variables `weft policy` defines.
pub use weft_policy::config::{
    DEFAULT_POLICY_ADDR, ENV_INSECURE_DEV as ENV_POLICY_INSECURE_DEV, ENV_POLICY_ADDR,
};
pub const ENV_SERVICE: &str = "WEFT_PROXY_SERVICE";
pub const ENV_LABELS: &str = "WEFT_PROXY_LABELS";
pub const ENV_APP_PORT: &str = "WEFT_PROXY_APP_PORT";
pub const DEFAULT_APP_PORT: &str = "8080";
pub const ENV_ADVERTISE: &str = "WEFT_PROXY_ADVERTISE_ADDR";
pub const ENV_DETECT_TIMEOUT: &str = "WEFT_PROXY_DETECT_TIMEOUT";
pub const DEFAULT_DETECT_TIMEOUT: &str = "1s";
pub const ENV_HTTP1_TRAILERS_WAIT: &str = "WEFT_PROXY_HTTP1_TRAILERS_WAIT";
pub const DEFAULT_HTTP1_TRAILERS_WAIT: &str = "50ms";
pub const ENV_SHUTDOWN_GRACE: &str = "WEFT_PROXY_SHUTDOWN_GRACE";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "10s";
pub const ENV_OPAQUE_PORTS: &str = "WEFT_PROXY_OPAQUE_PORTS";
pub const ENV_WORKERS: &str = "WEFT_PROXY_WORKERS";
pub const ENV_PROXY_UID: &str = "WEFT_PROXY_UID";
pub const ENV_PROXY_GID: &str = "WEFT_PROXY_GID";
pub const ENV_DISCOVERY_IDLE_TIMEOUT: &str = "WEFT_PROXY_DISCOVERY_IDLE_TIMEOUT";
/// See [`crate::discovery::cache::DEFAULT_IDLE_TIMEOUT`].
pub const DEFAULT_DISCOVERY_IDLE_TIMEOUT: &str = "30s";
pub const ENV_DISCOVERY_CAPACITY: &str = "WEFT_PROXY_DISCOVERY_CAPACITY";
/// See [`crate::discovery::cache::DEFAULT_CAPACITY`].
pub const DEFAULT_DISCOVERY_CAPACITY: &str = "50";
/// One thread: a sidecar serves one workload, and on a busy node hopping between threads
/// (wake-ups, cache misses) costs more CPU per request than a second core gains.
pub const DEFAULT_WORKERS: &str = "1";

/// `weft proxy` / `weft-proxy`: the sidecar.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "weft-proxy",
    version,
    about = "weft's sidecar proxy: mTLS between workloads, authorization, metrics"
)]
pub struct ProxyArgs {
    /// Where peers (and the mesh) reach this workload.
    #[arg(long, env = ENV_INBOUND, default_value = DEFAULT_INBOUND)]
    pub inbound_listen: SocketAddr,
    /// Where the local app sends its outgoing requests (HTTP_PROXY=http://<this>), and where
    /// `weft init` redirects them: a comma list, so that with `weft init --ipv6` the proxy
    /// also listens on IPv6 loopback (`127.0.0.1:4140,[::1]:4140`).
    #[arg(long, env = ENV_OUTBOUND, default_value = DEFAULT_OUTBOUND, value_delimiter = ',')]
    pub outbound_listen: Vec<SocketAddr>,
    /// Admin endpoint: /metrics, /live, /ready.
    #[arg(long, env = ENV_ADMIN, default_value = DEFAULT_ADMIN)]
    pub admin_listen: SocketAddr,
    /// The identity service: `host:port`, or each of its replicas' (`a:8443,b:8443`).
    #[arg(long, env = ENV_IDENTITY_ADDR, default_value = DEFAULT_IDENTITY_ADDR)]
    pub identity_addr: String,
    /// The bootstrap token file: the proxy's whole identity configuration.
    #[arg(long, env = ENV_TOKEN_FILE, default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// How often to ask the identity service for the CA's bundle and issuer between renewals,
    /// so a CA rotation reaches this process within about this long.
    #[arg(long, env = ENV_TRUST_REFRESH, default_value = DEFAULT_TRUST_REFRESH, value_parser = parse_duration)]
    pub identity_trust_refresh: Duration,
    /// The control plane: `host:port`, or each of its replicas' (`a:8090,b:8090`), among which
    /// the proxy starts on one at random and moves to another when its own goes away.
    #[arg(long, env = ENV_POLICY_ADDR, default_value = DEFAULT_POLICY_ADDR)]
    pub policy_addr: String,
    /// Talk to a control plane running with --insecure-dev (plain HTTP/2, no mTLS).
    #[arg(long, env = ENV_POLICY_INSECURE_DEV, value_parser = BoolishValueParser::new())]
    pub policy_insecure_dev: bool,
    /// The service this workload belongs to [default: the workload name in the token].
    #[arg(long, env = ENV_SERVICE)]
    pub service: Option<String>,
    /// Labels registered with the workload, e.g. `version=v2,zone=a`.
    #[arg(long, env = ENV_LABELS, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The app's port when a request names none.
    #[arg(long, env = ENV_APP_PORT, default_value = DEFAULT_APP_PORT)]
    pub app_port: u16,
    /// The inbound address registered with the control plane [default: the inbound port on the
    /// local address that reaches the control plane].
    #[arg(long, env = ENV_ADVERTISE)]
    pub advertise_addr: Option<SocketAddr>,
    /// How long protocol detection waits for a client's first bytes before treating the
    /// connection as opaque TCP.
    #[arg(long, env = ENV_DETECT_TIMEOUT, default_value = DEFAULT_DETECT_TIMEOUT, value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// How long a response to an HTTP/1.1 client that takes trailers (`TE: trailers`), whose
    /// trailer fields are not declared, is read ahead waiting for its end, to declare them
    /// (hyper writes only declared ones). Only such clients wait.
    #[arg(long, env = ENV_HTTP1_TRAILERS_WAIT, default_value = DEFAULT_HTTP1_TRAILERS_WAIT, value_parser = parse_duration)]
    pub http1_trailers_wait: Duration,
    /// On SIGTERM, how long requests in flight get to finish.
    #[arg(long, env = ENV_SHUTDOWN_GRACE, default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Destination ports whose connections skip protocol detection (comma list, e.g.
    /// `3306,25`): server-speaks-first protocols, which would otherwise wait for the detection
    /// timeout. Applies to connections `weft init` redirected, besides the ports the mesh's
    /// services declare opaque (`appProtocol: opaque`).
    #[arg(long, env = ENV_OPAQUE_PORTS, value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,
    /// Runtime threads: 1 runs everything on one thread; 0 means one per CPU.
    #[arg(long, env = ENV_WORKERS, default_value = DEFAULT_WORKERS)]
    pub workers: usize,
    /// The user `weft init --proxy-uid` exempts from redirection: the proxy refuses to start
    /// as another one (its own connections would loop back into it).
    #[arg(long, env = ENV_PROXY_UID)]
    pub proxy_uid: Option<u32>,
    /// The group `weft init --proxy-gid` exempts (with --proxy-uid, either one will do).
    #[arg(long, env = ENV_PROXY_GID)]
    pub proxy_gid: Option<u32>,
    /// A destination no request used for this long is released: its control-plane watches
    /// and what the router and balancer learnt of it (a name the mesh does not know: after
    /// 5 s, or this if shorter). So is a connection to a peer proxy.
    #[arg(long, env = ENV_DISCOVERY_IDLE_TIMEOUT, default_value = DEFAULT_DISCOVERY_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub discovery_idle_timeout: Duration,
    /// At most this many destinations followed at once (each by the router and the balancer;
    /// as many original destinations' addresses); past it, the least recently used go, names
    /// the mesh does not know first. Each takes a stream on the connection to the control
    /// plane, which allows 200: keep 3 × this under it.
    #[arg(long, env = ENV_DISCOVERY_CAPACITY, default_value = DEFAULT_DISCOVERY_CAPACITY, value_parser = clap::value_parser!(u16).range(1..))]
    pub discovery_capacity: u16,
}

impl ProxyArgs {
    /// The defaults with the given `WEFT_*` variables applied as flags (tests, embedding): the
    /// names are the `env` of the arguments above, read from clap
    /// ([`weft_runtime::config::parse_from_vars`]).
    pub fn from_lookup(vars: &[(&str, &str)]) -> Result<Self, String> {
        parse_from_vars(vars.iter().copied())
    }

    /// What interception needs: the proxy's own ports (a loop when a connection was going to
    /// one) and the opaque ports.
    pub fn interception(&self) -> crate::orig_dst::Interception {
        crate::orig_dst::Interception {
            own_ports: [self.inbound_listen.port(), self.admin_listen.port()]
                .into_iter()
                .chain(self.outbound_listen.iter().map(SocketAddr::port))
                .collect(),
            opaque_ports: self.opaque_ports.clone(),
            transparent: self.proxy_uid.is_some() || self.proxy_gid.is_some(),
        }
    }

    /// How many destinations the outbound side follows, and for how long unused.
    pub fn discovery_limits(&self) -> crate::discovery::Limits {
        crate::discovery::Limits {
            idle_timeout: self.discovery_idle_timeout,
            capacity: usize::from(self.discovery_capacity),
        }
    }

    /// `key=value` labels as a map.
    pub fn label_map(&self) -> Result<std::collections::BTreeMap<String, String>, String> {
        self.labels
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| format!("label `{l}` is not `key=value`"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_standard_layout() {
        let a = ProxyArgs::from_lookup(&[]).unwrap();
        assert_eq!(a.inbound_listen.to_string(), DEFAULT_INBOUND);
        assert_eq!(a.outbound_listen, [DEFAULT_OUTBOUND.parse().unwrap()]);
        assert_eq!(a.admin_listen.to_string(), DEFAULT_ADMIN);
        assert_eq!(a.token_file, PathBuf::from(DEFAULT_TOKEN_FILE));
        assert_eq!(a.app_port, 8080);
        assert_eq!(a.workers, 1);
        assert!(!a.policy_insecure_dev);
        assert!(a.opaque_ports.is_empty());
        assert_eq!(a.interception().own_ports, vec![4143, 4191, 4140]);
        assert_eq!(a.discovery_limits(), crate::discovery::Limits::default());
    }

    #[test]
    fn discovery_limits_are_settings() {
        let a = ProxyArgs::from_lookup(&[
            (ENV_DISCOVERY_IDLE_TIMEOUT, "2m"),
            (ENV_DISCOVERY_CAPACITY, "20"),
        ])
        .unwrap();
        assert_eq!(a.discovery_limits().idle_timeout, Duration::from_secs(120));
        assert_eq!(a.discovery_limits().capacity, 20);
        assert!(ProxyArgs::from_lookup(&[(ENV_DISCOVERY_CAPACITY, "0")]).is_err());
    }

    #[test]
    fn the_outbound_listener_takes_ipv4_and_ipv6_loopback() {
        let a = ProxyArgs::from_lookup(&[(ENV_OUTBOUND, "127.0.0.1:4140,[::1]:4150")]).unwrap();
        assert_eq!(
            a.outbound_listen,
            [
                "127.0.0.1:4140".parse::<SocketAddr>().unwrap(),
                "[::1]:4150".parse().unwrap()
            ]
        );
        assert!(a.interception().is_own_port(4150));
        assert!(ProxyArgs::from_lookup(&[(ENV_OUTBOUND, "127.0.0.1:4140,::1")]).is_err());
    }

    #[test]
    fn opaque_ports_are_a_comma_list() {
        let a = ProxyArgs::from_lookup(&[(ENV_OPAQUE_PORTS, "3306,25")]).unwrap();
        assert_eq!(a.opaque_ports, vec![3306, 25]);
        assert!(a.interception().is_opaque(25));
        assert!(ProxyArgs::from_lookup(&[(ENV_OPAQUE_PORTS, "mysql")]).is_err());
    }

    #[test]
    fn lookup_overrides_and_labels() {
        let a = ProxyArgs::from_lookup(&[
            (ENV_APP_PORT, "9000"),
            (ENV_LABELS, "version=v2,zone=a"),
            (ENV_POLICY_INSECURE_DEV, "1"),
        ])
        .unwrap();
        assert_eq!(a.app_port, 9000);
        assert!(a.policy_insecure_dev);
        let labels = a.label_map().unwrap();
        assert_eq!(labels.get("version").unwrap(), "v2");
        assert!(ProxyArgs::from_lookup(&[("WEFT_NOPE", "1")]).is_err());
        let bad = ProxyArgs::from_lookup(&[(ENV_LABELS, "novalue")]).unwrap();
        assert!(bad.label_map().is_err());
    }
}
