//! Subscriptions over WebSocket (graphql-transport-ws): history then live, exactly once.

use crate::common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_subscription_from_zero_gets_history_then_live_events_exactly_once() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.append(
            &format!("sub-{}", i % 2),
            json!([{ "type": "Before", "data": { "i": i } }]),
        )
        .await;
    }
    let mut subscription = app
        .subscribe(
            "subscription { events(after: 0) { position streamId type data } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    let mut positions = Vec::new();
    for _ in 0..5 {
        let data = subscription.next().await;
        assert_eq!(data["events"]["type"], "Before");
        positions.push(data["events"]["position"].as_i64().unwrap());
    }
    // Live: appended while the subscription is open, including one racing the switch.
    let racing = {
        let client = app.client.clone();
        let address = app.address.clone();
        tokio::spawn(async move {
            client
                .post(format!("{address}/graphql"))
                .header("authorization", format!("Bearer {APPEND_KEY}"))
                .json(&json!({ "query": "mutation { appendEvents(streamId: \"sub-race\", events: [{type: \"During\", data: {}}]) { lastPosition } }" }))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    for i in 0..4 {
        app.append("sub-live", json!([{ "type": "After", "data": { "i": i } }]))
            .await;
    }
    assert!(!racing.await.unwrap().contains("errors"));
    for _ in 0..5 {
        let data = subscription.next().await;
        positions.push(data["events"]["position"].as_i64().unwrap());
    }
    assert_eq!(positions, (1..=10).collect::<Vec<_>>());
    // No event is delivered twice: a sentinel appended now is the very next message (a
    // repeat of anything above would come before it), without waiting out a quiet period.
    app.append("sub-sentinel", json!([{ "type": "Sentinel", "data": {} }]))
        .await;
    let next = subscription.next().await;
    assert_eq!(next["events"]["type"], "Sentinel", "{next}");
    assert_eq!(next["events"]["position"], 11, "{next}");
    subscription.close().await;
}

#[tokio::test]
async fn a_filtered_subscription_resumes_after_a_position() {
    let app = spawn_app().await;
    app.append("a-1", json!([{ "type": "X", "data": {} }]))
        .await;
    app.append("b-1", json!([{ "type": "X", "data": {} }]))
        .await;
    app.append("a-2", json!([{ "type": "X", "data": {} }]))
        .await;
    let mut subscription = app
        .subscribe(
            "subscription($after: Int64!) { events(after: $after, category: \"a\") { position streamId } }",
            json!({ "after": 1 }),
            Some(READ_KEY),
        )
        .await;
    let data = subscription.next().await;
    assert_eq!(data["events"]["streamId"], "a-2");
    assert_eq!(data["events"]["position"], 3);
}

#[tokio::test]
async fn subscriptions_need_a_key_and_report_projection_progress() {
    let app = spawn_app().await;
    let mut anonymous = app
        .subscribe("subscription { events { position } }", json!({}), None)
        .await;
    let message = anonymous.next_message().await;
    assert_eq!(
        subscription_error_code(&message),
        Some("UNAUTHENTICATED"),
        "{message}"
    );

    let mut unknown = app
        .subscribe(
            "subscription { projectionProgress(name: \"nope\") { name } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    let message = unknown.next_message().await;
    assert_eq!(
        subscription_error_code(&message),
        Some("NOT_FOUND"),
        "{message}"
    );
}

#[tokio::test]
async fn websocket_connections_are_limited() {
    let app = spawn_app_with(tidemark_api::TidemarkApp::builder().build(), |config| {
        config.limits.max_ws_connections = 1;
    })
    .await;
    let first = app
        .subscribe(
            "subscription { events { position } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://127.0.0.1:{}/graphql",
            app.port
        ))
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("OVERLOADED"), "{body}");
        }
        other => panic!("a second connection must be refused, got {other:?}"),
    }
    // Closing the first frees its place.
    first.close().await;
    eventually("a place to free up", WAIT, || async {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://127.0.0.1:{}/graphql", app.port),
            )
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        tokio_tungstenite::connect_async(request)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}
