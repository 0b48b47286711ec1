//! The CA's rotation state (`ca-state.json` in the data directory): the anchor rotation under
//! way and its step, the issuers retired and until when their leaves live, and what happened
//! last. Written atomically after each step, so an interrupted rotation resumes where it
//! stopped; read by the identity service (to tell clients when to re-issue) and by
//! `weft ca status`.
//!
//! Changes of the CA's files are serialised by a lock file (`ca.lock`, holding the pid of its
//! holder): a second `weft ca rotate` is refused while one runs, and a lock left by a process
//! that died is taken over.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{AuthorityError, corrupt, write_file};

pub const STATE_FILE: &str = "ca-state.json";
pub const LOCK_FILE: &str = "ca.lock";
/// How many past events the state keeps.
const HISTORY: usize = 20;

/// The rotation state of a CA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaState {
    /// The anchor rotation under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_rotation: Option<AnchorRotation>,
    /// Leaves from any other issuer than the current one should be re-issued before this
    /// (Unix seconds): clients renew early when it is set (`weft ca rotate issuer
    /// --reissue-within`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reissue_before: Option<u64>,
    /// Issuers no longer signing, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_issuers: Vec<RetiredIssuer>,
    /// What was done, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Event>,
}

/// The steps of an anchor rotation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnchorStep {
    /// The new anchor is in the bundle beside the old ones; the issuer is still under an old
    /// one. Next: every proxy trusts the new anchor, then the issuer switches.
    Trusting,
    /// The issuer is under the new anchor. Next: every proxy holds a leaf from it, then the old
    /// anchors leave the bundle.
    Issuing,
}

impl AnchorStep {
    pub fn as_str(self) -> &'static str {
        match self {
            AnchorStep::Trusting => "trusting-new-anchor",
            AnchorStep::Issuing => "issuing-under-new-anchor",
        }
    }
}

/// An anchor rotation under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRotation {
    pub step: AnchorStep,
    /// Fingerprints of the anchors being replaced.
    pub old: Vec<String>,
    /// Fingerprint of the new anchor.
    pub new: String,
    /// The new anchor's certificate (PEM), so a step interrupted before it wrote the bundle
    /// can finish.
    pub new_anchor: String,
    /// Where the new anchor's key was written.
    pub new_key: PathBuf,
    /// Unix seconds.
    pub started: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched: Option<u64>,
}

/// An issuer that no longer signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredIssuer {
    pub fingerprint: String,
    /// Unix seconds.
    pub retired: u64,
    /// When the issuer's own certificate expires (no leaf of it outlives it).
    pub not_after: u64,
}

/// One thing done to the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub at: u64,
    pub what: String,
}

impl CaState {
    /// The state recorded in `dir` (the default when there is none).
    pub fn load(dir: &Path) -> Result<Self, AuthorityError> {
        let path = dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(AuthorityError::Unreadable { path, source }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), AuthorityError> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| AuthorityError::Generate(e.to_string()))?;
        write_file(&dir.join(STATE_FILE), &json, 0o644)
    }

    /// Records `what`, keeping the last few events.
    pub fn record(&mut self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(event = %what, "CA changed");
        self.history.push(Event {
            at: unix_now(),
            what,
        });
        if self.history.len() > HISTORY {
            let extra = self.history.len() - HISTORY;
            self.history.drain(..extra);
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    unix(SystemTime::now())
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The lock serialising changes to a CA's files; released when dropped.
#[derive(Debug)]
pub struct CaLock {
    path: PathBuf,
}

impl CaLock {
    /// Takes the lock of `dir`, taking over one whose holder is gone; refuses, naming the
    /// holder, while another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, AuthorityError> {
        let path = dir.join(LOCK_FILE);
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim().parse::<u32>().ok();
                    let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                    if alive {
                        return Err(AuthorityError::Incomplete(format!(
                            "another process (pid {}) is changing the CA in {}: wait for it to finish, or remove {} if it is gone",
                            holder.trim(),
                            dir.display(),
                            path.display()
                        )));
                    }
                    tracing::warn!(lock = %path.display(), holder = holder.trim(), "taking over the lock of a process that is gone");
                    let _ = fs::remove_file(&path);
                }
                Err(source) => return Err(AuthorityError::Unwritable { path, source }),
            }
        }
        Err(AuthorityError::Incomplete(format!(
            "cannot take the CA lock {}",
            path.display()
        )))
    }
}

impl Drop for CaLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
