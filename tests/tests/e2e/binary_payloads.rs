//! Binary (Avro) payloads over the real server: clients send JSON with `encoding: AVRO` (or
//! the type is set to store as Avro), the log stores Avro datums, and every reader — the
//! GraphQL queries and subscription, a projection — gets JSON back; `upcast: true` reads
//! them as the latest version, Avro resolution filling v2's default; an event that does not
//! fit its Avro schema refuses its append with a coded error naming the field.

use crate::common::*;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::time::Duration;
use tidemark_api::TidemarkApp;
use tidemark_projections::{
    ApplyContext, EventSelector, Projection, ProjectionError, RecordedEvent,
};

const REGISTER: &str = "mutation($t: String!, $s: JSON!, $a: String) {
    registerSchema(eventType: $t, jsonSchema: $s, avroSchema: $a) { version } }";

const APPEND: &str = "mutation($s: String!, $e: [EventInput!]!) {
    appendEvents(streamId: $s, events: $e) { lastPosition } }";

const AVRO_V1: &str = r#"{"type": "record", "name": "Deposited", "fields": [
    {"name": "amount", "type": "long"},
    {"name": "memo", "type": ["null", "string"], "default": null}]}"#;

const AVRO_V2: &str = r#"{"type": "record", "name": "Deposited", "fields": [
    {"name": "amount", "type": "long"},
    {"name": "memo", "type": ["null", "string"], "default": null},
    {"name": "currency", "type": "string", "default": "EUR"}]}"#;

fn json_v1() -> Value {
    json!({"type": "object", "properties": {"amount": {"type": "integer"}, "memo": {"type": "string"}},
           "required": ["amount"], "additionalProperties": false})
}

fn json_v2() -> Value {
    json!({"type": "object", "properties": {"amount": {"type": "integer"}, "memo": {"type": "string"},
           "currency": {"type": "string", "default": "EUR"}},
           "required": ["amount", "currency"], "additionalProperties": false})
}

/// Records every event it sees, as it sees it.
struct SeenDeposits;

