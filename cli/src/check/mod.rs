//! `weft check`: the mesh's health, checked the way `linkerd check` checks a cluster, each
//! problem with what to do about it.
//!
//! 1. identity service: its admin answers, `/ready` is 200, its metrics parse, the issuer
//!    certificate and the trust anchor are valid and not close to expiry
//!    (`--issuer-expiry-warning`, `--anchor-expiry-warning`; from its expiry gauges).
//! 2. control plane: its admin answers, `/ready` is 200, `/workloads` parses.
//! 3. proxies (`--proxy-admin`, else every workload the control plane lists): `/ready` is 200,
//!    the certificate is valid and not close to expiry (`--expiry-warning`), and (`trust.rs`)
//!    it trusts exactly the anchors the CA serves, with a certificate of its current issuer.
//! 4. clock skew: every component's clock, read from the `Date` of its answers, is within
//!    `--max-skew` of this machine's.
//!
//! Exit status 0 when nothing failed (warnings allowed), 1 otherwise.

pub mod judge;
pub mod report;
#[cfg(test)]
mod tests;
pub mod trust;

use std::time::{Duration, SystemTime};

use weft_policy::registry::Workload;
use weft_runtime::config::parse_duration;

use self::judge::Expiry;
use self::report::{Check, Group, Report};
use crate::admin;
use crate::stat::{self, ENV_POLICY_ADMIN};

/// Where `weft check` finds the identity service's admin.
pub const ENV_IDENTITY_ADMIN: &str = "WEFT_IDENTITY_ADMIN";
pub const DEFAULT_IDENTITY_ADMIN: &str = weft_identity::config::DEFAULT_ADMIN;
/// A certificate expiring sooner than this is a warning.
pub const DEFAULT_EXPIRY_WARNING: &str = "1h";
/// The issuer and the anchor: warned of well ahead, as replacing them takes a rotation.
pub const DEFAULT_ISSUER_EXPIRY_WARNING: &str = "30d";
pub const DEFAULT_ANCHOR_EXPIRY_WARNING: &str = "180d";
/// A component clock further than this from ours is a failure: the identity service back-dates
/// certificates by 60 s (`--clock-skew`), so a few seconds are harmless and more is a symptom.
pub const DEFAULT_MAX_SKEW: &str = "5s";

const ISSUER_EXPIRY: &str = "weft_identity_issuer_expiry_timestamp_seconds";
const ANCHOR_EXPIRY: &str = "weft_identity_trust_anchor_expiry_timestamp_seconds";
const PROXY_CERT_EXPIRY: &str = "weft_proxy_certificate_expiry_timestamp_seconds";

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub identity_admin: crate::context::IdentityAdmin,
    #[command(flatten)]
    pub policy_admin: crate::context::PolicyAdmin,
    /// Check these proxy admin addresses instead of those the control plane lists (repeatable).
    #[arg(long = "proxy-admin")]
    pub proxies: Vec<String>,
    /// A proxy certificate expiring sooner than this is a warning (`1h`, `30m`, `7d`).
    #[arg(long, alias = "leaf-expiry-warning", default_value = DEFAULT_EXPIRY_WARNING, value_parser = parse_duration)]
    pub expiry_warning: Duration,
    /// The CA's issuer expiring sooner than this is a warning.
    #[arg(long, default_value = DEFAULT_ISSUER_EXPIRY_WARNING, value_parser = parse_duration)]
    pub issuer_expiry_warning: Duration,
    /// The CA's trust anchor expiring sooner than this is a warning.
    #[arg(long, default_value = DEFAULT_ANCHOR_EXPIRY_WARNING, value_parser = parse_duration)]
    pub anchor_expiry_warning: Duration,
    /// A component clock further than this from this machine's is a failure.
    #[arg(long, default_value = DEFAULT_MAX_SKEW, value_parser = parse_duration)]
    pub max_skew: Duration,
    /// Output: `table` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

