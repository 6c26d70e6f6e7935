//! Registration at start: the worker's entry in the registry, a lease row per partition of
//! every projection, and each projection's row and read model (created on first run; a
//! bumped version is reported so the engine rebuilds it).

use crate::error::{EngineError, Result};
use crate::projection::{quote_ident, ApplyContext, Projection};
use crate::workers::WorkerIdentity;
use tidemark_store::EventStore;

/// What registering a projection found.
pub(crate) enum Registration {
    /// The recorded version is the projection's: its read model serves as it is.
    Current,
    /// The read model was built by another version, `live`: it needs a rebuild.
    VersionChanged { live: i32 },
}

/// Registers this process in the worker registry. The projections it runs are published
/// with the first heartbeat, once they are active.
pub(crate) async fn register_worker(store: &EventStore, me: &WorkerIdentity) -> Result<()> {
    crate::workers::register(store.pool(), me, &[]).await
}

/// Creates the lease rows of `projection` (one per lane: per partition, or one for a
/// log-order projection) if missing. A new partition
/// counts as unowned from now, not from ever.
pub(crate) async fn create_leases(store: &EventStore, projection: &dyn Projection) -> Result<()> {
    let client = store.pool().get().await?;
    client
        .execute(
            "INSERT INTO projection_leases (projection, partition, expires_at)
             SELECT $1, p, now() FROM generate_series(0, $2 - 1) AS p ON CONFLICT DO NOTHING",
            &[
                &projection.name(),
                &i32::from(projection.grouping().lanes(store.partitions())),
            ],
        )
        .await
        .map_err(EngineError::db("creating partition leases"))?;
    Ok(())
}

/// Records the projection and creates its read model on first run.
pub(crate) async fn register_projection(
    store: &EventStore,
    projection: &dyn Projection,
) -> Result<Registration> {
    let mut client = store.pool().get().await?;
    let tx = client
        .transaction()
        .await
        .map_err(EngineError::db("registering a projection"))?;
    let schema = projection.schema();
    let inserted = tx
        .execute(
            "INSERT INTO projections (name, version, schema_name) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            &[&projection.name(), &projection.version(), &schema],
        )
        .await
        .map_err(EngineError::db("registering a projection"))?;
    let live: i32 = tx
        .query_one(
            "SELECT version FROM projections WHERE name = $1 FOR UPDATE",
            &[&projection.name()],
        )
        .await
        .map_err(EngineError::db("reading a projection"))?
        .get(0);
    if inserted == 1 {
        create_schema(&tx, projection, &schema, store.partitions()).await?;
    }
    tx.commit()
        .await
        .map_err(EngineError::db("registering a projection"))?;
    Ok(if live == projection.version() {
        Registration::Current
    } else {
        Registration::VersionChanged { live }
    })
}

/// Creates `schema` (empty) and the projection's tables in it.
pub(crate) async fn create_schema(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &dyn Projection,
    schema: &str,
    partitions: u16,
) -> Result<()> {
    tx.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}",
        quote_ident(schema)
    ))
    .await
    .map_err(EngineError::db("creating a read-model schema"))?;
    let ctx = ApplyContext {
        tx,
        schema,
        partitions,
    };
    projection
        .setup(&ctx)
        .await
        .map_err(|source| EngineError::Projection {
            projection: projection.name().to_string(),
            phase: "setting up its read model",
            position: 0,
            source,
        })?;
    projection
        .reset(&ctx)
        .await
        .map_err(|source| EngineError::Projection {
            projection: projection.name().to_string(),
            phase: "resetting",
            position: 0,
            source,
        })?;
    Ok(())
}
