//! Registrations shared through etcd: every replica of the control plane serves the workloads
//! registered through any of them.
//!
//! A registration is the key `<prefix>registry/<namespace>/<address>` holding the workload as
//! JSON, attached to the etcd lease of the replica it was made through. A replica keeps its
//! lease alive while it runs; dead, it takes the keys of its lease with it once the lease
//! lapses, unless their workloads have registered again through another replica meanwhile
//! (the key then moves to that replica's lease). Each replica still keeps the workloads'
//! own leases (renewals, the per-identity cap) in its memory, and writes to etcd only what
//! changes: a new or changed registration, a removal, a lapse (removed only while the key is
//! still on its own lease: another replica may hold it by then).
//!
//! Writes go through one task per replica, in order. While etcd cannot take them, they wait,
//! and are tried again; a lease that lapsed meanwhile is replaced, and every registration the
//! replica holds is written again on the new one.
//!
//! Every replica follows the whole registry with a watch (as [`super::follow`] the
//! resources), and serves what it holds.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use weft_identity::SpiffeId;

use crate::etcd::wire::{Compare, DeleteRangeRequest, EventKind, RequestOp};
use crate::etcd::{Etcd, EtcdError};
use crate::registry::Workload;
use crate::store::Store;

/// How long a replica's lease lasts without renewal: how long its registrations outlive it.
pub const REPLICA_LEASE: Duration = Duration::from_secs(15);

/// How a removal makes sure it removes what it meant to.
#[derive(Debug, Clone)]
pub enum Unchanged {
    /// The key is still on this replica's lease (a lapse here: the workload may have
    /// registered through another replica since).
    OnMyLease,
    /// The key still holds a registration of this identity (`None`: of a workload without
    /// one), however often it was written since: a removal asked through this replica. A
    /// revision would not do: the registration may have been written again meanwhile (a
    /// write sent again after a lost answer, a replica's new lease, a proxy's new trust
    /// report), and the removal would then be lost, leaving the endpoint served until its
    /// lease lapses.
    HeldBy(Option<SpiffeId>),
}

/// How many times a removal reads the key again when it was written between the read and
/// the removal, before leaving the registration to its lease.
const REMOVAL_TRIES: usize = 5;

/// What a replica writes.
#[derive(Debug, Clone)]
pub enum Write {
    Put(Workload),
    /// Removed, if it is still what was removed: never another identity's registration
    /// made since, through this replica or another.
    Delete {
        namespace: String,
        address: SocketAddr,
        only_if: Unchanged,
    },
}

/// The registry's keys in etcd.
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    pub etcd: Etcd,
    /// The prefix of every key of the mesh (`/weft/`).
    pub prefix: String,
}

impl EtcdRegistry {
    pub fn registry_prefix(&self) -> String {
        format!("{}registry/", self.prefix)
    }

    fn key(&self, namespace: &str, address: SocketAddr) -> Vec<u8> {
        format!("{}{namespace}/{address}", self.registry_prefix()).into_bytes()
    }

