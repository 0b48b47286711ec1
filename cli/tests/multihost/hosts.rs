//! The test hosts: network namespaces on one bridge, each with a link to it, and what a
//! host's app does from there (HTTP with `curl`, TCP with bash, its proxy's metrics).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;

use crate::support::{NS_IDENTITY_PORT, NS_POLICY_PORT, Netns, spawn_proxy_as};

const SUBNET: &str = "10.79.0";
const SUBNET6: &str = "fd79::";
const ID_PREFIX: &str = "spiffe://weft.local/ns/default/sa/";

/// A test host: a network namespace with one link to the bridge.
pub struct Host {
    pub name: &'static str,
    pub ip: String,
    pub ip6: String,
    pub uid: u32,
    pub ns: Netns,
    /// The bridge side of the host's link, in the switch namespace: where captures listen.
    pub link: String,
}

impl Host {
    pub fn id(&self) -> String {
        format!("{ID_PREFIX}{}", self.name)
    }

    /// `curl` from the host's app (root: redirected), no proxy settings: (status, body), status
    /// 0 when the request failed.
    pub fn get(&self, url: &str) -> (u16, String) {
        let out = self.ns.exec(&[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            url,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let code = if out.status.success() {
            code.parse().unwrap_or(0)
        } else {
            0
        };
        (code, body.to_string())
    }

    /// `get` until it answers `status`, for at most a minute; the last answer.
    pub fn wait_for(&self, url: &str, status: u16, logs: &dyn Fn() -> String) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.get(url);
            if got.0 == status {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} never got {status} from {url} (last: {got:?}):\n{}",
                self.name,
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The proxy's metrics (admin port on the host's loopback).
    pub fn metrics(&self) -> String {
        let out = self
            .ns
            .exec(&["curl", "-sf", "-m", "5", "http://127.0.0.1:4191/metrics"]);
        assert!(out.status.success(), "{}'s proxy has no metrics", self.name);
        String::from_utf8(out.stdout).unwrap()
    }

    /// A TCP exchange from the app with `ip:port`: sends `send` (if any), reads `read` (`head`
    /// arguments), and how long it took. Fails with empty output when the connection fails.
    pub fn tcp(&self, ip: &str, port: &str, send: &str, read: &str) -> (Output, Duration) {
        self.tcp_as(None, ip, port, send, read)
    }

    /// [`Host::tcp`] as `user` (e.g. the proxy's, which the host's rules let through).
    pub fn tcp_as(
        &self,
        user: Option<u32>,
        ip: &str,
        port: &str,
        send: &str,
        read: &str,
    ) -> (Output, Duration) {
        let script = if send.is_empty() {
            format!("exec 3<>/dev/tcp/{ip}/{port} && timeout 5 head {read} <&3")
        } else {
            format!(
                "exec 3<>/dev/tcp/{ip}/{port} && printf '{send}' >&3 && timeout 5 head {read} <&3"
            )
        };
        let ids = user.map(|u| [format!("--reuid={u}"), format!("--regid={u}")]);
        let mut argv = Vec::new();
        if let Some([reuid, regid]) = &ids {
            argv.extend(["setpriv", reuid, regid, "--clear-groups"]);
        }
        argv.extend(["bash", "-c", &script]);
        let started = Instant::now();
        let out = self.ns.exec(&argv);
        (out, started.elapsed())
    }
}

impl Host {
    /// `weft proxy` as the host's own UID (exempt from its `weft init`), its token in `dir`,
    /// the identity service and the control plane at `c_ip`, listening on both families (as
    /// `weft init --ipv6` redirects them); ready.
    pub fn start_proxy(&self, dir: &Path, c_ip: &str, log: &str) -> Child {
        let env = [
            (
                ENV_TOKEN_FILE,
                dir.join(format!("{}.token", self.name))
                    .display()
                    .to_string(),
            ),
            (ENV_IDENTITY_ADDR, format!("{c_ip}:{NS_IDENTITY_PORT}")),
            (ENV_POLICY_ADDR, format!("{c_ip}:{NS_POLICY_PORT}")),
            (proxy_config::ENV_PROXY_UID, self.uid.to_string()),
            (proxy_config::ENV_INBOUND, "[::]:4143".to_string()),
            (
                proxy_config::ENV_OUTBOUND,
                "127.0.0.1:4140,[::1]:4140".to_string(),
            ),
        ];
        let proxy = spawn_proxy_as(&self.ns, self.uid, &env, &dir.join(log));
        self.ns.wait_ok("http://127.0.0.1:4191/ready", &proxy);
        proxy
    }
}

/// Three hosts on a bridge in a namespace of its own.
pub struct Lan {
    pub hosts: Vec<Host>,
    /// Dropped last: the bridge and the hosts' links go with it and the hosts.
    pub switch: Netns,
}

impl Lan {
    /// A, B and C.
    pub fn abc(&self) -> [&Host; 3] {
        let [a, b, c] = &self.hosts[..] else {
            unreachable!()
        };
        [a, b, c]
    }

    pub fn new() -> Self {
        let switch = Netns::new("weft-mh-sw");
        switch.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.ok(&["ip", "link", "set", "br0", "up"]);
        let tag = std::process::id() % 100_000;
        let hosts = [("a", 1, 2201), ("b", 2, 2202), ("c", 3, 2203)]
            .into_iter()
            .map(|(name, n, uid)| {
                let ns = Netns::new(&format!("weft-mh-{name}"));
                let (dev, link) = (format!("wmh{tag}{name}"), format!("wms{tag}{name}"));
                run_ok(&[
                    "ip",
                    "link",
                    "add",
                    &dev,
                    "netns",
                    &ns.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &link,
                    "netns",
                    &switch.name,
                ]);
                switch.ok(&["ip", "link", "set", &link, "master", "br0"]);
                switch.ok(&["ip", "link", "set", &link, "up"]);
                let (ip, ip6) = (format!("{SUBNET}.{n}"), format!("{SUBNET6}{n}"));
                ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &dev]);
                // No duplicate address detection: usable at once.
                let cidr6 = format!("{ip6}/64");
                ns.ok(&["ip", "addr", "add", &cidr6, "dev", &dev, "nodad"]);
                ns.ok(&["ip", "link", "set", &dev, "up"]);
                ns.ok(&["ip", "link", "set", "lo", "up"]);
                Host {
                    name,
                    ip,
                    ip6,
                    uid,
                    ns,
                    link,
                }
            })
            .collect();
        Lan { hosts, switch }
    }
}

pub fn run_ok(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
