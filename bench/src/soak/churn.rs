//! What the soak changes while the load runs, besides the certificates (which the identity
//! service's short leaf lifetime rotates on its own): the control plane's resources, edited in
//! turn ([`Edits`]), and a second instance of `api` that leaves and comes back
//! ([`SecondApi`]). Each step is quick and never blocks the soak's loop for long: a change is
//! started, then polled on the loop's next ticks until it shows (or its deadline passes, which
//! is a problem the report names).

use std::time::{Duration, Instant};

use weft_runtime::testing::metric_sum;

use crate::Error;
use crate::mesh::{Mesh, POLICY_NAME, Proxy, RESOURCES_FILE, WEB_ID, services_yaml};

use super::Log;

/// The soak's HTTPRoute (namespace `default`) and its file in the control plane's directory.
pub const ROUTE_NAME: &str = "soak";
pub const ROUTE_FILE: &str = "soak-route.yaml";
/// How long the control plane may take to load an edit (it reads its directory every 200 ms).
const EDIT_DEADLINE: Duration = Duration::from_secs(5);
/// How long the second api proxy may take to exit after SIGTERM: its shutdown grace (10 s by
/// default) and a margin. Past it, it is killed and the report says so.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);
/// How long it may take to become ready after it is started.
const READY_DEADLINE: Duration = crate::mesh::READY_TIMEOUT;

