//! The schema registry over GraphQL: list and read event types' schema versions, check a
//! schema without registering it ("would this break?"), and (admin) register versions and
//! set modes. Errors carry the registry's codes (`SCHEMA_INCOMPATIBLE`, `SCHEMA_INVALID`,
//! `SCHEMA_NOT_FOUND`, ...; see [`crate::error::ApiError::from_schema`]).

use crate::auth::{Role, RoleGuard};
use crate::error::{direction_name, ApiError, ApiResult};
use crate::Tidemark;
use async_graphql::{Context, Enum, Json, Object, SimpleObject};
use std::sync::Arc;
use tidemark_schema::{DeclarativeUpcast, SchemaDefinition};

/// How a new schema version of a type is checked against the registered ones (as in
/// Confluent Schema Registry).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "tidemark_schema::CompatibilityMode")]
pub enum CompatibilityMode {
    /// The new schema reads data of the latest version (upgrade readers first).
    Backward,
    /// The new schema reads data of every version.
    BackwardTransitive,
    /// The latest version reads data of the new schema (upgrade writers first).
    Forward,
    /// Every version reads data of the new schema.
    ForwardTransitive,
    /// Both, with the latest version.
    Full,
    /// Both, with every version.
    FullTransitive,
    /// Nothing is checked.
    None,
}

/// What appends of a type with schemas get.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "tidemark_schema::ValidationMode")]
pub enum ValidationMode {
    /// Not validated.
    Off,
    /// Validated; a mismatch is logged and the event written.
    Warn,
    /// A mismatch refuses the append (`SCHEMA_VIOLATION`); nothing of it is written.
    Enforce,
}

/// What appends of a type without any schema get.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "tidemark_schema::UnregisteredPolicy")]
pub enum UnregisteredPolicy {
    /// Written unchecked.
    Allow,
    /// Refused (`SCHEMA_REQUIRED`).
    Refuse,
}

/// How an event's payload is stored in the log. Clients send and read JSON either way.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "tidemark_store::PayloadEncoding")]
pub enum PayloadEncoding {
    /// As JSON (`jsonb`).
    Json,
    /// As an Avro datum of the event's schema version in the registry: compact, decoded to
    /// JSON on every read.
    Avro,
}

/// The server-wide registry settings.
#[derive(SimpleObject, Debug, Clone)]
pub struct SchemaSettings {
    pub default_compatibility: CompatibilityMode,
    pub default_validation: ValidationMode,
    pub unregistered_policy: UnregisteredPolicy,
}

impl From<tidemark_schema::Settings> for SchemaSettings {
    fn from(settings: tidemark_schema::Settings) -> Self {
        SchemaSettings {
            default_compatibility: settings.default_compatibility.into(),
            default_validation: settings.default_validation.into(),
            unregistered_policy: settings.unregistered_policy.into(),
        }
    }
}

/// An event type with schemas.
#[derive(SimpleObject, Debug, Clone)]
pub struct SchemaSubject {
    pub event_type: String,
    /// The type's own compatibility mode; `null`: the server-wide default.
    pub compatibility: Option<CompatibilityMode>,
    /// The type's own validation mode; `null`: the server-wide default.
    pub validation: Option<ValidationMode>,
    /// The mode new versions are checked with (its own or the default).
    pub effective_compatibility: CompatibilityMode,
    /// The mode appends get (its own or the default).
    pub effective_validation: ValidationMode,
    /// How appends that do not ask for an encoding store payloads of this type.
    pub encoding: PayloadEncoding,
    /// Registered versions, ascending.
    pub versions: Vec<i32>,
    pub latest_version: Option<i32>,
}

fn subject(
    subject: tidemark_schema::Subject,
    settings: &tidemark_schema::Settings,
) -> SchemaSubject {
    SchemaSubject {
        compatibility: subject.compatibility.map(Into::into),
        validation: subject.validation.map(Into::into),
        effective_compatibility: subject
            .compatibility
            .unwrap_or(settings.default_compatibility)
            .into(),
        effective_validation: subject
            .validation
            .unwrap_or(settings.default_validation)
            .into(),
        encoding: subject.encoding.unwrap_or_default().into(),
        latest_version: subject.versions.last().copied(),
        versions: subject.versions,
        event_type: subject.event_type,
    }
}

/// One registered schema version.
#[derive(Debug, Clone)]
pub struct SchemaVersion(pub Arc<tidemark_schema::SchemaVersion>);

