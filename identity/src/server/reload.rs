//! Following the CA's files: reading them again when they change, so a rotation takes effect
//! without a restart, and what `/v1/ca` tells clients.

use std::sync::Arc;
use std::time::Duration;

use super::{CaInfo, IdentityService};
use crate::authority::{Authority, AuthorityConfig, AuthorityError};
use weft_runtime::metrics::unix_seconds;

impl IdentityService {
    /// Reads the CA's files again. On success the new CA issues from now on (and the service's
    /// own certificate is re-issued when the issuer changed); on failure the current one stays.
    pub fn reload(&self, cfg: &AuthorityConfig) -> Result<(), AuthorityError> {
        let result = Authority::load_or_create(cfg);
        let next = match result {
            Ok(a) => a,
            Err(e) => {
                self.metrics.reload_failed.increment(1);
                return Err(e);
            }
        };
        let old = self.authority();
        let issuer_changed = next.issuer_fingerprint() != old.issuer_fingerprint();
        if next.trust_domain() != old.trust_domain() {
            self.metrics.reload_failed.increment(1);
            return Err(AuthorityError::OtherTrustDomain {
                dir: cfg.data_dir.clone(),
                serves: old.trust_domain().to_string(),
                asked: next.trust_domain().to_string(),
            });
        }
        tracing::info!(
            anchors = ?next.bundle().fingerprints(),
            issuer = %next.issuer_fingerprint(),
            "the CA's files changed: now in use"
        );
        let metrics = &self.metrics;
        metrics
            .issuer_expiry
            .set(unix_seconds(next.issuer_not_after()));
        metrics
            .anchor_expiry
            .set(unix_seconds(next.anchor_not_after()));
        *self.authority.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        metrics.reload_ok.increment(1);
        if issuer_changed && let Err(e) = self.refresh_serving_cert() {
            tracing::error!(error = %e, "cannot re-issue the identity service's own certificate from the new issuer");
        }
        Ok(())
    }

    /// Reads the CA's files again whenever they change (checked every `every`), until the
    /// service is dropped. A failed read is logged once per state of the files and retried at
    /// the next change: a rotation writes several files, one after the other.
    pub fn follow_files(
        self: &Arc<Self>,
        cfg: AuthorityConfig,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = files_stamp(&cfg);
            let mut failing = false;
            loop {
                tokio::time::sleep(every).await;
                let Some(svc) = svc.upgrade() else { return };
                let now = files_stamp(&cfg);
                if now == seen && !failing {
                    continue;
                }
                let changed = now != seen;
                seen = now;
                match svc.reload(&cfg) {
                    Ok(()) => failing = false,
                    Err(e) => {
                        if changed {
                            tracing::warn!(error = %e, "the CA's files changed but cannot be used; the CA in use stays until they are fixed");
                        }
                        failing = true;
                    }
                }
            }
        })
    }

    /// What `/v1/ca` answers.
    pub fn ca_info(&self) -> CaInfo {
        let ca = self.authority();
        CaInfo {
            trust_bundle: ca.bundle().to_pem(),
            anchors: ca.bundle().fingerprints(),
            issuer: ca.issuer_fingerprint(),
            anchor_links: crate::authority::links::links_to_pem(ca.links()),
            reissue_before: ca.state().reissue_before,
        }
    }
}

/// What the CA's files look like on disk (size, modification time, inode of each), to notice
/// a change without reading them.
fn files_stamp(cfg: &AuthorityConfig) -> Vec<Option<(u64, std::time::SystemTime, u64)>> {
    use crate::authority::{
        ANCHOR_CERT_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE, links::LINKS_FILE, state::STATE_FILE,
    };
    use std::os::unix::fs::MetadataExt;
    let dir = &cfg.data_dir;
    let paths = [
        cfg.anchor_file
            .clone()
            .unwrap_or_else(|| dir.join(ANCHOR_CERT_FILE)),
        cfg.issuer_cert_file
            .clone()
            .unwrap_or_else(|| dir.join(ISSUER_CERT_FILE)),
        cfg.issuer_key_file
            .clone()
            .unwrap_or_else(|| dir.join(ISSUER_KEY_FILE)),
        dir.join(LINKS_FILE),
        dir.join(STATE_FILE),
    ];
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.len(),
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    m.ino(),
                )
            })
        })
        .collect()
}
