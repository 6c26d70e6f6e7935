//! Catch-up-then-live subscriptions and the head watcher that wakes them.
//!
//! A subscription is one loop: read a page after the last position delivered; when the page
//! comes back short, wait for the head to move (NOTIFY, an in-process append, or the polling
//! tick) and read again. History and live delivery are the same query, so the switch between
//! them has no gap and no duplicate by construction.
//!
//! A subscription needs only a [`Source`] — the pool it reads with and the heads it wakes
//! on — not the store, which hands one to each subscription.
//!
//! The pool may be a streaming replica's. The heads are the primary's (NOTIFY does not reach
//! a standby), so they only say when to read: a read on a replica first reads the replica's
//! own head, and only that head is reported as caught up to. Positions are dense and in
//! commit order on the replica too (it replays commits in order), so a reader there skips
//! nothing; it is only later. While the replica is behind the head announced, the
//! subscription reads again after a short growing pause instead of waiting for the next
//! announcement.

use crate::append::batch::NOTIFY_CHANNEL;
use crate::backoff::Backoff;
use crate::error::{Result, StoreError};
use crate::heads::Heads;
use crate::model::{Position, RecordedEvent};
use crate::read::LogFilter;
use crate::tls::PgTls;
use deadpool_postgres::Pool;
use futures::{Stream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// What a subscription reads from and wakes on.
#[derive(Clone)]
pub(crate) struct Source {
    pub pool: Pool,
    /// Whether `pool` is a streaming replica's (see the module docs): each read then reads
    /// the replica's head first.
    pub replica: bool,
    /// The head as last announced.
    pub head: watch::Receiver<Position>,
    /// Per-partition heads: a subscription to one partition waits on its own.
    pub partitions: watch::Receiver<Arc<[Position]>>,
    /// How long a subscription waits for a wake-up before it reads again anyway.
    pub poll_interval: Duration,
    /// Applied to every page read (see [`crate::hooks`]).
    pub read_hook: Option<Arc<dyn crate::hooks::ReadHook>>,
    /// Decodes binary payloads (see [`crate::hooks`]).
    pub codec: crate::hooks::CodecSlot,
}

/// One read of the log by a subscription.
struct Read {
    events: Vec<RecordedEvent>,
    /// On a replica, its head as read just before the events: every event at or before it
    /// was visible to the read.
    replica_head: Option<Position>,
}

impl Source {
    async fn read_log(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<Read> {
        let client = self.pool.get().await?;
        // Read first, on the same connection: a standby replays in commit order, so the page
        // read afterwards sees every event up to this head.
        let replica_head = match self.replica {
            true => Some(crate::read::head(&client).await?),
            false => None,
        };
        let stored = crate::read::read_log(&client, after, filter, limit).await?;
        drop(client);
        let events =
            crate::hooks::finish_read(&self.codec, self.read_hook.as_ref(), stored).await?;
        Ok(Read {
            events,
            replica_head,
        })
    }
}

/// Where and what to subscribe to.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Deliver events after this position (0: from the beginning).
    pub after: Position,
    pub filter: LogFilter,
    /// Events read per query while catching up.
    pub page_size: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            after: 0,
            filter: LogFilter::default(),
            page_size: 1000,
        }
    }
}

/// One read of a subscription: the events it returned and, when the read reached the end
/// of the log, the position up to which the subscriber has now seen everything.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<RecordedEvent>,
    /// Set when this read came back short: every event at or before this position that
    /// passes the filter has been delivered (in this page or earlier ones).
    pub caught_up_to: Option<Position>,
}

struct PageState {
    /// Read with its pool; its heads are marked seen and waited on.
    source: Source,
    options: SubscribeOptions,
    /// The last `caught_up_to` reported, so idle polls do not repeat it.
    reported: Option<Position>,
    /// Waiting for the head to move before the next read.
    idle: bool,
    /// The head (or the partition's head) as it was before the last read.
    seen: Position,
    /// The next page, already requested while history is being read.
    prefetch: Option<Prefetch>,
    /// The last read was on a replica that had not replayed what was announced: read again
    /// after a pause of `replica_retry` instead of waiting for the next announcement.
    replica_behind: bool,
    replica_retry: Backoff,
    failed: bool,
}

