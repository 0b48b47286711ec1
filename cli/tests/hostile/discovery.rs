//! Many destinations: distinct unknown names through web's outbound are each answered at once
//! with the proxy's error, and a service created afterwards is still found at once.
//!
//! The 2,000-name test waits for work merged later (a proxy releases destinations it no
//! longer uses and bounds their set): its name ends in `_pending_discovery_release`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mesh::{GoodClient, Mesh, case};
use crate::raw::{header, status};
use crate::support::system_tests;
use weft_runtime::testing::http;

/// What web's outbound answers for a name the mesh does not know: (status, `weft-error`).
const UNKNOWN: (u16, &str) = (502, "unknown_destination");

/// Asks web's outbound for `count` distinct unknown names (`<prefix>-<i>.default`), `threads`
/// at a time: each must get [`UNKNOWN`]; the slowest answer.
fn unknown_names(mesh: &Mesh, prefix: &str, count: usize, threads: usize) -> Duration {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    std::thread::scope(|s| {
        for t in 0..threads {
            let (failures, slowest) = (failures.clone(), slowest.clone());
            let outbound = mesh.web.outbound;
            s.spawn(move || {
                for i in (t..count).step_by(threads) {
                    let host = format!("{prefix}-{i}.default:8080");
                    let started = Instant::now();
                    let r = http(outbound, "GET", &format!("http://{host}/"), &host);
                    let took = started.elapsed();
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                    let text = r.map(|r| r.1).unwrap_or_default();
                    let got = (status(&text), header(&text, "weft-error"));
                    if got != (UNKNOWN.0, Some(UNKNOWN.1.to_string())) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{host}: {got:?} after {took:?}"));
                    }
                }
            });
        }
    });
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} names answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let slowest = *slowest.lock().unwrap();
    slowest
}

/// Creates service `name` selecting api's workload, and waits (up to 10 s) until web reaches
/// it: how long that took.
pub fn new_service_found(mesh: &Mesh, name: &str) -> Duration {
    let port = mesh.port;
    mesh.write_resource(
        &format!("{name}.yaml"),
        &format!("kind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: {port}}}], selector: {{app: api}}}}\n"),
    );
    let host = format!("{name}.default:{port}");
    let started = Instant::now();
    loop {
        let r = http(
            mesh.web.outbound,
            "GET",
            &format!("http://{host}/new"),
            &host,
        );
        if matches!(&r, Some((200, _))) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "web never reached the new service {name}: {r:?}\n{}",
            mesh.web.child.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hundreds_of_unknown_destinations_are_each_refused_at_once() {
    if !system_tests("hundreds_of_unknown_destinations_are_each_refused_at_once") {
        return;
    }
    let mesh = Mesh::start();
    let good = GoodClient::start(&mesh);
    case(&mesh, &good, "150-unknown-names", || {
        let slowest = unknown_names(&mesh, "nope", 150, 4);
        eprintln!("150 unknown names: slowest answer {slowest:?}");
        assert!(
            slowest < Duration::from_secs(4),
            "an unknown name took {slowest:?}"
        );
        let took = new_service_found(&mesh, "fresh");
        eprintln!("new service found after {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "the new service took {took:?}"
        );
    });
}

#[test]
fn after_2000_unknown_names_a_new_service_is_found_at_once_pending_discovery_release() {
    if !system_tests(
        "after_2000_unknown_names_a_new_service_is_found_at_once_pending_discovery_release",
    ) {
        return;
    }
    let mesh = Mesh::start();
    let good = GoodClient::start(&mesh);
    case(&mesh, &good, "2000-unknown-names", || {
        let slowest = unknown_names(&mesh, "ghost", 2000, 16);
        eprintln!("2000 unknown names: slowest answer {slowest:?}");
        assert!(
            slowest < Duration::from_secs(4),
            "an unknown name took {slowest:?}"
        );
        let took = new_service_found(&mesh, "fresh");
        eprintln!("new service found after {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "the new service took {took:?}"
        );
    });
}