#[async_trait]
impl Projection for SeenDeposits {
    fn name(&self) -> &str {
        "seen_deposits"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::categories(["account"])
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table(
            "seen",
            "position bigint PRIMARY KEY, schema_version int NOT NULL, payload jsonb NOT NULL",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let sql = format!(
            "INSERT INTO {} VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            ctx.table("seen")
        );
        for event in events {
            ctx.tx
                .execute(
                    &sql,
                    &[&event.position, &event.schema_version, &event.payload],
                )
                .await?;
        }
        Ok(())
    }
}

async fn stored_as_avro(app: &TestApp) -> Vec<bool> {
    tidemark_testkit::connect(app.database())
        .await
        .query(
            "SELECT payload_avro IS NOT NULL FROM events ORDER BY position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn avro_events_are_stored_compactly_and_every_reader_gets_json_upcast_on_request() {
    let app = spawn_app_with(
        TidemarkApp::builder().projection(SeenDeposits).build(),
        |_| {},
    )
    .await;
    app.graphql_data(
        REGISTER,
        json!({"t": "Deposited", "s": json_v1(), "a": AVRO_V1}),
        Some(ADMIN_KEY),
    )
    .await;
    // v2 adds `currency` with a default, and no upcaster: Avro resolution reads v1 as v2.
    // Registered before any append, so the projection sees every event as v2.
    app.graphql_data(
        REGISTER,
        json!({"t": "Deposited", "s": json_v2(), "a": AVRO_V2}),
        Some(ADMIN_KEY),
    )
    .await;

    // JSON by default, AVRO asked for; then AVRO by the type's setting.
    app.graphql_data(
        APPEND,
        json!({"s": "account-1", "e": [
            {"type": "Deposited", "data": {"amount": 5}},
            {"type": "Deposited", "data": {"amount": 7, "memo": "rent"}, "encoding": "AVRO"}]}),
        Some(APPEND_KEY),
    )
    .await;
    let set = app
        .graphql_data(
            "mutation { setSchemaEncoding(eventType: \"Deposited\", encoding: AVRO) { encoding } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(set["setSchemaEncoding"]["encoding"], json!("AVRO"));
    app.graphql_data(
        APPEND,
        json!({"s": "account-1", "e": [{"type": "Deposited", "data": {"amount": 9}}]}),
        Some(APPEND_KEY),
    )
    .await;
    assert_eq!(stored_as_avro(&app).await, [false, true, true]);

    // An event that does not fit the Avro schema refuses the append, naming the field.
    let refused = app
        .graphql(
            APPEND,
            json!({"s": "account-1", "e": [
                {"type": "Deposited", "data": {"amount": 1}},
                {"type": "Deposited", "data": {"amount": "lots"}}]}),
            Some(APPEND_KEY),
        )
        .await;
    let error = assert_error(&refused, "SCHEMA_VIOLATION");
    assert_eq!(error["extensions"]["field"], json!("events.1.data"));
    assert_eq!(error["extensions"]["eventIndex"], json!(1));
    assert_eq!(
        error["extensions"]["violations"][0]["path"],
        json!("$.amount")
    );
    assert_eq!(stored_as_avro(&app).await.len(), 3, "nothing was written");

    // As written: JSON for every event, with the encoding it is stored in.
    let written = json!([
        {"schemaVersion": 1, "data": {"amount": 5}, "encoding": "JSON"},
        {"schemaVersion": 1, "data": {"amount": 7, "memo": "rent"}, "encoding": "AVRO"},
        {"schemaVersion": 1, "data": {"amount": 9}, "encoding": "AVRO"}
    ]);
    let read = app
        .graphql_data(
            "{ events { events { schemaVersion data encoding } }
               stream(id: \"account-1\") { events { schemaVersion data encoding } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(read["events"]["events"], written);
    assert_eq!(read["stream"]["events"], written);

    let upcast = json!([
        {"schemaVersion": 2, "data": {"amount": 5, "currency": "EUR"}},
        {"schemaVersion": 2, "data": {"amount": 7, "memo": "rent", "currency": "EUR"}},
        {"schemaVersion": 2, "data": {"amount": 9, "currency": "EUR"}}
    ]);
    let read = app
        .graphql_data(
            "{ events(upcast: true) { events { schemaVersion data } }
               stream(id: \"account-1\", upcast: true) { events { schemaVersion data } }
               asWritten: events { events { schemaVersion } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(read["events"]["events"], upcast);
    assert_eq!(read["stream"]["events"], upcast);
    assert_eq!(
        read["asWritten"]["events"],
        json!([{"schemaVersion": 1}, {"schemaVersion": 1}, {"schemaVersion": 1}]),
        "the default still reads what was written"
    );

    let mut subscription = app
        .subscribe(
            "subscription { events(upcast: true) { position schemaVersion data } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    for (index, expected) in upcast.as_array().unwrap().iter().enumerate() {
        let event = subscription.next().await["events"].clone();
        assert_eq!(event["position"], json!(index + 1));
        assert_eq!(event["schemaVersion"], expected["schemaVersion"]);
        assert_eq!(event["data"], expected["data"]);
    }
    subscription.close().await;

    // The projection folded JSON payloads, as the latest version.
    app.tidemark
        .wait_for("seen_deposits", 3, Duration::from_secs(30))
        .await
        .expect("the projection catches up");
    let folded: Vec<(i32, Value)> = tidemark_testkit::connect(app.database())
        .await
        .query(
            "SELECT schema_version, payload FROM rm_seen_deposits.seen ORDER BY position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(folded.len(), 3);
    for ((version, payload), expected) in folded.iter().zip(upcast.as_array().unwrap()) {
        assert_eq!(json!(version), expected["schemaVersion"]);
        assert_eq!(payload, &expected["data"]);
    }
}
