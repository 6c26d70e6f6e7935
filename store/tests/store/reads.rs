//! Reads (docs/design.md §2): what is appended reads back unchanged; a stream pages forwards and
//! backwards from any version; the log pages by position after a checkpoint; category,
//! event-type and partition filters return exactly the matching events.

use crate::common;

use common::{open_store, read_all, read_all_filtered};
use serde_json::json;
use tidemark_store::hashing::{content_hash, partition_of};
use tidemark_store::{
    Direction, EventStore, ExpectedVersion, LogFilter, NewEvent, Position, RecordedEvent,
    StoreConfig, StreamVersion,
};
use tidemark_testkit::TestDatabase;
use uuid::Uuid;

const PARTITIONS: u16 = 4;

/// Streams of the test log with their categories, written out by hand (not computed with
/// the store's own `category_of`). "orderline" shares a prefix with "order" but is another
/// category; "order" and "user" have no `-` and are their own category.
const STREAMS: [(&str, &str); 7] = [
    ("order-1", "order"),
    ("order-2", "order"),
    ("order", "order"),
    ("orderline-1", "orderline"),
    ("invoice-1", "invoice"),
    ("user", "user"),
    ("a-b-c", "a"),
];
const TYPES: [&str; 3] = ["Created", "Updated", "Deleted"];

/// An appended event as the test knows it.
struct Appended {
    stream: &'static str,
    category: &'static str,
    event: NewEvent,
    event_id: Uuid,
}

/// Appends a log with every stream, type and partition represented. Returns what was
/// appended, in log order.
async fn build_log(store: &EventStore) -> Vec<Appended> {
    let mut appended = Vec::new();
    for n in 0..70usize {
        let (stream, category) = STREAMS[n % STREAMS.len()];
        let events: Vec<NewEvent> = (0..1 + n % 2)
            .map(|k| {
                NewEvent::new(TYPES[(n + k) % TYPES.len()], json!({ "n": n, "k": k }))
                    .with_metadata(json!({ "correlation_id": format!("c-{n}") }))
                    .with_schema_version(1 + (n % 3) as i32)
            })
            .collect();
        let outcome = common::append_ok(store, stream, ExpectedVersion::Any, events.clone()).await;
        for (event, written) in events.into_iter().zip(&outcome.events) {
            appended.push(Appended {
                stream,
                category,
                event,
                event_id: written.event_id,
            });
        }
    }
    appended
}

async fn store_with_log(db: &TestDatabase) -> (EventStore, Vec<Appended>) {
    let config = StoreConfig {
        partitions: PARTITIONS,
        ..StoreConfig::default()
    };
    let store = open_store(db, config).await;
    let appended = build_log(&store).await;
    (store, appended)
}

#[tokio::test]
async fn events_read_back_exactly_as_they_were_appended() {
    let db = TestDatabase::create().await;
    let (store, appended) = store_with_log(&db).await;
    let log = read_all(&store).await;
    common::assert_dense_from_one(&log);
    assert_eq!(log.len(), appended.len());

    let mut versions = std::collections::HashMap::<&str, StreamVersion>::new();
    for (stored, sent) in log.iter().zip(&appended) {
        let version = versions.entry(sent.stream).or_insert(-1);
        *version += 1;
        assert_eq!(stored.stream_id, sent.stream);
        assert_eq!(stored.stream_version, *version, "dense versions per stream");
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(stored.event_type, sent.event.event_type);
        assert_eq!(stored.schema_version, sent.event.schema_version);
        assert_eq!(stored.payload, sent.event.payload);
        assert_eq!(stored.metadata, sent.event.metadata);
        assert_eq!(stored.content_hash, content_hash(sent.stream, &sent.event));
        assert_eq!(stored.partition, partition_of(sent.stream, PARTITIONS));
        assert_eq!(stored.partition, store.partition_of(sent.stream));
        assert_eq!(stored.category(), sent.category);
    }
    assert!(
        log.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at),
        "recorded_at follows commit order"
    );
    assert_eq!(
        store.head_position().await.expect("head"),
        log.len() as Position
    );
}

fn versions(events: &[RecordedEvent]) -> Vec<StreamVersion> {
    events.iter().map(|e| e.stream_version).collect()
}

