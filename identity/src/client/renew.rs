//! The background client: bootstrap, then renew before expiry, with jittered back-off on
//! failure, publishing the credentials on a watch.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge};
use tokio::sync::watch;

use super::follow::{self, TrustMetrics, accept_bundle};
use super::{Auth, ClientError, ClientSettings, RENEW_FRACTION, certify, fetch_trust_bundle};
use crate::tls::{Credentials, TrustBundle};
use weft_runtime::metrics::{Registry, unix_seconds};

/// Jittered exponential back-off.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay: uniformly in [½, 1] × min·2ⁿ, capped at max.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        exp.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// When to renew credentials received at `received` and valid until `not_after`: after
/// [`RENEW_FRACTION`] of the time left at receipt (the back-dated part of the validity, there
/// for peers' clock skew, does not count), jittered by ±5% so a fleet started together does
/// not renew together.
pub fn renewal_time(received: SystemTime, not_after: SystemTime) -> SystemTime {
    let left = not_after.duration_since(received).unwrap_or_default();
    let fraction = RENEW_FRACTION + (fastrand::f64() - 0.5) * 0.1;
    received + left.mul_f64(fraction)
}

struct ClientMetrics {
    bundle_changed: Counter,
    bundle_refused: Counter,
    ok_bootstrap: Counter,
    ok_renewal: Counter,
    failed: Counter,
    expiry: Gauge,
    failing: Gauge,
}

impl ClientMetrics {
    /// [`accept_bundle`], counted, and a change logged: for a renewal's bundle and for one
    /// [`follow::look`] brought alike.
    fn judge_bundle(&self, held: &TrustBundle, offered: &TrustBundle) -> Result<bool, ClientError> {
        match accept_bundle(held, offered) {
            Ok(changed) => {
                if changed {
                    self.bundle_changed.increment(1);
                    tracing::info!(
                        from = ?held.fingerprints(),
                        to = ?offered.fingerprints(),
                        "the trust bundle changed"
                    );
                }
                Ok(changed)
            }
            Err(e) => {
                self.bundle_refused.increment(1);
                Err(e)
            }
        }
    }

    fn new(registry: &Registry) -> Self {
        const NAME: &str = "weft_identity_client_certify_total";
        const HELP: &str = "Certificate requests this workload made, by kind and result.";
        const BUNDLE: &str = "Changes of the trust bundle a renewal or a look at the CA (/v1/ca) brought, by result (accepted: it keeps an anchor trusted now; refused: it keeps none, and the current bundle stays).";
        Self {
            bundle_changed: registry.counter(
                "weft_identity_client_bundle_changes_total",
                BUNDLE,
                &[("result", "accepted")],
            ),
            bundle_refused: registry.counter(
                "weft_identity_client_bundle_changes_total",
                BUNDLE,
                &[("result", "refused")],
            ),
            ok_bootstrap: registry.counter(NAME, HELP, &[("kind", "bootstrap"), ("result", "ok")]),
            ok_renewal: registry.counter(NAME, HELP, &[("kind", "renewal"), ("result", "ok")]),
            failed: registry.counter(NAME, HELP, &[("kind", "any"), ("result", "error")]),
            expiry: registry.gauge(
                "weft_identity_client_certificate_expiry_timestamp_seconds",
                "When this workload's current certificate expires, in Unix seconds.",
                &[],
            ),
            failing: registry.gauge(
                "weft_identity_client_consecutive_failures",
                "Certificate requests that failed in a row since the last success.",
                &[],
            ),
        }
    }
}

