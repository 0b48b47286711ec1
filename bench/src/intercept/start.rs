//! Setting the bench up, one named step after the other: the app, the identity service and its
//! tokens, the control plane, `weft init` in both namespaces, the two proxies, then the wait
//! until the mesh routes.

use std::path::Path;
use std::time::{Duration, Instant};

use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;

use crate::Error;
use crate::mesh::{
    MeshConfig, READY_TIMEOUT, WORKLOADS, app_args, as_strs, proxy_command, resources_yaml,
    server_args, token, write_file,
};

use super::netns::{Netns, Pair, fetch, run_ok, spawn_in, wait_for_200};
use super::{
    APP_IP, Bench, DIRECT_PORT, IDENTITY_ADMIN, IDENTITY_PORT, MESHED_PORT, POLICY_ADMIN,
    POLICY_PORT, PROXY_ADMIN, PROXY_UID,
};

impl Bench {
    /// Starts every process of the bench, each step once the one before is ready. On error,
    /// what was started is killed and the namespaces and the directory go, in the order
    /// [`Bench`] drops them.
    pub(super) fn start(weft: &Path, cfg: &MeshConfig) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("weft-bench-intercept-")
            .tempdir()
            .map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let d = dir.path();
        // The proxies (UID 2102) read their tokens from here.
        set_mode(d, 0o755)?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let pair = Pair::new()?;
        let setup = Setup {
            d,
            exe: &exe,
            weft,
            pair: &pair,
            identity_api: format!("{APP_IP}:{IDENTITY_PORT}"),
            policy_api: format!("{APP_IP}:{POLICY_PORT}"),
            uid: PROXY_UID.to_string(),
        };
        let app = setup.app(cfg.body_size)?;
        let identity = setup.identity()?;
        setup.tokens()?;
        let policy = setup.policy()?;
        setup.interception()?;
        let (api, web) = setup.proxies()?;
        let bench = Self {
            web,
            api,
            _policy: policy,
            _identity: identity,
            _app: app,
            pair,
            exe,
            dir,
        };
        bench.wait_until_meshed()?;
        Ok(bench)
    }

    /// Ready proxies route once api's registration reaches the control plane and web's
    /// address lookup finds it: until then web sends the request unmeshed, which api's
    /// policy refuses (403).
    fn wait_until_meshed(&self) -> Result<(), Error> {
        let meshed = format!("{APP_IP}:{MESHED_PORT}");
        let client = &self.pair.client;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let got = fetch(&self.exe, client, &meshed, "/");
            if matches!(got, Some((200, _))) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "http://{meshed}/ from the client namespace never answered 200 through \
                     the mesh within {READY_TIMEOUT:?} (last: {got:?})\nweb's log:\n{}\napi's \
                     log:\n{}",
                    self.web.logs(),
                    self.api.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// What the steps of [`Bench::start`] share: the directory, the binaries, the namespaces, and
/// the addresses and user the processes are given.
#[derive(Debug)]
struct Setup<'a> {
    /// The bench's directory: tokens, CA, resources, logs.
    d: &'a Path,
    /// This binary, re-executed in the namespaces as the app and `fetch`.
    exe: &'a Path,
    weft: &'a Path,
    pair: &'a Pair,
    /// The identity service's and the control plane's APIs, on the app namespace's veth
    /// address.
    identity_api: String,
    policy_api: String,
    /// [`PROXY_UID`], as the flags and the environment give it.
    uid: String,
}

