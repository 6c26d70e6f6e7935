//! Baselines in plain tokio-postgres, with no Tidemark code: inserts into a copy of the
//! `events` table (same columns, constraints and indexes, no trigger), a scan of the log, and
//! the COPY-vs-UNNEST comparison for the writer's batch insert.

use crate::env::{connect, Schema};
use crate::harness::{payload, random_stream, task_rng, Latencies, Progress, Window};
use anyhow::{Context, Result};
use futures::{pin_mut, TryStreamExt};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;
use uuid::Uuid;

/// The store's `events` table under another name: same columns, defaults, constraints and
/// indexes (`LIKE ... INCLUDING ALL`), without the append-only trigger (triggers are not
/// copied), so the baseline measures exactly the table Tidemark writes.
const RAW_TABLE_DDL: &str = "CREATE TABLE raw_events (LIKE events INCLUDING ALL)";

const INSERT_ONE: &str = "INSERT INTO raw_events (position, stream_id, stream_version, partition, \
     event_id, event_type, schema_version, payload, metadata, content_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The writer's statement (store/src/append/batch.rs), on the scratch table.
const INSERT_UNNEST: &str =
    "INSERT INTO raw_events (position, stream_id, stream_version, partition, \
     event_id, event_type, schema_version, payload, metadata, content_hash) \
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::smallint[], $5::uuid[], \
                          $6::text[], $7::int[], $8::jsonb[], $9::jsonb[], $10::bytea[])";

const COPY_IN: &str = "COPY raw_events (position, stream_id, stream_version, partition, event_id, \
     event_type, schema_version, payload, metadata, content_hash) FROM STDIN BINARY";

const COPY_TYPES: [Type; 10] = [
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT2,
    Type::UUID,
    Type::TEXT,
    Type::INT4,
    Type::JSONB,
    Type::JSONB,
    Type::BYTEA,
];

/// Creates the scratch table in `schema` with `seed` rows (as `workloads::seed_store`
/// seeds the store, so both start from the same state), and analyses it.
pub async fn create_table(schema: &Schema, seed: u64) -> Result<()> {
    let mut client = connect(&schema.config).await?;
    tidemark_store::migrate::run(&mut client, &tidemark_store::migrate::MigrationSet::store())
        .await
        .context("creating the store's tables to copy the events table from")?;
    client
        .batch_execute(RAW_TABLE_DDL)
        .await
        .context("creating the raw_events table")?;
    let partitions = tidemark_store::StoreConfig::default().partitions;
    crate::workloads::insert_seed_events(&client, "raw_events", seed, partitions).await?;
    client
        .batch_execute("ANALYZE raw_events")
        .await
        .context("analysing the raw_events table")
}

/// One row as the baseline writes it. Positions come from a shared counter; the stream
/// version is the position, which is unique per stream without any lookup.
struct Row {
    position: i64,
    stream_id: String,
    partition: i16,
    event_id: Uuid,
    payload: Value,
    metadata: Value,
    hash: Vec<u8>,
}

impl Row {
    /// The row's values in the column order of `INSERT_ONE` and `COPY_IN`.
    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.position,
            &self.stream_id,
            &self.position,
            &self.partition,
            &self.event_id,
            &EVENT_TYPE,
            &SCHEMA_VERSION,
            &self.payload,
            &self.metadata,
            &self.hash,
        ]
    }

    fn generate(rng: &mut SmallRng, positions: &AtomicI64) -> Row {
        let mut hash = vec![0u8; 32];
        rng.fill(&mut hash[..]);
        Row {
            position: positions.fetch_add(1, Ordering::Relaxed) + 1,
            stream_id: random_stream(rng),
            partition: rng.random_range(0..16),
            event_id: Uuid::now_v7(),
            payload: payload(rng),
            metadata: Value::Object(Default::default()),
            hash,
        }
    }
}

const EVENT_TYPE: &str = "OrderPlaced";
const SCHEMA_VERSION: i32 = 1;

