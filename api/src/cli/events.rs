//! `tidemark events tail`: follows the log, one JSON line per event.

use clap::Subcommand;
use futures::StreamExt;
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
                        Some(Ok(event)) => println!("{}", serde_json::json!({
                            "position": event.position,
                            "streamId": event.stream_id,
                            "streamVersion": event.stream_version,
                            "eventId": event.event_id,
                            "type": event.event_type,
                            "data": event.payload,
                            "metadata": event.metadata,
                            "recordedAt": event.recorded_at,
                        })),
                        Some(Err(error)) => return Err(error.into()),
                        None => return Ok(()),
                    }
                }
            }
        }
    }
}
