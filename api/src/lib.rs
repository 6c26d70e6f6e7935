//! # tidemark-api
//!
//! The GraphQL API, the server around it and the `tidemark` command line. Read in this
//! order:
//!
//! - [`app`]: what an application brings — [`TidemarkApp`], built with
//!   `TidemarkApp::builder().projection(..).handler(..).graphql_query(Q).graphql_mutation(M)`
//!   — and what its resolvers get: [`Tidemark`] (store, engine, command bus, consumer groups).
//! - [`schema`]: the built-in queries, mutations and subscriptions
//!   ([`schema::query`], [`schema::mutation`], [`schema::subscription`], their types in
//!   [`schema::types`], the `@waitFor` directive in [`schema::directive`]), merged with the
//!   application's; `api/schema.graphql` is its SDL.
//! - [`error`]: [`ApiError`] and the stable `extensions.code`s; the one place store,
//!   engine and command errors are mapped, and the pass that codes every error of every
//!   response. Application resolvers return [`ApiResult`] and use `?`.
//! - [`evolution`]: the schema registry installed on the store: validation on append, and
//!   the upcasting store handle the projections and the command bus read through.
//! - [`auth`]: API keys, roles (read < append < admin) and the per-field [`RoleGuard`].
//! - [`http`]: routes — `POST /graphql`, WebSocket subscriptions on `GET /graphql`,
//!   GraphiQL at `/`, the dashboard at `/ui`, `/health`, `/ready`, `/metrics` — limits on
//!   bodies and sockets, and admission control (a bounded number of requests at once,
//!   refused past a wait budget).
//! - `graphiql`: the GraphiQL page and its vendored scripts, embedded in the binary, under a
//!   Content-Security-Policy that allows only the page's own origin.
//! - `ui`: the operator's dashboard (projections, workers, the log, a stream browser,
//!   schemas), a small hand-written page embedded the same way; it is a client of the
//!   GraphQL API with the operator's key, so roles apply to it as to any client.
//! - `drain`: on shutdown, responses close their connections and idle ones close only
//!   once requests have stopped, so no request read on a keep-alive connection goes unanswered.
//! - `log_limit`: a repeated error cause is logged once per window with a count.
//! - [`startup`]: [`Application`]: build (bind, connect, migrate, start projections), then
//!   `run_until_stopped(shutdown)` with an ordered graceful shutdown.
//! - [`config`], [`database`], [`telemetry`]: settings with defaults, the database (URL or
//!   embedded), logs and the Prometheus recorder.
//! - [`migrations`]: the API's own migration (API keys) and [`all_migrations`], the set a
//!   server's database needs (store, engine, API), for every command that migrates.
//! - [`cli`]: `tidemark serve | migrate | projections | events | workers | schemas | groups |
//!   keys | relay`, reusable by
//!   application binaries through [`cli::run`].
//!
//! The API knows the store, the engine, the schema registry and the consumer groups
//! (`schema::groups`, `cli groups`); none of them knows the API.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod correlation;
pub mod database;
mod drain;
pub mod error;
pub mod evolution;
mod graphiql;
pub mod http;
mod log_limit;
pub mod migrations;
pub mod schema;
pub mod startup;
pub mod telemetry;
mod ui;

pub use app::{Tidemark, TidemarkApp, TidemarkAppBuilder};
pub use auth::{Principal, Role, RoleGuard};
pub use config::{ApiLimits, DatabaseConfig, ServerConfig};
pub use error::{ApiError, ApiResult, ErrorCode};
pub use migrations::all_migrations;
pub use schema::scalars::Int64;
pub use schema::SchemaConflict;
pub use startup::Application;

/// The allocator of the servers built on this crate (mimalloc). Request handling makes
/// many small, short-lived allocations (GraphQL documents and values, JSON), which the
/// system allocator serves markedly slower; a binary opts in with
/// `#[global_allocator] static ALLOCATOR: tidemark_api::Allocator = tidemark_api::Allocator;`
/// (libraries and tests keep the system allocator).
pub use mimalloc::MiMalloc as Allocator;

/// The async-graphql this crate is built with. Applications deriving GraphQL objects also
/// depend on `async-graphql` themselves (its macros name the crate), at the same version.
pub use async_graphql;
