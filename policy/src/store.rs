//! The served state and its versions.
//!
//! A [`State`] is immutable: the compiled resources, the live registrations and a revision
//! number. Every change (a valid directory edit, a registration that changes something, a
//! lease that lapses) publishes a new `State` on a `tokio::sync::watch`, which every API watch
//! follows; a slow watcher skips straight to the newest state.
//!
//! What a client watches (the endpoints, inbound policy or routes of one service) is rendered
//! from a state once, whatever the number of watchers, and carries a version: the hash of its
//! content. Only names that exist are kept so: a name no resource defines and no workload
//! registered is rendered for each request and dropped with it. A client that resumes with the version it holds is told nothing changed, even
//! across control-plane restarts.
//!
//! `Store` is the seam where a replicated backend would go: everything else only calls
//! `subscribe`, `current`, `set_config` and the registry methods.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::etcd::registry::{Unchanged, Write};
use crate::load::{Config, Summary, ValidationError};
use crate::metrics::Metrics;
use crate::registry::{
    APP_LABEL, AddressEndpoint, AddressInfo, Refusal, Registry, ServiceEndpoints, Upsert, Workload,
    selects,
};

mod rendered;
mod shared;

pub use self::rendered::Rendered;
use self::shared::Shared;

/// What a client can watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Key {
    Endpoints {
        namespace: String,
        service: String,
    },
    Inbound {
        namespace: String,
        service: String,
    },
    Routes {
        namespace: String,
        service: String,
    },
    /// What the mesh knows of an IP address (transparent mode: a proxy that intercepted a
    /// connection to it).
    Address {
        ip: IpAddr,
    },
}

impl Key {
    /// Index into [`crate::metrics::WATCH_KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            Key::Endpoints { .. } => 0,
            Key::Inbound { .. } => 1,
            Key::Routes { .. } => 2,
            Key::Address { .. } => 3,
        }
    }
}

/// A line of the discovery stream (and what it carries), made once.
type OnceLine = Arc<OnceLock<(Bytes, crate::stream::Sent)>>;

/// One immutable version of everything served.
#[derive(Debug)]
pub struct State {
    pub revision: u64,
    pub config: Arc<Config>,
    /// Live registrations, sorted by namespace and address.
    pub workloads: Arc<Vec<Workload>>,
    /// Each existing item, rendered once: the first to ask renders it while the others wait
    /// for it (thousands of streams wake at a change, and an item of 5,000 endpoints takes
    /// milliseconds to render: each rendering it was most of a change's delivery time).
    memo: Mutex<HashMap<Key, Arc<OnceLock<Arc<Rendered>>>>>,
    /// The `DELTA` lines made in this state: (key, base version) → line, made once (as
    /// `memo`).
    deltas: Mutex<HashMap<(Key, String), OnceLine>>,
}

