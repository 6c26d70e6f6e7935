//! The schema registry in PostgreSQL (`migrations/0100_schema_registry.sql`), and the
//! in-process view the append and read paths use.
//!
//! Writes (register, modes, deletions) each run in one transaction that locks the event
//! type's subject row, so registrations of one type are serialised and every version is
//! checked against the versions that exist when it commits. Every write advances
//! `schema_settings.generation`. Each `Registry` keeps a snapshot of the whole registry
//! (schemas are few and small) and compiled validators; it reloads the snapshot after its own
//! writes, and notices other processes' writes by reading the generation at most once per
//! `max_staleness` (default 1 s; zero reads it on every call).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool, Transaction};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::avro::{self, AvroSchema};
use crate::compat::{self, Finding};
use crate::error::{Result, SchemaError};
use crate::mode::{CompatibilityMode, UnregisteredPolicy, ValidationMode};
use crate::upcast::{upcast_layered, DeclarativeUpcast, UpcastError, Upcasters};
use crate::validate::{ValidatorCache, Violation};
use tidemark_store::{NewEvent, PayloadEncoding};

/// A schema offered for registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaDefinition {
    /// The JSON Schema every payload of the version is validated against.
    pub json_schema: Value,
    /// An Avro schema (its JSON text), for binary payloads of the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro_schema: Option<String>,
    /// Declarative upcast from the version registered before this one to this one, stored
    /// with that earlier version. Not part of the schema's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upcast_from_previous: Option<Vec<DeclarativeUpcast>>,
}

impl SchemaDefinition {
    pub fn json(json_schema: Value) -> SchemaDefinition {
        SchemaDefinition {
            json_schema,
            avro_schema: None,
            upcast_from_previous: None,
        }
    }

    pub fn with_avro(mut self, avro_schema: impl Into<String>) -> SchemaDefinition {
        self.avro_schema = Some(avro_schema.into());
        self
    }

    pub fn with_upcast_from_previous(
        mut self,
        changes: Vec<DeclarativeUpcast>,
    ) -> SchemaDefinition {
        self.upcast_from_previous = Some(changes);
        self
    }
}

/// A registered version.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaVersion {
    pub event_type: String,
    pub version: i32,
    pub json_schema: Value,
    pub avro_schema: Option<String>,
    /// Hex of the blake3 fingerprint of the canonical schema.
    pub fingerprint: String,
    pub upcast_to_next: Option<Vec<DeclarativeUpcast>>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    avro: Option<Arc<AvroSchema>>,
}

impl SchemaVersion {
    /// The parsed Avro schema, when the version has one.
    pub fn avro(&self) -> Option<&AvroSchema> {
        self.avro.as_deref()
    }
}

/// What `register` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RegisterOutcome {
    pub version: i32,
    /// False when the same schema was already registered (as this version).
    pub created: bool,
}

/// The server-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub default_compatibility: CompatibilityMode,
    pub default_validation: ValidationMode,
    pub unregistered_policy: UnregisteredPolicy,
}

/// An event type with its modes (`None`: the server-wide default) and versions.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub event_type: String,
    pub compatibility: Option<CompatibilityMode>,
    pub validation: Option<ValidationMode>,
    /// How appends that do not ask for an encoding store payloads (`None`: JSON).
    pub encoding: Option<PayloadEncoding>,
    /// Ascending by version.
    pub versions: Vec<i32>,
}

/// What validation on append decided for one event that may be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationOutcome {
    /// The payload matches the version it claims.
    Valid,
    /// The type's validation mode is off.
    NotChecked,
    /// The type has no schema, and the server allows such events.
    Unregistered,
    /// `WARN`: the payload does not match (logged).
    Invalid(Vec<Violation>),
    /// `WARN`: the claimed version is not registered (logged).
    UnknownVersion,
}

/// Which schema an Avro payload is read into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvroTarget {
    /// The version it was written with; upcasters take it further.
    Written,
    /// The latest version with an Avro schema, by Avro's schema resolution.
    Latest,
}

/// Options of a [`Registry`].
#[derive(Debug, Clone, Copy)]
pub struct RegistryOptions {
    /// How old the view of other processes' changes may be.
    pub max_staleness: Duration,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            max_staleness: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default)]
struct SubjectState {
    compatibility: Option<CompatibilityMode>,
    validation: Option<ValidationMode>,
    encoding: Option<PayloadEncoding>,
    versions: BTreeMap<i32, Arc<SchemaVersion>>,
}

/// The whole registry as of one generation.
#[derive(Debug)]
struct Snapshot {
    generation: i64,
    settings: Settings,
    subjects: HashMap<String, SubjectState>,
    /// The stored declarative upcasts.
    declarative: Upcasters,
    /// Avro schema resolution from each version with an Avro schema to the next, when that
    /// one has an Avro schema too: the step used when neither the application nor the
    /// registry gives one ("Avro's schema resolution is upcasting for free").
    resolution: Upcasters,
}