/// Column arrays for UNNEST.
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    stream_id: Vec<String>,
    partition: Vec<i16>,
    event_id: Vec<Uuid>,
    event_type: Vec<&'static str>,
    schema_version: Vec<i32>,
    payload: Vec<Value>,
    metadata: Vec<Value>,
    hash: Vec<Vec<u8>>,
}

impl Columns {
    fn from_rows(rows: Vec<Row>) -> Columns {
        let mut c = Columns::default();
        for row in rows {
            c.position.push(row.position);
            c.stream_id.push(row.stream_id);
            c.partition.push(row.partition);
            c.event_id.push(row.event_id);
            c.event_type.push(EVENT_TYPE);
            c.schema_version.push(SCHEMA_VERSION);
            c.payload.push(row.payload);
            c.metadata.push(row.metadata);
            c.hash.push(row.hash);
        }
        c
    }
}

/// How raw inserts group rows into transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertShape {
    /// One single-row INSERT per transaction (autocommit).
    SingleRow,
    /// One multi-row `INSERT ... SELECT FROM unnest(...)` of this many rows per transaction.
    Unnest(usize),
    /// One `COPY ... FROM STDIN BINARY` of this many rows per transaction.
    Copy(usize),
}

impl InsertShape {
    fn rows(self) -> usize {
        match self {
            InsertShape::SingleRow => 1,
            InsertShape::Unnest(n) | InsertShape::Copy(n) => n,
        }
    }
}

/// Result of a raw insert run.
pub struct InsertRun {
    pub rows_per_sec: f64,
    /// Per transaction.
    pub latencies: Latencies,
    /// Mean time of the insert statement alone (without BEGIN/COMMIT), for batch shapes.
    pub statement_micros: Option<f64>,
}

/// `clients` connections insert rows in `shape` as fast as they can for `warmup + measure`.
pub async fn insert_load(
    schema: &Schema,
    shape: InsertShape,
    clients: usize,
    warmup: Duration,
    measure: Duration,
    progress: &Progress,
    label: &str,
) -> Result<InsertRun> {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(connect(&schema.config).await?);
    }
    // Positions continue after whatever an earlier run left in the table.
    let start: i64 = connections[0]
        .query_one("SELECT coalesce(max(position), 0) FROM raw_events", &[])
        .await
        .context("reading the raw table's last position")?
        .get(0);
    let positions = Arc::new(AtomicI64::new(start));
    let window = Window::starting_now(warmup, measure);
    let mut tasks = Vec::with_capacity(clients);
    for client in connections {
        let window = window.clone();
        let positions = positions.clone();
        tasks.push(tokio::spawn(async move {
            let result = insert_client(&client, shape, &window, &positions).await;
            if result.is_err() {
                window.stop();
            }
            result
        }));
    }
    progress.watch(label, &window).await;
    let mut latencies = Latencies::default();
    let (mut statement_total, mut statements) = (Duration::ZERO, 0u64);
    for task in tasks {
        let (client_latencies, statement_time, count) = task
            .await
            .context("a raw insert client panicked")?
            .with_context(|| format!("raw insert client ({label})"))?;
        latencies.extend(client_latencies);
        statement_total += statement_time;
        statements += count;
    }
    Ok(InsertRun {
        rows_per_sec: window.rate(),
        latencies,
        statement_micros: (shape != InsertShape::SingleRow && statements > 0)
            .then(|| statement_total.as_secs_f64() * 1e6 / statements as f64),
    })
}

