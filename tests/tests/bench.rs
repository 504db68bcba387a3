//! `make bench` keeps working: a small run of every phase accounts for every job (dead letters
//! replayed included) and prints its table and JSON line.

use jobpipe_tests::process::output_within;
use std::time::Duration;

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
        "--dead-letters",
        "2500",
    ];
    // About 10 s alone; several times that beside the rest of `make test` on two cores.
    let (status, text) = output_within(Duration::from_secs(120), "jobpipe-bench", &args, &[]).await;
    assert!(status.success(), "{text}");
    let json = text
        .lines()
        .find(|line| line.starts_with('{') && line.contains("\"phases\""))
        .unwrap_or_else(|| panic!("no JSON line in:\n{text}"));
    let report: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let phases = report["phases"].as_array().expect("phases");
    // The limit, the plain client at jobpipe's settings and at the callers' window, batched, one
    // per RPC, both paced.
    assert_eq!(phases.len(), 7, "{json}");
    assert!(
        report["ratios"]["single_vs_callers_window"]
            .as_f64()
            .is_some(),
        "{json}"
    );
    // The sweep tried every pairing; the limit is the full phase at its best pairing's settings,
    // with the sweep's best run beside it.
    let sweep = report["sweep"].as_array().expect("sweep");
    assert_eq!(sweep.len(), 9, "{json}");
    let limit = &report["limit"];
    assert_eq!(limit["settings"]["window"], sweep[0]["window"], "{json}");
    assert_eq!(
        limit["settings"]["prefetch"], sweep[0]["prefetch"],
        "{json}"
    );
    assert_eq!(limit["jobs_per_sec"], phases[0]["jobs_per_sec"], "{json}");
    assert_eq!(
        limit["sweep_best_jobs_per_sec"], sweep[0]["jobs_per_sec"],
        "{json}"
    );
    for phase in phases {
        assert_eq!(phase["lost"], 0, "{phase}");
        assert_eq!(phase["duplicates"], 0, "{phase}");
        // Nothing is refused at this small load, and a refusal would be counted, not dropped.
        assert_eq!(phase["refused"], 0, "{phase}");
        assert!(phase["jobs"].as_u64() >= Some(300), "{phase}");
        assert!(phase["jobs_per_sec"].as_f64() > Some(0.0), "{phase}");
    }
    // The batched load again through an HTTP and a gRPC worker, read against the in-process one.
    let workers = report["worker_phases"].as_array().expect("worker phases");
    assert_eq!(workers.len(), 2, "{json}");
    for phase in workers {
        assert_eq!(phase["lost"], 0, "{phase}");
        assert!(phase["jobs"].as_u64() >= Some(300), "{phase}");
    }
    assert!(
        report["ratios"]["http_vs_noop"].as_f64().is_some(),
        "{json}"
    );
    assert!(
        report["ratios"]["grpc_vs_noop"].as_f64().is_some(),
        "{json}"
    );
    // Dead letters listed, replayed and purged (two full pages of 1,000 and one by job id).
    let dead = &report["dead_letters"];
    assert_eq!(dead["entries"], 2500, "{json}");
    assert_eq!(dead["lost"], 0, "{json}");
    assert!(dead["replay_per_sec"].as_f64() > Some(0.0), "{json}");
    assert!(dead["progress_messages"].as_u64() >= Some(1), "{json}");
    assert_eq!(report["targets"]["zero_lost"], true);
    assert!(report["ratios"]["batched"].as_f64().is_some(), "{json}");
    assert!(text.contains("jobpipe batched"), "the table is printed");
}
