//! What happened to every job, from the consumers' own words (their JSON "Job finished." log
//! lines) and from the dead-letter queue read at the end; and how much the services logged.

use jobpipe_proto::{headers, job::text_header};
use jobpipe_tests::broker::Probe;
use lapin::types::FieldTable;
use std::{collections::HashMap, fs::File, io::Write, time::SystemTime};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::ChildStdout,
    sync::mpsc,
};

/// A job's attempt starting or ending, as a consumer logged it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The job.
    pub(crate) job_id: String,
    /// `started` ("Job started."), or the outcome of "Job finished.": `succeeded`, `retried`,
    /// `dead_lettered` or `returned`.
    pub(crate) outcome: String,
    /// When the consumer logged it.
    pub(crate) at: SystemTime,
    /// The consumer slot that logged it.
    pub(crate) slot: usize,
}

/// Log lines worth counting besides job outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// A job's start or outcome.
    Job,
    /// A warning or an error.
    Warning,
    /// Anything else.
    Other,
}

/// Every job's outcomes, in the order the consumers logged them.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Starts and outcomes by job id.
    pub(crate) jobs: HashMap<String, Vec<Event>>,
    /// Warning and error lines, all services together.
    pub(crate) warnings: usize,
    /// Every log line, all services together.
    pub(crate) lines: usize,
}

impl Ledger {
    /// Files one log line.
    pub(crate) fn record(&mut self, line: Line, event: Option<Event>) {
        self.lines += 1;
        match line {
            Line::Warning => self.warnings += 1,
            Line::Job | Line::Other => {}
        }
        if let Some(event) = event {
            self.jobs
                .entry(event.job_id.clone())
                .or_default()
                .push(event);
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
        for event in self
            .jobs
            .values()
            .flatten()
            .filter(|e| e.outcome != STARTED)
        {
            *counts.entry(event.outcome.clone()).or_default() += 1;
        }
        counts
    }
}

/// The outcome name of a "Job started." event.
pub(crate) const STARTED: &str = "started";

/// Sends every line of the standard output of a service (consumer `slot`, or the producer),
/// parsed, to `sink`; with `echo`, warnings and errors are printed too, and with `copy` every line
/// is kept there as it came.
pub(crate) async fn follow(
    stdout: ChildStdout,
    slot: usize,
    sink: mpsc::UnboundedSender<(Line, Option<Event>)>,
    echo: bool,
    mut copy: Option<File>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(Err(error)) = copy.as_mut().map(|file| writeln!(file, "{line}")) {
            eprintln!("chaos: no longer keeping a service's log lines: {error}");
            copy = None;
        }
        let parsed = parse(&line, slot);
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

fn parse(line: &str, slot: usize) -> (Line, Option<Event>) {
    let Ok(json) = serde_json::from_str::<Json<'_>>(line) else {
        return (Line::Other, None);
    };
    let (kind, outcome) = match (json.message, json.level) {
        ("Job finished.", _) => (Line::Job, json.outcome),
        ("Job started.", _) => (Line::Job, Some(STARTED.to_owned())),
        (_, "WARN" | "ERROR") => (Line::Warning, None),
        _ => (Line::Other, None),
    };
    let event = match (json.job_id, outcome) {
        (Some(job_id), Some(outcome)) => Some(Event {
            job_id,
            outcome,
            at: humantime::parse_rfc3339(json.timestamp).unwrap_or_else(|_| SystemTime::now()),
            slot,
        }),
        _ => None,
    };
    (kind, event)
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
        let (kind, event) = parse(finished, 1);
        assert_eq!(kind, Line::Job);
        let event = event.expect("an outcome");
        assert_eq!(
            (event.job_id.as_str(), event.outcome.as_str()),
            ("chaos-7", "succeeded")
        );
        let warning = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"WARN","message":"Broker link is down."}"#;
        assert_eq!(parse(warning, 0).0, Line::Warning);
        assert_eq!(parse("not json", 0).0, Line::Other);
    }
}
