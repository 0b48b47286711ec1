//! `weft apply`, `weft get` and `weft delete`: the resources through the control plane's API,
//! in kubectl's shape, authenticated with an operator's mesh certificate.
//!
//! The certificate is a directory as `weft cert issue` writes it (`key.pem`, `cert.pem`,
//! `chain.pem`, `bundle.pem`): `--cert-dir`, `WEFT_CERT_DIR`, or `~/.weft/operator`
//! (`$WEFT_HOME/operator` when that is set).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use weft_policy::client::{ClientError, ClientSettings, ClientTls, PolicyClient};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_policy::manage::{ApplyRequest, InputFile, Item, kind_named};
use weft_policy::resources::{DEFAULT_NAMESPACE, KINDS};

/// The environment variable naming the operator's certificate directory.
pub const ENV_CERT_DIR: &str = "WEFT_CERT_DIR";

/// How the control plane is reached.
#[derive(Debug, Args)]
pub struct Connection {
    /// The control plane's API, or each replica's, comma-separated [default: the running
    /// demo's, else 127.0.0.1:8090].
    #[arg(long, env = ENV_POLICY_ADDR)]
    pub policy_addr: Option<String>,
    /// The operator's certificate directory (as `weft cert issue --out-dir` writes it);
    /// default: the running demo's operator (when the control plane is the demo's), else
    /// `~/.weft/operator` when it exists.
    #[arg(long, env = ENV_CERT_DIR)]
    pub cert_dir: Option<PathBuf>,
    /// Plain HTTP, for a control plane in development mode (`weft policy --insecure-dev`).
    #[arg(long)]
    pub insecure_dev: bool,
    /// How long to wait for the control plane's answer.
    #[arg(long, default_value = "30s", value_parser = weft_runtime::config::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A YAML file, a directory of them (read recursively), or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Apply only if the resources are still at this revision (as `weft get` prints it).
    #[arg(long)]
    pub revision: Option<String>,
    /// Validate, and say what would change, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The kind (`httproute`, `svc`, `server`, `authorizationpolicy`, `meshconfig`), or `all`.
    pub kind: String,
    /// One resource's name.
    pub name: Option<String>,
    /// The namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub conn: Connection,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Delete only if the resources are still at this revision.
    #[arg(long)]
    pub revision: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

pub fn apply(args: ApplyArgs) -> Result<(), String> {
    let files = read_inputs(&args.files)?;
    let req = ApplyRequest {
        files,
        revision: args.revision,
        dry_run: args.dry_run,
    };
    runtime()?.block_on(async {
        let client = client(&args.conn)?;
        let done = client.apply(&req).await.map_err(explain)?;
        let note = if done.dry_run { " (dry run)" } else { "" };
        for a in &done.applied {
            let action = serde_json::to_value(a.action)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            println!(
                "{} {}/{} {action}{note} ({})",
                a.kind, a.namespace, a.name, a.file
            );
        }
        println!("revision {}", done.revision);
        Ok(())
    })
}

pub fn get(args: GetArgs) -> Result<(), String> {
    let kind = match args.kind.as_str() {
        "all" => None,
        k => Some(known_kind(k)?),
    };
    let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
    runtime()?.block_on(async {
        let client = client(&args.conn)?;
        let listed = client
            .list_resources(kind, namespace, args.name.as_deref())
            .await
            .map_err(explain)?;
        if let (Some(name), true) = (&args.name, listed.items.is_empty()) {
            return Err(format!(
                "no {} {}/{name}",
                kind.unwrap_or("resource"),
                args.namespace
            ));
        }
        match args.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&listed).map_err(|e| e.to_string())?
            ),
            Output::Yaml => {
                println!("# weft revision {}", listed.revision);
                for (i, item) in listed.items.iter().enumerate() {
                    if i > 0 {
                        println!("---");
                    }
                    print!("{}", item.yaml);
                }
            }
            Output::Table => print!("{}", table(&listed.items)),
        }
        Ok(())
    })
}

pub fn delete(args: DeleteArgs) -> Result<(), String> {
    let kind = known_kind(&args.kind)?;
    runtime()?.block_on(async {
        let client = client(&args.conn)?;
        let done = client
            .delete_resource(kind, &args.namespace, &args.name, args.revision.as_deref())
            .await
            .map_err(explain)?;
        println!(
            "{} {}/{} deleted ({})",
            done.kind, done.namespace, done.name, done.file
        );
        println!("revision {}", done.revision);
        Ok(())
    })
}

