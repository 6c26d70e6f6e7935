//! Schema evolution over the real server: the registry's GraphQL fields (admin mutations,
//! "would this break?" checks, coded errors), validation on append through `appendEvents`,
//! upcasting seen by projections and aggregate loads while the log keeps what was written,
//! and `tidemark schemas register|list|check` against the server's database.

use crate::common::*;
use serde_json::{json, Value};
use tidemark_api::cli::{run_with, Cli};
use tidemark_api::TidemarkApp;

const REGISTER: &str = "mutation($t: String!, $s: JSON!, $u: JSON) {
    registerSchema(eventType: $t, jsonSchema: $s, upcastFromPrevious: $u) { eventType version created } }";

const CHECK: &str = "query($t: String!, $s: JSON!) {
    checkSchemaCompatibility(eventType: $t, jsonSchema: $s) {
      compatible mode incompatibilities { version direction rule path message } } }";

const SET_VALIDATION: &str = "mutation($t: String!, $m: ValidationMode) {
    setSchemaValidation(eventType: $t, mode: $m) { eventType validation effectiveValidation versions } }";

fn deposited_v1() -> Value {
    json!({
        "type": "object",
        "properties": {"amount": {"type": "integer", "minimum": 1}},
        "required": ["amount"],
        "additionalProperties": false
    })
}

fn deposited_v2() -> Value {
    json!({
        "type": "object",
        "properties": {
            "amount": {"type": "integer", "minimum": 1},
            "currency": {"type": "string", "default": "EUR"}
        },
        "required": ["amount", "currency"],
        "additionalProperties": false
    })
}

async fn register(app: &TestApp, event_type: &str, schema: Value, upcast: Value) -> Value {
    app.graphql_data(
        REGISTER,
        json!({"t": event_type, "s": schema, "u": upcast}),
        Some(ADMIN_KEY),
    )
    .await["registerSchema"]
        .clone()
}