impl State {
    fn new(revision: u64, config: Arc<Config>, workloads: Arc<Vec<Workload>>) -> Self {
        Self {
            revision,
            config,
            workloads,
            memo: Mutex::new(HashMap::new()),
            deltas: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoints of a service: its static endpoints and every registered workload of its
    /// namespace that its selector selects.
    pub fn endpoints(&self, namespace: &str, service: &str) -> ServiceEndpoints {
        let selector = self.config.selector(namespace, service);
        let def = self
            .config
            .services
            .get(&(namespace.to_string(), service.to_string()));
        let mut endpoints: Vec<_> = def.map(|d| d.endpoints.clone()).unwrap_or_default();
        endpoints.extend(
            self.workloads
                .iter()
                .filter(|w| w.namespace == namespace && selects(&selector, &w.labels))
                .map(|w| Arc::new(w.endpoint())),
        );
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        ServiceEndpoints {
            namespace: namespace.to_string(),
            service: service.to_string(),
            ports: def.map(|d| d.ports.clone()).unwrap_or_default(),
            opaque_ports: def.map(|d| d.opaque_ports.clone()).unwrap_or_default(),
            endpoints,
            unknown: false,
        }
    }

    /// Every endpoint at `ip`: registered workloads whose address has that IP, and static
    /// endpoints of `Service` resources with that IP, each with its service.
    pub fn address(&self, ip: IpAddr) -> AddressInfo {
        let mut endpoints: Vec<AddressEndpoint> = self
            .config
            .services
            .iter()
            .flat_map(|((namespace, service), def)| {
                def.endpoints
                    .iter()
                    .filter(|e| e.address.ip() == ip)
                    .map(|e| AddressEndpoint {
                        namespace: namespace.clone(),
                        service: service.clone(),
                        endpoint: (**e).clone(),
                        opaque_ports: def.opaque_ports.clone(),
                    })
            })
            .chain(
                self.workloads
                    .iter()
                    .filter(|w| w.address.ip() == ip)
                    .map(|w| AddressEndpoint {
                        namespace: w.namespace.clone(),
                        service: w.service.clone(),
                        endpoint: w.endpoint(),
                        opaque_ports: self.config.opaque_ports(&w.namespace, &w.service),
                    }),
            )
            .collect();
        endpoints.sort_by(|a, b| {
            (&a.namespace, &a.service, a.endpoint.address).cmp(&(
                &b.namespace,
                &b.service,
                b.endpoint.address,
            ))
        });
        endpoints.dedup_by(|a, b| {
            a.namespace == b.namespace
                && a.service == b.service
                && a.endpoint.address == b.endpoint.address
        });
        AddressInfo { ip, endpoints }
    }

    /// The item `key` names: rendered once per state if the name exists (a resource defines
    /// it or a workload registered it), for every request otherwise, so a client asking for
    /// names that do not exist leaves nothing behind.
    pub fn render(&self, key: &Key) -> Arc<Rendered> {
        let memoized = self
            .memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        if let Some(cell) = memoized {
            return cell.get_or_init(|| self.render_now(key, true)).clone();
        }
        if !self.exists(key) {
            return self.render_now(key, false);
        }
        let cell = self
            .memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        cell.get_or_init(|| self.render_now(key, true)).clone()
    }

    fn render_now(&self, key: &Key, exists: bool) -> Arc<Rendered> {
        Arc::new(match key {
            Key::Endpoints { namespace, service } => {
                let mut endpoints = self.endpoints(namespace, service);
                endpoints.unknown = !exists;
                let mut r = self.rendered(&endpoints);
                r.endpoints = Some(Arc::new(endpoints));
                r
            }
            Key::Inbound { namespace, service } => {
                self.rendered(&self.config.workload_policy(namespace, service))
            }
            Key::Routes { namespace, service } => {
                self.rendered(&self.config.service_routes(namespace, service))
            }
            Key::Address { ip } => self.rendered(&self.address(*ip)),
        })
    }

    /// Whether what `key` names exists in this state: a service some resource names or some
    /// registered workload belongs to, or an address with an endpoint. Only these are
    /// memoized: their number is bounded by the resources and the registry, not by what
    /// clients ask.
    fn exists(&self, key: &Key) -> bool {
        match key {
            Key::Endpoints { namespace, service }
            | Key::Inbound { namespace, service }
            | Key::Routes { namespace, service } => {
                let name = (namespace.clone(), service.clone());
                self.config.services.contains_key(&name)
                    || self.config.inbound.contains_key(&name)
                    || self.config.routes.contains_key(&name)
                    || self.workloads.iter().any(|w| {
                        w.namespace == *namespace
                            && (w.service == *service || w.labels.get(APP_LABEL) == Some(service))
                    })
            }
            Key::Address { ip } => {
                self.workloads.iter().any(|w| w.address.ip() == *ip)
                    || self
                        .config
                        .services
                        .values()
                        .any(|d| d.endpoints.iter().any(|e| e.address.ip() == *ip))
            }
        }
    }
}

/// How the last loads of the resource directory went, for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// The directory served.
    pub dir: String,
    /// What is served.
    pub summary: Summary,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// The last rejected change, if it is still the directory's current content.
    pub last_error: Option<LoadError>,
    /// Why the store (etcd) cannot be followed now, if it cannot: the last valid resources
    /// stay served meanwhile.
    pub store_error: Option<String>,
}

/// A rejected change.
#[derive(Debug, Clone, Serialize)]
pub struct LoadError {
    pub at: String,
    /// One line per problem, each naming file, document and field.
    pub errors: Vec<String>,
}

/// The state and its writers.
#[derive(Debug)]
pub struct Store {
    tx: watch::Sender<Arc<State>>,
    /// The workloads' leases held by this replica.
    registry: Mutex<Registry>,
    /// Registrations shared with other replicas through etcd ([`Store::share`]).
    shared: std::sync::OnceLock<Shared>,
    status: Mutex<ConfigStatus>,
    expiry: Notify,
    metrics: Metrics,
}

impl Store {
    /// The store serving `config` (loaded from `dir`), where one identity holds at most
    /// `max_registrations_per_identity` registrations.
    pub fn new(
        config: Config,
        dir: String,
        metrics: Metrics,
        max_registrations_per_identity: usize,
    ) -> Arc<Self> {
        let status = ConfigStatus {
            dir,
            summary: config.summary.clone(),
            loaded_at: weft_identity::rfc3339(SystemTime::now()),
            last_error: None,
            store_error: None,
        };
        metrics.config_valid.set(1.0);
        metrics
            .config_last_reload
            .set(weft_runtime::metrics::unix_seconds(SystemTime::now()));
        metrics.revision.set(1.0);
        let state = State::new(1, Arc::new(config), Arc::new(Vec::new()));
        Arc::new(Self {
            tx: watch::Sender::new(Arc::new(state)),
            registry: Mutex::new(Registry::new(max_registrations_per_identity)),
            shared: std::sync::OnceLock::new(),
            status: Mutex::new(status),
            expiry: Notify::new(),
            metrics,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<State> {
        self.tx.borrow().clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves a new valid resource set.
    pub fn set_config(&self, config: Config) {
        {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            status.summary = config.summary.clone();
            status.loaded_at = weft_identity::rfc3339(SystemTime::now());
            status.last_error = None;
        }
        self.metrics.config_valid.set(1.0);
        self.metrics
            .config_last_reload
            .set(weft_runtime::metrics::unix_seconds(SystemTime::now()));
        let config = Arc::new(config);
        self.publish(|old| (config, old.workloads.clone()));
    }

    /// A changed resource set from `source`: served if it compiled, else rejected as a whole
    /// (the last valid set stays served), logged either way.
    pub fn serve_changed(&self, compiled: Result<Config, Vec<ValidationError>>, source: &str) {
        match compiled {
            Ok(config) => {
                tracing::info!(
                    files = config.summary.files,
                    documents = config.summary.documents,
                    hash = %config.summary.hash,
                    "{source} changed: new set served"
                );
                self.metrics.reload_ok.increment(1);
                self.set_config(config);
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("invalid resource: {e}");
                }
                tracing::error!(
                    errors = errors.len(),
                    "the change to {source} is rejected as a whole; the last valid resources stay served"
                );
                self.metrics.reload_error.increment(1);
                self.config_rejected(&errors);
            }
        }
    }

    /// Records whether the store can be followed (`None`: it can), for `/status`.
    pub fn store_unavailable(&self, error: Option<String>) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.store_error = error;
    }

    /// Records a rejected change; the served state does not change.
    pub fn config_rejected(&self, errors: &[ValidationError]) {
        self.metrics.config_valid.set(0.0);
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_error = Some(LoadError {
            at: weft_identity::rfc3339(SystemTime::now()),
            errors: errors.iter().map(ToString::to_string).collect(),
        });
    }

    /// Shares the registrations with other replicas through etcd: from now on this replica
    /// serves what [`Store::set_shared_workloads`] gives it (every replica's registrations),
    /// and what it registers, removes or lets lapse is sent on the channel returned, for
    /// etcd ([`crate::etcd::registry`]).
    pub fn share(&self) -> tokio::sync::mpsc::UnboundedReceiver<Write> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = self.shared.set(Shared {
            writes: tx,
            view: Mutex::new(HashMap::new()),
        });
        rx
    }

    /// Every replica's registrations, as etcd has them: served.
    pub fn set_shared_workloads(&self, registered: Vec<Workload>) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let mut workloads = registered;
        workloads.sort_by(|a, b| (&a.namespace, a.address).cmp(&(&b.namespace, b.address)));
        *shared.view.lock().unwrap_or_else(|e| e.into_inner()) = workloads
            .iter()
            .map(|w| ((w.namespace.clone(), w.address), w.clone()))
            .collect();
        self.metrics
            .endpoints_registered
            .set(workloads.len() as f64);
        let workloads = Arc::new(workloads);
        self.publish(|old| (old.config.clone(), workloads));
    }

