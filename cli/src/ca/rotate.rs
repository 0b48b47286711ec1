//! `weft ca rotate issuer|anchor`.

use std::time::{Duration, Instant};

use weft_identity::authority::rotate::{
    self, AnchorKeys, AnchorOptions, IssuerOptions, anchor_abort, anchor_finish, anchor_start,
    anchor_switch, under_way,
};
use weft_identity::authority::state::{AnchorRotation, AnchorStep};
use weft_identity::authority::{Authority, AuthorityConfig};

use super::mesh::{Need, holders, lagging};
use super::{AnchorArgs, IssuerArgs, IssuerOpts, existing_ca, short, shorts};

/// How often the mesh is asked again while a step waits.
const POLL: Duration = Duration::from_millis(500);

fn issuer_options(o: &IssuerOpts) -> IssuerOptions {
    IssuerOptions {
        lifetime: o.issuer_lifetime,
        reissue_within: o.reissue_within,
    }
}

pub fn issuer(args: &IssuerArgs) -> Result<(), String> {
    let cfg = existing_ca(&args.ca)?;
    let keys = AnchorKeys::gather(&cfg.data_dir, &args.anchor_key).map_err(|e| e.to_string())?;
    let fp = rotate::rotate_issuer(&cfg, &keys, &issuer_options(&args.issuer))
        .map_err(|e| e.to_string())?;
    println!("new issuer {fp}: the identity service signs with it from now on (within a second)");
    match args.issuer.reissue_within {
        Some(d) => println!(
            "workloads replace leaves of the old issuer within {}",
            humantime(d)
        ),
        None => println!(
            "workloads move to it as they renew; leaves of the old issuer stay valid until they expire"
        ),
    }
    Ok(())
}

pub fn anchor(args: &AnchorArgs) -> Result<(), String> {
    let cfg = existing_ca(&args.ca)?;
    let keys = AnchorKeys::gather(&cfg.data_dir, &args.anchor_key).map_err(|e| e.to_string())?;
    if args.abort {
        anchor_abort(&cfg).map_err(|e| e.to_string())?;
        println!("anchor rotation abandoned: the new anchor left the bundle");
        return Ok(());
    }
    let mut rotation = match under_way(&cfg).map_err(|e| e.to_string())? {
        Some(r) => {
            println!(
                "going on with the anchor rotation to {} (step {})",
                short(&r.new),
                r.step.as_str()
            );
            r
        }
        None => {
            let opts = AnchorOptions {
                lifetime: args.anchor_lifetime,
                new_key: args.new_anchor_key.clone(),
                link: !args.no_link,
                issuer: issuer_options(&args.issuer),
            };
            let r = anchor_start(&cfg, &keys, &opts).map_err(|e| e.to_string())?;
            println!(
                "step 1 of 3: the new anchor {} is trusted beside {} (its key: {})",
                short(&r.new),
                shorts(&r.old),
                r.new_key.display()
            );
            r
        }
    };
    let deadline = Instant::now() + args.wait;
    loop {
        match rotation.step {
            AnchorStep::Trusting => {
                wait_for(
                    args,
                    &Need::Anchor(rotation.new.clone()),
                    &rotation,
                    deadline,
                )?;
                rotation = anchor_switch(&cfg, &keys, &issuer_options(&args.issuer))
                    .map_err(|e| e.to_string())?;
                let issuer = current_issuer(&cfg)?;
                println!(
                    "step 2 of 3: the issuer is now {} under the new anchor; waiting for every proxy to hold a certificate from it",
                    short(&issuer)
                );
            }
            AnchorStep::Issuing => {
                if let Some(within) = args.issuer.reissue_within {
                    rotate::ask_reissue(&cfg, within).map_err(|e| e.to_string())?;
                }
                let need = Need::Issuer {
                    issuer: current_issuer(&cfg)?,
                    anchor: rotation.new.clone(),
                };
                wait_for(args, &need, &rotation, deadline)?;
                anchor_finish(&cfg).map_err(|e| e.to_string())?;
                println!(
                    "step 3 of 3: the old anchors {} left the bundle; {} is the trust anchor. Rotation complete.",
                    shorts(&rotation.old),
                    short(&rotation.new)
                );
                return Ok(());
            }
        }
    }
}

fn current_issuer(cfg: &AuthorityConfig) -> Result<String, String> {
    Authority::load_or_create(cfg)
        .map(|a| a.issuer_fingerprint())
        .map_err(|e| e.to_string())
}

/// Waits until every proxy and control-plane replica has what `need` asks, or refuses the
/// step at `deadline` naming those that lag.
fn wait_for(
    args: &AnchorArgs,
    need: &Need,
    rotation: &AnchorRotation,
    deadline: Instant,
) -> Result<(), String> {
    if args.no_mesh_check {
        eprintln!(
            "warning: not checking that the mesh {} (--no-mesh-check)",
            need.describe()
        );
        return Ok(());
    }
    let mut last = String::new();
    loop {
        let problem = match holders(&args.mesh.policy_admins()) {
            Ok(h) => {
                let lag = lagging(&h, need);
                if lag.is_empty() {
                    println!(
                        "all {} proxies and control-plane replicas: {}",
                        h.len(),
                        need.describe()
                    );
                    return Ok(());
                }
                format!(
                    "{} of {} not ready: each must have {}:\n  - {}",
                    lag.len(),
                    h.len(),
                    need_short(need),
                    lag.join("\n  - ")
                )
            }
            Err(e) => e,
        };
        if problem != last {
            println!("waiting: {problem}");
            last = problem.clone();
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the mesh is not ready for the next step after {}: {problem}\nThe rotation stays at step {} (nothing is lost); run `weft ca rotate anchor` again to go on.",
                humantime(args.wait),
                rotation.step.as_str()
            ));
        }
        std::thread::sleep(POLL);
    }
}

fn need_short(need: &Need) -> String {
    match need {
        Need::Anchor(a) => format!("the anchor {} in its bundle", short(a)),
        Need::Issuer { issuer, .. } => format!("a certificate from issuer {}", short(issuer)),
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}
