use std::path::PathBuf;

use weft_identity::SpiffeId;
use weft_policy::authz::{DefaultPolicy, authorize};
use weft_policy::load::{Config, compile};

use super::*;
use crate::load::USER_AGENT;
use crate::mesh::resources_yaml;

const PORT: u16 = 8080;

/// The control plane's resources of the stack benchmark, with or without the route, compiled
/// by the control plane's own loader.
fn load(full: bool) -> Config {
    let mut sources = vec![
        (PathBuf::from("mesh.yaml"), resources_yaml(PORT)),
        (PathBuf::from(BACKENDS_FILE), backends_yaml(PORT)),
    ];
    if full {
        sources.push((PathBuf::from(ROUTE_FILE), route_yaml(PORT)));
    }
    match compile(&sources, DefaultPolicy::default()) {
        Ok(config) => config,
        Err(errors) => panic!("{}", weft_policy::load::render_errors(&errors)),
    }
}

fn headers(user_agent: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::USER_AGENT, user_agent.parse().unwrap());
    h
}

#[test]
fn the_full_route_loads_and_the_load_takes_the_split_rule() {
    let routes = load(true).service_routes("default", "api");
    let names: Vec<&str> = routes.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["mobile", "split"]);
    let get = http::Method::GET;
    let rule = routes.find(&get, "/", &headers(USER_AGENT)).unwrap();
    assert_eq!(rule.name, "split");
    assert_eq!(rule.route, format!("default/{ROUTE_NAME}"));
    let backends: Vec<(&str, u32)> = rule
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assert_eq!(backends, [("api-v1", 50), ("api-v2", 50)]);
    assert!(rule.timeouts.is_some() && rule.retry.is_some());
    assert!(rule.circuit_breaker.is_some() && rule.fault.is_some());
    let mobile = routes.find(&get, "/", &headers("Mobile Safari")).unwrap();
    assert_eq!(mobile.name, "mobile");
}

#[test]
fn the_backends_select_the_api_workload_and_minimal_has_no_route() {
    let config = load(false);
    assert!(config.service_routes("default", "api").rules.is_empty());
    for backend in ["api", "api-v1", "api-v2", "api-v3"] {
        let selector = config.selector("default", backend);
        assert_eq!(
            selector.get("app").map(String::as_str),
            Some("api"),
            "{backend}"
        );
        assert_eq!(
            config.services[&("default".into(), backend.into())].ports,
            [PORT]
        );
    }
}

#[test]
fn api_still_admits_web_with_the_full_route() {
    let policy = load(true).workload_policy("default", "api");
    let web = SpiffeId::parse("spiffe://weft.local/ns/default/sa/web").unwrap();
    let other = SpiffeId::parse("spiffe://weft.local/ns/default/sa/other").unwrap();
    let get = http::Method::GET;
    assert!(authorize(policy.port(PORT), Some(&web), &get, "/").is_allowed());
    assert!(!authorize(policy.port(PORT), Some(&other), &get, "/").is_allowed());
}

#[test]
fn route_requests_sum_this_route_and_tell_an_absent_metric() {
    let other = "# TYPE weft_proxy_requests_total counter\n\
                 weft_proxy_requests_total{direction=\"outbound\"} 9\n";
    assert_eq!(route_requests(other, ROUTE_NAME), None);
    let page = format!(
        "{other}# TYPE weft_route_requests_total counter\n\
         weft_route_requests_total{{dst_service=\"api.default:8080\",route=\"default\",rule=\"default\",backend=\"api\"}} 40\n\
         weft_route_requests_total{{dst_service=\"api.default:8080\",route=\"default/{ROUTE_NAME}\",rule=\"split\",backend=\"api-v1\"}} 5\n\
         weft_route_requests_total{{dst_service=\"api.default:8080\",route=\"{ROUTE_NAME}\",rule=\"split\",backend=\"api-v2\"}} 6\n\
         weft_route_requests_total{{dst_service=\"api.default:8080\",route=\"default/{ROUTE_NAME}-2\",rule=\"split\",backend=\"api-v2\"}} 100\n\
         weft_route_requests_total_other{{route=\"{ROUTE_NAME}\"}} 1000\n"
    );
    assert_eq!(route_requests(&page, ROUTE_NAME), Some(11.0));
    assert_eq!(route_requests(&page, "absent"), Some(0.0));
}

#[test]
fn a_switch_shows_when_the_route_counts_or_stops_counting() {
    // Full: the route's series grow (or appear).
    assert!(shows(true, None, Some(3.0)));
    assert!(shows(true, Some(10.0), Some(13.0)));
    assert!(!shows(true, Some(10.0), Some(10.0)));
    assert!(!shows(true, None, None));
    // Minimal: the metric is there and the route's series no longer grow.
    assert!(shows(false, Some(13.0), Some(13.0)));
    assert!(shows(false, Some(0.0), Some(0.0)));
    assert!(!shows(false, Some(13.0), Some(16.0)));
    assert!(!shows(false, None, None));
}

#[test]
fn the_control_plane_status_counts_routes() {
    let status =
        r#"{"valid": true, "config": {"summary": {"kinds": {"HTTPRoute": 1, "Service": 5}}}}"#;
    assert_eq!(http_routes_loaded(status), Some(1));
    let none = r#"{"valid": true, "config": {"summary": {"kinds": {"Service": 5}}}}"#;
    assert_eq!(http_routes_loaded(none), Some(0));
    assert_eq!(http_routes_loaded("not json"), None);
}
