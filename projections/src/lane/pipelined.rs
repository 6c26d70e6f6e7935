//! The lane of a pipelined handler ([`crate::Pipeline`]): pages are sent ahead, up to
//! [`crate::EngineConfig::pages_in_flight`], and a page's checkpoint commits once it and
//! every page before it are acknowledged, in log order — so the destination works on page
//! N+1 while page N's acknowledgements and checkpoint commit are pending.
//!
//! Failures keep the lane's guarantees:
//! - the checkpoint never passes a page that is not acknowledged, nor one after it: pages
//!   commit strictly in order, each only after its own acknowledgement;
//! - when a page fails (its send or its acknowledgement), the pipeline and every later
//!   page's acknowledgement are dropped — nothing after the failed page is committed, even
//!   when acknowledged — and the pages are sent again from the checkpoint: after a pause for a
//!   transient error (the lane restarts), or one by one in the checkpoint's transaction for
//!   any other error, isolating and parking the bad event as the lane always does;
//! - the pipeline itself must keep later pages from taking effect out of order when an
//!   earlier one fails (see [`crate::Pipeline`]).
//!
//! On shutdown the pages in flight are abandoned, not committed: the next run sends them
//! again (a destination that drops repeats by event id keeps them once).

use super::{Fetched, Handling, Lane, LaneExit, Next, Prepared, Rate};
use crate::error::{EngineError, Result};
use crate::projection::{Acknowledgement, Pipeline};
use crate::ProjectionError;
use std::collections::VecDeque;
use tidemark_store::Position;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a pipelined run starts from (the rest of the lane's run is set up by `run_once`).
pub(super) struct Run<'a> {
    pub checkpoint: Position,
    pub pages: &'a mut mpsc::Receiver<Fetched>,
    pub parked_ahead: &'a [Position],
    pub rate: &'a mut Rate,
    pub shutdown: &'a CancellationToken,
}

/// A page sent and not committed yet.
struct InFlight {
    page: Prepared,
    /// `None` for a page with none of this lane's events: nothing was sent.
    ack: Option<Acknowledgement>,
}

/// What woke the loop.
enum Woken {
    Shutdown,
    /// The oldest page in flight is acknowledged, or failed.
    Acknowledged(Result<(), ProjectionError>),
    Fetched(Option<Fetched>),
}

/// Resolves with the oldest page's acknowledgement (at once for a page without events).
async fn oldest(in_flight: &mut VecDeque<InFlight>) -> Result<(), ProjectionError> {
    match in_flight.front_mut().and_then(|page| page.ack.as_mut()) {
        Some(ack) => ack.await,
        None => Ok(()),
    }
}

impl Lane {
    /// Runs the lane with `pipeline` until cancelled, fenced, stopped by a poison event, or
    /// past `until`; a transient failure of a page returns its error (the lane restarts from
    /// its checkpoint).
    pub(super) async fn run_pipelined(
        &self,
        run: Run<'_>,
        mut pipeline: Box<dyn Pipeline>,
    ) -> Result<LaneExit> {
        let Run {
            mut checkpoint,
            pages,
            parked_ahead,
            rate,
            shutdown,
        } = run;
        let depth = self.config.pages_in_flight.max(1);
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(depth);
        // The last position sent (or read past): a shared read may hand events out again.
        let mut sent_through = checkpoint;
        // A page failed to send: send nothing after it; it fails when it is the oldest.
        let mut broken = false;
        loop {
            let waiting = !in_flight.is_empty();
            let room = !broken && in_flight.len() < depth;
            let woken = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Woken::Shutdown,
                acked = oldest(&mut in_flight), if waiting => Woken::Acknowledged(acked),
                fetched = pages.recv(), if room => Woken::Fetched(fetched),
            };
            match woken {
                Woken::Shutdown => return Ok(LaneExit::Shutdown),
                Woken::Acknowledged(Ok(())) => {
                    let done = in_flight.pop_front().expect("the acknowledged page");
                    let next = self
                        .apply_prepared(
                            checkpoint,
                            &done.page,
                            Handling::Acknowledged,
                            parked_ahead,
                            rate,
                            shutdown,
                        )
                        .await?;
                    match next {
                        Next::Continue(next) => checkpoint = next,
                        Next::Exit(exit) => return Ok(exit),
                    }
                }
                Woken::Acknowledged(Err(error)) => {
                    let first = in_flight
                        .front()
                        .and_then(|page| page.page.events.first())
                        .map(|e| e.position);
                    // Later pages are never committed after a failed one: drop them (and the
                    // pipeline) before anything else.
                    let abandoned: Vec<Prepared> =
                        in_flight.drain(..).map(|flight| flight.page).collect();
                    drop(pipeline);
                    if error.is_transient() {
                        return Err(EngineError::Projection {
                            projection: self.spec.projection.name().to_string(),
                            phase: "awaiting a pipelined page's acknowledgement",
                            position: checkpoint,
                            source: error,
                        });
                    }
                    tracing::warn!(lane = %self.spec.describe(), %error, first, pages = abandoned.len(), "a pipelined page failed; handling it and the pages after it one by one");
                    for page in &abandoned {
                        let next = self
                            .apply_prepared(
                                checkpoint,
                                page,
                                Handling::InTransaction,
                                parked_ahead,
                                rate,
                                shutdown,
                            )
                            .await?;
                        match next {
                            Next::Continue(next) => checkpoint = next,
                            Next::Exit(exit) => return Ok(exit),
                        }
                    }
                    sent_through = checkpoint;
                    pipeline = self.pipeline().ok_or_else(|| {
                        EngineError::Unavailable("the handler no longer offers a pipeline".into())
                    })?;
                    broken = false;
                }
                Woken::Fetched(Some(Fetched::Page(page))) => {
                    if self.fence.is_lost() {
                        return Ok(LaneExit::Fenced);
                    }
                    let page = self.prepare(page, sent_through);
                    sent_through = page
                        .events
                        .last()
                        .map(|e| e.position)
                        .into_iter()
                        .chain(page.read_through)
                        .fold(sent_through, Position::max);
                    let ack = if page.events.is_empty() {
                        None
                    } else {
                        match pipeline.send(&page.events).await {
                            Ok(ack) => Some(ack),
                            Err(error) => {
                                broken = true;
                                let failed: Acknowledgement =
                                    Box::pin(futures::future::ready(Err(error)));
                                Some(failed)
                            }
                        }
                    };
                    in_flight.push_back(InFlight { page, ack });
                }
                Woken::Fetched(Some(Fetched::Failed(error))) => return Err(error),
                Woken::Fetched(None) => {
                    return Err(EngineError::Unavailable("the event fetcher stopped".into()))
                }
            }
        }
    }
}
