//! Load shedding over HTTP: past the number of requests run at once, a request that cannot
//! get a turn within the admission budget is refused at once with `OVERLOADED`, HTTP 503 and
//! a `Retry-After` header — not left waiting towards the request timeout — and nothing of it
//! is done.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_cannot_get_a_turn_within_the_budget_is_refused_with_retry_after() {
    let app = spawn_app_with(tidemark_api::TidemarkApp::builder().build(), |config| {
        config.limits.max_concurrent_requests = 1;
        config.limits.admission_budget = Duration::from_millis(50);
    })
    .await;
    app.append("warm-1", json!([{ "type": "Warmed", "data": {} }]))
        .await;

    // Stall the append writer on the head row, so an append request holds the only turn.
    let pool = app.database().pool(2);
    let holder = pool.get().await.expect("a raw connection");
    holder
        .batch_execute("BEGIN; SELECT position FROM store_head FOR UPDATE;")
        .await
        .expect("taking the store head lock");
    let stalled = {
        let client = app.client.clone();
        let url = format!("{}/graphql", app.address);
        tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {APPEND_KEY}"))
                .body(
                    json!({ "query": "mutation { appendEvents(streamId: \"held-1\", events: [{ type: \"Held\", data: {} }]) { lastPosition } }" })
                        .to_string(),
                )
                .send()
                .await
                .expect("the stalled request is answered")
                .status()
        })
    };

    // The stalled request holds the turn once the writer waits for the lock.
    let observer = pool.get().await.expect("a raw connection");
    eventually("the writer waits for the head lock", || async {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("reading pg_stat_activity")
            .get(0);
        (waiting >= 1).then_some(())
    })
    .await;

    // Every other request is now refused at once.
    let response = tokio::time::timeout(
        WAIT,
        app.client
            .post(format!("{}/graphql", app.address))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {APPEND_KEY}"))
            .body(
                json!({ "query": "mutation { appendEvents(streamId: \"shed-1\", events: [{ type: \"Shed\", data: {} }]) { lastPosition } }" })
                    .to_string(),
            )
            .send(),
    )
    .await
    .expect("the refusal comes while the writer is still stalled")
    .expect("the server answers");
    assert_eq!(response.status().as_u16(), 503);
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ASCII").to_string());
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(error_code(&body), Some("OVERLOADED"), "{body}");
    let seconds: u64 = retry_after
        .expect("a Retry-After header")
        .parse()
        .expect("whole seconds");
    assert!(seconds >= 1);
    assert!(
        body["errors"][0]["extensions"]["retryAfterMs"]
            .as_u64()
            .is_some(),
        "{body}"
    );

    holder
        .batch_execute("ROLLBACK")
        .await
        .expect("releasing the lock");
    assert_eq!(
        tokio::time::timeout(WAIT, stalled)
            .await
            .expect("the stalled request finishes")
            .expect("the task does not panic")
            .as_u16(),
        200
    );
    let streams: Vec<String> = app
        .all_events()
        .await
        .into_iter()
        .map(|e| e.stream_id)
        .collect();
    assert!(
        !streams.contains(&"shed-1".to_string()),
        "nothing of a refused request was written: {streams:?}"
    );
    assert!(streams.contains(&"held-1".to_string()));
}
