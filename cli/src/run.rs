//! `weft run [PROXY FLAGS] [--] APP [ARGS...]`: an application and its sidecar as one
//! command, for hosts and VMs without Kubernetes (a systemd unit, a batch job, a shell).
//!
//! The lifecycle a sidecar should have and rarely gets:
//! - **The proxy first.** The app starts only once the proxy is ready (certificate, policy,
//!   registration), so its first call out goes through (istio/istio#11130).
//! - **The app's exit ends it.** When the app exits, the proxy drains and `weft run` exits
//!   with the app's exit code (128 + N for a signal N), so a job finishes
//!   (istio/istio#11045).
//! - **SIGTERM (or SIGINT) drains in order.** It is passed to the app; the proxy turns not
//!   ready, deregisters and refuses new inbound connections, while it keeps serving the app's
//!   outbound calls until the app has exited (linkerd/linkerd2#10379), for at most
//!   `--app-grace` (then SIGKILL); then the proxy drains its outbound side and stops.
//! - **Other signals** (SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) are passed to the app.
//!
//! The app gets `HTTP_PROXY`/`http_proxy` (the proxy's outbound address, which takes
//! proxy-form requests and `CONNECT`) and `NO_PROXY` for loopback, unless `--intercepted`
//! says `weft init` already sends its traffic through the proxy.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use weft_runtime::config::parse_duration;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub proxy: weft_proxy::config::ProxyArgs,
    /// The app's traffic is intercepted (`weft init`): it is not given `HTTP_PROXY`.
    #[arg(long, env = "WEFT_RUN_INTERCEPTED", value_parser = clap::builder::BoolishValueParser::new())]
    pub intercepted: bool,
    /// How long the proxy may take to be ready; the app is not started without it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// After SIGTERM or SIGINT, how long the app has to exit (its outbound calls still go
    /// through meanwhile) before it is killed.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub app_grace: Duration,
    /// The application and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "APP"
    )]
    pub app: Vec<OsString>,
}

/// `weft run`: the app's exit code, or 1 when the proxy could not serve it, 127 when the app
/// could not be started.
pub fn run(args: RunArgs) -> ExitCode {
    let code = match weft_runtime::process::runtime(args.proxy.workers) {
        Ok(rt) => rt.block_on(supervise(args)),
        Err(e) => Err((1, format!("cannot start the runtime: {e}"))),
    };
    match code {
        Ok(code) => ExitCode::from(code),
        Err((code, e)) => {
            eprintln!("weft run: {e}");
            ExitCode::from(code)
        }
    }
}

/// Ends (by turning true) one step of the proxy's shutdown.
fn switch() -> (watch::Sender<bool>, impl Future<Output = ()>) {
    let (tx, rx) = watch::channel(false);
    (tx, weft_runtime::process::wait_true(rx))
}

