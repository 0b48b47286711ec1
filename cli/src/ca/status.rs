//! `weft ca status`: what the CA holds, the rotation under way, and who lags.

use std::time::SystemTime;

use weft_identity::authority::Authority;
use weft_identity::authority::state::AnchorStep;
use weft_identity::tls::fingerprint;

use super::mesh::{Need, holders, lagging};
use super::{StatusArgs, existing_ca, short, shorts};

pub fn run(args: &StatusArgs) -> Result<(), String> {
    let cfg = existing_ca(&args.ca)?;
    let ca = Authority::load_or_create(&cfg).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    println!("trust domain  {}", ca.trust_domain());
    println!("data dir      {}", cfg.data_dir.display());
    for (i, a) in ca.bundle().certs().iter().enumerate() {
        let fp = fingerprint(a);
        let (_, not_after) = weft_identity::client::validity(a).unwrap_or((now, now));
        let role = if fp == ca.anchor_fingerprint() {
            "signs the issuer"
        } else {
            "trusted"
        };
        println!(
            "{}  {fp}  expires {} ({})  {role}",
            if i == 0 {
                "anchors     "
            } else {
                "            "
            },
            weft_identity::rfc3339(not_after),
            left(now, not_after)
        );
    }
    println!(
        "issuer        {}  expires {} ({})",
        ca.issuer_fingerprint(),
        weft_identity::rfc3339(ca.issuer_not_after()),
        left(now, ca.issuer_not_after())
    );
    let state = ca.state();
    let at = |secs: u64| {
        weft_identity::rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    };
    for r in state
        .retired_issuers
        .iter()
        .filter(|r| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(r.not_after) > now)
    {
        // Nothing to keep for its leaves: each carries its issuer in its chain, and verifies
        // against the anchor, which stays.
        println!(
            "retired       {}  since {}; its leaves verify until they expire (by {} at the latest)",
            r.fingerprint,
            at(r.retired),
            at(r.not_after)
        );
    }
    if let Some(before) = state.reissue_before {
        println!(
            "re-issue      leaves of other issuers are replaced before {}",
            weft_identity::rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(before))
        );
    }
    let need = match &state.anchor_rotation {
        None => {
            println!("rotation      none under way");
            None
        }
        Some(r) => {
            let (next, need) = match r.step {
                AnchorStep::Trusting => (
                    "switch the issuer to the new anchor, once every proxy trusts it",
                    Need::Anchor(r.new.clone()),
                ),
                AnchorStep::Issuing => (
                    "drop the old anchors, once every proxy holds a certificate from the new issuer",
                    Need::Issuer {
                        issuer: ca.issuer_fingerprint(),
                        anchor: r.new.clone(),
                    },
                ),
            };
            println!(
                "rotation      anchor {} replacing {}: step {} since {}",
                short(&r.new),
                shorts(&r.old),
                r.step.as_str(),
                weft_identity::rfc3339(
                    SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_secs(r.switched.unwrap_or(r.started))
                )
            );
            println!("next          {next}: `weft ca rotate anchor` goes on");
            Some(need)
        }
    };
    if !args.no_mesh_check
        && let Err(e) = mesh(args, &ca, need.as_ref())
    {
        println!("mesh          unknown: {e} (--no-mesh-check to show the CA alone)");
    }
    for e in state.history.iter().rev().take(5) {
        println!(
            "history       {}  {}",
            weft_identity::rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(e.at)),
            e.what
        );
    }
    Ok(())
}

/// The proxies and control-plane replicas, and which lag behind the CA (or the step under
/// way).
fn mesh(args: &StatusArgs, ca: &Authority, need: Option<&Need>) -> Result<(), String> {
    let holders = holders(&args.mesh.policy_admins())?;
    // Outside a rotation every part should trust exactly the CA's anchors and hold a leaf of
    // its issuer (or one of an issuer retired lately, until it renews).
    let steady = Need::Issuer {
        issuer: ca.issuer_fingerprint(),
        anchor: ca.anchor_fingerprint(),
    };
    let lag = lagging(&holders, need.unwrap_or(&steady));
    let served = ca.bundle().fingerprints();
    let extra: Vec<String> = holders
        .iter()
        .filter_map(|h| {
            let t = h.trust.as_ref()?;
            let gone: Vec<&String> = t.anchors.iter().filter(|a| !served.contains(a)).collect();
            (!gone.is_empty()).then(|| {
                format!(
                    "{}: still trusts {}, which the CA no longer serves",
                    h.name,
                    shorts(gone)
                )
            })
        })
        .collect();
    println!(
        "mesh          {} proxies and control-plane replicas; {} lag",
        holders.len(),
        lag.len() + extra.len()
    );
    for l in lag.iter().chain(&extra) {
        println!("  lagging     {l}");
    }
    Ok(())
}

fn left(now: SystemTime, at: SystemTime) -> String {
    match at.duration_since(now) {
        Ok(d) => {
            let s = d.as_secs();
            match s {
                0..3600 => format!("in {}m", s / 60),
                3600..172_800 => format!("in {}h", s / 3600),
                _ => format!("in {}d", s / 86_400),
            }
        }
        Err(_) => "EXPIRED".to_string(),
    }
}