    /// The registrations this replica holds (their workloads renew them here).
    pub fn held_workloads(&self) -> Vec<Workload> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.workloads()
    }

    /// Registers or renews a workload for `lease`.
    pub fn register(&self, w: Workload, lease: Duration) -> Result<(), Refusal> {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = self.shared.get() {
            let registered = shared.register(&mut reg, w, lease);
            self.expiry.notify_one();
            return registered;
        }
        let outcome = reg.upsert(w, lease, Instant::now());
        match outcome {
            Ok(Upsert::Changed) => {
                let workloads = Arc::new(reg.workloads());
                self.metrics
                    .endpoints_registered
                    .set(workloads.len() as f64);
                self.publish(|old| (old.config.clone(), workloads));
                self.expiry.notify_one();
            }
            Ok(Upsert::Renewed) => self.expiry.notify_one(),
            Err(_) => {}
        }
        outcome.map(|_| ())
    }

    /// Removes a workload's registration (when it shuts down cleanly) if `holder` holds it
    /// (`None`: whoever does, in development mode).
    pub fn deregister(
        &self,
        namespace: &str,
        address: std::net::SocketAddr,
        holder: Option<Option<&weft_identity::SpiffeId>>,
    ) -> bool {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = self.shared.get() {
            return shared.deregister(&mut reg, namespace, address, holder);
        }
        let removed = reg.remove(namespace, address, holder);
        if removed {
            let workloads = Arc::new(reg.workloads());
            self.metrics
                .endpoints_registered
                .set(workloads.len() as f64);
            self.publish(|old| (old.config.clone(), workloads));
        }
        removed
    }

