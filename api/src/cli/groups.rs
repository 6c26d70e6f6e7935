//! `tidemark groups ...`: create, list, inspect and delete consumer groups; list and
//! replay their parked messages (`docs/consumer-groups.md`).

use anyhow::anyhow;
use clap::{Subcommand, ValueEnum};
use std::time::Duration;
use tidemark_consumers::{
    ConsumerGroups, GroupSettings, GroupSpec, GroupStatus, Selector, StartFrom, Strategy,
};
use tidemark_store::EventStore;
use tokio_util::sync::CancellationToken;

/// How a group shares its messages (see `docs/consumer-groups.md`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    RoundRobin,
    PinnedByStream,
    SingleActive,
}

impl From<StrategyArg> for Strategy {
    fn from(arg: StrategyArg) -> Self {
        match arg {
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::PinnedByStream => Strategy::PinnedByStream,
            StrategyArg::SingleActive => Strategy::SingleActive,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Create a consumer group (creating it again with the same settings is no error).
    Create {
        name: String,
        /// A stream category to read (repeat for several); all when none.
        #[arg(long = "category", value_name = "CATEGORY")]
        categories: Vec<String>,
        /// An event type to read (repeat for several); all when none.
        #[arg(long = "type", value_name = "EVENT_TYPE")]
        event_types: Vec<String>,
        /// Where to start: `start`, `end`, or a position (the events after it).
        #[arg(long, default_value = "start")]
        from: String,
        #[arg(long, value_enum, default_value = "round-robin")]
        strategy: StrategyArg,
        /// Messages one consumer may hold unacked at once.
        #[arg(long, default_value_t = 100)]
        max_in_flight: u32,
        /// A message not acked this long after its delivery goes to another consumer.
        #[arg(long, default_value_t = 30_000)]
        ack_timeout_ms: u64,
        /// After this many deliveries a message that times out or is nacked is parked.
        #[arg(long, default_value_t = 5)]
        max_deliveries: u32,
        /// First retry wait after a nack; doubles per delivery up to --retry-backoff-max-ms.
        #[arg(long, default_value_t = 1_000)]
        retry_backoff_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        retry_backoff_max_ms: u64,
    },
    /// One line per group: strategy, lag, in flight, redeliveries, parked.
    List,
    /// Everything about one group.
    Status { name: String },
    /// List a group's parked messages; with --replay, hand them out again.
    Parked {
        name: String,
        #[arg(long)]
        replay: bool,
    },
    /// Delete a group with its in-flight and parked messages.
    Delete { name: String },
}

pub async fn run(command: GroupsCommand, store: EventStore) -> anyhow::Result<()> {
    let groups = ConsumerGroups::new(store, CancellationToken::new());
    match command {
        GroupsCommand::Create {
            name,
            categories,
            event_types,
            from,
            strategy,
            max_in_flight,
            ack_timeout_ms,
            max_deliveries,
            retry_backoff_ms,
            retry_backoff_max_ms,
        } => {
            let start = match from.as_str() {
                "start" => StartFrom::Start,
                "end" => StartFrom::End,
                position => StartFrom::After(position.parse().map_err(|_| {
                    anyhow!("--from must be `start`, `end` or a position, not '{position}'")
                })?),
            };
            let spec = GroupSpec {
                name: name.clone(),
                selector: Selector {
                    categories,
                    event_types,
                },
                start,
                strategy: strategy.into(),
                settings: GroupSettings {
                    max_in_flight,
                    ack_timeout: Duration::from_millis(ack_timeout_ms),
                    max_deliveries,
                    retry_backoff: Duration::from_millis(retry_backoff_ms),
                    retry_backoff_max: Duration::from_millis(retry_backoff_max_ms),
                },
            };
            let created = groups.create(&spec).await?;
            let status = groups.status(&name).await?;
            println!(
                "{} consumer group '{name}' ({}), reading the events after position {}",
                if created { "created" } else { "already had" },
                status.spec.strategy,
                status.start_after
            );
        }
        GroupsCommand::List => {
            let statuses = groups.list().await?;
            if statuses.is_empty() {
                println!("no consumer groups");
                return Ok(());
            }
            println!(
                "{:<32} {:<17} {:>10} {:>9} {:>9} {:>12} {:>7}",
                "NAME", "STRATEGY", "LAG", "LAG (s)", "IN FLIGHT", "REDELIVERED", "PARKED"
            );
            for s in statuses {
                println!(
                    "{:<32} {:<17} {:>10} {:>9.1} {:>9} {:>12} {:>7}",
                    s.spec.name,
                    s.spec.strategy.as_sql(),
                    s.lag_events,
                    s.lag_seconds,
                    s.in_flight,
                    s.redelivered_total,
                    s.parked
                );
            }
        }
        GroupsCommand::Status { name } => print_status(&groups.status(&name).await?),
        GroupsCommand::Parked { name, replay } => {
            if replay {
                let replayed = groups.replay_parked(&name, None).await?;
                println!("replayed {replayed} parked message(s) of '{name}'");
                return Ok(());
            }
            let parked = groups.parked(&name, 0, 10_000).await?;
            if parked.is_empty() {
                println!("no parked messages");
            }
            for p in parked {
                println!(
                    "position {} stream {} event {} after {} deliveries (last to {}), parked {}: {}",
                    p.position,
                    p.stream_id,
                    p.event_id,
                    p.deliveries,
                    p.consumer.as_deref().unwrap_or("nobody"),
                    p.parked_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    p.reason
                );
            }
        }
        GroupsCommand::Delete { name } => {
            groups.delete(&name).await?;
            println!("deleted consumer group '{name}'");
        }
    }
    Ok(())
}

fn print_status(s: &GroupStatus) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "all".to_owned()
        } else {
            v.join(", ")
        }
    };
    let settings = &s.spec.settings;
    println!("{}", s.spec.name);
    println!("  strategy:        {}", s.spec.strategy);
    println!("  categories:      {}", list(&s.spec.selector.categories));
    println!("  event types:     {}", list(&s.spec.selector.event_types));
    println!(
        "  settings:        max in flight {}, ack timeout {} ms, max deliveries {}, retry backoff {}..{} ms",
        settings.max_in_flight,
        settings.ack_timeout.as_millis(),
        settings.max_deliveries,
        settings.retry_backoff.as_millis(),
        settings.retry_backoff_max.as_millis()
    );
    println!("  start after:     {}", s.start_after);
    println!("  acked through:   {}", s.acked_through);
    println!("  frontier:        {}", s.frontier);
    println!(
        "  lag:             {} events, {:.1} s",
        s.lag_events, s.lag_seconds
    );
    println!("  in flight:       {}", s.in_flight);
    println!("  waiting:         {}", s.waiting);
    println!("  parked:          {}", s.parked);
    println!(
        "  totals:          delivered {}, redelivered {}, acked {}, skipped {}, parked {}",
        s.delivered_total, s.redelivered_total, s.acked_total, s.skipped_total, s.parked_total
    );
    if let Some(holder) = &s.active_consumer {
        println!("  active consumer: {holder}");
    }
}
