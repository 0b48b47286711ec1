//! What the demo prints: where its files are, then what runs where, the traffic and where to
//! look. The table's columns are stable: `weft stat`, scripts and the tests read it.

use std::path::Path;
use std::time::Duration;

use super::children::Fleet;
use super::{Files, Mesh, resources};

/// Where the demo keeps its files, before anything starts.
pub(super) fn directories(dir: &Path, temporary: bool, files: &Files, in_etcd: bool) {
    println!("weft demo: a local mesh on 127.0.0.1 (free ports, no root)");
    println!(
        "  data directory  {}{}",
        dir.display(),
        if temporary {
            " (removed on exit; --dir DIR keeps it)"
        } else {
            ""
        }
    );
    let how = if in_etcd {
        "  ← copied into etcd at start: change them with `weft apply` (below)"
    } else {
        "  ← edit live: a valid change applies within a second"
    };
    println!(
        "  resources       {}{}{how}",
        files.resources.display(),
        if files.kept { " (yours, kept)" } else { "" }
    );
    println!("  logs            {}", dir.join("logs").display());
}

/// Once the mesh is up: what runs where, one process a line, the traffic it carries, and
/// where to look at it.
pub(super) fn running(
    fleet: &Fleet,
    mesh: &Mesh,
    files: &Files,
    rate: u32,
    duration: Option<Duration>,
) {
    let (dash, pol_admin) = (mesh.dashboard, mesh.policy_admin);
    println!();
    println!("  {:<10} {:<9} {:<8} ADDRESSES", "NAME", "KIND", "PID");
    for p in &fleet.procs {
        println!(
            "  {:<10} {:<9} {:<8} {}",
            p.name(),
            p.kind,
            p.pid(),
            p.addrs
        );
    }
    println!(
        "  {:<10} {:<9} {:<8} rate={}/s via=loadgen-sidecar (in this process)",
        "loadgen",
        "load",
        std::process::id(),
        rate
    );
    println!();
    println!("  traffic: loadgen → web → api → db, each hop through both sidecars (mTLS)");
    println!("    api:   user-agent *Mobile* → api-v3; the rest api-v1 90% / api-v2 10%,");
    println!(
        "           retries on 503 (api-v2 fails {}% of requests), 2% injected 503s, 2s timeout",
        resources::API_V2_FAIL_PERCENT
    );
    println!(
        "    authz: only loadgen may call web, only web api, only api db (loadgen's own calls to db get 403)"
    );

    println!(
        "  dashboard: http://{dash}/   (golden signals, service graph, denied requests; live)"
    );
    println!(
        "  stats:     weft stat   (per route: weft routes api --backends; health: weft check)"
    );
    println!(
        "             they find this demo while it runs; from elsewhere: --policy-admin {pol_admin}"
    );
    println!(
        "  change:    weft apply -f FILE   (what is served: weft get httproute -o yaml); from elsewhere: --policy-addr {} --cert-dir {}",
        mesh.policy_addrs,
        files.operator.display()
    );
    if let Some(etcd) = &mesh.etcd {
        let members: Vec<String> = etcd.clients().iter().map(|a| a.to_string()).collect();
        let replicas: Vec<String> = fleet
            .procs
            .iter()
            .filter(|p| p.kind == "policy")
            .map(|p| format!("{} (pid {})", p.name(), p.pid()))
            .collect();
        println!(
            "  store:     etcd, 3 members on {}; control-plane replicas {}: kill one and nothing stops",
            members.join(","),
            replicas.join(" and ")
        );
    }
    println!(
        "  metrics:   curl -s http://{}/metrics | grep weft_route_",
        mesh.sidecar("web")
            .map_or_else(String::new, |a| a.admin.to_string())
    );
    match duration {
        Some(d) => println!("Running for {d:?}; Ctrl-C stops the demo sooner."),
        None => println!("Ctrl-C stops the demo."),
    }
}
