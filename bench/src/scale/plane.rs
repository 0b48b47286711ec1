//! The control plane under test: a three-member etcd cluster on loopback, the identity
//! service, and two `weft policy` replicas over etcd (real processes), with the resources of
//! the scale written into etcd before they start.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_identity::authority::{Authority, AuthorityConfig};
use weft_policy::etcd::{Etcd, EtcdConfig};
use weft_runtime::child::Child;
use weft_runtime::etcd::EtcdCluster;

use crate::Error;
use crate::mesh::start::{free_addr, spawn, token};

/// The big service and how many endpoints each small one has.
pub(crate) const BIG: &str = "big";
const SMALL_ENDPOINTS: u32 = 5;
/// Services per resource file.
const PER_FILE: u32 = 100;

/// One replica of the control plane.
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) proc: Option<Child>,
    pub(crate) api: SocketAddr,
    pub(crate) admin: SocketAddr,
}

pub(crate) struct Plane {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) _etcd: EtcdCluster,
    pub(crate) _identity: Child,
    pub(crate) replicas: Vec<Replica>,
    pub(crate) authority: Authority,
    weft: PathBuf,
    store: String,
    identity_api: SocketAddr,
}

/// The name of small service `i`.
pub(crate) fn small(i: u32) -> String {
    format!("svc-{i}")
}

impl Plane {
    /// Starts everything: `services` services (one of them `big`, with `big_endpoints`
    /// static endpoints; the others 5 each).
    pub(crate) async fn start(
        weft: &Path,
        services: u32,
        big_endpoints: u32,
    ) -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let d = dir.path().to_path_buf();
        let etcd = EtcdCluster::start(&d.join("etcd"), 3)?;
        seed(&etcd, services, big_endpoints).await?;
        let data = d.join("ca");
        let (id_api, id_admin) = (free_addr()?, free_addr()?);
        let data_s = data.display().to_string();
        let (id_api_s, id_admin_s) = (id_api.to_string(), id_admin.to_string());
        let mut identity = spawn(
            &d,
            "identity",
            weft,
            &[
                "identity",
                "--data-dir",
                &data_s,
                "--listen",
                &id_api_s,
                "--admin-listen",
                &id_admin_s,
            ],
            &[],
        )?;
        identity.wait_for_200(id_admin, "/ready", "localhost")?;
        token(weft, &data, "weft", "policy", &d.join("policy.token"))?;
        let authority = Authority::load_or_create(&AuthorityConfig::new(&data))
            .map_err(|e| format!("cannot load the CA: {e}"))?;
        let mut plane = Plane {
            store: etcd.store_url(),
            _etcd: etcd,
            _identity: identity,
            replicas: Vec::new(),
            authority,
            weft: weft.to_path_buf(),
            identity_api: id_api,
            dir,
        };
        for name in ["policy-a", "policy-b"] {
            let replica = Replica {
                name: name.to_string(),
                proc: None,
                api: free_addr()?,
                admin: free_addr()?,
            };
            plane.replicas.push(replica);
            plane.start_replica(plane.replicas.len() - 1)?;
        }
        Ok(plane)
    }

    /// Starts replica `i` (again) on its addresses, and waits until it is ready.
    pub(crate) fn start_replica(&mut self, i: usize) -> Result<(), Error> {
        let d = self.dir.path();
        let r = &self.replicas[i];
        let (api, admin) = (r.api.to_string(), r.admin.to_string());
        let args = [
            "policy",
            "--store",
            &self.store,
            "--listen",
            &api,
            "--admin-listen",
            &admin,
            // Every simulated proxy comes from 127.0.0.1.
            "--max-connections-per-ip",
            "1000000",
        ];
        let env = [
            (
                "WEFT_TOKEN_FILE",
                d.join("policy.token").display().to_string(),
            ),
            ("WEFT_IDENTITY_ADDR", self.identity_api.to_string()),
        ];
        let mut proc = spawn(d, &r.name, &self.weft, &args, &env)?;
        proc.wait_for_200(r.admin, "/ready", "localhost")?;
        self.replicas[i].proc = Some(proc);
        Ok(())
    }

    /// Every replica's API address, comma-separated (what proxies are given).
    pub(crate) fn addrs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.api.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Writes the resources into etcd: the big service, and the small ones in files of 100.
async fn seed(etcd: &EtcdCluster, services: u32, big_endpoints: u32) -> Result<(), Error> {
    let client = Etcd::new(&EtcdConfig {
        members: EtcdConfig::members(&etcd.store_url())?,
        tls: None,
        timeout: Duration::from_secs(10),
    })
    .map_err(|e| e.to_string())?;
    let mut big = format!(
        "kind: Service\nmetadata: {{name: {BIG}}}\nspec:\n  ports: [{{port: 80}}]\n  selector: {{app: {BIG}}}\n  endpoints:\n"
    );
    for i in 0..big_endpoints {
        let _ = writeln!(
            big,
            "    - {{address: \"10.1.{}.{}:80\", labels: {{zone: z{}}}}}",
            i / 250,
            i % 250,
            i % 3
        );
    }
    put(&client, "big.yaml", &big).await?;
    let small_count = services.saturating_sub(1);
    let mut n = 0u32;
    for file in 0..small_count.div_ceil(PER_FILE) {
        let mut text = String::new();
        for i in file * PER_FILE..((file + 1) * PER_FILE).min(small_count) {
            let name = small(i);
            let _ = write!(
                text,
                "---\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n  selector: {{app: {name}}}\n  endpoints:\n"
            );
            for _ in 0..SMALL_ENDPOINTS {
                let _ = writeln!(
                    text,
                    "    - {{address: \"10.2.{}.{}:80\"}}",
                    n / 250,
                    n % 250
                );
                n += 1;
            }
        }
        put(&client, &format!("services-{file}.yaml"), &text).await?;
    }
    Ok(())
}

async fn put(client: &Etcd, name: &str, text: &str) -> Result<(), Error> {
    client
        .put(
            format!("/weft/resources/{name}").as_bytes(),
            text.as_bytes(),
            0,
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot write {name} into etcd: {e}"))
}