/// A running identity client.
#[derive(Debug)]
pub struct IdentityClient {
    creds: watch::Receiver<Option<Arc<Credentials>>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityClient {
    /// Starts bootstrapping and renewing in the background. The watch holds `None` until the
    /// first certificate arrives.
    pub fn start(settings: ClientSettings, registry: &Registry) -> Self {
        let (tx, rx) = watch::channel(None);
        let metrics = ClientMetrics::new(registry);
        let trust = TrustMetrics::new(registry);
        let task = tokio::spawn(maintain(settings, tx, metrics, trust));
        Self { creds: rx, task }
    }

    pub fn credentials(&self) -> watch::Receiver<Option<Arc<Credentials>>> {
        self.creds.clone()
    }

    /// Waits for the first certificate.
    pub async fn ready(&mut self) -> Arc<Credentials> {
        loop {
            if let Some(c) = self.creds.borrow_and_update().clone() {
                return c;
            }
            if self.creds.changed().await.is_err() {
                // The task only ends when aborted; wait forever like a pending certificate.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for IdentityClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn maintain(
    settings: ClientSettings,
    tx: watch::Sender<Option<Arc<Credentials>>>,
    metrics: ClientMetrics,
    mut trust: TrustMetrics,
) {
    let mut backoff = Backoff::new(settings.min_backoff, settings.max_backoff);
    let mut bundle: Option<TrustBundle> = None;
    let mut current: Option<Arc<Credentials>> = None;
    let mut due = SystemTime::now();
    let mut look_at = SystemTime::now() + jittered(settings.trust_refresh);
    let mut failures = 0u64;
    loop {
        let wake = if current.is_some() {
            due.min(look_at)
        } else {
            due
        };
        if let Ok(wait) = wake.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let now = SystemTime::now();
        if now < due
            && let Some(creds) = &current
        {
            // Between renewals: what does the CA serve now?
            look_at = now + jittered(settings.trust_refresh);
            let (next, renew_by) = look_between(&settings, creds, &metrics).await;
            if let Some(next) = next {
                trust.report(&next);
                current = Some(next.clone());
                tx.send_replace(Some(next));
            }
            if let Some(by) = renew_by
                && due > by
            {
                due = follow::spread_until(by);
                tracing::info!(re_issue_at = %crate::rfc3339(due), "the CA has a new issuer and asks for leaves of the old one to be replaced: renewing early");
            }
            continue;
        }
        let result = match &current {
            Some(creds) if now < creds.not_after => {
                let r = certify(
                    &settings.addr,
                    &creds.bundle,
                    &creds.identity,
                    Auth::Certificate(creds),
                )
                .await;
                match r {
                    // The service no longer accepts our certificate: fall back to the token.
                    Err(ClientError::Rejected { ref body, .. })
                        if body.error.starts_with("client_cert_") =>
                    {
                        tracing::warn!(reason = %body.error, "renewal with the current certificate refused; bootstrapping again with the token");
                        bootstrap_cached(&settings, &mut bundle)
                            .await
                            .map(|c| (c, true))
                    }
                    r => r.map(|c| (c, false)),
                }
            }
            _ => bootstrap_cached(&settings, &mut bundle)
                .await
                .map(|c| (c, true)),
        };
        // A renewal that brings another trust bundle: only one that keeps an anchor trusted now.
        let result = match result {
            Ok((creds, false)) => match current.as_ref() {
                Some(held) => metrics
                    .judge_bundle(&held.bundle, &creds.bundle)
                    .map(|_| (creds, false)),
                None => Ok((creds, false)),
            },
            other => other,
        };
        match result {
            Ok((creds, bootstrapped)) => {
                if bootstrapped {
                    metrics.ok_bootstrap.increment(1);
                } else {
                    metrics.ok_renewal.increment(1);
                }
                failures = 0;
                metrics.failing.set(0.0);
                metrics.expiry.set(unix_seconds(creds.not_after));
                tracing::info!(
                    identity = %creds.identity,
                    not_after = %crate::rfc3339(creds.not_after),
                    "certificate {}", if bootstrapped { "obtained" } else { "renewed" }
                );
                let creds = Arc::new(creds);
                trust.report(&creds);
                due = renewal_time(SystemTime::now(), creds.not_after);
                current = Some(creds.clone());
                backoff.reset();
                tx.send_replace(Some(creds));
            }
            Err(e) => {
                failures += 1;
                metrics.failed.increment(1);
                metrics.failing.set(failures as f64);
                let mut delay = backoff.next_delay();
                // Near expiry, do not sleep past a good part of what is left.
                if let Some(c) = &current
                    && let Ok(left) = c.not_after.duration_since(SystemTime::now())
                {
                    delay = delay.min((left / 4).max(settings.min_backoff));
                }
                let expired = current
                    .as_ref()
                    .is_none_or(|c| SystemTime::now() >= c.not_after);
                tracing::warn!(
                    error = %e,
                    failures,
                    retry_in = ?delay,
                    holding_valid_certificate = !expired,
                    "certificate request failed; retrying"
                );
                due = SystemTime::now() + delay;
            }
        }
    }
}

/// One look at the CA between renewals: the credentials with the new bundle if it changed
/// (and was accepted), and when to renew if the CA asks for early re-issuing.
async fn look_between(
    settings: &ClientSettings,
    creds: &Credentials,
    metrics: &ClientMetrics,
) -> (Option<Arc<Credentials>>, Option<SystemTime>) {
    let seen = match follow::look(&settings.addr, creds).await {
        Ok(seen) => seen,
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask the CA what it serves; asking again later");
            return (None, None);
        }
    };
    match metrics.judge_bundle(&creds.bundle, &seen.bundle) {
        Ok(true) => (
            Some(follow::with_bundle(creds, seen.bundle)),
            seen.reissue_by,
        ),
        Ok(false) => (None, seen.reissue_by),
        Err(e) => {
            tracing::warn!(error = %e, "trust bundle refused");
            (None, None)
        }
    }
}

/// `d` jittered by ±20 %.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

async fn bootstrap_cached(
    settings: &ClientSettings,
    bundle: &mut Option<TrustBundle>,
) -> Result<Credentials, ClientError> {
    let claims = settings.claims()?;
    let b = match bundle {
        Some(b) => b.clone(),
        None => {
            let b = fetch_trust_bundle(&settings.addr, &claims.anchor).await?;
            *bundle = Some(b.clone());
            b
        }
    };
    certify(
        &settings.addr,
        &b,
        &claims.sub,
        Auth::Token(&settings.token),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[2] >= Duration::from_millis(200) && delays[2] <= Duration::from_millis(400));
        for d in &delays[4..] {
            assert!(
                *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_bundle_is_accepted_only_when_it_keeps_a_trusted_anchor() {
        use crate::client::follow::accept_bundle;
        let anchor = |name: &str| {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = crate::authority::AuthorityConfig::new(dir.path());
            cfg.trust_domain = Some(crate::TrustDomain::new(name).unwrap());
            let a = crate::authority::Authority::load_or_create(&cfg).unwrap();
            a.bundle().certs()[0].clone()
        };
        let (old, new, other) = (
            anchor("a.example"),
            anchor("a.example"),
            anchor("b.example"),
        );
        let bundle = |certs: &[&rustls::pki_types::CertificateDer<'static>]| {
            TrustBundle::from_der(certs.iter().map(|c| (*c).clone()).collect()).unwrap()
        };
        let start = bundle(&[&old]);
        // The same: no change.
        assert!(!accept_bundle(&start, &bundle(&[&old])).unwrap());
        // The steps of an anchor rotation: add the new one, then drop the old one.
        let both = bundle(&[&old, &new]);
        assert!(accept_bundle(&start, &both).unwrap());
        assert!(accept_bundle(&both, &bundle(&[&new])).unwrap());
        // Straight to another anchor, skipping the overlap: refused, naming both.
        let refused = accept_bundle(&start, &bundle(&[&other])).unwrap_err();
        assert!(matches!(refused, ClientError::BundleRefused { .. }));
        assert!(
            refused.to_string().contains("keeps none of the anchors"),
            "{refused}"
        );
    }

    #[test]
    fn renewal_is_due_at_about_seventy_percent_of_what_is_left() {
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(1000);
        for _ in 0..200 {
            let due = renewal_time(now, not_after).duration_since(now).unwrap();
            assert!(
                due >= Duration::from_secs(650) && due <= Duration::from_secs(750),
                "{due:?}"
            );
        }
        // Already expired: due at once.
        assert_eq!(renewal_time(not_after, now), not_after);
    }
}
