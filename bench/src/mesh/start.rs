//! The mesh the benchmark starts: the app, `weft identity`, `weft policy` with its resource
//! directory and the two proxies, each its own process in a temporary directory; the calls
//! the scenarios make to them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::{Child, Options, Stdin};
use weft_runtime::testing::http_get;

use crate::Error;
use crate::report::{API_PROXY, WEB_PROXY};

/// The app lives at most this long, should the benchmark be killed before it can stop it.
const APP_LIFETIME: &str = "2h";

/// Resource files the control plane reads from its start beside `mesh.yaml`, made from the
/// app's port (the port of the `api` service): each a file name and its YAML.
pub(crate) type ExtraResources = fn(app_port: u16) -> Vec<(&'static str, String)>;

/// A process of the benchmark, killed when dropped: `program args` with `env` added,
/// `WEFT_LOG=warn`, nothing on stdin, its stderr in `<dir>/<name>.log`.
pub(crate) fn spawn(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Child, Error> {
    let options = Options {
        log_level: "warn",
        stdin: Stdin::Null,
        ..Options::default()
    };
    Child::spawn(
        name,
        program,
        args,
        env,
        &dir.join(format!("{name}.log")),
        &options,
    )
}

/// A proxy's process and its listeners.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) proc: Child,
    pub(crate) outbound: SocketAddr,
    pub(crate) admin: SocketAddr,
}

impl Proxy {
    /// Waits until `/ready` answers 200 (bounded; an error with its log otherwise).
    pub(crate) fn wait_ready(&mut self) -> Result<(), Error> {
        self.proc.wait_for_200(self.admin, "/ready", "localhost")
    }

    /// Whether `/ready` answers 200 now.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(http_get(self.admin, "/ready", "localhost"), Some((200, _)))
    }

    /// Its `/metrics` page.
    pub(crate) fn metrics(&self) -> Result<String, Error> {
        get_200(
            self.admin,
            "/metrics",
            &format!("{}'s metrics", self.proc.name()),
        )
    }
}

/// How the mesh's proxies are started: the program, and where each finds its token, the
/// identity service and the control plane.
#[derive(Debug, Clone)]
pub(crate) struct ProxyLauncher {
    /// The mesh's directory: `<workload>.token`, the logs.
    dir: PathBuf,
    command: (PathBuf, &'static [&'static str]),
    identity_api: SocketAddr,
    policy_api: SocketAddr,
}

impl ProxyLauncher {
    /// Starts proxy `name` (its log `<name>.log`) with workload `workload`'s token, in front of
    /// the app on `app_port`, its listeners on free ports; does not wait for it to be ready.
    pub(crate) fn spawn(&self, name: &str, workload: &str, app_port: u16) -> Result<Proxy, Error> {
        let (inbound, outbound, admin) = (free_addr()?, free_addr()?, free_addr()?);
        let token = self.dir.join(format!("{workload}.token"));
        let (program, args) = &self.command;
        let proc = spawn(
            &self.dir,
            name,
            program,
            args,
            &[
                (ENV_TOKEN_FILE, token.display().to_string()),
                (ENV_IDENTITY_ADDR, self.identity_api.to_string()),
                (ENV_POLICY_ADDR, self.policy_api.to_string()),
                (proxy_config::ENV_INBOUND, inbound.to_string()),
                (proxy_config::ENV_OUTBOUND, outbound.to_string()),
                (proxy_config::ENV_ADMIN, admin.to_string()),
                (proxy_config::ENV_APP_PORT, app_port.to_string()),
            ],
        )?;
        Ok(Proxy {
            proc,
            outbound,
            admin,
        })
    }
}

/// The running mesh. Dropping it kills every process, then removes the directory.
#[derive(Debug)]
pub(crate) struct Mesh {
    pub(crate) app: SocketAddr,
    /// The identity service's API.
    pub(crate) identity_api: SocketAddr,
    pub(crate) web: Proxy,
    pub(crate) api: Proxy,
    pub(crate) policy: Child,
    /// The control plane's resource directory, re-read every 200 ms.
    resources: PathBuf,
    policy_admin: SocketAddr,
    identity_admin: SocketAddr,
    /// Starts more proxies in this mesh (`weft-bench soak`'s second api instance).
    pub(crate) launcher: ProxyLauncher,
    pub(crate) identity: Child,
    _app: Child,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts every process, the identity service with `identity_env` added to its
    /// environment. The resource directory holds `mesh.yaml` ([`resources_yaml`]) and the
    /// files of `extra` from the start.
    pub(crate) fn start(
        weft: &Path,
        body_size: usize,
        extra: ExtraResources,
        identity_env: &[(&str, String)],
    ) -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let d = dir.path();
        let path = |p: &Path| p.display().to_string();

        let app = free_addr()?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let args = app_args(&[&app.to_string()], body_size);
        let mut app_proc = spawn(d, "app", &exe, &as_strs(&args), &[])?;
        app_proc.wait_for_200(app, "/", "app")?;

