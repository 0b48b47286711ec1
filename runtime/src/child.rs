//! Child processes a weft process starts and must stop: the demo's mesh, the benchmarks' mesh
//! and the tests' `weft` processes. Each child logs to a file, is asked to stop with SIGTERM
//! and killed after a grace, and is killed (and reaped) when dropped, so none outlives its
//! parent's handle on it.
//!
//! How a child is started differs between its parents (the log level, stdin, its own process
//! group...): [`Options`] names each of those choices.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// What a child reads on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdin {
    /// The parent's stdin.
    #[default]
    Inherit,
    /// Nothing (`/dev/null`).
    Null,
    /// A pipe the parent holds as long as the [`Child`] lives: it closes when the parent is
    /// gone, however it ends (the demo's children exit at its end).
    Pipe,
}

/// How a child is started, beyond its program, arguments and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `WEFT_LOG` for the child.
    pub log_level: &'static str,
    pub stdin: Stdin,
    /// Stdout goes to the log file too; otherwise to `/dev/null`. Stderr always goes there.
    pub stdout_to_log: bool,
    /// In a process group of its own, so a Ctrl-C in the terminal reaches the parent alone,
    /// which then stops its children in order.
    pub own_process_group: bool,
    /// None of the parent's own `WEFT_*` variables reach the child (only those passed).
    pub clear_weft_env: bool,
}

impl Default for Options {
    /// The parent's stdin and `WEFT_*` variables, `WEFT_LOG=info`, stdout to `/dev/null`, in
    /// the parent's process group.
    fn default() -> Self {
        Self {
            log_level: "info",
            stdin: Stdin::Inherit,
            stdout_to_log: false,
            own_process_group: false,
            clear_weft_env: false,
        }
    }
}

/// A running child process with its log file; killed and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Starts `program args` with `env` added, its stderr (and, if asked, stdout) in the file
    /// `log` (created or truncated); `name` names it in messages.
    pub fn spawn<S: AsRef<OsStr>>(
        name: &str,
        program: &Path,
        args: &[S],
        env: &[(&str, String)],
        log: &Path,
        options: &Options,
    ) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        let stderr = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let stdout = if options.stdout_to_log {
            let out = stderr
                .try_clone()
                .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
            Stdio::from(out)
        } else {
            Stdio::null()
        };
        let mut cmd = Command::new(program);
        if options.clear_weft_env {
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("WEFT_") {
                    cmd.env_remove(k);
                }
            }
        }
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(crate::process::ENV_LOG, options.log_level)
            .stdout(stdout)
            .stderr(stderr);
        match options.stdin {
            Stdin::Inherit => {}
            Stdin::Null => {
                cmd.stdin(Stdio::null());
            }
            Stdin::Pipe => {
                cmd.stdin(Stdio::piped());
            }
        }
        if options.own_process_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|e| {
            let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            format!(
                "cannot start {name} (`{} {}`): {e}",
                program.display(),
                args.join(" ")
            )
        })?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its whole log so far (empty if unreadable).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.logs();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The exit status, if it has exited (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether it is still running (it is reaped once it has exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it (SIGKILL) unless it has exited, and reaps it: its exit status.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Sends SIGTERM to every one of `pids` with one `kill` (procps) rather than `libc::kill`:
/// the workspace forbids `unsafe`.
pub fn sigterm(pids: &[u32]) -> std::io::Result<ExitStatus> {
    Command::new("kill")
        .arg("-TERM")
        .args(pids.iter().map(u32::to_string))
        .status()
}

/// Stops `children` together: SIGTERM to those still running, then, for any still running
/// after `grace`, SIGKILL; reaps them all. Returns the indexes (in `children`) of those that
/// ignored SIGTERM and were killed.
pub async fn stop(children: &mut [&mut Child], grace: Duration) -> Vec<usize> {
    let pids: Vec<u32> = children
        .iter_mut()
        .filter_map(|c| c.running().then(|| c.pid()))
        .collect();
    if !pids.is_empty() {
        let _ = sigterm(&pids);
    }
    let deadline = Instant::now() + grace;
    loop {
        if !children.iter_mut().any(|c| c.running()) {
            return Vec::new();
        }
        if Instant::now() > deadline {
            let mut killed = Vec::new();
            for (i, c) in children.iter_mut().enumerate() {
                if c.running() {
                    let _ = c.kill();
                    killed.push(i);
                }
            }
            return killed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, log: &Path) -> Child {
        let options = Options {
            stdout_to_log: true,
            ..Options::default()
        };
        Child::spawn("sh", Path::new("sh"), &["-c", script], &[], log, &options).expect("sh starts")
    }

    #[tokio::test]
    async fn stop_asks_first_and_kills_who_ignores_it() {
        let dir = std::env::temp_dir().join(format!("weft-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut polite = sh(
            "echo out; echo err >&2; exec sleep 30",
            &dir.join("polite.log"),
        );
        let mut stubborn = sh(
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
            &dir.join("stubborn.log"),
        );
        // Both have started (and the trap is set) once they have written their logs.
        let deadline = Instant::now() + Duration::from_secs(10);
        while polite.logs().lines().count() < 2 || stubborn.logs().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the children never wrote their logs"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(polite.log_tail(1), "err");
        let killed = stop(
            &mut [&mut polite, &mut stubborn],
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(killed, [1]);
        assert!(!polite.running() && !stubborn.running());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
