//! The demo's files and store, before any process starts: the CA, every account's token, the
//! bootstrap operator's certificate and the resources (`write_files`), and with
//! `--store etcd` the etcd cluster holding the resources (`start_etcd`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use weft_identity::authority::{Authority, AuthorityConfig};

use super::{Files, WORKLOADS, resources};

/// The CA's material and every account's token, minted here from the same data directory
/// the identity service then serves, and the resources unless `dir` has some already.
pub(super) fn write_files(dir: &Path, leaf_lifetime: Duration) -> Result<Files, String> {
    let mut cfg = AuthorityConfig::new(dir.join("identity"));
    cfg.leaf_lifetime = leaf_lifetime;
    let authority = Authority::load_or_create(&cfg).map_err(|e| e.to_string())?;
    let trust_domain = authority.trust_domain().to_string();
    let tokens = dir.join("tokens");
    mint_tokens(&authority, &tokens)?;
    let operator = dir.join("operator");
    operator_cert(&authority, &operator)?;
    let resources = dir.join("resources");
    let kept = resources.exists();
    if !kept {
        resources::write(&resources, &trust_domain)?;
    }
    Ok(Files {
        tokens,
        operator,
        resources,
        kept,
    })
}

/// A token for the control plane and one for each workload account, in `tokens/<account>`.
fn mint_tokens(authority: &Authority, tokens: &Path) -> Result<(), String> {
    std::fs::create_dir_all(tokens)
        .map_err(|e| format!("cannot create {}: {e}", tokens.display()))?;
    let mut accounts: Vec<(&str, &str)> = vec![
        ("weft", "policy"),
        (
            weft_policy::manage::OPERATOR_NAMESPACE,
            weft_policy::manage::OPERATOR_WORKLOAD,
        ),
    ];
    for w in WORKLOADS {
        if !accounts.contains(&("default", w.account)) {
            accounts.push(("default", w.account));
        }
    }
    for (ns, account) in accounts {
        let id = authority
            .trust_domain()
            .workload(ns, account)
            .map_err(|e| e.to_string())?;
        let token = authority.token_key().create(
            &id,
            &authority.anchor_fingerprint(),
            SystemTime::now(),
            Duration::from_secs(24 * 3600),
        )?;
        let path = tokens.join(account);
        std::fs::write(&path, token)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The bootstrap operator's certificate, straight from the CA, as `weft cert issue` writes
/// it: what `weft apply --cert-dir` reads.
fn operator_cert(authority: &Authority, out: &Path) -> Result<(), String> {
    let id = authority
        .trust_domain()
        .workload(
            weft_policy::manage::OPERATOR_NAMESPACE,
            weft_policy::manage::OPERATOR_WORKLOAD,
        )
        .map_err(|e| e.to_string())?;
    crate::cert::write_credentials(out, &authority.issue_credentials(&id)?)
}

/// A three-member etcd cluster on loopback under `dir/etcd` (new at every run: its members'
/// ports are), holding the resource files of `resources`.
pub(super) async fn start_etcd(
    dir: &Path,
    resources: &Path,
) -> Result<weft_runtime::etcd::EtcdCluster, String> {
    let data = dir.join("etcd");
    let _ = std::fs::remove_dir_all(&data);
    let cluster =
        tokio::task::spawn_blocking(move || weft_runtime::etcd::EtcdCluster::start(&data, 3))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("weft demo --store etcd: {e}"))?;
    let client = weft_policy::etcd::Etcd::new(&weft_policy::etcd::EtcdConfig {
        members: weft_policy::etcd::EtcdConfig::members(&cluster.store_url())?,
        tls: None,
        timeout: Duration::from_secs(10),
    })
    .map_err(|e| e.to_string())?;
    let files = weft_policy::load::read_sources(resources).map_err(|e| e.to_string())?;
    for (path, text) in files {
        let name = path
            .strip_prefix(resources)
            .unwrap_or(&path)
            .display()
            .to_string();
        client
            .put(
                format!("/weft/resources/{name}").as_bytes(),
                text.as_bytes(),
                0,
            )
            .await
            .map_err(|e| format!("cannot write {name} into etcd: {e}"))?;
    }
    Ok(cluster)
}
