//! Which iptables `weft init` drives (nft or legacy) and running it as a process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `--iptables`: which iptables backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// The backend that already holds rules; when neither or both do equally, `iptables`.
    Auto,
    /// iptables-nft (the nf_tables kernel API).
    Nft,
    /// iptables-legacy (the x_tables kernel API).
    Legacy,
}

/// The binaries of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub iptables: String,
    pub save: String,
    pub restore: String,
}

impl Tools {
    pub fn named(prefix: &str) -> Self {
        Tools {
            iptables: prefix.to_string(),
            save: format!("{prefix}-save"),
            restore: format!("{prefix}-restore"),
        }
    }
    pub fn nft() -> Self {
        Self::named("iptables-nft")
    }
    pub fn legacy() -> Self {
        Self::named("iptables-legacy")
    }
    pub fn default_alternative() -> Self {
        Self::named("iptables")
    }
    /// The IPv6 tools of the same backend (`ip6tables-nft` for `iptables-nft`).
    pub fn v6(&self) -> Self {
        let prefix = self.iptables.replacen("iptables", "ip6tables", 1);
        Self::named(&prefix)
    }
    /// Whether all three binaries are in `PATH`.
    pub fn installed(&self) -> Result<(), String> {
        for bin in [&self.iptables, &self.save, &self.restore] {
            find(bin)?;
        }
        Ok(())
    }
}

/// The backend `auto` picks, and why: the one whose `*-save` shows more rules (as kube-proxy's
/// iptables-wrapper and Istio do), so weft's rules land beside the ones already in force;
/// on a tie (typically none anywhere) the system's `iptables`. `None` for a save means that
/// backend is not installed or could not be read.
pub fn choose_auto(legacy_save: Option<&str>, nft_save: Option<&str>) -> (Tools, String) {
    let legacy = legacy_save.map_or(0, count_rules);
    let nft = nft_save.map_or(0, count_rules);
    if legacy > nft {
        (
            Tools::legacy(),
            format!("auto: iptables-legacy holds {legacy} rules, iptables-nft {nft}"),
        )
    } else if nft > legacy {
        (
            Tools::nft(),
            format!("auto: iptables-nft holds {nft} rules, iptables-legacy {legacy}"),
        )
    } else {
        (
            Tools::default_alternative(),
            format!(
                "auto: iptables-legacy and iptables-nft both hold {nft} rules; the system's iptables"
            ),
        )
    }
}

/// Rules (`-A` lines) in `iptables-save` output.
pub fn count_rules(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// The binary in `PATH`, or what to install.
pub fn find(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!(
                "{name} not found in PATH: install the Debian package iptables \
                 (apt-get install iptables)"
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args`, feeding `stdin`; its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let path = find(program)?;
    let shown = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    // A program that fails early stops reading: its own error, read below, is the one to
    // report, not the broken pipe.
    let written = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => pipe.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    written.map_err(|e| format!("cannot write to {shown}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves `--iptables` to binaries that exist.
pub fn resolve(choice: Choice) -> Result<(Tools, String), String> {
    let (tools, why) = match choice {
        Choice::Nft => (Tools::nft(), "--iptables nft".to_string()),
        Choice::Legacy => (Tools::legacy(), "--iptables legacy".to_string()),
        Choice::Auto => {
            // A missing backend (or one the kernel lacks) simply counts as holding no rules.
            let legacy = run("iptables-legacy-save", &[], None).ok();
            let nft = run("iptables-nft-save", &[], None).ok();
            choose_auto(legacy.as_deref(), nft.as_deref())
        }
    };
    tools.installed()?;
    Ok((tools, why))
}

/// `iptables --version`, e.g. `iptables v1.8.9 (nf_tables)`.
pub fn version(tools: &Tools) -> Result<String, String> {
    Ok(run(&tools.iptables, &["--version"], None)?
        .trim()
        .to_string())
}