impl Snapshot {
    fn latest(&self, event_type: &str) -> Option<&Arc<SchemaVersion>> {
        self.subjects
            .get(event_type)?
            .versions
            .last_key_value()
            .map(|(_, v)| v)
    }

    fn version(&self, event_type: &str, version: i32) -> Option<&Arc<SchemaVersion>> {
        self.subjects.get(event_type)?.versions.get(&version)
    }
}

/// The schema registry of one database, with this process's caches.
pub struct Registry {
    pool: Pool,
    options: RegistryOptions,
    snapshot: tokio::sync::RwLock<Arc<Snapshot>>,
    checked_at: Mutex<Instant>,
    validators: ValidatorCache,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The identity of a schema: blake3 over its canonical JSON and Avro canonical form.
pub fn fingerprint(json_schema: &Value, avro: Option<&AvroSchema>) -> [u8; 32] {
    let mut canonical = Vec::new();
    tidemark_store::hashing::canonical_json(json_schema, &mut canonical);
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tidemark.schema.v1");
    hasher.update(&(canonical.len() as u64).to_le_bytes());
    hasher.update(&canonical);
    if let Some(avro) = avro {
        hasher.update(&[1]);
        hasher.update(avro.canonical_form().as_bytes());
    } else {
        hasher.update(&[0]);
    }
    *hasher.finalize().as_bytes()
}

fn invalid(event_type: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError::InvalidSchema {
        event_type: event_type.to_owned(),
        reason: reason.into(),
    }
}

/// Checks what can be checked without the database: the JSON Schema is a valid, compilable
/// schema, the Avro schema parses.
fn parse_definition(event_type: &str, definition: &SchemaDefinition) -> Result<Option<AvroSchema>> {
    if event_type.is_empty() {
        return Err(invalid(event_type, "the event type is empty"));
    }
    if !(definition.json_schema.is_object() || definition.json_schema.is_boolean()) {
        return Err(invalid(
            event_type,
            "a JSON Schema is an object or a boolean",
        ));
    }
    if let Err(error) = jsonschema::meta::validate(&definition.json_schema) {
        return Err(invalid(event_type, error.to_string()));
    }
    crate::validate::CompiledSchema::compile(&definition.json_schema)
        .map_err(|reason| invalid(event_type, reason))?;
    definition
        .avro_schema
        .as_deref()
        .map(|text| {
            AvroSchema::parse(text).map_err(|reason| invalid(event_type, format!("Avro: {reason}")))
        })
        .transpose()
}

/// Checks `candidate` against `history` (ascending) as `mode` asks: its JSON Schema against
/// every compared version, its Avro schema against those compared versions that have one.
fn findings(
    mode: CompatibilityMode,
    candidate: &SchemaDefinition,
    candidate_avro: Option<&AvroSchema>,
    history: &[Arc<SchemaVersion>],
) -> Vec<Finding> {
    let json_history: Vec<(i32, &Value)> = history
        .iter()
        .map(|v| (v.version, &v.json_schema))
        .collect();
    let mut found = compat::check_json(mode, &candidate.json_schema, &json_history);
    if let Some(candidate_avro) = candidate_avro {
        let compared: &[Arc<SchemaVersion>] = if mode.is_transitive() {
            history
        } else {
            history.last().map_or(&[], std::slice::from_ref)
        };
        let avro_history: Vec<(i32, &apache_avro::Schema)> = compared
            .iter()
            .filter_map(|v| v.avro().map(|a| (v.version, a.schema())))
            .collect();
        found.extend(compat::check_avro(
            transitive(mode),
            candidate_avro.schema(),
            &avro_history,
        ));
    }
    found
}

/// The mode with `mode`'s directions that compares with every version it is given (the
/// caller has chosen the versions already).
fn transitive(mode: CompatibilityMode) -> CompatibilityMode {
    match mode {
        CompatibilityMode::Backward | CompatibilityMode::BackwardTransitive => {
            CompatibilityMode::BackwardTransitive
        }
        CompatibilityMode::Forward | CompatibilityMode::ForwardTransitive => {
            CompatibilityMode::ForwardTransitive
        }
        CompatibilityMode::Full | CompatibilityMode::FullTransitive => {
            CompatibilityMode::FullTransitive
        }
        CompatibilityMode::None => CompatibilityMode::None,
    }
}

const SELECT_VERSIONS: &str = "SELECT event_type, version, json_schema, avro_schema, fingerprint, \
                               upcast_to_next, created_at FROM schema_versions";

fn version_from_row(row: &tokio_postgres::Row) -> Result<SchemaVersion> {
    let event_type: String = row.get(0);
    let avro_schema: Option<String> = row.get(3);
    let avro = avro_schema
        .as_deref()
        .map(|text| {
            AvroSchema::parse(text)
                .map(Arc::new)
                .map_err(|reason| invalid(&event_type, format!("stored Avro schema: {reason}")))
        })
        .transpose()?;
    let fingerprint: Vec<u8> = row.get(4);
    let upcast: Option<Value> = row.get(5);
    let upcast_to_next = upcast
        .map(serde_json::from_value::<Vec<DeclarativeUpcast>>)
        .transpose()
        .map_err(|e| invalid(&event_type, format!("stored declarative upcast: {e}")))?;
    Ok(SchemaVersion {
        version: row.get(1),
        json_schema: row.get(2),
        avro_schema,
        fingerprint: fingerprint.iter().map(|b| format!("{b:02x}")).collect(),
        upcast_to_next,
        created_at: row.get(6),
        avro,
        event_type,
    })
}

fn parse_mode<T: std::str::FromStr<Err = SchemaError>>(text: Option<String>) -> Result<Option<T>> {
    text.map(|t| t.parse()).transpose()
}

async fn load(client: &impl GenericClient) -> Result<Snapshot> {
    let settings_row = client
        .query_one(
            "SELECT generation, default_compatibility, default_validation, unregistered_policy \
             FROM schema_settings",
            &[],
        )
        .await
        .map_err(SchemaError::db("reading the schema settings"))?;
    let settings = Settings {
        default_compatibility: settings_row.get::<_, String>(1).parse()?,
        default_validation: settings_row.get::<_, String>(2).parse()?,
        unregistered_policy: settings_row.get::<_, String>(3).parse()?,
    };
    let mut subjects: HashMap<String, SubjectState> = HashMap::new();
    for row in client
        .query(
            "SELECT event_type, compatibility, validation, encoding FROM schema_subjects",
            &[],
        )
        .await
        .map_err(SchemaError::db("reading the schema subjects"))?
    {
        subjects.insert(
            row.get(0),
            SubjectState {
                compatibility: parse_mode(row.get(1))?,
                validation: parse_mode(row.get(2))?,
                encoding: row
                    .get::<_, Option<String>>(3)
                    .map(|text| text.parse::<PayloadEncoding>())
                    .transpose()
                    .map_err(|reason| invalid(row.get(0), format!("stored encoding: {reason}")))?,
                versions: BTreeMap::new(),
            },
        );
    }
    let mut declarative = Upcasters::new();
    for row in client
        .query(
            &format!("{SELECT_VERSIONS} ORDER BY event_type, version"),
            &[],
        )
        .await
        .map_err(SchemaError::db("reading the schema versions"))?
    {
        let version = version_from_row(&row)?;
        if let Some(changes) = &version.upcast_to_next {
            declarative.register_declarative(
                &version.event_type,
                version.version,
                changes.clone(),
            )?;
        }
        subjects
            .entry(version.event_type.clone())
            .or_default()
            .versions
            .insert(version.version, Arc::new(version));
    }
    let resolution = avro_resolution(&subjects)?;
    Ok(Snapshot {
        generation: settings_row.get(0),
        settings,
        subjects,
        declarative,
        resolution,
    })
}

/// The Avro resolution steps of every type: version n to n + 1 when both have Avro schemas.
/// A step writes the JSON as an Avro datum of n and reads it with n + 1 as the reader
/// schema: fields n + 1 added take their defaults, fields it removed are dropped, aliases
/// rename and promotions widen, exactly as a binary event of n read as n + 1.
fn avro_resolution(subjects: &HashMap<String, SubjectState>) -> Result<Upcasters> {
    let mut steps = Upcasters::new();
    for (event_type, state) in subjects {
        for (version, schema) in &state.versions {
            let (Some(writer), Some(reader)) = (
                schema.avro.clone(),
                state
                    .versions
                    .get(&(version + 1))
                    .and_then(|next| next.avro.clone()),
            ) else {
                continue;
            };
            steps.register_fn(event_type.clone(), *version, move |payload| {
                let bytes = avro::encode(&writer, &payload).map_err(|e| e.to_string())?;
                avro::decode(&writer, Some(&reader), &bytes).map_err(|e| e.to_string())
            })?;
        }
    }
    Ok(steps)
}

async fn advance_generation(client: &impl GenericClient) -> Result<()> {
    client
        .execute(
            "UPDATE schema_settings SET generation = generation + 1",
            &[],
        )
        .await
        .map_err(SchemaError::db("advancing the registry generation"))?;
    Ok(())
}

/// Creates the subject row if needed and locks it for the rest of the transaction.
async fn lock_subject(client: &impl GenericClient, event_type: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO schema_subjects (event_type) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&event_type],
        )
        .await
        .map_err(SchemaError::db("creating a schema subject"))?;
    client
        .execute(
            "SELECT 1 FROM schema_subjects WHERE event_type = $1 FOR UPDATE",
            &[&event_type],
        )
        .await
        .map_err(SchemaError::db("locking a schema subject"))?;
    Ok(())
}

