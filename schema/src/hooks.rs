//! The registry installed on the store: [`SchemaValidator`] is the store's append validator
//! (validation on append, per type `OFF`/`WARN`/`ENFORCE`, and the server's policy for types
//! without a schema), [`SchemaCodec`] its payload codec (Avro binary payloads, written and
//! read back as JSON by every handle), [`SchemaUpcaster`] a read hook (every event read
//! through the handle comes out as the latest registered version of its type).
//!
//! ```ignore
//! let registry = Arc::new(Registry::open(store.pool().clone(), RegistryOptions::default()).await?);
//! store.set_append_validator(Some(Arc::new(SchemaValidator::new(registry.clone()))));
//! store.set_payload_codec(Some(Arc::new(SchemaCodec::new(registry.clone()))));
//! let upcasting = store.with_read_hook(Arc::new(SchemaUpcaster::new(registry, upcasters)));
//! // hand `upcasting` to the projection engine and the command bus
//! ```

use std::sync::Arc;

use futures::future::BoxFuture;
use tidemark_store::{
    AppendRequest, AppendValidator, HookError, PayloadCodec, ReadHook, RecordedEvent,
};

use crate::registry::Registry;
use crate::upcast::Upcasters;

/// Validation on append through the registry. The first event of an append that the
/// registry refuses refuses the whole append; the registry's cache makes a valid event one
/// pass of a compiled validator, with no database round trip.
#[derive(Debug, Clone)]
pub struct SchemaValidator {
    registry: Arc<Registry>,
}

impl SchemaValidator {
    pub fn new(registry: Arc<Registry>) -> SchemaValidator {
        SchemaValidator { registry }
    }
}

impl AppendValidator for SchemaValidator {
    fn check<'a>(&'a self, request: &'a AppendRequest) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            for (index, event) in request.events.iter().enumerate() {
                self.registry
                    .validate(&event.event_type, event.schema_version, &event.payload)
                    .await
                    .map_err(|error| HookError::new(error.code(), Some(index), error))?;
            }
            Ok(())
        })
    }
}

/// Avro binary payloads through the registry: an event is stored as an Avro datum of the
/// schema version it claims when it asks for AVRO, or asks for nothing and its type's
/// encoding is AVRO (see [`Registry::encode_for_storage`]); every read decodes it back to
/// the JSON of that version.
#[derive(Debug, Clone)]
pub struct SchemaCodec {
    registry: Arc<Registry>,
}

impl SchemaCodec {
    pub fn new(registry: Arc<Registry>) -> SchemaCodec {
        SchemaCodec { registry }
    }
}

impl PayloadCodec for SchemaCodec {
    fn encode<'a>(
        &'a self,
        request: &'a AppendRequest,
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, HookError>> {
        Box::pin(async move {
            self.registry
                .encode_for_storage(&request.events)
                .await
                .map_err(|(index, error)| HookError::new(error.code(), Some(index), error))
        })
    }

    fn decode<'a>(
        &'a self,
        event: &'a RecordedEvent,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<serde_json::Value, HookError>> {
        Box::pin(async move {
            self.registry
                .decode_stored(&event.event_type, event.schema_version, bytes)
                .await
                .map_err(|error| {
                    let mut hook = HookError::new(error.code(), None, error);
                    hook.message =
                        format!("event at position {}: {}", event.position, hook.message);
                    hook
                })
        })
    }
}

/// Upcasting on read through the registry: the application's Rust upcasters first, then
/// the declarative ones stored in the registry. Events of types without a schema, and
/// events at the latest version, pass unchanged.
#[derive(Debug, Clone)]
pub struct SchemaUpcaster {
    registry: Arc<Registry>,
    upcasters: Arc<Upcasters>,
}

impl SchemaUpcaster {
    pub fn new(registry: Arc<Registry>, upcasters: Arc<Upcasters>) -> SchemaUpcaster {
        SchemaUpcaster {
            registry,
            upcasters,
        }
    }

    /// One event as the latest version of its type (what every read through the hook sees).
    pub async fn upcast(&self, event: &mut RecordedEvent) -> Result<(), HookError> {
        let payload = std::mem::take(&mut event.payload);
        let (version, payload) = self
            .registry
            .to_latest(
                &self.upcasters,
                &event.event_type,
                event.schema_version,
                payload,
            )
            .await
            .map_err(|error| {
                let mut hook = HookError::new(error.code(), None, error);
                hook.message = format!("event at position {}: {}", event.position, hook.message);
                hook
            })?;
        event.schema_version = version;
        event.payload = payload;
        Ok(())
    }
}

impl ReadHook for SchemaUpcaster {
    fn apply<'a>(
        &'a self,
        events: &'a mut [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            for event in events.iter_mut() {
                self.upcast(event).await?;
            }
            Ok(())
        })
    }
}