/// `weft check`: prints the report; `Ok(true)` when no check failed.
pub fn run(args: CheckArgs) -> Result<bool, String> {
    let report = check(&args);
    if args.output == "json" {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        println!("{}", report.table());
    }
    Ok(report.healthy)
}

/// Runs every check.
pub fn check(args: &CheckArgs) -> Report {
    let mut clocks = Vec::new();
    let (identity, ca) = identity(args, &mut clocks);
    let (control_plane, workloads) = control_plane(args, &mut clocks);
    let proxies = proxies(args, workloads.as_deref(), ca.as_ref(), &mut clocks);
    let skew = Group {
        name: "clock skew".into(),
        checks: clocks
            .iter()
            .map(|c| clock_check(c, args.max_skew))
            .collect(),
    };
    Report::new(
        [identity, control_plane, proxies, skew]
            .into_iter()
            .filter(|g| !g.checks.is_empty())
            .collect(),
    )
}

/// A component's clock as one admin answer showed it.
#[derive(Debug, Clone)]
pub struct Clock {
    pub component: String,
    pub date: Option<String>,
    /// Our clock when the request left and when the answer was in (Unix seconds).
    pub sent: f64,
    pub received: f64,
}

/// `GET path` on a component's admin, noting its clock.
fn probe(
    component: &str,
    addr: &str,
    path: &str,
    clocks: &mut Vec<Clock>,
) -> Result<admin::Response, String> {
    let sent = unix_now();
    let rsp = admin::fetch(addr, path)?;
    clocks.push(Clock {
        component: component.to_string(),
        date: rsp.date.clone(),
        sent,
        received: unix_now(),
    });
    Ok(rsp)
}

fn unix_now() -> f64 {
    weft_runtime::metrics::unix_seconds(SystemTime::now())
}

/// Reachable and `/ready`: the first two checks of every component. `false` when unreachable
/// (the component's other checks are then skipped).
fn reachable_and_ready(
    what: &str,
    addr: &str,
    start_hint: &str,
    checks: &mut Vec<Check>,
    clocks: &mut Vec<Clock>,
) -> bool {
    match probe(what, addr, "/ready", clocks) {
        Err(e) => {
            checks.push(Check::failure(
                format!("{what} admin is reachable at {addr}"),
                format!("{what} admin at {addr} is unreachable: {e}"),
                start_hint,
            ));
            return false;
        }
        Ok(rsp) => {
            checks.push(Check::ok(format!("{what} admin is reachable at {addr}")));
            if rsp.status == 200 {
                checks.push(Check::ok(format!("{what} is ready")));
            } else {
                checks.push(Check::failure(
                    format!("{what} is ready"),
                    format!("{addr}/ready answered {}: {}", rsp.status, rsp.body.trim()),
                    format!(
                        "see the {what}'s log (WEFT_LOG=debug for more) for why it is not ready"
                    ),
                ));
            }
        }
    }
    true
}

fn identity(args: &CheckArgs, clocks: &mut Vec<Clock>) -> (Group, Option<trust::CaView>) {
    let addr = &args.identity_admin.addr();
    let mut checks = Vec::new();
    let mut ca = None;
    let start = format!(
        "start it with `weft identity` (its admin listens on --admin-listen, default {DEFAULT_IDENTITY_ADMIN}), or point this check at it with --identity-admin or {ENV_IDENTITY_ADMIN}"
    );
    if reachable_and_ready("identity service", addr, &start, &mut checks, clocks) {
        match admin::get_ok(addr, "/metrics").and_then(|t| crate::stat::prom::parse(&t)) {
            Err(e) => checks.push(Check::failure(
                "identity service metrics parse",
                format!("{addr}/metrics: {e}"),
                format!("is {addr} a weft identity service's admin? (`curl {addr}/metrics`)"),
            )),
            Ok(samples) => {
                checks.push(Check::ok("identity service metrics parse"));
                let now = unix_now();
                let gauge = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
                checks.push(ca_check(
                    "issuer certificate",
                    ISSUER_EXPIRY,
                    gauge(ISSUER_EXPIRY),
                    now,
                    args.issuer_expiry_warning,
                    "run `weft ca rotate issuer --data-dir DIR` (no restart; the identity service does it by itself at --rotate-at when the anchor's key is in its data directory; see docs/identity.md)",
                ));
                checks.push(ca_check(
                    "trust anchor",
                    ANCHOR_EXPIRY,
                    gauge(ANCHOR_EXPIRY),
                    now,
                    args.anchor_expiry_warning,
                    "run `weft ca rotate anchor --data-dir DIR`: it adds a new anchor, waits for every proxy to trust it, switches the issuer and drops the old one, without a restart (docs/identity.md)",
                ));
                ca = trust::ca_view(&samples);
            }
        }
    }
    (
        Group {
            name: "identity service".into(),
            checks,
        },
        ca,
    )
}

