//! A real etcd cluster on loopback, for `weft demo --store etcd` and the tests: `etcd` (Debian's
//! `etcd-server`) processes on free ports, each with its data in a directory of the caller's,
//! stopped and started again by name, killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::child::{Child, Options};
use crate::process::free_loopback_addr;

/// How long the cluster may take to elect a leader after a start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One member: its ports, its data directory, its process while it runs.
#[derive(Debug)]
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of loopback members.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    binary: PathBuf,
    dir: PathBuf,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `size` members (`etcd-0`, `etcd-1`, ...) with their data under `dir`, and waits
    /// until the cluster has a leader.
    pub fn start(dir: &Path, size: usize) -> Result<Self, String> {
        let binary = find_etcd()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut members = Vec::new();
        for i in 0..size {
            let name = format!("etcd-{i}");
            members.push(Member {
                client: free_loopback_addr("an etcd member's client port")?,
                peer: free_loopback_addr("an etcd member's peer port")?,
                data: dir.join(&name),
                name,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            binary,
            dir: dir.to_path_buf(),
            initial_cluster,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// `etcd://` and every member's client address: the control plane's `--store`.
    pub fn store_url(&self) -> String {
        let members: Vec<String> = self.members.iter().map(|m| m.client.to_string()).collect();
        format!("etcd://{}", members.join(","))
    }

    /// Each member's client address.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// Kills member `i` (SIGKILL: as a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
        }
    }

    /// Starts member `i` again, on its data (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.spawn(i)
    }

    /// Whether member `i` answers that it is healthy (it has a leader).
    pub fn healthy(&self, i: usize) -> bool {
        health(self.members[i].client)
    }

    /// Waits until some member is healthy, for at most `timeout`.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if (0..self.members.len()).any(|i| self.members[i].child.is_some() && self.healthy(i)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the etcd cluster had no leader within {timeout:?}:\n{}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref())
            .map(|c| format!("--- {}\n{}", c.name(), c.log_tail(20)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        // A member starting on data it already has rejoins; `new` is for the first start.
        let state = if m.data.exists() { "existing" } else { "new" };
        let args = [
            "--name",
            &m.name,
            "--data-dir",
            &m.data.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "weft",
            // Elections in a few hundred milliseconds on loopback.
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .map(String::from);
        let child = Child::spawn(
            &m.name,
            &self.binary,
            &args,
            &[],
            &self.dir.join(format!("{}.log", m.name)),
            &Options {
                stdout_to_log: true,
                ..Options::default()
            },
        )?;
        self.members[i].child = Some(child);
        Ok(())
    }
}

/// `etcd` on the `PATH`, or where Debian's `etcd-server` puts it.
fn find_etcd() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| "etcd is not installed: install Debian's package etcd-server".to_string())
}

/// `GET /health` on a member's client port: `{"health":"true"}` when it has a leader.
fn health(addr: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if tcp.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = tcp.take(64 * 1024).read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200") && text.contains("\"health\":\"true\"")
}
