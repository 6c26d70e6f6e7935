//! Appending through GraphQL and reading back by stream, by category and from the log,
//! with cursors that page without gaps or repeats; plus the service endpoints.

use crate::common;

use common::*;
use serde_json::{json, Value};

fn event(kind: &str, n: i64) -> Value {
    json!({ "type": kind, "data": { "n": n } })
}

const LOG_PAGE: &str = "query($after: Int64!, $first: Int!, $category: String, $types: [String!]) {
  events(after: $after, first: $first, category: $category, types: $types) {
    events { position streamId streamVersion type data }
    pageInfo { endCursor hasNextPage }
  } }";

/// Reads every page of a log query; returns the positions in order.
async fn read_all_pages(app: &TestApp, first: i64, category: Option<&str>) -> Vec<i64> {
    let mut positions = Vec::new();
    let mut after = 0;
    loop {
        let body = app
            .graphql(
                LOG_PAGE,
                json!({ "after": after, "first": first, "category": category }),
                Some(READ_KEY),
            )
            .await;
        assert_no_errors(&body);
        let page = &body["data"]["events"];
        let events = page["events"].as_array().expect("a list");
        assert!(events.len() as i64 <= first);
        positions.extend(
            events
                .iter()
                .map(|e| e["position"].as_i64().expect("a position")),
        );
        if !page["pageInfo"]["hasNextPage"].as_bool().expect("a flag") {
            return positions;
        }
        after = page["pageInfo"]["endCursor"].as_i64().expect("a cursor");
    }
}