/// The route's states, in the order the edits take them: what each one is (for the log) and
/// its YAML (`None`: no route, the service's default route). Every one routes the load's
/// `GET /` to api's workloads and must not fail a request: the two backends select every api
/// workload (`stack::backends_yaml`), the timeouts are far above any latency of the mesh.
pub fn route_variants(port: u16) -> [(&'static str, Option<String>); 3] {
    let route = |rule: &str| {
        format!(
            "kind: HTTPRoute\nmetadata: {{name: {ROUTE_NAME}, namespace: default}}\nspec:\n  \
             parentRefs: [{{name: api, port: {port}}}]\n  rules:\n    - name: split\n{rule}"
        )
    };
    [
        ("no route (the service's default route)", None),
        (
            "split api-v1/api-v2 50/50, 5 s request timeout, 2 retries on 503 and connect failures",
            Some(route(&format!(
                "      backendRefs: [{{name: api-v1, port: {port}, weight: 50}}, {{name: api-v2, port: {port}, weight: 50}}]\n      \
                 timeouts: {{request: 5s}}\n      \
                 retry: {{attempts: 2, codes: [503], conditions: [connect-failure], budget: {{ratio: 0.2, minPerSecond: 10, ttl: 10s}}}}\n"
            ))),
        ),
        (
            "split api-v1/api-v2 90/10, 10 s request timeout, 5 s per attempt, default retries",
            Some(route(&format!(
                "      backendRefs: [{{name: api-v1, port: {port}, weight: 90}}, {{name: api-v2, port: {port}, weight: 10}}]\n      \
                 timeouts: {{request: 10s, backendRequest: 5s}}\n"
            ))),
        ),
    ]
}

/// The authorization policy's states (the whole of `mesh.yaml`: the services and the one
/// policy on api's port, which the edits rewrite), each still allowing web's `GET /`.
pub fn policy_variants(port: u16) -> [(&'static str, String); 3] {
    let with = |allow: &str| {
        format!(
            "{}---\nkind: AuthorizationPolicy\nmetadata: {{name: {POLICY_NAME}, namespace: default}}\n\
             spec:\n  target: {{service: api, port: {port}}}\n  allow:\n{allow}",
            services_yaml(port)
        )
    };
    [
        (
            "web, every route",
            with(&format!("    - identities: [\"{WEB_ID}\"]\n")),
        ),
        (
            "web, GET and POST under /",
            with(&format!(
                "    - identities: [\"{WEB_ID}\"]\n      \
                 routes: [{{path: {{type: PathPrefix, value: /}}, methods: [GET, POST]}}]\n"
            )),
        ),
        (
            "namespace default, and /health for another namespace's identity",
            with(
                "    - namespaces: [default]\n    \
                 - identities: [\"spiffe://weft.local/ns/batch/sa/report\"]\n      \
                 routes: [{path: {type: Exact, value: /health}, methods: [GET]}]\n",
            ),
        ),
    ]
}

/// The edits: route and policy in turn, each to its next state, every `every`; an edit
/// counts once the control plane's `/status` shows a new content hash and no error.
#[derive(Debug)]
pub(crate) struct Edits {
    routes: [(&'static str, Option<String>); 3],
    policies: [(&'static str, String); 3],
    /// Edits started so far; the next is a route edit when even.
    started: usize,
    route: usize,
    policy: usize,
    pending: Option<Pending>,
    /// Seconds each applied edit took to show in the control plane's status.
    pub(crate) applied_seconds: Vec<f64>,
}

#[derive(Debug)]
struct Pending {
    what: String,
    since: Instant,
    hash_before: Option<String>,
}

impl Edits {
    pub(crate) fn new(port: u16) -> Self {
        Self {
            routes: route_variants(port),
            policies: policy_variants(port),
            started: 0,
            route: 0,
            policy: 0,
            pending: None,
            applied_seconds: Vec::new(),
        }
    }

    /// Whether an edit is waiting to show.
    pub(crate) fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Starts the next edit.
    pub(crate) fn start_next(&mut self, mesh: &Mesh, log: &mut Log) -> Result<(), Error> {
        let hash_before = config_hash(&mesh.policy_status()?).map(|(_, h)| h);
        let what = if self.started % 2 == 0 {
            self.route = (self.route + 1) % self.routes.len();
            let (what, yaml) = &self.routes[self.route];
            mesh.set_resource(ROUTE_FILE, yaml.as_deref())?;
            format!("route → {what}")
        } else {
            self.policy = (self.policy + 1) % self.policies.len();
            let (what, yaml) = &self.policies[self.policy];
            mesh.set_resource(RESOURCES_FILE, Some(yaml))?;
            format!("policy → {what}")
        };
        self.started += 1;
        log.event(format!("edit {}: {what}", self.started));
        self.pending = Some(Pending {
            what,
            since: Instant::now(),
            hash_before,
        });
        Ok(())
    }

    /// Looks whether the pending edit shows in the control plane's status yet.
    pub(crate) fn poll(&mut self, mesh: &Mesh, log: &mut Log) -> Result<(), Error> {
        let Some(p) = &self.pending else {
            return Ok(());
        };
        let status = mesh.policy_status()?;
        match config_hash(&status) {
            Some((true, hash)) if Some(&hash) != p.hash_before.as_ref() => {
                let took = p.since.elapsed().as_secs_f64();
                log.event(format!(
                    "edit {} loaded by the control plane in {took:.2} s",
                    self.started
                ));
                self.applied_seconds.push(took);
                self.pending = None;
            }
            _ if p.since.elapsed() > EDIT_DEADLINE => {
                log.problem(format!(
                    "edit {} ({}) did not show in the control plane's status within \
                     {EDIT_DEADLINE:?} (a new hash, no error); its status: {status}",
                    self.started, p.what
                ));
                self.pending = None;
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn started(&self) -> usize {
        self.started
    }
}

/// The certificate renewals a client made, from its metrics page.
pub(crate) fn renewals(metrics: &str) -> f64 {
    metric_sum(
        metrics,
        "weft_identity_client_certify_total",
        &["kind=\"renewal\"", "result=\"ok\""],
    )
}

/// Whether the control plane's `/status` shows a valid configuration, and its content hash;
/// `None` when the page is not the expected JSON.
pub(crate) fn config_hash(status: &str) -> Option<(bool, String)> {
    let v: serde_json::Value = serde_json::from_str(status).ok()?;
    let valid = v.get("valid")?.as_bool()?;
    let hash = v.get("config")?.get("summary")?.get("hash")?.as_str()?;
    Some((valid, hash.to_string()))
}

/// One life of the second api instance, as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Life {
    pub number: u32,
    /// Seconds from the soak's start.
    pub started_at: f64,
    /// Seconds it took to answer `/ready`.
    pub ready_after: Option<f64>,
    /// Inbound requests it had served when it was sent SIGTERM (or the soak ended).
    pub requests_served: Option<f64>,
    /// Certificate renewals it had made by then.
    pub renewals: Option<f64>,
    pub sigterm_at: Option<f64>,
    /// Seconds from SIGTERM to its exit.
    pub drained_in: Option<f64>,
    /// Its exit status (`exit status: 0` for a clean exit).
    pub exit: Option<String>,
}

#[derive(Debug)]
enum Phase {
    Starting,
    Up,
    Draining,
    Down,
}

/// A second proxy of workload `api`, in front of the same app (a proxy forwards inbound to
/// `127.0.0.1:<the service's port>`, which on one machine is one app): an endpoint of `api`
/// that comes (starts, registers, becomes ready) and goes (SIGTERM: not ready, deregistered,
/// drains its requests in flight, exits), on fresh ports each life as a restarted pod would
/// get a new address.
#[derive(Debug)]
pub(crate) struct SecondApi {
    proxy: Option<Proxy>,
    phase: Phase,
    since: Instant,
    app_port: u16,
    pub(crate) lives: Vec<Life>,
}

/// The name of the second api instance's process in the report (`api-2 #3`: its third life).
pub const SECOND_API: &str = "api-2 proxy";

impl SecondApi {
    /// A second api instance, not started.
    pub(crate) fn new(app_port: u16) -> Self {
        Self {
            proxy: None,
            phase: Phase::Down,
            since: Instant::now(),
            app_port,
            lives: Vec::new(),
        }
    }

    /// Its PID while its process runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(|p| p.proc.pid())
    }

    /// Whether it is up or down (not on its way between them).
    pub(crate) fn settled(&self) -> bool {
        matches!(self.phase, Phase::Up | Phase::Down)
    }

    /// Starts a new life (when down) or stops the current one with SIGTERM (when up).
    pub(crate) fn toggle(&mut self, mesh: &Mesh, log: &mut Log) -> Result<(), Error> {
        match self.phase {
            Phase::Down => {
                let number = self.lives.len() as u32 + 1;
                let name = format!("api-2.{number}");
                self.proxy = Some(mesh.launcher.spawn(&name, "api", self.app_port)?);
                self.lives.push(Life {
                    number,
                    started_at: log.now(),
                    ready_after: None,
                    requests_served: None,
                    renewals: None,
                    sigterm_at: None,
                    drained_in: None,
                    exit: None,
                });
                log.event(format!("{SECOND_API} #{number} started"));
                self.enter(Phase::Starting);
            }
            Phase::Up => {
                self.read_counts();
                let (Some(proxy), Some(life)) = (&self.proxy, self.lives.last_mut()) else {
                    return Err("the second api instance is up without a process".into());
                };
                weft_runtime::child::sigterm(&[proxy.proc.pid()])
                    .map_err(|e| format!("cannot send SIGTERM to {SECOND_API}: {e}"))?;
                life.sigterm_at = Some(log.now());
                log.event(format!(
                    "{SECOND_API} #{} sent SIGTERM (it had served {} requests)",
                    life.number,
                    life.requests_served
                        .map_or("?".into(), |n| format!("{n:.0}"))
                ));
                self.enter(Phase::Draining);
            }
            Phase::Starting | Phase::Draining => {}
        }
        Ok(())
    }

    /// Moves on when a start or a stop has completed (or has taken too long).
    pub(crate) fn poll(&mut self, log: &mut Log) {
        let (Some(proxy), Some(life)) = (self.proxy.as_mut(), self.lives.last_mut()) else {
            return;
        };
        match self.phase {
            Phase::Starting => {
                if proxy.is_ready() {
                    let took = self.since.elapsed().as_secs_f64();
                    life.ready_after = Some(took);
                    log.event(format!(
                        "{SECOND_API} #{} ready after {took:.2} s",
                        life.number
                    ));
                    self.enter(Phase::Up);
                } else if let Some(status) = proxy.proc.exited() {
                    log.problem(format!(
                        "{SECOND_API} #{} exited ({status}) before it was ready; its log:\n{}",
                        life.number,
                        proxy.proc.log_tail(20)
                    ));
                    self.proxy = None;
                    self.enter(Phase::Down);
                } else if self.since.elapsed() > READY_DEADLINE {
                    log.problem(format!(
                        "{SECOND_API} #{} was not ready within {READY_DEADLINE:?}; its log:\n{}",
                        life.number,
                        proxy.proc.log_tail(20)
                    ));
                    self.proxy = None;
                    self.enter(Phase::Down);
                }
            }
            Phase::Draining => {
                if let Some(status) = proxy.proc.exited() {
                    let took = self.since.elapsed().as_secs_f64();
                    life.drained_in = Some(took);
                    life.exit = Some(status.to_string());
                    log.event(format!(
                        "{SECOND_API} #{} exited ({status}) {took:.2} s after SIGTERM",
                        life.number
                    ));
                    if !status.success() {
                        log.problem(format!(
                            "{SECOND_API} #{} exited with {status} after SIGTERM, not 0; its \
                             log:\n{}",
                            life.number,
                            proxy.proc.log_tail(20)
                        ));
                    }
                    self.proxy = None;
                    self.enter(Phase::Down);
                } else if self.since.elapsed() > DRAIN_DEADLINE {
                    log.problem(format!(
                        "{SECOND_API} #{} was still running {DRAIN_DEADLINE:?} after SIGTERM \
                         (killed); its log:\n{}",
                        life.number,
                        proxy.proc.log_tail(20)
                    ));
                    self.proxy = None;
                    self.enter(Phase::Down);
                }
            }
            Phase::Up | Phase::Down => {}
        }
    }

    /// Reads the current life's requests served and renewals from its metrics.
    pub(crate) fn read_counts(&mut self) {
        let (Some(proxy), Some(life)) = (&self.proxy, self.lives.last_mut()) else {
            return;
        };
        if let Ok(m) = proxy.metrics() {
            life.requests_served = Some(metric_sum(
                &m,
                "weft_proxy_requests_total",
                &["direction=\"inbound\""],
            ));
            life.renewals = Some(renewals(&m));
        }
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.since = Instant::now();
    }
}