/// The first pause before a subscription reads a replica that was behind again; it doubles
/// up to [`REPLICA_RETRY_MAX`] (or the poll interval, if shorter) while the replica stays
/// behind.
const REPLICA_RETRY_FIRST: Duration = Duration::from_millis(1);
const REPLICA_RETRY_MAX: Duration = Duration::from_millis(100);

/// Pages of events after `options.after` that pass the filter, in position order, forever.
/// Empty pages are yielded only to report progress (`caught_up_to`). The stream ends only
/// after yielding an error.
pub(crate) fn subscribe_pages(
    source: Source,
    options: SubscribeOptions,
) -> impl Stream<Item = Result<Page>> + Send + 'static {
    // A page size of 0 would never come back "short" and would re-query forever.
    let options = SubscribeOptions {
        page_size: options.page_size.max(1),
        ..options
    };
    let replica_retry = Backoff::new(
        REPLICA_RETRY_FIRST.min(source.poll_interval),
        REPLICA_RETRY_MAX.min(source.poll_interval),
    );
    let state = PageState {
        source,
        options,
        reported: None,
        idle: false,
        seen: 0,
        prefetch: None,
        replica_behind: false,
        replica_retry,
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.failed {
            return None;
        }
        match next_page(&mut state).await {
            Ok(page) => Some((Ok(page), state)),
            Err(error) => {
                state.failed = true;
                Some((Err(error), state))
            }
        }
    })
}

/// Events one by one: [`subscribe_pages`] flattened.
pub(crate) fn subscribe(
    source: Source,
    options: SubscribeOptions,
) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
    subscribe_pages(source, options).flat_map(|page| {
        let items: Vec<Result<RecordedEvent>> = match page {
            Ok(page) => page.events.into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error)],
        };
        futures::stream::iter(items)
    })
}

async fn next_page(state: &mut PageState) -> Result<Page> {
    loop {
        // Only a partition the store has gets its own wake-ups; any other filter (including
        // a partition that does not exist, which matches nothing) waits on the head.
        let own_partition = state.options.filter.partition.filter(|p| {
            usize::try_from(*p).is_ok_and(|p| p < state.source.partitions.borrow().len())
        });
        if state.idle && state.replica_behind {
            tokio::time::sleep(state.replica_retry.next_delay()).await;
        } else if let Some(seen) = state.idle.then_some(state.seen) {
            let poll = state.source.poll_interval;
            match own_partition {
                Some(partition) => {
                    wait_for_partition(&mut state.source.partitions, partition, seen, poll).await
                }
                None => wait_for_head(&mut state.source.head, poll).await,
            }
        }
        let (announced, read) = match state.prefetch.take() {
            // The next page, requested while the previous one was being consumed.
            Some(prefetch) if prefetch.after == state.options.after => {
                state.seen = prefetch.seen;
                (prefetch.head_before_read, prefetch.read().await?)
            }
            _ => {
                let (head_before_read, seen) = mark_seen(state, own_partition);
                state.seen = seen;
                let read = state
                    .source
                    .read_log(
                        state.options.after,
                        &state.options.filter,
                        state.options.page_size,
                    )
                    .await?;
                (head_before_read, read)
            }
        };
        let Read {
            events,
            replica_head,
        } = read;
        // On a replica, what the read could see ends at the replica's head, whatever the
        // primary announced (see the module docs).
        let head_before_read = replica_head.unwrap_or(announced);
        state.replica_behind = replica_head.is_some_and(|head| head < state.seen);
        if !state.replica_behind || !events.is_empty() {
            state.replica_retry.reset();
        }
        let short = events.len() < state.options.page_size;
        if let Some(last) = events.last() {
            state.options.after = last.position;
        }
        state.idle = short;
        if !short {
            // More history: request the next page now, so the database works on it while
            // the caller consumes this one.
            let (head_before_read, seen) = mark_seen(state, own_partition);
            let (source, after, filter, limit) = (
                state.source.clone(),
                state.options.after,
                state.options.filter.clone(),
                state.options.page_size,
            );
            state.prefetch = Some(Prefetch {
                after,
                head_before_read,
                seen,
                read: tokio::spawn(async move { source.read_log(after, &filter, limit).await }),
            });
        }
        let caught_up_to = short.then(|| head_before_read.max(state.options.after));
        if events.is_empty() && (caught_up_to.is_none() || caught_up_to == state.reported) {
            continue;
        }
        if caught_up_to.is_some() {
            state.reported = caught_up_to;
        }
        return Ok(Page {
            events,
            caught_up_to,
        });
    }
}

