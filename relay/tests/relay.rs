//! The relay against a real `nats-server -js` (started by the test on a free port, see
//! `tidemark_testkit::nats`) and a real PostgreSQL: what a consumer of the JetStream stream
//! reads is the log — every event once, in log order, with the right subject and headers —
//! when the log spans many streams, when two relays run at once (one publishes, under the
//! lease; the other takes over when it stops), and when NATS goes away and comes back (the
//! checkpoint never passes an unacknowledged event). The kill -9 of a relay process is
//! tested with the real binary in `api/tests/relay.rs`.

use async_trait::async_trait;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_projections::EngineConfig;
use tidemark_relay::{
    subject, Acknowledgements, JetStreamConfig, JetStreamSink, Relay, RelayConfig, Sink, SinkError,
    StartFrom,
};
use tidemark_store::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreConfig,
};
use tidemark_testkit::nats::{read_stream, NatsServer, StoredMessage};
use tidemark_testkit::{read_all, wait_until, TestDatabase};

/// How long a test waits for something that should happen within seconds.
const DEADLINE: Duration = Duration::from_secs(60);

const STREAM: &str = "EVENTS";
const PREFIX: &str = "shop.events";

async fn open_store(db: &TestDatabase) -> EventStore {
    EventStore::open(
        db.pg_config(),
        StoreConfig {
            migrations: tidemark_projections::migrations(),
            poll_interval: Duration::from_millis(50),
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the store opens on a fresh test database")
}

fn sink_config(nats: &NatsServer) -> JetStreamConfig {
    JetStreamConfig {
        url: nats.url(),
        stream: STREAM.into(),
        subject_prefix: PREFIX.into(),
        ack_timeout: Duration::from_secs(2),
        ..JetStreamConfig::default()
    }
}

/// Small batches (many pipelined batches per test), fast retries, short leases.
fn relay_config() -> RelayConfig {
    RelayConfig {
        engine: EngineConfig {
            batch_size: 64,
            retry_base: Duration::from_millis(20),
            retry_max: Duration::from_millis(300),
            lease_ttl: Duration::from_millis(1500),
            worker_timeout: Duration::from_millis(1500),
            ..EngineConfig::default()
        },
        metrics_every: Duration::from_millis(200),
        ..RelayConfig::default()
    }
}

/// Streams whose categories and types need escaping in a subject, and plain ones.
const STREAMS: &[(&str, &str)] = &[
    ("account", "MoneyDeposited"),
    ("order items", "Item.Added"),
    ("inventory*", "Stock>Moved"),
    ("café", "Commandé"),
];

/// Appends `count` events spread over many streams (interleaved), one to three per append.
async fn append_events(store: &EventStore, count: usize, seed: usize) {
    let mut written = 0;
    let mut i = seed;
    while written < count {
        let (category, event_type) = STREAMS[i % STREAMS.len()];
        let stream = format!("{category}-{}", i % 13);
        let n = (1 + i % 3).min(count - written);
        let events = (0..n)
            .map(|k| {
                let mut event =
                    NewEvent::new(event_type, json!({ "n": written + k, "seed": seed }));
                if k == 0 {
                    event.metadata = json!({ "actor": "test\nline" });
                }
                event
            })
            .collect();
        store
            .append(AppendRequest::new(stream, ExpectedVersion::Any, events))
            .await
            .expect("append");
        written += n;
        i += 7;
    }
}

/// Asserts the stream holds exactly the log: each event once, in log order, with its
/// subject, headers and payload.
fn assert_stream_is_the_log(messages: &[StoredMessage], log: &[RecordedEvent]) {
    let ids: Vec<String> = messages
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").cloned().unwrap_or_default())
        .collect();
    let expected: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        ids.len(),
        expected.len(),
        "the stream holds {} messages, the log {} events",
        ids.len(),
        expected.len()
    );
    assert_eq!(
        ids, expected,
        "the stream is not the log, event for event in order"
    );
    for (message, event) in messages.iter().zip(log) {
        let header = |name: &str| message.headers.get(name).cloned().unwrap_or_default();
        assert_eq!(
            message.subject,
            subject::subject(PREFIX, event.category(), &event.event_type)
        );
        assert_eq!(header("Tidemark-Position"), event.position.to_string());
        assert_eq!(
            header("Tidemark-Stream-Id"),
            subject::header_value(&event.stream_id)
        );
        assert_eq!(
            header("Tidemark-Stream-Version"),
            event.stream_version.to_string()
        );
        assert_eq!(
            header("Tidemark-Event-Type"),
            subject::header_value(&event.event_type)
        );
        let payload: serde_json::Value =
            serde_json::from_slice(&message.payload).expect("a JSON payload");
        assert_eq!(payload, event.payload);
    }
}

/// Waits until the relay's checkpoint is at the head of the log.
async fn caught_up(relay: &Relay, store: &EventStore) {
    let head = store.head_position().await.expect("head");
    wait_until(
        "the relay reaches the head of the log",
        DEADLINE,
        || async {
            relay
                .engine()
                .lowest_checkpoint(relay.name())
                .await
                .unwrap_or(0)
                >= head
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_event_of_many_streams_in_log_order_with_subjects_and_headers() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_events(&store, 500, 1).await;

    let sink = JetStreamSink::connect(sink_config(&nats))
        .await
        .expect("sink");
    let relay = Relay::start(store.clone(), Arc::new(sink), relay_config())
        .await
        .expect("relay");
    caught_up(&relay, &store).await;
    // Live tail: events appended while the relay runs follow.
    append_events(&store, 150, 2).await;
    caught_up(&relay, &store).await;
    assert_eq!(relay.lag_events().await.expect("lag"), 0);

    let log = read_all(&store).await;
    let messages = read_stream(&nats.url(), STREAM, log.len() as u64, DEADLINE).await;
    assert_stream_is_the_log(&messages, &log);
    assert!(
        messages[0].headers.contains_key("Tidemark-Metadata"),
        "metadata travels in a header"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_starts_at_the_end_skips_the_events_before() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_events(&store, 40, 3).await;
    let before = read_all(&store).await.len();

    let sink = JetStreamSink::connect(sink_config(&nats))
        .await
        .expect("sink");
    let config = RelayConfig {
        from: StartFrom::End,
        ..relay_config()
    };
    let relay = Relay::start(store.clone(), Arc::new(sink), config)
        .await
        .expect("relay");
    append_events(&store, 30, 4).await;
    caught_up(&relay, &store).await;
    let log = read_all(&store).await;
    let messages = read_stream(&nats.url(), STREAM, 30, DEADLINE).await;
    assert_stream_is_the_log(&messages, &log[before..]);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_relays_one_publishes_and_the_other_takes_over_when_it_stops() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_events(&store, 300, 5).await;

    let first = Relay::start(
        store.clone(),
        Arc::new(
            JetStreamSink::connect(sink_config(&nats))
                .await
                .expect("sink"),
        ),
        relay_config(),
    )
    .await
    .expect("first relay");
    let second = Relay::start(
        store.clone(),
        Arc::new(
            JetStreamSink::connect(sink_config(&nats))
                .await
                .expect("sink"),
        ),
        relay_config(),
    )
    .await
    .expect("second relay");
    let running = |relay: &Relay| !relay.engine().local_progress(relay.name()).is_empty();
    wait_until(
        "one of the relays runs the relay lane",
        DEADLINE,
        || async { running(&first) || running(&second) },
    )
    .await;
    append_events(&store, 200, 6).await;
    caught_up(&first, &store).await;
    assert!(
        running(&first) != running(&second),
        "exactly one relay runs the lane (first: {}, second: {})",
        running(&first),
        running(&second)
    );

    // The one relaying stops; the other takes over and relays what follows.
    let (owner, other) = if running(&first) {
        (first, second)
    } else {
        (second, first)
    };
    owner.shutdown().await;
    append_events(&store, 200, 7).await;
    caught_up(&other, &store).await;
    assert!(running(&other), "the other relay took the lane over");

    let log = read_all(&store).await;
    let messages = read_stream(&nats.url(), STREAM, log.len() as u64, DEADLINE).await;
    assert_stream_is_the_log(&messages, &log);
    other.shutdown().await;
}

/// A [`JetStreamSink`] that counts the batches that were not acknowledged.
struct CountingSink {
    inner: JetStreamSink,
    failures: Arc<AtomicUsize>,
}

#[async_trait]
impl Sink for CountingSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn send_batch(
        &self,
        events: &[RecordedEvent],
        previous: Option<&RecordedEvent>,
    ) -> Result<Acknowledgements, SinkError> {
        let failures = self.failures.clone();
        let count = move || {
            failures.fetch_add(1, Ordering::SeqCst);
        };
        match self.inner.send_batch(events, previous).await {
            Ok(acks) => Ok(Box::pin(async move {
                let acked = acks.await;
                if acked.is_err() {
                    count();
                }
                acked
            })),
            Err(error) => {
                count();
                Err(error)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nats_is_down_the_checkpoint_stays_and_every_event_arrives_once_it_is_back() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_events(&store, 200, 8).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let sink = CountingSink {
        inner: JetStreamSink::connect(sink_config(&nats))
            .await
            .expect("sink"),
        failures: failures.clone(),
    };
    let relay = Relay::start(store.clone(), Arc::new(sink), relay_config())
        .await
        .expect("relay");
    caught_up(&relay, &store).await;
    let acknowledged: Position = store.head_position().await.expect("head");

    nats.stop().await;
    append_events(&store, 300, 9).await;
    wait_until(
        "the relay fails to publish a few times",
        DEADLINE,
        || async { failures.load(Ordering::SeqCst) >= 3 },
    )
    .await;
    assert_eq!(
        relay
            .engine()
            .lowest_checkpoint(relay.name())
            .await
            .expect("checkpoint"),
        acknowledged,
        "the checkpoint moved past events NATS never acknowledged"
    );

    nats.restart().await;
    caught_up(&relay, &store).await;
    let log = read_all(&store).await;
    let messages = read_stream(&nats.url(), STREAM, log.len() as u64, DEADLINE).await;
    assert_stream_is_the_log(&messages, &log);
    relay.shutdown().await;
}

/// The order check the pipelined publishes rely on, against the real server: a publish
/// that follows a lost one is refused (it names the previous event as the last message, and
/// the stream's last is another), and re-publishing the whole batch fills the gap in order
/// (the events already stored are dropped as duplicates before the check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_after_a_lost_one_is_refused_and_the_retried_batch_fills_the_gap_in_order() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_events(&store, 8, 10).await;
    let log = read_all(&store).await;
    let sink = JetStreamSink::connect(sink_config(&nats))
        .await
        .expect("sink");
    sink.publish_batch(&log[..3])
        .await
        .expect("the first batch");

    // Of a pipelined batch log[3..8], log[3] and log[4] were lost with the connection and
    // log[5] arrives after the reconnect, naming log[4] as the last message.
    let jetstream = async_nats::jetstream::new(sink.client().clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        log[5].event_id.to_string().as_str(),
    );
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID,
        log[4].event_id.to_string().as_str(),
    );
    let subject = subject::subject(PREFIX, log[5].category(), &log[5].event_type);
    let refused = jetstream
        .publish_with_headers(subject, headers, log[5].payload.to_string().into())
        .await
        .expect("sent")
        .await;
    assert!(
        refused.is_err(),
        "a publish after a gap must be refused, got {refused:?}"
    );

    // The lane retries the batch from its checkpoint: everything arrives once, in order.
    sink.publish_batch(&log).await.expect("the retried batch");
    let messages = read_stream(&nats.url(), STREAM, log.len() as u64, DEADLINE).await;
    assert_stream_is_the_log(&messages, &log);
}

/// A [`JetStreamSink`] that loses two events in the middle of one batch, as a dropped
/// connection would (the events after them still arrive, chained to the lost ones), and
/// reports that batch failed only once the relay has sent the batch after it.
struct LossySink {
    inner: JetStreamSink,
    batches: AtomicUsize,
    /// The broken batch's acknowledgements are pending.
    broken_pending: Arc<AtomicBool>,
    /// The batch after the broken one is answered.
    next_done: Arc<tokio::sync::Notify>,
    /// The batch after the broken one was sent while the broken one was pending.
    overlapped: Arc<AtomicBool>,
    /// JetStream refused the broken batch's events after the gap.
    refused_after_gap: Arc<AtomicBool>,
    /// JetStream refused the batch sent after the broken one (its first event names the
    /// broken batch's last as the previous message).
    next_refused: Arc<AtomicBool>,
}

/// The batch (counted from 0) that loses two events.
const BROKEN: usize = 2;

impl LossySink {
    fn new(inner: JetStreamSink) -> Self {
        LossySink {
            inner,
            batches: AtomicUsize::new(0),
            broken_pending: Arc::default(),
            next_done: Arc::default(),
            overlapped: Arc::default(),
            refused_after_gap: Arc::default(),
            next_refused: Arc::default(),
        }
    }
}

#[async_trait]
impl Sink for LossySink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn send_batch(
        &self,
        events: &[RecordedEvent],
        previous: Option<&RecordedEvent>,
    ) -> Result<Acknowledgements, SinkError> {
        let batch = self.batches.fetch_add(1, Ordering::SeqCst);
        if batch == BROKEN {
            assert!(events.len() > 4, "batches of more than four events");
            let kept = self.inner.send_batch(&events[..2], previous).await?;
            let after_gap = self
                .inner
                .send_batch(&events[4..], Some(&events[3]))
                .await?;
            self.broken_pending.store(true, Ordering::SeqCst);
            let (pending, next_done, refused) = (
                self.broken_pending.clone(),
                self.next_done.clone(),
                self.refused_after_gap.clone(),
            );
            return Ok(Box::pin(async move {
                // Fails once the next batch is sent and answered. The timeout is a guard, not
                // a synchronisation: a relay that does not pipeline never sends the next
                // batch, and the test then fails on `overlapped`.
                let _ = tokio::time::timeout(Duration::from_secs(20), next_done.notified()).await;
                kept.await?;
                let after_gap = after_gap.await;
                refused.store(after_gap.is_err(), Ordering::SeqCst);
                pending.store(false, Ordering::SeqCst);
                Err(SinkError::unavailable("two events of the batch were lost"))
            }));
        }
        let acks = self.inner.send_batch(events, previous).await?;
        if batch == BROKEN + 1 {
            self.overlapped
                .store(self.broken_pending.load(Ordering::SeqCst), Ordering::SeqCst);
            // Awaited here whether or not the relay still awaits them (it drops them once
            // the broken batch fails).
            let (refused, done) = (self.next_refused.clone(), self.next_done.clone());
            let (answer, answered) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let acked = acks.await;
                refused.store(acked.is_err(), Ordering::SeqCst);
                done.notify_one();
                let _ = answer.send(acked);
            });
            return Ok(Box::pin(async move {
                answered
                    .await
                    .unwrap_or_else(|_| Err(SinkError::unavailable("the watcher ended")))
            }));
        }
        Ok(acks)
    }
}

/// Pipelining across batches cannot reorder, skip or duplicate: batch N loses two events
/// while batch N+1 is already sent; JetStream refuses what follows the gap — in batch N and
/// in batch N+1, whose first event names N's last as the previous message — the relay
/// commits nothing past N-1, resends from there, and the stream is the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_while_the_next_is_in_flight_leaves_no_gap_reordering_or_duplicate() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_events(&store, 500, 11).await;
    let sink = Arc::new(LossySink::new(
        JetStreamSink::connect(sink_config(&nats))
            .await
            .expect("sink"),
    ));
    let relay = Relay::start(store.clone(), sink.clone(), relay_config())
        .await
        .expect("relay");
    caught_up(&relay, &store).await;

    assert!(
        sink.overlapped.load(Ordering::SeqCst),
        "the batch after the broken one was sent while the broken one was pending"
    );
    assert!(
        sink.refused_after_gap.load(Ordering::SeqCst),
        "JetStream refused the events after the gap"
    );
    assert!(
        sink.next_refused.load(Ordering::SeqCst),
        "JetStream refused the next batch: it is chained to the broken one"
    );
    assert!(
        sink.batches.load(Ordering::SeqCst) > BROKEN + 2,
        "batches were resent"
    );
    let log = read_all(&store).await;
    let messages = read_stream(&nats.url(), STREAM, log.len() as u64, DEADLINE).await;
    assert_stream_is_the_log(&messages, &log);
    relay.shutdown().await;
}
