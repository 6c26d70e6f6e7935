//! `tidemark projections ...`: status, rebuilds with progress bars, parked events.

use crate::TidemarkApp;
use anyhow::anyhow;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use tidemark_projections::{
    BuildReport, BuildRequest, EngineConfig, Progress, ProgressCallback, ProjectionEngine,
    ProjectionStatus,
};
use tidemark_store::EventStore;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// One line per registered projection: version, status, checkpoint, lag, parked events.
    List,
    /// Everything about projections (one, or all): partitions, lag, the last build.
    Status {
        /// A projection name; all when omitted.
        name: Option<String>,
    },
    /// Rebuild a read model from the whole log beside the serving one, then swap it in.
    /// Shows progress; a running server keeps serving.
    ///
    /// With --from-events-after P the new read model is the fold of the events after P
    /// only: whatever the events up to P built is discarded when it is swapped in (for a
    /// read model meant to forget old history). That needs --discard-earlier-events.
    Rebuild {
        name: String,
        /// Build from the events after this position only (see above).
        #[arg(long, value_name = "POSITION", requires = "discard_earlier_events")]
        from_events_after: Option<i64>,
        /// Confirms that --from-events-after discards what the earlier events built.
        #[arg(long)]
        discard_earlier_events: bool,
    },
    /// List parked events (dead letters); with --replay, apply them again.
    Parked {
        /// A projection name; all when omitted (required with --replay).
        name: Option<String>,
        /// Apply the parked events of NAME again (after fixing the cause).
        #[arg(long)]
        replay: bool,
        /// Also list events already replayed.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(
    command: ProjectionsCommand,
    store: EventStore,
    app: TidemarkApp,
) -> anyhow::Result<()> {
    // Rebuilds from the CLI see events upcast, exactly as the server's projections do.
    let evolution = crate::evolution::Evolution::install(&store, &app).await?;
    let engine = ProjectionEngine::new(
        evolution.upcasting,
        app.registry().clone(),
        EngineConfig::default(),
    );
    match command {
        ProjectionsCommand::List => {
            let statuses = engine.status().await?;
            if statuses.is_empty() {
                println!("no projections are registered in this application");
                return Ok(());
            }
            println!(
                "{:<32} {:>7} {:<12} {:>12} {:>10} {:>9} {:>7}",
                "NAME", "VERSION", "STATUS", "CHECKPOINT", "LAG", "LAG (s)", "PARKED"
            );
            for s in statuses {
                println!(
                    "{:<32} {:>7} {:<12} {:>12} {:>10} {:>9.1} {:>7}",
                    s.name,
                    s.version,
                    s.status,
                    s.caught_up_to(),
                    s.lag_events(),
                    s.lag_seconds(),
                    s.parked
                );
            }
        }
        ProjectionsCommand::Status { name } => {
            let statuses = match name {
                Some(name) => vec![engine.projection_status(&name).await?],
                None => engine.status().await?,
            };
            for status in statuses {
                print_status(&status);
            }
        }
        ProjectionsCommand::Rebuild {
            name,
            from_events_after,
            discard_earlier_events: _,
        } => {
            let request = match from_events_after {
                Some(after) if after < 0 => {
                    return Err(anyhow!("--from-events-after must not be negative"))
                }
                Some(after) if after > 0 => BuildRequest::FromEventsAfter(after),
                _ => BuildRequest::Rebuild,
            };
            let (bar, callback) = progress_bar(&name);
            let report = match engine.prepare_build(&name, request).await {
                Ok(build) => build.run(Some(callback)).await,
                Err(error) => Err(error),
            };
            finish(bar, report)?;
        }
        ProjectionsCommand::Parked { name, replay, all } => {
            if replay {
                let name = name.ok_or_else(|| anyhow!("--replay needs a projection name"))?;
                let replayed = engine.replay_parked(&name, None).await?;
                println!("replayed {replayed} parked event(s) of '{name}'");
                return Ok(());
            }
            let letters = engine.dead_letters(name.as_deref(), all).await?;
            // Events parked by a projection since removed from the application are still
            // listed; a name that is neither registered nor parked anything is a mistake.
            if let Some(name) = name.as_deref() {
                if letters.is_empty() && app.registry().get(name).is_none() {
                    return Err(unknown_projection(name, &app));
                }
            }
            if letters.is_empty() {
                println!("no parked events");
            }
            for l in letters {
                println!(
                    "#{} {} position {} (partition {}) event {} after {} attempt(s){}: {}",
                    l.id,
                    l.projection,
                    l.position,
                    l.partition,
                    l.event_id,
                    l.attempts,
                    if l.replayed_at.is_some() {
                        ", replayed"
                    } else {
                        ""
                    },
                    l.error
                );
            }
        }
    }
    Ok(())
}

fn unknown_projection(name: &str, app: &TidemarkApp) -> anyhow::Error {
    let names = app.registry().names();
    if names.is_empty() {
        anyhow!("no projection named '{name}': this application registers no projections")
    } else {
        anyhow!(
            "no projection named '{name}' is registered; the projections are: {} (see \
             `projections list`)",
            names.join(", ")
        )
    }
}

fn print_status(s: &ProjectionStatus) {
    println!(
        "{} v{} ({}): schema {}, head {}, checkpoint {}, lag {} events / {:.1} s, {:.0} events/s, {} parked",
        s.name,
        s.version,
        s.status,
        s.schema,
        s.head,
        s.caught_up_to(),
        s.lag_events(),
        s.lag_seconds(),
        s.events_per_second(),
        s.parked
    );
    for p in &s.partitions {
        println!(
            "  partition {:>3}: checkpoint {:>10}, lag {:>8} events / {:.1} s",
            p.partition, p.checkpoint, p.lag_events, p.lag_seconds
        );
    }
    if !s.unowned_partitions.is_empty() {
        let partitions: Vec<String> = s
            .unowned_partitions
            .iter()
            .map(|u| u.partition.to_string())
            .collect();
        println!(
            "  WARNING: no live worker owns partition(s) {}: their events are not applied; \
             start a worker that runs this projection",
            partitions.join(", ")
        );
    }
    if let Some(b) = &s.last_rebuild {
        println!(
            "  last build #{} ({}): {} from {}, {}/{} events, {}{}",
            b.id,
            b.kind,
            b.status,
            b.from_position,
            b.events_done,
            b.events_total,
            b.started_at,
            b.error
                .as_deref()
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default()
        );
    }
}

fn progress_bar(name: &str) -> (ProgressBar, ProgressCallback) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {human_pos}/{human_len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {name}"));
    let handle = bar.clone();
    let callback: ProgressCallback = Arc::new(move |p: Progress| {
        handle.set_length(p.total.max(0) as u64);
        handle.set_position(p.done.max(0) as u64);
    });
    (bar, callback)
}

fn finish(
    bar: ProgressBar,
    report: Result<BuildReport, tidemark_projections::EngineError>,
) -> anyhow::Result<()> {
    match report {
        Ok(report) => {
            bar.finish_and_clear();
            println!(
                "{}: applied {} events up to position {} in {:.1?}; serving from schema {}",
                report.projection,
                report.events_applied,
                report.position,
                report.took,
                report.schema
            );
            Ok(())
        }
        Err(error) => {
            bar.abandon();
            Err(error.into())
        }
    }
}