async fn supervise(args: RunArgs) -> Result<u8, (u8, String)> {
    let fail = |e: String| (1, e);
    let listeners = weft_proxy::run::ProxyListeners::bind(&args.proxy)
        .await
        .map_err(fail)?;
    let admin = listeners
        .admin
        .local_addr()
        .map_err(|e| fail(e.to_string()))?;
    let outbound = listeners
        .outbound
        .first()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| fail(e.to_string()))?;
    let (end_inbound, inbound_ends) = switch();
    let (end_outbound, outbound_ends) = switch();
    // Polled here, beside the app, rather than spawned: the proxy's run is one task.
    let proxy =
        weft_proxy::run::run_in_phases(listeners, args.proxy.clone(), inbound_ends, outbound_ends);
    tokio::pin!(proxy);
    let stop_proxy = |proxy| {
        let _ = end_inbound.send(true);
        let _ = end_outbound.send(true);
        proxy
    };

    // 1. The proxy, ready.
    let mut signals = Signals::new().map_err(fail)?;
    let started = tokio::select! {
        r = wait_ready(admin, args.ready_timeout) => Start::Ready(r),
        r = &mut proxy => Start::Failed(r),
        () = signals.stop() => Start::Stopped,
    };
    match started {
        Start::Ready(Ok(())) => {}
        Start::Ready(Err(e)) => {
            stop_proxy(&mut proxy).await.map_err(fail)?;
            return Err(fail(e));
        }
        Start::Failed(r) => {
            return Err(fail(format!("{}: the app was not started", proxy_end(r))));
        }
        Start::Stopped => {
            stop_proxy(&mut proxy).await.map_err(fail)?;
            return Ok(1);
        }
    }

    // 2. The app.
    let mut app = match app_command(&args, outbound).spawn() {
        Ok(app) => app,
        Err(e) => {
            stop_proxy(&mut proxy).await.map_err(fail)?;
            let app = args.app[0].to_string_lossy();
            return Err((127, format!("cannot start {app}: {e}")));
        }
    };
    let pid = app
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw);
    let send = |sig: Signal| {
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, sig);
        }
    };

    // 3. Until the app exits: signals passed on; SIGTERM also ends the inbound side.
    let mut kill_at: Option<tokio::time::Instant> = None;
    let status = loop {
        let grace_over = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = app.wait() => break status,
            sig = signals.next() => {
                send(sig);
                if (sig == Signal::TERM || sig == Signal::INT) && kill_at.is_none() {
                    tracing::info!(grace = ?args.app_grace, "stopping: the app drains, its outbound calls still go through");
                    let _ = end_inbound.send(true);
                    kill_at = Some(tokio::time::Instant::now() + args.app_grace);
                }
            }
            () = grace_over => {
                tracing::warn!(grace = ?args.app_grace, "the app did not exit in its grace: killed");
                send(Signal::KILL);
                kill_at = None;
            }
            r = &mut proxy => {
                // The proxy failed under the app: the app cannot be served; stop it.
                send(Signal::TERM);
                let _ = tokio::time::timeout(args.app_grace, app.wait()).await;
                send(Signal::KILL);
                let _ = app.wait().await;
                return Err(fail(format!("{}; the app was stopped", proxy_end(r))));
            }
        }
    };

    // 4. The app is gone: the proxy drains and stops; its exit code is ours.
    let status = status.map_err(|e| fail(format!("cannot wait for the app: {e}")))?;
    stop_proxy(&mut proxy).await.map_err(fail)?;
    Ok(exit_code(status))
}

/// How the proxy's start went.
enum Start {
    Ready(Result<(), String>),
    Failed(Result<(), String>),
    Stopped,
}

/// Why the proxy ended before it was asked to.
fn proxy_end(r: Result<(), String>) -> String {
    match r {
        Ok(()) => "the proxy stopped".into(),
        Err(e) => e,
    }
}

/// Waits until the proxy's `/ready` answers 200, at most `limit`.
async fn wait_ready(admin: std::net::SocketAddr, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ready =
            tokio::task::spawn_blocking(move || crate::admin::get_ok(&admin.to_string(), "/ready"))
                .await
                .is_ok_and(|r| r.is_ok());
        if ready {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the proxy was not ready within {limit:?} (--ready-timeout): the app was not started; see the log above for why"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The app's command: its environment, plus `HTTP_PROXY` unless intercepted.
fn app_command(args: &RunArgs, outbound: Option<std::net::SocketAddr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&args.app[0]);
    cmd.args(&args.app[1..]);
    // Readiness is `weft run`'s to report (its proxy's), not the app's.
    cmd.env_remove("NOTIFY_SOCKET");
    if let (false, Some(out)) = (args.intercepted, outbound) {
        let proxy = format!("http://{out}");
        cmd.env("HTTP_PROXY", &proxy).env("http_proxy", &proxy);
        // Loopback stays direct (the app's own local services).
        cmd.env("NO_PROXY", "localhost,127.0.0.1,::1")
            .env("no_proxy", "localhost,127.0.0.1,::1");
    }
    cmd
}

/// An exit code as a shell gives it: the app's, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}

/// The signals `weft run` hears, to pass on to the app.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, String> {
        let on =
            |kind: SignalKind| signal(kind).map_err(|e| format!("cannot listen for signals: {e}"));
        Ok(Self {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
            quit: on(SignalKind::quit())?,
            usr1: on(SignalKind::user_defined1())?,
            usr2: on(SignalKind::user_defined2())?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::TERM,
            _ = self.int.recv() => Signal::INT,
            _ = self.hup.recv() => Signal::HUP,
            _ = self.quit.recv() => Signal::QUIT,
            _ = self.usr1.recv() => Signal::USR1,
            _ = self.usr2.recv() => Signal::USR2,
        }
    }

    /// The next SIGTERM or SIGINT (before the app runs, the others are ignored).
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
