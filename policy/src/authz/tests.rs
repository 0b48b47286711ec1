//! The decision table: every kind of rule, route narrowing and the default policies.

use super::*;
use crate::wire::{Method as M, PathMatch};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn web() -> SpiffeId {
    id("spiffe://weft.local/ns/default/sa/web")
}

fn policy(rules: Vec<AllowRule>) -> InboundPolicy {
    InboundPolicy::new(InboundPolicySpec {
        name: "server:default/api".into(),
        rules,
    })
}

fn rule(name: &str) -> AllowRule {
    AllowRule {
        policy: name.into(),
        ..AllowRule::default()
    }
}

fn get() -> http::Method {
    http::Method::GET
}

/// (policy, peer, method, path, expected: Ok(allowing policy) or Err(reason)).
type Case<'a> = (
    &'a InboundPolicy,
    Option<&'a SpiffeId>,
    &'a http::Method,
    &'a str,
    Result<&'a str, DenyReason>,
);

#[test]
fn decision_table() {
    let exact = policy(vec![AllowRule {
        identities: vec![web()],
        ..rule("default/from-web")
    }]);
    let namespace = policy(vec![AllowRule {
        namespaces: vec!["prod".into()],
        ..rule("default/from-prod")
    }]);
    let any_auth = policy(vec![AllowRule {
        authenticated: true,
        ..rule("default/mesh")
    }]);
    let unauth = policy(vec![AllowRule {
        unauthenticated: true,
        ..rule("default/anyone")
    }]);
    let narrowed = policy(vec![AllowRule {
        identities: vec![web()],
        routes: vec![AuthzRoute {
            path: Some(PathMatch::Prefix("/v1/".into())),
            methods: vec![M(http::Method::GET), M(http::Method::POST)],
        }],
        ..rule("default/web-v1")
    }]);
    let server_without_authz = policy(vec![]);
    let d_auth = InboundPolicy::default_policy(DefaultPolicy::AllAuthenticated);
    let d_unauth = InboundPolicy::default_policy(DefaultPolicy::AllUnauthenticated);
    let d_deny = InboundPolicy::default_policy(DefaultPolicy::Deny);

    let other_ns = id("spiffe://weft.local/ns/other/sa/web");
    let prod_job = id("spiffe://weft.local/ns/prod/sa/job");
    let del = http::Method::DELETE;
    let post = http::Method::POST;
    let web = web();
    let get = get();
    use DenyReason::*;
    // (policy, peer, method, path, expected: Ok(allowing policy) / Err(reason))
    let cases: Vec<Case<'_>> = vec![
        (&exact, Some(&web), &get, "/", Ok("default/from-web")),
        (&exact, Some(&other_ns), &get, "/", Err(IdentityNotAllowed)),
        (&exact, None, &get, "/", Err(Unauthenticated)),
        (
            &namespace,
            Some(&prod_job),
            &get,
            "/",
            Ok("default/from-prod"),
        ),
        (&namespace, Some(&web), &get, "/", Err(IdentityNotAllowed)),
        (&namespace, None, &get, "/", Err(Unauthenticated)),
        (&any_auth, Some(&other_ns), &get, "/x", Ok("default/mesh")),
        (&any_auth, None, &get, "/x", Err(Unauthenticated)),
        (&unauth, None, &get, "/x", Ok("default/anyone")),
        (&unauth, Some(&web), &get, "/x", Ok("default/anyone")),
        (
            &narrowed,
            Some(&web),
            &get,
            "/v1/users",
            Ok("default/web-v1"),
        ),
        (
            &narrowed,
            Some(&web),
            &post,
            "/v1/users",
            Ok("default/web-v1"),
        ),
        (
            &narrowed,
            Some(&web),
            &del,
            "/v1/users",
            Err(RouteNotAllowed),
        ),
        (
            &narrowed,
            Some(&web),
            &get,
            "/v2/users",
            Err(RouteNotAllowed),
        ),
        (&narrowed, Some(&web), &get, "/v1x", Err(RouteNotAllowed)),
        (
            &narrowed,
            Some(&other_ns),
            &get,
            "/v1/users",
            Err(IdentityNotAllowed),
        ),
        (
            &server_without_authz,
            Some(&web),
            &get,
            "/",
            Err(NoAuthorization),
        ),
        (
            &d_auth,
            Some(&web),
            &get,
            "/",
            Ok("default:all-authenticated"),
        ),
        (&d_auth, None, &get, "/", Err(Unauthenticated)),
        (
            &d_unauth,
            None,
            &get,
            "/",
            Ok("default:all-unauthenticated"),
        ),
        (&d_deny, Some(&web), &get, "/", Err(NoAuthorization)),
        (&d_deny, None, &get, "/", Err(NoAuthorization)),
    ];
    for (i, (p, peer, method, path, want)) in cases.into_iter().enumerate() {
        let got = authorize(p, peer, method, path);
        match (want, &got) {
            (Ok(allowed_by), Decision::Allow { policy }) => {
                assert_eq!(&**policy, allowed_by, "case {i}")
            }
            (Err(reason), Decision::Deny { policy, reason: r }) => {
                assert_eq!(*r, reason, "case {i}");
                assert_eq!(
                    &**policy,
                    p.name(),
                    "case {i}: the deny names the port's policy"
                );
            }
            (want, got) => panic!("case {i}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn several_rules_any_one_allows() {
    let p = policy(vec![
        AllowRule {
            identities: vec![web()],
            routes: vec![AuthzRoute {
                path: Some(PathMatch::Exact("/health".into())),
                methods: vec![],
            }],
            ..rule("a")
        },
        AllowRule {
            namespaces: vec!["default".into()],
            routes: vec![AuthzRoute {
                path: None,
                methods: vec![M(http::Method::GET)],
            }],
            ..rule("b")
        },
    ]);
    assert_eq!(
        authorize(&p, Some(&web()), &http::Method::PUT, "/health"),
        Decision::Allow { policy: "a".into() }
    );
    assert_eq!(
        authorize(&p, Some(&web()), &http::Method::GET, "/other"),
        Decision::Allow { policy: "b".into() }
    );
    assert!(!authorize(&p, Some(&web()), &http::Method::PUT, "/other").is_allowed());
}

#[test]
fn wire_round_trip_keeps_decisions() {
    let p = WorkloadPolicy {
        namespace: "default".into(),
        service: "api".into(),
        ports: [(
            8080,
            policy(vec![AllowRule {
                identities: vec![web()],
                routes: vec![AuthzRoute {
                    path: Some(PathMatch::Prefix("/v1".into())),
                    methods: vec![M(http::Method::GET)],
                }],
                ..rule("default/web")
            }]),
        )]
        .into(),
        default: InboundPolicy::default_policy(DefaultPolicy::Deny),
        opaque_ports: vec![2525],
    };
    let json = serde_json::to_string(&p).unwrap();
    let back: WorkloadPolicy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    assert!(authorize(back.port(8080), Some(&web()), &get(), "/v1/a").is_allowed());
    assert!(!authorize(back.port(9000), Some(&web()), &get(), "/v1/a").is_allowed());
}
