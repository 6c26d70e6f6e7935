//! What an application brings ([`TidemarkApp`]: projections, handlers, Rust upcasters,
//! GraphQL objects) and what its resolvers get at run time ([`Tidemark`]: the store, the
//! engine, the command bus, the schema registry).
//!
//! ```ignore
//! #[derive(Default, Clone)]
//! struct BankQuery;
//! #[async_graphql::Object]
//! impl BankQuery {
//!     #[graphql(guard = "RoleGuard(Role::Read)")]
//!     async fn balance(&self, ctx: &Context<'_>, id: String) -> ApiResult<i64> {
//!         let tidemark = Tidemark::from_ctx(ctx)?;
//!         /* query the read model through tidemark.store().pool() */
//!     }
//! }
//! #[derive(Default, Clone)]
//! struct BankMutation;
//! #[async_graphql::Object]
//! impl BankMutation {
//!     #[graphql(guard = "RoleGuard(Role::Append)")]
//!     async fn deposit(&self, ctx: &Context<'_>, id: String, amount: i64) -> ApiResult<i64> {
//!         let bus = Tidemark::from_ctx(ctx)?.commands();
//!         // `?`: a refusal is REJECTED, a lasting conflict WRONG_EXPECTED_VERSION, ...
//!         let outcome = bus.execute::<Account>(&id, &AccountCommand::Deposit { amount }).await?;
//!         Ok(outcome.position())
//!     }
//! }
//!
//! let app = TidemarkApp::builder()
//!     .name("bank")
//!     .projection(AccountBalances)
//!     .graphql_query(BankQuery)
//!     .graphql_mutation(BankMutation)
//!     .build();
//! tidemark_api::cli::run(app)
//! ```
//!
//! The application's types are merged into the root `Query`, `Mutation` and `Subscription`
//! beside the built-in fields; field names must not clash. Dependencies of the
//! application's resolvers (clients of other services...) go in the fields of its
//! Query/Mutation structs, which are cloned into the schema.

use crate::config::ApiLimits;
use crate::correlation::RequestIds;
use crate::error::ApiError;
use crate::evolution::Evolution;
use crate::schema::{self, ApiSchema, SchemaConflict, SchemaSettings};
use async_graphql::{Context, EmptyMutation, EmptySubscription, ObjectType, SubscriptionType};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tidemark_consumers::ConsumerGroups;
use tidemark_projections::{Handler, Projection, ProjectionEngine, Registry};
use tidemark_schema::{Registry as SchemaRegistry, SchemaDefinition, Upcasters};
use tidemark_store::aggregate::{CommandBus, CommandOptions};
use tidemark_store::{EventStore, Position};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type SchemaFactory = dyn Fn(SchemaSettings) -> Result<ApiSchema, SchemaConflict> + Send + Sync;

/// An application: its projections and handlers and its GraphQL objects. Build one with
/// [`TidemarkApp::builder`]; run it with [`crate::cli::run`] or [`crate::Application`].
#[derive(Clone)]
pub struct TidemarkApp {
    inner: Arc<AppInner>,
}

struct AppInner {
    name: String,
    registry: Registry,
    upcasters: Arc<Upcasters>,
    schemas: Vec<(String, SchemaDefinition)>,
    schema: Box<SchemaFactory>,
}

impl TidemarkApp {
    /// A builder with no projections and only the built-in GraphQL schema.
    pub fn builder() -> TidemarkAppBuilder {
        TidemarkAppBuilder {
            name: "tidemark".into(),
            registry: Registry::new(),
            upcasters: Upcasters::new(),
            schemas: Vec::new(),
            query: EmptyMutation,
            mutation: EmptyMutation,
            subscription: EmptySubscription,
            public_fields: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The projections and handlers this application runs.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The application's Rust upcasters (see [`TidemarkAppBuilder::upcasters`]).
    pub fn upcasters(&self) -> &Arc<Upcasters> {
        &self.inner.upcasters
    }

    /// The event schemas the application registers at startup, in order.
    pub fn schemas(&self) -> &[(String, SchemaDefinition)] {
        &self.inner.schemas
    }

    /// The application's merged schema in SDL, or why its GraphQL types cannot be merged.
    pub fn sdl(&self) -> Result<String, SchemaConflict> {
        Ok(self.schema(SchemaSettings::default())?.sdl())
    }

    /// Whether the application's GraphQL types merge with the built-in schema; a server
    /// checks it before it opens the database.
    pub fn check_graphql(&self) -> Result<(), SchemaConflict> {
        self.schema(SchemaSettings::default()).map(drop)
    }

    pub(crate) fn schema(&self, settings: SchemaSettings) -> Result<ApiSchema, SchemaConflict> {
        (self.inner.schema)(settings)
    }
}

impl std::fmt::Debug for TidemarkApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TidemarkApp")
            .field("name", &self.inner.name)
            .field("projections", &self.inner.registry.names())
            .finish()
    }
}

