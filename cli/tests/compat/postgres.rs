//! PostgreSQL's server on a test host, for `compat_intercept.rs`.

use super::*;

/// PostgreSQL on B as the `postgres` user (it refuses to run as root), its data and socket
/// in the test's directory; asked for a fast shutdown when dropped, then killed if need be.
pub struct Postgres {
    server: Child,
    bin: PathBuf,
}

impl Postgres {
    pub fn start(b: &Host, d: &Path) -> Self {
        let bin = postgres_bin();
        let pg = d.join("pg");
        let (data, socket) = (pg.join("data"), pg.join("socket"));
        std::fs::create_dir_all(&socket).unwrap();
        run_ok(&["chown", "-R", "postgres:postgres", pg.to_str().unwrap()]);
        let as_postgres = "setpriv --reuid=postgres --regid=postgres --init-groups";
        b.ns.ok(&words(&format!(
            "{as_postgres} {}/initdb -D {} -U postgres --auth=trust --no-sync --locale=C -E UTF8",
            bin.display(),
            data.display()
        )));
        // A's clients come from A's address, directly and through B's proxy (which connects
        // from B's address).
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap();
        rules.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, rules).unwrap();
        let postgres = format!(
            "{as_postgres} {}/postgres -D {} -p {PG_PORT} -k {} -c listen_addresses={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            bin.display(),
            data.display(),
            socket.display(),
            b.ip
        );
        let server = b.ns.spawn(&words(&postgres), &[], &d.join("postgres.log"));
        Postgres { server, bin }
    }

    /// Until it accepts connections on B's address (`pg_isready`), before `deadline`.
    pub fn wait_ready(&self, b: &Host, deadline: Instant) {
        let isready = format!(
            "{}/pg_isready -h {} -p {PG_PORT} -t 2",
            self.bin.display(),
            b.ip
        );
        while !b.ns.exec(&words(&isready)).status.success() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL never accepted connections:\n{}",
                self.server.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: its backends end with it.
        let pid = self.server.pid().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// PostgreSQL's server programs: `/usr/lib/postgresql/<version>/bin`, the newest version.
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let version = |e: &std::fs::DirEntry| e.file_name().to_str()?.parse::<u32>().ok();
    let newest = std::fs::read_dir(root).into_iter().flatten().flatten();
    let newest = newest.filter(|e| version(e).is_some()).max_by_key(version);
    let bin = newest.map(|e| e.path().join("bin"));
    bin.filter(|bin| bin.join("postgres").exists())
        .unwrap_or_else(|| {
            panic!("no PostgreSQL server in {root:?}/*/bin: install the Debian package postgresql")
        })
}