#[Object]
impl SchemaVersion {
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// The JSON Schema payloads of this version are validated against.
    async fn json_schema(&self) -> Json<&serde_json::Value> {
        Json(&self.0.json_schema)
    }
    /// The Avro schema (JSON text) for binary payloads, when the version has one.
    async fn avro_schema(&self) -> Option<&str> {
        self.0.avro_schema.as_deref()
    }
    /// Hex of the blake3 fingerprint of the canonical schema (its identity).
    async fn fingerprint(&self) -> &str {
        &self.0.fingerprint
    }
    /// The declarative upcast from this version to the next, when one is stored.
    async fn upcast_to_next(&self) -> Option<Json<&Vec<DeclarativeUpcast>>> {
        self.0.upcast_to_next.as_ref().map(Json)
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

/// One reason a schema cannot be registered under its type's mode.
#[derive(SimpleObject, Debug, Clone)]
pub struct SchemaIncompatibility {
    /// The registered version compared with.
    pub version: i32,
    /// `BACKWARD`: the new schema reading data of `version`; `FORWARD`: `version` reading
    /// data of the new schema.
    pub direction: String,
    /// The rule broken (`REQUIRED_FIELD_ADDED`, `TYPE_CHANGED`, ...).
    pub rule: String,
    /// JSON path of the field (`$.customer.email`).
    pub path: String,
    pub message: String,
}

/// What registering a schema would do, without doing it.
#[derive(SimpleObject, Debug, Clone)]
pub struct CompatibilityReport {
    pub event_type: String,
    pub compatible: bool,
    /// The mode the check used.
    pub mode: CompatibilityMode,
    pub incompatibilities: Vec<SchemaIncompatibility>,
}

/// What `registerSchema` did.
#[derive(SimpleObject, Debug, Clone)]
pub struct RegisteredSchema {
    pub event_type: String,
    pub version: i32,
    /// False when the same schema was already registered (as `version`).
    pub created: bool,
}

fn definition(
    json_schema: Json<serde_json::Value>,
    avro_schema: Option<String>,
    upcast: Option<Json<serde_json::Value>>,
) -> ApiResult<SchemaDefinition> {
    let mut definition = SchemaDefinition::json(json_schema.0);
    definition.avro_schema = avro_schema;
    if let Some(Json(changes)) = upcast {
        let changes: Vec<DeclarativeUpcast> = serde_json::from_value(changes).map_err(|e| {
            ApiError::bad_input(
                "upcastFromPrevious",
                format!(
                    "upcastFromPrevious must be a list of {{\"op\": \"rename_field\" | \
                     \"add_field\" | \"remove_field\", ...}} changes: {e}"
                ),
            )
        })?;
        definition = definition.with_upcast_from_previous(changes);
    }
    Ok(definition)
}

/// The registry's queries.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaQuery;

#[Object]
impl SchemaQuery {
    /// Every event type with schemas: its modes and versions.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn schema_subjects(&self, ctx: &Context<'_>) -> ApiResult<Vec<SchemaSubject>> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        let settings = registry.settings().await?;
        Ok(registry
            .list()
            .await?
            .into_iter()
            .map(|s| subject(s, &settings))
            .collect())
    }

    /// One schema version of an event type (the latest without `version`);
    /// `SCHEMA_NOT_FOUND` when there is none.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn schema_version(
        &self,
        ctx: &Context<'_>,
        event_type: String,
        version: Option<i32>,
    ) -> ApiResult<SchemaVersion> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        let found = match version {
            Some(version) => registry.get(&event_type, version).await?,
            None => registry.latest(&event_type).await?.ok_or_else(|| {
                ApiError::from_schema(&tidemark_schema::SchemaError::NotFound {
                    event_type: event_type.clone(),
                    version: None,
                })
            })?,
        };
        Ok(SchemaVersion(found))
    }

    /// The server-wide defaults and the policy for event types without a schema.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn schema_settings(&self, ctx: &Context<'_>) -> ApiResult<SchemaSettings> {
        Ok(Tidemark::from_ctx(ctx)?.schemas().settings().await?.into())
    }

    /// Checks a schema against the registered versions of `eventType` under its mode,
    /// without registering it ("would this break?"). `SCHEMA_INVALID` when the schema
    /// itself is unusable.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn check_schema_compatibility(
        &self,
        ctx: &Context<'_>,
        event_type: String,
        json_schema: Json<serde_json::Value>,
        avro_schema: Option<String>,
    ) -> ApiResult<CompatibilityReport> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        let definition = definition(json_schema, avro_schema, None)?;
        let findings = registry.check(&event_type, &definition).await?;
        let mode = registry.mode(&event_type).await?;
        Ok(CompatibilityReport {
            compatible: findings.is_empty(),
            mode: mode.into(),
            incompatibilities: findings
                .iter()
                .map(|f| SchemaIncompatibility {
                    version: f.version,
                    direction: direction_name(f.direction).to_owned(),
                    rule: f.incompatibility.rule().to_owned(),
                    path: f.incompatibility.path().to_owned(),
                    message: f.to_string(),
                })
                .collect(),
            event_type,
        })
    }
}

