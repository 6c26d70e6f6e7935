//! Schema evolution's costs (issue #11), on the same events as every other phase
//! ([`crate::harness::payload`], registered as `OrderPlaced` with a JSON Schema and an Avro
//! schema): appends with validation `ENFORCE` against `OFF`, and payloads stored as JSON
//! against Avro — bytes per event on disk, append throughput, `read_log` and `subscribe`
//! catch-up. Stores here have the schema registry installed as a server has it (append
//! validator and payload codec).

use crate::env::{Database, Schema};
use crate::harness::Progress;
use crate::workloads::{self, seed_store};
use anyhow::{Context, Result};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tidemark_schema::registry::{Registry, RegistryOptions, SchemaDefinition};
use tidemark_schema::{SchemaCodec, SchemaValidator, ValidationMode};
use tidemark_store::{EventStore, MigrationSet, PayloadEncoding, StoreConfig};

/// The event type of the benchmark's payloads.
pub const EVENT_TYPE: &str = "OrderPlaced";

/// The JSON Schema and the Avro schema of [`crate::harness::payload`].
pub fn order_placed() -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^ord-[0-9a-f]{16}$"},
            "customer_id": {"type": "string", "maxLength": 32},
            "amount_cents": {"type": "integer", "minimum": 0},
            "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
            "items": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku", "qty"],
                "additionalProperties": false
            }},
            "channel": {"type": "string"},
            "placed_at": {"type": "string", "format": "date-time"}
        },
        "required": ["order_id", "customer_id", "amount_cents", "currency", "items", "channel", "placed_at"],
        "additionalProperties": false
    }))
    .with_avro(
        r#"{"type": "record", "name": "OrderPlaced", "fields": [
            {"name": "order_id", "type": "string"},
            {"name": "customer_id", "type": "string"},
            {"name": "amount_cents", "type": "long"},
            {"name": "currency", "type": "string"},
            {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item",
                "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}},
            {"name": "channel", "type": "string"},
            {"name": "placed_at", "type": "string"}
        ]}"#,
    )
}

/// A store in a fresh schema with the registry installed, `OrderPlaced` registered with
/// `validation` and `encoding`. With `seed` > 0 the log is seeded first (see
/// [`seed_store`]).
pub struct RegistryStore {
    pub schema: Schema,
    pub store: EventStore,
}

impl RegistryStore {
    pub async fn open(
        db: &Database,
        label: &str,
        seed: u64,
        validation: ValidationMode,
        encoding: PayloadEncoding,
    ) -> Result<RegistryStore> {
        let schema = db.fresh_schema(label).await?;
        let config = StoreConfig {
            migrations: MigrationSet::store().with(tidemark_schema::MIGRATIONS),
            ..StoreConfig::default()
        };
        if seed > 0 {
            seed_store(&schema, seed, config.partitions).await?;
        }
        let store = EventStore::open(schema.config.clone(), config)
            .await
            .with_context(|| format!("opening the event store in schema {}", schema.name))?;
        let registry = Arc::new(
            Registry::open(store.pool().clone(), RegistryOptions::default())
                .await
                .context("opening the schema registry")?,
        );
        registry
            .register(EVENT_TYPE, &order_placed())
            .await
            .context("registering OrderPlaced")?;
        registry
            .set_validation(EVENT_TYPE, Some(validation))
            .await?;
        registry.set_encoding(EVENT_TYPE, Some(encoding)).await?;
        store.set_append_validator(Some(Arc::new(SchemaValidator::new(registry.clone()))));
        store.set_payload_codec(Some(Arc::new(SchemaCodec::new(registry))));
        Ok(RegistryStore { schema, store })
    }

    pub async fn close(self, db: &Database) -> Result<()> {
        self.store.shutdown().await;
        drop(self.store);
        db.drop_schema(self.schema).await
    }
}

/// What the log's payloads cost on disk, per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    pub events: u64,
    /// The stored payload alone (`pg_column_size` of `payload` or `payload_avro`).
    pub payload_bytes: f64,
    /// The table's heap (`pg_relation_size`): rows with every column.
    pub heap_bytes: f64,
    /// Heap, TOAST and every index (`pg_total_relation_size`).
    pub total_bytes: f64,
}

/// Measures [`Footprint`] of `store`'s log (after a VACUUM ANALYZE, so both encodings are
/// measured in the same state).
pub async fn footprint(store: &EventStore) -> Result<Footprint> {
    let client = store.pool().get().await?;
    client.batch_execute("VACUUM ANALYZE events").await?;
    let row = client
        .query_one(
            "SELECT count(*),
                    coalesce(sum(coalesce(pg_column_size(payload), 0)
                                 + coalesce(pg_column_size(payload_avro), 0)), 0)::float8,
                    pg_relation_size('events')::float8,
                    pg_total_relation_size('events')::float8
               FROM events",
            &[],
        )
        .await
        .context("measuring the log's size")?;
    let events: i64 = row.get(0);
    let per = |total: f64| total / (events.max(1) as f64);
    Ok(Footprint {
        events: events as u64,
        payload_bytes: per(row.get(1)),
        heap_bytes: per(row.get(2)),
        total_bytes: per(row.get(3)),
    })
}

/// Writes `events` events in `encoding` to a fresh store, measures their footprint and
/// reads them back with `read_log` and `subscribe` (best of `repeats`; events per second).
pub async fn storage_and_catch_up(
    db: &Database,
    encoding: PayloadEncoding,
    events: u64,
    repeats: usize,
    progress: &Progress,
) -> Result<(Footprint, f64, f64)> {
    let scratch = RegistryStore::open(db, "encoding", 0, ValidationMode::Off, encoding).await?;
    let result = async {
        workloads::populate(&scratch.store, events, progress).await?;
        let footprint = footprint(&scratch.store).await?;
        anyhow::ensure!(
            footprint.events == events,
            "the log holds {} events, not {events}",
            footprint.events
        );
        let (mut read_log, mut subscribe) = (Duration::MAX, Duration::MAX);
        for _ in 0..repeats {
            let (read, took) = workloads::scan_read_log(&scratch.store, 1000).await?;
            anyhow::ensure!(read == events, "read_log read {read} of {events} events");
            read_log = read_log.min(took);
            let (read, took) = workloads::scan_subscribe(&scratch.store, events).await?;
            anyhow::ensure!(read == events, "subscribe read {read} of {events} events");
            subscribe = subscribe.min(took);
        }
        let rate = |took: Duration| events as f64 / took.as_secs_f64().max(1e-9);
        Ok((footprint, rate(read_log), rate(subscribe)))
    }
    .await;
    scratch.close(db).await?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_payloads_fit_both_schemas() {
        let definition = order_placed();
        let avro =
            tidemark_schema::avro::AvroSchema::parse(definition.avro_schema.as_deref().unwrap())
                .unwrap();
        let validator =
            tidemark_schema::validate::CompiledSchema::compile(&definition.json_schema).unwrap();
        let mut rng = crate::harness::task_rng();
        for _ in 0..50 {
            let payload = crate::harness::payload(&mut rng);
            assert!(validator.violations(&payload).is_empty(), "{payload}");
            let bytes = tidemark_schema::avro::encode(&avro, &payload).unwrap();
            assert_eq!(
                tidemark_schema::avro::decode(&avro, None, &bytes).unwrap(),
                payload
            );
        }
    }
}
