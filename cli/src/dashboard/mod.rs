//! `weft dashboard`: the mesh at a glance in a browser, live. Per service and per route: the
//! golden signals (success rate, requests/s, p50/p95/p99) with charts of the last minutes; the
//! service graph (who calls whom, under which mTLS identity); and the recent requests the
//! policy denied, with the policy that denied them.
//!
//! A collector thread scrapes every proxy (listed by the control plane, as `weft stat` does)
//! each `--interval`; the server hands out what it computed last. The page, its script and its
//! style are in the binary: nothing to build or fetch.
//!
//! # HTTP API (all `GET`)
//! - `/api/overview`: everything the page shows ([`collect::Overview`]).
//! - `/api/stat`, `/api/routes`, `/api/routes?backends`: the same JSON as `weft stat -o json`,
//!   `weft routes -o json` and `weft routes --backends -o json`, over `--window`.
//! - `/live`; `/ready` (200 once the first round is in).

pub mod collect;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use weft_runtime::config::parse_duration;

use self::collect::{Collector, Overview, Source};

/// Where the dashboard listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9994";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Only the page's own script and style; nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Where to serve the page (it has no authentication: keep it on loopback).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub policy_admin: crate::context::PolicyAdmin,
    /// Scrape these proxy admin addresses instead of asking the control plane (repeatable).
    #[arg(long = "proxy-admin")]
    pub proxies: Vec<String>,
    /// The window rates and quantiles are computed over, as `weft stat --window`.
    #[arg(long, default_value = "30s", value_parser = crate::stat::parse_window)]
    pub window: Duration,
    /// How often to scrape the proxies (and the page to refresh).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(500) {
        return Err("the interval must be at least 500ms".into());
    }
    Ok(d)
}

/// What the server hands out: the last round, rendered once.
#[derive(Debug)]
struct Rendered {
    ready: bool,
    overview: Bytes,
    stat: Bytes,
    routes: Bytes,
    backends: Bytes,
}

impl Default for Rendered {
    /// Before the first round: the page gets an empty overview (`updated_ms` 0) and waits;
    /// the other APIs answer 503.
    fn default() -> Self {
        Self {
            ready: false,
            overview: serde_json::to_vec(&Overview::default())
                .map(Bytes::from)
                .unwrap_or_default(),
            stat: Bytes::new(),
            routes: Bytes::new(),
            backends: Bytes::new(),
        }
    }
}

impl Rendered {
    fn new(o: &Overview) -> Result<Self, serde_json::Error> {
        Ok(Self {
            ready: true,
            overview: serde_json::to_vec(o)?.into(),
            stat: serde_json::to_vec_pretty(&o.services)?.into(),
            routes: serde_json::to_vec_pretty(&o.routes)?.into(),
            backends: serde_json::to_vec_pretty(&o.backends)?.into(),
        })
    }
}

type Shared = Arc<RwLock<Rendered>>;

/// `weft dashboard`: serves until Ctrl-C or SIGTERM.
pub fn run(args: DashboardArgs) -> Result<(), String> {
    // Bound before anything else, so a taken port is the first thing the user hears.
    let listener = std::net::TcpListener::bind(args.listen).map_err(|e| {
        format!(
            "cannot listen on {} ({e}): choose another address with --listen",
            args.listen
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let source = if args.proxies.is_empty() {
        Source::ControlPlane(args.policy_admin.addr())
    } else {
        Source::Proxies(args.proxies.clone())
    };
    let shared = Shared::default();
    spawn_collector(
        Collector::new(source, args.window),
        args.interval,
        shared.clone(),
    )?;
    println!("weft dashboard: http://{addr}/");
    let rt =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        weft_runtime::serve::serve(
            listener,
            None,
            move |req, _info| {
                let shared = shared.clone();
                async move { handle(&shared, req.method(), req.uri()) }
            },
            weft_runtime::process::shutdown_signal(),
        )
        .await;
        Ok(())
    })
}

/// The collector: a thread of its own (scrapes block), one round every `interval`. It ends
/// with the process.
fn spawn_collector(mut c: Collector, interval: Duration, shared: Shared) -> Result<(), String> {
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                let round = c.gather();
                let overview = c.update(round, Instant::now(), collect::now_ms());
                match Rendered::new(&overview) {
                    Ok(r) => *shared.write().unwrap_or_else(|e| e.into_inner()) = r,
                    Err(e) => tracing::error!(error = %e, "cannot encode the overview"),
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the collector: {e}"))
}

type Rsp = weft_runtime::serve::FullResponse;

/// [`weft_runtime::serve::respond`], never cached, never sniffed, under the page's CSP.
fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Rsp {
    let mut rsp = weft_runtime::serve::respond(status, content_type, body);
    let h = rsp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    rsp
}

const JSON: &str = "application/json";

fn handle(shared: &Shared, method: &Method, uri: &http::Uri) -> Rsp {
    if method != Method::GET && method != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    let r = shared.read().unwrap_or_else(|e| e.into_inner());
    let api = |body: &Bytes| {
        if r.ready {
            respond(StatusCode::OK, JSON, body.clone())
        } else {
            respond(
                StatusCode::SERVICE_UNAVAILABLE,
                JSON,
                r#"{"error":"no data yet: the first scrape is under way"}"#,
            )
        }
    };
    match uri.path() {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => respond(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/style.css" => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        "/api/overview" => respond(StatusCode::OK, JSON, r.overview.clone()),
        "/api/stat" => api(&r.stat),
        "/api/routes" => {
            let backends = uri.query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == "backends" || p == "backends=true")
            });
            api(if backends { &r.backends } else { &r.routes })
        }
        "/live" => respond(StatusCode::OK, "text/plain", "live\n"),
        "/ready" if r.ready => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/ready" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the dashboard serves /, /api/overview, /api/stat, /api/routes[?backends], /live and /ready\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(shared: &Shared, target: &str) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let rsp = handle(shared, &Method::GET, &target.parse().unwrap());
        let status = rsp.status();
        let body = block_on(rsp.into_body().collect()).unwrap();
        (status, String::from_utf8(body.to_bytes().to_vec()).unwrap())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn serves_the_page_and_the_same_json_as_stat_and_routes() {
        let shared = Shared::default();
        assert_eq!(get(&shared, "/ready").0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&shared, "/api/stat").0, StatusCode::SERVICE_UNAVAILABLE);
        let (status, overview) = get(&shared, "/api/overview");
        assert_eq!(status, StatusCode::OK);
        assert!(overview.contains(r#""updated_ms":0"#), "{overview}");
        let (status, page) = get(&shared, "/");
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("app.js"), "{page}");
        let o = Overview {
            services: vec![crate::stat::compute::ServiceRow {
                service: "default/api".into(),
                signals: crate::stat::compute::Signals {
                    requests: 10.0,
                    rps: 1.0,
                    success_rate: Some(1.0),
                    p50_ms: None,
                    p95_ms: None,
                    p99_ms: None,
                    tls_percent: Some(100.0),
                },
            }],
            ..Overview::default()
        };
        *shared.write().unwrap() = Rendered::new(&o).unwrap();
        assert_eq!(get(&shared, "/ready").0, StatusCode::OK);
        let (status, stat) = get(&shared, "/api/stat");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stat, serde_json::to_string_pretty(&o.services).unwrap());
        assert_eq!(get(&shared, "/api/routes?backends").1, "[]");
        assert_eq!(get(&shared, "/nope").0, StatusCode::NOT_FOUND);
    }
}
