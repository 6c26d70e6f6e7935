//! Waiting for a projection: until its live read model reflects a position (read-your-writes,
//! the GraphQL `@waitFor` directive), or everything committed so far. Asks the database, so
//! the answer holds whichever processes run the projection's partitions.

use crate::error::Result;
use crate::projection::Projection;
use crate::status;
use std::time::Duration;
use tidemark_store::{EventStore, Position};

/// Waits until the live read model of `projection` reflects every event up to `position`.
/// Returns `false` on timeout, including when the log has not reached `position` yet.
pub(crate) async fn wait_for_position(
    store: &EventStore,
    projection: &dyn Projection,
    position: Position,
    timeout: Duration,
) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    // A position past the head is not reached until the log gets there: wait for the
    // head first (the watch may lag the database, so ask the database before waiting).
    let mut head = store.head_watch();
    while *head.borrow_and_update() < position {
        if store.head_position().await? >= position {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(false),
            _ = head.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let mut pause = Duration::from_millis(2);
    loop {
        if status::partitions_behind(store, projection, position).await? == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits until `projection` has applied everything committed when this is called.
pub(crate) async fn wait_until_caught_up(
    store: &EventStore,
    projection: &dyn Projection,
    timeout: Duration,
) -> Result<bool> {
    let head = store.head_position().await?;
    wait_for_position(store, projection, head, timeout).await
}
