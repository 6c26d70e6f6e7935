//! `tidemark events tail`: follows the log, one JSON line per event. A reader that goes
//! away (`events tail | head`) ends the command quietly, as it does for other Unix tools.

use clap::Subcommand;
use futures::StreamExt;
use std::io::{ErrorKind, Write};
use tidemark_store::{EventStore, LogFilter, SubscribeOptions};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines as they are appended, until Ctrl-C.
    Tail {
        /// Only streams of this category (stream id up to the first '-').
        #[arg(long)]
        category: Option<String>,
        /// Only events of this type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Start after this position (0: the whole log). Default: the current head.
        #[arg(long)]
        after: Option<i64>,
    },
}

pub async fn run(command: EventsCommand, store: EventStore) -> anyhow::Result<()> {
    match command {
        EventsCommand::Tail {
            category,
            types,
            after,
        } => {
            let after = match after {
                Some(after) => after,
                None => store.head_position().await?,
            };
            eprintln!("following the log after position {after} (Ctrl-C to stop)");
            let mut events = Box::pin(store.subscribe(SubscribeOptions {
                after,
                filter: LogFilter {
                    categories: category.into_iter().collect(),
                    event_types: types,
                    partition: None,
                },
                ..SubscribeOptions::default()
            }));
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    next = events.next() => match next {
                        Some(Ok(event)) => {
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
                                Ok(()) => {}
                                Err(error) if error.kind() == ErrorKind::BrokenPipe => return Ok(()),
                                Err(error) => {
                                    return Err(anyhow::anyhow!("could not write to stdout: {error}"))
                                }
                            }
                        }
                        Some(Err(error)) => return Err(error.into()),
                        None => return Ok(()),
                    }
                }
            }
        }
    }
}