impl Registry {
    /// Opens the registry of `pool`'s database (its migration must be applied) and loads it.
    pub async fn open(pool: Pool, options: RegistryOptions) -> Result<Registry> {
        let client = pool.get().await.map_err(SchemaError::pool("connecting"))?;
        let snapshot = load(&client).await?;
        drop(client);
        Ok(Registry {
            pool,
            options,
            snapshot: tokio::sync::RwLock::new(Arc::new(snapshot)),
            checked_at: Mutex::new(Instant::now()),
            validators: ValidatorCache::new(),
        })
    }

    /// Reloads everything now.
    pub async fn refresh(&self) -> Result<()> {
        let client = self.client().await?;
        let fresh = load(&client).await?;
        self.install(fresh).await;
        Ok(())
    }

    async fn install(&self, fresh: Snapshot) {
        let mut current = self.snapshot.write().await;
        if fresh.generation != current.generation {
            // A version may have been deleted, so its number may not mean what it did.
            self.validators.clear();
        }
        *current = Arc::new(fresh);
        *self.checked_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The snapshot, reloaded first if another process may have changed the registry.
    async fn current(&self) -> Result<Arc<Snapshot>> {
        let due = self
            .checked_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= self.options.max_staleness;
        if due {
            let client = self.client().await?;
            let generation: i64 = client
                .query_one("SELECT generation FROM schema_settings", &[])
                .await
                .map_err(SchemaError::db("reading the registry generation"))?
                .get(0);
            if generation != self.snapshot.read().await.generation {
                let fresh = load(&client).await?;
                self.install(fresh).await;
            } else {
                *self.checked_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
        }
        Ok(self.snapshot.read().await.clone())
    }

    /// Registers `definition` as the next version of `event_type`, unless the same schema is
    /// already registered (then its version, `created: false`). Refused with
    /// `SCHEMA_INCOMPATIBLE` when it breaks the type's compatibility mode.
    pub async fn register(
        &self,
        event_type: &str,
        definition: &SchemaDefinition,
    ) -> Result<RegisterOutcome> {
        let avro = parse_definition(event_type, definition)?;
        let fingerprint = fingerprint(&definition.json_schema, avro.as_ref()).to_vec();
        let (owned, definition) = (event_type.to_owned(), definition.clone());
        self.change(event_type, move |tx| {
            Box::pin(async move {
                let event_type = owned;
                if let Some(row) = tx
                    .query_opt(
                        "SELECT version FROM schema_versions WHERE event_type = $1 AND fingerprint = $2",
                        &[&event_type, &fingerprint],
                    )
                    .await
                    .map_err(SchemaError::db("looking up a schema fingerprint"))?
                {
                    let outcome = RegisterOutcome {
                        version: row.get(0),
                        created: false,
                    };
                    return Ok((outcome, false));
                }
                let mode = effective_mode_in(tx, &event_type).await?;
                let history: Vec<Arc<SchemaVersion>> = tx
                    .query(
                        &format!("{SELECT_VERSIONS} WHERE event_type = $1 ORDER BY version"),
                        &[&event_type],
                    )
                    .await
                    .map_err(SchemaError::db("reading a type's versions"))?
                    .iter()
                    .map(|row| version_from_row(row).map(Arc::new))
                    .collect::<Result<_>>()?;
                let found = findings(mode, &definition, avro.as_ref(), &history);
                if !found.is_empty() {
                    return Err(SchemaError::Incompatible {
                        event_type,
                        mode,
                        incompatibilities: found,
                    });
                }
                let version: i32 = tx
                    .query_one(
                        "UPDATE schema_subjects SET next_version = next_version + 1 \
                         WHERE event_type = $1 RETURNING next_version - 1",
                        &[&event_type],
                    )
                    .await
                    .map_err(SchemaError::db("numbering a version"))?
                    .get(0);
                tx.execute(
                    "INSERT INTO schema_versions (event_type, version, json_schema, avro_schema, fingerprint) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&event_type, &version, &definition.json_schema, &definition.avro_schema, &fingerprint],
                )
                .await
                .map_err(SchemaError::db("storing a version"))?;
                if let (Some(changes), Some(previous)) =
                    (&definition.upcast_from_previous, history.last())
                {
                    set_upcast_in(tx, &event_type, previous.version, Some(changes)).await?;
                }
                let outcome = RegisterOutcome {
                    version,
                    created: true,
                };
                Ok((outcome, true))
            })
        })
        .await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(SchemaError::pool("connecting"))
    }

    /// One change of `event_type`'s rows: `work` runs in a transaction that holds the
    /// type's subject row locked (so changes of one type are serialised and each sees the
    /// versions that exist when it commits) and says whether it changed anything; a change
    /// advances the generation in the same transaction, and this registry reloads after
    /// the commit.
    async fn change<T>(
        &self,
        event_type: &str,
        work: impl for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<(T, bool)>>,
    ) -> Result<T> {
        if event_type.is_empty() {
            return Err(invalid(event_type, "the event type is empty"));
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(SchemaError::db("starting a registry change"))?;
        lock_subject(&tx, event_type).await?;
        let (value, changed) = work(&tx).await?;
        if changed {
            advance_generation(&tx).await?;
        }
        tx.commit()
            .await
            .map_err(SchemaError::db("committing a registry change"))?;
        // Back to the pool before the reload takes one.
        drop(client);
        if changed {
            self.refresh().await?;
        }
        Ok(value)
    }

    /// Every incompatibility of `definition` with the registered versions of `event_type`
    /// under its mode, without registering anything.
    pub async fn check(
        &self,
        event_type: &str,
        definition: &SchemaDefinition,
    ) -> Result<Vec<Finding>> {
        let avro = parse_definition(event_type, definition)?;
        let snapshot = self.current().await?;
        let mode = self.mode_in(&snapshot, event_type);
        let history: Vec<Arc<SchemaVersion>> = snapshot
            .subjects
            .get(event_type)
            .map(|s| s.versions.values().cloned().collect())
            .unwrap_or_default();
        Ok(findings(mode, definition, avro.as_ref(), &history))
    }

    fn mode_in(&self, snapshot: &Snapshot, event_type: &str) -> CompatibilityMode {
        snapshot
            .subjects
            .get(event_type)
            .and_then(|s| s.compatibility)
            .unwrap_or(snapshot.settings.default_compatibility)
    }

    /// Every event type with its modes and versions, by event type.
    pub async fn list(&self) -> Result<Vec<Subject>> {
        let snapshot = self.current().await?;
        let mut subjects: Vec<Subject> = snapshot
            .subjects
            .iter()
            .map(|(event_type, state)| Subject {
                event_type: event_type.clone(),
                compatibility: state.compatibility,
                validation: state.validation,
                encoding: state.encoding,
                versions: state.versions.keys().copied().collect(),
            })
            .collect();
        subjects.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        Ok(subjects)
    }

    pub async fn get(&self, event_type: &str, version: i32) -> Result<Arc<SchemaVersion>> {
        self.current()
            .await?
            .version(event_type, version)
            .cloned()
            .ok_or_else(|| SchemaError::NotFound {
                event_type: event_type.to_owned(),
                version: Some(version),
            })
    }

    /// The latest version of `event_type`, `None` when it has none.
    pub async fn latest(&self, event_type: &str) -> Result<Option<Arc<SchemaVersion>>> {
        Ok(self.current().await?.latest(event_type).cloned())
    }

    pub async fn settings(&self) -> Result<Settings> {
        Ok(self.current().await?.settings)
    }

    /// The compatibility mode `event_type` is checked with (its own or the default).
    pub async fn mode(&self, event_type: &str) -> Result<CompatibilityMode> {
        let snapshot = self.current().await?;
        Ok(self.mode_in(&snapshot, event_type))
    }

    /// The validation mode appends of `event_type` get (its own or the default).
    pub async fn validation_mode(&self, event_type: &str) -> Result<ValidationMode> {
        let snapshot = self.current().await?;
        Ok(validation_in(&snapshot, event_type))
    }

    /// Sets `event_type`'s compatibility mode; `None` follows the default again. Applies to
    /// later registrations only.
    pub async fn set_mode(&self, event_type: &str, mode: Option<CompatibilityMode>) -> Result<()> {
        self.update_subject(event_type, "compatibility", mode.map(|m| m.as_str()))
            .await
    }

    /// Sets how appends of `event_type` that do not ask for an encoding store their
    /// payloads; `None` (or JSON) stores JSON. AVRO needs a version with an Avro schema:
    /// events claiming a version without one are then still stored as JSON.
    pub async fn set_encoding(
        &self,
        event_type: &str,
        encoding: Option<PayloadEncoding>,
    ) -> Result<()> {
        if encoding == Some(PayloadEncoding::Avro) {
            let snapshot = self.current().await?;
            let latest = snapshot
                .latest(event_type)
                .ok_or_else(|| SchemaError::NotFound {
                    event_type: event_type.to_owned(),
                    version: None,
                })?;
            if latest.avro().is_none() {
                return Err(SchemaError::NoAvroSchema {
                    event_type: event_type.to_owned(),
                    version: latest.version,
                });
            }
        }
        self.update_subject(event_type, "encoding", encoding.map(|e| e.as_str()))
            .await
    }

    /// How appends of `event_type` that do not ask for an encoding store payloads.
    pub async fn encoding(&self, event_type: &str) -> Result<PayloadEncoding> {
        let snapshot = self.current().await?;
        Ok(snapshot
            .subjects
            .get(event_type)
            .and_then(|s| s.encoding)
            .unwrap_or_default())
    }

    /// Sets `event_type`'s validation mode; `None` follows the default again.
    pub async fn set_validation(
        &self,
        event_type: &str,
        mode: Option<ValidationMode>,
    ) -> Result<()> {
        self.update_subject(event_type, "validation", mode.map(|m| m.as_str()))
            .await
    }

    async fn update_subject(
        &self,
        event_type: &str,
        column: &'static str,
        value: Option<&str>,
    ) -> Result<()> {
        let owned = event_type.to_owned();
        let value = value.map(str::to_owned);
        self.change(event_type, move |tx| {
            Box::pin(async move {
                tx.execute(
                    &format!("UPDATE schema_subjects SET {column} = $2 WHERE event_type = $1"),
                    &[&owned, &value],
                )
                .await
                .map_err(SchemaError::db("changing a mode"))?;
                Ok(((), true))
            })
        })
        .await
    }

    pub async fn set_default_mode(&self, mode: CompatibilityMode) -> Result<()> {
        self.update_settings("default_compatibility", mode.as_str())
            .await
    }

    pub async fn set_default_validation(&self, mode: ValidationMode) -> Result<()> {
        self.update_settings("default_validation", mode.as_str())
            .await
    }

    pub async fn set_unregistered_policy(&self, policy: UnregisteredPolicy) -> Result<()> {
        self.update_settings("unregistered_policy", policy.as_str())
            .await
    }

    async fn update_settings(&self, column: &'static str, value: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                &format!("UPDATE schema_settings SET {column} = $1, generation = generation + 1"),
                &[&value],
            )
            .await
            .map_err(SchemaError::db("changing a registry setting"))?;
        drop(client);
        self.refresh().await
    }

    /// Sets (or with `None` clears) the declarative upcast from `from_version` of
    /// `event_type` to the next version.
    pub async fn set_upcast(
        &self,
        event_type: &str,
        from_version: i32,
        changes: Option<&[DeclarativeUpcast]>,
    ) -> Result<()> {
        let owned = event_type.to_owned();
        let changes = changes.map(<[DeclarativeUpcast]>::to_vec);
        self.change(event_type, move |tx| {
            Box::pin(async move {
                set_upcast_in(tx, &owned, from_version, changes.as_deref()).await?;
                Ok(((), true))
            })
        })
        .await
    }

    /// Deletes a version that no stored event claims (`SCHEMA_IN_USE` otherwise). Its number
    /// is not given to a later version.
    pub async fn delete_version(&self, event_type: &str, version: i32) -> Result<()> {
        let owned = event_type.to_owned();
        self.change(event_type, move |tx| {
            Box::pin(async move {
                let event_type = owned;
                let events: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM events WHERE event_type = $1 AND schema_version = $2",
                        &[&event_type, &version],
                    )
                    .await
                    .map_err(SchemaError::db("counting a version's events"))?
                    .get(0);
                if events > 0 {
                    return Err(SchemaError::InUse {
                        event_type,
                        version,
                        events,
                    });
                }
                let deleted = tx
                    .execute(
                        "DELETE FROM schema_versions WHERE event_type = $1 AND version = $2",
                        &[&event_type, &version],
                    )
                    .await
                    .map_err(|error| {
                        // The trigger's verdict: an event claiming the version committed
                        // meanwhile.
                        if error.code()
                            == Some(&tokio_postgres::error::SqlState::RESTRICT_VIOLATION)
                        {
                            SchemaError::InUse {
                                event_type: event_type.clone(),
                                version,
                                events: 1,
                            }
                        } else {
                            SchemaError::db("deleting a version")(error)
                        }
                    })?;
                if deleted == 0 {
                    return Err(SchemaError::NotFound {
                        event_type,
                        version: Some(version),
                    });
                }
                Ok(((), true))
            })
        })
        .await
    }

    /// Validation on append of one event claiming `version` of `event_type`, as the type's
    /// validation mode and the server's unregistered-type policy say. `Err` means the event
    /// must be refused (`SCHEMA_VIOLATION`, `SCHEMA_NOT_FOUND`, `SCHEMA_REQUIRED`).
    pub async fn validate(
        &self,
        event_type: &str,
        version: i32,
        payload: &Value,
    ) -> Result<ValidationOutcome> {
        let snapshot = self.current().await?;
        let has_versions = snapshot
            .subjects
            .get(event_type)
            .is_some_and(|s| !s.versions.is_empty());
        if !has_versions {
            return match snapshot.settings.unregistered_policy {
                UnregisteredPolicy::Allow => Ok(ValidationOutcome::Unregistered),
                UnregisteredPolicy::Refuse => Err(SchemaError::Unregistered {
                    event_type: event_type.to_owned(),
                }),
            };
        }
        let mode = validation_in(&snapshot, event_type);
        if mode == ValidationMode::Off {
            return Ok(ValidationOutcome::NotChecked);
        }
        let Some(schema) = snapshot.version(event_type, version) else {
            if mode == ValidationMode::Enforce {
                return Err(SchemaError::NotFound {
                    event_type: event_type.to_owned(),
                    version: Some(version),
                });
            }
            tracing::warn!(
                event_type,
                version,
                "appended event claims an unregistered schema version"
            );
            return Ok(ValidationOutcome::UnknownVersion);
        };
        let validator = self
            .validators
            .get_or_compile(event_type, version, &schema.json_schema)
            .map_err(|reason| invalid(event_type, reason))?;
        let violations = validator.violations(payload);
        if violations.is_empty() {
            return Ok(ValidationOutcome::Valid);
        }
        if mode == ValidationMode::Enforce {
            return Err(SchemaError::Violation {
                event_type: event_type.to_owned(),
                version,
                violations,
            });
        }
        tracing::warn!(
            event_type,
            version,
            violations = %violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            "appended event does not match its schema"
        );
        Ok(ValidationOutcome::Invalid(violations))
    }

    /// `payload`, written as `version` of `event_type`, as the latest registered version:
    /// `upcasters` (the application's Rust ones) first, then the registry's declarative
    /// ones. A type without schemas, or a payload at the latest version, is returned as is.
    pub async fn to_latest(
        &self,
        upcasters: &Upcasters,
        event_type: &str,
        version: i32,
        payload: Value,
    ) -> Result<(i32, Value)> {
        let snapshot = self.current().await?;
        let Some(latest) = snapshot.latest(event_type).map(|v| v.version) else {
            return Ok((version, payload));
        };
        if version == latest {
            return Ok((version, payload));
        }
        let upcast = upcast_layered(
            &[upcasters, &snapshot.declarative, &snapshot.resolution],
            event_type,
            version,
            latest,
            payload,
        )
        .map_err(|e: UpcastError| SchemaError::Upcast(e))?;
        Ok((latest, upcast))
    }

    /// Per event of an append, in order: its payload as an Avro datum when it is to be
    /// stored as Avro, else `None`. An event is stored as Avro when it asks for it
    /// (`NewEvent::encoding`) or, asking for nothing, when its type's encoding is AVRO and the
    /// version it claims has an Avro schema. The first event that cannot be encoded is
    /// returned with its index: no Avro schema for the version it asks AVRO for
    /// (`SCHEMA_NOT_FOUND`), a payload that does not fit the schema (`SCHEMA_VIOLATION`,
    /// naming the field).
    pub async fn encode_for_storage(
        &self,
        events: &[NewEvent],
    ) -> std::result::Result<Vec<Option<Vec<u8>>>, (usize, SchemaError)> {
        let snapshot = self.current().await.map_err(|e| (0, e))?;
        let mut encoded = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let by_type = || {
                snapshot
                    .subjects
                    .get(&event.event_type)
                    .and_then(|s| s.encoding)
                    .unwrap_or_default()
            };
            let asked = event.encoding.is_some();
            if event.encoding.unwrap_or_else(by_type) != PayloadEncoding::Avro {
                encoded.push(None);
                continue;
            }
            let schema = snapshot
                .version(&event.event_type, event.schema_version)
                .and_then(|v| v.avro());
            let bytes = match schema {
                Some(schema) => avro::encode(schema, &event.payload).map_err(|e| (index, e))?,
                None if !asked => {
                    encoded.push(None);
                    continue;
                }
                None => {
                    let error = match snapshot.version(&event.event_type, event.schema_version) {
                        Some(_) => SchemaError::NoAvroSchema {
                            event_type: event.event_type.clone(),
                            version: event.schema_version,
                        },
                        None => SchemaError::NotFound {
                            event_type: event.event_type.clone(),
                            version: Some(event.schema_version),
                        },
                    };
                    return Err((index, error));
                }
            };
            encoded.push(Some(bytes));
        }
        Ok(encoded)
    }

