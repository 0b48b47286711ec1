//! A rule's retry policy, compiled with the rest of the rule: what it retries, how often, and
//! its [`Budget`]. The budget of a rule's previous version is kept when its settings are
//! unchanged, so editing a route does not hand out a fresh budget.

use std::sync::Arc;
use std::time::Duration;

use weft_policy::routes::{self, RetryCondition};

use super::budget::Budget;

/// The budget of routes that set none: retries add at most 20 % to the load, plus 10 per
/// second, over 10 seconds (Linkerd's defaults).
pub const DEFAULT_BUDGET: (f64, u32, Duration) = (0.2, 10, Duration::from_secs(10));

/// What a route retries, how often, and its budget: the rule's `retry`, compiled with the rest
/// of the rule (the retry layer applies it).
#[derive(Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Status codes retried (idempotent requests and gRPC).
    pub codes: Vec<u16>,
    /// `5xx`: every server error.
    pub server_error: bool,
    /// `gateway-error`: 502, 503 and 504.
    pub gateway_error: bool,
    /// `connect-failure`: the connection could not be made.
    pub connect_failure: bool,
    /// `reset`: the connection failed mid-request.
    pub reset: bool,
    /// `per-try-timeout`: an attempt ran out of its per-try timeout.
    pub per_try_timeout: bool,
    budget: Arc<Budget>,
    /// What `budget` was made from, so an unchanged budget survives route updates.
    budget_spec: (f64, u32, Duration),
}

impl RetryPolicy {
    /// The policy of a route that configures no retries: connect failures, once.
    pub fn default_route() -> Self {
        Self::from_spec(None, None)
    }

    /// The policy of a rule's `retry` (none: [`default_route`](Self::default_route)), keeping
    /// `prior`'s budget when its settings are unchanged.
    pub fn from_spec(spec: Option<&routes::Retry>, prior: Option<&RetryPolicy>) -> Self {
        let budget_spec = spec
            .and_then(|r| r.budget.as_ref())
            .map_or(DEFAULT_BUDGET, |b| (b.ratio, b.min_per_second, b.ttl.0));
        let budget = match prior {
            Some(p) if p.budget_spec == budget_spec => p.budget.clone(),
            _ => Arc::new(Budget::new(budget_spec.0, budget_spec.1, budget_spec.2)),
        };
        let mut policy = Self {
            attempts: 1,
            codes: Vec::new(),
            server_error: false,
            gateway_error: false,
            connect_failure: true,
            reset: false,
            per_try_timeout: false,
            budget,
            budget_spec,
        };
        let Some(spec) = spec else {
            return policy;
        };
        policy.attempts = spec.attempts;
        policy.codes = spec.codes.clone();
        policy.connect_failure = false;
        if spec.codes.is_empty() && spec.conditions.is_empty() {
            policy.server_error = true;
            policy.connect_failure = true;
        }
        for c in &spec.conditions {
            match c {
                RetryCondition::ServerError => policy.server_error = true,
                RetryCondition::GatewayError => policy.gateway_error = true,
                RetryCondition::ConnectFailure => policy.connect_failure = true,
                RetryCondition::Reset => policy.reset = true,
                RetryCondition::PerTryTimeout => policy.per_try_timeout = true,
            }
        }
        policy
    }

    /// The route's retry budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Whether a response with `status` is retried (of a request whose method allows it).
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
            || (self.server_error && (500..=599).contains(&status))
            || (self.gateway_error && (502..=504).contains(&status))
    }
}
