//! The chaos suite's short runs (`make chaos` runs the full ones): jobpipe under a paced load on a
//! throwaway broker that is stopped, killed, cut off and alarmed, and on a three-node cluster
//! losing the node in use. Nothing confirmed is lost, nothing healthy is dead-lettered, and the
//! services serve again within seconds of each fault.

use jobpipe_tests::process::output_within;
use serde_json::Value;
use std::time::Duration;

/// Runs `jobpipe-chaos` with `args` and returns its JSON report, failing with its whole output
/// if it failed.
async fn chaos(args: &[&str]) -> Value {
    let (status, text) = output_within(Duration::from_secs(170), "jobpipe-chaos", args, &[]).await;
    let json = text
        .lines()
        .rev()
        .find(|line| line.starts_with('{') && line.contains("\"variant\""))
        .unwrap_or_else(|| panic!("no JSON report in:\n{text}"));
    let report: Value = serde_json::from_str(json).expect("valid JSON");
    assert!(status.success(), "{status:?}:\n{text}");
    report
}

/// What every run must show.
fn assert_held(report: &Value, faults: usize) {
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["healthy_dead_lettered"], 0, "{report}");
    assert_eq!(
        report["designed_dead_lettered"], report["designed_to_fail"],
        "{report}"
    );
    assert!(report["designed_to_fail"].as_u64() >= Some(1), "{report}");
    assert_eq!(report["confirmed"], report["jobs"], "{report}");
    assert_eq!(
        report["faults"].as_array().map(Vec::len),
        Some(faults),
        "{report}"
    );
    assert_eq!(report["targets"]["calls_within_bound"], true, "{report}");
    assert_eq!(report["targets"]["recovery_within_2s"], true, "{report}");
}

#[tokio::test]
async fn a_single_broker_stopped_killed_cut_off_and_alarmed_loses_nothing() {
    let report = chaos(&["--short", "--jobs", "1200", "--rate", "50", "--gap", "4"]).await;
    assert_held(&report, 6);
    assert_eq!(report["variant"], "single");
}

#[tokio::test]
async fn a_cluster_losing_the_node_in_use_loses_nothing() {
    let report = chaos(&[
        "--short",
        "--cluster",
        "--jobs",
        "1000",
        "--rate",
        "50",
        "--gap",
        "4",
    ])
    .await;
    assert_held(&report, 3);
    assert_eq!(report["variant"], "cluster");
}
