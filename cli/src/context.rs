//! The mesh the operator commands (`weft stat`, `routes`, `check`, `dashboard`, `ca`, `apply`,
//! `get`, `delete`) talk to when neither a flag nor a `WEFT_*` variable names it: the one a
//! running `weft demo` announced, as kubectl has a current context; otherwise the defaults.
//!
//! The demo writes `current.json` under `$WEFT_HOME` (default `~/.weft`) once its mesh is up
//! and removes it when it stops. A file whose demo is gone (killed, so it could not remove
//! it) is ignored. Whenever a command uses an address from it, it says so on stderr, once,
//! naming the demo, so the output is never read as another mesh's.

use std::path::PathBuf;
use std::sync::Once;

use serde::{Deserialize, Serialize};

/// Where the operator's files are (`current.json`, the operator certificate).
pub const ENV_WEFT_HOME: &str = "WEFT_HOME";

/// A running mesh's addresses, as its demo announced them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    /// The process that announced it (the demo): the context holds while it runs.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// Its directory (CA, tokens, resources, logs).
    pub dir: PathBuf,
    pub policy_admin: String,
    pub identity_admin: String,
    /// The control plane's API (each replica's, comma-separated), for `weft apply`/`get`/`delete`.
    pub policy_addr: String,
    /// The bootstrap operator's certificate directory the demo wrote.
    pub operator: PathBuf,
}

/// The operator's directory: `$WEFT_HOME`, or `~/.weft`; `None` without a home.
pub fn home() -> Option<PathBuf> {
    match std::env::var_os(ENV_WEFT_HOME) {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => Some(PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".weft")),
    }
}

/// `<home>/current.json`.
pub fn path() -> Option<PathBuf> {
    Some(home()?.join("current.json"))
}

/// The running mesh announced, if its process still runs.
pub fn current() -> Option<Current> {
    let text = std::fs::read(path()?).ok()?;
    let current: Current = serde_json::from_slice(&text).ok()?;
    alive(current.pid).then_some(current)
}

/// Whether `pid` is a running `weft` (not a process that reused the number).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "weft")
}

/// Announces `current` until the returned guard is dropped (then the file is removed, unless
/// another demo announced itself since).
pub fn announce(current: &Current) -> Result<Announced, String> {
    let path = path().ok_or("no home directory (set HOME or WEFT_HOME)")?;
    let dir = path.parent().ok_or("no directory for current.json")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let json = serde_json::to_vec_pretty(current).map_err(|e| e.to_string())?;
    // Written whole, then renamed: a reader never sees half a file.
    let tmp = dir.join(format!(".current.json.{}", current.pid));
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Announced {
        path,
        pid: current.pid,
    })
}

/// Removes the announcement when dropped, if it is still this process's.
#[derive(Debug)]
pub struct Announced {
    path: PathBuf,
    pid: u32,
}

impl Drop for Announced {
    fn drop(&mut self) {
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|t| serde_json::from_slice::<Current>(&t).ok())
            .is_some_and(|c| c.pid == self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The address to use: `given` (a flag or its variable), else the running mesh's (said on
/// stderr, once), else `default`.
pub fn resolve(given: Option<&str>, from: impl Fn(&Current) -> &str, default: &str) -> String {
    if let Some(given) = given {
        return given.to_string();
    }
    match current_said() {
        Some(c) => from(&c).to_string(),
        None => default.to_string(),
    }
}

/// [`current`], said on stderr (once) when there is one: for a command about to use it.
pub fn current_said() -> Option<Current> {
    let c = current()?;
    say(&c);
    Some(c)
}

fn say(c: &Current) {
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        eprintln!(
            "weft: using the mesh of the running `weft demo` (pid {}, started {}, {}): control \
             plane admin {}, identity admin {}, API {} (flags and WEFT_* variables choose \
             another)",
            c.pid,
            c.started,
            c.dir.display(),
            c.policy_admin,
            c.identity_admin,
            c.policy_addr
        );
    });
}

/// `--policy-admin`: the control plane's admin address.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyAdmin {
    /// The control plane's admin address (its `/workloads` lists every proxy) [default: the
    /// running demo's, else 127.0.0.1:9991].
    #[arg(id = "policy_admin", long = "policy-admin", env = crate::stat::ENV_POLICY_ADMIN)]
    given: Option<String>,
}

impl PolicyAdmin {
    pub fn addr(&self) -> String {
        resolve(
            self.given.as_deref(),
            |c| &c.policy_admin,
            crate::stat::DEFAULT_POLICY_ADMIN,
        )
    }
}

/// `--identity-admin`: the identity service's admin address.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentityAdmin {
    /// The identity service's admin address [default: the running demo's, else
    /// 127.0.0.1:9990].
    #[arg(id = "identity_admin", long = "identity-admin", env = crate::check::ENV_IDENTITY_ADMIN)]
    given: Option<String>,
}

impl IdentityAdmin {
    pub fn addr(&self) -> String {
        resolve(
            self.given.as_deref(),
            |c| &c.identity_admin,
            crate::check::DEFAULT_IDENTITY_ADMIN,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample(pid: u32) -> Current {
        Current {
            pid,
            started: "2026-12-07T21:00:00Z".into(),
            dir: "/tmp/weft-demo-x".into(),
            policy_admin: "127.0.0.1:41001".into(),
            identity_admin: "127.0.0.1:41002".into(),
            policy_addr: "127.0.0.1:41004".into(),
            operator: "/tmp/weft-demo-x/operator".into(),
        }
    }

    #[test]
    fn only_a_running_weft_holds_the_context() {
        // This test binary is not `weft`; pid 0 is nobody's.
        assert!(!alive(std::process::id()));
        assert!(!alive(0));
        let json = serde_json::to_string(&sample(7)).unwrap();
        assert_eq!(serde_json::from_str::<Current>(&json).unwrap(), sample(7));
    }
}