#[tokio::test]
async fn a_stream_reads_forwards_and_backwards_in_pages_from_any_version() {
    let db = TestDatabase::create().await;
    let (store, appended) = store_with_log(&db).await;
    let stream = "order-1";
    let len = appended.iter().filter(|a| a.stream == stream).count() as StreamVersion;
    assert!(len > 12, "the stream spans several pages ({len} events)");
    let read = |from: Option<StreamVersion>, direction: Direction, limit: usize| {
        let store = store.clone();
        async move {
            store
                .read_stream(stream, from, direction, limit)
                .await
                .expect("reading the stream")
        }
    };
    use Direction::{Backward, Forward};

    assert_eq!(
        versions(&read(Some(0), Forward, 5).await),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(versions(&read(None, Forward, 3).await), vec![0, 1, 2]);
    assert_eq!(
        versions(&read(Some(7), Forward, 4).await),
        vec![7, 8, 9, 10]
    );
    assert_eq!(
        versions(&read(Some(len - 2), Forward, 10).await),
        vec![len - 2, len - 1]
    );
    assert!(
        read(Some(len), Forward, 10).await.is_empty(),
        "nothing past the end"
    );

    assert_eq!(
        versions(&read(None, Backward, 3).await),
        vec![len - 1, len - 2, len - 3]
    );
    assert_eq!(versions(&read(Some(5), Backward, 3).await), vec![5, 4, 3]);
    assert_eq!(versions(&read(Some(1), Backward, 10).await), vec![1, 0]);
    assert_eq!(
        versions(&read(Some(len + 100), Backward, 2).await),
        vec![len - 1, len - 2],
        "backwards from beyond the end starts at the last event"
    );

    // Paging through the whole stream, both ways, with a limit that does not divide it.
    let mut forward = Vec::new();
    loop {
        let from = forward
            .last()
            .map_or(0, |e: &RecordedEvent| e.stream_version + 1);
        let page = read(Some(from), Forward, 5).await;
        assert!(page.len() <= 5);
        if page.is_empty() {
            break;
        }
        forward.extend(page);
    }
    assert_eq!(versions(&forward), (0..len).collect::<Vec<_>>());
    assert!(forward.iter().all(|e| e.stream_id == stream));
    let mut backward: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = match backward.last() {
            None => None,
            Some(e) if e.stream_version == 0 => break,
            Some(e) => Some(e.stream_version - 1),
        };
        let page = read(from, Backward, 5).await;
        assert!(!page.is_empty() && page.len() <= 5);
        backward.extend(page);
    }
    assert_eq!(versions(&backward), (0..len).rev().collect::<Vec<_>>());
    assert_eq!(
        forward.iter().map(|e| e.position).collect::<Vec<_>>(),
        backward
            .iter()
            .rev()
            .map(|e| e.position)
            .collect::<Vec<_>>()
    );

    for direction in [Forward, Backward] {
        assert!(store
            .read_stream("order-404", None, direction, 10)
            .await
            .expect("reading a missing stream")
            .is_empty());
    }
}

#[tokio::test]
async fn the_log_pages_by_position_after_a_checkpoint() {
    let db = TestDatabase::create().await;
    let (store, appended) = store_with_log(&db).await;
    let full = read_all(&store).await;
    let head = appended.len() as Position;
    for page in [1, 7, 1000] {
        assert_eq!(
            read_all_filtered(&store, &LogFilter::all(), page).await,
            full,
            "paging by {page} reads the whole log"
        );
    }
    for after in [0, 1, 17, head - 3] {
        let page = store
            .read_log(after, &LogFilter::all(), 10)
            .await
            .expect("reading the log");
        let expected: Vec<Position> = (after + 1..=head).take(10).collect();
        assert_eq!(
            page.iter().map(|e| e.position).collect::<Vec<_>>(),
            expected,
            "reading after {after}"
        );
    }
    assert!(store
        .read_log(head, &LogFilter::all(), 10)
        .await
        .expect("reading at the head")
        .is_empty());
}

