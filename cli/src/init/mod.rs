//! `weft init`: installs the iptables rules that send a workload's TCP traffic through its
//! sidecar (like Linkerd's proxy-init and Istio's istio-init), in the current network
//! namespace. See docs/init.md.
//!
//! # Layout
//! - `mod.rs`: the flags and the steps (check, choose the backend, read, apply or print).
//! - [`rules`]: the checked configuration and the exact iptables-restore text (pure).
//! - [`backend`]: choosing iptables-nft or iptables-legacy, and running them.

pub mod backend;
pub mod rules;

#[cfg(test)]
mod tests;

use clap::Args;

use backend::{Choice, Tools};
use rules::{Config, Family, NatState, RawConfig};

/// The proxy's ports, as in `weft_proxy::config` (a unit test keeps them equal).
pub const DEFAULT_INBOUND_PORT: &str = "4143";
pub const DEFAULT_OUTBOUND_PORT: &str = "4140";
pub const DEFAULT_ADMIN_PORT: &str = "4191";

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The user ID `weft proxy` runs as: its connections are never redirected (required
    /// unless --proxy-gid is given).
    #[arg(long, required_unless_present_any = ["proxy_gid", "uninstall"])]
    pub proxy_uid: Option<u32>,
    /// The group ID `weft proxy` runs as: connections of processes in it are never redirected.
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// The proxy's inbound port: TCP arriving at this namespace is redirected to it.
    #[arg(long, default_value = DEFAULT_INBOUND_PORT)]
    pub inbound_port: u16,
    /// The proxy's outbound port: TCP leaving this namespace is redirected to it.
    #[arg(long, default_value = DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// The proxy's admin port: never redirected inbound.
    #[arg(long, default_value = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Inbound destination ports not redirected, e.g. `22,9000:9100`.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub skip_inbound_ports: Vec<String>,
    /// Outbound destination ports not redirected, e.g. `25,5432`.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub skip_outbound_ports: Vec<String>,
    /// Outbound destination networks not redirected, e.g. `10.96.0.0/12,169.254.169.254`
    /// (IPv6 ones with --ipv6).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    pub skip_outbound_cidrs: Vec<String>,
    /// Also intercept IPv6 (ip6tables, same backend); the proxy must then listen on IPv6 too.
    #[arg(long)]
    pub ipv6: bool,
    /// Which iptables to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub iptables: Choice,
    /// Print the iptables-restore text instead of applying it (no root needed).
    #[arg(long)]
    pub dry_run: bool,
    /// Remove weft's jumps and chains (and nothing else).
    #[arg(long)]
    pub uninstall: bool,
}

impl InitArgs {
    fn raw(&self) -> RawConfig<'_> {
        RawConfig {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            skip_inbound_ports: &self.skip_inbound_ports,
            skip_outbound_ports: &self.skip_outbound_ports,
            skip_outbound_cidrs: &self.skip_outbound_cidrs,
            ipv6: self.ipv6,
        }
    }
}

