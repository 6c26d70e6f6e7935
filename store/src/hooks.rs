//! Hooks another crate installs on the store without the store knowing it: an
//! [`AppendValidator`] that may refuse an append before anything of it is queued, a
//! [`PayloadCodec`] that stores payloads in a binary encoding and reads them back as JSON,
//! and a [`ReadHook`] that rewrites events as they are read (the schema registry's upcasting
//! to the latest schema version). The store stays a leaf crate; the schema crate implements
//! all three.
//!
//! - The validator is installed on the store ([`crate::EventStore::set_append_validator`])
//!   and sees every append of every handle, after the store's own input checks.
//! - The codec is installed on the store ([`crate::EventStore::set_payload_codec`]): it
//!   encodes every append of every handle after the validator, and decodes every binary
//!   payload every handle reads, before any read hook. So there is one read path: whoever
//!   reads sees JSON, whatever the encoding it is stored in.
//! - A read hook is carried by one handle ([`crate::EventStore::with_read_hook`]): its
//!   `read_stream`, `read_log`, `subscribe` and `subscribe_pages` pass events through it,
//!   while other handles of the same store (the API's event queries) read the log as
//!   written.

use crate::model::{AppendRequest, PayloadEncoding, RecordedEvent};
use crate::read::StoredEvent;
use futures::future::BoxFuture;
use std::sync::{Arc, RwLock};

/// Decides whether an append may be written. Called once per append, before it is queued,
/// so a refusal means nothing of the append was written.
pub trait AppendValidator: Send + Sync + 'static {
    /// `Err` refuses the whole append.
    fn check<'a>(&'a self, request: &'a AppendRequest) -> BoxFuture<'a, Result<(), HookError>>;
}

/// Rewrites events read from the log before the reader sees them (in place, in order).
pub trait ReadHook: Send + Sync + 'static {
    /// `Err` fails the read.
    fn apply<'a>(&'a self, events: &'a mut [RecordedEvent])
        -> BoxFuture<'a, Result<(), HookError>>;
}

/// Stores payloads in a binary encoding and reads them back as JSON (the schema registry's
/// Avro payloads). The content hash stays the hash of the JSON payload the appender gave.
pub trait PayloadCodec: Send + Sync + 'static {
    /// Per event of `request`, in order: the bytes to store instead of its JSON payload, or
    /// `None` to store the JSON. `Err` refuses the whole append (nothing of it is written).
    fn encode<'a>(
        &'a self,
        request: &'a AppendRequest,
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, HookError>>;

    /// The JSON payload of `event` (as written: its `schema_version`), stored as `bytes` in
    /// `event.encoding`. `Err` fails the read.
    fn decode<'a>(
        &'a self,
        event: &'a RecordedEvent,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<serde_json::Value, HookError>>;
}

/// The codec slot every handle of a store (and every subscription) shares, so a codec
/// installed after a subscription started still decodes its later pages.
pub(crate) type CodecSlot = Arc<RwLock<Option<Arc<dyn PayloadCodec>>>>;

pub(crate) fn codec_of(slot: &CodecSlot) -> Option<Arc<dyn PayloadCodec>> {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A binary payload read by a store without a codec.
#[derive(Debug, thiserror::Error)]
#[error(
    "the event at position {position} is stored as {encoding} and this store has no payload \
     codec to read it; install the schema registry on the store (EventStore::set_payload_codec)"
)]
pub struct NoCodec {
    pub position: crate::model::Position,
    pub encoding: PayloadEncoding,
}

/// Why a hook refused an append or failed a read: a stable code, the sentence for the
/// caller, the index of the event in the append when it is about one, and the hook's own
/// error (so an API can downcast it for details).
#[derive(Debug, Clone)]
pub struct HookError {
    pub code: &'static str,
    pub message: String,
    pub event_index: Option<usize>,
    pub source: Arc<dyn std::error::Error + Send + Sync>,
}

impl HookError {
    /// A hook error carrying `source`, with its text as the message.
    pub fn new(
        code: &'static str,
        event_index: Option<usize>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> HookError {
        HookError {
            code,
            message: source.to_string(),
            event_index,
            source: Arc::new(source),
        }
    }

    /// The hook's own error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref::<E>()
    }
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.event_index {
            Some(index) => write!(f, "event {index}: {} ({})", self.message, self.code),
            None => write!(f, "{} ({})", self.message, self.code),
        }
    }
}

/// Events as readers see them: binary payloads decoded to JSON by the codec, then `hook`
/// (if any) applied, failures mapped to [`crate::StoreError::Unreadable`]. Every read of
/// every handle ends here.
pub(crate) async fn finish_read(
    codec: &CodecSlot,
    hook: Option<&Arc<dyn ReadHook>>,
    stored: Vec<StoredEvent>,
) -> crate::error::Result<Vec<RecordedEvent>> {
    let mut events = Vec::with_capacity(stored.len());
    let mut codec_now = None;
    for StoredEvent { mut event, avro } in stored {
        if let Some(bytes) = avro {
            let codec = match &codec_now {
                Some(codec) => codec,
                None => codec_now.insert(codec_of(codec).ok_or_else(|| {
                    crate::error::StoreError::Unreadable(HookError::new(
                        "PAYLOAD_UNREADABLE",
                        None,
                        NoCodec {
                            position: event.position,
                            encoding: event.encoding,
                        },
                    ))
                })?),
            };
            event.payload = codec
                .decode(&event, &bytes)
                .await
                .map_err(crate::error::StoreError::Unreadable)?;
        }
        events.push(event);
    }
    match hook {
        Some(hook) if !events.is_empty() => hook
            .apply(&mut events)
            .await
            .map_err(crate::error::StoreError::Unreadable)?,
        _ => {}
    }
    Ok(events)
}
