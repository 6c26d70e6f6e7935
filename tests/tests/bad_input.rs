//! Bad input of every kind gets its stable code, and nothing is stored.

mod common;

use common::*;
use serde_json::{json, Value};

const APPEND: &str = "mutation($s: String!, $e: [EventInput!]!) {
  appendEvents(streamId: $s, events: $e) { lastPosition } }";

async fn small_limits_app() -> TestApp {
    spawn_app_with(tidemark_api::TidemarkApp::builder().build(), |config| {
        config.limits.max_body_bytes = 64 * 1024;
        config.limits.max_event_bytes = 1024;
        config.limits.max_events_per_append = 5;
        config.limits.max_query_complexity = 1000;
    })
    .await
}

/// The log must still be empty.
async fn assert_nothing_stored(app: &TestApp) {
    let body = app.graphql("{ head }", json!({}), Some(READ_KEY)).await;
    assert_eq!(body["data"]["head"], 0, "{body}");
    assert_eq!(app.tidemark.store().head_position().await.unwrap(), 0);
}

fn events(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "type": "T", "data": { "i": i } }))
            .collect(),
    )
}

#[tokio::test]
async fn each_kind_of_bad_input_gets_its_code_and_nothing_is_stored() {
    let app = small_limits_app().await;

    // Malformed JSON body.
    let (status, body) = app
        .post_raw("{\"query\": \"mutation {", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 400);
    let error = assert_error(&body, "BAD_INPUT");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a GraphQL request in JSON"),
        "{error}"
    );

    // Wrong types: a number where a string goes, a string where a list goes.
    let body = app
        .graphql(APPEND, json!({ "s": 5, "e": events(1) }), Some(ADMIN_KEY))
        .await;
    assert_error(&body, "BAD_INPUT");
    let body = app
        .graphql(APPEND, json!({ "s": "s-1", "e": "nope" }), Some(ADMIN_KEY))
        .await;
    assert_error(&body, "BAD_INPUT");
    let body = app
        .graphql(
            "mutation { appendEvents(streamId: \"s-1\", expectedVersion: \"sometimes\", events: [{type: \"T\", data: {}}]) { lastPosition } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");

    // Unknown fields: in an input object, and in the selection.
    let body = app
        .graphql(
            APPEND,
            json!({ "s": "s-1", "e": [{ "type": "T", "data": {}, "colour": "red" }] }),
            Some(ADMIN_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");
    let body = app
        .graphql(
            "mutation { appendEvents(streamId: \"s-1\", events: [{type: \"T\", data: {}}]) { nope } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    let error = assert_error(&body, "BAD_INPUT");
    assert_eq!(error["extensions"]["field"], "nope");

    // A body over the limit: a JSON error, not a bare 413.
    let huge = json!({ "query": APPEND, "variables": { "s": "s-1", "e": [{ "type": "T", "data": { "x": "y".repeat(100 * 1024) } }] } });
    let (status, body) = app.post_raw(huge.to_string(), Some(ADMIN_KEY)).await;
    assert_eq!(status, 413);
    let error = assert_error(&body, "PAYLOAD_TOO_LARGE");
    assert_eq!(error["extensions"]["limitBytes"], 64 * 1024);

    // An event over the limit.
    let body = app
        .graphql(
            APPEND,
            json!({ "s": "s-1", "e": [{ "type": "T", "data": { "x": "y".repeat(2000) } }] }),
            Some(ADMIN_KEY),
        )
        .await;
    let error = assert_error(&body, "PAYLOAD_TOO_LARGE");
    assert_eq!(error["extensions"]["limitBytes"], 1024);

    // Too many events.
    let body = app
        .graphql(
            APPEND,
            json!({ "s": "s-1", "e": events(6) }),
            Some(ADMIN_KEY),
        )
        .await;
    let error = assert_error(&body, "BAD_INPUT");
    assert_eq!(error["extensions"]["field"], "events");

    // A query nested too deep.
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {} name {} }} }} }} }} }}",
        "ofType { ".repeat(20),
        "}".repeat(20)
    );
    let body = app.graphql(&deep, json!({}), Some(ADMIN_KEY)).await;
    let error = assert_error(&body, "BAD_INPUT");
    assert!(
        error["message"].as_str().unwrap().contains("deep"),
        "{error}"
    );

    // A query too complex: shallow, but selecting the same fields over and over under
    // aliases (each alias counts).
    let wide = format!(
        "{{ {} }}",
        (0..1200)
            .map(|i| format!("h{i}: head"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let body = app.graphql(&wide, json!({}), Some(ADMIN_KEY)).await;
    let error = assert_error(&body, "BAD_INPUT");
    assert!(
        error["message"].as_str().unwrap().contains("complex"),
        "{error}"
    );

    // An invalid UUID.
    let body = app
        .graphql(
            APPEND,
            json!({ "s": "s-1", "e": [{ "eventId": "not-a-uuid", "type": "T", "data": {} }] }),
            Some(ADMIN_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");

    // Invalid stream ids: empty, a control character, too long.
    for stream in ["", "bad\nid", &"x".repeat(500)] {
        let body = app
            .graphql(
                APPEND,
                json!({ "s": stream, "e": events(1) }),
                Some(ADMIN_KEY),
            )
            .await;
        let error = assert_error(&body, "BAD_INPUT");
        assert_eq!(error["extensions"]["field"], "streamId", "{error}");
    }

    // Data that is not an object, and an empty append.
    let body = app
        .graphql(
            APPEND,
            json!({ "s": "s-1", "e": [{ "type": "T", "data": [1, 2] }] }),
            Some(ADMIN_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");
    let body = app
        .graphql(APPEND, json!({ "s": "s-1", "e": [] }), Some(ADMIN_KEY))
        .await;
    assert_error(&body, "BAD_INPUT");

    // Paging arguments out of range.
    let body = app
        .graphql(
            "{ events(first: 0) { pageInfo { hasNextPage } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");
    let body = app
        .graphql(
            "{ events(first: 100000) { pageInfo { hasNextPage } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");

    // Not found.
    let body = app
        .graphql(
            "{ projection(name: \"nope\") { name } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&body, "NOT_FOUND");

    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn garbage_never_takes_the_server_down() {
    let app = small_limits_app().await;
    let bodies: Vec<Vec<u8>> = vec![
        vec![],
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"query\": 5}".to_vec(),
        b"{\"query\": \"{\"}".to_vec(),
        vec![0xff, 0xfe, 0x00],
        "{\"query\": \"{ head }\", \"variables\": \"x\"}"
            .as_bytes()
            .to_vec(),
        format!("{{\"query\": \"{}\"}}", "{ head ".repeat(5000)).into_bytes(),
    ];
    for body in bodies {
        let (status, json) = app.post_raw(body.clone(), Some(ADMIN_KEY)).await;
        assert!(
            (200..500).contains(&status),
            "status {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
        if !json["errors"].is_null() {
            assert!(
                error_code(&json).is_some(),
                "an error without a code: {json}"
            );
        }
    }
    // Still serving.
    let body = app.graphql("{ head }", json!({}), Some(READ_KEY)).await;
    assert_eq!(body["data"]["head"], 0);
}
