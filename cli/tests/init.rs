//! `weft init` against real iptables (nft and legacy), each run in a network namespace of its
//! own that is deleted afterwards: the host's namespace is never touched. System tests: they
//! run with WEFT_SYSTEM_TESTS=1 and then need root, `ip` and `iptables`. The flag checks at
//! the end run always (with --dry-run, so they cannot change anything even if a check failed).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::{Netns, WEFT, require_tools};

/// What these tests need with system tests on, and where it comes from.
const TOOLS: &[&str] = &[
    "ip",
    "iptables",
    "iptables-nft",
    "iptables-legacy",
    "ip6tables",
];
const PACKAGES: &str = "iptables and iproute2";

const FLAGS: &[&str] = &[
    "init",
    "--proxy-uid",
    "2102",
    "--skip-inbound-ports",
    "22,9000:9100",
    "--skip-outbound-ports",
    "25",
    "--skip-outbound-cidrs",
    "10.96.0.0/12,169.254.169.254",
];

/// The `-A` rules of an iptables text, grouped by chain in their order within each chain
/// (iptables-save orders the chains its own way).
fn rules_by_chain(text: &str) -> Vec<String> {
    let mut rules: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect();
    rules.sort_by_key(|r| r.split_whitespace().nth(1).unwrap_or_default().to_string());
    rules
}

/// Lines of `after` not in `before` (each line of `before` matched once).
fn added(before: &str, after: &str) -> Vec<String> {
    let mut rest: Vec<&str> = before.lines().collect();
    let mut new = Vec::new();
    for line in after.lines() {
        if let Some(i) = rest.iter().position(|l| *l == line) {
            rest.remove(i);
        } else {
            new.push(line.to_string());
        }
    }
    assert!(rest.is_empty(), "lines removed by install: {rest:?}");
    new
}

