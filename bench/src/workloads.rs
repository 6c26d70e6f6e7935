//! Tidemark workloads, each through the public `EventStore` API: concurrent appends (single
//! events, 100-event batches, one hot stream with `Exact` versions), log scans with
//! `read_log` and `subscribe`, append-to-delivery latency at a fixed rate, and memory under
//! overload.

use crate::env::Schema;
use crate::harness::{payload, random_stream, rss_bytes, task_rng, Latencies, Progress, Window};
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_store::{
    AppendRequest, EventStore, ExpectedVersion, LogFilter, NewEvent, PipelineConfig, StoreConfig,
    StoreError, SubscribeOptions,
};

/// Opens a store in `schema` (migrating it) with `pipeline` settings. With `seed` > 0 the
/// log first gets that many events and the tables are analysed (see [`seed_store`]).
pub async fn open_store(
    schema: &Schema,
    pipeline: PipelineConfig,
    seed: u64,
) -> Result<EventStore> {
    let config = StoreConfig {
        pipeline,
        ..StoreConfig::default()
    };
    if seed > 0 {
        seed_store(schema, seed, config.partitions).await?;
    }
    EventStore::open(schema.config.clone(), config)
        .await
        .with_context(|| format!("opening the event store in schema {}", schema.name))
}

/// A store in a schema of its own for one measurement: [`ScratchStore::open`] makes both,
/// [`ScratchStore::close`] shuts the store down and drops the schema, whatever the
/// measurement's outcome was.
pub struct ScratchStore {
    pub schema: Schema,
    pub store: EventStore,
}

impl ScratchStore {
    pub async fn open(
        db: &crate::env::Database,
        label: &str,
        pipeline: PipelineConfig,
        seed: u64,
    ) -> Result<ScratchStore> {
        let schema = db.fresh_schema(label).await?;
        let store = open_store(&schema, pipeline, seed).await?;
        Ok(ScratchStore { schema, store })
    }

    pub async fn close(self, db: &crate::env::Database) -> Result<()> {
        self.store.shutdown().await;
        drop(self.store);
        db.drop_schema(self.schema).await
    }
}

/// Streams the seed events are spread over (`seed-0` .. `seed-9999`): enough that the
/// planner picks index scans for the writer's `stream_id = ANY($1)` lookup.
const SEED_STREAMS: usize = 10_000;

/// Puts the store in a steady state before it is measured: migrates `schema`, writes
/// `events` events (ten thousand streams, ~200-byte payloads, every invariant of the log
/// kept: dense positions and versions, partitions by the store's hash, heads recorded)
/// and analyses the tables.
///
/// Without this, every phase would measure a store created a second earlier, whose
/// tables have no statistics yet; the writer's connection then caches generic plans made
/// for empty tables (sequential scans for `= ANY($1)` lookups), which stay until autovacuum
/// analyses the tables, about a minute later. (The `cold` row of the report measures
/// exactly that.)
pub async fn seed_store(schema: &Schema, events: u64, partitions: u16) -> Result<()> {
    let mut client = crate::env::connect(&schema.config).await?;
    tidemark_store::migrate::run(&mut client, &tidemark_store::MigrationSet::store())
        .await
        .context("migrating the seeded store")?;
    let tx = client.transaction().await?;
    insert_seed_events(&tx, "events", events, partitions).await?;
    tx.execute(
        "INSERT INTO streams (stream_id, version)
         SELECT stream_id, max(stream_version) FROM events GROUP BY stream_id",
        &[],
    )
    .await
    .context("seeding the stream heads")?;
    tx.execute(
        "INSERT INTO store_head (position, partitions) VALUES ($1, $2)",
        &[&(events as i64), &i32::from(partitions)],
    )
    .await
    .context("seeding the store head")?;
    tx.commit().await.context("committing the seed")?;
    client
        .batch_execute("ANALYZE events; ANALYZE streams;")
        .await
        .context("analysing the seeded tables")
}