async fn insert_client(
    client: &Client,
    shape: InsertShape,
    window: &Window,
    positions: &AtomicI64,
) -> Result<(Latencies, Duration, u64)> {
    let mut rng = task_rng();
    let mut latencies = Latencies::default();
    let (mut statement_time, mut statements) = (Duration::ZERO, 0u64);
    let insert_one = client.prepare(INSERT_ONE).await?;
    let insert_unnest = client.prepare(INSERT_UNNEST).await?;
    let copy_in = client.prepare(COPY_IN).await?;
    let begin = client.prepare("BEGIN").await?;
    let commit = client.prepare("COMMIT").await?;
    while window.running() {
        let rows: Vec<Row> = (0..shape.rows())
            .map(|_| Row::generate(&mut rng, positions))
            .collect();
        let started = Instant::now();
        match shape {
            InsertShape::SingleRow => {
                client.execute(&insert_one, &rows[0].params()).await?;
            }
            InsertShape::Unnest(_) => {
                let c = Columns::from_rows(rows);
                client.execute(&begin, &[]).await?;
                let statement_started = Instant::now();
                let params: [&(dyn ToSql + Sync); 10] = [
                    &c.position,
                    &c.stream_id,
                    &c.position,
                    &c.partition,
                    &c.event_id,
                    &c.event_type,
                    &c.schema_version,
                    &c.payload,
                    &c.metadata,
                    &c.hash,
                ];
                client.execute(&insert_unnest, &params).await?;
                statement_time += statement_started.elapsed();
                statements += 1;
                client.execute(&commit, &[]).await?;
            }
            InsertShape::Copy(_) => {
                client.execute(&begin, &[]).await?;
                let statement_started = Instant::now();
                let sink = client.copy_in(&copy_in).await?;
                let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
                pin_mut!(writer);
                for row in &rows {
                    writer.as_mut().write(&row.params()).await?;
                }
                writer.finish().await?;
                statement_time += statement_started.elapsed();
                statements += 1;
                client.execute(&commit, &[]).await?;
            }
        }
        if let Some(latency) = window.record(started, shape.rows() as u64) {
            latencies.push(latency);
        }
    }
    Ok((latencies, statement_time, statements))
}

/// Reads the whole `events` table of `schema` in position order with one streaming query,
/// decoding every column into Rust values. Returns (events, elapsed).
pub async fn scan_log(schema: &Schema) -> Result<(u64, Duration)> {
    let client = connect(&schema.config).await?;
    let statement = client
        .prepare(
            "SELECT position, stream_id, stream_version, partition, event_id, event_type, \
             schema_version, payload, metadata, content_hash, recorded_at \
             FROM events ORDER BY position",
        )
        .await
        .context("preparing the raw scan")?;
    let started = Instant::now();
    let rows = client
        .query_raw(&statement, std::iter::empty::<i64>())
        .await
        .context("starting the raw scan")?;
    pin_mut!(rows);
    let mut count = 0u64;
    let mut checksum = 0i64;
    while let Some(row) = rows.try_next().await.context("reading the raw scan")? {
        let event = ScannedEvent {
            position: row.try_get(0)?,
            stream_id: row.try_get(1)?,
            stream_version: row.try_get(2)?,
            partition: row.try_get(3)?,
            event_id: row.try_get(4)?,
            event_type: row.try_get(5)?,
            schema_version: row.try_get(6)?,
            payload: row.try_get(7)?,
            metadata: row.try_get(8)?,
            content_hash: row.try_get(9)?,
            recorded_at: row.try_get(10)?,
        };
        checksum = checksum.wrapping_add(event.touch());
        count += 1;
    }
    let elapsed = started.elapsed();
    std::hint::black_box(checksum);
    Ok((count, elapsed))
}

/// The raw scan's decoded row (the same Rust types as `RecordedEvent`).
struct ScannedEvent {
    position: i64,
    stream_id: String,
    stream_version: i64,
    partition: i16,
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    payload: Value,
    metadata: Value,
    content_hash: Vec<u8>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

impl ScannedEvent {
    /// Uses every field so the decoding cannot be optimised away.
    fn touch(&self) -> i64 {
        self.position
            ^ self.stream_id.len() as i64
            ^ self.stream_version
            ^ i64::from(self.partition)
            ^ self.event_id.as_u128() as i64
            ^ self.event_type.len() as i64
            ^ i64::from(self.schema_version)
            ^ self.payload.as_object().map_or(0, |o| o.len() as i64)
            ^ self.metadata.as_object().map_or(0, |o| o.len() as i64)
            ^ self.content_hash.len() as i64
            ^ self.recorded_at.timestamp_micros()
    }
}
