//! Catch-up-then-live subscriptions and the head watcher that wakes them.
//!
//! A subscription is one loop: read a page after the last position delivered; when the page
//! comes back short, wait for the head to move (NOTIFY, an in-process append, or the polling
//! tick) and read again. History and live delivery are the same query, so the switch between
//! them has no gap and no duplicate by construction.

use crate::append::batch::NOTIFY_CHANNEL;
use crate::error::Result;
use crate::model::{Position, RecordedEvent};
use crate::read::LogFilter;
use crate::store::EventStore;
use futures::{Stream, StreamExt};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

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

struct State {
    store: EventStore,
    options: SubscribeOptions,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<Position>,
    failed: bool,
}

/// Events after `options.after` that pass the filter, in position order, forever.
/// The stream ends only after yielding an error.
pub(crate) fn subscribe(
    store: EventStore,
    options: SubscribeOptions,
) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
    let head = store.head_watch();
    let state = State {
        store,
        options,
        buffer: VecDeque::new(),
        head,
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.failed {
            return None;
        }
        match next_event(&mut state).await {
            Ok(event) => Some((Ok(event), state)),
            Err(error) => {
                state.failed = true;
                Some((Err(error), state))
            }
        }
    })
}

async fn next_event(state: &mut State) -> Result<RecordedEvent> {
    loop {
        if let Some(event) = state.buffer.pop_front() {
            state.options.after = event.position;
            return Ok(event);
        }
        // Mark the current head as seen *before* reading, so an append that commits while we
        // read still wakes us afterwards.
        state.head.borrow_and_update();
        let page = state
            .store
            .read_log(
                state.options.after,
                &state.options.filter,
                state.options.page_size,
            )
            .await?;
        let short = page.len() < state.options.page_size;
        state.buffer.extend(page);
        if short && state.buffer.is_empty() {
            wait_for_head(&mut state.head, state.store.poll_interval()).await;
        }
    }
}

async fn wait_for_head(head: &mut watch::Receiver<Position>, poll_interval: Duration) {
    // A closed watch (store dropped) degrades to polling.
    let _ = tokio::time::timeout(poll_interval, head.changed()).await;
}

/// Keeps `head` up to date from NOTIFY on a dedicated connection, reconnecting on failure.
/// Notifications are only hints: subscriptions also poll, so a lost one costs latency only.
pub(crate) async fn watch_head(
    pg_config: tokio_postgres::Config,
    head: watch::Sender<Position>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = listen(&pg_config, &head) => result,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "head listener lost its connection; reconnecting in {:?}", backoff);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn advance(head: &watch::Sender<Position>, position: Position) {
    head.send_if_modified(|current| {
        let advanced = position > *current;
        if advanced {
            *current = position;
        }
        advanced
    });
}

async fn listen(
    pg_config: &tokio_postgres::Config,
    head: &watch::Sender<Position>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = pg_config.connect(tokio_postgres::NoTls).await?;
    let (notifications_tx, mut notifications) = tokio::sync::mpsc::channel::<Position>(64);
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Ok(position) = n.payload().parse::<Position>() {
                        // Only the newest head matters; dropping a hint when full is harmless.
                        let _ = notifications_tx.try_send(position);
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
    advance(head, current);
    while let Some(position) = notifications.recv().await {
        advance(head, position);
    }
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
