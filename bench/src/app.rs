//! The app behind the mesh: answers every request, HTTP/1.1 or HTTP/2 with prior knowledge,
//! with `200 OK` and a fixed body, after reading the request's body if it has one. It may
//! listen on several addresses (`weft-bench intercept`: one port behind the mesh, one
//! reached directly, served by the same process). As cheap as a server can be, so the benchmark measures
//! the path to it, not the app. It runs on a current-thread runtime (one core's worth, like a
//! small workload) and exits on its own when its parent (the benchmark) is gone or after
//! `lifetime`, so an interrupted benchmark leaves nothing running.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Error;

/// Settings of `weft-bench app`.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// At least one address; every one serves the same app.
    pub listen: Vec<SocketAddr>,
    pub body_size: usize,
    /// The app exits after this long whatever happens.
    pub lifetime: Duration,
}

/// Serves until the parent process is gone or `lifetime` has passed.
pub fn serve(cfg: &AppConfig) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the app's runtime: {e}"))?;
    if cfg.listen.is_empty() {
        return Err("the app needs at least one --listen address".into());
    }
    rt.block_on(async {
        let body = Bytes::from(vec![b'x'; cfg.body_size]);
        let mut loops = tokio::task::JoinSet::new();
        for &addr in &cfg.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("app cannot listen on {addr}: {e}"))?;
            loops.spawn(accept_loop(listener, body.clone()));
        }
        tokio::select! {
            // An accept loop only ends with an error.
            Some(r) = loops.join_next() => {
                r.map_err(|e| format!("the app's accept loop failed: {e}"))?
            }
            _ = orphaned_or_expired(cfg.lifetime) => Ok(()),
        }
    })
}

pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    body: Bytes,
) -> Result<(), Error> {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let rsp = hyper::Response::new(Full::new(body.clone()));
            async move {
                // Read the request's body to its end, as an app does (an unread body would
                // cost the connection its keep-alive); without one this is done at once.
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(rsp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Resolves once the process that started the app has exited, or after `lifetime`.
async fn orphaned_or_expired(lifetime: Duration) {
    let parent = std::os::unix::process::parent_id();
    let until = Instant::now() + lifetime;
    while Instant::now() < until && std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