#[tokio::test]
async fn appended_events_read_back_by_stream_category_and_log() {
    let app = spawn_app().await;
    let first = app
        .append("order-1", json!([event("Placed", 1), event("Paid", 2)]))
        .await;
    assert_eq!(first["streamVersion"], 1);
    assert_eq!(first["lastPosition"], 2);
    assert_eq!(first["duplicates"], 0);
    app.append("order-2", json!([event("Placed", 3)])).await;
    app.append("customer-7", json!([event("Registered", 4)]))
        .await;

    // By stream, forwards and backwards.
    let body = app
        .graphql(
            r#"{ stream(id: "order-1") { streamId version events { streamVersion type data } } }"#,
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_no_errors(&body);
    let stream = &body["data"]["stream"];
    assert_eq!(stream["version"], 1);
    assert_eq!(stream["events"][0]["type"], "Placed");
    assert_eq!(stream["events"][1]["data"], json!({ "n": 2 }));
    let body = app
        .graphql(
            r#"{ stream(id: "order-1", backward: true, first: 1) { events { streamVersion } pageInfo { endCursor hasNextPage } } }"#,
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(body["data"]["stream"]["events"][0]["streamVersion"], 1);
    assert_eq!(body["data"]["stream"]["pageInfo"]["hasNextPage"], true);

    // By category.
    let body = app
        .graphql(
            LOG_PAGE,
            json!({ "after": 0, "first": 10, "category": "order" }),
            Some(READ_KEY),
        )
        .await;
    let streams: Vec<_> = body["data"]["events"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["streamId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streams, ["order-1", "order-1", "order-2"]);

    // By type, from the whole log.
    let body = app
        .graphql(
            LOG_PAGE,
            json!({ "after": 0, "first": 10, "types": ["Registered"] }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(
        body["data"]["events"]["events"][0]["streamId"],
        "customer-7"
    );

    // A missing stream is empty, not an error.
    let body = app
        .graphql(
            r#"{ stream(id: "order-404") { version events { position } } }"#,
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_no_errors(&body);
    assert!(body["data"]["stream"]["version"].is_null());
}

#[tokio::test]
async fn cursors_page_the_log_and_streams_without_gaps_or_repeats() {
    let app = spawn_app().await;
    for i in 0..23 {
        let stream = if i % 3 == 0 { "cart-a" } else { "cart-b" };
        app.append(stream, json!([event("Added", i)])).await;
    }
    app.append("other-1", json!([event("Noise", 0)])).await;

    for page_size in [1, 5, 7, 24, 100] {
        let positions = read_all_pages(&app, page_size, None).await;
        assert_eq!(
            positions,
            (1..=24).collect::<Vec<_>>(),
            "page size {page_size}"
        );
    }
    let carts = read_all_pages(&app, 4, Some("cart")).await;
    assert_eq!(carts, (1..=23).collect::<Vec<_>>());

    // A stream, forwards and backwards, page by page.
    for backward in [false, true] {
        let mut versions = Vec::new();
        let mut after: Option<i64> = None;
        loop {
            let body = app
                .graphql(
                    "query($after: Int64, $backward: Boolean!) { stream(id: \"cart-b\", first: 4, after: $after, backward: $backward) {
                        events { streamVersion } pageInfo { endCursor hasNextPage } } }",
                    json!({ "after": after, "backward": backward }),
                    Some(READ_KEY),
                )
                .await;
            assert_no_errors(&body);
            let page = &body["data"]["stream"];
            versions.extend(
                page["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["streamVersion"].as_i64().unwrap()),
            );
            if !page["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                break;
            }
            after = page["pageInfo"]["endCursor"].as_i64();
        }
        let mut expected: Vec<i64> = (0..15).collect();
        if backward {
            expected.reverse();
        }
        assert_eq!(versions, expected, "backward: {backward}");
    }
}

#[tokio::test]
async fn expected_versions_and_duplicates_are_reported() {
    let app = spawn_app().await;
    let append = "mutation($ev: ExpectedVersion!, $id: UUID) {
        appendEvents(streamId: \"acct-1\", expectedVersion: $ev, events: [{ eventId: $id, type: \"Opened\", data: {} }]) {
          streamVersion duplicates events { position duplicate } } }";
    let id = uuid::Uuid::new_v4();
    let body = app
        .graphql(
            append,
            json!({ "ev": "no_stream", "id": id }),
            Some(APPEND_KEY),
        )
        .await;
    assert_no_errors(&body);
    // The same event again: an idempotent success that says it was a duplicate.
    let body = app
        .graphql(append, json!({ "ev": "any", "id": id }), Some(APPEND_KEY))
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["appendEvents"]["duplicates"], 1);
    assert_eq!(body["data"]["appendEvents"]["events"][0]["position"], 1);
    // A stale expectation carries the actual version.
    let body = app
        .graphql(
            append,
            json!({ "ev": 5, "id": uuid::Uuid::new_v4() }),
            Some(APPEND_KEY),
        )
        .await;
    let error = assert_error(&body, "WRONG_EXPECTED_VERSION");
    assert_eq!(error["extensions"]["actualVersion"], 0);
    // The same id with different content.
    let body = app
        .graphql(
            "mutation($id: UUID) { appendEvents(streamId: \"acct-2\", events: [{ eventId: $id, type: \"Other\", data: {a: 1} }]) { streamVersion } }",
            json!({ "id": id }),
            Some(APPEND_KEY),
        )
        .await;
    assert_error(&body, "EVENT_ID_CONFLICT");
}

#[tokio::test]
async fn health_ready_metrics_graphiql_workers_and_scaling_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health").await.0, 200);
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    app.append("m-1", json!([event("E", 1)])).await;
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tidemark_http_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidemark_events_appended_total"),
        "{metrics}"
    );
    let (status, page) = app.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("graphiql"), "{page}");
    let (status, body) = app.get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("NOT_FOUND"));
    let body = app
        .graphql("{ workers { id current } }", json!({}), Some(READ_KEY))
        .await;
    assert_eq!(body["data"]["workers"][0]["current"], true);
    // Every live worker publishes its pool's scaling signal with its heartbeat.
    let pools = eventually("the default pool's scaling signal", WAIT, || async {
        let body = app
            .graphql(
                "{ scaling { pool liveWorkers desiredWorkers lagEvents } }",
                json!({}),
                Some(READ_KEY),
            )
            .await;
        let pools = body["data"]["scaling"].as_array()?.clone();
        (!pools.is_empty()).then_some(pools)
    })
    .await;
    assert_eq!(pools[0]["pool"], "default");
    assert_eq!(pools[0]["liveWorkers"], 1);
    assert!(pools[0]["desiredWorkers"].as_i64() >= Some(1), "{pools:?}");
    // The gauge comes from the lease observer's own tick, which may follow the heartbeat
    // that put the pool's row in place.
    wait_until("tidemark_desired_workers on /metrics", WAIT, || async {
        app.get("/metrics")
            .await
            .1
            .contains("tidemark_desired_workers")
    })
    .await;
}

/// Positions are `Int64`: a position past 2^31 - 1 is accepted (as a JSON number, as a
/// decimal string, and in a variable declared `Int64!`), where GraphQL's 32-bit `Int` would be
/// refused by schema-aware clients; a fraction or a word is refused with `BAD_INPUT`-style
/// validation errors and nothing else happens.
#[tokio::test]
async fn positions_beyond_32_bits_are_accepted_as_numbers_and_strings() {
    let app = spawn_app().await;
    app.append("big-1", json!([event("Added", 1)])).await;
    let beyond: i64 = 5_000_000_000;
    let body = app
        .graphql(
            "query($after: Int64!) { events(after: $after) { events { position } pageInfo { endCursor } } }",
            json!({ "after": beyond }),
            Some(READ_KEY),
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["events"]["events"], json!([]));
    let body = app
        .graphql(
            "{ events(after: \"0\") { events { position } pageInfo { endCursor } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["events"]["pageInfo"]["endCursor"], json!(1));
    for bad in ["1.5", "\"twelve\""] {
        let body = app
            .graphql(
                &format!("{{ events(after: {bad}) {{ events {{ position }} }} }}"),
                json!({}),
                Some(READ_KEY),
            )
            .await;
        assert!(body["data"].is_null(), "{bad}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("Int64"), "{bad}: {body}");
    }
}