impl Setup<'_> {
    /// The app in the app namespace, on the port behind the mesh and the direct one; ready.
    fn app(&self, body_size: usize) -> Result<Child, Error> {
        let (d, pair, exe) = (self.d, self.pair, self.exe);
        let (meshed, direct) = (
            format!("0.0.0.0:{MESHED_PORT}"),
            format!("0.0.0.0:{DIRECT_PORT}"),
        );
        let args = app_args(&[&meshed, &direct], body_size);
        let mut app = spawn_in(d, &pair.app, "app", exe, &as_strs(&args), &[])?;
        let app_direct = format!("127.0.0.1:{DIRECT_PORT}");
        wait_for_200(exe, &pair.app, &mut app, &app_direct, "/")?;
        Ok(app)
    }

    /// `weft identity` in the app namespace, its API on the veth address; ready.
    fn identity(&self) -> Result<Child, Error> {
        let (d, pair, exe, weft) = (self.d, self.pair, self.exe, self.weft);
        let data = d.join("ca");
        let mut identity = spawn_in(
            d,
            &pair.app,
            "identity",
            weft,
            &server_args(
                "identity",
                "--data-dir",
                &path(&data),
                &self.identity_api,
                IDENTITY_ADMIN,
            ),
            &[],
        )?;
        wait_for_200(exe, &pair.app, &mut identity, IDENTITY_ADMIN, "/ready")?;
        Ok(identity)
    }

    /// The control plane's and both proxies' tokens, readable by the proxies' user.
    fn tokens(&self) -> Result<(), Error> {
        let (d, weft) = (self.d, self.weft);
        let data = d.join("ca");
        for (ns, workload) in WORKLOADS {
            let out = d.join(format!("{workload}.token"));
            token(weft, &data, ns, workload, &out)?;
            set_mode(&out, 0o644)?;
        }
        Ok(())
    }

    /// `weft policy` in the app namespace, its API on the veth address; ready.
    fn policy(&self) -> Result<Child, Error> {
        let (d, pair, exe, weft) = (self.d, self.pair, self.exe, self.weft);
        let resources = d.join("resources");
        std::fs::create_dir_all(&resources)
            .map_err(|e| format!("cannot create {}: {e}", resources.display()))?;
        // Services api (the app's port behind the mesh) and web, and a policy letting web
        // call api: the mesh benchmark's resources.
        write_file(&resources.join("mesh.yaml"), &resources_yaml(MESHED_PORT))?;
        let mut policy = spawn_in(
            d,
            &pair.app,
            "policy",
            weft,
            &server_args(
                "policy",
                "--dir",
                &path(&resources),
                &self.policy_api,
                POLICY_ADMIN,
            ),
            &[
                (ENV_TOKEN_FILE, path(&d.join("policy.token"))),
                (ENV_IDENTITY_ADDR, self.identity_api.clone()),
            ],
        )?;
        wait_for_200(exe, &pair.app, &mut policy, POLICY_ADMIN, "/ready")?;
        Ok(policy)
    }

    /// Interception: the app namespace leaves the direct port and the identity service's
    /// and control plane's ports alone inbound; the client namespace the direct port
    /// outbound.
    fn interception(&self) -> Result<(), Error> {
        let (pair, weft, uid) = (self.pair, self.weft, &self.uid);
        let skip_in = format!("{DIRECT_PORT},{IDENTITY_PORT},{POLICY_PORT}");
        let skip_out = DIRECT_PORT.to_string();
        for (ns, args) in [
            (&pair.app, ["--skip-inbound-ports", skip_in.as_str()]),
            (&pair.client, ["--skip-outbound-ports", skip_out.as_str()]),
        ] {
            run_ok(
                ns.command(weft)
                    .args(["init", "--proxy-uid", uid])
                    .args(args),
            )
            .map_err(|e| format!("weft init in {}: {e}", ns.name))?;
        }
        Ok(())
    }

    /// The two proxies as [`PROXY_UID`]: api in the app namespace, then web in the client
    /// namespace; each ready.
    fn proxies(&self) -> Result<(Child, Child), Error> {
        let (proxy_bin, proxy_args) = proxy_command(self.weft);
        let api = self.proxy(&self.pair.app, "api", &proxy_bin, proxy_args)?;
        let web = self.proxy(&self.pair.client, "web", &proxy_bin, proxy_args)?;
        Ok((api, web))
    }

    /// `proxy_bin proxy_args` in `ns` as [`PROXY_UID`] (`setpriv`), with `name`'s token;
    /// ready.
    fn proxy(
        &self,
        ns: &Netns,
        name: &'static str,
        proxy_bin: &Path,
        proxy_args: &[&str],
    ) -> Result<Child, Error> {
        let d = self.d;
        let setpriv = [
            format!("--reuid={PROXY_UID}"),
            format!("--regid={PROXY_UID}"),
            "--clear-groups".into(),
            "--".into(),
            path(proxy_bin),
        ];
        let mut args: Vec<&str> = setpriv.iter().map(String::as_str).collect();
        args.extend_from_slice(proxy_args);
        let mut p = spawn_in(
            d,
            ns,
            name,
            Path::new("setpriv"),
            &args,
            &[
                (ENV_TOKEN_FILE, path(&d.join(format!("{name}.token")))),
                (ENV_IDENTITY_ADDR, self.identity_api.clone()),
                (ENV_POLICY_ADDR, self.policy_api.clone()),
                (proxy_config::ENV_PROXY_UID, self.uid.clone()),
                (proxy_config::ENV_APP_PORT, MESHED_PORT.to_string()),
            ],
        )?;
        wait_for_200(self.exe, ns, &mut p, PROXY_ADMIN, "/ready")?;
        Ok(p)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}