    /// A stored binary payload, written as `version` of `event_type`, as the JSON of that
    /// version. A version this process has not seen yet (registered by another process
    /// within the staleness window) reloads the registry once.
    pub async fn decode_stored(
        &self,
        event_type: &str,
        version: i32,
        bytes: &[u8],
    ) -> Result<Value> {
        match self
            .decode_avro(event_type, version, bytes, AvroTarget::Written)
            .await
        {
            Err(SchemaError::NotFound { .. } | SchemaError::NoAvroSchema { .. }) => {
                self.refresh().await?;
                Ok(self
                    .decode_avro(event_type, version, bytes, AvroTarget::Written)
                    .await?
                    .1)
            }
            other => Ok(other?.1),
        }
    }

    /// `payload` as an Avro datum of `version` of `event_type`.
    pub async fn encode_avro(
        &self,
        event_type: &str,
        version: i32,
        payload: &Value,
    ) -> Result<Vec<u8>> {
        let schema = self.get(event_type, version).await?;
        let avro = schema.avro().ok_or_else(|| SchemaError::NoAvroSchema {
            event_type: event_type.to_owned(),
            version,
        })?;
        avro::encode(avro, payload)
    }

    /// Reads an Avro datum written with `version` of `event_type` as JSON, into the written
    /// version or (by Avro resolution) the latest version that has an Avro schema. Returns
    /// the version the JSON is at.
    pub async fn decode_avro(
        &self,
        event_type: &str,
        version: i32,
        bytes: &[u8],
        target: AvroTarget,
    ) -> Result<(i32, Value)> {
        let snapshot = self.current().await?;
        let no_avro = |version| SchemaError::NoAvroSchema {
            event_type: event_type.to_owned(),
            version,
        };
        let written =
            snapshot
                .version(event_type, version)
                .ok_or_else(|| SchemaError::NotFound {
                    event_type: event_type.to_owned(),
                    version: Some(version),
                })?;
        let writer = written.avro().ok_or_else(|| no_avro(version))?;
        match target {
            AvroTarget::Written => Ok((version, avro::decode(writer, None, bytes)?)),
            AvroTarget::Latest => {
                let (reader_version, reader) = snapshot
                    .subjects
                    .get(event_type)
                    .and_then(|s| {
                        s.versions
                            .values()
                            .rev()
                            .find_map(|v| v.avro().map(|a| (v.version, a)))
                    })
                    .ok_or_else(|| no_avro(version))?;
                Ok((reader_version, avro::decode(writer, Some(reader), bytes)?))
            }
        }
    }
}

