//! A weft process's life: logging, the runtime it runs on, how it learns to stop, and the
//! loopback ports the demo and the tests hand to the children they start.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Log filter (tracing `EnvFilter` syntax).
pub const ENV_LOG: &str = "WEFT_LOG";
pub const DEFAULT_LOG: &str = "info";

/// Logs to stderr, filtered by `WEFT_LOG` (default `info`).
pub fn init_tracing() {
    init_tracing_with_default(DEFAULT_LOG);
}

/// Logs to stderr, filtered by `WEFT_LOG`, or by `default` when it is unset.
pub fn init_tracing_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Completes when the watch holds `true` (or its sender is gone).
pub async fn wait_true(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs a component's `main` future on a multi-threaded runtime until it ends (its shutdown is
/// Ctrl-C or SIGTERM): exit 0, or exit 1 with its error logged and printed as
/// `weft <component>: <error>`.
pub fn run_process(component: &str, main: impl Future<Output = Result<(), String>>) -> ExitCode {
    run_process_on(component, 0, main)
}

/// Tells the service manager this process is ready (systemd's `Type=notify`: `READY=1` on
/// `$NOTIFY_SOCKET`), when it runs under one; nothing otherwise. Every component calls it once
/// it answers `/ready` with 200.
pub fn notify_ready() {
    notify(sd_notify::NotifyState::Ready, "ready");
}

/// Tells the service manager this process is stopping (`STOPPING=1`), when it runs under one.
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping, "stopping");
}

fn notify(state: sd_notify::NotifyState<'_>, what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "cannot tell the service manager (NOTIFY_SOCKET) that the process is {what}");
    }
}

/// A runtime of `workers` threads: 1 is a single-threaded runtime (every task on the main
/// thread: no cross-thread wake-ups), 0 one worker per CPU.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Runtime::new(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// [`run_process`] on a [`runtime`] of `workers` threads.
pub fn run_process_on(
    component: &str,
    workers: usize,
    main: impl Future<Output = Result<(), String>>,
) -> ExitCode {
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft {component}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("weft {component}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A free loopback address for a child process to listen on.
///
/// The port is checked free here and bound by the child a moment later; in between, any
/// outgoing connection on the machine may take an ephemeral port as its local port. So the
/// port is drawn at random below the kernel's ephemeral range when there is room
/// (`/proc/sys/net/ipv4/ip_local_port_range`), and never handed out twice by one process
/// (two children given the same port would fail the same way).
pub fn free_loopback_addr(what: &str) -> Result<SocketAddr, String> {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut given = GIVEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FIRST: u16 = 10_000;
    if low > FIRST + 1000 {
        for _ in 0..500 {
            let addr = SocketAddr::from(([127, 0, 0, 1], fastrand::u16(FIRST..low)));
            if !given.contains(&addr.port()) && std::net::TcpListener::bind(addr).is_ok() {
                given.insert(addr.port());
                return Ok(addr);
            }
        }
    }
    for _ in 0..100 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port for {what}: {e}"))?;
        if given.insert(addr.port()) {
            return Ok(addr);
        }
    }
    Err(format!("cannot find a free port for {what}"))
}

/// An error and its sources, as one line (`a: b: c`), for logs and messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_loopback_addrs_are_free_distinct_and_below_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let addrs: Vec<_> = (0..200)
            .map(|_| free_loopback_addr("a test").unwrap())
            .collect();
        let ports: std::collections::HashSet<_> = addrs.iter().map(|a| a.port()).collect();
        assert_eq!(ports.len(), addrs.len(), "a port was handed out twice");
        for a in &addrs {
            assert!(a.ip().is_loopback());
            if low > 11_000 {
                assert!(a.port() < low, "{a} is in the ephemeral range (from {low})");
            }
        }
        std::net::TcpListener::bind(addrs[0]).expect("the port is free");
    }
}
