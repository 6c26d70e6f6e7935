//! # tidemark-bench
//!
//! The benchmark suite of issue #3: every Tidemark figure is measured beside a raw
//! tokio-postgres baseline in the same run, on the same database, and reported as a ratio.
//!
//! ```text
//! cargo build --release -p tidemark-bench -p tidemark-api -p tidemark-example-bank
//! ./target/release/tidemark-bench [--quick|--full] [--database-url URL] [--out FILE]
//! ```
//!
//! (`cargo run --release -p tidemark-bench` works too, but builds only the suite: the `api`
//! group needs the `tidemark` and `bank` server binaries beside it, and is skipped with a
//! note without them.)
//!
//! Without `--database-url` (or `DATABASE_URL`) it starts an embedded PostgreSQL cluster in
//! a temporary directory. Either way it works in a scratch database `tidemark_bench_<random>`
//! that it drops at the end. Each phase runs in a fresh schema of it whose log (or raw
//! table) is first seeded with a few thousand events and analysed, so that every
//! measurement starts from the same steady state (see `workloads::seed_store`; one extra
//! run measures a store without that preparation). Raw and Tidemark runs at the same
//! concurrency alternate, so a drift in the machine's speed hits both alike.
//!
//! Phases come in groups (`--only append,scan,...`): `append` (raw inserts and Tidemark
//! appends, the hot stream), `scan`, `delivery`, `overload`, `copy`, `knobs`, `projections`,
//! `evolution` (validation on append, JSON against Avro payloads), `api` (GraphQL over
//! HTTP against the real `tidemark serve` and `bank serve` binaries). Results are
//! printed as Markdown and written to `--out`; progress goes to stderr.
//!
//! Code map, in reading order:
//! - `main.rs` (this file): the command line, the plan of each mode, and the phases in order.
//! - [`env`]: the server, the scratch database, per-phase schemas, machine and server facts.
//! - [`embedded`]: starting the store's embedded PostgreSQL for the run.
//! - [`harness`]: the measurement window, latency percentiles, payloads, RSS, progress bars.
//! - [`raw`]: the baselines in plain tokio-postgres, and COPY vs UNNEST.
//! - [`workloads`]: the same work through `EventStore`: appends, scans, subscriptions,
//!   delivery latency, overload.
//! - [`probe`]: a `metrics` recorder for the store's group-commit histograms.
//! - [`projections`]: the catch-up of a counting projection and of keyed and windowed ones,
//!   and append→read-model latency.
//! - [`relay`]: the relay's catch-up to NATS JetStream over the same log (`--nats-url`, or
//!   the installed `nats-server` started for the run; skipped without one).
//! - [`evolution`]: stores with the schema registry installed: validation's cost, JSON
//!   against Avro payloads on disk, on append and on catch-up.
//! - [`api`]: the API path: the server binaries as child processes, the HTTP load
//!   generator, GraphQL paging, the bank's log and its projections' catch-up.
//! - [`report`]: the results and their Markdown tables.

mod api;
mod embedded;
mod env;
mod evolution;
mod harness;
mod probe;
mod projections;
mod raw;
mod relay;
mod report;
mod workloads;

use anyhow::{Context, Result};
use clap::Parser;
use env::Database;
use harness::{group, Latencies, Progress};
use projections::CatchUp;
use raw::InsertShape;
use report::{
    AtClients, CopyVsUnnest, DeliveryFigures, EncodingRun, GroupedCatchUp, HotStream, Knob, Rate,
    Report, Scan, ValidationRun,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tidemark_store::PipelineConfig;
use workloads::ScratchStore;

/// Benchmarks Tidemark against raw PostgreSQL on the same server, in one run.
#[derive(Debug, Parser)]
#[command(name = "tidemark-bench", version)]
struct Args {
    /// Smoke run for CI: every phase, briefly (well under a minute).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The figures for BENCHMARKS.md (a few minutes). The default.
    #[arg(long)]
    full: bool,
    /// PostgreSQL server to use (a scratch database is created and dropped in it).
    /// Without it, an embedded cluster is started from the installed binaries.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Where to write the Markdown results.
    #[arg(long, default_value = "BENCHMARKS-results.md")]
    out: PathBuf,
    /// Extra settings for the benchmark's sessions, e.g. to see the writer's plans:
    /// `-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=5ms`.
    #[arg(
        long,
        env = "TIDEMARK_BENCH_PG_OPTIONS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pg_options: String,
    /// Length of the overload phase in seconds (default: 3 with --quick, 8 with --full).
    #[arg(long)]
    overload_seconds: Option<u64>,
    /// NATS server with JetStream for the relay's figure. Without it, the installed
    /// `nats-server` is started on a free port; without one, the relay's row is skipped.
    #[arg(long, env = "TIDEMARK_BENCH_NATS_URL")]
    nats_url: Option<String>,
    /// Run only these groups of phases (comma-separated), e.g. `--only append,knobs`.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Group>,
}

/// Groups of phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    /// Raw inserts and Tidemark appends (single events, 100-event batches), the hot stream.
    Append,
    /// Raw scan, `read_log`, `subscribe` catch-up.
    Scan,
    /// Append-to-subscriber latency at a fixed rate.
    Delivery,
    /// Memory under overload.
    Overload,
    /// COPY BINARY vs UNNEST.
    Copy,
    /// Pipeline settings.
    Knobs,
    /// Projection catch-up over a large log (counting, keyed, windowed), the relay to
    /// NATS JetStream over the same log, and append→read-model latency (issues #4, #12, #13).
    Projections,
    /// Schema evolution (issue #11): appends with validation ENFORCE vs OFF, payloads
    /// stored as JSON vs Avro (bytes per event, appends, catch-up).
    Evolution,
    /// The API path (issue #15): single-event `appendEvents` over HTTP against `tidemark
    /// serve` beside the library's `append` and the raw insert at the same concurrency; the
    /// bank server with its projections running and without; GraphQL `events` paging
    /// against `read_log`; the catch-up of the bank's real projections. Needs the `tidemark`
    /// and `bank` binaries beside this one.
    Api,
}