/// The identity service's own certificates: expired or close to it.
fn ca_check(
    what: &str,
    gauge_name: &str,
    not_after: Option<f64>,
    now: f64,
    warning: Duration,
    rotate: &str,
) -> Check {
    let Some(not_after) = not_after else {
        return Check::warning(
            format!("{what} expiry is known"),
            format!("the identity service's metrics have no {gauge_name}"),
            "upgrade the identity service to a weft version that exports it",
        );
    };
    expiry_check(
        what,
        judge::expiry(now, not_after, warning),
        warning,
        |left| {
            let detail = format!(
                "{what} expires in {left} (under --expiry-warning {})",
                judge::human(warning)
            );
            (detail, rotate.to_string())
        },
        |ago| (format!("{what} expired {ago} ago"), rotate.to_string()),
    )
}

/// A certificate judged by its expiry: valid, valid for less than `warning` (a warning), or
/// expired (a failure). `soon` and `expired` get the time left or passed, in words, and give
/// what was found and what to do.
fn expiry_check(
    what: &str,
    expiry: Expiry,
    warning: Duration,
    soon: impl FnOnce(String) -> (String, String),
    expired: impl FnOnce(String) -> (String, String),
) -> Check {
    match expiry {
        Expiry::Valid(left) => Check::ok(format!(
            "{what} is valid (expires in {})",
            judge::human(left)
        )),
        Expiry::Soon(left) => {
            let (detail, fix) = soon(judge::human(left));
            Check::warning(
                format!("{what} is valid for more than {}", judge::human(warning)),
                detail,
                fix,
            )
        }
        Expiry::Expired(ago) => {
            let (detail, fix) = expired(judge::human(ago));
            Check::failure(format!("{what} is valid"), detail, fix)
        }
    }
}

fn control_plane(args: &CheckArgs, clocks: &mut Vec<Clock>) -> (Group, Option<Vec<Workload>>) {
    let addr = &args.policy_admin.addr();
    let mut checks = Vec::new();
    let start = format!(
        "start it with `weft policy --dir DIR` (its admin listens on --admin-listen, default {}), or point this check at it with --policy-admin or {ENV_POLICY_ADMIN}",
        weft_policy::config::DEFAULT_ADMIN
    );
    let mut workloads = None;
    if reachable_and_ready("control plane", addr, &start, &mut checks, clocks) {
        checks.push(store_followed(addr));
        match stat::workloads(addr) {
            Err(e) => checks.push(Check::failure(
                "control plane lists its workloads",
                e,
                format!("is {addr} a weft control plane's admin? (`curl {addr}/workloads`)"),
            )),
            Ok(w) if w.is_empty() => {
                checks.push(Check::warning(
                    "control plane lists its workloads",
                    "no workload is registered",
                    format!(
                        "start proxies with `weft proxy` and {} pointing at this control plane's API",
                        weft_policy::config::ENV_POLICY_ADDR
                    ),
                ));
                workloads = Some(w);
            }
            Ok(w) => {
                checks.push(Check::ok(format!(
                    "control plane lists {} workload{}",
                    w.len(),
                    if w.len() == 1 { "" } else { "s" }
                )));
                workloads = Some(w);
            }
        }
    }
    (
        Group {
            name: "control plane".into(),
            checks,
        },
        workloads,
    )
}