/// Collects an application's parts. `Q`, `M` and `S` are its GraphQL query, mutation and
/// subscription objects (none by default).
pub struct TidemarkAppBuilder<Q = EmptyMutation, M = EmptyMutation, S = EmptySubscription> {
    name: String,
    registry: Registry,
    upcasters: Upcasters,
    schemas: Vec<(String, SchemaDefinition)>,
    query: Q,
    mutation: M,
    subscription: S,
    public_fields: Vec<String>,
}

impl<Q, M, S> TidemarkAppBuilder<Q, M, S> {
    /// Lets callers without an API key use this root field of the application (a query,
    /// mutation or subscription field, by its GraphQL name). Every other application field
    /// needs at least the `read` role when authentication is on, guard or not.
    pub fn public_field(mut self, name: impl Into<String>) -> Self {
        self.public_fields.push(name.into());
        self
    }

    /// The application's name (shown by the CLI and in logs).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a projection (a read model in Postgres).
    pub fn projection(mut self, projection: impl Projection) -> Self {
        self.registry = self.registry.projection(projection);
        self
    }

    /// Adds a side-effect handler.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.registry = self.registry.handler(handler);
        self
    }

    /// The application's Rust upcasters (payload of an event type from version n to n + 1).
    /// Projections and aggregate loads see every event as the latest registered version of
    /// its type: these first, then the declarative upcasts stored in the schema registry.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Registers `definition` as a version of `event_type` when the server (or a command
    /// that reads through upcasting) starts, unless it is registered already; versions of
    /// one type are registered in the order given. A schema that breaks the type's
    /// compatibility mode stops the start with `SCHEMA_INCOMPATIBLE`.
    pub fn schema(mut self, event_type: impl Into<String>, definition: SchemaDefinition) -> Self {
        self.schemas.push((event_type.into(), definition));
        self
    }

    /// Uses a whole registry (replacing projections added so far).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// The same builder with other GraphQL roots (their types change, so this is a move).
    fn with_roots<Q2, M2, S2>(
        self,
        roots: impl FnOnce(Q, M, S) -> (Q2, M2, S2),
    ) -> TidemarkAppBuilder<Q2, M2, S2> {
        let (query, mutation, subscription) = roots(self.query, self.mutation, self.subscription);
        TidemarkAppBuilder {
            name: self.name,
            registry: self.registry,
            upcasters: self.upcasters,
            schemas: self.schemas,
            query,
            mutation,
            subscription,
            public_fields: self.public_fields,
        }
    }

    /// The application's queries, merged into the root `Query`.
    pub fn graphql_query<Q2: ObjectType + Clone + 'static>(
        self,
        query: Q2,
    ) -> TidemarkAppBuilder<Q2, M, S> {
        self.with_roots(|_, mutation, subscription| (query, mutation, subscription))
    }

    /// The application's mutations (its commands), merged into the root `Mutation`.
    pub fn graphql_mutation<M2: ObjectType + Clone + 'static>(
        self,
        mutation: M2,
    ) -> TidemarkAppBuilder<Q, M2, S> {
        self.with_roots(|query, _, subscription| (query, mutation, subscription))
    }

    /// The application's subscriptions, merged into the root `Subscription`.
    pub fn graphql_subscription<S2: SubscriptionType + Clone + 'static>(
        self,
        subscription: S2,
    ) -> TidemarkAppBuilder<Q, M, S2> {
        self.with_roots(|query, mutation, _| (query, mutation, subscription))
    }
}

