//! `weft demo --store etcd`, run as a user runs it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use super::support::*;
use super::{Demo, signal};

/// `weft demo --store etcd`: two control-plane replicas over a three-member etcd; one is
/// killed and the traffic goes on, `weft apply` (as the printed line says) goes through the
/// other, and the demo stops everything, etcd included.
#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn the_demo_over_etcd_survives_a_replica_and_applies_through_the_other() {
    require_tools(&["etcd"], "etcd-server");
    let mut demo = Demo::start(&["--store", "etcd", "--duration", "40s"]);
    let rows = demo.table();
    let replica = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.pid);
    let (a, b) = (replica("policy-a"), replica("policy-b"));
    assert!(a.is_some() && b.is_some(), "{}", demo.report());
    // The lines after the table: how to change the resources, and the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !demo.out.iter().any(|l| l.contains("  store:")) {
        assert!(Instant::now() < deadline, "{}", demo.report());
        if let Ok(line) = demo.lines.recv_timeout(Duration::from_millis(100)) {
            demo.out.push(line);
        }
    }
    let change = demo
        .out
        .iter()
        .find(|l| l.trim_start().starts_with("change:"))
        .cloned()
        .unwrap();
    let words: Vec<&str> = change.split_whitespace().collect();
    let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1].to_string();
    let (addrs, cert_dir) = (after("--policy-addr"), after("--cert-dir"));

    // policy-a dies: the traffic goes on (the demo's own failures are its 2 % of injected
    // 503s and api-v2's retried ones).
    signal(a.unwrap(), "-KILL");
    let seen = demo.out.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let loads = loop {
        let loads: Vec<String> = demo.out[seen..]
            .iter()
            .filter(|l| l.contains("load, last 5s"))
            .cloned()
            .collect();
        if loads.len() >= 2 {
            break loads;
        }
        assert!(Instant::now() < deadline, "{}", demo.report());
        if let Ok(line) = demo.lines.recv_timeout(Duration::from_millis(200)) {
            demo.out.push(line);
        }
    };
    for l in &loads {
        let ok: u32 = l
            .split("loadgen → web ")
            .nth(1)
            .and_then(|r| r.split('(').nth(1))
            .and_then(|r| r.split('×').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(ok >= 85, "after policy-a died: {l}\n{}", demo.report());
    }

    // A change through the survivor, as the demo says to make it.
    let weft = |args: &[&str]| {
        Command::new(WEFT)
            .args(args)
            .args(["--policy-addr", &addrs, "--cert-dir", &cert_dir])
            .output()
            .unwrap()
    };
    let got = weft(&["get", "httproute", "api", "-o", "yaml"]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let route = String::from_utf8_lossy(&got.stdout).replace("percentage: 2", "percentage: 1");
    let file = demo.dir.path().join("route.yaml");
    std::fs::write(&file, route).unwrap();
    let applied = weft(&["apply", "-f", file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(said.contains("HTTPRoute default/api configured"), "{said}");

    let report = demo.stops_cleanly(&rows, Duration::from_secs(90));
    let store = report
        .lines()
        .find(|l| l.contains("  store:"))
        .unwrap()
        .to_string();
    let members = store
        .split("members on ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    for m in members.split(',') {
        let addr: SocketAddr = m.parse().unwrap();
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "etcd member {addr} outlived the demo"
        );
    }
}
