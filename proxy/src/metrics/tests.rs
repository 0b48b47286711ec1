use super::*;

#[test]
fn one_series_per_label_values() {
    let m = ProxyMetrics::new(Registry::new());
    m.error("outbound", "timeout");
    m.error("outbound", "timeout");
    m.request("outbound", "a", "default/api", true);
    m.request("outbound", "a", "default/web", true);
    m.request("outbound", "a", "default/api", true);
    let text = m.registry.render();
    assert!(
        text.contains(r#"weft_proxy_errors_total{direction="outbound",reason="timeout"} 2"#),
        "{text}"
    );
    let api = r#"weft_proxy_requests_total{direction="outbound",peer="a",dst_service="default/api",tls="true"} 2"#;
    let web = r#"weft_proxy_requests_total{direction="outbound",peer="a",dst_service="default/web",tls="true"} 1"#;
    assert!(text.contains(api) && text.contains(web), "{text}");
    // Values that join to the same string are still different series.
    m.tls_failure("x\u{1f}y", "z");
    m.tls_failure("x", "y\u{1f}z");
    let text = m.registry.render();
    assert_eq!(
        text.matches("weft_proxy_tls_handshake_failures_total{")
            .count(),
        2,
        "{text}"
    );
}