impl<Q, M, S> TidemarkAppBuilder<Q, M, S>
where
    Q: ObjectType + Clone + 'static,
    M: ObjectType + Clone + 'static,
    S: SubscriptionType + Clone + 'static,
{
    pub fn build(self) -> TidemarkApp {
        let (query, mutation, subscription) = (self.query, self.mutation, self.subscription);
        let public_fields = self.public_fields;
        TidemarkApp {
            inner: Arc::new(AppInner {
                name: self.name,
                registry: self.registry,
                upcasters: Arc::new(self.upcasters),
                schemas: self.schemas,
                schema: Box::new(move |settings| {
                    let settings = schema::SchemaSettings {
                        public_fields: public_fields.clone(),
                        ..settings
                    };
                    schema::build(
                        query.clone(),
                        mutation.clone(),
                        subscription.clone(),
                        settings,
                    )
                }),
            }),
        }
    }
}

/// The running server's handles, available to every resolver:
/// `let tidemark = Tidemark::from_ctx(ctx)?;`. Cheap to clone.
#[derive(Clone)]
pub struct Tidemark {
    inner: Arc<TidemarkInner>,
}

struct TidemarkInner {
    store: EventStore,
    /// The store as written and through the registry's upcasting (the GraphQL event reads),
    /// both reading events from the read replica when there is one.
    replica_reads: [EventStore; 2],
    schemas: Arc<SchemaRegistry>,
    engine: ProjectionEngine,
    commands: CommandBus,
    groups: ConsumerGroups,
    limits: ApiLimits,
    background: TaskTracker,
    shutdown: CancellationToken,
}

impl Tidemark {
    /// `store` reads the log as written; the command bus loads aggregates through
    /// `evolution.upcasting`, so they see the latest version of every event.
    pub(crate) fn new(
        store: EventStore,
        evolution: Evolution,
        engine: ProjectionEngine,
        limits: ApiLimits,
    ) -> Self {
        let shutdown = CancellationToken::new();
        Tidemark {
            inner: Arc::new(TidemarkInner {
                // Consumers see every event as the latest version of its type, as
                // projections do.
                groups: ConsumerGroups::new(evolution.upcasting.clone(), shutdown.clone()),
                commands: CommandBus::new(evolution.upcasting.clone()),
                replica_reads: [store.on_replica(), evolution.upcasting.on_replica()],
                schemas: evolution.registry,
                store,
                engine,
                limits,
                background: TaskTracker::new(),
                shutdown,
            }),
        }
    }

