use std::time::Duration;

use super::judge::{Expiry, describe_skew, expiry, human, parse_http_date, skew};
use super::report::{Check, Group, Report, Status};
use super::{Clock, clock_check, proxy_cert_check};

#[test]
fn http_dates_read_as_unix_seconds() {
    assert_eq!(
        parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(784_111_777)
    );
    assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
    // A leap day, and the end of a leap year.
    assert_eq!(
        parse_http_date("Thu, 29 Feb 2024 12:00:00 GMT"),
        Some(1_709_208_000)
    );
    assert_eq!(
        parse_http_date("Tue, 31 Dec 2024 23:59:59 GMT"),
        Some(1_735_689_599)
    );
    for bad in [
        "",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 PST",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
    ] {
        assert_eq!(parse_http_date(bad), None, "{bad}");
    }
}

#[test]
fn skew_ignores_the_second_resolution_and_the_round_trip() {
    // Date 100 means the component's clock read [100, 101).
    assert_eq!(skew(100, 100.9, 100.95), 0.0);
    assert_eq!(skew(100, 100.2, 101.7), 0.0);
    // A slow round trip: the answer may have been dated any time while it was in flight.
    assert_eq!(skew(100, 95.0, 102.0), 0.0);
    // Component behind: its latest possible reading (101) is 2 s before we sent.
    assert_eq!(skew(100, 103.0, 103.1), -2.0);
    // Component ahead: its earliest possible reading (110) is 9.5 s after we got the answer.
    assert_eq!(skew(110, 100.0, 100.5), 9.5);
}

#[test]
fn expiry_is_expired_soon_or_valid() {
    let hour = Duration::from_secs(3600);
    assert_eq!(
        expiry(1000.0, 900.0, hour),
        Expiry::Expired(Duration::from_secs(100))
    );
    assert_eq!(
        expiry(1000.0, 1000.0, hour),
        Expiry::Expired(Duration::ZERO)
    );
    assert_eq!(
        expiry(1000.0, 1600.0, hour),
        Expiry::Soon(Duration::from_secs(600))
    );
    assert_eq!(
        expiry(1000.0, 4600.0, hour),
        Expiry::Valid(Duration::from_secs(3600))
    );
}

#[test]
fn durations_read_as_their_two_largest_units() {
    assert_eq!(human(Duration::from_secs(24 * 3600 - 5)), "23h59m");
    assert_eq!(
        human(Duration::from_secs(3 * 86_400 + 4 * 3600 + 59)),
        "3d4h"
    );
    assert_eq!(human(Duration::from_secs(3600)), "1h0m");
    assert_eq!(human(Duration::from_secs(270)), "4m30s");
    assert_eq!(human(Duration::from_millis(12_900)), "12s");
    assert_eq!(human(Duration::ZERO), "0s");
    assert_eq!(
        describe_skew(0.0),
        "in sync (within the 1s resolution of Date)"
    );
    assert_eq!(describe_skew(-0.25), "250ms behind this machine's");
    assert_eq!(describe_skew(62.0), "1m2s ahead of this machine's");
}

#[test]
fn a_proxy_certificate_is_judged_with_a_fix_when_not_fine() {
    let hour = Duration::from_secs(3600);
    let now = 1_000_000.0;
    let ok = proxy_cert_check("proxy default/api", Ok(Some(now + 86_395.0)), now, hour);
    assert_eq!(ok.status, Status::Ok);
    assert_eq!(
        ok.description,
        "proxy default/api certificate is valid (expires in 23h59m)"
    );
    let soon = proxy_cert_check("p", Ok(Some(now + 600.0)), now, hour);
    assert_eq!(soon.status, Status::Warning);
    assert!(soon.detail.unwrap().contains("expires in 10m0s"));
    assert!(soon.fix.unwrap().contains("--leaf-lifetime"));
    let expired = proxy_cert_check("p", Ok(Some(now - 60.0)), now, hour);
    assert_eq!(expired.status, Status::Failure);
    assert_eq!(expired.detail.as_deref(), Some("it expired 1m0s ago"));
    assert!(
        expired
            .fix
            .unwrap()
            .contains(weft_identity::config::ENV_IDENTITY_ADDR)
    );
    assert_eq!(
        proxy_cert_check("p", Ok(Some(0.0)), now, hour).status,
        Status::Failure
    );
    let missing = proxy_cert_check("p", Ok(None), now, hour);
    assert_eq!(missing.status, Status::Warning);
    assert!(
        missing
            .detail
            .unwrap()
            .contains("weft_proxy_certificate_expiry_timestamp_seconds")
    );
}

