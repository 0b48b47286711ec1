//! The resource files (`weft_policy::load::compile`): YAML documents of every kind, checked
//! and compiled, then served to proxies.
//!
//! Input: up to three files' texts, separated by NUL bytes (which YAML never contains).
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use weft_policy::api::DEFAULT_MAX_REGISTRATIONS_PER_IDENTITY;
use weft_policy::authz::{DefaultPolicy, WorkloadPolicy};
use weft_policy::client::decode_event;
use weft_policy::load::{Config, compile};
use weft_policy::metrics::Metrics;
use weft_policy::registry::ServiceEndpoints;
use weft_policy::routes::ServiceRoutes;
use weft_policy::store::{Key, Store};
use weft_runtime::metrics::Registry;

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new(&Registry::new()));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources: Vec<(PathBuf, String)> = text
        .split('\0')
        .take(3)
        .enumerate()
        .map(|(i, t)| (PathBuf::from(format!("{i}.yaml")), t.to_string()))
        .collect();
    match compile(&sources, DefaultPolicy::default()) {
        Err(errors) => {
            // A rejection says where and what.
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(sources.iter().any(|(f, _)| *f == e.file), "{e}");
                assert!(!e.message.is_empty(), "{e:?}");
            }
        }
        Ok(config) => serve(config),
    }
});

/// Everything a valid set defines reaches a proxy intact: each service's endpoints, inbound
/// policy and routes, rendered as the control plane sends them, decode in the proxy's client
/// to what was compiled.
fn serve(config: Config) {
    let mut names: Vec<(String, String)> = config.services.keys().cloned().collect();
    names.extend(config.inbound.keys().cloned());
    names.extend(config.routes.keys().cloned());
    let expected: Vec<_> = names
        .iter()
        .map(|(ns, svc)| {
            let ports = config
                .services
                .get(&(ns.clone(), svc.clone()))
                .map(|d| d.ports.clone());
            (
                config.workload_policy(ns, svc),
                config.service_routes(ns, svc),
                ports,
            )
        })
        .collect();
    let store = Store::new(
        config,
        "fuzz".into(),
        METRICS.clone(),
        DEFAULT_MAX_REGISTRATIONS_PER_IDENTITY,
    );
    let state = store.current();
    for ((namespace, service), (policy, routes, ports)) in names.into_iter().zip(expected) {
        let (ns, svc) = (namespace.clone(), service.clone());
        let got: WorkloadPolicy = received(
            &state
                .render(&Key::Inbound {
                    namespace: ns,
                    service: svc,
                })
                .line,
        );
        assert_eq!(got, policy);
        let (ns, svc) = (namespace.clone(), service.clone());
        let got: ServiceRoutes = received(
            &state
                .render(&Key::Routes {
                    namespace: ns,
                    service: svc,
                })
                .line,
        );
        assert_eq!(got, routes);
        let got: ServiceEndpoints =
            received(&state.render(&Key::Endpoints { namespace, service }).line);
        assert_eq!(got.ports, ports.unwrap_or_default());
    }
}

fn received<T: DeserializeOwned>(line: &[u8]) -> T {
    let line = line.strip_suffix(b"\n").expect("events are whole lines");
    match decode_event::<T>(line) {
        Ok(Some((_, item))) => item,
        Ok(None) => panic!("not a snapshot: {}", String::from_utf8_lossy(line)),
        Err(e) => panic!(
            "the client cannot decode {}: {e}",
            String::from_utf8_lossy(line)
        ),
    }
}
