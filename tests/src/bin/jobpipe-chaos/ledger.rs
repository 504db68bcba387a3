//! What happened to every job, from the consumers' own words (their JSON "Job finished." log
//! lines) and from the dead-letter queue read at the end; and how much the services logged.

use jobpipe_proto::{headers, job::text_header};
use jobpipe_tests::broker::Probe;
use lapin::types::FieldTable;
use std::{collections::HashMap, time::SystemTime};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::ChildStdout,
    sync::mpsc,
};

/// One "Job finished." line.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    /// The job.
    pub(crate) job_id: String,
    /// `succeeded`, `retried`, `dead_lettered` or `returned`.
    pub(crate) outcome: String,
    /// When the consumer logged it.
    pub(crate) at: SystemTime,
}

/// Log lines worth counting besides job outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// A job's outcome.
    Finished,
    /// A warning or an error.
    Warning,
    /// Anything else.
    Other,
}

/// Every job's outcomes, in the order the consumers logged them.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Outcomes by job id.
    pub(crate) jobs: HashMap<String, Vec<Finished>>,
    /// Warning and error lines, all services together.
    pub(crate) warnings: usize,
    /// Every log line, all services together.
    pub(crate) lines: usize,
}

impl Ledger {
    /// Files one log line.
    pub(crate) fn record(&mut self, line: Line, finished: Option<Finished>) {
        self.lines += 1;
        match line {
            Line::Warning => self.warnings += 1,
            Line::Finished | Line::Other => {}
        }
        if let Some(finished) = finished {
            self.jobs
                .entry(finished.job_id.clone())
                .or_default()
                .push(finished);
        }
    }

    /// How often `job_id` succeeded.
    pub(crate) fn successes(&self, job_id: &str) -> usize {
        self.jobs.get(job_id).map_or(0, |events| {
            events.iter().filter(|e| e.outcome == "succeeded").count()
        })
    }

    /// Whether `job_id` succeeded or was dead-lettered by a consumer.
    pub(crate) fn settled(&self, job_id: &str) -> bool {
        self.jobs.get(job_id).is_some_and(|events| {
            (events.iter()).any(|e| e.outcome == "succeeded" || e.outcome == "dead_lettered")
        })
    }

    /// Outcomes counted by name, over every job.
    pub(crate) fn outcomes(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for event in self.jobs.values().flatten() {
            *counts.entry(event.outcome.clone()).or_default() += 1;
        }
        counts
    }
}

/// Sends every line of a service's standard output, parsed, to `sink`; with `echo`, warnings
/// and errors are printed too.
pub(crate) async fn follow(
    stdout: ChildStdout,
    sink: mpsc::UnboundedSender<(Line, Option<Finished>)>,
    echo: bool,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parsed = parse(&line);
        if echo && parsed.0 == Line::Warning {
            eprintln!("{line}");
        }
        if sink.send(parsed).is_err() {
            return;
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct Json<'a> {
    timestamp: &'a str,
    level: &'a str,
    message: &'a str,
    job_id: Option<String>,
    outcome: Option<String>,
}

fn parse(line: &str) -> (Line, Option<Finished>) {
    let Ok(json) = serde_json::from_str::<Json<'_>>(line) else {
        return (Line::Other, None);
    };
    let kind = match (json.message, json.level) {
        ("Job finished.", _) => Line::Finished,
        (_, "WARN" | "ERROR") => Line::Warning,
        _ => Line::Other,
    };
    let finished = match (kind, json.job_id, json.outcome) {
        (Line::Finished, Some(job_id), Some(outcome)) => Some(Finished {
            job_id,
            outcome,
            at: humantime::parse_rfc3339(json.timestamp).unwrap_or_else(|_| SystemTime::now()),
        }),
        _ => None,
    };
    (kind, finished)
}

/// One message of the dead-letter queue.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// The job's id (`message_id`).
    pub(crate) job_id: String,
    /// jobpipe's failure kind; `None` when the broker dead-lettered it on its own.
    pub(crate) kind: Option<String>,
    /// RabbitMQ's reason (`x-first-death-reason`), when the broker dead-lettered it.
    pub(crate) broker_reason: Option<String>,
}

/// Takes every message of `queue` through `probe`.
pub(crate) async fn dead_letters(probe: &Probe, queue: &str) -> Vec<DeadLetter> {
    probe
        .drain(queue)
        .await
        .into_iter()
        .map(|message| {
            let properties = &message.delivery.properties;
            let table = properties.headers().clone().unwrap_or_default();
            DeadLetter {
                job_id: properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                kind: text(&table, headers::ERROR_KIND),
                broker_reason: text(&table, "x-first-death-reason"),
            }
        })
        .collect()
}

fn text(table: &FieldTable, key: &str) -> Option<String> {
    text_header(table, key).map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_lines_and_warnings_are_told_apart() {
        let finished = r#"{"timestamp":"2026-01-01T00:00:00.5Z","level":"INFO","message":"Job finished.","job_id":"chaos-7","outcome":"succeeded"}"#;
        let (kind, event) = parse(finished);
        assert_eq!(kind, Line::Finished);
        let event = event.expect("an outcome");
        assert_eq!(
            (event.job_id.as_str(), event.outcome.as_str()),
            ("chaos-7", "succeeded")
        );
        let warning = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"WARN","message":"Broker link is down."}"#;
        assert_eq!(parse(warning).0, Line::Warning);
        assert_eq!(parse("not json").0, Line::Other);
    }
}
