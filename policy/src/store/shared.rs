//! The registrations a replica shares with the others through etcd
//! ([`crate::etcd::registry`]): what it registers is checked against what every replica
//! registered (as etcd has it) and written there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::etcd::registry::{Unchanged, Write};
use crate::registry::{Refusal, Registry, Upsert, Workload};

/// Registrations shared through etcd: what this replica writes, and what every replica
/// registered, as etcd has it.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) writes: tokio::sync::mpsc::UnboundedSender<Write>,
    /// Every replica's registrations.
    pub(super) view: Mutex<HashMap<(String, std::net::SocketAddr), Workload>>,
}

impl Shared {
    pub(super) fn send(&self, w: Write) {
        let _ = self.writes.send(w);
    }

    /// Registers `w` here (its lease, the per-identity cap) unless another replica's
    /// registration of the address is another identity's; written to etcd when it is new or
    /// changed, or missing there.
    pub(super) fn register(
        &self,
        reg: &mut Registry,
        w: Workload,
        lease: Duration,
    ) -> Result<(), Refusal> {
        let key = (w.namespace.clone(), w.address);
        let there = self
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(other) = &there
            && other.identity != w.identity
            && reg
                .workloads()
                .iter()
                .all(|h| (&h.namespace, h.address) != (&key.0, key.1))
        {
            return Err(crate::registry::Conflict {
                namespace: w.namespace,
                address: w.address,
                holder: other
                    .identity
                    .as_ref()
                    .map_or_else(|| "a workload without identity".into(), |i| i.to_string()),
            }
            .into());
        }
        let outcome = reg.upsert(w.clone(), lease, Instant::now())?;
        if outcome == Upsert::Changed || there.as_ref() != Some(&w) {
            self.send(Write::Put(w));
        }
        Ok(())
    }

    /// Removes the registration of `address` if `holder` holds it, whichever replica it was
    /// made through.
    pub(super) fn deregister(
        &self,
        reg: &mut Registry,
        namespace: &str,
        address: std::net::SocketAddr,
        holder: Option<Option<&weft_identity::SpiffeId>>,
    ) -> bool {
        reg.remove(namespace, address, holder);
        let key = (namespace.to_string(), address);
        let held = self
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|w| holder.is_none_or(|h| w.identity.as_ref() == h))
            .map(|w| w.identity.clone());
        let Some(identity) = held else {
            return false;
        };
        self.send(Write::Delete {
            namespace: namespace.to_string(),
            address,
            only_if: Unchanged::HeldBy(identity),
        });
        true
    }
}
