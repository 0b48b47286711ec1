//! With `weft demo` running, `weft stat`, `routes`, `check` and `dashboard` find its mesh with
//! no flags, say which mesh they are talking to, and still let a flag or a `WEFT_*` variable
//! choose another; once the demo stops they no longer find it.

use super::*;

/// `weft ARGS` with `home` as `WEFT_HOME` and no `WEFT_*` address in its environment: whether
/// it succeeded, its stdout and its stderr.
fn weft(home: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(WEFT)
        .args(args)
        .env("WEFT_HOME", home)
        .env_remove("WEFT_POLICY_ADMIN")
        .env_remove("WEFT_IDENTITY_ADMIN")
        .env_remove("WEFT_POLICY_ADDR")
        .env_remove("WEFT_CERT_DIR")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_commands_find_the_running_demo_with_no_flags() {
    let mut demo = Demo::start(&["--duration", "5m"]);
    let rows = demo.table();
    let home = demo.dir.path().join("home");
    let admin = |name: &str| rows.iter().find(|r| r.name == name).unwrap().addr("admin");
    let (policy, identity) = (admin("policy"), admin("identity"));
    let current = home.join("current.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !current.exists() {
        assert!(Instant::now() < deadline, "no {}", current.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = format!(
        "using the mesh of the running `weft demo` (pid {}",
        demo.child.id()
    );
    let names_the_demo = |err: &str| {
        assert!(err.contains(&said), "{err}");
        assert!(
            err.contains(&format!("control plane admin {policy}")),
            "{err}"
        );
        assert!(err.contains(&format!("identity admin {identity}")), "{err}");
    };

    // Golden signals of the demo's services and routes.
    let (ok, out, err) = weft(&home, &["stat", "--window", "2s"], &[]);
    assert!(ok, "{out}{err}");
    names_the_demo(&err);
    assert!(
        out.contains("default/web") && out.contains("default/api"),
        "{out}"
    );
    let (ok, out, err) = weft(&home, &["routes", "api", "--window", "2s"], &[]);
    assert!(ok, "{out}{err}");
    names_the_demo(&err);
    assert!(out.contains("split") && out.contains("mobile"), "{out}");

    // Its health, through both the identity service and the control plane.
    let (ok, out, err) = weft(&home, &["check"], &[]);
    assert!(ok, "{out}{err}");
    names_the_demo(&err);
    assert!(out.contains("Status check results are √"), "{out}");

    // The resources, read and changed through the demo's control plane as its operator.
    let (ok, out, err) = weft(&home, &["get", "httproute"], &[]);
    assert!(ok, "{out}{err}");
    names_the_demo(&err);
    assert!(out.contains("api"), "{out}");
    let routes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/routes.yaml");
    let (ok, out, err) = weft(
        &home,
        &["apply", "--dry-run", "-f", routes.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("unchanged"), "{out}");

    // The dashboard, on the demo's proxies.
    let listen = free_addr();
    let mut dashboard = Command::new(WEFT)
        .args(["dashboard", "--listen", &listen.to_string()])
        .env("WEFT_HOME", &home)
        .env_remove("WEFT_POLICY_ADMIN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        if let Some(o) = overview(listen)
            && o.to_string().contains("default/web")
        {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed the demo"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(seen.to_string().contains("default/api"), "{seen}");
    dashboard.kill().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut dashboard.stderr.take().unwrap(), &mut err).unwrap();
    dashboard.wait().unwrap();
    names_the_demo(&err);

    // A flag, or a variable, still chooses: the demo is not used, nor named.
    for (args, env) in [
        (&["stat", "--policy-admin", "127.0.0.1:1"][..], &[][..]),
        (&["stat"][..], &[("WEFT_POLICY_ADMIN", "127.0.0.1:1")][..]),
    ] {
        let (ok, out, err) = weft(&home, args, env);
        assert!(!ok, "{out}{err}");
        assert!(err.contains("admin 127.0.0.1:1:"), "{err}");
        assert!(!err.contains(&said), "{err}");
    }

    // Stopped, the demo is no longer found: the default address is used again.
    signal(demo.child.id(), "-INT");
    demo.stops_cleanly(&rows, Duration::from_secs(60));
    assert!(!current.exists(), "{} outlived the demo", current.display());
    let (ok, out, err) = weft(&home, &["stat"], &[]);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("admin 127.0.0.1:9991:"), "{err}");
}

/// A demo killed (it could not remove its file) is not taken for a running one.
#[test]
fn a_killed_demo_is_not_the_current_mesh() {
    let mut demo = Demo::start(&["--duration", "5m"]);
    let rows = demo.table();
    let home = demo.dir.path().join("home");
    let current = home.join("current.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !current.exists() {
        assert!(Instant::now() < deadline, "no {}", current.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(demo.child.id(), "-KILL");
    demo.wait(Duration::from_secs(10));
    assert_all_gone(&rows, Duration::from_secs(10));
    assert!(current.exists());
    let (ok, out, err) = weft(&home, &["stat"], &[]);
    assert!(!ok, "{out}{err}");
    assert!(err.contains("admin 127.0.0.1:9991:"), "{err}");
    assert!(!err.contains("using the mesh"), "{err}");
}
