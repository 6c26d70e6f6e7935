//! API keys and roles: refused callers get UNAUTHENTICATED or FORBIDDEN and change nothing.

use crate::common;

use common::*;
use serde_json::json;
use tidemark_api::auth::{create_key, revoke_key};
use tidemark_api::{Application, Role, ServerConfig, TidemarkApp};

const APPEND: &str =
    "mutation { appendEvents(streamId: \"k-1\", events: [{type: \"T\", data: {}}]) { lastPosition } }";
const REBUILD: &str = "mutation { rebuildProjection(name: \"whatever\") { kind } }";

#[tokio::test]
async fn callers_without_the_right_key_are_refused_with_the_right_code() {
    let app = spawn_app().await;

    let body = app.graphql(APPEND, json!({}), None).await;
    assert_error(&body, "UNAUTHENTICATED");
    let body = app.graphql("{ head }", json!({}), None).await;
    assert_error(&body, "UNAUTHENTICATED");

    let body = app
        .graphql(APPEND, json!({}), Some("not-a-key-at-all-xyz"))
        .await;
    let error = assert_error(&body, "UNAUTHENTICATED");
    assert!(
        error["message"].as_str().unwrap().contains("not known"),
        "{error}"
    );

    let body = app.graphql(APPEND, json!({}), Some(READ_KEY)).await;
    let error = assert_error(&body, "FORBIDDEN");
    assert_eq!(error["extensions"]["requiredRole"], "append");

    let body = app.graphql(REBUILD, json!({}), Some(APPEND_KEY)).await;
    let error = assert_error(&body, "FORBIDDEN");
    assert_eq!(error["extensions"]["requiredRole"], "admin");

    // A malformed header is refused too.
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("authorization", format!("Basic {READ_KEY}"))
        .json(&json!({ "query": "{ head }" }))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_error(&body, "UNAUTHENTICATED");

    // Nothing was written; the right keys work.
    let body = app.graphql("{ head }", json!({}), Some(READ_KEY)).await;
    assert_eq!(body["data"]["head"], 0);
    let body = app.graphql(APPEND, json!({}), Some(APPEND_KEY)).await;
    assert_no_errors(&body);
    let body = app.graphql(REBUILD, json!({}), Some(ADMIN_KEY)).await;
    assert_error(&body, "NOT_FOUND");
}

#[tokio::test]
async fn stored_keys_work_until_revoked() {
    let app = spawn_app().await;
    let pool = app.tidemark.store().pool().clone();
    let (record, key) = create_key(&pool, "ci", Role::Append).await.unwrap();
    let body = app.graphql(APPEND, json!({}), Some(&key)).await;
    assert_no_errors(&body);
    let body = app.graphql(REBUILD, json!({}), Some(&key)).await;
    assert_error(&body, "FORBIDDEN");

    assert!(revoke_key(&pool, &record.id).await.unwrap());
    // Lookups are cached for a few seconds; a restarted server sees the revocation at once.
    let app = app.restart().await;
    let body = app.graphql(APPEND, json!({}), Some(&key)).await;
    assert_error(&body, "UNAUTHENTICATED");
}

#[tokio::test]
async fn insecure_dev_is_open_on_loopback_and_refused_elsewhere() {
    let app = spawn_app_with(TidemarkApp::builder().build(), |config| {
        config.insecure_dev = true;
        config.api_keys.clear();
    })
    .await;
    let body = app.graphql(APPEND, json!({}), None).await;
    assert_no_errors(&body);

    let refused = Application::build(
        ServerConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            insecure_dev: true,
            database: tidemark_api::DatabaseConfig::url(app.database().url()),
            ..ServerConfig::default()
        },
        TidemarkApp::builder().build(),
    )
    .await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("loopback"), "{message}");
}

/// An application query object with one field it forgot to guard and one it made public.
#[derive(Default, Clone)]
struct AppQuery;

#[async_graphql::Object]
impl AppQuery {
    /// No guard: deny by default makes it need the `read` role.
    async fn account_secret(&self) -> &'static str {
        "s3cret"
    }

    /// Listed with `public_field`.
    async fn message_of_the_day(&self) -> &'static str {
        "hello"
    }
}

/// Deny by default: the application's root fields need at least the `read` role when
/// authentication is on, unless listed as public; built-in fields keep their own guards.
#[tokio::test]
async fn application_fields_need_a_read_key_unless_declared_public() {
    let app = spawn_app_with(
        TidemarkApp::builder()
            .graphql_query(AppQuery)
            .public_field("messageOfTheDay")
            .build(),
        |_| {},
    )
    .await;

    let body = app.graphql("{ accountSecret }", json!({}), None).await;
    let error = assert_error(&body, "UNAUTHENTICATED");
    assert!(
        error["message"].as_str().unwrap().contains("accountSecret"),
        "the message names the field: {error}"
    );
    assert!(body["data"].is_null(), "nothing is answered: {body}");
    // Hidden behind a fragment or an alias, it is still refused.
    let body = app
        .graphql(
            "query { ...F } fragment F on Query { a: accountSecret }",
            json!({}),
            None,
        )
        .await;
    assert_error(&body, "UNAUTHENTICATED");
    let body = app
        .graphql("{ accountSecret }", json!({}), Some("not-a-key-at-all-xyz"))
        .await;
    assert_error(&body, "UNAUTHENTICATED");

    let data = app
        .graphql_data("{ accountSecret }", json!({}), Some(READ_KEY))
        .await;
    assert_eq!(data["accountSecret"], "s3cret");
    let data = app
        .graphql_data("{ messageOfTheDay }", json!({}), None)
        .await;
    assert_eq!(data["messageOfTheDay"], "hello");
    // Introspection stays as it was.
    let data = app.graphql_data("{ __typename }", json!({}), None).await;
    assert_eq!(data["__typename"], "Query");
}
