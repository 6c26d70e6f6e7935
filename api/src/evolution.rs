//! Schema evolution in the server: the one place the schema registry is opened and
//! installed on the store.
//!
//! - Validation on append: the registry is the store's append validator, so every append
//!   (GraphQL `appendEvents`, application commands, any handle of the store) is checked as
//!   the event type's validation mode and the server's unregistered-type policy say.
//! - Binary payloads: the registry is the store's payload codec, so an event asking for (or
//!   whose type is set to) AVRO is stored as an Avro datum of its schema version, and every
//!   read of every handle gets it back as JSON.
//! - Upcasting on read: [`Evolution::upcasting`] is a handle of the same store whose reads
//!   pass through the registry's upcasting (the application's Rust upcasters, then the
//!   declarative ones stored with the versions). The projection engine and the command bus
//!   read through it; the GraphQL event queries read the log as written.

use std::sync::Arc;

use crate::TidemarkApp;
use tidemark_schema::{Registry, RegistryOptions, SchemaCodec, SchemaUpcaster, SchemaValidator};
use tidemark_store::EventStore;

/// The registry and the store handles it is installed on.
#[derive(Debug, Clone)]
pub struct Evolution {
    pub registry: Arc<Registry>,
    /// Reads of this handle see every event as the latest version of its type.
    pub upcasting: EventStore,
}

impl Evolution {
    /// Opens the registry of `store`'s database (its migration applied), registers the
    /// application's schemas (idempotent: a schema already registered keeps its version),
    /// installs the registry as the store's append validator and payload codec, and makes the upcasting
    /// handle with the application's Rust upcasters.
    pub async fn install(
        store: &EventStore,
        app: &TidemarkApp,
    ) -> Result<Evolution, tidemark_schema::SchemaError> {
        let registry =
            Arc::new(Registry::open(store.pool().clone(), RegistryOptions::default()).await?);
        for (event_type, definition) in app.schemas() {
            registry.register(event_type, definition).await?;
        }
        let upcasters = app.upcasters().clone();
        store.set_append_validator(Some(Arc::new(SchemaValidator::new(registry.clone()))));
        store.set_payload_codec(Some(Arc::new(SchemaCodec::new(registry.clone()))));
        let upcasting =
            store.with_read_hook(Arc::new(SchemaUpcaster::new(registry.clone(), upcasters)));
        Ok(Evolution {
            registry,
            upcasting,
        })
    }
}
