//! The resources in etcd, as a replica of the control plane serves them: every key under
//! `<prefix>resources/` is a resource file (its name the rest of the key, its value the
//! YAML), the same files a directory holds. The whole set is read at start and after any
//! break in the watch, then followed: each change compiles the whole set, served if valid
//! (exactly as the directory's, [`crate::load::compile`]), else rejected with its errors while
//! the last valid set stays served. While etcd cannot be reached the last set stays served,
//! and the follower tries again with back-off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::authz::DefaultPolicy;
use crate::etcd::wire::EventKind;
use crate::etcd::{Etcd, EtcdError};
use crate::load::{Config, ValidationError, compile};
use crate::store::Store;

/// The longest pause between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The resource files of a store: etcd and the prefix of its keys.
#[derive(Debug, Clone)]
pub struct EtcdResources {
    pub etcd: Etcd,
    /// The prefix of every key of the mesh (`/weft/`).
    pub prefix: String,
}

/// The resource files as read at one revision of the store.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub revision: i64,
    /// File name → YAML.
    pub files: BTreeMap<String, String>,
    /// The last revision at which any key under the resources' prefix changed (0: none is
    /// there): the resources' own version, which an apply compares against.
    pub changed: i64,
    /// The revision of the last apply's marker ([`EtcdResources::marker_key`]; 0: none yet).
    /// Every apply and delete rewrites it, so a delete, which leaves no key behind to compare,
    /// still makes the applies validated before it fail.
    pub marker: i64,
}

/// Whether a key's name under the prefix is hidden (a part starts with `.`): skipped, as a
/// directory's hidden files are.
fn hidden(name: &str) -> bool {
    name.split('/').any(|part| part.starts_with('.'))
}

impl EtcdResources {
    /// The prefix of the resource files' keys.
    pub fn resources_prefix(&self) -> String {
        format!("{}resources/", self.prefix)
    }

    /// The key every apply rewrites (hidden: not a resource file).
    pub fn marker_key(&self) -> String {
        format!("{}.applied", self.resources_prefix())
    }

    /// Reads every resource file (a linearizable read: what a quorum has).
    pub async fn load(&self) -> Result<Files, EtcdError> {
        let prefix = self.resources_prefix();
        let marker = self.marker_key();
        let (revision, kvs) = self.etcd.get_prefix(prefix.as_bytes(), false).await?;
        let mut out = Files {
            revision,
            ..Files::default()
        };
        for kv in kvs {
            out.changed = out.changed.max(kv.mod_revision);
            if kv.key == marker.as_bytes() {
                out.marker = kv.mod_revision;
            }
            let Some(name) = kv.key.strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            let Ok(name) = String::from_utf8(name.to_vec()) else {
                continue;
            };
            if !hidden(&name) {
                out.files
                    .insert(name, String::from_utf8_lossy(&kv.value).into_owned());
            }
        }
        Ok(out)
    }

    /// Compiles `files` as a directory of them would be compiled; errors name each file by its
    /// key.
    pub fn compile(
        &self,
        files: &BTreeMap<String, String>,
        default_policy: DefaultPolicy,
    ) -> Result<Config, Vec<ValidationError>> {
        let prefix = self.resources_prefix();
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(name, text)| (PathBuf::from(format!("{prefix}{name}")), text.clone()))
            .collect();
        compile(&sources, default_policy)
    }

    /// Follows the resource files from `loaded` on until `shutdown`, serving every valid set
    /// in `store`.
    pub async fn follow(
        self,
        store: Arc<Store>,
        default_policy: DefaultPolicy,
        loaded: Files,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut current = loaded;
        let mut failures = 0u32;
        loop {
            let ended = tokio::select! {
                _ = &mut shutdown => return,
                ended = self.watch(&store, default_policy, &mut current) => ended,
            };
            match ended {
                Ok(()) => tracing::info!("the etcd watch ended; reading the resources again"),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot follow the resources in etcd; the last valid resources stay served");
                    }
                    store.store_unavailable(Some(e.to_string()));
                }
            }
            let backoff = Duration::from_millis(100 * u64::from(failures.min(50))).min(MAX_BACKOFF);
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            // Whatever happened while the watch was down: the whole set again.
            let reloaded = tokio::select! {
                _ = &mut shutdown => return,
                r = self.load() => r,
            };
            match reloaded {
                Ok(files) => {
                    failures = 0;
                    store.store_unavailable(None);
                    if files.files != current.files {
                        self.serve(&store, default_policy, &files.files);
                    }
                    current = files;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    store.store_unavailable(Some(e.to_string()));
                }
            }
        }
    }

    /// Watches from `current`'s revision on, keeping `current` up to date and serving each
    /// change, until the watch ends (`Ok`) or fails.
    async fn watch(
        &self,
        store: &Store,
        default_policy: DefaultPolicy,
        current: &mut Files,
    ) -> Result<(), EtcdError> {
        let prefix = self.resources_prefix();
        let mut watch = self
            .etcd
            .watch_prefix(prefix.as_bytes(), current.revision + 1)
            .await?;
        store.store_unavailable(None);
        while let Some(batch) = watch.next().await? {
            if batch.canceled || batch.compact_revision > 0 {
                // Compacted past the revision asked for: read everything again.
                return Ok(());
            }
            current.revision = current.revision.max(batch.header.revision);
            if batch.events.is_empty() {
                continue;
            }
            for event in batch.events {
                let Some(name) = event.kv.key.strip_prefix(prefix.as_bytes()) else {
                    continue;
                };
                let name = String::from_utf8_lossy(name).into_owned();
                if hidden(&name) {
                    continue;
                }
                match event.kind {
                    EventKind::Put => {
                        let text = String::from_utf8_lossy(&event.kv.value).into_owned();
                        current.files.insert(name, text);
                    }
                    EventKind::Delete => {
                        current.files.remove(&name);
                    }
                }
            }
            self.serve(store, default_policy, &current.files);
        }
        Ok(())
    }

    /// Checks every `every` that etcd answers a linearizable read (which needs its quorum),
    /// until `shutdown`: a watch stays open on a member that lost its quorum, silent, so only
    /// asking tells. A failure marks the store unavailable (`/ready`, `/status`); the next
    /// success clears it.
    pub async fn probe(
        self,
        store: Arc<Store>,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let key = self.marker_key();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
            }
            let read = tokio::select! {
                _ = &mut shutdown => return,
                r = self.etcd.get(key.as_bytes()) => r,
            };
            match read {
                Ok(_) if failing => {
                    tracing::info!("etcd answers again");
                    failing = false;
                    store.store_unavailable(None);
                }
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "etcd does not answer (no quorum, or no member reachable); the last valid resources stay served");
                    }
                    failing = true;
                    store.store_unavailable(Some(e.to_string()));
                }
            }
        }
    }

    /// Compiles `files` and serves them if valid; else records the errors.
    fn serve(
        &self,
        store: &Store,
        default_policy: DefaultPolicy,
        files: &BTreeMap<String, String>,
    ) {
        store.serve_changed(self.compile(files, default_policy), "the resources in etcd");
    }
}