/// Writes `events` seed events into `table` (the store's `events`, or the baseline's copy of
/// it): positions 1..=events, ten thousand streams with dense versions, each stream in the
/// partition the store's hash gives it, ~200-byte payloads.
pub async fn insert_seed_events(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    events: u64,
    partitions: u16,
) -> Result<()> {
    let streams: Vec<String> = (0..SEED_STREAMS).map(|k| format!("seed-{k}")).collect();
    let stream_partitions: Vec<i16> = streams
        .iter()
        .map(|s| tidemark_store::hashing::partition_of(s, partitions))
        .collect();
    let sql = format!(
        "INSERT INTO {table} (position, stream_id, stream_version, partition, event_id, event_type,
                             schema_version, payload, metadata, content_hash)
         SELECT i + 1, ($2::text[])[(i % $4::bigint)::int + 1], i / $4::bigint,
                ($3::smallint[])[(i % $4::bigint)::int + 1],
                gen_random_uuid(), 'Seeded', 1,
                jsonb_build_object(
                    'order_id', 'ord-' || left(md5(i::text), 16),
                    'customer_id', 'cus-' || lpad(i::text, 8, '0'),
                    'amount_cents', i % 100000,
                    'currency', 'EUR',
                    'items', jsonb_build_array(
                        jsonb_build_object('sku', 'SKU-' || lpad((i % 100000)::text, 5, '0'), 'qty', 1 + i % 9),
                        jsonb_build_object('sku', 'SKU-' || lpad((i % 99991)::text, 5, '0'), 'qty', 1 + i % 7)),
                    'channel', 'web',
                    'placed_at', '2026-11-25T12:00:00Z'),
                '{{}}'::jsonb, sha256(i::text::bytea)
           FROM generate_series(0::bigint, $1::bigint - 1) AS i"
    );
    client
        .execute(
            &sql,
            &[
                &(events as i64),
                &streams,
                &stream_partitions,
                &(SEED_STREAMS as i64),
            ],
        )
        .await
        .with_context(|| format!("seeding {table}"))?;
    Ok(())
}

fn event(rng: &mut rand::rngs::SmallRng) -> NewEvent {
    NewEvent::new("OrderPlaced", payload(rng))
}

/// Result of an append run.
pub struct AppendRun {
    pub events_per_sec: f64,
    /// Per append call.
    pub latencies: Latencies,
}

/// `callers` tasks append `events_per_append` events to random streams with
/// `ExpectedVersion::Any`, as fast as they can.
pub async fn append_load(
    store: &EventStore,
    callers: usize,
    events_per_append: usize,
    warmup: Duration,
    measure: Duration,
    progress: &Progress,
    label: &str,
) -> Result<AppendRun> {
    let window = Window::starting_now(warmup, measure);
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let store = store.clone();
        let window = window.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            let mut latencies = Latencies::default();
            while window.running() {
                let events = (0..events_per_append).map(|_| event(&mut rng)).collect();
                let request =
                    AppendRequest::new(random_stream(&mut rng), ExpectedVersion::Any, events);
                let started = Instant::now();
                if let Err(error) = store.append(request).await {
                    window.stop();
                    return Err(anyhow!(error).context("appending"));
                }
                if let Some(latency) = window.record(started, events_per_append as u64) {
                    latencies.push(latency);
                }
            }
            Ok(latencies)
        }));
    }
    progress.watch(label, &window).await;
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.extend(task.await.context("an append task panicked")??);
    }
    Ok(AppendRun {
        events_per_sec: window.rate(),
        latencies,
    })
}

/// Result of the hot-stream run.
pub struct HotRun {
    pub events_per_sec: f64,
    /// Attempts that failed with `WrongExpectedVersion`, per successful append.
    pub conflicts_per_success: f64,
}