#[tokio::test]
async fn schemas_are_registered_listed_read_and_checked_over_graphql() {
    let app = spawn_app().await;
    let vars = json!({"t": "Deposited", "s": deposited_v1()});

    let forbidden = app.graphql(REGISTER, vars.clone(), Some(APPEND_KEY)).await;
    assert_error(&forbidden, "FORBIDDEN");

    let first = register(&app, "Deposited", deposited_v1(), Value::Null).await;
    assert_eq!(
        first,
        json!({"eventType": "Deposited", "version": 1, "created": true})
    );
    let again = register(&app, "Deposited", deposited_v1(), Value::Null).await;
    assert_eq!(again["created"], json!(false), "idempotent: {again}");
    assert_eq!(again["version"], json!(1));

    // "Would this break?": a new required field without a default breaks BACKWARD.
    let mut breaking = deposited_v2();
    breaking["properties"]["currency"] = json!({"type": "string"});
    let report = app
        .graphql_data(
            CHECK,
            json!({"t": "Deposited", "s": breaking}),
            Some(READ_KEY),
        )
        .await["checkSchemaCompatibility"]
        .clone();
    assert_eq!(report["compatible"], json!(false));
    assert_eq!(report["mode"], json!("BACKWARD"));
    let finding = &report["incompatibilities"][0];
    assert_eq!(finding["rule"], json!("REQUIRED_FIELD_ADDED"));
    assert_eq!(finding["path"], json!("$.currency"));
    assert_eq!(finding["version"], json!(1));
    let fine = app
        .graphql_data(
            CHECK,
            json!({"t": "Deposited", "s": deposited_v2()}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(fine["checkSchemaCompatibility"]["compatible"], json!(true));
    assert_eq!(
        app.graphql_data("{ schemaSubjects { versions } }", json!({}), Some(READ_KEY))
            .await["schemaSubjects"][0]["versions"],
        json!([1]),
        "a check registers nothing"
    );

    // Registering the breaking schema is refused, naming the field and the rule.
    let refused = app
        .graphql(
            REGISTER,
            json!({"t": "Deposited", "s": breaking}),
            Some(ADMIN_KEY),
        )
        .await;
    let error = assert_error(&refused, "SCHEMA_INCOMPATIBLE");
    let listed = &error["extensions"]["incompatibilities"][0];
    assert_eq!(listed["rule"], json!("REQUIRED_FIELD_ADDED"));
    assert_eq!(listed["path"], json!("$.currency"));

    let invalid = app
        .graphql(
            CHECK,
            json!({"t": "Deposited", "s": {"type": "no-such-type"}}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&invalid, "SCHEMA_INVALID");

    // With NONE, anything goes.
    let none = app
        .graphql_data(
            "mutation { setSchemaCompatibility(eventType: \"Deposited\", mode: NONE) {
                compatibility effectiveCompatibility } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(
        none["setSchemaCompatibility"],
        json!({"compatibility": "NONE", "effectiveCompatibility": "NONE"})
    );
    let second = register(&app, "Deposited", breaking, Value::Null).await;
    assert_eq!(second["version"], json!(2));

    let read = app
        .graphql_data(
            "{ schemaVersion(eventType: \"Deposited\", version: 1) { version jsonSchema fingerprint }
               latest: schemaVersion(eventType: \"Deposited\") { version }
               schemaSubjects { eventType compatibility validation effectiveValidation versions latestVersion }
               schemaSettings { defaultCompatibility defaultValidation unregisteredPolicy } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(read["schemaVersion"]["jsonSchema"], deposited_v1());
    assert_eq!(
        read["schemaVersion"]["fingerprint"].as_str().unwrap().len(),
        64
    );
    assert_eq!(read["latest"]["version"], json!(2));
    assert_eq!(
        read["schemaSubjects"],
        json!([{"eventType": "Deposited", "compatibility": "NONE", "validation": null,
                "effectiveValidation": "OFF", "versions": [1, 2], "latestVersion": 2}])
    );
    assert_eq!(
        read["schemaSettings"],
        json!({"defaultCompatibility": "BACKWARD", "defaultValidation": "OFF",
               "unregisteredPolicy": "ALLOW"})
    );
    let missing = app
        .graphql(
            "{ schemaVersion(eventType: \"Nope\") { version } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&missing, "SCHEMA_NOT_FOUND");
}

const APPEND: &str = "mutation($s: String!, $e: [EventInput!]!) {
    appendEvents(streamId: $s, events: $e) { lastPosition } }";

#[tokio::test]
async fn enforce_refuses_a_mixed_append_with_schema_violation_and_writes_nothing_of_it() {
    let app = spawn_app().await;
    register(&app, "Deposited", deposited_v1(), Value::Null).await;
    let set = app
        .graphql_data(
            SET_VALIDATION,
            json!({"t": "Deposited", "m": "ENFORCE"}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(
        set["setSchemaValidation"]["effectiveValidation"],
        json!("ENFORCE")
    );

    let good = json!([{"type": "Deposited", "data": {"amount": 5}},
                      {"type": "Deposited", "data": {"amount": 7}}]);
    let mixed =
        json!([good[0], {"type": "Deposited", "data": {"amount": 5, "note": "x"}}, good[1]]);
    let refused = app
        .graphql(
            APPEND,
            json!({"s": "account-1", "e": mixed}),
            Some(APPEND_KEY),
        )
        .await;
    let error = assert_error(&refused, "SCHEMA_VIOLATION");
    assert_eq!(error["extensions"]["field"], json!("events.1.data"));
    assert_eq!(error["extensions"]["eventIndex"], json!(1));
    let violation = &error["extensions"]["violations"][0];
    assert_eq!(violation["rule"], json!("additionalProperties"));
    assert_eq!(violation["path"], json!("$"));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("nothing of it was written"),
        "{error}"
    );
    assert!(app.all_events().await.is_empty(), "nothing was written");

    app.append("account-1", good).await;
    assert_eq!(app.all_events().await.len(), 2);

    // Types without a schema follow the server-wide policy.
    app.append("other-1", json!([{"type": "Unknown", "data": {}}]))
        .await;
    app.graphql_data(
        "mutation { setSchemaSettings(unregisteredPolicy: REFUSE) { unregisteredPolicy } }",
        json!({}),
        Some(ADMIN_KEY),
    )
    .await;
    let refused = app
        .graphql(
            APPEND,
            json!({"s": "other-1", "e": [{"type": "Unknown", "data": {}}]}),
            Some(APPEND_KEY),
        )
        .await;
    assert_error(&refused, "SCHEMA_REQUIRED");
    assert_eq!(app.all_events().await.len(), 3);
}

#[tokio::test]
async fn the_api_reads_the_log_as_written_while_the_upcasting_handle_sees_the_latest_version() {
    let app = spawn_app().await;
    register(&app, "Deposited", deposited_v1(), Value::Null).await;
    app.append(
        "account-1",
        json!([{"type": "Deposited", "data": {"amount": 5}}]),
    )
    .await;
    let upcast = json!([{"op": "add_field", "path": "currency", "default": "EUR"}]);
    let second = register(&app, "Deposited", deposited_v2(), upcast).await;
    assert_eq!(second["version"], json!(2));
    let v1 = app
        .graphql_data(
            "{ schemaVersion(eventType: \"Deposited\", version: 1) { upcastToNext } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(
        v1["schemaVersion"]["upcastToNext"],
        json!([{"op": "add_field", "path": "currency", "default": "EUR"}])
    );

    let events = app
        .graphql_data(
            "{ stream(id: \"account-1\") { events { schemaVersion data } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(
        events["stream"]["events"][0],
        json!({"schemaVersion": 1, "data": {"amount": 5}}),
        "the log keeps what was written"
    );
    let through_engine = tidemark_testkit::read_all(app.tidemark.engine().store()).await;
    assert_eq!(through_engine[0].schema_version, 2);
    assert_eq!(
        through_engine[0].payload,
        json!({"amount": 5, "currency": "EUR"})
    );
    let through_bus = app
        .tidemark
        .commands()
        .store()
        .read_stream("account-1", None, tidemark_store::Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(through_bus[0].payload["currency"], json!("EUR"));
}

/// Runs the `tidemark` command line against `database_url`, as a user would (on a thread of
/// its own: it starts its own runtime).
async fn cli(args: &[&str], database_url: String) -> anyhow::Result<()> {
    use clap::Parser;
    let mut argv = vec!["tidemark".to_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv.extend(["--database-url".to_owned(), database_url]);
    let cli = Cli::try_parse_from(argv)?;
    tokio::task::spawn_blocking(move || run_with(cli, TidemarkApp::builder().build()))
        .await
        .expect("the command line does not panic")
}

#[tokio::test]
async fn the_command_line_registers_checks_and_lists_schema_files() {
    let app = spawn_app().await;
    let url = app.database().url();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let v1 = write("v1.json", &deposited_v1());
    let v2 = write("v2.json", &deposited_v2());
    let upcast = write(
        "upcast.json",
        &json!([{"op": "add_field", "path": "currency", "default": "EUR"}]),
    );
    let mut breaking = deposited_v2();
    breaking["properties"]["currency"] = json!({"type": "string"});
    let breaking = write("breaking.json", &breaking);

    cli(&["schemas", "register", "Deposited", &v1], url.clone())
        .await
        .expect("registered");
    cli(&["schemas", "check", "Deposited", &v2], url.clone())
        .await
        .expect("v2 is compatible");
    let error = cli(&["schemas", "check", "Deposited", &breaking], url.clone())
        .await
        .expect_err("the breaking schema is reported");
    assert!(error.to_string().contains("1 incompatibility"), "{error}");
    cli(
        &["schemas", "register", "Deposited", &v2, "--upcast", &upcast],
        url.clone(),
    )
    .await
    .expect("v2 registered");
    cli(
        &["schemas", "set", "Deposited", "--validation", "enforce"],
        url.clone(),
    )
    .await
    .expect("mode set");
    cli(&["schemas", "list"], url.clone())
        .await
        .expect("listed");
    cli(
        &["schemas", "list", "Deposited", "--schema-version", "1"],
        url,
    )
    .await
    .expect("shown");

    // The server sees what the command line did (its registry rereads within a second).
    let subjects = eventually("the server sees the CLI's changes", WAIT, || async {
        let body = app
            .graphql(
                "{ schemaSubjects { eventType validation versions }
                   schemaVersion(eventType: \"Deposited\", version: 1) { upcastToNext } }",
                json!({}),
                Some(READ_KEY),
            )
            .await;
        let data = &body["data"];
        (body["errors"].is_null() && data["schemaSubjects"][0]["validation"] == json!("ENFORCE"))
            .then(|| data.clone())
    })
    .await;
    assert_eq!(subjects["schemaSubjects"][0]["versions"], json!([1, 2]));
    assert_eq!(
        subjects["schemaVersion"]["upcastToNext"][0]["op"],
        json!("add_field")
    );
    let refused = app
        .graphql(
            APPEND,
            json!({"s": "account-1", "e": [{"type": "Deposited", "data": {"amount": 0}}]}),
            Some(APPEND_KEY),
        )
        .await;
    let error = assert_error(&refused, "SCHEMA_VIOLATION");
    assert_eq!(
        error["extensions"]["violations"][0]["rule"],
        json!("minimum")
    );
}
