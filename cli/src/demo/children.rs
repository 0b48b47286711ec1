//! The demo's child processes: `weft` itself with a subcommand, each in its own process
//! group (so a Ctrl-C in the terminal reaches the demo alone, which then stops them in order),
//! logging to a file, with a pipe on stdin whose end tells it the demo is gone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use weft_runtime::child::{self, Child, Options, Stdin};

/// Set for every child: it exits when its stdin (a pipe from the demo) closes, which happens
/// however the demo ends, even by SIGKILL, so no child outlives it.
pub const ENV_EXIT_WITH_PARENT: &str = "WEFT_DEMO_EXIT_WITH_PARENT";

/// Called first thing in `main`: in a child of the demo, watches stdin and exits at its end.
pub fn exit_with_parent_if_asked() {
    if std::env::var_os(ENV_EXIT_WITH_PARENT).is_none_or(|v| v != "1") {
        return;
    }
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        eprintln!("weft: the demo that started this process is gone; exiting");
        std::process::exit(1);
    });
}

/// One child process.
#[derive(Debug)]
pub struct Proc {
    /// `identity`, `policy`, `app` or `sidecar`.
    pub kind: &'static str,
    /// `what=addr` pairs, for the table.
    pub addrs: String,
    child: Child,
    /// Shutdown tier: lower tiers stop first.
    tier: u8,
}

impl Proc {
    /// The name it was started with.
    pub fn name(&self) -> &str {
        self.child.name()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Every child the demo started; stops (and reaps) them all when told, or when dropped (each
/// [`Child`] is killed then).
#[derive(Debug)]
pub struct Fleet {
    exe: PathBuf,
    logs: PathBuf,
    pub procs: Vec<Proc>,
}

impl Fleet {
    pub fn new(logs: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the weft executable to start the mesh: {e}"))?;
        std::fs::create_dir_all(logs)
            .map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
        Ok(Self {
            exe,
            logs: logs.to_path_buf(),
            procs: Vec::new(),
        })
    }

    /// Starts `weft <args>` with `env` (and none of the demo's own `WEFT_*` variables).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        &mut self,
        name: &str,
        kind: &'static str,
        tier: u8,
        addrs: String,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<(), String> {
        let log = self.logs.join(format!("{name}-{kind}.log"));
        let mut env = env.to_vec();
        env.push((ENV_EXIT_WITH_PARENT, "1".to_string()));
        // Its own process group, so a Ctrl-C in the terminal reaches the demo alone; stdin a
        // pipe whose end tells it the demo is gone.
        let options = Options {
            log_level: "info",
            stdin: Stdin::Pipe,
            stdout_to_log: true,
            own_process_group: true,
            clear_weft_env: true,
        };
        let child = Child::spawn(name, &self.exe, args, &env, &log, &options)?;
        self.procs.push(Proc {
            kind,
            addrs,
            child,
            tier,
        });
        Ok(())
    }

    /// An error naming the first child that has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            if let Some(status) = p.child.exited() {
                return Err(format!(
                    "{} ({}) exited with {status} during start-up; the end of its log ({}):\n{}",
                    p.name(),
                    p.kind,
                    p.child.log().display(),
                    p.child.log_tail(15)
                ));
            }
        }
        Ok(())
    }

    /// Waits until `GET /ready` on `admin` answers 200 (or `deadline`, or a child exits).
    pub async fn wait_ready(
        &mut self,
        what: &str,
        admin: SocketAddr,
        deadline: Instant,
    ) -> Result<(), String> {
        self.wait_until(what, deadline, || async move {
            let ready = tokio::task::spawn_blocking(move || {
                crate::admin::get(&admin.to_string(), "/ready")
            });
            matches!(ready.await, Ok(Ok((200, _))))
        })
        .await
    }

    /// Waits until something accepts connections at `addr`.
    pub async fn wait_listening(
        &mut self,
        what: &str,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(), String> {
        self.wait_until(what, deadline, || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    }

    async fn wait_until<F, Fut>(
        &mut self,
        what: &str,
        deadline: Instant,
        mut ok: F,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        loop {
            if ok().await {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                let log = self
                    .procs
                    .iter()
                    .find(|p| p.name() == what.split(' ').next().unwrap_or(what))
                    .map(|p| format!(" (its log: {})", p.child.log().display()))
                    .unwrap_or_default();
                return Err(format!("{what} did not become ready in time{log}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every child, tier by tier: SIGTERM, then SIGKILL after `grace`; reaps them all.
    pub async fn stop(&mut self, grace: Duration) {
        let mut tiers: Vec<u8> = self.procs.iter().map(|p| p.tier).collect();
        tiers.sort_unstable();
        tiers.dedup();
        for tier in tiers {
            let (mut children, kinds): (Vec<&mut Child>, Vec<&str>) = self
                .procs
                .iter_mut()
                .filter(|p| p.tier == tier)
                .map(|p| (&mut p.child, p.kind))
                .unzip();
            for i in child::stop(&mut children, grace).await {
                let (name, kind) = (children[i].name(), kinds[i]);
                eprintln!("weft demo: {name} ({kind}) ignored SIGTERM; killing it");
            }
        }
    }
}
