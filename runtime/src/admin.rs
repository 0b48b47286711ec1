//! The admin endpoint every weft process has: `/metrics` (Prometheus text), `/live` and
//! `/ready`. Components can add their own read-only pages through `extra`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Registry;
use crate::serve::{self, FullResponse};

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An extra admin page: path → body (JSON or text) computed on request.
pub type ExtraPage = Arc<dyn Fn(&str) -> Option<FullResponse> + Send + Sync>;

/// What the admin endpoint serves.
#[derive(Clone)]
pub struct Admin {
    pub registry: Registry,
    /// `/ready` answers 200 while this holds `true` (and `extra` has nothing to say of it),
    /// 503 otherwise.
    pub ready: watch::Receiver<bool>,
    /// Pages of the component's own, asked first: one may answer `/ready` with why the
    /// component is not ready.
    pub extra: Option<ExtraPage>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("ready", &*self.ready.borrow())
            .finish_non_exhaustive()
    }
}

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn run(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let upkeep_registry = admin.registry.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep_registry.upkeep();
        }
    });
    let admin = Arc::new(admin);
    serve::serve(
        listener,
        None,
        move |req, _info| {
            let admin = admin.clone();
            async move { handle(&admin, req.method(), req.uri().path()) }
        },
        shutdown,
    )
    .await;
    upkeep.abort();
}

fn handle(admin: &Admin, method: &Method, path: &str) -> FullResponse {
    if method != Method::GET && method != Method::HEAD {
        return serve::respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    if let Some(page) = admin.extra.as_ref().and_then(|extra| extra(path)) {
        return page;
    }
    match path {
        "/metrics" => serve::respond(StatusCode::OK, PROMETHEUS_TEXT, admin.registry.render()),
        "/live" => serve::respond(StatusCode::OK, "text/plain", "live\n"),
        "/ready" => {
            if *admin.ready.borrow() {
                serve::respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                serve::respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        _ => serve::respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the admin endpoint serves /metrics, /live and /ready\n",
        ),
    }
}