        let data = d.join("ca");
        let (identity, id_api, identity_admin) =
            start_server(d, weft, "identity", "--data-dir", &data, identity_env)?;
        for (ns, workload) in WORKLOADS {
            let out = d.join(format!("{workload}.token"));
            token(weft, &data, ns, workload, &out)?;
        }

        let resources = d.join("resources");
        std::fs::create_dir_all(&resources)
            .map_err(|e| format!("cannot create {}: {e}", resources.display()))?;
        write_file(&resources.join(RESOURCES_FILE), &resources_yaml(app.port()))?;
        for (name, yaml) in extra(app.port()) {
            write_file(&resources.join(name), &yaml)?;
        }
        let (policy, pol_api, policy_admin) = start_server(
            d,
            weft,
            "policy",
            "--dir",
            &resources,
            &[
                (ENV_TOKEN_FILE, path(&d.join("policy.token"))),
                (ENV_IDENTITY_ADDR, id_api.to_string()),
            ],
        )?;

        let launcher = ProxyLauncher {
            dir: d.to_path_buf(),
            command: proxy_command(weft),
            identity_api: id_api,
            policy_api: pol_api,
        };
        let proxy = |name: &str, app_port: u16| -> Result<Proxy, Error> {
            let mut p = launcher.spawn(name, name, app_port)?;
            p.wait_ready()?;
            Ok(p)
        };
        let api = proxy("api", app.port())?;
        let mut web = proxy("web", 1)?;
        // Ready proxies route once api's registration reaches web through discovery.
        let host = format!("api.default:{}", app.port());
        web.proc
            .wait_for_200(web.outbound, "/", &host)
            .map_err(|e| format!("{e}\napi's log:\n{}", api.proc.logs()))?;
        Ok(Self {
            app,
            identity_api: id_api,
            web,
            api,
            policy,
            resources,
            policy_admin,
            identity_admin,
            launcher,
            identity,
            _app: app_proc,
            _dir: dir,
        })
    }

    /// The temporary directory: tokens, the CA, resources, logs.
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The Host header of calls to api through the mesh.
    pub(crate) fn host(&self) -> String {
        format!("api.default:{}", self.app.port())
    }

    pub(super) fn proxy_pids(&self) -> Vec<(&'static str, u32)> {
        vec![
            (WEB_PROXY, self.web.proc.pid()),
            (API_PROXY, self.api.proc.pid()),
        ]
    }

    /// Writes `name` in the resource directory (`Some`) or removes it (`None`), for the
    /// control plane's next poll. A write goes to a hidden file first, which the control plane
    /// skips, then is renamed, so no poll reads it half-written.
    pub(crate) fn set_resource(&self, name: &str, yaml: Option<&str>) -> Result<(), Error> {
        let path = self.resources.join(name);
        match yaml {
            Some(yaml) => {
                let tmp = self.resources.join(format!(".{name}.tmp"));
                write_file(&tmp, yaml)?;
                std::fs::rename(&tmp, &path).map_err(|e| {
                    format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
                })
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("cannot remove {}: {e}", path.display()))
                }
                _ => Ok(()),
            },
        }
    }

    /// The control plane's `/status` page (JSON).
    pub(crate) fn policy_status(&self) -> Result<String, Error> {
        get_200(self.policy_admin, "/status", "the control plane's status")
    }

    /// The control plane's `/workloads` page (JSON): every registered workload.
    pub(crate) fn policy_workloads(&self) -> Result<String, Error> {
        get_200(
            self.policy_admin,
            "/workloads",
            "the control plane's workloads",
        )
    }

    /// The identity service's `/metrics` page.
    pub(crate) fn identity_metrics(&self) -> Result<String, Error> {
        get_200(
            self.identity_admin,
            "/metrics",
            "the identity service's metrics",
        )
    }

    /// `GET /` through web's outbound, as the load sends it: the status, `None` when nothing
    /// answers.
    pub(crate) fn probe(&self) -> Option<u16> {
        http_get(self.web.outbound, "/", &self.host()).map(|(status, _)| status)
    }
}

/// `weft <name> <dir_flag> <dir> --listen A --admin-listen B` on free ports, ready; returns
/// it, its API address `A` and its admin address `B`.
fn start_server(
    d: &Path,
    weft: &Path,
    name: &'static str,
    dir_flag: &str,
    dir: &Path,
    env: &[(&str, String)],
) -> Result<(Child, SocketAddr, SocketAddr), Error> {
    let (api, admin) = (free_addr()?, free_addr()?);
    let dir = dir.display().to_string();
    let (api_s, admin_s) = (api.to_string(), admin.to_string());
    let args = server_args(name, dir_flag, &dir, &api_s, &admin_s);
    let mut p = spawn(d, name, weft, &args, env)?;
    p.wait_for_200(admin, "/ready", "localhost")?;
    Ok((p, api, admin))
}

