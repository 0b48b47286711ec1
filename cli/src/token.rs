//! `weft token create`: a bootstrap token for one workload identity, signed with the identity
//! service's token key (read from its data directory, so only someone who can read the CA's
//! files can mint tokens).

use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use weft_identity::authority::Authority;
use weft_identity::config::CaArgs;
use weft_runtime::config::parse_duration;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token bound to spiffe://<trust-domain>/ns/<namespace>/sa/<workload>.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Namespace of the workload.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Name of the workload (its service account).
    #[arg(long)]
    pub workload: String,
    /// How long the token may be used to get a first certificate (e.g. 1h, 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    #[command(flatten)]
    pub ca: CaArgs,
}

pub fn run(cmd: TokenCommand) -> Result<(), String> {
    match cmd {
        TokenCommand::Create(args) => {
            let token = create(&args)?;
            println!("{token}");
            Ok(())
        }
    }
}

pub fn create(args: &CreateArgs) -> Result<String, String> {
    let authority =
        Authority::load_or_create(&args.ca.authority_config()).map_err(|e| e.to_string())?;
    let identity = authority
        .trust_domain()
        .workload(&args.namespace, &args.workload)
        .map_err(|e| format!("invalid identity: {e}"))?;
    authority.token_key().create(
        &identity,
        &authority.anchor_fingerprint(),
        SystemTime::now(),
        args.ttl,
    )
}
