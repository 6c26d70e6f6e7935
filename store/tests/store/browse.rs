//! Browsing (`tidemark_store::browse`): categories and streams list exactly what the log
//! holds, page by page without gaps or repeats; the append rate counts the events of its
//! window and is zero for an empty log.

use crate::common::{append_ok, event, open_default};
use std::collections::BTreeSet;
use tidemark_store::{EventStore, ExpectedVersion};
use tidemark_testkit::TestDatabase;

/// Streams and their categories, written out by hand: "orderline" shares a prefix with
/// "order" but is another category; "order" and "user" (no `-`) are their own category.
const STREAMS: [(&str, &str); 7] = [
    ("order-1", "order"),
    ("order-2", "order"),
    ("order", "order"),
    ("orderline-1", "orderline"),
    ("invoice-1", "invoice"),
    ("user", "user"),
    ("a-b-c", "a"),
];

async fn store_with_streams() -> (TestDatabase, EventStore) {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    for (n, (stream, _)) in STREAMS.iter().enumerate() {
        // Stream n gets n + 1 events, so versions tell streams apart.
        let events = (0..=n as u64).map(|k| event("Happened", k)).collect();
        append_ok(&store, stream, ExpectedVersion::NoStream, events).await;
    }
    (db, store)
}

#[tokio::test]
async fn categories_list_each_category_once_in_pages_of_any_size() {
    let (_db, store) = store_with_streams().await;
    let expected: BTreeSet<&str> = STREAMS.iter().map(|(_, c)| *c).collect();
    for page_size in [1, 2, 100] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .categories(after.as_deref(), page_size)
                .await
                .expect("categories list");
            assert!(page.len() <= page_size);
            let Some(last) = page.last().cloned() else {
                break;
            };
            seen.extend(page);
            after = Some(last);
        }
        let unique: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(unique.len(), seen.len(), "no repeats: {seen:?}");
        assert_eq!(unique, expected, "pages of {page_size}");
    }
}

#[tokio::test]
async fn streams_of_a_category_are_exactly_its_own_with_their_versions() {
    let (_db, store) = store_with_streams().await;
    let order = store
        .streams(Some("order"), None, 100)
        .await
        .expect("streams list");
    let mut listed: Vec<(&str, i64)> = order
        .iter()
        .map(|s| (s.stream_id.as_str(), s.version))
        .collect();
    let mut expected: Vec<(&str, i64)> = STREAMS
        .iter()
        .enumerate()
        .filter(|(_, (_, category))| *category == "order")
        .map(|(n, (stream, _))| (*stream, n as i64))
        .collect();
    // The order is the database collation's; what is listed is the point here.
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);

    // Paging one at a time returns the same streams, and every stream appears once overall.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    while let Some(next) = store
        .streams(Some("order"), after.as_deref(), 1)
        .await
        .expect("a page")
        .pop()
    {
        after = Some(next.stream_id.clone());
        paged.push(next);
    }
    assert_eq!(paged, order);
    let all = store.streams(None, None, 100).await.expect("every stream");
    assert_eq!(all.len(), STREAMS.len());
    assert!(store
        .streams(Some("nothing"), None, 10)
        .await
        .expect("an empty list")
        .is_empty());
}

#[tokio::test]
async fn the_append_rate_counts_the_events_of_its_window() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    let empty = store.append_rate(10.0).await.expect("a rate");
    assert_eq!(empty.events_per_second, 0.0);

    let events = (0..30).map(|k| event("Happened", k)).collect();
    append_ok(&store, "rate-1", ExpectedVersion::NoStream, events).await;
    // Thirty events just now: all within an hour-long window.
    let rate = store.append_rate(3600.0).await.expect("a rate");
    assert_eq!(rate.window_seconds, 3600.0);
    assert_eq!(rate.events_per_second, 30.0 / 3600.0);
}