    /// The handle in a resolver's context.
    pub fn from_ctx<'a>(ctx: &Context<'a>) -> Result<&'a Tidemark, ApiError> {
        ctx.data_opt::<Tidemark>()
            .ok_or_else(|| ApiError::internal("the schema was built without a Tidemark handle"))
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// The handle a read of the log uses: with `upcast`, every event comes out as the latest
    /// registered version of its type (the registry's upcasting); without, as written.
    /// Binary payloads are JSON either way. Its event reads go to the read replica when the
    /// server has one (`--read-database-url`): a client may not see its own append there at
    /// once; a read-your-writes check belongs on [`Tidemark::store`] or a `@waitFor`.
    pub fn reader(&self, upcast: bool) -> &EventStore {
        &self.inner.replica_reads[usize::from(upcast)]
    }

    /// The schema registry (register, check, validate, upcast).
    pub fn schemas(&self) -> &Arc<SchemaRegistry> {
        &self.inner.schemas
    }

    pub fn engine(&self) -> &ProjectionEngine {
        &self.inner.engine
    }

    /// Consumer groups: durable cursors many consumers pull from with acks.
    pub fn groups(&self) -> &ConsumerGroups {
        &self.inner.groups
    }

    /// Runs commands on aggregates (`commands().execute::<Account>(id, &command)`).
    pub fn commands(&self) -> &CommandBus {
        &self.inner.commands
    }

    /// `"schema"."table"`, quoted, of `table` in the serving read model of `projection`: what
    /// a resolver puts in its SQL instead of hard-coding `rm_<name>` (a projection may name
    /// its schema otherwise). `NOT_FOUND` when no projection has that name.
    pub fn read_model_table(&self, projection: &str, table: &str) -> Result<String, ApiError> {
        let schema = self.engine().projection(projection)?.schema();
        Ok(format!(
            "{}.{}",
            tidemark_projections::quote_ident(&schema),
            tidemark_projections::quote_ident(table)
        ))
    }

    /// Options for a command run on behalf of the request in `ctx`: its events carry the
    /// request's correlation id (`X-Correlation-Id`, or the one the server made for it) and
    /// causation id (`X-Causation-Id`) in their metadata. Add the client's command id with
    /// `.command_id(..)`.
    pub fn command_options(ctx: &Context<'_>) -> CommandOptions {
        let options = CommandOptions::new();
        match ctx.data_opt::<RequestIds>() {
            Some(ids) => {
                // A server-made id must not change what a retried command writes.
                let options = if ids.from_client {
                    options.correlation_id(ids.correlation_id.clone())
                } else {
                    options.request_correlation_id(ids.correlation_id.clone())
                };
                match &ids.causation_id {
                    Some(causation_id) => options.causation_id(causation_id.clone()),
                    None => options,
                }
            }
            None => options,
        }
    }

    pub fn limits(&self) -> &ApiLimits {
        &self.inner.limits
    }

    /// Waits until `projection` reflects every event up to `position` (read-your-writes
    /// in an application resolver). `TIMEOUT` when it does not within `timeout`.
    pub async fn wait_for(
        &self,
        projection: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        if self
            .wait_for_position(projection, position, timeout)
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::new(
                crate::error::ErrorCode::Timeout,
                format!("projection '{projection}' did not reach position {position} in time; retry shortly"),
            )
            .with("projection", projection)
            .with("position", position)
            .with("retryAfterMs", crate::error::RETRY_AFTER_MS))
        }
    }

    /// Whether `projection` reflects every event up to `position` within `timeout`
    /// (bounded by the configured maximum). A position past the head of the log is not
    /// reached until the log gets there and the projection applies it.
    pub async fn wait_for_position(
        &self,
        projection: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<bool, ApiError> {
        Ok(self
            .engine()
            .wait_for_position(
                projection,
                position,
                timeout.min(self.inner.limits.max_wait),
            )
            .await?)
    }

    /// Publishes the read replica's lag (`tidemark_replica_lag_*`) every `every` until
    /// shutdown.
    pub(crate) fn spawn_replica_lag_reporter(&self, every: Duration) {
        let store = self.inner.store.clone();
        let stop = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match store.replica_lag().await {
                    Ok(Some(lag)) => crate::telemetry::publish_replica_lag(&lag),
                    Ok(None) => return,
                    Err(error) => {
                        metrics::gauge!("tidemark_replica_up").set(0.0);
                        tracing::warn!(%error, "could not measure the read replica's lag");
                    }
                }
            }
        });
    }

    /// Cancelled when the server starts shutting down (subscriptions end on it).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    pub(crate) fn page_size(&self, first: i32) -> Result<usize, ApiError> {
        schema::query::clamp_page(first, self.inner.limits.max_page_size)
    }

    pub(crate) fn wait_timeout(&self, timeout_ms: i32) -> Result<Duration, ApiError> {
        schema::query::clamp_wait(timeout_ms, self.inner.limits.max_wait)
    }

    /// Runs work that outlives the request (rebuilds); shutdown waits for it.
    pub(crate) fn spawn_background(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.inner.background.spawn(work);
    }

    /// Ends subscriptions (the first step of shutdown).
    pub(crate) fn stop_subscriptions(&self) {
        self.inner.shutdown.cancel();
    }

    /// Waits (up to `timeout`) for background builds, which end once the engine stops.
    pub(crate) async fn wait_background(&self, timeout: Duration) {
        self.inner.background.close();
        if tokio::time::timeout(timeout, self.inner.background.wait())
            .await
            .is_err()
        {
            tracing::warn!("background builds did not stop in time");
        }
    }
}