/// The registry's mutations (admin).
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaMutation;

#[Object]
impl SchemaMutation {
    /// Registers a schema as the next version of `eventType`. The same schema again answers
    /// with its version (`created: false`); one that breaks the type's compatibility mode
    /// is refused with `SCHEMA_INCOMPATIBLE`, listing each field and rule.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn register_schema(
        &self,
        ctx: &Context<'_>,
        event_type: String,
        json_schema: Json<serde_json::Value>,
        #[graphql(desc = "An Avro schema (JSON text) for binary payloads of this version")]
        avro_schema: Option<String>,
        #[graphql(
            desc = "Declarative changes from the previous version to this one, e.g. [{\"op\": \"add_field\", \"path\": \"currency\", \"default\": \"EUR\"}]"
        )]
        upcast_from_previous: Option<Json<serde_json::Value>>,
    ) -> ApiResult<RegisteredSchema> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        let definition = definition(json_schema, avro_schema, upcast_from_previous)?;
        let outcome = registry.register(&event_type, &definition).await?;
        Ok(RegisteredSchema {
            event_type,
            version: outcome.version,
            created: outcome.created,
        })
    }

    /// Sets the compatibility mode later versions of `eventType` are checked with;
    /// `null` follows the server-wide default again.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn set_schema_compatibility(
        &self,
        ctx: &Context<'_>,
        event_type: String,
        mode: Option<CompatibilityMode>,
    ) -> ApiResult<SchemaSubject> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        registry.set_mode(&event_type, mode.map(Into::into)).await?;
        subject_of(registry, &event_type).await
    }

    /// Sets what appends of `eventType` get (`OFF`, `WARN`, `ENFORCE`); `null` follows the
    /// server-wide default again.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn set_schema_validation(
        &self,
        ctx: &Context<'_>,
        event_type: String,
        mode: Option<ValidationMode>,
    ) -> ApiResult<SchemaSubject> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        registry
            .set_validation(&event_type, mode.map(Into::into))
            .await?;
        subject_of(registry, &event_type).await
    }

    /// Sets how appends of `eventType` that do not ask for an encoding store payloads:
    /// `AVRO` stores every writer's events compactly without changing clients (the type's
    /// versions need Avro schemas; events claiming one without are stored as JSON); `JSON`
    /// or `null` stores JSON. Applies to later appends; stored events keep their encoding.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn set_schema_encoding(
        &self,
        ctx: &Context<'_>,
        event_type: String,
        encoding: Option<PayloadEncoding>,
    ) -> ApiResult<SchemaSubject> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        registry
            .set_encoding(&event_type, encoding.map(Into::into))
            .await?;
        subject_of(registry, &event_type).await
    }

    /// Sets the server-wide defaults and the policy for event types without a schema
    /// (each only when given).
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn set_schema_settings(
        &self,
        ctx: &Context<'_>,
        default_compatibility: Option<CompatibilityMode>,
        default_validation: Option<ValidationMode>,
        unregistered_policy: Option<UnregisteredPolicy>,
    ) -> ApiResult<SchemaSettings> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        if let Some(mode) = default_compatibility {
            registry.set_default_mode(mode.into()).await?;
        }
        if let Some(mode) = default_validation {
            registry.set_default_validation(mode.into()).await?;
        }
        if let Some(policy) = unregistered_policy {
            registry.set_unregistered_policy(policy.into()).await?;
        }
        Ok(registry.settings().await?.into())
    }

    /// Deletes a version registered by mistake; `SCHEMA_IN_USE` when stored events claim
    /// it. Its number is never given to another schema.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn delete_schema_version(
        &self,
        ctx: &Context<'_>,
        event_type: String,
        version: i32,
    ) -> ApiResult<bool> {
        let registry = Tidemark::from_ctx(ctx)?.schemas();
        registry.delete_version(&event_type, version).await?;
        Ok(true)
    }
}

async fn subject_of(
    registry: &tidemark_schema::Registry,
    event_type: &str,
) -> ApiResult<SchemaSubject> {
    let settings = registry.settings().await?;
    let found = registry
        .list()
        .await?
        .into_iter()
        .find(|s| s.event_type == event_type)
        .unwrap_or(tidemark_schema::Subject {
            event_type: event_type.to_owned(),
            compatibility: None,
            validation: None,
            encoding: None,
            versions: Vec::new(),
        });
    Ok(subject(found, &settings))
}
