//! Reading the resource files of the store and writing a change to them atomically, on
//! condition that nothing changed since they were read (compare-and-swap):
//! - in a directory, under the lock the directory's follower also reads under, the files are
//!   read again and their content hash compared; each file is written to a hidden temporary
//!   file and renamed over the old one;
//! - in etcd, one transaction writes every file and the apply marker, on condition that the
//!   marker is the one read and no key under the prefix changed since.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::etcd::follow::EtcdResources;
use crate::etcd::wire::{Compare, DeleteRangeRequest, PutRequest, RequestOp};
use crate::load::{read_sources, sources_hash};

use super::plan::Files;

/// The most operations etcd takes in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Where the resource files are.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A directory, and the lock its follower reads it under.
    Dir {
        dir: PathBuf,
        lock: Arc<tokio::sync::Mutex<()>>,
    },
    Etcd(EtcdResources),
}

/// The files as read, and what a write compares to be sure nothing changed since.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The resources' version: the etcd revision of their last change, or the directory's
    /// content hash.
    pub revision: String,
    pub files: Files,
    cas: Cas,
}

#[derive(Debug, Clone)]
enum Cas {
    Dir { hash: String },
    Etcd { changed: i64, marker: i64 },
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resources changed after they were read (by another apply, through this replica or
    /// another): nothing was written.
    #[error(
        "the resources changed while this change was validated (they were at revision {read}): nothing was written; run it again"
    )]
    Conflict { read: String },
    /// The store cannot be reached, or has no quorum.
    #[error("{store} is unavailable: {detail}")]
    Unavailable {
        store: String,
        detail: String,
        /// A write was sent but not answered: it may have been made.
        maybe_written: bool,
    },
    /// The change cannot be written as it is.
    #[error("{0}")]
    Refused(String),
}

impl Backend {
    /// The store as a user knows it, for messages.
    pub fn describe(&self) -> String {
        match self {
            Backend::Dir { dir, .. } => format!("the resource directory {}", dir.display()),
            Backend::Etcd(res) => format!(
                "the store (etcd at {}, keys under {})",
                res.etcd.members().join(","),
                res.resources_prefix()
            ),
        }
    }

    /// The path errors name a stored file by (the follower's naming).
    pub fn path_of(&self, name: &str) -> PathBuf {
        match self {
            Backend::Dir { dir, .. } => dir.join(name),
            Backend::Etcd(res) => PathBuf::from(format!("{}{name}", res.resources_prefix())),
        }
    }

    /// Every resource file, and the version it was read at.
    pub async fn read(&self) -> Result<Snapshot, StoreError> {
        match self {
            Backend::Dir { dir, lock } => {
                let _reading = lock.lock().await;
                let (hash, files) = read_dir(dir).await?;
                Ok(Snapshot {
                    revision: hash.clone(),
                    files,
                    cas: Cas::Dir { hash },
                })
            }
            Backend::Etcd(res) => {
                let read = res.load().await.map_err(|e| self.unavailable(e))?;
                Ok(Snapshot {
                    revision: read.changed.to_string(),
                    files: read.files,
                    cas: Cas::Etcd {
                        changed: read.changed,
                        marker: read.marker,
                    },
                })
            }
        }
    }