fn known_kind(given: &str) -> Result<&'static str, String> {
    kind_named(given)
        .ok_or_else(|| format!("unknown kind `{given}`: use one of {}", KINDS.join(", ")))
}

/// The files to apply: each file as given, each YAML file of a directory, or standard input.
fn read_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            files.push(InputFile {
                name: "<stdin>".into(),
                yaml: text,
            });
        } else if path.is_dir() {
            let sources = weft_policy::load::read_sources(path).map_err(|e| e.to_string())?;
            if sources.is_empty() {
                return Err(format!("{} holds no YAML file", path.display()));
            }
            files.extend(sources.into_iter().map(|(p, yaml)| InputFile {
                name: p.display().to_string(),
                yaml,
            }));
        } else {
            let yaml = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            files.push(InputFile {
                name: path.display().to_string(),
                yaml,
            });
        }
    }
    Ok(files)
}

fn table(items: &[Item]) -> String {
    let rows: Vec<[&str; 4]> = items
        .iter()
        .map(|i| [&i.kind, &i.namespace, &i.name, &i.file].map(String::as_str))
        .collect();
    let head = ["KIND", "NAMESPACE", "NAME", "FILE"];
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([head[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(head).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The control plane's answer as the operator reads it: its message alone when it gave one.
fn explain(e: ClientError) -> String {
    match e {
        ClientError::Rejected { status, body } if body.error != "unknown" => {
            format!("{} ({}, {})", body.message, body.error, status.as_u16())
        }
        other => other.to_string(),
    }
}

fn client(conn: &Connection) -> Result<PolicyClient, String> {
    // The demo's operator certificate goes with the demo's control plane only.
    let (addr, demo_operator) = match &conn.policy_addr {
        Some(addr) => (addr.clone(), None),
        None => match crate::context::current_said() {
            Some(c) => (c.policy_addr, Some(c.operator)),
            None => (weft_policy::client::DEFAULT_ADDR.to_string(), None),
        },
    };
    let tls = if conn.insecure_dev {
        None
    } else {
        Some(operator_tls(conn.cert_dir.clone().or(demo_operator))?)
    };
    let mut settings = ClientSettings::new(addr, tls);
    settings.request_timeout = conn.timeout;
    Ok(PolicyClient::new(settings))
}

/// TLS with the operator's certificate: the control plane must prove its mesh identity in
/// the certificate's trust domain.
fn operator_tls(given: Option<PathBuf>) -> Result<ClientTls, String> {
    let default = crate::context::home().map(|h| h.join("operator"));
    let dir = given
        .or(default.filter(|d| d.join("cert.pem").exists()))
        .ok_or_else(|| {
            format!(
                "give an operator's certificate directory with --cert-dir or {ENV_CERT_DIR} (make one with `weft token create --namespace {} --workload {} > operator.token` and `weft cert issue --token-file operator.token --out-dir ~/.weft/operator`), or --insecure-dev for a development control plane",
                weft_policy::manage::OPERATOR_NAMESPACE,
                weft_policy::manage::OPERATOR_WORKLOAD
            )
        })?;
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| {
            format!(
                "cannot read {}: {e} (the directory `weft cert issue --out-dir` wrote)",
                dir.join(name).display()
            )
        })
    };
    let mut chain: Vec<CertificateDer<'static>> =
        weft_identity::tls::certs_from_pem(&read("cert.pem")?).map_err(|e| e.to_string())?;
    chain.extend(
        weft_identity::tls::certs_from_pem(&read("chain.pem")?).map_err(|e| e.to_string())?,
    );
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{} holds no certificate", dir.join("cert.pem").display()))?;
    let identity = weft_identity::tls::peer_identity(leaf).map_err(|e| {
        format!(
            "{} is not a mesh certificate: {e}",
            dir.join("cert.pem").display()
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&read("key.pem")?)
        .map_err(|e| format!("{}: {e}", dir.join("key.pem").display()))?;
    let key = weft_identity::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", dir.join("key.pem").display()))?;
    let bundle = weft_identity::tls::TrustBundle::from_pem(&read("bundle.pem")?)
        .map_err(|e| e.to_string())?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, key));
    let store = weft_identity::tls::CertStore::new(certified);
    let td = weft_identity::TrustDomain::new(identity.trust_domain()).map_err(|e| e.to_string())?;
    let expected = weft_policy::client::service_identity(&td)?;
    ClientTls::mesh(&bundle, expected, Some(store)).map_err(|e| e.to_string())
}