/// What a mode runs, and for how long.
struct Plan {
    mode: &'static str,
    warmup: Duration,
    measure: Duration,
    /// Raw/Tidemark pairs per concurrency level (their mean is reported).
    rounds: usize,
    /// Events each phase's log (and raw table) holds before it is measured.
    seed_events: u64,
    /// Concurrency levels of single-row inserts and single-event appends.
    clients: Vec<usize>,
    batch_clients: Vec<usize>,
    hot_callers: Vec<usize>,
    copy_sizes: Vec<usize>,
    /// Per size and method, split into `copy_rounds` alternating slices.
    copy_time: Duration,
    copy_rounds: u32,
    scan_events: u64,
    scan_repeats: usize,
    delivery_rate: u32,
    delivery_events: u64,
    overload_time: Duration,
    knob_warmup: Duration,
    knob_measure: Duration,
    wait_values: Vec<Duration>,
    wait_callers: Vec<usize>,
    queue_depths: Vec<usize>,
    queue_callers: usize,
    /// Events in the log a projection catches up over.
    projection_events: u64,
    /// Events appended (at `delivery_rate`) while measuring append→read-model latency.
    projection_latency_events: u64,
    /// Events written per encoding for its footprint and catch-up.
    encoding_events: u64,
    /// HTTP connections (and library callers, raw clients) of the API appends.
    api_connections: Vec<usize>,
    /// HTTP connections of the bank server's appends, with and without its projections.
    bank_connections: Vec<usize>,
    /// Events of the bank's log its projections catch up over.
    bank_events: u64,
}

impl Plan {
    fn quick() -> Plan {
        Plan {
            mode: "quick",
            warmup: Duration::from_millis(150),
            measure: Duration::from_millis(500),
            rounds: 1,
            seed_events: 5_000,
            clients: vec![1, 8, 64, 256],
            batch_clients: vec![1, 8],
            hot_callers: vec![8],
            copy_sizes: vec![100],
            copy_time: Duration::from_millis(600),
            copy_rounds: 2,
            scan_events: 15_000,
            scan_repeats: 1,
            delivery_rate: 1000,
            delivery_events: 1_500,
            overload_time: Duration::from_secs(3),
            knob_warmup: Duration::from_millis(150),
            knob_measure: Duration::from_millis(400),
            wait_values: vec![Duration::ZERO, Duration::from_millis(1)],
            wait_callers: vec![64],
            queue_depths: vec![64, 4096],
            queue_callers: 1024,
            projection_events: 50_000,
            projection_latency_events: 1_500,
            encoding_events: 20_000,
            api_connections: vec![1, 64],
            bank_connections: vec![64],
            bank_events: 3_000,
        }
    }

    fn full() -> Plan {
        Plan {
            mode: "full",
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(3),
            rounds: 2,
            seed_events: 20_000,
            clients: vec![1, 8, 64, 256],
            batch_clients: vec![1, 8],
            hot_callers: vec![1, 8, 64],
            copy_sizes: vec![1, 10, 64, 256, 512, 5000],
            copy_time: Duration::from_millis(1600),
            copy_rounds: 4,
            scan_events: 100_000,
            scan_repeats: 3,
            delivery_rate: 1000,
            delivery_events: 10_000,
            overload_time: Duration::from_secs(8),
            knob_warmup: Duration::from_millis(300),
            knob_measure: Duration::from_secs(2),
            wait_values: vec![
                Duration::ZERO,
                Duration::from_micros(200),
                Duration::from_millis(1),
            ],
            wait_callers: vec![1, 64],
            queue_depths: vec![64, 1024, 4096],
            queue_callers: 1024,
            projection_events: 1_000_000,
            projection_latency_events: 10_000,
            encoding_events: 100_000,
            api_connections: vec![1, 8, 64, 256],
            bank_connections: vec![8, 64],
            bank_events: 100_000,
        }
    }

