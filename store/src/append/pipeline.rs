//! Group commit: a bounded queue of prepared appends and one writer task that drains it.
//!
//! While the writer waits for a commit (a WAL flush), new requests pile up in the queue; the
//! next transaction takes all of them. Throughput therefore grows with concurrency instead of
//! being capped at one commit per append. Two limits push back, each with a retryable
//! `Overloaded` error having written nothing: a caller whose expected wait exceeds the
//! admission budget is refused at once (see `admission`), and a caller that finds the queue
//! full waits up to a deadline for room.

use super::admission::{self, Admission, DrainRate};
use super::batch::{write_batch, BatchResult};
use super::prepare::PreparedAppend;
use crate::config::PipelineConfig;
use crate::error::{OverloadReason, Result, StoreError};
use crate::heads::Heads;
use crate::model::AppendOutcome;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A request waiting in the queue with the channel its answer goes back on.
pub(crate) struct Pending {
    pub prepared: PreparedAppend,
    pub reply: oneshot::Sender<Result<AppendOutcome>>,
    pub enqueued_at: Instant,
    /// The caller's span (e.g. a GraphQL request's): the batch that writes this request
    /// follows from it, and it records how long the request waited in the queue.
    pub span: tracing::Span,
}

/// The caller's side of the queue.
#[derive(Clone)]
pub(crate) struct AppendQueue {
    sender: mpsc::Sender<Pending>,
    config: PipelineConfig,
    drain_rate: Arc<DrainRate>,
    shutdown: CancellationToken,
}

impl AppendQueue {
    /// Enqueues `prepared` and waits for the writer's answer.
    pub async fn submit(&self, prepared: PreparedAppend) -> Result<AppendOutcome> {
        if self.shutdown.is_cancelled() {
            // Refused at once, even while the writer is still busy draining.
            return Err(StoreError::ShuttingDown);
        }
        if let Admission::Refuse {
            expected_wait,
            retry_after,
        } = admission::admit(&self.drain_rate, self.depth(), self.config.admission_budget)
        {
            metrics::counter!("tidemark_append_overloaded_total").increment(1);
            return Err(StoreError::Overloaded {
                reason: OverloadReason::ExpectedWait {
                    expected_ms: expected_wait.as_millis() as u64,
                    budget_ms: self.config.admission_budget.as_millis() as u64,
                },
                retry_after_ms: retry_after.as_millis() as u64,
            });
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            prepared,
            reply,
            enqueued_at: Instant::now(),
            span: tracing::Span::current(),
        };
        match self.sender.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::ShuttingDown),
            Err(mpsc::error::TrySendError::Full(pending)) => {
                metrics::counter!("tidemark_append_queue_full_total").increment(1);
                match self
                    .sender
                    .send_timeout(pending, self.config.enqueue_deadline)
                    .await
                {
                    Ok(()) => {}
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                        return Err(StoreError::ShuttingDown)
                    }
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                        metrics::counter!("tidemark_append_overloaded_total").increment(1);
                        let waited = self.config.enqueue_deadline;
                        return Err(StoreError::Overloaded {
                            reason: OverloadReason::QueueFull {
                                waited_ms: waited.as_millis() as u64,
                            },
                            retry_after_ms: admission::retry_after_full_queue(waited).as_millis()
                                as u64,
                        });
                    }
                }
            }
        }
        // The writer answers every request it takes, including on shutdown (it drains); a
        // request dropped unanswered was in a batch whose writer failed mid-way.
        answer.await.unwrap_or(Err(StoreError::WriterFailed))
    }

    /// Requests waiting in the queue right now.
    pub fn depth(&self) -> usize {
        // The channel's real size: a configured depth of 0 is rounded up to 1.
        self.sender.max_capacity() - self.sender.capacity()
    }
}

/// Starts the writer task. It stops after `shutdown` is cancelled and every request already
/// in the queue has been written and answered.
pub(crate) fn start(
    pool: deadpool_postgres::Pool,
    config: PipelineConfig,
    heads: Heads,
    shutdown: CancellationToken,
) -> (AppendQueue, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(config.queue_depth.max(1));
    let drain_rate = Arc::new(DrainRate::new(config.max_batch_requests));
    let writer = Writer {
        pool,
        config: config.clone(),
        heads,
        receiver,
        drain_rate: drain_rate.clone(),
    };
    let handle = tokio::spawn(writer.run(shutdown.clone()));
    (
        AppendQueue {
            sender,
            config,
            drain_rate,
            shutdown,
        },
        handle,
    )
}

struct Writer {
    pool: deadpool_postgres::Pool,
    config: PipelineConfig,
    heads: Heads,
    receiver: mpsc::Receiver<Pending>,
    drain_rate: Arc<DrainRate>,
}