/// Whether the control plane follows its store (`/status`): a directory, or etcd.
fn store_followed(addr: &str) -> Check {
    let what = "control plane follows its store";
    let status = crate::admin::get_ok(addr, weft_policy::server::STATUS_PATH)
        .ok()
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok());
    let Some(config) = status.as_ref().map(|s| &s["config"]) else {
        return Check::failure(
            what,
            format!("{addr}{} cannot be read", weft_policy::server::STATUS_PATH),
            "is this a weft control plane's admin?",
        );
    };
    let source = config["dir"].as_str().unwrap_or("?");
    match config["store_error"].as_str() {
        None => Check::ok(format!("{what} ({source})")),
        Some(error) => Check::failure(
            what,
            format!("the store ({source}) is unavailable: {error}"),
            "bring the store back (for etcd: its quorum, `etcdctl endpoint health --cluster`); meanwhile the proxies are served the last valid resources, and `weft apply` is refused",
        ),
    }
}

/// A proxy's name for people: the workloads it serves (`namespace/service`), or its address.
fn proxy_name(addr: &str, workloads: Option<&[Workload]>) -> String {
    let mut names: Vec<String> = workloads
        .unwrap_or_default()
        .iter()
        .filter(|w| w.metrics.is_some_and(|m| m.to_string() == addr))
        .map(|w| format!("{}/{}", w.namespace, w.service))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        format!("proxy {addr}")
    } else {
        format!("proxy {} ({addr})", names.join(", "))
    }
}

fn proxies(
    args: &CheckArgs,
    workloads: Option<&[Workload]>,
    ca: Option<&trust::CaView>,
    clocks: &mut Vec<Clock>,
) -> Group {
    let mut checks = Vec::new();
    let targets = if !args.proxies.is_empty() {
        args.proxies.clone()
    } else if let Some(w) = workloads {
        let unknown = w.iter().filter(|w| w.metrics.is_none()).count();
        if unknown > 0 {
            checks.push(Check::warning(
                "every registered proxy tells its admin address",
                format!("{unknown} registered workload(s) have no admin address in /workloads"),
                "name their admin addresses with --proxy-admin",
            ));
        }
        stat::metrics_addrs(w)
    } else {
        checks.push(Check::warning(
            "proxies can be listed",
            "the control plane's /workloads is not available",
            "the proxies are found through the control plane once it answers; or name their admin addresses with --proxy-admin",
        ));
        Vec::new()
    };
    let now = unix_now();
    for addr in &targets {
        let name = proxy_name(addr, workloads);
        // What it trusts is in its registration: judged even when the proxy does not answer.
        let registered = workloads
            .unwrap_or_default()
            .iter()
            .find(|w| w.metrics.is_some_and(|m| m.to_string() == *addr));
        let trust_check = match (ca, registered) {
            (Some(ca), Some(w)) => Some(trust::proxy_trust(&name, w.trust.as_ref(), ca)),
            _ => None,
        };
        match probe(&name, addr, "/ready", clocks) {
            Err(e) => {
                checks.push(Check::failure(
                    format!("{name} is ready"),
                    format!("{name} is unreachable: {e}"),
                    format!(
                        "is the proxy running? (`weft proxy`, its admin on {})",
                        weft_proxy::config::ENV_ADMIN
                    ),
                ));
                checks.extend(trust_check);
                continue;
            }
            Ok(rsp) if rsp.status != 200 => checks.push(Check::failure(
                format!("{name} is ready"),
                format!("/ready answered {}: {}", rsp.status, rsp.body.trim()),
                format!(
                    "a proxy is ready once it has a certificate and its policy: check its {}, {} and {}, and its log",
                    weft_proxy::config::ENV_IDENTITY_ADDR,
                    weft_proxy::config::ENV_TOKEN_FILE,
                    weft_proxy::config::ENV_POLICY_ADDR
                ),
            )),
            Ok(_) => checks.push(Check::ok(format!("{name} is ready"))),
        }
        let expiry = admin::get_ok(addr, "/metrics")
            .and_then(|t| crate::stat::prom::parse(&t))
            .map(|s| {
                s.iter()
                    .find(|s| s.name == PROXY_CERT_EXPIRY)
                    .map(|s| s.value)
            });
        checks.push(proxy_cert_check(&name, expiry, now, args.expiry_warning));
        checks.extend(trust_check);
    }
    Group {
        name: "proxies".into(),
        checks,
    }
}

