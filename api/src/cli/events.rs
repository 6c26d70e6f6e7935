//! `tidemark events tail`: prints the log, one JSON line per event, and follows it. A reader
//! that goes away (`events tail | head`) ends the command quietly, as it does for other Unix
//! tools.
//!
//! Following goes through the store's catch-up subscription; `--until-head` reads pages with
//! `read_log` up to the head seen at start and stops, so a script gets a finite dump.

use clap::Subcommand;
use futures::StreamExt;
use std::io::{ErrorKind, Write};
use tidemark_store::{category_of, EventStore, LogFilter, RecordedEvent, SubscribeOptions};

/// Events per page when reading up to the head.
const PAGE: usize = 1_000;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines as they are appended, until Ctrl-C (or, with
    /// `--until-head`, until the head of the log as it was at start).
    Tail {
        /// Only this stream (its category's events are read and the others skipped).
        #[arg(long, conflicts_with = "category")]
        stream: Option<String>,
        /// Only streams of this category (stream id up to the first '-').
        #[arg(long)]
        category: Option<String>,
        /// Only events of this type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Start after this position (0: the whole log). Default: the current head, or 0
        /// with `--until-head`.
        #[arg(long)]
        after: Option<i64>,
        /// Stop at the head of the log as it is when the command starts, instead of
        /// following new events.
        #[arg(long)]
        until_head: bool,
    },
}

/// Whether to go on after printing a line.
enum Printed {
    More,
    ReaderGone,
}

pub async fn run(command: EventsCommand, store: EventStore) -> anyhow::Result<()> {
    let EventsCommand::Tail {
        stream,
        category,
        types,
        after,
        until_head,
    } = command;
    if after.is_some_and(|after| after < 0) {
        anyhow::bail!("--after must not be negative: positions start at 1 and 0 means the start");
    }
    // A stream's events are all in its category: read that and keep the stream's.
    let category = category.or_else(|| stream.as_deref().map(category_of).map(str::to_string));
    let filter = LogFilter {
        categories: category.into_iter().collect(),
        event_types: types,
        partition: None,
    };
    let wanted = |event: &RecordedEvent| stream.as_ref().is_none_or(|id| &event.stream_id == id);
    let head = store.head_position().await?;
    if until_head {
        let mut after = after.unwrap_or(0);
        while after < head {
            let page = store.read_log(after, &filter, PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.position;
            for event in page.iter().filter(|event| event.position <= head) {
                if wanted(event) {
                    if let Printed::ReaderGone = print(event)? {
                        return Ok(());
                    }
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        return Ok(());
    }
    let after = after.unwrap_or(head);
    eprintln!("following the log after position {after} (Ctrl-C to stop)");
    let mut events = Box::pin(store.subscribe(SubscribeOptions {
        after,
        filter,
        ..SubscribeOptions::default()
    }));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = events.next() => match next {
                Some(Ok(event)) => {
                    if wanted(&event) {
                        if let Printed::ReaderGone = print(&event)? {
                            return Ok(());
                        }
                    }
                }
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(()),
            }
        }
    }
}

fn print(event: &RecordedEvent) -> anyhow::Result<Printed> {
    let line = serde_json::json!({
        "position": event.position,
        "streamId": event.stream_id,
        "streamVersion": event.stream_version,
        "eventId": event.event_id,
        "type": event.event_type,
        "data": event.payload,
        "metadata": event.metadata,
        "recordedAt": event.recorded_at,
    });
    // `println!` would panic once the reader has closed the pipe.
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(Printed::More),
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Ok(Printed::ReaderGone),
        Err(error) => Err(anyhow::anyhow!("could not write to stdout: {error}")),
    }
}
