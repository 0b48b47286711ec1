//! Following the CA's files: reading them again when they change, so a rotation takes effect
//! without a restart, and what `/v1/ca` tells clients.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{CaInfo, IdentityService};
use crate::authority::{Authority, AuthorityConfig, AuthorityError, rotate};

/// Warn of the trust anchor's expiry this long ahead.
pub const ANCHOR_WARNING: Duration = Duration::from_secs(180 * 24 * 3600);

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
        // A bundle sharing no anchor with the one served would cut every workload off (they
        // refuse it, and their certificates stop verifying): an accident, such as another
        // CA's files copied in. Replacing a CA wholesale is a restart, on purpose.
        let (was, now) = (old.bundle().fingerprints(), next.bundle().fingerprints());
        if !now.iter().any(|a| was.contains(a)) {
            self.metrics.reload_failed.increment(1);
            return Err(AuthorityError::Incomplete(format!(
                "the trust anchors now in {} ({}) share none with those served ({}): every workload would refuse them. Rotate anchors with `weft ca rotate anchor`, which keeps the old one until the mesh follows; to replace the CA at once, restart the identity service (every workload must then bootstrap again)",
                cfg.anchor_file
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join(crate::authority::ANCHOR_CERT_FILE))
                    .display(),
                now.join(", "),
                was.join(", ")
            )));
        }
        tracing::info!(
            anchors = ?now,
            issuer = %next.issuer_fingerprint(),
            "the CA's files changed: now in use"
        );
        let metrics = &self.metrics;
        metrics.show(&next);
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
    ///
    /// With `rotate_at` (a fraction of the issuer's lifetime), it also replaces the issuer
    /// once that much of its life has passed; and it warns, daily, once the anchor expires
    /// within [`ANCHOR_WARNING`].
    pub fn follow_files(
        self: &Arc<Self>,
        cfg: AuthorityConfig,
        every: Duration,
        rotate_at: Option<f64>,
    ) -> tokio::task::JoinHandle<()> {
        let svc = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = files_stamp(&cfg);
            let mut failing = false;
            let (mut anchor_warned, mut rotate_warned) = (None, None);
            loop {
                if let Some(svc) = svc.upgrade() {
                    svc.warn_of_anchor_expiry(&cfg, &mut anchor_warned);
                    if let Some(at) = rotate_at {
                        svc.rotate_issuer_if_due(&cfg, at, &mut rotate_warned);
                    }
                }
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

    /// Replaces the issuer once `at` of its life has passed (the identity service's own
    /// rotation). One that is due but cannot be made is counted and logged (hourly, with
    /// `last_warned`).
    fn rotate_issuer_if_due(
        &self,
        cfg: &AuthorityConfig,
        at: f64,
        last_warned: &mut Option<Instant>,
    ) {
        if !rotate::issuer_due(&self.authority(), at) {
            return;
        }
        match rotate::rotate_issuer_when_due(cfg, at) {
            Ok(Some(fp)) => {
                self.metrics.rotated.increment(1);
                tracing::info!(issuer = %fp, "issuer rotated (--rotate-at); leaves move to it as they renew");
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.rotation_failed.increment(1);
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                    *last_warned = Some(Instant::now());
                    let ca = self.authority();
                    tracing::error!(
                        error = %e,
                        issuer_expires = %crate::rfc3339(ca.issuer_not_after()),
                        "the issuer is due for rotation but the identity service cannot rotate it: run `weft ca rotate issuer --data-dir {} --anchor-key FILE` before it expires",
                        cfg.data_dir.display()
                    );
                }
            }
        }
    }

    /// Warns (daily, with `last_warned`) once the trust anchor expires within
    /// [`ANCHOR_WARNING`], with the command that replaces it.
    fn warn_of_anchor_expiry(&self, cfg: &AuthorityConfig, last_warned: &mut Option<Instant>) {
        let ca = self.authority();
        let left = ca
            .anchor_not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left >= ANCHOR_WARNING
            || last_warned.is_some_and(|t| t.elapsed() < Duration::from_secs(24 * 3600))
        {
            return;
        }
        *last_warned = Some(Instant::now());
        tracing::warn!(
            anchor_expires = %crate::rfc3339(ca.anchor_not_after()),
            days_left = left.as_secs() / 86_400,
            "the trust anchor expires soon: rotate it now with `weft ca rotate anchor --data-dir {}` (a few minutes, no restart; see docs/identity.md)",
            cfg.data_dir.display()
        );
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
