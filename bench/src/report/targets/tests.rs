//! Tests of the targets: missed without the headline rate, and the stack's CPU goal.

use super::*;
use crate::report::tests::mesh_report;

#[test]
fn targets_without_the_headline_rate_are_missed() {
    let report = mesh_report(false);
    let targets = mesh_targets(
        2000,
        &report.comparisons,
        &report.throughput,
        &report.proxies,
    );
    assert!(!targets[0].met && !targets[1].met, "{targets:?}");
    assert!(
        targets
            .iter()
            .filter(|t| t.what.starts_with("CPU"))
            .all(|t| !t.met)
    );
}

#[test]
fn the_stack_target_is_under_ten_percent_more_cpu() {
    let t = full_stack_cpu_target(&Spread::of(&[1.04, 1.02, 1.12]), 1000);
    assert!(t.met);
    assert_eq!(t.measured, "1.040x (+4.0 %)");
    assert_eq!(t.goal, "< 1.10x (under +10 %)");
    assert!(!full_stack_cpu_target(&Spread::of(&[1.11]), 1000).met);
    // No CPU measured: not met.
    assert!(!full_stack_cpu_target(&Spread::of(&[]), 1000).met);
}
