//! Many destinations: distinct unknown names through web's outbound are each answered at once
//! with the proxy's error, and a service created afterwards is still found at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::mesh::{GoodClient, Mesh, case};
use crate::raw::{header, status};
use weft_runtime::testing::http;

/// What web's outbound answers for a name the mesh does not know: the control plane says it
/// knows no such service, and the proxy says so at once.
const UNKNOWN: (u16, &str) = (502, "unknown_destination");
/// How long an answer for an unknown name may take: well under the 3 s the proxy waits for
/// discovery's first answer, which is what a name beyond its capacity costs.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// The case stops after this many wrong answers (each may cost 3 s).
const MAX_FAILURES: usize = 20;

/// Asks web's outbound for `count` distinct unknown names (`<prefix>-<i>.default`), `threads`
/// at a time: each must get one of `accept` within [`ANSWER_WITHIN`].
fn unknown_names(mesh: &Mesh, prefix: &str, count: usize, threads: usize, accept: &[(u16, &str)]) {
    let failures = Mutex::new(Vec::new());
    let slowest = Mutex::new(Duration::ZERO);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (failures, slowest) = (&failures, &slowest);
            s.spawn(move || {
                for i in (t..count).step_by(threads) {
                    if failures.lock().unwrap().len() >= MAX_FAILURES {
                        return;
                    }
                    let host = format!("{prefix}-{i}.default:8080");
                    let started = Instant::now();
                    let r = http(mesh.web.outbound, "GET", &format!("http://{host}/"), &host);
                    let took = started.elapsed();
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                    let text = r.map(|r| r.1).unwrap_or_default();
                    let (code, reason) = (status(&text), header(&text, "weft-error"));
                    let ok = accept
                        .iter()
                        .any(|(c, r)| code == *c && reason.as_deref() == Some(*r));
                    if !ok || took > ANSWER_WITHIN {
                        let f = format!("{host} (name {i}): {code} {reason:?} after {took:?}");
                        failures.lock().unwrap().push(f);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    eprintln!(
        "{count} unknown names: slowest answer {:?}",
        slowest.into_inner().unwrap()
    );
    assert!(
        failures.is_empty(),
        "{} names answered wrongly (stopped at {MAX_FAILURES}):\n{}",
        failures.len(),
        failures.join("\n")
    );
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

/// Today's capacity is about 97 names: every name costs the proxy two watch streams on its
/// one HTTP/2 connection to the control plane, which takes 200 at once.
#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn dozens_of_unknown_destinations_are_each_refused_at_once() {
    let mesh = Mesh::start();
    let good = GoodClient::start(&mesh);
    case(&mesh, &good, "60-unknown-names", || {
        unknown_names(&mesh, "nope", 60, 4, &[UNKNOWN]);
        let took = new_service_found(&mesh, "fresh");
        eprintln!("new service found after {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "the new service took {took:?}"
        );
    });
}

/// Fails until a proxy releases destinations it no longer uses and bounds their set: today
/// the names past the first ~97 each wait 3 s for a watch that cannot open, and so would a
/// new service. Either code is a clean answer (the control plane may stop answering for names
/// it does not have).
#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn after_2000_unknown_names_a_new_service_is_found_at_once() {
    let mesh = Mesh::start();
    let good = GoodClient::start(&mesh);
    case(&mesh, &good, "2000-unknown-names", || {
        unknown_names(&mesh, "ghost", 2000, 16, &[UNKNOWN]);
        let took = new_service_found(&mesh, "fresh");
        eprintln!("new service found after {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "the new service took {took:?}"
        );
    });
}
