//! What a consumer-group operation can fail with. Each variant says what to do; the API
//! maps them to stable codes (`GROUP_NOT_FOUND`, `GROUP_EXISTS`, `BAD_INPUT`, or the store's).

use std::sync::Arc;
use tidemark_store::StoreError;

pub type Result<T, E = ConsumerError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsumerError {
    /// No group of that name (it was never created, or was deleted).
    #[error("consumer group '{0}' does not exist; create it first (createConsumerGroup or `tidemark groups create`)")]
    GroupNotFound(String),

    /// A group of that name exists with other settings; creating it again with the same
    /// ones is not an error.
    #[error("consumer group '{0}' already exists with different settings; delete it first or choose another name")]
    GroupExists(String),

    /// A value is out of range or malformed; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },

    /// The store or the database failed (see the store's error for what to do).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ConsumerError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> ConsumerError {
        ConsumerError::Invalid {
            field,
            message: message.into(),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ConsumerError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ConsumerError::Store(StoreError::from(e))
    }
}

/// Wraps a database error with what was being done, in the store's words (so the API
/// classifies it as it does every other database error).
pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ConsumerError {
    move |source| {
        ConsumerError::Store(StoreError::Database {
            context,
            source: Arc::new(source),
        })
    }
}
