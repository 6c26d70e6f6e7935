//! The overview queries (`api/src/schema/overview.rs`) over HTTP, as the dashboard and any
//! other client asks them: `whoami` tells each caller its role (and needs no key);
//! `logStats`, `categories` and `streams` describe exactly what was appended, page without
//! gaps, and need the read role like every other read.

use crate::common::*;
use serde_json::{json, Value};
use tidemark_api::TidemarkApp;

const WHOAMI: &str = "{ whoami { role keyId keyName insecureDev refused } }";

#[tokio::test]
async fn whoami_tells_each_caller_its_role_and_needs_no_key() {
    let app = spawn_app().await;
    for (key, role) in [
        (ADMIN_KEY, "ADMIN"),
        (APPEND_KEY, "APPEND"),
        (READ_KEY, "READ"),
    ] {
        let who = app.graphql_data(WHOAMI, json!({}), Some(key)).await["whoami"].clone();
        assert_eq!(who["role"], role, "{who}");
        assert_eq!(who["keyName"], "configured", "{who}");
        assert!(
            who["keyId"]
                .as_str()
                .is_some_and(|id| id.starts_with("config:")),
            "{who}"
        );
        assert_eq!(who["insecureDev"], false);
        assert!(who["refused"].is_null(), "{who}");
    }

    let nobody = app.graphql_data(WHOAMI, json!({}), None).await["whoami"].clone();
    assert_eq!(
        nobody,
        json!({ "role": null, "keyId": null, "keyName": null, "insecureDev": false, "refused": null })
    );
    let refused = app
        .graphql_data(WHOAMI, json!({}), Some("not-a-key-of-this-server"))
        .await["whoami"]
        .clone();
    assert!(refused["role"].is_null(), "{refused}");
    assert!(
        refused["refused"].as_str().is_some_and(|r| !r.is_empty()),
        "the reason a key was refused: {refused}"
    );
}

#[tokio::test]
async fn whoami_under_insecure_dev_is_an_admin_without_a_key() {
    let app = spawn_app_with(TidemarkApp::builder().build(), |config| {
        config.insecure_dev = true;
    })
    .await;
    let who = app.graphql_data(WHOAMI, json!({}), None).await["whoami"].clone();
    assert_eq!(who["role"], "ADMIN", "{who}");
    assert_eq!(who["insecureDev"], true, "{who}");
}

#[tokio::test]
async fn log_stats_and_the_listings_describe_what_was_appended() {
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let categories = [format!("alpha{tag}"), format!("beta{tag}")];
    let mut appended = 0;
    let mut last = 0;
    for category in &categories {
        for n in 1..=3 {
            let events: Vec<Value> = (0..n)
                .map(|k| json!({ "type": "Noted", "data": { "k": k } }))
                .collect();
            last = app.append(&format!("{category}-{n}"), json!(events)).await["lastPosition"]
                .as_i64()
                .expect("a position");
            appended += n;
        }
    }

    let stats = app
        .graphql_data(
            "{ logStats { head partitions appendRate rateWindowSeconds } }",
            json!({}),
            Some(READ_KEY),
        )
        .await["logStats"]
        .clone();
    assert_eq!(stats["head"], last);
    assert_eq!(stats["head"], appended);
    assert_eq!(stats["partitions"], 4);
    let window = stats["rateWindowSeconds"].as_f64().expect("a window");
    let rate = stats["appendRate"].as_f64().expect("a rate");
    // Every event was appended moments ago: inside the window, and none other was.
    assert!(rate > 0.0, "{stats}");
    assert!(rate <= appended as f64 / window + 1e-9, "{stats}");

    // Categories page one at a time, each exactly once.
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = app
            .graphql_data(
                "query($after: String) { categories(after: $after, first: 1) { categories endCursor hasNextPage } }",
                json!({ "after": after }),
                Some(READ_KEY),
            )
            .await["categories"]
            .clone();
        let names = page["categories"].as_array().expect("a list").clone();
        assert!(names.len() <= 1, "{page}");
        seen.extend(names.iter().filter_map(|n| n.as_str().map(str::to_string)));
        if page["hasNextPage"] == false {
            break;
        }
        after = page["endCursor"].clone();
    }
    let mut expected = categories.to_vec();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected);

    let streams = app
        .graphql_data(
            "query($c: String) { streams(category: $c) { streams { streamId category version events partition } endCursor hasNextPage } }",
            json!({ "c": categories[1] }),
            Some(READ_KEY),
        )
        .await["streams"]
        .clone();
    assert_eq!(streams["hasNextPage"], false);
    let mut listed: Vec<(String, i64, i64)> = streams["streams"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            assert_eq!(s["category"], categories[1].as_str(), "{s}");
            let partition = s["partition"].as_i64().expect("a partition");
            assert!((0..4).contains(&partition), "{s}");
            (
                s["streamId"].as_str().expect("an id").to_string(),
                s["version"].as_i64().expect("a version"),
                s["events"].as_i64().expect("a count"),
            )
        })
        .collect();
    listed.sort();
    let beta = &categories[1];
    assert_eq!(
        listed,
        vec![
            (format!("{beta}-1"), 0, 1),
            (format!("{beta}-2"), 1, 2),
            (format!("{beta}-3"), 2, 3),
        ]
    );
}

#[tokio::test]
async fn the_overview_reads_need_the_read_role_and_bounded_pages() {
    let app = spawn_app().await;
    for query in [
        "{ logStats { head } }",
        "{ categories { categories } }",
        "{ streams { streams { streamId } } }",
    ] {
        let body = app.graphql(query, json!({}), None).await;
        assert_error(&body, "UNAUTHENTICATED");
    }
    let body = app
        .graphql(
            "{ categories(first: 0) { categories } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");
    let body = app
        .graphql(
            "{ streams(first: 1000000) { streams { streamId } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&body, "BAD_INPUT");
}
