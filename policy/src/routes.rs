//! Outbound routes of a service, as the proxy receives them: `HTTPRoute` rules with their
//! matches, weighted backends, timeouts, retries, circuit breaking and fault injection, and
//! the request matching that picks a rule (Gateway API precedence).

use serde::{Deserialize, Serialize};

use crate::split::WeightedSplit;
use crate::wire::{Dur, HeaderMatch, Method, PathMatch};

/// Path kind and length, method given, header count: larger is more specific.
type Specificity = (u8, usize, bool, usize);

/// One way a request can match a rule; every given field must match (none = everything).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl RequestMatch {
    pub fn matches(&self, method: &http::Method, path: &str, headers: &http::HeaderMap) -> bool {
        self.method.as_ref().is_none_or(|m| m.0 == *method)
            && self.path.as_ref().is_none_or(|p| p.matches(path))
            && self.headers.iter().all(|h| h.matches(headers))
    }

    /// Gateway API precedence: path (exact, then longest prefix, then regex), then method,
    /// then the number of header matches.
    fn specificity(&self) -> Specificity {
        let (kind, len) = self.path.as_ref().map_or((2, 1), PathMatch::specificity);
        (kind, len, self.method.is_some(), self.headers.len())
    }
}

/// Gateway API `HTTPRouteTimeouts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    /// One attempt to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Dur>,
}

/// What makes an attempt retryable, besides the status `codes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryCondition {
    /// Any 5xx status.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// The connection to the backend could not be made.
    ConnectFailure,
    /// The backend reset or closed the connection before answering.
    Reset,
    /// The attempt exceeded `perTryTimeout`.
    PerTryTimeout,
}

/// Retry settings (Istio `HTTPRetry` semantics, plus Linkerd's retry budget).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Statuses that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<RetryCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

/// Retries may add at most `ratio` × requests, but always `minPerSecond`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    pub ratio: f64,
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
    /// Window over which requests and retries are counted.
    #[serde(default = "default_budget_ttl")]
    pub ttl: Dur,
}

fn default_min_per_second() -> u32 {
    10
}

fn default_budget_ttl() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// Endpoint ejection after consecutive failures (Istio outlier detection).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Consecutive failures (5xx or connection errors) that eject an endpoint.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint stays out before it is probed again (doubles on each
    /// consecutive ejection).
    pub ejection_time: Dur,
    /// At most this percentage of a backend's endpoints is ejected at once.
    #[serde(default = "hundred")]
    pub max_ejection_percent: f64,
}

fn hundred() -> f64 {
    100.0
}

/// Fault injection (Istio `HTTPFaultInjection`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
}

/// Answer `httpStatus` instead of forwarding, for `percentage` % of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    pub http_status: u16,
    pub percentage: f64,
}

/// Wait `fixedDelay` before forwarding, for `percentage` % of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    pub fixed_delay: Dur,
    pub percentage: f64,
}

/// A backend of a rule: a service (resolved to its namespace) and its weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub weight: u32,
}

/// One rule of an `HTTPRoute`, resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// The `HTTPRoute`, `namespace/name`.
    pub route: String,
    /// The rule's name, or its index.
    pub name: String,
    /// Empty: matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
    pub backends: Vec<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

impl RouteRule {
    /// The rule's backends as a weighted split.
    pub fn split(&self) -> WeightedSplit<&Backend> {
        WeightedSplit::new(self.backends.iter().map(|b| (b, b.weight)))
    }
}

/// Every route of a service. A request no rule matches (or any request, with no rules) takes
/// the service's default route: to the service itself, with default settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoutes {
    pub namespace: String,
    pub service: String,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

impl ServiceRoutes {
    /// The rule for a request: among the rules with a matching match, the one whose match is
    /// most specific; the first written wins ties.
    pub fn find(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<&RouteRule> {
        self.find_index(method, path, headers)
            .map(|i| &self.rules[i])
    }

    /// The index in `rules` of the rule [`find`](Self::find) picks.
    pub fn find_index(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<usize> {
        let mut best: Option<(usize, Specificity)> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            let score = if rule.matches.is_empty() {
                Some(RequestMatch::default().specificity())
            } else {
                rule.matches
                    .iter()
                    .filter(|m| m.matches(method, path, headers))
                    .map(RequestMatch::specificity)
                    .max()
            };
            if let Some(score) = score
                && best.is_none_or(|(_, b)| score > b)
            {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HeaderMatchSpec, StringMatchType};

    fn rule(name: &str, matches: Vec<RequestMatch>) -> RouteRule {
        RouteRule {
            route: "default/api".into(),
            name: name.into(),
            matches,
            backends: vec![],
            timeouts: None,
            retry: None,
            circuit_breaker: None,
            fault: None,
        }
    }

    #[test]
    fn most_specific_match_wins() {
        let mobile = HeaderMatch::try_from(HeaderMatchSpec {
            name: "User-Agent".into(),
            kind: StringMatchType::RegularExpression,
            value: ".*[Mm]obile.*".into(),
        })
        .unwrap();
        let routes = ServiceRoutes {
            namespace: "default".into(),
            service: "api".into(),
            rules: vec![
                rule("default", vec![]),
                rule(
                    "mobile",
                    vec![RequestMatch {
                        headers: vec![mobile],
                        ..Default::default()
                    }],
                ),
                rule(
                    "v2",
                    vec![RequestMatch {
                        path: Some(PathMatch::Prefix("/v2".into())),
                        ..Default::default()
                    }],
                ),
                rule(
                    "login",
                    vec![RequestMatch {
                        path: Some(PathMatch::Exact("/v2/login".into())),
                        method: Some(Method(http::Method::POST)),
                        headers: vec![],
                    }],
                ),
            ],
        };
        let mut h = http::HeaderMap::new();
        let name = |m: &http::Method, p: &str, h: &http::HeaderMap| {
            routes.find(m, p, h).map(|r| r.name.clone())
        };
        assert_eq!(
            name(&http::Method::GET, "/", &h).as_deref(),
            Some("default")
        );
        assert_eq!(name(&http::Method::GET, "/v2/x", &h).as_deref(), Some("v2"));
        assert_eq!(
            name(&http::Method::POST, "/v2/login", &h).as_deref(),
            Some("login")
        );
        assert_eq!(
            name(&http::Method::GET, "/v2/login", &h).as_deref(),
            Some("v2")
        );
        h.insert("user-agent", "Android Mobile".parse().unwrap());
        assert_eq!(name(&http::Method::GET, "/", &h).as_deref(), Some("mobile"));
        let json = serde_json::to_string(&routes).unwrap();
        assert_eq!(
            serde_json::from_str::<ServiceRoutes>(&json).unwrap(),
            routes
        );
    }
}
