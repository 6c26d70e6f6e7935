//! Schema evolution for Tidemark's events.
//!
//! - [`mode`]: `CompatibilityMode`, `ValidationMode`, `UnregisteredPolicy` and their spellings.
//! - [`compat`]: whether one schema can read what another wrote (JSON Schema subset and
//!   Avro), and the check of a new version against the registered ones per mode.
//! - [`validate`]: compiled JSON Schema validators, cached per (event type, version).
//! - [`upcast`]: Rust and declarative upcasters, chained per event type from the written
//!   version to the latest.
//! - [`avro`]: Avro binary payloads (datum, no header) to and from JSON, with writer → reader
//!   schema resolution.
//! - [`registry`]: the registry in PostgreSQL (subjects, versions, settings), with caches.
//! - [`hooks`]: the registry installed on the store: [`SchemaValidator`] (validation on
//!   append), [`SchemaCodec`] (Avro binary payloads stored, read back as JSON) and
//!   [`SchemaUpcaster`] (upcasting on read).
//! - [`migrations`]: the registry's DDL, as a list the store's migration runner can apply.
//! - [`error`]: `SchemaError` and its stable codes.
//!
//! The semantics (what each mode allows, what is stored, how reads are upcast) are described
//! in `docs/schema-evolution.md`.

pub mod avro;
pub mod compat;
pub mod error;
pub mod hooks;
pub mod migrations;
pub mod mode;
pub mod registry;
pub mod upcast;
pub mod validate;

pub use compat::{Finding, Incompatibility, JsonType};
pub use error::{Result, SchemaError};
pub use hooks::{SchemaCodec, SchemaUpcaster, SchemaValidator};
pub use migrations::MIGRATIONS;
pub use mode::{CompatibilityMode, Direction, UnregisteredPolicy, ValidationMode};
pub use registry::{
    AvroTarget, RegisterOutcome, Registry, RegistryOptions, SchemaDefinition, SchemaVersion,
    Settings, Subject, ValidationOutcome,
};
pub use upcast::{DeclarativeUpcast, UpcastError, Upcaster, Upcasters};