pub fn run(args: InitArgs) -> Result<(), String> {
    let root = weft_proxy::user::RunningAs::current()?.uid == 0;
    if args.uninstall {
        return uninstall(&args, root);
    }
    let checked = Config::check(&args.raw())?;
    for w in &checked.warnings {
        eprintln!("weft init: warning: {w}");
    }
    let config = checked.config;
    if args.dry_run && !root {
        fresh_dry_run(
            &config,
            "without root (as root, --dry-run reads this namespace and prints exactly what it \
             would apply)",
        );
        return Ok(());
    }
    require_root(root)?;
    let read = tools_for(args.iptables).and_then(|tools| {
        let state = read_state(&tools)?;
        let text = rules::install_ruleset(&config, Family::V4, &state);
        // IPv6 uses the same backend as IPv4.
        let v6 = if config.ipv6 {
            let tools6 = tools.v6();
            tools6.installed()?;
            let tools6 = announce(tools6, "using", "; --ipv6, the IPv4 backend's")?;
            let state6 = read_state(&tools6)?;
            let text6 = rules::install_ruleset(&config, Family::V6, &state6);
            Some((tools6, text6))
        } else {
            None
        };
        Ok((tools, state, text, v6))
    });
    let (tools, state, text, v6) = match read {
        Ok(read) => read,
        // Only printing: the rules need no iptables to be written out.
        Err(e) if args.dry_run => {
            fresh_dry_run(&config, &format!("cannot read this namespace's rules: {e}"));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if args.dry_run {
        print!("{text}");
        if let Some((_, text6)) = &v6 {
            print!("\n{text6}");
        }
        return Ok(());
    }
    restore(&tools, &text)?;
    if let Some((tools6, text6)) = &v6 {
        // Two families are two transactions: if the second fails, put the first back.
        if let Err(e) = restore(tools6, text6) {
            let rollback = rules::rollback_ruleset(&state);
            return Err(match restore(&tools, &rollback) {
                Ok(()) => format!("{e}; the IPv4 rules were rolled back too"),
                Err(e2) => format!(
                    "{e}\nrolling back the IPv4 rules failed as well: {e2}\nrun `weft init \
                     --uninstall` to remove what is left"
                ),
            });
        }
    }
    let again = if state.is_empty() {
        ""
    } else {
        " (replacing the previous ones)"
    };
    let with = match &v6 {
        Some((tools6, _)) => format!("{} and {}", tools.restore, tools6.restore),
        None => format!("{} (IPv4 only)", tools.restore),
    };
    println!(
        "weft init: installed weft's rules{again} with {with}: inbound TCP -> port {}, outbound \
         TCP -> port {} except from {}",
        config.inbound_port,
        config.outbound_port,
        owner_text(&config),
    );
    Ok(())
}

/// Prints the rules for a namespace without weft's rules, saying why this namespace's were
/// not read.
fn fresh_dry_run(config: &Config, why: &str) {
    eprintln!(
        "weft init: --dry-run {why}: these are the rules for a namespace without weft's rules"
    );
    let none = NatState::default();
    print!("{}", rules::install_ruleset(config, Family::V4, &none));
    if config.ipv6 {
        print!("\n{}", rules::install_ruleset(config, Family::V6, &none));
    }
}

fn owner_text(config: &Config) -> String {
    match (config.owner.uid, config.owner.gid) {
        (Some(u), Some(g)) => format!("uid {u} and gid {g}"),
        (Some(u), None) => format!("uid {u}"),
        (None, Some(g)) => format!("gid {g}"),
        (None, None) => "nobody".into(),
    }
}

fn uninstall(args: &InitArgs, root: bool) -> Result<(), String> {
    if !root {
        return Err(
            "--uninstall needs root (it reads this namespace's rules, also with --dry-run): \
             run it with sudo, or as root in the namespace"
                .into(),
        );
    }
    // With auto, look in both backends: the rules may have gone into either.
    let candidates = match args.iptables {
        Choice::Nft => vec![Tools::nft()],
        Choice::Legacy => vec![Tools::legacy()],
        Choice::Auto => {
            let both: Vec<Tools> = [Tools::nft(), Tools::legacy()]
                .into_iter()
                .filter(|t| backend::find(&t.restore).is_ok() && backend::find(&t.save).is_ok())
                .collect();
            if both.is_empty() {
                vec![Tools::default_alternative()]
            } else {
                both
            }
        }
    };
    // And the IPv6 tools of each, when installed: they may hold rules from `--ipv6`.
    let candidates = candidates.into_iter().flat_map(|t| {
        let v6 = t.v6();
        let v6 = v6.installed().is_ok().then_some(v6);
        std::iter::once(t).chain(v6)
    });
    let mut removed = false;
    for tools in candidates {
        let tools = announce(tools, "looking in", "")?;
        let state = read_state(&tools)?;
        let Some(text) = rules::uninstall_ruleset(&state) else {
            continue;
        };
        if args.dry_run {
            print!("{text}");
        } else {
            restore(&tools, &text)?;
            println!(
                "weft init: removed weft's {} jumps and {} chains with {}",
                state.jumps.len(),
                state.chains.len(),
                tools.restore
            );
        }
        removed = true;
    }
    if !removed {
        println!("weft init: nothing to uninstall: no weft rules in this namespace");
    }
    Ok(())
}

/// The backend for `choice`, announced with its version.
fn tools_for(choice: Choice) -> Result<Tools, String> {
    let (tools, why) = backend::resolve(choice)?;
    announce(tools, "using", &format!("; {why}"))
}

fn announce(tools: Tools, doing: &str, why: &str) -> Result<Tools, String> {
    let version = backend::version(&tools)?;
    eprintln!("weft init: {doing} {} ({version}{why})", tools.iptables);
    Ok(tools)
}

/// Our rules as they are now. A plain `*-save` (not `-t nat`): iptables-legacy-save lists
/// only the tables that exist, where `-t nat` would create an empty nat table as a side
/// effect (and then make iptables-nft warn about legacy tables).
fn read_state(tools: &Tools) -> Result<NatState, String> {
    let save = backend::run(&tools.save, &[], None)?;
    Ok(NatState::parse(&save))
}

fn restore(tools: &Tools, text: &str) -> Result<(), String> {
    backend::run(&tools.restore, &["--noflush", "--wait"], Some(text)).map_err(|e| {
        format!("{e}\nnothing was changed (iptables-restore applies all rules or none)")
    })?;
    Ok(())
}

fn require_root(root: bool) -> Result<(), String> {
    if root {
        Ok(())
    } else {
        Err(
            "weft init changes iptables rules and needs root: run it with sudo, or as root \
             in the workload's network namespace (--dry-run shows the rules without root)"
                .into(),
        )
    }
}
