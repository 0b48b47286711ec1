//! `weft cert issue`: get a certificate the way a proxy does (key generated here and never
//! sent), and write it out for a workload that wants an identity without a proxy.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use weft_identity::client::{self, ClientSettings};
use weft_identity::config::{DEFAULT_IDENTITY_ADDR, ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_identity::tls;

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Ask the identity service for a certificate and write key, certificate, chain and bundle.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// File holding the bootstrap token.
    #[arg(long, env = ENV_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// Directory to write key.pem (0600), cert.pem, chain.pem and bundle.pem into.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Address of the identity service.
    #[arg(long, env = ENV_IDENTITY_ADDR, default_value = DEFAULT_IDENTITY_ADDR)]
    pub identity_addr: String,
}

pub fn run(cmd: CertCommand) -> Result<(), String> {
    match cmd {
        CertCommand::Issue(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(issue(&args))
        }
    }
}

async fn issue(args: &IssueArgs) -> Result<(), String> {
    let token = fs::read_to_string(&args.token_file).map_err(|e| {
        format!(
            "cannot read the token file {}: {e} (create one with `weft token create`)",
            args.token_file.display()
        )
    })?;
    let settings = ClientSettings::new(&args.identity_addr, token);
    let creds = client::bootstrap(&settings)
        .await
        .map_err(|e| e.to_string())?;
    write_credentials(&args.out_dir, &creds)?;
    println!(
        "{} certified until {}: wrote key.pem, cert.pem, chain.pem, bundle.pem to {}",
        creds.identity,
        weft_identity::rfc3339(creds.not_after),
        args.out_dir.display()
    );
    Ok(())
}

/// Writes `creds` into `out` as `key.pem` (0600), `cert.pem` (the leaf), `chain.pem` (its
/// issuers) and `bundle.pem` (the trust anchors): what `weft cert issue` writes and
/// `weft apply --cert-dir` reads.
pub(crate) fn write_credentials(
    out: &Path,
    creds: &weft_identity::tls::Credentials,
) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let pem = |ders: &[rustls::pki_types::CertificateDer<'static>]| -> String {
        ders.iter()
            .map(|c| tls::der_to_pem("CERTIFICATE", c))
            .collect()
    };
    write(
        &out.join("key.pem"),
        &tls::der_to_pem("PRIVATE KEY", creds.key.secret_pkcs8_der()),
        0o600,
    )?;
    write(&out.join("cert.pem"), &pem(&creds.chain[..1]), 0o644)?;
    write(&out.join("chain.pem"), &pem(&creds.chain[1..]), 0o644)?;
    write(&out.join("bundle.pem"), &creds.bundle.to_pem(), 0o644)
}

/// Writes `contents` to `path` with permissions `mode` (0600 for a key).
pub(crate) fn write(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
