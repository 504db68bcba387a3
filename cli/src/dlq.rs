//! `jobpipe dlq list|show|replay|purge`: a queue's dead letters, read with their whole failure
//! history, replayed as fresh first attempts once the cause is fixed, or thrown away. Tables for
//! people, `-o json` for scripts; `--dry-run` wherever something changes.

use crate::{
    Error, Failure,
    target::{Grpc, Target},
};
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};
use jobpipe_proto::v1::{
    DeadLetter, DeadLetterFilter, GetDeadLetterRequest, ListDeadLettersRequest,
    PurgeDeadLettersRequest, ReplayDeadLettersRequest, ReplayProgress,
    admin_service_client::AdminServiceClient,
};
use serde_json::{Value, json};
use std::{
    io::{BufRead, IsTerminal, Write},
    time::{Duration, SystemTime},
};

/// How results print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// A table, for people.
    #[default]
    Table,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters, oldest first (every page unless `--limit`).
    List(ListArgs),
    /// Show one dead letter with its whole history and its payload.
    Show(ShowArgs),
    /// Replay dead letters as fresh first attempts; each is removed only once the broker
    /// confirmed its replay.
    Replay(ReplayArgs),
    /// Remove dead letters for good.
    Purge(PurgeArgs),
}

/// Which dead letters.
#[derive(Debug, Clone, Args)]
pub(crate) struct Selector {
    /// The queue whose dead letters (default: `default`).
    #[arg(long, default_value = "default")]
    queue: String,
    /// Only jobs of this type; repeatable.
    #[arg(long = "type")]
    job_types: Vec<String>,
    /// Only this failure kind (permanent, exhausted, timeout, no_handler, decode, rejected,
    /// delivery_limit); repeatable.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Only this job id; repeatable.
    #[arg(long = "job-id")]
    job_ids: Vec<String>,
    /// Only those that failed within this long before now, e.g. `1h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only those that failed at or after this instant (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    after: Option<SystemTime>,
    /// Only those that failed before this instant (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    before: Option<SystemTime>,
}

