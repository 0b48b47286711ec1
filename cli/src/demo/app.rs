//! `weft demo-app` (hidden): the demo's workloads, a small HTTP/1 server each. One that is
//! given `--call` answers by calling that URL through its sidecar's outbound port (as an
//! `HTTP_PROXY`: absolute-form requests), passing the client's path and `user-agent` on, and
//! prefixes the answer with its name; one without answers itself.
//! [`Upstream`] is the client side, shared with the load generator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HOST, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, Args)]
pub struct AppArgs {
    /// The workload's name, shown in its answers (e.g. api-v2).
    #[arg(long)]
    pub name: String,
    /// Where the app listens (its sidecar's app port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Answer by calling this URL (e.g. http://api/) through the sidecar at --via.
    #[arg(long, requires = "via")]
    pub call: Option<String>,
    /// The sidecar's outbound address.
    #[arg(long)]
    pub via: Option<SocketAddr>,
    /// Percentage of requests answered 503 without further ado (a buggy release).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub fail_percent: u8,
}

pub fn run(args: AppArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(serve(args))
}

async fn serve(args: AppArgs) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("{}: cannot listen on {}: {e}", args.name, args.listen))?;
    let app = Arc::new(App {
        upstream: args.via.map(Upstream::new),
        args,
    });
    let shutdown = weft_runtime::process::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[derive(Debug)]
struct App {
    args: AppArgs,
    upstream: Option<Upstream>,
}

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let name = &self.args.name;
        if self.args.fail_percent > 0 && fastrand::u8(0..100) < self.args.fail_percent {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{name}: failed (demo bug)"),
            );
        }
        let (Some(call), Some(upstream)) = (&self.args.call, &self.upstream) else {
            return text(StatusCode::OK, format!("{name}: ok"));
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{}", call.trim_end_matches('/'), path);
        let ua = req.headers().get(USER_AGENT).cloned();
        match upstream
            .get(&url, ua.as_ref().and_then(|v| v.to_str().ok()))
            .await
        {
            Ok((status, body)) => text(
                status,
                format!("{name} → {}", String::from_utf8_lossy(&body).trim_end()),
            ),
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("{name}: {e}")),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body + "\n")));
    *rsp.status_mut() = status;
    rsp
}

/// HTTP/1 requests through a sidecar's outbound port, on a small pool of kept-alive
/// connections.
#[derive(Debug)]
pub struct Upstream {
    via: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Upstream {
    pub fn new(via: SocketAddr) -> Self {
        Self {
            via,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `GET url` (absolute, e.g. `http://api/x`) with an optional user-agent: the status and
    /// body, or why there is none.
    pub async fn get(
        &self,
        url: &str,
        user_agent: Option<&str>,
    ) -> Result<(StatusCode, Bytes), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let mut req = Request::get(uri);
        req = req.header(HOST, host);
        if let Some(ua) = user_agent {
            req = req.header(USER_AGENT, ua);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad request: {e}"))?;
        let mut sender = self.sender().await?;
        let rsp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request via the sidecar at {} failed: {e}", self.via))?;
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?
            .to_bytes();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        Ok((status, body))
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(mut s) = pooled else { break };
            if !s.is_closed() && s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let stream = tokio::net::TcpStream::connect(self.via)
            .await
            .map_err(|e| format!("cannot connect to the sidecar at {}: {e}", self.via))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with the sidecar failed: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}