/// The arguments of `weft <name> <dir_flag> <dir> --listen <api> --admin-listen <admin>`
/// (`weft identity`, `weft policy`).
pub(crate) fn server_args<'a>(
    name: &'a str,
    dir_flag: &'a str,
    dir: &'a str,
    api: &'a str,
    admin: &'a str,
) -> [&'a str; 7] {
    [
        name,
        dir_flag,
        dir,
        "--listen",
        api,
        "--admin-listen",
        admin,
    ]
}

/// The arguments of the app (`weft-bench app`, this binary re-executed): listening on each of
/// `listen`, answering with `body_size` bytes, living at most [`APP_LIFETIME`].
pub(crate) fn app_args(listen: &[&str], body_size: usize) -> Vec<String> {
    let mut args = vec!["app".to_string()];
    for addr in listen {
        args.extend(["--listen".to_string(), addr.to_string()]);
    }
    args.extend([
        "--body-size".to_string(),
        body_size.to_string(),
        "--lifetime".to_string(),
        APP_LIFETIME.to_string(),
    ]);
    args
}

/// `args` as the `&str`s [`spawn`] takes.
pub(crate) fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The proxy's program and its first arguments: the sidecar's own binary (`weft-proxy` beside
/// `weft`), as a deployment runs it; `weft proxy` when it is not built.
pub(crate) fn proxy_command(weft: &Path) -> (PathBuf, &'static [&'static str]) {
    let sidecar = weft.with_file_name("weft-proxy");
    if sidecar.is_file() {
        (sidecar, &[])
    } else {
        (weft.to_path_buf(), &["proxy"])
    }
}

/// The resources: services api (the app's port) and web ([`services_yaml`]), and a policy
/// letting web call api.
pub fn resources_yaml(port: u16) -> String {
    format!(
        "{}---\n\
         kind: AuthorizationPolicy\nmetadata: {{name: {POLICY_NAME}, namespace: default}}\nspec:\n  \
         target: {{service: api, port: {port}}}\n  allow:\n    - identities: [\"{WEB_ID}\"]\n",
        services_yaml(port)
    )
}

/// The services of [`resources_yaml`]: api (the app's port) and web.
pub fn services_yaml(port: u16) -> String {
    format!(
        "kind: Service\nmetadata: {{name: api, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n---\n\
         kind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n"
    )
}

/// The name of [`resources_yaml`]'s policy (namespace `default`).
pub const POLICY_NAME: &str = "api-from-web";
/// The identity of the web workload, whose proxy the load goes through.
pub const WEB_ID: &str = "spiffe://weft.local/ns/default/sa/web";
/// The file of [`resources_yaml`] in the control plane's directory.
pub const RESOURCES_FILE: &str = "mesh.yaml";

/// The workloads the mesh mints tokens for (`<workload>.token` in its directory): the control
/// plane and the two proxies, as (namespace, workload).
pub(crate) const WORKLOADS: [(&str, &str); 3] =
    [("weft", "policy"), ("default", "api"), ("default", "web")];

/// `weft token create` for `ns/workload`, written to `out`.
pub(crate) fn token(
    weft: &Path,
    data: &Path,
    ns: &str,
    workload: &str,
    out: &Path,
) -> Result<(), Error> {
    let o = Command::new(weft)
        .args(["token", "create", "--namespace", ns, "--workload", workload])
        .arg("--data-dir")
        .arg(data)
        .output()
        .map_err(|e| format!("cannot run {} token create: {e}", weft.display()))?;
    if !o.status.success() {
        return Err(format!(
            "weft token create for {ns}/{workload} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    std::fs::write(out, &o.stdout).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A free loopback port for a process of the benchmark to listen on.
pub(crate) fn free_addr() -> Result<SocketAddr, Error> {
    weft_runtime::process::free_loopback_addr("the benchmark")
}

/// The body of `GET path` at `addr` (an admin endpoint), or an error naming `what`.
pub(super) fn get_200(addr: SocketAddr, path: &str, what: &str) -> Result<String, Error> {
    match http_get(addr, path, "localhost") {
        Some((200, text)) => Ok(text),
        other => Err(format!(
            "cannot read {what} at http://{addr}{path}: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_and_the_servers_are_started_with_these_arguments() {
        assert_eq!(
            app_args(&["127.0.0.1:1"], 64),
            [
                "app",
                "--listen",
                "127.0.0.1:1",
                "--body-size",
                "64",
                "--lifetime",
                "2h"
            ]
        );
        assert_eq!(
            app_args(&["0.0.0.0:9080", "0.0.0.0:9081"], 0),
            [
                "app",
                "--listen",
                "0.0.0.0:9080",
                "--listen",
                "0.0.0.0:9081",
                "--body-size",
                "0",
                "--lifetime",
                "2h"
            ]
        );
        assert_eq!(
            server_args("policy", "--dir", "/r", "10.0.0.2:8090", "127.0.0.1:9991"),
            [
                "policy",
                "--dir",
                "/r",
                "--listen",
                "10.0.0.2:8090",
                "--admin-listen",
                "127.0.0.1:9991"
            ]
        );
    }
}