/// The compatibility mode `event_type` is checked with, as stored (inside a change).
async fn effective_mode_in(
    client: &impl GenericClient,
    event_type: &str,
) -> Result<CompatibilityMode> {
    let row = client
        .query_one(
            "SELECT COALESCE(s.compatibility, g.default_compatibility) \
             FROM schema_settings g LEFT JOIN schema_subjects s ON s.event_type = $1",
            &[&event_type],
        )
        .await
        .map_err(SchemaError::db("reading a compatibility mode"))?;
    row.get::<_, String>(0).parse()
}

fn validation_in(snapshot: &Snapshot, event_type: &str) -> ValidationMode {
    snapshot
        .subjects
        .get(event_type)
        .and_then(|s| s.validation)
        .unwrap_or(snapshot.settings.default_validation)
}

async fn set_upcast_in(
    client: &impl GenericClient,
    event_type: &str,
    from_version: i32,
    changes: Option<&[DeclarativeUpcast]>,
) -> Result<()> {
    let stored = changes
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| invalid(event_type, e.to_string()))?;
    let updated = client
        .execute(
            "UPDATE schema_versions SET upcast_to_next = $3 WHERE event_type = $1 AND version = $2",
            &[&event_type, &from_version, &stored],
        )
        .await
        .map_err(SchemaError::db("storing a declarative upcast"))?;
    if updated == 0 {
        return Err(SchemaError::NotFound {
            event_type: event_type.to_owned(),
            version: Some(from_version),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_fingerprint_ignores_key_order_and_upcasts_but_not_the_avro_schema() {
        let a = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}});
        let b: Value = serde_json::from_str(
            r#"{"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"}"#,
        )
        .unwrap();
        assert_eq!(fingerprint(&a, None), fingerprint(&b, None));
        let avro = AvroSchema::parse(r#"{"type":"record","name":"A","fields":[]}"#).unwrap();
        let documented =
            AvroSchema::parse(r#"{"type":"record","name":"A","doc":"d","fields":[]}"#).unwrap();
        assert_ne!(fingerprint(&a, None), fingerprint(&a, Some(&avro)));
        assert_eq!(
            fingerprint(&a, Some(&avro)),
            fingerprint(&a, Some(&documented))
        );
        assert_ne!(
            fingerprint(&a, None),
            fingerprint(&json!({"type": "object"}), None)
        );
    }

    #[test]
    fn definitions_are_checked_before_any_database_work() {
        let bad_type = SchemaDefinition::json(json!({"type": "no-such-type"}));
        assert_eq!(
            parse_definition("T", &bad_type).unwrap_err().code(),
            "SCHEMA_INVALID"
        );
        let not_schema = SchemaDefinition::json(json!([1, 2]));
        assert_eq!(
            parse_definition("T", &not_schema).unwrap_err().code(),
            "SCHEMA_INVALID"
        );
        let bad_avro =
            SchemaDefinition::json(json!({"type": "object"})).with_avro("{\"type\": \"nope\"}");
        let error = parse_definition("T", &bad_avro).unwrap_err();
        assert!(error.to_string().contains("Avro"), "{error}");
        assert!(parse_definition("", &SchemaDefinition::json(json!(true))).is_err());
        assert!(parse_definition("T", &SchemaDefinition::json(json!(true)))
            .unwrap()
            .is_none());
    }
}