/// A proxy's certificate, from its expiry gauge (`Ok(None)`: the gauge is missing; `0`: the
/// proxy has no certificate yet).
pub fn proxy_cert_check(
    name: &str,
    not_after: Result<Option<f64>, String>,
    now: f64,
    warning: Duration,
) -> Check {
    let what = format!("{name} certificate");
    let renew = format!(
        "check the proxy reaches the identity service ({}) and see its log (weft_identity_client_consecutive_failures in its /metrics counts failed renewals)",
        weft_proxy::config::ENV_IDENTITY_ADDR
    );
    match not_after {
        Err(e) => Check::failure(
            format!("{what} is valid"),
            format!("its /metrics cannot be read: {e}"),
            "see the proxy's log",
        ),
        Ok(None) => Check::warning(
            format!("{what} expiry is known"),
            format!("its /metrics have no {PROXY_CERT_EXPIRY}"),
            "upgrade the proxy to a weft version that exports it",
        ),
        Ok(Some(v)) if v <= 0.0 => Check::failure(
            format!("{what} is valid"),
            "the proxy has no certificate yet",
            format!(
                "check its bootstrap token ({}) and that it reaches the identity service ({})",
                weft_proxy::config::ENV_TOKEN_FILE,
                weft_proxy::config::ENV_IDENTITY_ADDR
            ),
        ),
        Ok(Some(v)) => expiry_check(
            &what,
            judge::expiry(now, v, warning),
            warning,
            |left| {
                let detail = format!(
                    "it expires in {left} (under --expiry-warning {}); proxies renew at about 70% of the lifetime",
                    judge::human(warning)
                );
                let fix = format!(
                    "if the lifetime is short on purpose, raise `weft identity --leaf-lifetime` ({}) or lower --expiry-warning; if it does not renew, {renew}",
                    weft_identity::config::ENV_LEAF_LIFETIME
                );
                (detail, fix)
            },
            |ago| (format!("it expired {ago} ago"), renew.clone()),
        ),
    }
}

/// One component's clock against ours.
pub fn clock_check(c: &Clock, max: Duration) -> Check {
    let what = format!("{} clock", c.component);
    let Some(date) = &c.date else {
        return Check::warning(
            format!("{what} is in sync"),
            "its answer had no Date header, so its clock cannot be compared",
            "compare its clock with this machine's by hand (`date -u` on both)",
        );
    };
    let Some(at) = judge::parse_http_date(date) else {
        return Check::warning(
            format!("{what} is in sync"),
            format!("its Date header `{date}` is not an HTTP date"),
            "compare its clock with this machine's by hand (`date -u` on both)",
        );
    };
    let skew = judge::skew(at, c.sent, c.received);
    if skew.abs() <= max.as_secs_f64() {
        Check::ok(format!("{what} is {}", judge::describe_skew(skew)))
    } else {
        Check::failure(
            format!("{what} is within {} of this machine's", judge::human(max)),
            format!("it is {}", judge::describe_skew(skew)),
            "sync both clocks with NTP (`timedatectl set-ntp true`, chrony): on skewed hosts certificates are not yet valid or expire early",
        )
    }
}
