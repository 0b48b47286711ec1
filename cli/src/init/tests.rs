#![allow(clippy::unwrap_used)]

use super::backend::{Tools, choose_auto, count_rules};
use super::rules::*;
use super::*;

fn raw() -> RawConfig<'static> {
    RawConfig {
        inbound_port: 4143,
        outbound_port: 4140,
        admin_port: 4191,
        proxy_uid: Some(2102),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn check_err(raw: RawConfig<'_>) -> String {
    Config::check(&raw).unwrap_err()
}

#[test]
fn default_ports_match_the_proxy() {
    let port = |addr: &str| addr.rsplit(':').next().unwrap().to_string();
    assert_eq!(
        port(weft_proxy::config::DEFAULT_INBOUND),
        DEFAULT_INBOUND_PORT
    );
    assert_eq!(
        port(weft_proxy::config::DEFAULT_OUTBOUND),
        DEFAULT_OUTBOUND_PORT
    );
    assert_eq!(port(weft_proxy::config::DEFAULT_ADMIN), DEFAULT_ADMIN_PORT);
}

#[test]
fn default_ruleset_exact() {
    let config = Config::check(&raw()).unwrap().config;
    let text = install_ruleset(&config, Family::V4, &NatState::default());
    assert_eq!(
        text,
        "# weft init: transparent interception for `weft proxy`
# (apply with iptables-restore --noflush: one transaction)
*nat
:WEFT_PREROUTING - [0:0]
:WEFT_INBOUND_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_OUTBOUND_REDIRECT - [0:0]
-A WEFT_PREROUTING -p tcp -m tcp --dport 4191 -j RETURN
-A WEFT_PREROUTING -p tcp -j WEFT_INBOUND_REDIRECT
-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -p tcp -j WEFT_OUTBOUND_REDIRECT
-A WEFT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -j WEFT_PREROUTING
-A OUTPUT -p tcp -j WEFT_OUTPUT
COMMIT
"
    );
}

#[test]
fn skips_ranges_cidrs_and_gid() {
    let inbound = strings(&["22", "9000:9100"]);
    let outbound = strings(&["25, 5432-5433"]);
    let cidrs = strings(&["10.96.0.0/12", "169.254.169.254"]);
    let config = Config::check(&RawConfig {
        inbound_port: 15006,
        outbound_port: 15001,
        admin_port: 15000,
        proxy_uid: None,
        proxy_gid: Some(1337),
        skip_inbound_ports: &inbound,
        skip_outbound_ports: &outbound,
        skip_outbound_cidrs: &cidrs,
        ipv6: false,
    })
    .unwrap()
    .config;
    assert_eq!(
        config.chain_rules(Family::V4),
        [
            "-A WEFT_PREROUTING -p tcp -m tcp --dport 15000 -j RETURN",
            "-A WEFT_PREROUTING -p tcp -m tcp --dport 22 -j RETURN",
            "-A WEFT_PREROUTING -p tcp -m tcp --dport 9000:9100 -j RETURN",
            "-A WEFT_PREROUTING -p tcp -j WEFT_INBOUND_REDIRECT",
            "-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A WEFT_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A WEFT_OUTPUT -o lo -j RETURN",
            "-A WEFT_OUTPUT -p tcp -m tcp --dport 25 -j RETURN",
            "-A WEFT_OUTPUT -p tcp -m tcp --dport 5432:5433 -j RETURN",
            "-A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A WEFT_OUTPUT -d 169.254.169.254/32 -j RETURN",
            "-A WEFT_OUTPUT -p tcp -j WEFT_OUTBOUND_REDIRECT",
            "-A WEFT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ]
    );
}

#[test]
fn uid_and_gid_together() {
    let config = Config::check(&RawConfig {
        proxy_gid: Some(2103),
        ..raw()
    })
    .unwrap()
    .config;
    let rules = config.chain_rules(Family::V4);
    assert!(rules.contains(&"-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN".to_string()));
    assert!(rules.contains(&"-A WEFT_OUTPUT -m owner --gid-owner 2103 -j RETURN".to_string()));
}

#[test]
fn bad_input_is_refused_with_the_flag_named() {
    let e = check_err(RawConfig {
        proxy_uid: None,
        ..raw()
    });
    assert!(e.contains("--proxy-uid"), "{e}");

    let skip = strings(&["80,4143"]);
    let e = check_err(RawConfig {
        skip_inbound_ports: &skip,
        ..raw()
    });
    assert_eq!(
        e,
        "--skip-inbound-ports 4143 contains the inbound port 4143: the proxy's own port cannot be skipped"
    );
    let skip = strings(&["4000:5000"]);
    let e = check_err(RawConfig {
        skip_inbound_ports: &skip,
        ..raw()
    });
    assert!(e.contains("4000:5000 contains the inbound port"), "{e}");
    let e = check_err(RawConfig {
        skip_outbound_ports: &skip,
        ..raw()
    });
    assert!(e.contains("contains the outbound port 4140"), "{e}");

    for (bad, want) in [
        ("http", "`http` is not a port (1-65535)"),
        ("0", "`0` is not a port (1-65535)"),
        ("70000", "`70000` is not a port (1-65535)"),
        (
            "9100:9000",
            "the range starts after it ends: write 9000:9100",
        ),
        ("1:", "`` is not a port (1-65535)"),
    ] {
        let skip = strings(&[bad]);
        let e = check_err(RawConfig {
            skip_outbound_ports: &skip,
            ..raw()
        });
        assert_eq!(e, format!("--skip-outbound-ports {bad}: {want}"));
    }

    for (bad, want) in [
        ("10.0.0.1/8", "host bits are set: did you mean 10.0.0.0/8?"),
        ("10.0.0.0/33", "`/33` is not a prefix length (0-32)"),
        ("10.0.0/8", "`10.0.0` is not an IP address"),
        ("fd00::/8", "an IPv6 network needs --ipv6"),
        ("fd00::1/8", "host bits are set: did you mean fd00::/8?"),
        ("fd00::/129", "`/129` is not a prefix length (0-128)"),
        ("example.com", "`example.com` is not an IP address"),
    ] {
        let cidrs = strings(&[bad]);
        let e = check_err(RawConfig {
            skip_outbound_cidrs: &cidrs,
            ..raw()
        });
        assert!(
            e.starts_with(&format!("--skip-outbound-cidrs {bad}: {want}")),
            "{e}"
        );
    }

    let e = check_err(RawConfig {
        outbound_port: 4143,
        ..raw()
    });
    assert!(e.contains("both 4143"), "{e}");
    let e = check_err(RawConfig {
        admin_port: 4143,
        ..raw()
    });
    assert!(
        e.contains("--inbound-port 4143 is also the --admin-port"),
        "{e}"
    );
    let e = check_err(RawConfig {
        inbound_port: 0,
        ..raw()
    });
    assert!(e.contains("--inbound-port 0 is not a port"), "{e}");
}

#[test]
fn proxy_uid_zero_warns() {
    let checked = Config::check(&RawConfig {
        proxy_uid: Some(0),
        ..raw()
    })
    .unwrap();
    assert_eq!(checked.warnings.len(), 1);
    assert!(checked.warnings[0].contains("every process running as root bypasses the proxy"));
    assert!(Config::check(&raw()).unwrap().warnings.is_empty());
}

const SAVE_INSTALLED: &str =
    "# Generated by iptables-save v1.8.9 (nf_tables) on Wed Nov 25 03:25:51 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j WEFT_OUTPUT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:WEFT_INBOUND_REDIRECT - [0:0]
:WEFT_OUTBOUND_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_PREROUTING - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -p tcp -j WEFT_PREROUTING
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A WEFT_OUTPUT -p tcp -j WEFT_OUTBOUND_REDIRECT
COMMIT
";

#[test]
fn state_is_read_from_the_nat_table_only() {
    let state = NatState::parse(SAVE_INSTALLED);
    assert_eq!(
        state.chains,
        [
            "WEFT_INBOUND_REDIRECT",
            "WEFT_OUTBOUND_REDIRECT",
            "WEFT_OUTPUT",
            "WEFT_PREROUTING"
        ]
    );
    assert_eq!(
        state.jumps,
        [
            "-A PREROUTING -p tcp -j WEFT_PREROUTING",
            "-A OUTPUT -p tcp -j WEFT_OUTPUT"
        ]
    );
    assert_eq!(
        state.rules,
        [
            "-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
            "-A WEFT_OUTPUT -p tcp -j WEFT_OUTBOUND_REDIRECT"
        ]
    );
}

#[test]
fn second_install_does_not_repeat_the_jumps() {
    let config = Config::check(&raw()).unwrap().config;
    let text = install_ruleset(&config, Family::V4, &NatState::parse(SAVE_INSTALLED));
    assert!(!text.contains("-A PREROUTING"), "{text}");
    assert!(!text.contains("-A OUTPUT"), "{text}");
    // The chains are still declared, which empties them before they are refilled.
    assert!(text.contains(":WEFT_OUTPUT - [0:0]\n"));
    // Only the missing jump is added.
    let half = NatState {
        jumps: vec!["-A OUTPUT -p tcp -j WEFT_OUTPUT".into()],
        ..Default::default()
    };
    let text = install_ruleset(&config, Family::V4, &half);
    assert!(text.contains("-A PREROUTING -p tcp -j WEFT_PREROUTING\n"));
    assert!(!text.contains("-A OUTPUT"));
}

#[test]
fn uninstall_removes_jumps_then_chains() {
    assert_eq!(uninstall_ruleset(&NatState::default()), None);
    let text = uninstall_ruleset(&NatState::parse(SAVE_INSTALLED)).unwrap();
    assert_eq!(
        text,
        "# weft init --uninstall
*nat
:WEFT_INBOUND_REDIRECT - [0:0]
:WEFT_OUTBOUND_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_PREROUTING - [0:0]
-D PREROUTING -p tcp -j WEFT_PREROUTING
-D OUTPUT -p tcp -j WEFT_OUTPUT
-X WEFT_INBOUND_REDIRECT
-X WEFT_OUTBOUND_REDIRECT
-X WEFT_OUTPUT
-X WEFT_PREROUTING
COMMIT
"
    );
}

#[test]
fn auto_picks_the_backend_holding_rules() {
    let some = "*nat\n-A PREROUTING -j DOCKER\n-A OUTPUT -j DOCKER\nCOMMIT\n";
    let one = "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n";
    let empty = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
    assert_eq!(count_rules(some), 2);
    assert_eq!(choose_auto(Some(some), Some(one)).0, Tools::legacy());
    assert_eq!(choose_auto(Some(one), Some(some)).0, Tools::nft());
    assert_eq!(choose_auto(Some(some), None).0, Tools::legacy());
    assert_eq!(choose_auto(None, Some(one)).0, Tools::nft());
    let (tools, why) = choose_auto(Some(empty), Some(empty));
    assert_eq!(tools, Tools::default_alternative());
    assert!(why.contains("the system's iptables"), "{why}");
    assert_eq!(choose_auto(None, None).0, Tools::default_alternative());
    assert_eq!(
        choose_auto(Some(one), Some(one)).0,
        Tools::default_alternative()
    );
}

#[test]
fn ipv6_ruleset_exact_and_cidrs_split_by_family() {
    let cidrs = strings(&["10.96.0.0/12", "fd00::/8", "2001:db8::1", "0.0.0.0/0"]);
    let config = Config::check(&RawConfig {
        skip_outbound_cidrs: &cidrs,
        ipv6: true,
        ..raw()
    })
    .unwrap()
    .config;
    let v4 = install_ruleset(&config, Family::V4, &NatState::default());
    assert!(v4.contains("-A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN\n"));
    assert!(v4.contains("-A WEFT_OUTPUT -d 0.0.0.0/0 -j RETURN\n"));
    assert!(!v4.contains("fd00"));
    assert_eq!(
        install_ruleset(&config, Family::V6, &NatState::default()),
        "# weft init: transparent interception for `weft proxy`
# (apply with ip6tables-restore --noflush: one transaction)
*nat
:WEFT_PREROUTING - [0:0]
:WEFT_INBOUND_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_OUTBOUND_REDIRECT - [0:0]
-A WEFT_PREROUTING -p tcp -m tcp --dport 4191 -j RETURN
-A WEFT_PREROUTING -p tcp -j WEFT_INBOUND_REDIRECT
-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A WEFT_OUTPUT -d ::1/128 -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -d fd00::/8 -j RETURN
-A WEFT_OUTPUT -d 2001:db8::1/128 -j RETURN
-A WEFT_OUTPUT -p tcp -j WEFT_OUTBOUND_REDIRECT
-A WEFT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -j WEFT_PREROUTING
-A OUTPUT -p tcp -j WEFT_OUTPUT
COMMIT
"
    );
}

#[test]
fn rollback_puts_back_the_previous_state() {
    // Nothing before: empty and delete our chains, delete both jumps.
    assert_eq!(
        rollback_ruleset(&NatState::default()),
        "# weft init: rollback
*nat
:WEFT_PREROUTING - [0:0]
:WEFT_INBOUND_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_OUTBOUND_REDIRECT - [0:0]
-D PREROUTING -p tcp -j WEFT_PREROUTING
-D OUTPUT -p tcp -j WEFT_OUTPUT
-X WEFT_PREROUTING
-X WEFT_INBOUND_REDIRECT
-X WEFT_OUTPUT
-X WEFT_OUTBOUND_REDIRECT
COMMIT
"
    );
    // A previous install: its rules come back, its jumps and chains stay.
    let before = NatState::parse(SAVE_INSTALLED);
    let text = rollback_ruleset(&before);
    assert!(text.contains("-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143\n"));
    assert!(!text.contains("-D ") && !text.contains("-X "), "{text}");
}

#[test]
fn ipv6_tools_are_the_same_backend() {
    assert_eq!(Tools::nft().v6(), Tools::named("ip6tables-nft"));
    assert_eq!(Tools::legacy().v6().restore, "ip6tables-legacy-restore");
    assert_eq!(Tools::default_alternative().v6().save, "ip6tables-save");
}

#[test]
fn a_program_that_stops_reading_reports_its_own_error() {
    // More than a pipe holds: the write fails (broken pipe) once `sh` has exited.
    let input = "x".repeat(1 << 20);
    let err = super::backend::run(
        "sh",
        &["-c", "echo 'line 9 failed' >&2; exit 3"],
        Some(&input),
    )
    .unwrap_err();
    assert!(
        err.contains("failed (exit status: 3): line 9 failed"),
        "{err}"
    );
}
