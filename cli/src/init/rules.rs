//! The configuration of `weft init`, checked, and the iptables-restore text it becomes: pure
//! functions, so the exact rules are unit-tested without root.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Our chains in the nat table, in the order they are declared.
pub const CHAIN_PREROUTING: &str = "WEFT_PREROUTING";
pub const CHAIN_INBOUND_REDIRECT: &str = "WEFT_INBOUND_REDIRECT";
pub const CHAIN_OUTPUT: &str = "WEFT_OUTPUT";
pub const CHAIN_OUTBOUND_REDIRECT: &str = "WEFT_OUTBOUND_REDIRECT";
pub const CHAINS: [&str; 4] = [
    CHAIN_PREROUTING,
    CHAIN_INBOUND_REDIRECT,
    CHAIN_OUTPUT,
    CHAIN_OUTBOUND_REDIRECT,
];

/// The jumps from the built-in chains into ours, as `iptables-save` prints them. Only TCP
/// enters our chains: UDP (DNS) and everything else never sees a weft rule.
pub const JUMPS: [(&str, &str); 2] = [
    ("PREROUTING", "-A PREROUTING -p tcp -j WEFT_PREROUTING"),
    ("OUTPUT", "-A OUTPUT -p tcp -j WEFT_OUTPUT"),
];

/// A TCP port or an inclusive range of them (`9000:9100`; `9000-9100` is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// The IP version a ruleset is for: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Loopback destinations, as `iptables-save` prints them.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// An IP network, printed as `iptables-save` does (`10.1.2.3/32`, never a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpCidr {
    pub fn family(&self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Who the proxy runs as: its traffic is never redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyOwner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Everything the rules depend on, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub owner: ProxyOwner,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_outbound_cidrs: Vec<IpCidr>,
    /// Also intercept IPv6 (ip6tables).
    pub ipv6: bool,
}

/// The flags as given, before checking (the parts of `InitArgs` the rules use).
#[derive(Debug, Clone, Default)]
pub struct RawConfig<'a> {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub proxy_uid: Option<u32>,
    pub proxy_gid: Option<u32>,
    pub skip_inbound_ports: &'a [String],
    pub skip_outbound_ports: &'a [String],
    pub skip_outbound_cidrs: &'a [String],
    pub ipv6: bool,
}

