//! `make bench` keeps working: a small run of every phase accounts for every job and prints its
//! table and JSON line.

use jobpipe_tests::process::output;

#[tokio::test]
async fn a_small_benchmark_run_accounts_for_every_job() {
    let args = [
        "--jobs",
        "300",
        "--batch-size",
        "50",
        "--callers",
        "8",
        "--rate",
        "300",
        "--latency-secs",
        "1",
    ];
    let (status, text) = output("jobpipe-bench", &args, &[]).await;
    assert!(status.success(), "{text}");
    let json = text
        .lines()
        .find(|line| line.starts_with('{') && line.contains("\"phases\""))
        .unwrap_or_else(|| panic!("no JSON line in:\n{text}"));
    let report: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 5, "{json}");
    for phase in phases {
        assert_eq!(phase["lost"], 0, "{phase}");
        assert_eq!(phase["duplicates"], 0, "{phase}");
        assert!(phase["jobs"].as_u64() >= Some(300), "{phase}");
        assert!(phase["jobs_per_sec"].as_f64() > Some(0.0), "{phase}");
    }
    assert_eq!(report["targets"]["zero_lost"], true);
    assert!(report["ratios"]["batched"].as_f64().is_some(), "{json}");
    assert!(text.contains("jobpipe batched"), "the table is printed");
}
