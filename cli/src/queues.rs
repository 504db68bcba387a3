//! `jobpipe queues` and `jobpipe watch`: every configured queue's ready backlog, dead letters and
//! consumers, and the delay ladder; `watch` refreshes them in place with the rates between two
//! reads, for "is work flowing, where is it stuck".

use crate::{Error, dlq::Output, dlq::table, target::Target};
use clap::Args;
use jobpipe_proto::v1::{
    GetQueuesRequest, GetQueuesResponse, admin_service_client::AdminServiceClient,
};
use serde_json::json;
use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

#[derive(Debug, Args)]
pub(crate) struct QueuesArgs {
    /// `table` or `json`.
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// How often to refresh, e.g. `2s`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Stop after this many refreshes (default: until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
}

/// Prints the queues once.
pub(crate) async fn queues(target: &Target, args: QueuesArgs) -> Result<(), Error> {
    let mut client = AdminServiceClient::new(target.connect().await?);
    let state = target
        .call("GetQueues", client.get_queues(GetQueuesRequest {}))
        .await?;
    if args.output == Output::Json {
        let queues: Vec<_> = state
            .queues
            .iter()
            .map(|q| json!({"name": q.name, "ready": q.ready, "dead": q.dead, "consumers": q.consumers}))
            .collect();
        out!("{}", json!({ "queues": queues, "delayed": state.delayed }));
        return Ok(());
    }
    out!("{}", render(&state, None));
    Ok(())
}

/// Refreshes the queues every `--every`, in place on a terminal.
pub(crate) async fn watch(target: &Target, args: WatchArgs) -> Result<(), Error> {
    let mut client = AdminServiceClient::new(target.connect().await?);
    let live = std::io::stdout().is_terminal();
    let mut previous: Option<(Instant, GetQueuesResponse)> = None;
    let mut shown = 0u64;
    loop {
        let state = target
            .call("GetQueues", client.get_queues(GetQueuesRequest {}))
            .await?;
        let now = Instant::now();
        let rates = previous
            .as_ref()
            .map(|(at, before)| rates(before, &state, now.duration_since(*at)));
        let text = render(&state, rates.as_ref());
        if live {
            // Clear the screen and draw from the top.
            write!(std::io::stdout().lock(), "\x1b[2J\x1b[H")?;
        }
        out!("{text}");
        out!(
            "refreshed every {}; ready/s and dead/s are the change since the last read",
            humantime::format_duration(args.every)
        );
        previous = Some((now, state));
        shown += 1;
        if args.count.is_some_and(|count| shown >= count) {
            return Ok(());
        }
        tokio::time::sleep(args.every).await;
    }
}

/// Per queue: (ready/s, dead/s) between two reads.
fn rates(
    before: &GetQueuesResponse,
    now: &GetQueuesResponse,
    between: Duration,
) -> HashMap<String, (f64, f64)> {
    let secs = between.as_secs_f64().max(0.001);
    let old: HashMap<&str, (u64, u64)> = before
        .queues
        .iter()
        .map(|q| (q.name.as_str(), (q.ready, q.dead)))
        .collect();
    now.queues
        .iter()
        .filter_map(|q| {
            let (ready, dead) = old.get(q.name.as_str())?;
            let change = |now: u64, then: u64| (now as f64 - then as f64) / secs;
            Some((
                q.name.clone(),
                (change(q.ready, *ready), change(q.dead, *dead)),
            ))
        })
        .collect()
}

fn render(state: &GetQueuesResponse, rates: Option<&HashMap<String, (f64, f64)>>) -> String {
    let mut header = vec!["QUEUE", "READY", "DEAD", "CONSUMERS"];
    if rates.is_some() {
        header.extend(["READY/S", "DEAD/S"]);
    }
    let mut table = table(&header);
    for queue in &state.queues {
        let mut row = vec![
            queue.name.clone(),
            queue.ready.to_string(),
            queue.dead.to_string(),
            queue.consumers.to_string(),
        ];
        if let Some(rates) = rates {
            let (ready, dead) = rates.get(&queue.name).copied().unwrap_or_default();
            row.push(format!("{ready:+.1}"));
            row.push(format!("{dead:+.1}"));
        }
        table.add_row(row);
    }
    format!(
        "{table}\ndelayed (retries and scheduled jobs, all queues): {}",
        state.delayed
    )
}