    /// Drops lapsed leases as they lapse, until `shutdown`.
    pub async fn expire_leases(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let next = {
                let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                let gone = reg.expire(Instant::now());
                if !gone.is_empty() {
                    for w in &gone {
                        tracing::info!(
                            namespace = %w.namespace,
                            service = %w.service,
                            address = %w.address,
                            identity = w.identity.as_ref().map(|i| i.as_str()).unwrap_or("-"),
                            "lease lapsed: endpoint removed"
                        );
                    }
                    self.metrics.leases_expired.increment(gone.len() as u64);
                    match self.shared.get() {
                        // Served once etcd has them removed.
                        Some(shared) => {
                            for w in gone {
                                shared.send(Write::Delete {
                                    namespace: w.namespace,
                                    address: w.address,
                                    only_if: Unchanged::OnMyLease,
                                });
                            }
                        }
                        None => {
                            let workloads = Arc::new(reg.workloads());
                            self.metrics
                                .endpoints_registered
                                .set(workloads.len() as f64);
                            self.publish(|old| (old.config.clone(), workloads));
                        }
                    }
                }
                reg.next_expiry()
            };
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = sleep => {}
                _ = self.expiry.notified() => {}
            }
        }
    }

    fn publish(&self, next: impl FnOnce(&State) -> (Arc<Config>, Arc<Vec<Workload>>)) {
        self.tx.send_modify(|state| {
            let (config, workloads) = next(state);
            let revision = state.revision + 1;
            self.metrics.revision.set(revision as f64);
            *state = Arc::new(State::new(revision, config, workloads));
        });
    }
}