#[tokio::test]
async fn category_event_type_and_partition_filters_return_exactly_the_matching_events() {
    let db = TestDatabase::create().await;
    let (store, appended) = store_with_log(&db).await;
    let full = read_all(&store).await;

    let category = |names: &[&str]| LogFilter {
        categories: names.iter().map(|c| c.to_string()).collect(),
        ..LogFilter::default()
    };
    let mut filters: Vec<LogFilter> = vec![
        category(&["order"]),
        category(&["orderline"]),
        category(&["user"]),
        category(&["a"]),
        category(&["order", "invoice"]),
        category(&["nothing"]),
        LogFilter::event_types(["Created"]),
        LogFilter::event_types(["Created", "Deleted"]),
        LogFilter::event_types(["Nothing"]),
        LogFilter {
            categories: vec!["order".into()],
            event_types: vec!["Updated".into()],
            partition: None,
        },
    ];
    for partition in 0..PARTITIONS as i16 {
        filters.push(LogFilter::partition(partition));
        filters.push(category(&["order", "user"]).with_partition(Some(partition)));
    }

    for filter in &filters {
        let by_matches: Vec<&RecordedEvent> = full.iter().filter(|e| filter.matches(e)).collect();
        // The same, from what the test itself appended (independent of `matches`).
        let by_hand: Vec<Uuid> = appended
            .iter()
            .filter(|a| {
                (filter.categories.is_empty() || filter.categories.iter().any(|c| c == a.category))
                    && (filter.event_types.is_empty()
                        || filter.event_types.contains(&a.event.event_type))
                    && filter
                        .partition
                        .is_none_or(|p| p == partition_of(a.stream, PARTITIONS))
            })
            .map(|a| a.event_id)
            .collect();
        for page in [3, 1000] {
            let read = read_all_filtered(&store, filter, page).await;
            assert_eq!(
                read.iter().collect::<Vec<_>>(),
                by_matches,
                "{filter:?} read in pages of {page}"
            );
            assert_eq!(
                read.iter().map(|e| e.event_id).collect::<Vec<_>>(),
                by_hand,
                "{filter:?} read in pages of {page}, against the appended events"
            );
        }
    }

    // The filters are not vacuous: the interesting ones select something, but not all.
    for filter in [&filters[0], &filters[1], &filters[6]] {
        let n = full.iter().filter(|e| filter.matches(e)).count();
        assert!(
            n > 0 && n < full.len(),
            "{filter:?} selects {n} of {}",
            full.len()
        );
    }
    // Partitions split the log: every event in exactly one, and more than one is used.
    let mut sizes = Vec::new();
    let mut total = 0;
    for partition in 0..PARTITIONS as i16 {
        let events = read_all_filtered(&store, &LogFilter::partition(partition), 50).await;
        assert!(events.iter().all(|e| e.partition == partition));
        sizes.push(events.len());
        total += events.len();
    }
    assert_eq!(total, full.len(), "partitions {sizes:?} cover the log once");
    assert!(
        sizes.iter().filter(|&&s| s > 0).count() > 1,
        "the test streams land in several partitions: {sizes:?}"
    );
}

/// The counts consumers keeping positions use (a projection's lag, waits and build totals)
/// agree with what a log read returns, for every filter, cut and cap.
#[tokio::test]
async fn counts_after_positions_agree_with_the_log() {
    let db = TestDatabase::create().await;
    let (store, _) = store_with_log(&db).await;
    let full = read_all(&store).await;
    let head = store.head_position().await.expect("the head");
    let filters = [
        LogFilter::all(),
        LogFilter::category("order"),
        LogFilter::event_types(["Created", "Deleted"]),
        LogFilter::event_types(["Nothing"]),
    ];
    for filter in &filters {
        for (after, upto) in [(0, head), (17, head), (17, 60), (head, head)] {
            let expected = full
                .iter()
                .filter(|e| e.position > after && e.position <= upto && filter.matches(e))
                .count() as i64;
            assert_eq!(
                store.count_events(after, upto, filter).await.unwrap(),
                expected,
                "{filter:?} in ({after}, {upto}]"
            );
        }
        // One position per partition, each at a different cut.
        let positions: Vec<(i16, Position)> = (0..PARTITIONS as i16)
            .map(|p| (p, i64::from(p) * 13))
            .collect();
        let upto = head - 5;
        let pending = |partition: i16, after: Position| -> Vec<&RecordedEvent> {
            full.iter()
                .filter(|e| {
                    e.partition == partition
                        && e.position > after
                        && e.position <= upto
                        && filter.matches(e)
                })
                .collect()
        };
        let backlog = store
            .backlog(&positions, upto, filter, 1_000)
            .await
            .unwrap();
        assert_eq!(backlog.len(), positions.len());
        let mut behind = Vec::new();
        for (&(partition, after), measured) in positions.iter().zip(&backlog) {
            let events = pending(partition, after);
            assert_eq!(measured.partition, partition);
            assert_eq!(
                measured.events,
                events.len() as i64,
                "{filter:?} #{partition}"
            );
            assert_eq!(
                measured.oldest_age_seconds.is_some(),
                !events.is_empty(),
                "an age exactly when events are pending"
            );
            if !events.is_empty() {
                behind.push(partition);
            }
        }
        assert_eq!(
            store
                .partitions_behind(&positions, upto, filter)
                .await
                .unwrap(),
            behind,
            "{filter:?}"
        );
        let capped = store.backlog(&positions, upto, filter, 2).await.unwrap();
        for (capped, full) in capped.iter().zip(&backlog) {
            assert_eq!(capped.events, full.events.min(2), "counted up to the cap");
        }
    }
}