/// A checked configuration plus what the user should hear about it.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Checks the flags; the error says which flag is wrong and how to fix it.
    pub fn check(raw: &RawConfig<'_>) -> Result<Checked, String> {
        let mut warnings = Vec::new();
        for (flag, port) in [
            ("--inbound-port", raw.inbound_port),
            ("--outbound-port", raw.outbound_port),
            ("--admin-port", raw.admin_port),
        ] {
            if port == 0 {
                return Err(format!("{flag} 0 is not a port: give 1-65535"));
            }
        }
        if raw.inbound_port == raw.outbound_port {
            return Err(format!(
                "--inbound-port and --outbound-port are both {}: the proxy listens on two \
                 different ports",
                raw.inbound_port
            ));
        }
        for (flag, port) in [
            ("--inbound-port", raw.inbound_port),
            ("--outbound-port", raw.outbound_port),
        ] {
            if port == raw.admin_port {
                return Err(format!(
                    "{flag} {port} is also the --admin-port: traffic to it would never be \
                     redirected"
                ));
            }
        }
        if raw.proxy_uid.is_none() && raw.proxy_gid.is_none() {
            return Err(
                "give --proxy-uid (or --proxy-gid): the user `weft proxy` runs as, \
                        whose traffic is not redirected (without it the proxy's own \
                        connections would loop back into it)"
                    .into(),
            );
        }
        if raw.proxy_uid == Some(0) {
            warnings.push(
                "--proxy-uid 0: every process running as root bypasses the proxy; run \
                 `weft proxy` as a dedicated user instead"
                    .into(),
            );
        }
        if raw.proxy_gid == Some(0) {
            warnings.push(
                "--proxy-gid 0: every process in group root bypasses the proxy; run \
                 `weft proxy` with a dedicated group instead"
                    .into(),
            );
        }
        let skip_inbound_ports = skip_ports(
            "--skip-inbound-ports",
            raw.skip_inbound_ports,
            "inbound",
            raw.inbound_port,
        )?;
        let skip_outbound_ports = skip_ports(
            "--skip-outbound-ports",
            raw.skip_outbound_ports,
            "outbound",
            raw.outbound_port,
        )?;
        let skip_outbound_cidrs = raw
            .skip_outbound_cidrs
            .iter()
            .flat_map(|s| split_list(s))
            .map(|s| parse_cidr(s).map_err(|e| format!("--skip-outbound-cidrs {s}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let v6 = skip_outbound_cidrs
            .iter()
            .find(|c| c.family() == Family::V6);
        if let (Some(c), false) = (v6, raw.ipv6) {
            return Err(format!(
                "--skip-outbound-cidrs {c}: an IPv6 network needs --ipv6 (without it IPv6 is \
                 not intercepted at all)"
            ));
        }
        Ok(Checked {
            config: Config {
                inbound_port: raw.inbound_port,
                outbound_port: raw.outbound_port,
                admin_port: raw.admin_port,
                owner: ProxyOwner {
                    uid: raw.proxy_uid,
                    gid: raw.proxy_gid,
                },
                skip_inbound_ports,
                skip_outbound_ports,
                skip_outbound_cidrs,
                ipv6: raw.ipv6,
            },
            warnings,
        })
    }

    /// Every rule in our chains for one IP version, in order, exactly as `iptables-save` (or
    /// `ip6tables-save`) prints them.
    pub fn chain_rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        // Inbound: everything arriving over TCP goes to the proxy's inbound port, except the
        // admin port and the skipped ports.
        let pre = CHAIN_PREROUTING;
        r.push(format!(
            "-A {pre} -p tcp -m tcp --dport {} -j RETURN",
            self.admin_port
        ));
        for p in &self.skip_inbound_ports {
            r.push(format!("-A {pre} -p tcp -m tcp --dport {p} -j RETURN"));
        }
        r.push(format!("-A {pre} -p tcp -j {CHAIN_INBOUND_REDIRECT}"));
        r.push(format!(
            "-A {CHAIN_INBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        // Outbound: first the proxy's own connections (to apps, to peers, to the control
        // plane): redirecting them would loop them back into the proxy.
        let out = CHAIN_OUTPUT;
        if let Some(uid) = self.owner.uid {
            r.push(format!("-A {out} -m owner --uid-owner {uid} -j RETURN"));
        }
        if let Some(gid) = self.owner.gid {
            r.push(format!("-A {out} -m owner --gid-owner {gid} -j RETURN"));
        }
        // Loopback: the app's calls to localhost (including explicit HTTP_PROXY use of the
        // outbound port) and to the host's own addresses, which route over lo, stay as they
        // are. See docs/init.md on why the pod's own IP is not sent to the inbound side.
        r.push(format!("-A {out} -d {} -j RETURN", family.loopback()));
        r.push(format!("-A {out} -o lo -j RETURN"));
        for p in &self.skip_outbound_ports {
            r.push(format!("-A {out} -p tcp -m tcp --dport {p} -j RETURN"));
        }
        for c in self
            .skip_outbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            r.push(format!("-A {out} -d {c} -j RETURN"));
        }
        r.push(format!("-A {out} -p tcp -j {CHAIN_OUTBOUND_REDIRECT}"));
        r.push(format!(
            "-A {CHAIN_OUTBOUND_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        r
    }
}

/// What of ours is installed now, read from `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    /// Our chains that exist.
    pub chains: Vec<String>,
    /// Rules in built-in chains that jump to one of our chains, as saved (`-A ...`).
    pub jumps: Vec<String>,
    /// The rules in our chains, as saved (`-A WEFT_...`).
    pub rules: Vec<String>,
}

impl NatState {
    /// Parses the `*nat` table of `iptables-save` output.
    pub fn parse(save: &str) -> Self {
        let mut state = NatState::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if CHAINS.contains(&name) {
                    state.chains.push(name.to_string());
                }
            } else if line.starts_with("-A ") {
                let words: Vec<&str> = line.split_whitespace().collect();
                let chain = words.get(1).copied().unwrap_or_default();
                let target = words
                    .windows(2)
                    .find(|w| w[0] == "-j" || w[0] == "--jump")
                    .map(|w| w[1]);
                if CHAINS.contains(&chain) {
                    state.rules.push(line.to_string());
                } else if target.is_some_and(|t| CHAINS.contains(&t)) {
                    state.jumps.push(line.to_string());
                }
            }
        }
        state
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }
}

/// The iptables-restore text (for `--noflush`) that installs `config` over `state`: it
/// declares our chains (which empties them if they exist), fills them, and adds each jump
/// only when it is not there yet, so a second run replaces our rules and never duplicates
/// the jumps.
pub fn install_ruleset(config: &Config, family: Family, state: &NatState) -> String {
    let restore = match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    };
    let mut s = String::new();
    s.push_str("# weft init: transparent interception for `weft proxy`\n");
    s.push_str(&format!(
        "# (apply with {restore} --noflush: one transaction)\n"
    ));
    s.push_str("*nat\n");
    for chain in CHAINS {
        s.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in config.chain_rules(family) {
        s.push_str(&rule);
        s.push('\n');
    }
    for (_, jump) in JUMPS {
        if !state.jumps.iter().any(|j| j == jump) {
            s.push_str(jump);
            s.push('\n');
        }
    }
    s.push_str("COMMIT\n");
    s
}

/// The iptables-restore text (for `--noflush`) that removes what `state` shows of ours: the
/// jumps, then our chains (emptied first, so they can reference each other). `None` when
/// nothing is installed.
pub fn uninstall_ruleset(state: &NatState) -> Option<String> {
    if state.is_empty() {
        return None;
    }
    let mut s = String::from("# weft init --uninstall\n*nat\n");
    for chain in &state.chains {
        s.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for jump in &state.jumps {
        if let Some(rule) = jump.strip_prefix("-A ") {
            s.push_str(&format!("-D {rule}\n"));
        }
    }
    for chain in &state.chains {
        s.push_str(&format!("-X {chain}\n"));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// The iptables-restore text (for `--noflush`) that puts back what `before` shows of ours,
/// after an install over it: our chains as they were (or gone), and the jumps the install
/// added removed. Used when the IPv6 half of an install fails after the IPv4 half succeeded.
pub fn rollback_ruleset(before: &NatState) -> String {
    let mut s = String::from("# weft init: rollback\n*nat\n");
    for chain in CHAINS {
        s.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &before.rules {
        s.push_str(rule);
        s.push('\n');
    }
    for (_, jump) in JUMPS {
        if !before.jumps.iter().any(|j| j == jump) {
            s.push_str(&format!("-D {}\n", jump.trim_start_matches("-A ")));
        }
    }
    for chain in CHAINS {
        if !before.chains.iter().any(|c| c == chain) {
            s.push_str(&format!("-X {chain}\n"));
        }
    }
    s.push_str("COMMIT\n");
    s
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A skip list of ports (`flag`), which must not contain the proxy's own `which` port.
fn skip_ports(
    flag: &str,
    items: &[String],
    which: &str,
    port: u16,
) -> Result<Vec<PortRange>, String> {
    let ranges = parse_ports(flag, items)?;
    match ranges.iter().find(|r| r.contains(port)) {
        Some(r) => Err(format!(
            "{flag} {r} contains the {which} port {port}: the proxy's own port cannot be skipped"
        )),
        None => Ok(ranges),
    }
}

fn parse_ports(flag: &str, items: &[String]) -> Result<Vec<PortRange>, String> {
    items
        .iter()
        .flat_map(|s| split_list(s))
        .map(|s| parse_port_range(s).map_err(|e| format!("{flag} {s}: {e}")))
        .collect()
}

/// `80`, `9000:9100` or `9000-9100`.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{p}` is not a port (1-65535)")),
        Ok(n) => Ok(n),
    };
    let (first, last) = match s.split_once([':', '-']) {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!(
            "the range starts after it ends: write {last}:{first}"
        ));
    }
    Ok(PortRange { first, last })
}

/// `10.0.0.0/8` or `fd00::/8`, or an address alone (`/32`, `/128`). Host bits must be zero, so
/// a typo such as `10.0.0.1/8` is caught instead of silently meaning `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Result<IpCidr, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("`/{l}` is not a prefix length (0-{max})")),
        },
    };
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    if network != addr {
        return Err(format!("host bits are set: did you mean {network}/{len}?"));
    }
    Ok(IpCidr { addr, len })
}
