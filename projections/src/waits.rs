//! Waiting for a projection: until its live read model reflects a position (read-your-writes,
//! the GraphQL `@waitFor` directive), or everything committed so far. Asks the database, so
//! the answer holds whichever processes run the projection's partitions; the progress of
//! this process's lanes ([`LaneProgress`]) wakes the wait as soon as one of them commits,
//! and a short growing pause covers lanes in other processes.

use crate::error::Result;
use crate::lane::LaneProgress;
use crate::projection::Projection;
use crate::status;
use std::time::Duration;
use tidemark_store::{EventStore, Position};
use tokio::sync::watch;

/// Waits until the live read model of `projection` reflects every event up to `position`.
/// Returns `false` on timeout, including when the log has not reached `position` yet.
/// `local_lanes`: the progress of the projection's lanes in this process (may be empty).
pub(crate) async fn wait_for_position(
    store: &EventStore,
    projection: &dyn Projection,
    position: Position,
    timeout: Duration,
    mut local_lanes: Vec<watch::Receiver<LaneProgress>>,
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
        tokio::select! {
            _ = a_local_lane_commits(&mut local_lanes) => {}
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Returns when one of `lanes` publishes new progress; never when there is none left (a
/// lane that ended is dropped from the list, so it cannot wake the caller in a loop).
async fn a_local_lane_commits(lanes: &mut Vec<watch::Receiver<LaneProgress>>) {
    lanes.retain(|lane| lane.has_changed().is_ok());
    if lanes.is_empty() {
        return std::future::pending().await;
    }
    let changes = lanes.iter_mut().map(|lane| Box::pin(lane.changed()));
    let _ = futures::future::select_all(changes).await;
}

/// Waits until `projection` has applied everything committed when this is called.
pub(crate) async fn wait_until_caught_up(
    store: &EventStore,
    projection: &dyn Projection,
    timeout: Duration,
    local_lanes: Vec<watch::Receiver<LaneProgress>>,
) -> Result<bool> {
    let head = store.head_position().await?;
    wait_for_position(store, projection, head, timeout, local_lanes).await
}
