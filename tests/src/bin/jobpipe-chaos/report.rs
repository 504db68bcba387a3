//! The run's account: a table for people and one JSON line for scripts.

use crate::faults::Injected;
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};

/// Everything the run found out.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// `single` or `cluster`.
    pub(crate) variant: &'static str,
    /// Jobs the load submitted, and canary jobs.
    pub(crate) jobs: usize,
    /// Of those, confirmed by the producer.
    pub(crate) confirmed: usize,
    /// Confirmed and never succeeded nor dead-lettered (must be none).
    pub(crate) lost: Vec<String>,
    /// Started on a consumer killed (SIGKILL) right after, and never seen again: processed and
    /// acknowledged, the "Job finished." line lost with the process.
    pub(crate) unlogged: usize,
    /// Jobs held by a stalled dead-letter worker (a RabbitMQ defect) until the runbook restarted
    /// it; 0 when none stalled.
    pub(crate) stranded: usize,
    /// Dead-lettered without being designed to fail (must be none), with jobpipe's kind or the
    /// broker's reason.
    pub(crate) healthy_dead: Vec<(String, String)>,
    /// Jobs designed to fail, and how many of them are in the dead-letter queue.
    pub(crate) designed_dead: (usize, usize),
    /// Jobs that succeeded more than once, and how many of those a fault explains.
    pub(crate) duplicates: (usize, usize),
    /// Refused submit calls by code (each retried until confirmed).
    pub(crate) refusals: BTreeMap<String, usize>,
    /// The longest a submit call was held, and the bound it must stay under.
    pub(crate) longest_call: (Duration, Duration),
    /// The faults, in order.
    pub(crate) faults: Vec<Injected>,
    /// Consumer outcomes by name, from their logs.
    pub(crate) outcomes: BTreeMap<String, usize>,
    /// Warning and error lines the services logged, and all their lines.
    pub(crate) log_lines: (usize, usize),
    /// How long the run took.
    pub(crate) elapsed: Duration,
    /// When the run failed: the run's queues (name, messages, ready, unacked, leader, members
    /// online), to see where missing jobs are.
    pub(crate) queues: Vec<String>,
}

/// The recovery target after a broker fault.
pub(crate) const RECOVERY_TARGET: Duration = Duration::from_secs(2);

impl Report {
    /// Whether every guarantee held (the exit status).
    pub(crate) fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.healthy_dead.is_empty()
            && self.designed_dead.0 == self.designed_dead.1
    }

    /// The slowest recovery after a broker fault.
    fn slowest_recovery(&self) -> Duration {
        (self.faults.iter())
            .filter(|fault| fault.is_broker_fault())
            .map(|fault| fault.recovery)
            .max()
            .unwrap_or_default()
    }

    /// The table.
    pub(crate) fn print_table(&self) {
        println!();
        println!(
            "jobpipe chaos ({} broker), {:.0} s",
            self.variant,
            self.elapsed.as_secs_f64()
        );
        println!(
            "  {:<24} {:>9} {:>11} {:>12}",
            "fault", "at (s)", "outage (ms)", "recovery (ms)"
        );
        for fault in &self.faults {
            println!(
                "  {:<24} {:>9.1} {:>11} {:>12}",
                fault.fault.to_string(),
                fault.at.as_secs_f64(),
                fault.outage.as_millis(),
                fault.recovery.as_millis()
            );
        }
        let row = |name: &str, value: String| println!("  {name:<44} {value}");
        row(
            "jobs confirmed",
            format!("{} of {}", self.confirmed, self.jobs),
        );
        row(
            "confirmed, never succeeded (must be 0)",
            self.lost.len().to_string(),
        );
        row(
            "outcome unlogged (its consumer SIGKILLed)",
            self.unlogged.to_string(),
        );
        row(
            "held by a stalled dead-letter worker, then run",
            self.stranded.to_string(),
        );
        row(
            "dead-lettered, designed to succeed (must be 0)",
            self.healthy_dead.len().to_string(),
        );
        row(
            "dead-lettered, designed to fail",
            format!("{} of {}", self.designed_dead.1, self.designed_dead.0),
        );
        row(
            "duplicates (explained by a fault)",
            format!("{} ({})", self.duplicates.0, self.duplicates.1),
        );
        row("refused submits, retried", format!("{:?}", self.refusals));
        row(
            "longest submit call",
            format!(
                "{} ms (bound {} ms)",
                self.longest_call.0.as_millis(),
                self.longest_call.1.as_millis()
            ),
        );
        row(
            "slowest recovery after a broker fault",
            format!(
                "{} ms (target {} ms)",
                self.slowest_recovery().as_millis(),
                RECOVERY_TARGET.as_millis()
            ),
        );
        row("consumer outcomes", format!("{:?}", self.outcomes));
        row(
            "service warnings / log lines",
            format!("{} / {}", self.log_lines.0, self.log_lines.1),
        );
        for id in self.lost.iter().take(10) {
            println!("  LOST {id}");
        }
        for (id, why) in self.healthy_dead.iter().take(10) {
            println!("  DEAD {id} ({why})");
        }
        for queue in &self.queues {
            println!("  QUEUE {queue}");
        }
        println!("  {}", if self.passed() { "PASS" } else { "FAIL" });
    }

    /// The JSON line.
    pub(crate) fn json(&self) -> String {
        let faults: Vec<_> = (self.faults.iter())
            .map(|fault| {
                json!({
                    "fault": fault.fault.to_string(),
                    "at_s": round(fault.at.as_secs_f64()),
                    "outage_ms": fault.outage.as_millis(),
                    "recovery_ms": fault.recovery.as_millis(),
                })
            })
            .collect();
        json!({
            "variant": self.variant,
            "jobs": self.jobs,
            "confirmed": self.confirmed,
            "lost": self.lost.len(),
            "unlogged": self.unlogged,
            "stranded_then_run": self.stranded,
            "healthy_dead_lettered": self.healthy_dead.len(),
            "designed_to_fail": self.designed_dead.0,
            "designed_dead_lettered": self.designed_dead.1,
            "duplicates": self.duplicates.0,
            "duplicates_explained": self.duplicates.1,
            "refusals": self.refusals,
            "longest_call_ms": self.longest_call.0.as_millis(),
            "slowest_recovery_ms": self.slowest_recovery().as_millis(),
            "faults": faults,
            "outcomes": self.outcomes,
            "service_warnings": self.log_lines.0,
            "service_log_lines": self.log_lines.1,
            "elapsed_s": round(self.elapsed.as_secs_f64()),
            "targets": {
                "zero_lost": self.lost.is_empty(),
                "zero_healthy_dead_lettered": self.healthy_dead.is_empty(),
                "recovery_within_2s": self.slowest_recovery() <= RECOVERY_TARGET,
                "calls_within_bound": self.longest_call.0 <= self.longest_call.1,
            },
        })
        .to_string()
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}