#[test]
fn a_skewed_clock_fails_with_the_ntp_hint() {
    let clock = |date: Option<&str>, at: f64| Clock {
        component: "control plane".into(),
        date: date.map(str::to_string),
        sent: at,
        received: at + 0.01,
    };
    let date = "Sun, 06 Nov 1994 08:49:37 GMT";
    let five = Duration::from_secs(5);
    let fine = clock_check(&clock(Some(date), 784_111_777.5), five);
    assert_eq!(fine.status, Status::Ok);
    assert_eq!(
        fine.description,
        "control plane clock is in sync (within the 1s resolution of Date)"
    );
    let behind = clock_check(&clock(Some(date), 784_111_788.0), five);
    assert_eq!(behind.status, Status::Failure);
    assert_eq!(
        behind.detail.as_deref(),
        Some("it is 10s behind this machine's")
    );
    assert!(behind.fix.unwrap().contains("NTP"));
    assert_eq!(clock_check(&clock(None, 0.0), five).status, Status::Warning);
}

#[test]
fn the_report_reads_like_linkerd_check() {
    let groups = vec![
        Group {
            name: "control plane".into(),
            checks: vec![Check::failure(
                "control plane admin is reachable at 127.0.0.1:1",
                "control plane admin at 127.0.0.1:1 is unreachable: refused",
                "start it",
            )],
        },
        Group {
            name: "proxies".into(),
            checks: vec![Check::ok("proxy a is ready"), Check::warning("x", "y", "z")],
        },
    ];
    let r = Report::new(groups);
    assert_eq!((r.failures, r.warnings, r.healthy), (1, 1, false));
    assert_eq!(
        r.table(),
        "control plane\n-------------\n\
         × control plane admin is reachable at 127.0.0.1:1\n    \
         control plane admin at 127.0.0.1:1 is unreachable: refused\n    fix: start it\n\n\
         proxies\n-------\n√ proxy a is ready\n‼ x\n    y\n    fix: z\n\n\
         Status check results are ×: 1 check failed"
    );
    let fine = Report::new(vec![Group {
        name: "g".into(),
        checks: vec![Check::ok("a"), Check::warning("b", "c", "d")],
    }]);
    assert!(fine.healthy);
    assert_eq!(fine.summary(), "Status check results are √ (1 warning)");
    let json = serde_json::to_value(&fine).unwrap();
    assert_eq!(json["groups"][0]["checks"][1]["status"], "warning");
    assert_eq!(json["groups"][0]["checks"][0].get("fix"), None);
}

#[test]
fn a_proxy_trusting_other_anchors_than_the_ca_fails_and_an_old_issuer_warns() {
    use super::trust::{CaView, ca_view, proxy_trust};
    use weft_policy::registry::TrustReport;
    let fp = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let (old, new, issuer, old_issuer) = (fp('a'), fp('b'), fp('c'), fp('d'));
    let text = format!(
        "weft_identity_trust_anchor{{fingerprint=\"{old}\"}} 0\n\
         weft_identity_trust_anchor{{fingerprint=\"{new}\"}} 1\n\
         weft_identity_issuer{{fingerprint=\"{old_issuer}\"}} 0\n\
         weft_identity_issuer{{fingerprint=\"{issuer}\"}} 1\n"
    );
    let ca = ca_view(&crate::stat::prom::parse(&text).unwrap()).unwrap();
    assert_eq!(
        ca,
        CaView {
            anchors: vec![new.clone()],
            issuer: Some(issuer.clone()),
        }
    );
    let report = |anchors: &[&String], issuer: &String| TrustReport {
        anchors: anchors.iter().map(|a| (*a).clone()).collect(),
        issuer: issuer.clone(),
    };
    let name = "proxy default/web (127.0.0.1:4191)";
    let fine = proxy_trust(name, Some(&report(&[&new], &issuer)), &ca);
    assert_eq!(fine.status, Status::Ok);
    let lagging = proxy_trust(name, Some(&report(&[&old], &old_issuer)), &ca);
    assert_eq!(lagging.status, Status::Failure);
    assert!(
        lagging
            .detail
            .unwrap()
            .contains("it lacks sha256:bbbbbbbbbbbb…")
    );
    let stale = proxy_trust(name, Some(&report(&[&old, &new], &issuer)), &ca);
    assert_eq!(stale.status, Status::Failure);
    assert!(stale.detail.unwrap().contains("no longer uses"));
    let old_leaf = proxy_trust(name, Some(&report(&[&new], &old_issuer)), &ca);
    assert_eq!(old_leaf.status, Status::Warning);
    assert!(old_leaf.fix.unwrap().contains("--reissue-within"));
    assert_eq!(proxy_trust(name, None, &ca).status, Status::Warning);
    // An identity service that does not say: nothing to compare with.
    assert_eq!(ca_view(&[]), None);
}