/// `callers` tasks append to one stream with `Exact` versions: read the stream's version,
/// append one event expecting it, retry on `WrongExpectedVersion`.
pub async fn hot_stream_load(
    store: &EventStore,
    callers: usize,
    warmup: Duration,
    measure: Duration,
    progress: &Progress,
    label: &str,
) -> Result<HotRun> {
    const STREAM: &str = "hot-1";
    let window = Window::starting_now(warmup, measure);
    let conflicts = Arc::new(AtomicU64::new(0));
    let successes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let store = store.clone();
        let window = window.clone();
        let conflicts = conflicts.clone();
        let successes = successes.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            let mut attempt = 0u64;
            while window.running() {
                let version = store.stream_version(STREAM).await?;
                let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                attempt += 1;
                // Every attempt carries distinct content: a derived event id must never
                // make another caller's attempt look like an idempotent retry.
                let mut body = payload(&mut rng);
                body["attempt"] = json!(format!("{caller}-{attempt}"));
                let request =
                    AppendRequest::new(STREAM, expected, vec![NewEvent::new("Bumped", body)]);
                let started = Instant::now();
                match store.append(request).await {
                    Ok(_) => {
                        if window.record(started, 1).is_some() {
                            successes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(StoreError::WrongExpectedVersion { .. }) => {
                        if window.record(started, 0).is_some() {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(error) => {
                        window.stop();
                        return Err(anyhow!(error).context("appending to the hot stream"));
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    progress.watch(label, &window).await;
    for task in tasks {
        task.await.context("a hot-stream task panicked")??;
    }
    let successes = successes.load(Ordering::Relaxed).max(1);
    Ok(HotRun {
        events_per_sec: window.rate(),
        conflicts_per_success: conflicts.load(Ordering::Relaxed) as f64 / successes as f64,
    })
}

/// Appends `total` events in 100-event appends from 8 callers (the log the scans read).
pub async fn populate(store: &EventStore, total: u64, progress: &Progress) -> Result<()> {
    let remaining = Arc::new(AtomicI64::new(total as i64));
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let remaining = remaining.clone();
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            loop {
                let take = remaining.fetch_sub(100, Ordering::Relaxed).min(100);
                if take <= 0 {
                    return Ok::<(), anyhow::Error>(());
                }
                let events = (0..take).map(|_| event(&mut rng)).collect();
                // A thousand streams of a few hundred events each.
                let stream = format!("order-{}", rand::Rng::random_range(&mut rng, 0..1000));
                store
                    .append(AppendRequest::new(stream, ExpectedVersion::Any, events))
                    .await
                    .context("populating the log")?;
                written.fetch_add(take as u64, Ordering::Relaxed);
            }
        }));
    }
    progress
        .await_writers(tasks, &written, total, "writing the log")
        .await
}

/// Reads the whole log with `read_log` in pages of `page`. Returns (events, elapsed).
pub async fn scan_read_log(store: &EventStore, page: usize) -> Result<(u64, Duration)> {
    let filter = LogFilter::all();
    let started = Instant::now();
    let (mut after, mut count) = (0, 0u64);
    loop {
        let events = store
            .read_log(after, &filter, page)
            .await
            .context("reading the log")?;
        let Some(last) = events.last() else { break };
        after = last.position;
        count += events.len() as u64;
        std::hint::black_box(&events);
    }
    Ok((count, started.elapsed()))
}

/// Catches up from position 0 with `subscribe` until `total` events arrived.
pub async fn scan_subscribe(store: &EventStore, total: u64) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let stream = store.subscribe(SubscribeOptions::default());
    tokio::pin!(stream);
    let mut count = 0u64;
    while count < total {
        let event = stream
            .next()
            .await
            .ok_or_else(|| anyhow!("the subscription ended"))?
            .context("catching up")?;
        std::hint::black_box(&event);
        count += 1;
    }
    Ok((count, started.elapsed()))
}

/// Delivery latency of one subscriber.
pub struct Delivery {
    pub latencies: Latencies,
}

/// Appends `total` single events at `rate` per second (each append in its own task, so a
/// slow commit does not hold back the schedule) with the send time in the payload, while
/// two live subscribers measure when each event reaches them: one on `store` itself
/// (woken in-process by the writer) and one on `other`, a second store handle on the same
/// database, woken only by NOTIFY, as in another process. The first `skip` events warm up.
pub async fn delivery_latency(
    store: &EventStore,
    other: &EventStore,
    rate: u32,
    total: u64,
    skip: u64,
    progress: &Progress,
) -> Result<(Delivery, Delivery)> {
    let clock = Instant::now();
    let after = store.head_position().await?;
    let listen = move |store: &EventStore| {
        let stream = store.subscribe(SubscribeOptions {
            after,
            ..SubscribeOptions::default()
        });
        tokio::spawn(async move {
            tokio::pin!(stream);
            let mut latencies = Latencies::default();
            let mut seen = 0u64;
            while seen < total {
                let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .map_err(|_| anyhow!("no event delivered for 10 s"))?
                    .ok_or_else(|| anyhow!("the subscription ended"))?
                    .context("live subscription")?;
                let received = clock.elapsed().as_micros() as u64;
                let sent = event.payload["sent_us"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("an event without sent_us"))?;
                if seen >= skip {
                    latencies.push(Duration::from_micros(received.saturating_sub(sent)));
                }
                seen += 1;
            }
            Ok::<Delivery, anyhow::Error>(Delivery { latencies })
        })
    };
    let local = listen(store);
    let remote = listen(other);
    // Let both subscriptions reach the live state before the first event.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let failed = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut rng = task_rng();
    let mut appends = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + period * i as u32).await;
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let mut body = payload(&mut rng);
        body["sent_us"] = json!(clock.elapsed().as_micros() as u64);
        let request = AppendRequest::new(
            random_stream(&mut rng),
            ExpectedVersion::Any,
            vec![NewEvent::new("OrderPlaced", body)],
        );
        let store = store.clone();
        let failed = failed.clone();
        appends.push(tokio::spawn(async move {
            let result = store.append(request).await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result
        }));
        if i % 250 == 0 {
            progress.detail(format!("paced appends at {rate}/s: {i}/{total}"));
        }
    }
    for append in appends {
        append
            .await
            .context("a paced append panicked")?
            .context("a paced append failed")?;
    }
    let local = local
        .await
        .context("the in-process subscriber panicked")??;
    let remote = remote.await.context("the NOTIFY subscriber panicked")??;
    Ok((local, remote))
}