/// Install, reinstall, uninstall, uninstall again with one backend in a fresh namespace;
/// with `ipv6`, checks the ip6tables half the same way.
fn round_trip(backend: &str, ipv6: bool) {
    let ns = Netns::new("weft-init-test");
    let save4 = format!("iptables-{backend}-save");
    let save6 = format!("ip6tables-{backend}-save");
    let mut flags = FLAGS.to_vec();
    flags.extend_from_slice(&["--iptables", backend]);
    if ipv6 {
        flags.extend_from_slice(&["--ipv6", "--skip-outbound-cidrs", "fd00::/8"]);
    }
    let with = |extra: &[&'static str]| [&flags[..], extra].concat();
    let tables = || (ns.nat(&save4), ns.nat(&save6));
    let before = tables();

    // --dry-run changes nothing and prints the rules that install then applies.
    let (dry, dry_err) = ns.weft(&with(&["--dry-run"]));
    assert!(
        dry_err.contains(&format!("using iptables-{backend} (iptables v")),
        "{dry_err}"
    );
    assert_eq!(tables(), before, "--dry-run changed the rules");
    let (dry4, dry6) = match dry.split_once("\n\n") {
        Some((a, b)) => (format!("{a}\n"), b.to_string()),
        None => (dry.clone(), String::new()),
    };
    assert!(
        dry4.starts_with("# weft init") && dry4.ends_with("COMMIT\n"),
        "{dry}"
    );
    assert_eq!(dry6.contains("ip6tables-restore"), ipv6, "{dry}");
    assert_eq!(dry6.contains("-d fd00::/8 -j RETURN"), ipv6, "{dry}");

    let (out, err) = ns.weft(&with(&[]));
    let version = if backend == "nft" {
        "(nf_tables)"
    } else {
        "(legacy)"
    };
    assert!(
        err.contains(&format!("using iptables-{backend} (iptables v")) && err.contains(version),
        "{err}"
    );
    assert_eq!(
        err.contains(&format!("using ip6tables-{backend} (ip6tables v")),
        ipv6,
        "{err}"
    );
    assert!(out.contains("installed weft's rules"), "{out}");
    let after = tables();

    // Exactly our four chains and our rules (the dry run's, jumps included) were added.
    let check_added = |before: &str, after: &str, dry: &str| {
        let new = added(before, after);
        let mut chains: Vec<&String> = new.iter().filter(|l| l.starts_with(':')).collect();
        chains.sort();
        assert_eq!(
            chains,
            [
                ":WEFT_INBOUND_REDIRECT - [0:0]",
                ":WEFT_OUTBOUND_REDIRECT - [0:0]",
                ":WEFT_OUTPUT - [0:0]",
                ":WEFT_PREROUTING - [0:0]",
            ]
        );
        assert_eq!(rules_by_chain(&new.join("\n")), rules_by_chain(dry));
        assert!(new.contains(&"-A PREROUTING -p tcp -j WEFT_PREROUTING".to_string()));
        assert!(new.contains(&"-A OUTPUT -p tcp -j WEFT_OUTPUT".to_string()));
        assert_eq!(new.len(), 4 + rules_by_chain(dry).len(), "{new:#?}");
    };
    check_added(&before.0, &after.0, &dry4);
    if ipv6 {
        check_added(&before.1, &after.1, &dry6);
    } else {
        assert_eq!(after.1, before.1, "IPv6 rules without --ipv6");
    }

    // Twice is the same as once: no second jump, our chains refilled.
    let (out, _) = ns.weft(&with(&[]));
    assert!(out.contains("replacing the previous ones"), "{out}");
    assert_eq!(tables(), after, "a second install changed the rules");
    // As root, a dry run after install knows the jumps are there.
    let (dry_again, _) = ns.weft(&with(&["--dry-run"]));
    assert!(!dry_again.contains("-A PREROUTING"), "{dry_again}");

    // Uninstall restores the state before, exactly; a second uninstall is harmless.
    let (out, _) = ns.weft(&["init", "--uninstall", "--iptables", backend]);
    assert!(
        out.contains(&format!(
            "removed weft's 2 jumps and 4 chains with iptables-{backend}-restore"
        )),
        "{out}"
    );
    assert_eq!(
        out.contains(&format!(
            "removed weft's 2 jumps and 4 chains with ip6tables-{backend}-restore"
        )),
        ipv6,
        "{out}"
    );
    assert_eq!(tables(), before, "--uninstall left something behind");
    let (out, _) = ns.weft(&["init", "--uninstall", "--iptables", backend]);
    assert!(out.contains("nothing to uninstall"), "{out}");
    assert_eq!(tables(), before);
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn nft_install_twice_uninstall() {
    require_tools(TOOLS, PACKAGES);
    round_trip("nft", false);
    round_trip("nft", true);
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn legacy_install_twice_uninstall() {
    require_tools(TOOLS, PACKAGES);
    round_trip("legacy", false);
    round_trip("legacy", true);
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn auto_follows_the_backend_holding_rules() {
    require_tools(TOOLS, PACKAGES);
    let ns = Netns::new("weft-init-test");
    // Someone's legacy rule (in the filter table: init leaves it alone).
    ns.ok(&[
        "iptables-legacy",
        "-t",
        "filter",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "-j",
        "ACCEPT",
    ]);
    let (_, err) = ns.weft(&["init", "--proxy-uid", "2102"]);
    assert!(err.contains("using iptables-legacy"), "{err}");
    assert!(
        ns.nat("iptables-legacy-save")
            .contains("-A OUTPUT -p tcp -j WEFT_OUTPUT")
    );
    assert!(!ns.nat("iptables-nft-save").contains("WEFT"));
    // Auto uninstall finds them wherever they are.
    let (out, _) = ns.weft(&["init", "--uninstall"]);
    assert!(
        out.contains("removed weft's 2 jumps and 4 chains with iptables-legacy-restore"),
        "{out}"
    );
    assert!(!ns.nat("iptables-legacy-save").contains("WEFT"));
    let filter = ns.ok(&["iptables-legacy-save", "-t", "filter"]);
    assert!(filter.contains("-A INPUT -p udp -j ACCEPT"), "{filter}");
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn refuses_without_root_or_iptables() {
    require_tools(TOOLS, PACKAGES);
    let ns = Netns::new("weft-init-test");
    let before = ns.nat("iptables-save");
    let as_nobody = |extra: &[&str]| {
        let mut argv = vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            WEFT,
        ];
        argv.extend_from_slice(FLAGS);
        argv.extend_from_slice(extra);
        ns.exec(&argv)
    };
    let out = as_nobody(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("weft init changes iptables rules and needs root"),
        "{err}"
    );

    // Without root, --dry-run prints the rules for a fresh namespace: the same as root's.
    let out = as_nobody(&["--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (root_dry, _) = ns.weft(&[FLAGS, &["--dry-run"]].concat());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), root_dry);

    // No iptables in PATH: says what to install.
    let out = ns.exec(&[
        "env",
        "PATH=/nonexistent",
        WEFT,
        "init",
        "--proxy-uid",
        "2102",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("install the Debian package iptables"), "{err}");
    assert_eq!(ns.nat("iptables-save"), before);
}

/// Flag errors, as a user sees them; no system needed. Run with --dry-run and without iptables
/// in PATH, so even a check that wrongly passed could not read or change the host's rules.
#[test]
fn bad_flags_are_refused() {
    for (args, want) in [
        (
            &["--skip-outbound-cidrs", "10.0.0.1/8"][..],
            "weft: --skip-outbound-cidrs 10.0.0.1/8: host bits are set: did you mean 10.0.0.0/8?",
        ),
        (
            &["--skip-inbound-ports", "22,4100:4200"][..],
            "weft: --skip-inbound-ports 4100:4200 contains the inbound port 4143",
        ),
        (
            &["--skip-outbound-ports", "x"][..],
            "weft: --skip-outbound-ports x: `x` is not a port (1-65535)",
        ),
    ] {
        let out = Command::new(WEFT)
            .env("PATH", "/nonexistent")
            .args(["init", "--proxy-uid", "2102", "--dry-run"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(WEFT)
        .env("PATH", "/nonexistent")
        .args(["init", "--dry-run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--proxy-uid"), "{err}");
}

/// `--dry-run` only prints, so it needs no iptables: without it (here, with nothing in PATH,
/// as root or not) it prints the rules for a namespace without weft's, both families, and
/// says why it did not read this one's.
#[test]
fn a_dry_run_needs_no_iptables() {
    let out = Command::new(WEFT)
        .env("PATH", "/nonexistent")
        .args(["init", "--proxy-uid", "2102", "--ipv6", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("these are the rules for a namespace without weft's rules"),
        "{err}"
    );
    let rules = String::from_utf8(out.stdout).unwrap();
    assert_eq!(rules.matches("*nat\n").count(), 2, "{rules}");
    assert_eq!(rules.matches("COMMIT\n").count(), 2, "{rules}");
    assert!(
        rules.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT")
            && rules.contains("--uid-owner 2102")
            && rules.contains("-j REDIRECT --to-ports 4140"),
        "{rules}"
    );
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn auto_on_a_fresh_namespace_uses_the_system_iptables_and_leaves_no_trace() {
    require_tools(TOOLS, PACKAGES);
    let ns = Netns::new("weft-init-test");
    let (_, err) = ns.weft(&["init", "--proxy-uid", "2102"]);
    assert!(
        err.contains("using iptables (iptables v") && err.contains("both hold 0 rules"),
        "{err}"
    );
    let (out, err) = ns.weft(&["init", "--uninstall"]);
    assert!(out.contains("removed weft's 2 jumps and 4 chains"), "{out}");
    assert!(
        err.contains("looking in iptables-nft") && err.contains("looking in iptables-legacy"),
        "{err}"
    );
    assert!(!ns.ok(&["iptables-save"]).contains("WEFT"));
    assert!(!ns.ok(&["iptables-legacy-save"]).contains("WEFT"));
    if !ns.ok(&["iptables", "--version"]).contains("legacy") {
        // Looking for weft's rules in iptables-legacy did not create legacy tables.
        let legacy_tables = ns.ok(&["cat", "/proc/net/ip_tables_names"]);
        assert_eq!(legacy_tables, "", "legacy tables appeared");
    }
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn a_failed_ipv6_half_rolls_the_ipv4_half_back() {
    require_tools(TOOLS, PACKAGES);
    let ns = Netns::new("weft-init-test");
    // An ip6tables-nft-restore that always fails, ahead of the real one in PATH.
    let fake = tempfile::tempdir().unwrap();
    let script = fake.path().join("ip6tables-nft-restore");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'ip6tables-restore: line 9 failed' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "PATH={}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap()
    );
    let install = |flags: &[&str]| {
        let mut argv = vec![
            "env",
            path.as_str(),
            WEFT,
            "init",
            "--proxy-uid",
            "2102",
            "--iptables",
            "nft",
        ];
        argv.extend_from_slice(flags);
        ns.exec(&argv)
    };

    // Over nothing: the IPv4 rules are removed again.
    let before = ns.nat("iptables-nft-save");
    let out = install(&["--ipv6"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 9 failed") && err.contains("the IPv4 rules were rolled back too"),
        "{err}"
    );
    assert_eq!(ns.nat("iptables-nft-save"), before);

    // Over a previous install: the previous rules are back, exactly.
    let out = install(&["--skip-outbound-ports", "25"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = ns.nat("iptables-nft-save");
    let out = install(&["--ipv6", "--skip-outbound-ports", "26"]);
    assert!(!out.status.success());
    assert_eq!(ns.nat("iptables-nft-save"), installed);
    assert!(installed.contains("--dport 25 -j RETURN"));
}

/// `weft proxy --proxy-uid` names the user `weft init` exempts: started as anyone else, the
/// proxy refuses before it binds or asks for anything, and says how to run it. No system
/// needed: the test's own user is "anyone else" for a UID one above it.
#[test]
fn the_proxy_refuses_to_run_as_a_user_weft_init_does_not_exempt() {
    let me = weft_proxy::user::RunningAs::current().unwrap();
    let other = (me.uid + 1).to_string();
    let out = Command::new(WEFT)
        .args([
            "proxy",
            "--proxy-uid",
            &other,
            "--token-file",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the proxy runs as uid {} gid {}", me.uid, me.gid))
            && err.contains(&format!("exempts uid {other} from redirection"))
            && err.contains("a loop"),
        "{err}"
    );
    // As the exempt user (by UID or by GID) it gets past the check: to the missing token.
    for flag in [
        ["--proxy-uid".to_string(), me.uid.to_string()],
        ["--proxy-gid".to_string(), me.gid.to_string()],
    ] {
        let out = Command::new(WEFT)
            .arg("proxy")
            .args(&flag)
            .args(["--token-file", "/nonexistent"])
            .args([
                "--inbound-listen",
                "127.0.0.1:0",
                "--outbound-listen",
                "127.0.0.1:0",
            ])
            .args(["--admin-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("a loop"), "{flag:?}: {err}");
        assert!(
            err.contains("cannot read the bootstrap token"),
            "{flag:?}: {err}"
        );
    }
}