    /// Every registration, and the revision they were read at.
    pub async fn load(&self) -> Result<(i64, BTreeMap<Vec<u8>, Workload>), EtcdError> {
        let (revision, kvs) = self
            .etcd
            .get_prefix(self.registry_prefix().as_bytes(), false)
            .await?;
        let mut all = BTreeMap::new();
        for kv in kvs {
            match serde_json::from_slice::<Workload>(&kv.value) {
                Ok(w) => {
                    all.insert(kv.key, w);
                }
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(&kv.key),
                    error = %e,
                    "a registration in etcd is not a workload: ignored"
                ),
            }
        }
        Ok((revision, all))
    }

    /// Follows the registry until `shutdown`, serving it in `store`.
    pub async fn follow(self, store: Arc<Store>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut pause = Duration::from_millis(100);
        loop {
            let run = async {
                let (revision, mut all) = self.load().await?;
                store.set_shared_workloads(all.values().cloned().collect());
                let prefix = self.registry_prefix();
                let mut watch = self
                    .etcd
                    .watch_prefix(prefix.as_bytes(), revision + 1)
                    .await?;
                while let Some(batch) = watch.next().await? {
                    if batch.canceled || batch.compact_revision > 0 {
                        return Ok(());
                    }
                    if batch.events.is_empty() {
                        continue;
                    }
                    for event in batch.events {
                        match event.kind {
                            EventKind::Put => {
                                if let Ok(w) = serde_json::from_slice::<Workload>(&event.kv.value) {
                                    all.insert(event.kv.key, w);
                                }
                            }
                            EventKind::Delete => {
                                all.remove(&event.kv.key);
                            }
                        }
                    }
                    store.set_shared_workloads(all.values().cloned().collect());
                }
                Ok::<(), EtcdError>(())
            };
            let ended = tokio::select! {
                _ = &mut shutdown => return,
                ended = run => ended,
            };
            if let Err(e) = ended {
                tracing::warn!(error = %e, "cannot follow the registry in etcd; the last registrations stay served");
                pause = (pause * 2).min(Duration::from_secs(5));
            } else {
                pause = Duration::from_millis(100);
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Writes what `writes` brings, in order, on this replica's lease, until `shutdown`;
    /// `held` lists every registration the replica holds, written again on a new lease.
    pub async fn write(
        self,
        mut writes: mpsc::UnboundedReceiver<Write>,
        held: impl Fn() -> Vec<Workload>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut lease: Option<i64> = None;
        let mut pending: VecDeque<Write> = VecDeque::new();
        let mut tick = tokio::time::interval(REPLICA_LEASE / 5);
        loop {
            let renew = tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => true,
                w = writes.recv() => match w {
                    Some(w) => {
                        pending.push_back(w);
                        lease.is_none()
                    }
                    None => return,
                },
            };
            if renew && let Err(e) = self.keep(&mut lease, &mut pending, &held).await {
                tracing::warn!(error = %e, waiting = pending.len(), "cannot write the registry to etcd; trying again");
                continue;
            }
            while let Some(w) = pending.front().cloned() {
                let Some(id) = lease else { break };
                match self.apply(&w, id).await {
                    Ok(()) => {
                        pending.pop_front();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, waiting = pending.len(), "cannot write the registry to etcd; trying again");
                        break;
                    }
                }
            }
        }
    }

    /// Keeps this replica's lease alive; a new one when it lapsed, and then every
    /// registration held is written again, before anything else.
    async fn keep(
        &self,
        lease: &mut Option<i64>,
        pending: &mut VecDeque<Write>,
        held: &impl Fn() -> Vec<Workload>,
    ) -> Result<(), EtcdError> {
        if let Some(id) = *lease {
            if self.etcd.keep_alive(id).await? {
                return Ok(());
            }
            tracing::warn!(
                lease = id,
                "the control plane's etcd lease lapsed; registering again on a new one"
            );
            *lease = None;
        }
        let id = self.etcd.grant(REPLICA_LEASE).await?;
        *lease = Some(id);
        // What is held is what the registrations are now: a registration waiting to be
        // written is among them, or was removed since (its removal waits too). Written once,
        // not twice.
        pending.retain(|w| !matches!(w, Write::Put(_)));
        for w in held().into_iter().rev() {
            pending.push_front(Write::Put(w));
        }
        Ok(())
    }

    async fn apply(&self, w: &Write, lease: i64) -> Result<(), EtcdError> {
        match w {
            Write::Put(w) => {
                let json = serde_json::to_vec(w).map_err(|e| EtcdError::Config(e.to_string()))?;
                self.etcd
                    .put(&self.key(&w.namespace, w.address), &json, lease)
                    .await?;
            }
            Write::Delete {
                namespace,
                address,
                only_if: Unchanged::OnMyLease,
            } => {
                let key = self.key(namespace, *address);
                let only_if = Compare::leased_by(key.clone(), lease);
                self.etcd.txn(vec![only_if], vec![delete(key)]).await?;
            }
            Write::Delete {
                namespace,
                address,
                only_if: Unchanged::HeldBy(identity),
            } => {
                self.remove_held(self.key(namespace, *address), identity)
                    .await?
            }
        }
        Ok(())
    }

    /// Removes `key` while it holds a registration of `identity`: read, then removed only if
    /// it was not written since the read (read again if it was).
    async fn remove_held(
        &self,
        key: Vec<u8>,
        identity: &Option<SpiffeId>,
    ) -> Result<(), EtcdError> {
        let name = || String::from_utf8_lossy(&key).into_owned();
        for _ in 0..REMOVAL_TRIES {
            let Some(kv) = self.etcd.get(&key).await? else {
                return Ok(());
            };
            let holder = serde_json::from_slice::<Workload>(&kv.value).map(|w| w.identity);
            if holder.as_ref().ok() != Some(identity) {
                tracing::info!(
                    key = %name(),
                    "a removal found the address registered since by another workload: kept"
                );
                return Ok(());
            }
            let only_if = Compare::modified_at(key.clone(), kv.mod_revision);
            let (removed, _) = self
                .etcd
                .txn(vec![only_if], vec![delete(key.clone())])
                .await?;
            if removed {
                return Ok(());
            }
        }
        tracing::warn!(
            key = %name(),
            tries = REMOVAL_TRIES,
            "a registration kept being written while it was being removed: left to its lease"
        );
        Ok(())
    }
}

fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp::Delete(DeleteRangeRequest {
        key,
        range_end: Vec::new(),
    })
}
