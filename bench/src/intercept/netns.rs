//! The bench's two network namespaces and the veth pair between them: made and deleted
//! (with what a killed benchmark left behind), and the processes and requests run inside them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_runtime::child::Child;
pub(super) use weft_runtime::testing::Netns;

use crate::Error;
use crate::mesh;

use super::{APP_IP, CLIENT_IP, NS_PREFIX};

const PREFIX_LEN: u8 = 24;

/// `ip -n <ns> <args>`, which must succeed.
fn ip(ns: &Netns, args: &[&str]) -> Result<String, Error> {
    run_ok(Command::new("ip").args(["-n", &ns.name]).args(args))
}

/// Runs `cmd`, which must exit 0; its stdout.
pub(super) fn run_ok(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespaces a killed benchmark left behind (`weft-bench-{c,a}-<pid>` whose
/// benchmark process is gone), after killing what it had started in them (`ip netns pids`).
/// Only ours: other names are never touched.
pub(super) fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if is_stale(name, std::process::id(), alive) {
            eprintln!("deleting network namespace {name}, left behind by a killed benchmark");
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Whether `name` is a namespace a killed benchmark left behind: ours by its name, and its
/// benchmark's process gone (`alive` says), or that process had this one's PID: this run has
/// not made its namespaces yet, so one with its name can only be left over, and would make
/// `ip netns add` fail.
pub(super) fn is_stale(name: &str, own_pid: u32, alive: impl Fn(u32) -> bool) -> bool {
    stale_namespace_pid(name).is_some_and(|pid| pid == own_pid || !alive(pid))
}

/// The PID in a namespace name of ours (`weft-bench-c-1234`, `weft-bench-a-1234`).
pub(super) fn stale_namespace_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?.strip_prefix('-')?;
    let pid = rest
        .strip_prefix("c-")
        .or_else(|| rest.strip_prefix("a-"))?;
    pid.parse().ok()
}

/// The two namespaces and the veth pair between them (which goes with them).
#[derive(Debug)]
pub(super) struct Pair {
    pub(super) client: Netns,
    pub(super) app: Netns,
}

impl Pair {
    pub(super) fn new() -> Result<Self, Error> {
        let pid = std::process::id();
        let pair = Pair {
            client: Netns::add(format!("{NS_PREFIX}-c-{pid}"))?,
            app: Netns::add(format!("{NS_PREFIX}-a-{pid}"))?,
        };
        // Interface names are at most 15 bytes.
        let (vc, va) = (
            format!("wbc{}", pid % 1_000_000),
            format!("wba{}", pid % 1_000_000),
        );
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &vc,
            "netns",
            &pair.client.name,
            "type",
            "veth",
            "peer",
            "name",
            &va,
            "netns",
            &pair.app.name,
        ]))?;
        for (ns, dev, addr) in [(&pair.client, &vc, CLIENT_IP), (&pair.app, &va, APP_IP)] {
            ip(
                ns,
                &["addr", "add", &format!("{addr}/{PREFIX_LEN}"), "dev", dev],
            )?;
            ip(ns, &["link", "set", dev, "up"])?;
            ip(ns, &["link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

/// `program args` in `ns` as a process of the bench (killed when dropped, its stderr in
/// `<dir>/<name>.log`).
pub(super) fn spawn_in(
    dir: &Path,
    ns: &Netns,
    name: &'static str,
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Child, Error> {
    let mut all: Vec<&str> = vec!["netns", "exec", &ns.name];
    let program = program.display().to_string();
    all.push(&program);
    all.extend_from_slice(args);
    mesh::spawn(dir, name, Path::new("ip"), &all, env)
}

/// `GET path` at `addr` from inside `ns` (this binary's `fetch`, as root: to an address
/// outside the namespace it is intercepted like any client's): the status and body, `None`
/// when nothing answered.
pub(super) fn fetch(exe: &Path, ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    let out = ns
        .command(exe)
        .args(["fetch", addr, path])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    Some((status.trim().parse().ok()?, body.to_string()))
}

/// Waits until `GET path` at `addr` in `ns` answers 200: bounded, and an error with the
/// process's log if it exits or takes too long.
pub(super) fn wait_for_200(
    exe: &Path,
    ns: &Netns,
    proc: &mut Child,
    addr: &str,
    path: &str,
) -> Result<(), Error> {
    let what = format!("GET http://{addr}{path} in {}", ns.name);
    proc.wait_until_200(&what, Duration::from_millis(100), || {
        fetch(exe, ns, addr, path)
    })
}