impl Writer {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut batch: Vec<Pending> = Vec::with_capacity(self.config.max_batch_requests);
        loop {
            if shutdown.is_cancelled() {
                // Refuse new requests (and release callers waiting for room) even when the
                // queue never runs empty; what is already queued is still drained below.
                self.receiver.close();
            }
            let first = tokio::select! {
                biased;
                next = self.receiver.recv() => next,
                _ = shutdown.cancelled() => {
                    // Refuse new requests, then drain what is already queued.
                    self.receiver.close();
                    self.receiver.recv().await
                }
            };
            let Some(first) = first else { break };
            self.collect_batch(first, &mut batch).await;
            // Supervised: a panic while writing must not end the writer (every later append
            // would be refused as "shutting down"). Whatever was unanswered in the batch may
            // or may not be committed, so it is told so; the loop then goes on.
            let written = AssertUnwindSafe(self.write(&mut batch))
                .catch_unwind()
                .await;
            if let Err(panic) = written {
                metrics::counter!("tidemark_append_writer_panics_total").increment(1);
                tracing::error!(
                    panic = panic_message(&panic),
                    requests = batch.len(),
                    "the append writer panicked; answering its batch as failed and carrying on"
                );
                fail_all(&mut batch, &StoreError::WriterFailed);
            }
        }
        tracing::debug!("append writer stopped; queue drained");
    }

    /// Takes whatever else is queued (up to the limits), waiting at most `max_batch_wait`
    /// for more when the queue runs dry.
    async fn collect_batch(&mut self, first: Pending, batch: &mut Vec<Pending>) {
        let mut events = first.prepared.request.events.len();
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.config.max_batch_wait;
        while batch.len() < self.config.max_batch_requests && events < self.config.max_batch_events
        {
            let next = match self.receiver.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.config.max_batch_wait.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                        Ok(Some(next)) => next,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            events += next.prepared.request.events.len();
            batch.push(next);
        }
    }

    async fn write(&mut self, batch: &mut Vec<Pending>) {
        let started = Instant::now();
        let requests = batch.len();
        metrics::histogram!("tidemark_append_batch_requests").record(requests as f64);
        let events: usize = batch.iter().map(|p| p.prepared.request.events.len()).sum();
        metrics::histogram!("tidemark_append_batch_events").record(events as f64);
        let queue_wait = batch
            .iter()
            .map(|p| started.duration_since(p.enqueued_at))
            .max()
            .unwrap_or_default();
        let span = tracing::info_span!(
            "append_batch",
            requests,
            events,
            queue_wait_ms = queue_wait.as_secs_f64() * 1000.0,
        );
        for pending in batch.iter() {
            span.follows_from(&pending.span);
            pending.span.in_scope(|| {
                tracing::debug!(
                    queue_wait_ms =
                        started.duration_since(pending.enqueued_at).as_secs_f64() * 1000.0,
                    batch_requests = requests,
                    "append taken by the writer"
                )
            });
        }
        let result = self.write_once(batch).instrument(span.clone()).await;
        #[cfg(feature = "fault-injection")]
        if let (Ok(_), Some(stream)) = (&result, &self.config.panic_after_commit_on_stream) {
            if batch
                .iter()
                .any(|p| &p.prepared.request.stream_id == stream)
            {
                panic!("fault injection: the writer panics after committing a batch with {stream}");
            }
        }
        match result {
            Ok(result) => self.answer(batch, result),
            Err(error) if batch.len() > 1 && !is_connection_loss(&error) => {
                // Something in the batch made the whole transaction fail. Write the requests
                // one by one so that only the culprit fails.
                tracing::warn!(%error, requests = batch.len(), "append batch failed; retrying its requests one by one");
                for single in std::mem::take(batch) {
                    let mut one = vec![single];
                    match self.write_once(&one).await {
                        Ok(result) => self.answer(&mut one, result),
                        Err(error) => fail_all(&mut one, &error),
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, requests = batch.len(), "append batch failed");
                fail_all(batch, &error);
            }
        }
        batch.clear();
        let elapsed = started.elapsed();
        self.drain_rate.record_batch(requests, elapsed);
        metrics::histogram!("tidemark_append_batch_seconds").record(elapsed.as_secs_f64());
    }

    async fn write_once(&self, batch: &[Pending]) -> Result<BatchResult> {
        let mut client = self.pool.get().await?;
        // The batch module needs a slice of prepared appends; borrow them in place.
        let prepared: Vec<&PreparedAppend> = batch.iter().map(|p| &p.prepared).collect();
        write_batch(&mut client, &prepared).await
    }

    fn answer(&self, batch: &mut Vec<Pending>, result: BatchResult) {
        if let Some(new_head) = result.new_head {
            // Wake in-process subscribers at once, without waiting for NOTIFY's round trip.
            self.heads.advance(new_head, Some(&result.partition_heads));
        }
        for (pending, answer) in batch.drain(..).zip(result.answers) {
            record_outcome(&answer, pending.enqueued_at);
            // The caller may have given up waiting; its append stands regardless.
            let _ = pending.reply.send(answer);
        }
    }
}

fn record_outcome(answer: &Result<AppendOutcome>, enqueued_at: Instant) {
    match answer {
        Ok(outcome) => {
            let written = outcome.events.iter().filter(|e| !e.duplicate).count();
            metrics::counter!("tidemark_events_appended_total").increment(written as u64);
            metrics::histogram!("tidemark_append_seconds")
                .record(enqueued_at.elapsed().as_secs_f64());
        }
        Err(error) => {
            metrics::counter!("tidemark_append_errors_total", "kind" => error.kind()).increment(1);
        }
    }
}

fn is_connection_loss(error: &StoreError) -> bool {
    match error {
        StoreError::Database { source, .. } => source.is_closed() || source.as_db_error().is_none(),
        StoreError::Unavailable(_) => true,
        // Never written again one by one: an append without event ids would get fresh ids
        // and be stored twice if the batch did commit.
        StoreError::OutcomeUnknown { .. } => true,
        _ => false,
    }
}

fn fail_all(batch: &mut Vec<Pending>, error: &StoreError) {
    for pending in batch.drain(..) {
        record_outcome(&Err(error.clone()), pending.enqueued_at);
        let _ = pending.reply.send(Err(error.clone()));
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
