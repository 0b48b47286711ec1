//! `weft ca`: rotating the CA's issuer and trust anchor, and its state.
//!
//! - `weft ca rotate issuer`: a new issuer under the same anchor, at once.
//! - `weft ca rotate anchor`: the overlap dance, each step taken only when the mesh is ready
//!   for it (`rotate.rs`), resumable: run it again and it goes on from the step recorded.
//! - `weft ca status`: the anchors, the issuer, the rotation under way and which proxies lag
//!   (`status.rs`).
//!
//! The CA's files are changed in place (`weft_identity::authority::rotate`); the identity
//! service picks them up while it runs. What the mesh holds comes from the control plane: its
//! `/workloads` (every proxy reports its anchors and its leaf's issuer) and each replica's
//! `/trust` (`mesh.rs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use weft_identity::authority::{ANCHOR_CERT_FILE, AuthorityConfig};
use weft_identity::config::CaArgs;
use weft_runtime::config::parse_duration;

mod mesh;
mod rotate;
mod status;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Rotate the issuer (at once) or the trust anchor (step by step, as the mesh follows).
    #[command(subcommand)]
    Rotate(RotateCommand),
    /// The anchors, the issuer, a rotation under way, and the proxies that lag.
    Status(StatusArgs),
}

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// A new issuer under the current anchor; leaves move to it as they renew.
    Issuer(IssuerArgs),
    /// A new trust anchor: trust it everywhere, issue under it, then drop the old one.
    Anchor(AnchorArgs),
}

/// Where the control plane's admin is, to see what the proxies hold.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// The control plane's admin address; each replica's, comma-separated, when there are
    /// several (every replica must trust what the proxies trust) [default: the running
    /// demo's, else 127.0.0.1:9991].
    #[arg(long, env = crate::stat::ENV_POLICY_ADMIN, value_delimiter = ',')]
    pub policy_admin: Vec<String>,
}

impl MeshArgs {
    /// The replicas' admin addresses: given, or the running demo's, or the default.
    pub fn policy_admins(&self) -> Vec<String> {
        if !self.policy_admin.is_empty() {
            return self.policy_admin.clone();
        }
        vec![crate::context::resolve(
            None,
            |c| &c.policy_admin,
            crate::stat::DEFAULT_POLICY_ADMIN,
        )]
    }
}

/// How a new issuer is made.
#[derive(Debug, Clone, Args)]
pub struct IssuerOpts {
    /// Lifetime of the new issuer.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub issuer_lifetime: Duration,
    /// Ask every workload to replace a leaf from another issuer within this long (spread
    /// over it), instead of at its next renewal.
    #[arg(long, value_parser = parse_duration)]
    pub reissue_within: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct IssuerArgs {
    #[command(flatten)]
    pub ca: CaArgs,
    #[command(flatten)]
    pub issuer: IssuerOpts,
    /// The trust anchor's private key, when it is kept outside the data directory
    /// (repeatable; each is matched to its anchor).
    #[arg(long)]
    pub anchor_key: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AnchorArgs {
    #[command(flatten)]
    pub ca: CaArgs,
    #[command(flatten)]
    pub issuer: IssuerOpts,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// A trust anchor's private key kept outside the data directory: the current one's to
    /// start (it signs the link to the new one), the new one's to switch the issuer
    /// (repeatable; each is matched to its anchor).
    #[arg(long)]
    pub anchor_key: Vec<PathBuf>,
    /// Where to write the new anchor's key [default: beside the current one in the data
    /// directory; required when that one is kept elsewhere].
    #[arg(long)]
    pub new_anchor_key: Option<PathBuf>,
    /// Lifetime of the new anchor.
    #[arg(long, default_value = "3650d", value_parser = parse_duration)]
    pub anchor_lifetime: Duration,
    /// Do not have the old anchor sign a link to the new one (its key is lost): bootstrap
    /// tokens made before the rotation stop working once the old anchor is dropped.
    #[arg(long)]
    pub no_link: bool,
    /// How long to wait for the mesh to be ready for each step before stopping (the rotation
    /// stays at its step; run the command again to go on).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub wait: Duration,
    /// Take the steps without asking the control plane what the proxies hold: only for a
    /// mesh without proxies (certificates from `weft cert issue` alone).
    #[arg(long)]
    pub no_mesh_check: bool,
    /// Abandon the rotation under way (only before the issuer switched).
    #[arg(long)]
    pub abort: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub ca: CaArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Only the CA's files: do not ask the control plane about the proxies.
    #[arg(long)]
    pub no_mesh_check: bool,
}

pub fn run(cmd: CaCommand) -> Result<(), String> {
    match cmd {
        CaCommand::Rotate(RotateCommand::Issuer(args)) => rotate::issuer(&args),
        CaCommand::Rotate(RotateCommand::Anchor(args)) => rotate::anchor(&args),
        CaCommand::Status(args) => status::run(&args),
    }
}

/// The CA's configuration, refusing a data directory that holds no CA (these commands never
/// create one).
fn existing_ca(ca: &CaArgs) -> Result<AuthorityConfig, String> {
    let cfg = ca.authority_config();
    let anchor = cfg
        .anchor_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join(ANCHOR_CERT_FILE));
    if !anchor.exists() {
        return Err(format!(
            "there is no CA in {} ({} is missing): give the identity service's --data-dir (or WEFT_IDENTITY_DATA_DIR)",
            cfg.data_dir.display(),
            anchor.display()
        ));
    }
    Ok(cfg)
}

/// Fingerprints, each [`short`], comma-separated.
pub(crate) fn shorts<S: AsRef<str>>(fps: impl IntoIterator<Item = S>) -> String {
    fps.into_iter()
        .map(|f| short(f.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sha256:0123456789ab…`: enough of a fingerprint to tell anchors apart on screen.
pub(crate) fn short(fp: &str) -> String {
    match fp.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}…", &hex[..12]),
        _ => fp.to_string(),
    }
}