/// Marks the heads as seen *before* a read, so an append that commits while we read still
/// wakes us afterwards. Returns the head and what this subscription waits on (the head, or
/// its partition's head).
fn mark_seen(state: &mut PageState, own_partition: Option<i16>) -> (Position, Position) {
    let head = *state.source.head.borrow_and_update();
    let seen = own_partition.map_or(head, |partition| {
        partition_head(&state.source.partitions.borrow_and_update(), partition)
    });
    (head, seen)
}

/// A page read ahead of the consumer.
struct Prefetch {
    /// The position it reads after.
    after: Position,
    head_before_read: Position,
    seen: Position,
    read: tokio::task::JoinHandle<Result<Read>>,
}

impl Prefetch {
    async fn read(mut self) -> Result<Read> {
        match (&mut self.read).await {
            Ok(result) => result,
            Err(join_error) => Err(StoreError::Unavailable(format!(
                "a read-ahead of the log failed: {join_error}"
            ))),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // A subscription dropped mid-history does not leave its read-ahead running.
        self.read.abort();
    }
}

async fn wait_for_head(head: &mut watch::Receiver<Position>, poll_interval: Duration) {
    let woken = tokio::time::timeout(poll_interval, head.changed()).await;
    if let Ok(Err(_closed)) = woken {
        // A closed watch (the store shut down) returns at once and would never wake us
        // again: degrade to polling instead of spinning on the database.
        tokio::time::sleep(poll_interval).await;
    }
}

fn partition_head(heads: &[Position], partition: i16) -> Position {
    usize::try_from(partition)
        .ok()
        .and_then(|p| heads.get(p).copied())
        .unwrap_or_default()
}

/// Waits until `partition` has events after `seen`, or the poll interval passes.
async fn wait_for_partition(
    heads: &mut watch::Receiver<Arc<[Position]>>,
    partition: i16,
    seen: Position,
    poll_interval: Duration,
) {
    let deadline = tokio::time::Instant::now() + poll_interval;
    loop {
        if partition_head(&heads.borrow_and_update(), partition) > seen {
            return;
        }
        match tokio::time::timeout_at(deadline, heads.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_closed)) => {
                // The store shut down: degrade to polling.
                tokio::time::sleep_until(deadline).await;
                return;
            }
            Err(_elapsed) => return,
        }
    }
}

/// Keeps the heads up to date from NOTIFY on a dedicated connection, reconnecting on failure.
/// Notifications are only hints: subscriptions also poll, so a lost one costs latency only.
/// The reconnect delay starts over once a connection was listening: an outage an hour ago
/// must not make every later reconnect wait the maximum (live delivery would fall back to
/// polling for that long).
pub(crate) async fn watch_head(
    pg_config: tokio_postgres::Config,
    tls: PgTls,
    heads: Heads,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut listening = false;
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = listen(&pg_config, &tls, &heads, &mut listening) => result,
        };
        if listening {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        if let Err(error) = result {
            tracing::warn!(error = %crate::error::describe_postgres_error(&error), "head listener lost its connection; reconnecting in {delay:?}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Listens until the connection ends; sets `listening` once LISTEN took effect.
async fn listen(
    pg_config: &tokio_postgres::Config,
    tls: &PgTls,
    heads: &Heads,
    listening: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = crate::tls::connect(pg_config, tls).await?;
    let driver_heads = heads.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some((head, touched)) = crate::heads::decode(n.payload()) {
                        driver_heads.advance(head, touched.as_deref());
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    // Catch up with anything committed before LISTEN took effect.
    let current: Position = client
        .query_one("SELECT position FROM store_head", &[])
        .await?
        .get(0);
    heads.advance(current, None);
    *listening = true;
    // `client` stays alive (and LISTENing) until the connection ends.
    let ended = driver.await;
    drop(client);
    ended.unwrap_or(Ok(()))
}