impl Selector {
    fn filter(&self) -> DeadLetterFilter {
        // An age beyond the epoch selects everything since it.
        let since = self.since.map(|ago| {
            SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        let after = match (since, self.after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        DeadLetterFilter {
            job_types: self.job_types.clone(),
            kinds: self.kinds.clone(),
            job_ids: self.job_ids.clone(),
            failed_after: after.map(prost_types::Timestamp::from),
            failed_before: self.before.map(prost_types::Timestamp::from),
        }
    }

    /// Refuses a `verb` that would change every dead letter without `--all`.
    fn require(&self, all: bool, verb: &str) -> Result<(), Error> {
        if self.is_empty() && !all {
            return Err(Error::usage(format!(
                "{verb}: select dead letters (--type, --kind, --job-id, --since...) or pass --all"
            )));
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.job_types.is_empty()
            && self.kinds.is_empty()
            && self.job_ids.is_empty()
            && self.since.is_none()
            && self.after.is_none()
            && self.before.is_none()
    }
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    select: Selector,
    /// Show at most this many.
    #[arg(long)]
    limit: Option<usize>,
    /// Include payloads (up to 64 KiB each; JSON output only, base64).
    #[arg(long)]
    payload: bool,
    /// `table` or `json`.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The job id.
    job_id: String,
    /// The queue whose dead letter.
    #[arg(long, default_value = "default")]
    queue: String,
    /// `table` or `json`.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    select: Selector,
    /// Replay every dead letter of the queue (needed when nothing else selects).
    #[arg(long)]
    all: bool,
    /// Count and show what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Jobs per second at most (default: as fast as the broker confirms).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Replay into this queue instead of the one the jobs failed in.
    #[arg(long)]
    to: Option<String>,
    /// `table` or `json`.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    select: Selector,
    /// Purge every dead letter of the queue (needed when nothing else selects).
    #[arg(long)]
    all: bool,
    /// Count what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
    /// `table` or `json`.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Runs a `dlq` command.
pub(crate) async fn run(target: &Target, command: DlqCommand) -> Result<(), Error> {
    let mut client = AdminServiceClient::new(target.connect().await?);
    match command {
        DlqCommand::List(args) => list(target, &mut client, args).await,
        DlqCommand::Show(args) => show(target, &mut client, args).await,
        DlqCommand::Replay(args) => replay(target, &mut client, args).await,
        DlqCommand::Purge(args) => purge(target, &mut client, args).await,
    }
}

async fn list(
    target: &Target,
    client: &mut AdminServiceClient<Grpc>,
    args: ListArgs,
) -> Result<(), Error> {
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut entries = Vec::new();
    let mut page_token = String::new();
    while entries.len() < limit {
        let request = ListDeadLettersRequest {
            queue: args.select.queue.clone(),
            filter: Some(args.select.filter()),
            page_size: u32::try_from((limit - entries.len()).min(1000)).unwrap_or(1000),
            page_token,
            include_payload: args.payload,
        };
        let page = target
            .call("ListDeadLetters", client.list_dead_letters(request))
            .await?;
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    entries.truncate(limit);
    if args.output == Output::Json {
        let list: Vec<Value> = entries
            .iter()
            .map(|e| entry_json(e, args.payload))
            .collect();
        out!("{}", json!({ "queue": args.select.queue, "entries": list }));
        return Ok(());
    }
    if entries.is_empty() {
        out!("No dead letters in queue {}.", args.select.queue);
        return Ok(());
    }
    let mut table = table(&["JOB ID", "TYPE", "KIND", "ATTEMPTS", "FAILED AT", "ERROR"]);
    for entry in &entries {
        table.add_row(vec![
            entry.job_id.clone(),
            entry.r#type.clone(),
            entry.kind.clone(),
            entry.attempts.to_string(),
            time(entry.failed_at.as_ref()),
            short(&entry.error, 60),
        ]);
    }
    out!("{table}");
    let queue = &args.select.queue;
    out!(
        "{} dead letter(s) in queue {queue}. Show one: jobpipe dlq show <JOB ID> --queue {queue}; replay: jobpipe dlq replay --job-id <JOB ID> --queue {queue}",
        entries.len()
    );
    Ok(())
}

async fn show(
    target: &Target,
    client: &mut AdminServiceClient<Grpc>,
    args: ShowArgs,
) -> Result<(), Error> {
    let request = GetDeadLetterRequest {
        queue: args.queue,
        job_id: args.job_id,
    };
    let entry = target
        .call("GetDeadLetter", client.get_dead_letter(request))
        .await?;
    if args.output == Output::Json {
        out!("{}", entry_json(&entry, true));
        return Ok(());
    }
    out!("job id        {}", entry.job_id);
    out!("type          {}", entry.r#type);
    out!("queue         {}", entry.queue);
    out!("kind          {}", entry.kind);
    out!("error         {}", entry.error);
    out!("failed at     {}", time(entry.failed_at.as_ref()));
    out!("submitted at  {}", time(entry.submitted_at.as_ref()));
    out!("attempts      {}", entry.attempts);
    for (key, value) in &entry.metadata {
        out!("metadata      {key}={value}");
    }
    out!(
        "payload       {} bytes, {}",
        entry.payload_size,
        entry.content_type
    );
    if !entry.payload.is_empty() {
        let text = String::from_utf8_lossy(&entry.payload);
        out!("              {}", short(&text, 200));
    }
    if !entry.history.is_empty() {
        let mut history = table(&["ATTEMPT", "AT", "KIND", "BY", "ERROR"]);
        for step in &entry.history {
            let by = if step.by.is_empty() {
                &step.consumer
            } else {
                &step.by
            };
            history.add_row(vec![
                step.attempt.to_string(),
                time(step.at.as_ref()),
                step.kind.clone(),
                by.clone(),
                short(&step.error, 60),
            ]);
        }
        out!("{history}");
    }
    Ok(())
}

async fn replay(
    target: &Target,
    client: &mut AdminServiceClient<Grpc>,
    args: ReplayArgs,
) -> Result<(), Error> {
    args.select.require(args.all, "replay")?;
    let request = ReplayDeadLettersRequest {
        queue: args.select.queue.clone(),
        filter: Some(args.select.filter()),
        all: args.all,
        dry_run: args.dry_run,
        rate_limit: args.rate,
        target_queue: args.to.clone().unwrap_or_default(),
    };
    let mut stream = target
        .call("ReplayDeadLetters", client.replay_dead_letters(request))
        .await?;
    let bar = progress_bar(args.output);
    let mut last = ReplayProgress::default();
    loop {
        // The producer reports every quarter second until the replay is done (giving the rest
        // back included); silence for --timeout is a producer that stopped answering.
        let next = target.within("ReplayDeadLetters", stream.message()).await?;
        match next {
            Some(progress) => {
                bar.set_message(format!(
                    "matched {}  replayed {}  skipped {}  failed {}",
                    progress.matched, progress.replayed, progress.skipped, progress.failed
                ));
                bar.tick();
                let done = progress.done;
                last = progress;
                if done {
                    break;
                }
            }
            None => {
                bar.abandon();
                return Err(Error::new(
                    Failure::Retryable,
                    format!(
                        "ReplayDeadLetters: the stream ended before the replay did ({} replayed so far; the rest are still dead-lettered)",
                        last.replayed
                    ),
                ));
            }
        }
    }
    bar.finish_and_clear();
    if args.output == Output::Json {
        let sample: Vec<Value> = last.sample.iter().map(|e| entry_json(e, false)).collect();
        out!(
            "{}",
            json!({
                "dry_run": args.dry_run, "scanned": last.scanned, "matched": last.matched,
                "replayed": last.replayed, "skipped": last.skipped, "failed": last.failed,
                "sample": sample,
            })
        );
    } else if args.dry_run {
        out!(
            "Would replay {} of {} dead letter(s) in queue {}{}",
            last.matched,
            last.scanned,
            args.select.queue,
            if last.sample.is_empty() {
                "."
            } else {
                ", for example:"
            }
        );
        for entry in &last.sample {
            out!("  {}  {}  {}", entry.job_id, entry.r#type, entry.kind);
        }
    } else {
        out!(
            "Replayed {} dead letter(s) of queue {} into {} ({} skipped: not readable jobs; {} failed and left in place).",
            last.replayed,
            args.select.queue,
            args.to.as_deref().unwrap_or(&args.select.queue),
            last.skipped,
            last.failed
        );
    }
    if last.failed > 0 {
        return Err(Error::new(
            Failure::Retryable,
            format!("{} replay(s) failed; run the replay again", last.failed),
        ));
    }
    Ok(())
}

async fn purge(
    target: &Target,
    client: &mut AdminServiceClient<Grpc>,
    args: PurgeArgs,
) -> Result<(), Error> {
    args.select.require(args.all, "purge")?;
    let request = |dry_run| PurgeDeadLettersRequest {
        queue: args.select.queue.clone(),
        filter: Some(args.select.filter()),
        all: args.all,
        dry_run,
    };
    let counted = target
        .call("PurgeDeadLetters", client.purge_dead_letters(request(true)))
        .await?
        .removed;
    if args.dry_run {
        report_purge(args.output, true, counted)?;
        return Ok(());
    }
    if counted == 0 {
        report_purge(args.output, false, 0)?;
        return Ok(());
    }
    if !args.yes && !confirm(counted, &args.select.queue)? {
        return Err(Error::usage("purge: not confirmed; nothing removed"));
    }
    let removed = target
        .call(
            "PurgeDeadLetters",
            client.purge_dead_letters(request(false)),
        )
        .await?
        .removed;
    report_purge(args.output, false, removed)
}

fn report_purge(output: Output, dry_run: bool, removed: u64) -> Result<(), Error> {
    match (output, dry_run) {
        (Output::Json, _) => out!("{}", json!({ "dry_run": dry_run, "removed": removed })),
        (Output::Table, true) => out!("Would remove {removed} dead letter(s)."),
        (Output::Table, false) => out!("Removed {removed} dead letter(s)."),
    }
    Ok(())
}

/// Asks on the terminal; refuses without one (a script passes `--yes`).
fn confirm(count: u64, queue: &str) -> Result<bool, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(
            "purge: standard input is not a terminal to confirm on; pass --yes",
        ));
    }
    eprint!("Remove {count} dead letter(s) of queue {queue} for good? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|error| Error::usage(format!("purge: cannot read the answer: {error}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn progress_bar(output: Output) -> ProgressBar {
    if output == Output::Json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// An instant in RFC 3339 (UTC, seconds), or `-`.
fn time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|at| SystemTime::try_from(*at).ok())
        .map_or_else(
            || "-".into(),
            |at| humantime::format_rfc3339_seconds(at).to_string(),
        )
}

/// `text` on one line, cut to `max` characters.
fn short(text: &str, max: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

fn entry_json(entry: &DeadLetter, payload: bool) -> Value {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let history: Vec<Value> = entry
        .history
        .iter()
        .map(|step| {
            json!({
                "attempt": step.attempt, "at": time(step.at.as_ref()), "kind": step.kind,
                "error": step.error, "consumer": step.consumer, "by": step.by,
            })
        })
        .collect();
    let mut value = json!({
        "job_id": entry.job_id, "type": entry.r#type, "queue": entry.queue, "kind": entry.kind,
        "error": entry.error, "failed_at": time(entry.failed_at.as_ref()),
        "submitted_at": time(entry.submitted_at.as_ref()), "attempts": entry.attempts,
        "metadata": entry.metadata, "content_type": entry.content_type,
        "payload_size": entry.payload_size, "history": history,
    });
    if payload {
        value["payload_base64"] = json!(STANDARD.encode(&entry.payload));
    }
    value
}
