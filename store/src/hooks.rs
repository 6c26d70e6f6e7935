//! Hooks another crate installs on the store without the store knowing it: an
//! [`AppendValidator`] that may refuse an append before anything of it is queued, and a
//! [`ReadHook`] that rewrites events as they are read (the schema registry's upcasting to the
//! latest schema version). The store stays a leaf crate; the schema crate implements both.
//!
//! - The validator is installed on the store ([`crate::EventStore::set_append_validator`])
//!   and sees every append of every handle, after the store's own input checks.
//! - A read hook is carried by one handle ([`crate::EventStore::with_read_hook`]): its
//!   `read_stream`, `read_log`, `subscribe` and `subscribe_pages` pass events through it,
//!   while other handles of the same store (the API's event queries) read the log as
//!   written.

use crate::model::{AppendRequest, RecordedEvent};
use futures::future::BoxFuture;
use std::sync::Arc;

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

/// Applies `hook` (if any) to `events`, mapping its failure to a store error.
pub(crate) async fn apply_read_hook(
    hook: Option<&Arc<dyn ReadHook>>,
    events: &mut [RecordedEvent],
) -> crate::error::Result<()> {
    match hook {
        Some(hook) if !events.is_empty() => hook
            .apply(events)
            .await
            .map_err(crate::error::StoreError::Unreadable),
        _ => Ok(()),
    }
}