/// What happened under overload.
#[derive(Debug)]
pub struct OverloadRun {
    pub callers: usize,
    pub ok: u64,
    pub overloaded: u64,
    pub ok_events_per_sec: f64,
    pub rss_idle: u64,
    pub rss_ready: u64,
    /// RSS when the queue was first seen full (`None` if it never filled).
    pub rss_at_full: Option<u64>,
    pub full_after: Option<Duration>,
    /// RSS when the queue was full and every caller had an append under way: the whole
    /// offered load applied.
    pub rss_saturated: Option<u64>,
    pub saturated_after: Option<Duration>,
    /// RSS half-way through the phase.
    pub rss_half: u64,
    pub rss_peak: u64,
    pub rss_end: u64,
}

/// `callers` tasks (many times what the pipeline can hold) each append single events in a
/// loop, retrying at once after `Overloaded`, for `duration`. Samples RSS throughout.
pub async fn overload(
    store: &EventStore,
    callers: usize,
    queue_depth: usize,
    duration: Duration,
    progress: &Progress,
) -> Result<OverloadRun> {
    let rss_idle = rss_bytes().unwrap_or(0);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    // Callers holding their first request, and callers whose first append is under way.
    let ready = Arc::new(AtomicU64::new(0));
    let started_callers = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let store = store.clone();
        let mut go = go_rx.clone();
        let stop = stop.clone();
        let ok = ok.clone();
        let overloaded = overloaded.clone();
        let started_callers = started_callers.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            let mut request = Some(AppendRequest::new(
                random_stream(&mut rng),
                ExpectedVersion::Any,
                vec![event(&mut rng)],
            ));
            ready.fetch_add(1, Ordering::Relaxed);
            go.wait_for(|go| *go)
                .await
                .map_err(|_| anyhow!("the start signal was dropped"))?;
            started_callers.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                // One request per caller at a time: built only when the previous one is done.
                let request = request.take().unwrap_or_else(|| {
                    AppendRequest::new(
                        random_stream(&mut rng),
                        ExpectedVersion::Any,
                        vec![event(&mut rng)],
                    )
                });
                match store.append(request).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(StoreError::Overloaded { .. }) => {
                        overloaded.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(error) => return Err(anyhow!(error).context("appending under overload")),
                };
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    // Let every caller build its first request before measuring "ready".
    while ready.load(Ordering::Relaxed) < callers as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_ready = rss_bytes().unwrap_or(0);
    let started = Instant::now();
    go_tx
        .send(true)
        .map_err(|_| anyhow!("no caller is waiting for the start signal"))?;

    let mut rss_at_full = None;
    let mut full_after = None;
    let mut rss_saturated = None;
    let mut saturated_after = None;
    let mut rss_peak = rss_ready;
    let mut rss_end = 0;
    let mut rss_half = None;
    let mut ok_at_saturation = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rss = rss_bytes().unwrap_or(0);
        rss_peak = rss_peak.max(rss);
        rss_end = rss;
        if rss_half.is_none() && started.elapsed() >= duration / 2 {
            rss_half = Some(rss);
        }
        let full = store.queue_depth() >= queue_depth;
        if full && rss_at_full.is_none() {
            rss_at_full = Some(rss);
            full_after = Some(started.elapsed());
        }
        if full
            && rss_saturated.is_none()
            && started_callers.load(Ordering::Relaxed) == callers as u64
        {
            rss_saturated = Some(rss);
            saturated_after = Some(started.elapsed());
            ok_at_saturation = ok.load(Ordering::Relaxed);
        }
        progress.detail(format!(
            "{callers} callers: {} ok, {} overloaded, queue {}, RSS {}",
            ok.load(Ordering::Relaxed),
            overloaded.load(Ordering::Relaxed),
            store.queue_depth(),
            crate::harness::mib(rss)
        ));
    }
    let elapsed = started.elapsed();
    let ok_total = ok.load(Ordering::Relaxed);
    let overloaded_total = overloaded.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    progress.detail("overload: waiting for callers to finish".into());
    for task in tasks {
        task.await.context("an overload caller panicked")??;
    }
    let measured_from = saturated_after.unwrap_or_default();
    let ok_events_per_sec =
        (ok_total - ok_at_saturation) as f64 / (elapsed - measured_from).as_secs_f64().max(1e-3);
    if ok_total == 0 {
        bail!("no append succeeded under overload");
    }
    Ok(OverloadRun {
        callers,
        ok: ok_total,
        overloaded: overloaded_total,
        ok_events_per_sec,
        rss_idle,
        rss_ready,
        rss_at_full,
        full_after,
        rss_saturated,
        saturated_after,
        rss_half: rss_half.unwrap_or(rss_end),
        rss_peak,
        rss_end,
    })
}