    /// Writes `changes` (`None`: delete the file) if nothing changed since `read`: the new
    /// version.
    pub async fn write(
        &self,
        read: &Snapshot,
        changes: &BTreeMap<String, Option<String>>,
        by: &str,
    ) -> Result<String, StoreError> {
        for name in changes.keys() {
            check_name(name)?;
        }
        match (self, &read.cas) {
            (Backend::Dir { dir, lock }, Cas::Dir { hash }) => {
                let _writing = lock.lock().await;
                let (now, _) = read_dir(dir).await?;
                if &now != hash {
                    return Err(StoreError::Conflict {
                        read: read.revision.clone(),
                    });
                }
                let (target, changes) = (dir.clone(), changes.clone());
                tokio::task::spawn_blocking(move || write_dir(&target, &changes))
                    .await
                    .map_err(|e| StoreError::Refused(e.to_string()))??;
                let (after, _) = read_dir(dir).await?;
                Ok(after)
            }
            (Backend::Etcd(res), Cas::Etcd { changed, marker }) => {
                if changes.len() + 1 > MAX_TXN_OPS {
                    return Err(StoreError::Refused(format!(
                        "this change writes {} files, and etcd takes at most {MAX_TXN_OPS} operations in one transaction (its --max-txn-ops): apply it in parts",
                        changes.len()
                    )));
                }
                let prefix = res.resources_prefix();
                let marker_key = res.marker_key();
                let mut ops: Vec<RequestOp> = changes
                    .iter()
                    .map(|(name, text)| {
                        let key = format!("{prefix}{name}").into_bytes();
                        match text {
                            Some(t) => RequestOp::Put(PutRequest {
                                key,
                                value: t.clone().into_bytes(),
                                lease: 0,
                            }),
                            None => RequestOp::Delete(DeleteRangeRequest {
                                key,
                                range_end: Vec::new(),
                            }),
                        }
                    })
                    .collect();
                let stamp = serde_json::json!({
                    "by": by,
                    "at": weft_identity::rfc3339(std::time::SystemTime::now()),
                });
                ops.push(RequestOp::Put(PutRequest {
                    key: marker_key.clone().into_bytes(),
                    value: stamp.to_string().into_bytes(),
                    lease: 0,
                }));
                let compare = vec![
                    Compare::modified_at(marker_key.into_bytes(), *marker),
                    Compare::prefix_unchanged_since(prefix.as_bytes(), *changed),
                ];
                let (done, revision) = res.etcd.txn(compare, ops).await.map_err(|e| {
                    let maybe_written = matches!(e, crate::etcd::EtcdError::Timeout { .. });
                    match self.unavailable(e) {
                        StoreError::Unavailable { store, detail, .. } => StoreError::Unavailable {
                            store,
                            detail,
                            maybe_written,
                        },
                        other => other,
                    }
                })?;
                if !done {
                    return Err(StoreError::Conflict {
                        read: read.revision.clone(),
                    });
                }
                Ok(revision.to_string())
            }
            _ => Err(StoreError::Refused(
                "the snapshot is not of this store".into(),
            )),
        }
    }

    fn unavailable(&self, e: crate::etcd::EtcdError) -> StoreError {
        let detail = if e.is_unavailable() {
            format!("{e}")
        } else {
            format!("{e} (the request was refused)")
        };
        StoreError::Unavailable {
            store: self.describe(),
            detail,
            maybe_written: false,
        }
    }
}

/// A file name a change may write: relative, within the store, not hidden, YAML.
fn check_name(name: &str) -> Result<(), StoreError> {
    let path = Path::new(name);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::Normal(p) if !p.to_string_lossy().starts_with('.')));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if name.is_empty() || !plain || !yaml {
        return Err(StoreError::Refused(format!(
            "`{name}` cannot be a resource file: it must be a relative `.yaml` path without hidden or `..` parts"
        )));
    }
    Ok(())
}

/// The directory's files (names relative to it) and their content hash.
async fn read_dir(dir: &Path) -> Result<(String, Files), StoreError> {
    let owned = dir.to_path_buf();
    let sources = tokio::task::spawn_blocking(move || read_sources(&owned))
        .await
        .map_err(|e| StoreError::Refused(e.to_string()))?
        .map_err(|e| StoreError::Unavailable {
            store: format!("the resource directory {}", dir.display()),
            detail: e.to_string(),
            maybe_written: false,
        })?;
    let hash = sources_hash(&sources);
    let files = sources
        .into_iter()
        .filter_map(|(path, text)| {
            let name = path.strip_prefix(dir).ok()?.to_string_lossy().into_owned();
            Some((name, text))
        })
        .collect();
    Ok((hash, files))
}

/// Writes each file through a hidden temporary one renamed over it (a reader sees the old
/// file or the new one, never half of it), and deletes the others.
fn write_dir(dir: &Path, changes: &BTreeMap<String, Option<String>>) -> Result<(), StoreError> {
    let failed = |path: &Path, e: std::io::Error| {
        StoreError::Refused(format!("cannot write {}: {e}", path.display()))
    };
    for (name, text) in changes {
        let path = dir.join(name);
        match text {
            Some(text) => {
                let parent = path.parent().unwrap_or(dir);
                std::fs::create_dir_all(parent).map_err(|e| failed(parent, e))?;
                let file_name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = parent.join(format!(".{file_name}.weft-apply"));
                std::fs::write(&tmp, text).map_err(|e| failed(&tmp, e))?;
                std::fs::rename(&tmp, &path).map_err(|e| failed(&path, e))?;
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(&path, e)),
            },
        }
    }
    Ok(())
}
