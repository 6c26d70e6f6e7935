//! One read of the log for the live lanes of a projection that read every partition
//! (grouped by key, or shuffled) in this process.
//!
//! Such lanes each need the whole log (filtered by the selector) and keep their share. Read
//! separately, sixteen lanes read and decode every event sixteen times. A [`Feed`] reads it
//! once and hands each joined lane the events it applies, in log order, together with how
//! far the read went (so the lane can move its checkpoint past the other lanes' events).
//!
//! Lanes join with their checkpoint. A lane that joins behind what the feed has already
//! read makes the feed read again from there: the other lanes then receive events they
//! already have, and drop them (a lane applies only events after its checkpoint), so every
//! lane still sees every one of its events once, in order, with no gap. The feed waits for
//! its slowest lane (bounded channels: backpressure, not buffering), and ends when its last
//! lane has gone.

use super::{Fetched, LanePage};
use crate::spec::LaneSpec;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tidemark_store::{EventStore, Page, Position, SubscribeOptions};
use tokio::sync::mpsc;

/// A lane asking to be fed: its partition, its checkpoint, where its pages go.
struct Join {
    partition: i16,
    after: Position,
    pages: mpsc::Sender<Fetched>,
}

/// The running feeds of this process, by projection and target: one per lane group.
#[derive(Clone, Default)]
pub(crate) struct Feeds {
    running: Arc<Mutex<HashMap<String, mpsc::Sender<Join>>>>,
}

impl Feeds {
    /// Feeds the lane of `spec` from its group's feed, starting one if none runs; its
    /// pages (the events it applies, from `after` on) arrive on the returned channel.
    pub(crate) fn join(
        &self,
        store: &EventStore,
        spec: &LaneSpec,
        after: Position,
        page_size: usize,
        capacity: usize,
    ) -> mpsc::Receiver<Fetched> {
        let (pages, receiver) = mpsc::channel(capacity.max(1));
        let join = Join {
            partition: spec.partition.unwrap_or(0),
            after,
            pages,
        };
        let group = format!("{}/{}", spec.projection.name(), spec.target.as_sql());
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let join = match running.get(&group).cloned() {
            None => join,
            Some(feed) => match feed.try_send(join) {
                Ok(()) => return receiver,
                // A feed that is ending (it had no lane left) refuses joins: start another.
                Err(mpsc::error::TrySendError::Closed(join)) => join,
                Err(mpsc::error::TrySendError::Full(join)) => {
                    // Joins are rare (lane starts) and the feed takes them between pages:
                    // wait for room without holding the lock. If the feed ends meanwhile,
                    // the lane's channel closes and the lane restarts and joins again.
                    tokio::spawn(async move {
                        let _ = feed.send(join).await;
                    });
                    return receiver;
                }
            },
        };
        let (joins_tx, joins) = mpsc::channel(JOIN_QUEUE);
        running.insert(group.clone(), joins_tx.clone());
        drop(running);
        let feed = Feed {
            store: store.clone(),
            spec: spec.clone(),
            page_size,
            joins,
            first_after: join.after,
            lanes: vec![Member::from(join)],
        };
        let feeds = self.clone();
        tokio::spawn(async move {
            feed.run().await;
            let mut running = feeds.running.lock().unwrap_or_else(|e| e.into_inner());
            if running
                .get(&group)
                .is_some_and(|current| current.same_channel(&joins_tx))
            {
                running.remove(&group);
            }
        });
        receiver
    }
}

/// Lanes waiting to join a feed (one per partition at most, in practice).
const JOIN_QUEUE: usize = 64;

/// A joined lane as the feed knows it.
struct Member {
    partition: i16,
    pages: mpsc::Sender<Fetched>,
}

impl From<Join> for Member {
    fn from(join: Join) -> Self {
        Member {
            partition: join.partition,
            pages: join.pages,
        }
    }
}

struct Feed {
    store: EventStore,
    /// Any lane of the group: the filter and the routing are the group's.
    spec: LaneSpec,
    page_size: usize,
    joins: mpsc::Receiver<Join>,
    lanes: Vec<Member>,
    /// Where the first lane starts.
    first_after: Position,
}

impl Feed {
    /// Reads and hands out pages until no lane is left, reading again from an earlier
    /// position whenever a lane joins behind what was already handed out.
    async fn run(mut self) {
        let mut through = self.first_after;
        let mut pages = self.read_from(through);
        loop {
            if self.lanes.is_empty() {
                // Refuse joins from now on (a joiner then starts a new feed), but serve
                // any that arrived before.
                self.joins.close();
                let Some(join) = self.joins.recv().await else {
                    return;
                };
                if join.after != through {
                    through = join.after;
                    pages = self.read_from(through);
                }
                self.lanes.push(join.into());
                continue;
            }
            tokio::select! {
                biased;
                join = self.joins.recv() => {
                    let Some(join) = join else { continue };
                    if join.after < through {
                        // The others drop what they already have.
                        through = join.after;
                        pages = self.read_from(through);
                    }
                    self.lanes.push(join.into());
                }
                _ = a_lane_left(&self.lanes) => {
                    self.lanes.retain(|lane| !lane.pages.is_closed());
                }
                page = pages.next() => match page {
                    Some(Ok(page)) => {
                        if let Some(last) = page.events.last() {
                            through = last.position;
                        }
                        self.hand_out(page).await;
                    }
                    Some(Err(error)) => {
                        // Ending the feed ends its lanes' reads: each restarts from its
                        // checkpoint after a pause, as after any read error.
                        tracing::warn!(projection = self.spec.projection.name(), %error, "the shared read of a keyed projection failed; its lanes restart from their checkpoints");
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    fn read_from(
        &self,
        after: Position,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = tidemark_store::Result<Page>> + Send>> {
        Box::pin(self.store.subscribe_pages(SubscribeOptions {
            after,
            filter: self.spec.read_filter(),
            page_size: self.page_size,
        }))
    }

    /// Gives each lane its events of `page`. A lane that has gone fails the send at once,
    /// and is dropped at the next turn; the feed needs no shutdown signal of its own: when
    /// the engine stops, its lanes go, and then the feed.
    async fn hand_out(&mut self, page: Page) {
        let read_through = page.events.last().map(|e| e.position);
        let mut by_lane: HashMap<i16, Vec<tidemark_store::RecordedEvent>> = HashMap::new();
        for event in page.events {
            by_lane
                .entry(self.spec.lane_of(&event))
                .or_default()
                .push(event);
        }
        for i in 0..self.lanes.len() {
            let partition = self.lanes[i].partition;
            // Two lanes of one partition (one ending, its successor starting) both get it.
            let shared = self.lanes[i + 1..]
                .iter()
                .any(|later| later.partition == partition);
            let events = if shared {
                by_lane.get(&partition).cloned().unwrap_or_default()
            } else {
                by_lane.remove(&partition).unwrap_or_default()
            };
            let lane_page = LanePage {
                events,
                read_through,
                caught_up_to: page.caught_up_to,
            };
            let _ = self.lanes[i].pages.send(Fetched::Page(lane_page)).await;
        }
    }
}

/// Returns when one of `lanes` has stopped listening.
async fn a_lane_left(lanes: &[Member]) {
    let closed = lanes.iter().map(|lane| Box::pin(lane.pages.closed()));
    futures::future::select_all(closed).await;
}
