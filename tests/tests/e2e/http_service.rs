//! The HTTP service under pressure and on shutdown.
//!
//! - Load shedding: past the number of requests run at once, a request that cannot get a
//!   turn within the admission budget is refused at once with `OVERLOADED`, HTTP 503 and a
//!   `Retry-After` header — not left waiting towards the request timeout — and nothing of it
//!   is done.
//! - Draining: on shutdown, clients on keep-alive connections get every request answered,
//!   the last one with `Connection: close`, instead of a TCP close in the middle.

use crate::common;

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
    eventually("the writer waits for the head lock", WAIT, || async {
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

/// One HTTP/1.1 exchange on a raw, kept-alive connection: returns the status line and
/// headers (lower-cased) and the body, or `None` when the server closed the connection
/// instead of answering.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("a length"))
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]);
                return Some((head, body.to_string()));
            }
        }
        match tokio::time::timeout(WAIT, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("no answer within {WAIT:?}"),
        }
    }
}

fn append_request(port: u16, stream: &str) -> String {
    let body = json!({
        "query": "mutation($s: String!) { appendEvents(streamId: $s, events: [{ type: \"Drained\", data: {} }]) { lastPosition } }",
        "variables": { "s": stream },
    })
    .to_string();
    format!(
        "POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {APPEND_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A client whose keep-alive connection is idle when the server is told to stop, and which
/// then sends its next request on it: that request is answered (with `Connection: close`),
/// not met with a TCP close. Before draining existed the idle connection was closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_shutdown_a_request_on_an_idle_keep_alive_connection_is_answered_with_connection_close()
{
    let mut app = spawn_app_with(tidemark_api::TidemarkApp::builder().build(), |config| {
        // Long enough that the test's next request always falls inside the drain.
        config.drain_quiet = Duration::from_secs(3);
        config.shutdown_timeout = Duration::from_secs(30);
    })
    .await;
    let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connecting");
    let (head, _) = exchange(&mut connection, &append_request(app.port, "before-1"))
        .await
        .expect("answered before shutdown");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");

    // Stop the server while our connection sits idle; wait until it drains.
    let port = app.port;
    let ready_url = format!("{}/ready", app.address);
    let probe = reqwest::Client::new();
    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    eventually("the server reports it is draining", WAIT, || async {
        let answer = probe.get(&ready_url).send().await.ok()?;
        let body: serde_json::Value = answer.json().await.ok()?;
        (body["checks"]["draining"] == true).then_some(())
    })
    .await;

    let (head, body) = exchange(&mut connection, &append_request(port, "during-1"))
        .await
        .expect("a request on the idle keep-alive connection is answered, not dropped");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("connection: close"),
        "the answer closes the connection: {head}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_no_errors(&body);

    let app = tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("the server stops")
        .expect("no panic");
    let pool = app.database().pool(1);
    let stored: Vec<String> = pool
        .get()
        .await
        .expect("a connection")
        .query("SELECT stream_id FROM events ORDER BY position", &[])
        .await
        .expect("reading the log")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(stored, ["before-1", "during-1"]);
}

/// With introspection turned off (`--disable-introspection`), `__schema` and `__type` answer
/// null while ordinary queries answer; by default introspection works.
#[tokio::test]
async fn introspection_can_be_turned_off() {
    const INTROSPECT: &str = "{ __schema { queryType { name } } }";
    let open = spawn_app().await;
    let body = open.graphql(INTROSPECT, json!({}), Some(READ_KEY)).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );

    let closed = spawn_app_with(tidemark_api::TidemarkApp::builder().build(), |config| {
        config.limits.introspection = false
    })
    .await;
    for query in [INTROSPECT, "{ __type(name: \"Query\") { name } }"] {
        let body = closed.graphql(query, json!({}), Some(READ_KEY)).await;
        // async-graphql answers introspection fields with null when it is off.
        assert!(
            body["data"]["__schema"].is_null() && body["data"]["__type"].is_null(),
            "introspection answered: {body}"
        );
    }
    let body = closed.graphql("{ head }", json!({}), Some(READ_KEY)).await;
    assert_no_errors(&body);
}

/// CORS: with `--cors-origin`, a browser page on that origin gets its preflight answered and
/// may read the answers; a page on another origin gets no CORS header, so its browser keeps
/// the answer from it. Without the flag the server sends no CORS header at all.
#[tokio::test]
async fn cors_allows_exactly_the_configured_origins() {
    const ALLOWED: &str = "https://app.example.com";
    let app = spawn_app_with(tidemark_api::TidemarkApp::builder().build(), |config| {
        config.limits.cors_origins = vec![ALLOWED.to_string()]
    })
    .await;
    let url = format!("{}/graphql", app.address);
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, url.clone())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };

    let allowed = preflight(ALLOWED).await.expect("a preflight answer");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], ALLOWED);
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );

    let other = preflight("https://evil.example").await.expect("an answer");
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "{:?}",
        other.headers()
    );

    // The actual request from the allowed origin carries the header too.
    let answer = app
        .client
        .post(url.clone())
        .header("origin", ALLOWED)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {READ_KEY}"))
        .body(json!({ "query": "{ head }" }).to_string())
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.headers()["access-control-allow-origin"], ALLOWED);

    let closed = spawn_app().await;
    let answer = closed
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/graphql", closed.address),
        )
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("an answer");
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "{:?}",
        answer.headers()
    );
}