    /// Progress steps of `group`.
    fn phases(&self, group: Group) -> u64 {
        let n = match group {
            Group::Append => {
                (self.clients.len() + self.batch_clients.len()) * 2 * self.rounds
                    + 1 // the cold store
                    + self.hot_callers.len()
            }
            Group::Scan => 1 + 4, // populate, raw, two read_log, subscribe
            Group::Delivery | Group::Overload => 1,
            Group::Copy => self.copy_sizes.len(),
            Group::Knobs => {
                self.wait_values.len() * self.wait_callers.len() + self.queue_depths.len()
            }
            Group::Projections => 7, // seed, raw scan, three catch-ups, relay, latency
            // Per round: raw + OFF + ENFORCE at 64 x 1, OFF + ENFORCE at 8 x 100, and two
            // append runs per encoding; then each encoding's log.
            Group::Evolution => self.rounds * (5 + 4) + 2,
            // Start, three runs per level and round, paging; per bank level and round two
            // runs; the bank's log and its catch-up.
            Group::Api => {
                1 + self.api_connections.len() * 3 * self.rounds
                    + 1
                    + self.bank_connections.len() * 2 * self.rounds
                    + 2
            }
        };
        n as u64
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    probe::install();
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(seconds) = args.overload_seconds {
        plan.overload_time = Duration::from_secs(seconds);
    }
    let database = match &args.database_url {
        Some(url) => Database::from_url(url, &args.pg_options).await?,
        None => Database::embedded(&args.pg_options).await?,
    };
    eprintln!(
        "tidemark-bench: {} run on {} ({}), scratch database {}",
        plan.mode,
        database.info.origin,
        database.info.version,
        database.scratch_name()
    );
    let started = Instant::now();
    let result = tokio::select! {
        result = run(&plan, &database, &args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let name = database.scratch_name().to_string();
    if let Err(error) = database.drop_scratch().await {
        eprintln!("tidemark-bench: could not drop the scratch database {name}: {error:#}");
    }
    let mut report = result?;
    report.duration_secs = started.elapsed().as_secs_f64();
    let markdown = report.to_markdown();
    println!("{markdown}");
    std::fs::write(&args.out, &markdown)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("tidemark-bench: results written to {}", args.out.display());
    Ok(())
}

async fn run(plan: &Plan, db: &Database, args: &Args) -> Result<Report> {
    let groups: Vec<Group> = if args.only.is_empty() {
        <Group as clap::ValueEnum>::value_variants().to_vec()
    } else {
        args.only.clone()
    };
    let progress = Progress::new(groups.iter().map(|&g| plan.phases(g)).sum());
    let defaults = PipelineConfig::default();
    let mut report = Report {
        mode: plan.mode.into(),
        command: format!(
            "cargo build --release -p tidemark-bench -p tidemark-api -p tidemark-example-bank && \
             ./target/release/tidemark-bench --{}{}",
            plan.mode,
            if args.database_url.is_some() {
                " --database-url <URL>"
            } else {
                ""
            }
        ),
        started_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: Some(env::MachineInfo::detect()),
        server: Some(db.info.clone()),
        pipeline_defaults: format!(
            "max_batch_requests={}, max_batch_events={}, max_batch_wait={:?}, queue_depth={}, enqueue_deadline={:?}",
            defaults.max_batch_requests,
            defaults.max_batch_events,
            defaults.max_batch_wait,
            defaults.queue_depth,
            defaults.enqueue_deadline
        ),
        delivery_rate: plan.delivery_rate,
        ..Report::default()
    };

    if !args.only.is_empty() {
        report.command.push_str(&format!(
            " --only {}",
            args.only
                .iter()
                .map(|g| format!("{g:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    for group in <Group as clap::ValueEnum>::value_variants() {
        if !groups.contains(group) {
            continue;
        }
        let r = &mut report;
        match group {
            Group::Append => appends(plan, db, &progress, r).await?,
            Group::Scan => scans(plan, db, &progress, r).await?,
            Group::Delivery => delivery(plan, db, &progress, r).await?,
            Group::Overload => overload(plan, db, &progress, r).await?,
            Group::Copy => copy_vs_unnest(plan, db, &progress, r).await?,
            Group::Knobs => knobs(plan, db, &progress, r).await?,
            Group::Projections => {
                let nats_url = args.nats_url.as_deref();
                projection_figures(plan, db, &progress, r, nats_url).await?
            }
            Group::Evolution => evolution_figures(plan, db, &progress, r).await?,
            Group::Api => api_figures(plan, db, &progress, r).await?,
        }
    }
    progress.finish();
    Ok(report)
}

/// Raw inserts and Tidemark appends at each concurrency, interleaved (raw, Tidemark, raw,
/// Tidemark, ...) so that a drift in the machine's speed hits both alike. Raw concurrency
/// is capped by the server's free connections.
async fn appends(
    plan: &Plan,
    db: &Database,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let runs = plan
        .clients
        .iter()
        .map(|&c| (1, c))
        .chain(plan.batch_clients.iter().map(|&c| (100, c)));
    for (events, requested) in runs {
        let shape = if events == 1 {
            InsertShape::SingleRow
        } else {
            InsertShape::Unnest(events)
        };
        let free = db.free_connections().await?.max(1) as usize;
        let clients = requested.min(free);
        if clients < requested {
            report.notes.push(format!(
                "Raw inserts at {requested} clients were capped at {clients}: the server allows \
                 max_connections = {} and {free} were free; Tidemark at {requested} callers is \
                 compared with the capped run.",
                db.info.max_connections
            ));
        }
        let raw_label = format!("raw INSERT {events} row(s)/tx, {clients} clients");
        let label = format!("Tidemark append {events} event(s), {requested} callers");
        let (mut raw_rates, mut raw_latencies) = (Vec::new(), Latencies::default());
        let (mut rates, mut latencies) = (Vec::new(), Latencies::default());
        let mut batches = Vec::new();
        for round in 1..=plan.rounds {
            progress.begin(&format!("{raw_label} (round {round}/{})", plan.rounds));
            let run = raw_insert(db, shape, clients, plan, progress, &raw_label).await?;
            raw_rates.push(run.rows_per_sec);
            raw_latencies.extend(run.latencies);
            progress.done(&format!("{raw_label}: {} rows/s", group(run.rows_per_sec)));

            progress.begin(&format!("{label} (round {round}/{})", plan.rounds));
            let (run, batch) = tidemark_append(
                db,
                events,
                requested,
                plan.seed_events,
                plan,
                progress,
                &label,
            )
            .await?;
            rates.push(run.events_per_sec);
            latencies.extend(run.latencies);
            batches.push(batch);
            progress.done(&format!(
                "{label}: {} events/s; {:.1} appends per transaction, {:.2} ms each",
                group(run.events_per_sec),
                batch.mean_requests,
                batch.mean_millis
            ));
        }
        let raw_entry = AtClients {
            requested,
            clients,
            rate: Rate::new(mean(&raw_rates), raw_latencies),
            batches: None,
        };
        let entry = AtClients {
            requested,
            clients: requested,
            rate: Rate::new(mean(&rates), latencies),
            batches: Some(probe::Batches::mean(&batches)),
        };
        if events == 1 {
            report.raw_single.push(raw_entry);
            report.appends.push(entry);
        } else {
            report.raw_batch.push(raw_entry);
            report.batch_appends.push(entry);
        }
    }
    // The same 64-caller run on a store created a moment ago, without statistics.
    let label = "Tidemark append 1 event, 64 callers, new store without statistics";
    progress.begin(label);
    let (run, batches) = tidemark_append(db, 1, 64, 0, plan, progress, label).await?;
    progress.done(&format!(
        "{label}: {} events/s; {:.1} appends per transaction, {:.2} ms each",
        group(run.events_per_sec),
        batches.mean_requests,
        batches.mean_millis
    ));
    report.cold_appends = Some(AtClients {
        requested: 64,
        clients: 64,
        rate: Rate::new(run.events_per_sec, run.latencies),
        batches: Some(batches),
    });

    for &callers in &plan.hot_callers {
        let label = format!("Tidemark hot stream (Exact), {callers} callers");
        progress.begin(&label);
        let scratch =
            ScratchStore::open(db, "hot", PipelineConfig::default(), plan.seed_events).await?;
        let run = workloads::hot_stream_load(
            &scratch.store,
            callers,
            plan.warmup,
            plan.measure,
            progress,
            &label,
        )
        .await;
        scratch.close(db).await?;
        let run = run?;
        progress.done(&format!(
            "{label}: {} events/s, {:.1} conflicts per success",
            group(run.events_per_sec),
            run.conflicts_per_success
        ));
        report.hot.push(HotStream {
            callers,
            per_sec: run.events_per_sec,
            conflicts_per_success: run.conflicts_per_success,
        });
    }
    Ok(())
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// One raw insert run in a fresh schema.
async fn raw_insert(
    db: &Database,
    shape: InsertShape,
    clients: usize,
    plan: &Plan,
    progress: &Progress,
    label: &str,
) -> Result<raw::InsertRun> {
    let schema = db.fresh_schema("raw").await?;
    raw::create_table(&schema, plan.seed_events).await?;
    let run = raw::insert_load(
        &schema,
        shape,
        clients,
        plan.warmup,
        plan.measure,
        progress,
        label,
    )
    .await;
    db.drop_schema(schema).await?;
    run
}

/// One Tidemark append run on a new store in a fresh schema.
async fn tidemark_append(
    db: &Database,
    events: usize,
    callers: usize,
    seed: u64,
    plan: &Plan,
    progress: &Progress,
    label: &str,
) -> Result<(workloads::AppendRun, probe::Batches)> {
    let scratch = ScratchStore::open(db, "append", PipelineConfig::default(), seed).await?;
    probe::take();
    let run = workloads::append_load(
        &scratch.store,
        callers,
        events,
        plan.warmup,
        plan.measure,
        progress,
        label,
    )
    .await;
    let batches = probe::take();
    scratch.close(db).await?;
    Ok((run?, batches))
}

/// Writes a log, then reads it raw, with `read_log` and with `subscribe` (best of N each).
async fn scans(plan: &Plan, db: &Database, progress: &Progress, report: &mut Report) -> Result<()> {
    progress.begin("writing the log for the scans");
    let schema = db.fresh_schema("scan").await?;
    let store = workloads::open_store(&schema, PipelineConfig::default(), plan.seed_events).await?;
    let result = async {
        workloads::populate(&store, plan.scan_events, progress).await?;
        // The scans read the seed events too.
        let total = plan.scan_events + plan.seed_events;
        progress.done(&format!(
            "wrote {} events to scan",
            group(plan.scan_events as f64)
        ));

        let best = |runs: Vec<(u64, Duration)>| -> Result<(u64, f64)> {
            let events = runs.first().map_or(0, |r| r.0);
            if events != total || runs.iter().any(|r| r.0 != events) {
                anyhow::bail!("a scan read {events} events; the log holds {}", total);
            }
            let fastest = runs.iter().map(|r| r.1).min().unwrap_or_default();
            Ok((events, events as f64 / fastest.as_secs_f64().max(1e-9)))
        };

        progress.begin("raw scan");
        let mut runs = Vec::new();
        for _ in 0..plan.scan_repeats {
            runs.push(raw::scan_log(&schema).await?);
        }
        let (events, per_sec) = best(runs)?;
        progress.done(&format!("raw scan: {} events/s", group(per_sec)));
        report.raw_scan = Some(Scan {
            label: "raw scan".into(),
            events,
            per_sec,
        });

        for (label, page) in [
            (report::SCAN_READ_LOG, 1000),
            (report::SCAN_READ_LOG_BIG, 10_000),
        ] {
            progress.begin(label);
            let mut runs = Vec::new();
            for _ in 0..plan.scan_repeats {
                runs.push(workloads::scan_read_log(&store, page).await?);
            }
            let (events, per_sec) = best(runs)?;
            progress.done(&format!("{label}: {} events/s", group(per_sec)));
            report.scans.push(Scan {
                label: label.into(),
                events,
                per_sec,
            });
        }

        progress.begin(report::SCAN_SUBSCRIBE);
        let mut runs = Vec::new();
        for _ in 0..plan.scan_repeats {
            runs.push(workloads::scan_subscribe(&store, total).await?);
        }
        let (events, per_sec) = best(runs)?;
        progress.done(&format!(
            "{}: {} events/s",
            report::SCAN_SUBSCRIBE,
            group(per_sec)
        ));
        report.scans.push(Scan {
            label: report::SCAN_SUBSCRIBE.into(),
            events,
            per_sec,
        });
        Ok::<(), anyhow::Error>(())
    }
    .await;
    store.shutdown().await;
    drop(store);
    db.drop_schema(schema).await?;
    result
}

/// A counting projection catching up over a large log beside the raw scan of the same rows,
/// a keyed and a windowed projection catching up over the same log beside it, then
/// append→read-model latency at the delivery rate.
async fn projection_figures(
    plan: &Plan,
    db: &Database,
    progress: &Progress,
    report: &mut Report,
    nats_url: Option<&str>,
) -> Result<()> {
    progress.begin("writing the log for the projection catch-up");
    let schema = db.fresh_schema("projections").await?;
    workloads::seed_store(&schema, plan.projection_events, 16).await?;
    progress.done(&format!(
        "wrote {} events",
        group(plan.projection_events as f64)
    ));

    progress.begin("raw scan of the projection's log");
    let (scanned, took) = raw::scan_log(&schema).await?;
    anyhow::ensure!(
        scanned == plan.projection_events,
        "the raw scan read {scanned} events"
    );
    let raw_per_sec = scanned as f64 / took.as_secs_f64();
    progress.done(&format!("raw scan: {} events/s", group(raw_per_sec)));

    let mut catch_ups: Vec<(CatchUp, Scan)> = Vec::new();
    for projection in CatchUp::ALL {
        progress.begin(&format!("{} catch-up", projection.label()));
        let took = projections::catch_up(&schema, plan.projection_events, projection).await?;
        let per_sec = plan.projection_events as f64 / took.as_secs_f64();
        progress.done(&format!("catch-up: {} events/s", group(per_sec)));
        catch_ups.push((
            projection,
            Scan {
                label: projection.label().into(),
                events: plan.projection_events,
                per_sec,
            },
        ));
    }
    let scan_of = |wanted: CatchUp| {
        catch_ups
            .iter()
            .find(|(projection, _)| *projection == wanted)
            .map(|(_, scan)| scan.clone())
    };
    let counting = scan_of(CatchUp::Counting).context("the counting catch-up ran")?;
    let grouped = catch_ups
        .iter()
        .filter(|(projection, _)| *projection != CatchUp::Counting)
        .map(|(projection, scan)| GroupedCatchUp {
            catch_up: scan.clone(),
            baseline: projection
                .baseline()
                .and_then(scan_of)
                .unwrap_or_else(|| counting.clone()),
            is_goal: projection.baseline().is_some(),
        })
        .collect();
    report.projection_catch_up = Some((
        Scan {
            label: "raw scan of the same log".into(),
            events: scanned,
            per_sec: raw_per_sec,
        },
        counting,
    ));
    report.grouped_catch_ups = grouped;

    progress.begin("relay to NATS JetStream catch-up");
    match relay::Nats::get(nats_url).await {
        Ok(nats) => {
            let took = relay::catch_up(&schema, plan.projection_events, &nats).await?;
            let per_sec = plan.projection_events as f64 / took.as_secs_f64();
            progress.done(&format!("relay: {} events/s", group(per_sec)));
            report.relay_catch_up = Some(Scan {
                label: "Relay to NATS JetStream (one lane, log order)".into(),
                events: plan.projection_events,
                per_sec,
            });
        }
        Err(why) => {
            progress.done(&format!("relay skipped: {why}"));
            report
                .notes
                .push(format!("The relay's row was skipped: {why}."));
        }
    }

    progress.begin(&format!(
        "append→read-model latency at {} ev/s",
        plan.delivery_rate
    ));
    let mut latencies = projections::read_model_latency(
        &schema,
        plan.delivery_rate,
        plan.projection_latency_events,
    )
    .await?;
    let figures = DeliveryFigures {
        label: "counting projection".into(),
        samples: latencies.len(),
        p50_ms: latencies.percentile_ms(50.0).unwrap_or(f64::NAN),
        p99_ms: latencies.percentile_ms(99.0).unwrap_or(f64::NAN),
        max_ms: latencies.max_ms().unwrap_or(f64::NAN),
    };
    progress.done(&format!(
        "append→read model: p50 {:.2} ms, p99 {:.2} ms",
        figures.p50_ms, figures.p99_ms
    ));
    report.projection_latency = Some(figures);
    db.drop_schema(schema).await?;
    Ok(())
}

/// One append run on a store with the registry installed, `OrderPlaced` validated and
/// stored as given.
#[allow(clippy::too_many_arguments)]
async fn registry_append(
    db: &Database,
    validation: tidemark_schema::ValidationMode,
    encoding: tidemark_store::PayloadEncoding,
    events: usize,
    callers: usize,
    plan: &Plan,
    progress: &Progress,
    label: &str,
) -> Result<workloads::AppendRun> {
    progress.begin(label);
    let scratch =
        evolution::RegistryStore::open(db, "evolution", plan.seed_events, validation, encoding)
            .await?;
    let run = workloads::append_load(
        &scratch.store,
        callers,
        events,
        plan.warmup,
        plan.measure,
        progress,
        label,
    )
    .await;
    scratch.close(db).await?;
    let run = run?;
    progress.done(&format!("{label}: {} events/s", group(run.events_per_sec)));
    Ok(run)
}

/// Validation ENFORCE vs OFF (with the raw 1-row insert at 64 clients, the floor of issue
/// #3, in the same rounds), then JSON vs Avro payloads: appends in alternating runs, then
/// each encoding's log: bytes per event and catch-up.
async fn evolution_figures(
    plan: &Plan,
    db: &Database,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    use tidemark_schema::ValidationMode::{Enforce, Off};
    use tidemark_store::PayloadEncoding::{Avro, Json};
    for (events, callers) in [(1usize, 64usize), (100, 8)] {
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut latencies: [Latencies; 3] = Default::default();
        for round in 1..=plan.rounds {
            if events == 1 {
                let clients = callers.min(db.free_connections().await?.max(1) as usize);
                let label = format!("raw INSERT 1 row/tx, {clients} clients (round {round})");
                progress.begin(&label);
                let run =
                    raw_insert(db, InsertShape::SingleRow, clients, plan, progress, &label).await?;
                progress.done(&format!("{label}: {} rows/s", group(run.rows_per_sec)));
                rates[2].push(run.rows_per_sec);
                latencies[2].extend(run.latencies);
            }
            for (i, mode) in [Off, Enforce].into_iter().enumerate() {
                let label = format!(
                    "append {events} event(s), {callers} callers, validation {mode} (round {round})"
                );
                let run = registry_append(db, mode, Json, events, callers, plan, progress, &label)
                    .await?;
                rates[i].push(run.events_per_sec);
                latencies[i].extend(run.latencies);
            }
        }
        let [off, enforce, raw] = latencies;
        report.validation.push(ValidationRun {
            events_per_append: events,
            callers,
            off: Rate::new(mean(&rates[0]), off),
            enforce: Rate::new(mean(&rates[1]), enforce),
            raw: (!rates[2].is_empty()).then(|| Rate::new(mean(&rates[2]), raw)),
        });
    }

    let mut appends: [[Vec<f64>; 2]; 2] = Default::default();
    for round in 1..=plan.rounds {
        for (e, encoding) in [Json, Avro].into_iter().enumerate() {
            for (s, (events, callers)) in [(1usize, 64usize), (100, 8)].into_iter().enumerate() {
                let label = format!(
                    "append {events} event(s), {callers} callers, stored as {encoding} (round {round})"
                );
                let run =
                    registry_append(db, Off, encoding, events, callers, plan, progress, &label)
                        .await?;
                appends[e][s].push(run.events_per_sec);
            }
        }
    }
    for (e, encoding) in [Json, Avro].into_iter().enumerate() {
        let label = format!(
            "{} events stored as {encoding}: size, read_log, subscribe",
            plan.encoding_events
        );
        progress.begin(&label);
        let (footprint, read_log, subscribe) = evolution::storage_and_catch_up(
            db,
            encoding,
            plan.encoding_events,
            plan.scan_repeats,
            progress,
        )
        .await?;
        progress.done(&format!(
            "{label}: {:.0} payload bytes/event, {:.0} heap bytes/event; read_log {} ev/s, subscribe {} ev/s",
            footprint.payload_bytes,
            footprint.heap_bytes,
            group(read_log),
            group(subscribe)
        ));
        report.encodings.push(EncodingRun {
            encoding: encoding.as_str(),
            footprint,
            append_single_64: mean(&appends[e][0]),
            append_batch_8: mean(&appends[e][1]),
            read_log_per_sec: read_log,
            subscribe_per_sec: subscribe,
        });
    }
    Ok(())
}

/// Delivery latency at a fixed append rate, to an in-process and a NOTIFY-woken subscriber.
async fn delivery(
    plan: &Plan,
    db: &Database,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let label = format!("delivery latency at {} ev/s", plan.delivery_rate);
    progress.begin(&label);
    let schema = db.fresh_schema("delivery").await?;
    let store = workloads::open_store(&schema, PipelineConfig::default(), plan.seed_events).await?;
    let other = workloads::open_store(&schema, PipelineConfig::default(), 0).await?;
    let skip = plan.delivery_events / 10;
    let result = workloads::delivery_latency(
        &store,
        &other,
        plan.delivery_rate,
        plan.delivery_events,
        skip,
        progress,
    )
    .await;
    store.shutdown().await;
    other.shutdown().await;
    drop((store, other));
    db.drop_schema(schema).await?;
    let (local, remote) = result?;
    let mut line = label.clone();
    for (name, delivery) in [
        ("same store handle (in-process wake-up)", local),
        ("second store handle (NOTIFY wake-up)", remote),
    ] {
        let mut latencies = delivery.latencies;
        let figures = DeliveryFigures {
            label: name.into(),
            samples: latencies.len(),
            p50_ms: latencies.percentile_ms(50.0).unwrap_or_default(),
            p99_ms: latencies.percentile_ms(99.0).unwrap_or_default(),
            max_ms: latencies.max_ms().unwrap_or_default(),
        };
        line.push_str(&format!(
            "; {name}: p50 {:.2} ms, p99 {:.2} ms",
            figures.p50_ms, figures.p99_ms
        ));
        report.delivery.push(figures);
    }
    progress.done(&line);
    Ok(())
}

/// Far more callers than the pipeline can take, with the default pipeline settings:
/// twenty times the requests it holds at once (queue plus one batch). Ten times that is
/// not enough on a fast machine: the writer commits ~25,000 appends/s here, so about
/// 50,000 waiting callers still get in within the 2-second enqueue deadline.
async fn overload(
    plan: &Plan,
    db: &Database,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    let config = PipelineConfig::default();
    let callers = 20 * (config.queue_depth + config.max_batch_requests);
    let label = format!("overload: {callers} callers");
    progress.begin(&label);
    let scratch = ScratchStore::open(db, "overload", config.clone(), plan.seed_events).await?;
    let run = workloads::overload(
        &scratch.store,
        callers,
        config.queue_depth,
        plan.overload_time,
        progress,
    )
    .await;
    scratch.close(db).await?;
    let run = run?;
    progress.done(&format!(
        "{label}: {} ok, {} overloaded, RSS {} at queue full, {} at end",
        group(run.ok as f64),
        group(run.overloaded as f64),
        run.rss_at_full.map_or("—".into(), harness::mib),
        harness::mib(run.rss_end)
    ));
    report.overload = Some(run);
    Ok(())
}

/// Raw COPY BINARY vs UNNEST at the batch sizes the writer sees, alternating slices.
async fn copy_vs_unnest(
    plan: &Plan,
    db: &Database,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    for &rows in &plan.copy_sizes {
        let label = format!("COPY vs UNNEST, {rows} rows per batch");
        progress.begin(&label);
        let schema = db.fresh_schema("copy").await?;
        raw::create_table(&schema, plan.seed_events).await?;
        let slice = plan.copy_time / plan.copy_rounds;
        let warmup = (slice / 5).min(Duration::from_millis(300));
        let mut sums = [(0.0f64, 0.0f64); 2];
        for _ in 0..plan.copy_rounds {
            for (i, shape) in [InsertShape::Unnest(rows), InsertShape::Copy(rows)]
                .into_iter()
                .enumerate()
            {
                let run =
                    raw::insert_load(&schema, shape, 1, warmup, slice, progress, &label).await?;
                sums[i].0 += run.rows_per_sec;
                sums[i].1 += run.statement_micros.unwrap_or_default();
            }
        }
        db.drop_schema(schema).await?;
        let n = f64::from(plan.copy_rounds);
        let entry = CopyVsUnnest {
            rows,
            unnest_rows_per_sec: sums[0].0 / n,
            copy_rows_per_sec: sums[1].0 / n,
            unnest_statement_us: sums[0].1 / n,
            copy_statement_us: sums[1].1 / n,
        };
        progress.done(&format!(
            "{label}: UNNEST {} rows/s ({:.0} µs/stmt), COPY {} rows/s ({:.0} µs/stmt)",
            group(entry.unnest_rows_per_sec),
            entry.unnest_statement_us,
            group(entry.copy_rows_per_sec),
            entry.copy_statement_us
        ));
        report.copy_vs_unnest.push(entry);
    }
    Ok(())
}

/// `max_batch_wait` and `queue_depth`, each varied alone from the defaults.
async fn knobs(plan: &Plan, db: &Database, progress: &Progress, report: &mut Report) -> Result<()> {
    let defaults = PipelineConfig::default();
    let mut runs = Vec::new();
    for &callers in &plan.wait_callers {
        for &wait in &plan.wait_values {
            runs.push((
                format!("max_batch_wait = {wait:?}"),
                PipelineConfig {
                    max_batch_wait: wait,
                    ..defaults.clone()
                },
                callers,
                wait == defaults.max_batch_wait,
            ));
        }
    }
    for &depth in &plan.queue_depths {
        runs.push((
            format!("queue_depth = {depth}"),
            PipelineConfig {
                queue_depth: depth,
                ..defaults.clone()
            },
            plan.queue_callers,
            depth == defaults.queue_depth,
        ));
    }
    for (setting, config, callers, default) in runs {
        let label = format!("{setting}, {callers} callers");
        progress.begin(&label);
        let scratch = ScratchStore::open(db, "knob", config, plan.seed_events).await?;
        probe::take();
        let run = workloads::append_load(
            &scratch.store,
            callers,
            1,
            plan.knob_warmup,
            plan.knob_measure,
            progress,
            &label,
        )
        .await;
        scratch.close(db).await?;
        let run = run?;
        let rate = Rate::new(run.events_per_sec, run.latencies);
        let batches = probe::take();
        progress.done(&format!(
            "{label}: {} events/s; {:.1} appends per transaction, {:.2} ms each",
            group(rate.per_sec),
            batches.mean_requests,
            batches.mean_millis
        ));
        report.knobs.push(Knob {
            setting,
            callers,
            rate,
            batches,
            default,
        });
    }
    Ok(())
}

/// The runs of one kind at one concurrency, over the rounds.
#[derive(Default)]
struct ApiRuns {
    rates: Vec<f64>,
    latencies: Latencies,
    process_cpu_us: Vec<f64>,
    postgres_cpu_us: Vec<f64>,
    batches: Vec<(f64, f64)>,
}

impl ApiRuns {
    fn add(&mut self, run: api::ApiRun) {
        self.rates.push(run.per_sec);
        self.latencies.extend(run.latencies);
        self.process_cpu_us.extend(run.server_cpu_us);
        self.postgres_cpu_us.extend(run.postgres_cpu_us);
        self.batches.extend(run.batches);
    }

    /// Means over the rounds.
    fn figures(self) -> report::ApiFigures {
        let some_mean = |values: &[f64]| (!values.is_empty()).then(|| mean(values));
        let requests: Vec<f64> = self.batches.iter().map(|b| b.0).collect();
        let millis: Vec<f64> = self.batches.iter().map(|b| b.1).collect();
        report::ApiFigures {
            rate: Rate::new(mean(&self.rates), self.latencies),
            process_cpu_us: some_mean(&self.process_cpu_us),
            postgres_cpu_us: some_mean(&self.postgres_cpu_us),
            batches: some_mean(&requests).zip(some_mean(&millis)),
        }
    }
}

/// `url` of a database for a server process (a socket directory percent-encoded).
fn server_url(database: &env::Schema) -> String {
    tidemark_pg_embedded::connection_url(&database.config)
}

/// The highest position in the log of `database`.
async fn log_head(database: &env::Schema) -> Result<i64> {
    let client = env::connect(&database.config).await?;
    Ok(client
        .query_one("SELECT coalesce(max(position), 0)::bigint FROM events", &[])
        .await
        .context("reading the head of the log")?
        .get(0))
}

/// The API path (issue #15), each part on a database of its own: (a) single-event appends
/// over HTTP against `tidemark serve`, the library's `append` of the same event and the raw
/// 1-row insert, alternating at each concurrency, then GraphQL `events` paging against
/// `read_log` over the log that left; (b) the bank server with its projections running and
/// with `--no-projections`, alternating; (c) the catch-up of the bank's projections over a
/// log of the bank's own events, beside the raw scan of it.
async fn api_figures(
    plan: &Plan,
    db: &Database,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    if let Err(missing) = api::Binary::Tidemark
        .path()
        .and_then(|_| api::Binary::Bank.path())
    {
        progress.log(&format!("the API path is skipped: {missing:#}"));
        report.notes.push(format!(
            "The API path (issue #15) was skipped: {missing:#}."
        ));
        return Ok(());
    }
    let logs = tempfile::Builder::new()
        .prefix("tidemark-bench-servers-")
        .tempdir()
        .context("creating a directory for the servers' logs")?;
    for part in 0..3 {
        let database = db.fresh_database(["api", "bank", "bank_log"][part]).await?;
        let result = match part {
            0 => api_appends(plan, db, &database, logs.path(), progress, report).await,
            1 => {
                bank_appends(
                    plan,
                    db.postmaster_pid(),
                    &database,
                    logs.path(),
                    progress,
                    report,
                )
                .await
            }
            _ => bank_catch_up(plan, &database, logs.path(), progress, report).await,
        };
        db.drop_database(database).await?;
        result?;
    }
    Ok(())
}

/// Part (a) of [`api_figures`].
async fn api_appends(
    plan: &Plan,
    db: &Database,
    database: &env::Schema,
    logs: &std::path::Path,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    progress.begin("starting tidemark serve on a seeded database");
    workloads::seed_store(database, plan.seed_events, 16).await?;
    let server =
        api::Server::start(api::Binary::Tidemark, &server_url(database), true, logs).await?;
    progress.done(&format!(
        "tidemark serve ready after {:.1} s",
        server.ready_after.as_secs_f64()
    ));
    // The library's handle on the server's own log: it must know every migration the
    // server applied.
    let config = tidemark_store::StoreConfig {
        migrations: tidemark_api::all_migrations(),
        ..tidemark_store::StoreConfig::default()
    };
    let store = tidemark_store::EventStore::open(database.config.clone(), config)
        .await
        .context("opening the server's store in the benchmark")?;
    let result = async {
        for &connections in &plan.api_connections {
            let free = db.free_connections().await?.max(1) as usize;
            let raw_clients = connections.min(free);
            let (mut http, mut library, mut raw) =
                (ApiRuns::default(), ApiRuns::default(), ApiRuns::default());
            let mut refused = 0;
            for round in 1..=plan.rounds {
                let label = format!("raw INSERT 1 row/tx, {raw_clients} clients (round {round})");
                progress.begin(&label);
                let run = raw_insert(
                    db,
                    InsertShape::SingleRow,
                    raw_clients,
                    plan,
                    progress,
                    &label,
                )
                .await?;
                progress.done(&format!("{label}: {} rows/s", group(run.rows_per_sec)));
                raw.rates.push(run.rows_per_sec);
                raw.latencies.extend(run.latencies);

                let label = format!("library append, {connections} callers (round {round})");
                progress.begin(&label);
                let run = api::library_appends(
                    &store,
                    db.postmaster_pid(),
                    connections,
                    plan.warmup,
                    plan.measure,
                    progress,
                    &label,
                )
                .await?;
                progress.done(&format!("{label}: {}", run.describe()));
                library.add(run);

                let label = format!(
                    "GraphQL appendEvents over HTTP, {connections} connections (round {round})"
                );
                progress.begin(&label);
                let run = api::http_appends(
                    &server,
                    db.postmaster_pid(),
                    connections,
                    plan.warmup,
                    plan.measure,
                    progress,
                    &label,
                )
                .await?;
                progress.done(&format!("{label}: {}", run.describe()));
                refused += run.refused;
                http.add(run);
            }
            report.api_appends.push(report::ApiAppends {
                connections,
                raw_clients,
                http: http.figures(),
                refused,
                library: library.figures(),
                raw: raw.figures().rate,
            });
        }

        let label = "GraphQL events paging vs read_log, pages of 1,000";
        progress.begin(label);
        let (mut library_best, mut graphql_best) = ((0u64, f64::MAX), (0u64, f64::MAX));
        for _ in 0..plan.scan_repeats {
            let (events, took) = workloads::scan_read_log(&store, 1000).await?;
            if took.as_secs_f64() < library_best.1 {
                library_best = (events, took.as_secs_f64());
            }
            let (events, took) = api::graphql_paging(&server, 1000).await?;
            if took.as_secs_f64() < graphql_best.1 {
                graphql_best = (events, took.as_secs_f64());
            }
        }
        anyhow::ensure!(
            library_best.0 == graphql_best.0,
            "read_log read {} events and GraphQL paging {}",
            library_best.0,
            graphql_best.0
        );
        let scans = (
            Scan {
                label: "library `read_log`, pages of 1,000".into(),
                events: library_best.0,
                per_sec: library_best.0 as f64 / library_best.1,
            },
            Scan {
                label: "GraphQL `events` over HTTP, pages of 1,000".into(),
                events: graphql_best.0,
                per_sec: graphql_best.0 as f64 / graphql_best.1,
            },
        );
        progress.done(&format!(
            "{label}: read_log {} events/s, GraphQL {} events/s",
            group(scans.0.per_sec),
            group(scans.1.per_sec)
        ));
        report.graphql_paging = Some(scans);
        Ok::<(), anyhow::Error>(())
    }
    .await;
    store.shutdown().await;
    let stopped = server.stop().await;
    result?;
    stopped
}

/// Part (b) of [`api_figures`]: the bank server with its projections running and without,
/// alternating; with them, each run starts once they have caught up with the log.
async fn bank_appends(
    plan: &Plan,
    postmaster: Option<u32>,
    database: &env::Schema,
    logs: &std::path::Path,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    workloads::seed_store(database, plan.seed_events, 16).await?;
    let url = server_url(database);
    for &connections in &plan.bank_connections {
        let mut runs: [ApiRuns; 2] = Default::default();
        let mut refused = 0;
        let mut projections = Vec::new();
        for round in 1..=plan.rounds {
            for (i, with) in [true, false].into_iter().enumerate() {
                let label = format!(
                    "bank serve{}, appendEvents over HTTP, {connections} connections (round {round})",
                    if with { ", projections running" } else { " --no-projections" }
                );
                progress.begin(&label);
                let server = api::Server::start(api::Binary::Bank, &url, with, logs).await?;
                let run = async {
                    if with {
                        let head = log_head(database).await?;
                        projections =
                            api::wait_caught_up(&server, head, Duration::from_secs(600)).await?;
                    }
                    api::http_appends(
                        &server,
                        postmaster,
                        connections,
                        plan.warmup,
                        plan.measure,
                        progress,
                        &label,
                    )
                    .await
                }
                .await;
                let stopped = server.stop().await;
                let run = run?;
                stopped?;
                progress.done(&format!("{label}: {}", run.describe()));
                refused += run.refused;
                runs[i].add(run);
            }
        }
        let [with, without] = runs;
        report.bank_appends.push(report::BankAppends {
            connections,
            with: with.figures(),
            without: without.figures(),
            refused,
            projections,
        });
    }
    Ok(())
}

/// Part (c) of [`api_figures`]: the bank's events written through the library, scanned raw,
/// then the bank server started on them and timed until every projection has applied the
/// whole log.
async fn bank_catch_up(
    plan: &Plan,
    database: &env::Schema,
    logs: &std::path::Path,
    progress: &Progress,
    report: &mut Report,
) -> Result<()> {
    progress.begin("writing the bank's log");
    let store = workloads::open_store(database, PipelineConfig::default(), 0).await?;
    let written = api::write_bank_log(&store, plan.bank_events, progress).await;
    store.shutdown().await;
    written?;
    client_analyze(database).await?;
    let head = log_head(database).await?;
    let (scanned, took) = raw::scan_log(database).await?;
    anyhow::ensure!(
        scanned as i64 == head,
        "the raw scan read {scanned} of {head} events"
    );
    let raw_scan = Scan {
        label: "raw scan of the same log".into(),
        events: scanned,
        per_sec: scanned as f64 / took.as_secs_f64(),
    };
    progress.done(&format!(
        "wrote {} bank events; raw scan {} events/s",
        group(head as f64),
        group(raw_scan.per_sec)
    ));

    let label = "bank serve: its projections catch up";
    progress.begin(label);
    let started = Instant::now();
    let server = api::Server::start(api::Binary::Bank, &server_url(database), true, logs).await?;
    let caught_up = api::wait_caught_up(&server, head, Duration::from_secs(1800)).await;
    let took = started.elapsed();
    let ready_after = server.ready_after;
    let stopped = server.stop().await;
    let projections = caught_up?;
    stopped?;
    let bank = Scan {
        label: "bank's projections".into(),
        events: head as u64,
        per_sec: head as f64 / took.as_secs_f64(),
    };
    progress.done(&format!(
        "{label}: {} events/s over {} events ({} projections and handlers), {:.1} s from process start",
        group(bank.per_sec),
        group(head as f64),
        projections.len(),
        took.as_secs_f64()
    ));
    report.bank_catch_up = Some(report::BankCatchUp {
        raw: raw_scan,
        bank,
        projections,
        ready_after_secs: ready_after.as_secs_f64(),
        took_secs: took.as_secs_f64(),
    });
    Ok(())
}

async fn client_analyze(database: &env::Schema) -> Result<()> {
    env::connect(&database.config)
        .await?
        .batch_execute("VACUUM ANALYZE events")
        .await
        .context("analysing the bank's log")
}
