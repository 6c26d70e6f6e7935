//! The registry against a real PostgreSQL: registration, modes, validation on append,
//! deletion guards, caches across processes, upcasting and Avro through the registry.

use std::time::Duration;

use serde_json::{json, Value};
use tidemark_schema::registry::{AvroTarget, Registry, RegistryOptions, SchemaDefinition};
use tidemark_schema::{
    CompatibilityMode, DeclarativeUpcast, Direction, Incompatibility, SchemaError,
    UnregisteredPolicy, Upcasters, ValidationMode, ValidationOutcome,
};
use tidemark_testkit::TestDatabase;
use tokio_postgres::NoTls;

/// A fresh database with the store's migrations and the registry's.
async fn database() -> TestDatabase {
    let db = TestDatabase::create().await;
    let (mut client, connection) = db.pg_config().connect(NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    let migrations =
        tidemark_store::migrate::MigrationSet::store().with(tidemark_schema::MIGRATIONS);
    tidemark_store::migrate::run(&mut client, &migrations)
        .await
        .unwrap();
    drop(client);
    connection.await.unwrap().unwrap();
    db
}

async fn registry(db: &TestDatabase) -> Registry {
    let options = RegistryOptions {
        max_staleness: Duration::ZERO,
    };
    Registry::open(db.pool(4), options).await.unwrap()
}

fn closed(properties: Value, required: &[&str]) -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    }))
}

fn order_v1() -> SchemaDefinition {
    closed(
        json!({"order_id": {"type": "string"}, "total": {"type": "number"}}),
        &["order_id", "total"],
    )
}

fn order_v2() -> SchemaDefinition {
    closed(
        json!({"order_id": {"type": "string"}, "total": {"type": "number"},
               "note": {"type": "string"}}),
        &["order_id", "total"],
    )
}

/// Stores an event claiming `version` of `event_type`, as the append path would.
async fn store_event(db: &TestDatabase, event_type: &str, version: i32, position: i64) {
    let (client, connection) = db.pg_config().connect(NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO events (position, stream_id, stream_version, partition, event_id, \
             event_type, schema_version, payload, content_hash) \
             VALUES ($1, $4, 0, 0, gen_random_uuid(), $2, $3, '{}'::jsonb, \
             decode(repeat('00', 32), 'hex'))",
            &[
                &position,
                &event_type,
                &version,
                &format!("order-{position}"),
            ],
        )
        .await
        .unwrap();
    drop(client);
    connection.await.unwrap().unwrap();
}

#[tokio::test]
async fn registering_numbers_versions_and_is_idempotent() {
    let db = database().await;
    let registry = registry(&db).await;

    let first = registry.register("OrderPlaced", &order_v1()).await.unwrap();
    assert_eq!((first.version, first.created), (1, true));
    let again = registry.register("OrderPlaced", &order_v1()).await.unwrap();
    assert_eq!((again.version, again.created), (1, false));
    // The same schema with its keys in another order is the same schema.
    let reordered: Value = serde_json::from_str(
        r#"{"additionalProperties": false, "required": ["order_id", "total"],
            "properties": {"total": {"type": "number"}, "order_id": {"type": "string"}},
            "type": "object"}"#,
    )
    .unwrap();
    let same = registry
        .register("OrderPlaced", &SchemaDefinition::json(reordered))
        .await
        .unwrap();
    assert_eq!((same.version, same.created), (1, false));

    let second = registry.register("OrderPlaced", &order_v2()).await.unwrap();
    assert_eq!((second.version, second.created), (2, true));
    // An earlier schema registered again finds its own version, not a new one.
    let old = registry.register("OrderPlaced", &order_v1()).await.unwrap();
    assert_eq!((old.version, old.created), (1, false));

    let latest = registry.latest("OrderPlaced").await.unwrap().unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(latest.json_schema, order_v2().json_schema);
    assert_eq!(
        registry.get("OrderPlaced", 1).await.unwrap().json_schema,
        order_v1().json_schema
    );
    assert_eq!(
        registry.get("OrderPlaced", 3).await.unwrap_err().code(),
        "SCHEMA_NOT_FOUND"
    );
    assert!(registry.latest("Nothing").await.unwrap().is_none());

    let subjects = registry.list().await.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].event_type, "OrderPlaced");
    assert_eq!(subjects[0].versions, vec![1, 2]);
    assert_eq!(subjects[0].compatibility, None);
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_naming_field_and_rule() {
    let db = database().await;
    let registry = registry(&db).await;
    registry.register("OrderPlaced", &order_v1()).await.unwrap();

    let required_added = closed(
        json!({"order_id": {"type": "string"}, "total": {"type": "number"},
               "currency": {"type": "string"}}),
        &["order_id", "total", "currency"],
    );
    let checked = registry
        .check("OrderPlaced", &required_added)
        .await
        .unwrap();
    assert_eq!(checked.len(), 1, "{checked:?}");
    assert_eq!(
        checked[0].incompatibility,
        Incompatibility::RequiredFieldAdded {
            path: "$.currency".into()
        }
    );
    assert_eq!(
        (checked[0].version, checked[0].direction),
        (1, Direction::Backward)
    );

    let error = registry
        .register("OrderPlaced", &required_added)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "SCHEMA_INCOMPATIBLE");
    let message = error.to_string();
    assert!(message.contains("$.currency"), "{message}");
    assert!(message.contains("REQUIRED_FIELD_ADDED"), "{message}");
    match error {
        SchemaError::Incompatible {
            mode,
            incompatibilities,
            ..
        } => {
            assert_eq!(mode, CompatibilityMode::Backward);
            assert_eq!(incompatibilities, checked);
        }
        other => panic!("{other:?}"),
    }
    // Nothing was stored.
    assert_eq!(
        registry
            .latest("OrderPlaced")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );

    // The same change with a default is compatible.
    let with_default = closed(
        json!({"order_id": {"type": "string"}, "total": {"type": "number"},
               "currency": {"type": "string", "default": "EUR"}}),
        &["order_id", "total", "currency"],
    );
    assert!(registry
        .check("OrderPlaced", &with_default)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        registry
            .register("OrderPlaced", &with_default)
            .await
            .unwrap()
            .version,
        2
    );

    let invalid = SchemaDefinition::json(json!({"type": 12}));
    assert_eq!(
        registry
            .register("OrderPlaced", &invalid)
            .await
            .unwrap_err()
            .code(),
        "SCHEMA_INVALID"
    );
}

#[tokio::test]
async fn modes_per_type_and_the_default_decide_what_is_checked() {
    let db = database().await;
    let registry = registry(&db).await;
    let with_note = closed(
        json!({"id": {"type": "string"}, "note": {"type": "integer"}}),
        &["id"],
    );
    let without_note = closed(json!({"id": {"type": "string"}}), &["id"]);
    let note_as_text = closed(
        json!({"id": {"type": "string"}, "note": {"type": "string"}}),
        &["id"],
    );
    assert_eq!(
        registry.settings().await.unwrap().default_compatibility,
        CompatibilityMode::Backward
    );
    registry.register("T", &with_note).await.unwrap();

    // Dropping `note` from a closed object is not backward compatible, but forward.
    let refused = registry.register("T", &without_note).await.unwrap_err();
    assert_eq!(refused.code(), "SCHEMA_INCOMPATIBLE");
    registry
        .set_mode("T", Some(CompatibilityMode::Forward))
        .await
        .unwrap();
    assert_eq!(
        registry.mode("T").await.unwrap(),
        CompatibilityMode::Forward
    );
    assert_eq!(
        registry.register("T", &without_note).await.unwrap().version,
        2
    );

    // Bringing `note` back with another type reads v2's data, but not v1's.
    registry
        .set_mode("T", Some(CompatibilityMode::BackwardTransitive))
        .await
        .unwrap();
    let error = registry.register("T", &note_as_text).await.unwrap_err();
    match &error {
        SchemaError::Incompatible {
            incompatibilities, ..
        } => {
            assert_eq!(incompatibilities.len(), 1, "{error}");
            assert_eq!(incompatibilities[0].version, 1);
            assert_eq!(incompatibilities[0].incompatibility.rule(), "TYPE_CHANGED");
            assert_eq!(incompatibilities[0].incompatibility.path(), "$.note");
        }
        other => panic!("{other:?}"),
    }
    // Back to the default (BACKWARD, against the latest only): accepted.
    registry.set_mode("T", None).await.unwrap();
    assert_eq!(
        registry.mode("T").await.unwrap(),
        CompatibilityMode::Backward
    );
    assert_eq!(
        registry.register("T", &note_as_text).await.unwrap().version,
        3
    );

    // The default applies to every type without a mode of its own.
    registry
        .set_default_mode(CompatibilityMode::None)
        .await
        .unwrap();
    assert_eq!(registry.mode("T").await.unwrap(), CompatibilityMode::None);
    assert_eq!(registry.register("T", &with_note).await.unwrap().version, 1);
    let anything = closed(json!({"x": {"type": "boolean"}}), &["x"]);
    assert_eq!(registry.register("T", &anything).await.unwrap().version, 4);
    registry
        .set_mode("U", Some(CompatibilityMode::Full))
        .await
        .unwrap();
    let subjects = registry.list().await.unwrap();
    let u = subjects.iter().find(|s| s.event_type == "U").unwrap();
    assert_eq!(u.compatibility, Some(CompatibilityMode::Full));
    assert!(u.versions.is_empty());
}

#[tokio::test]
async fn validation_on_append_follows_the_type_mode_and_the_server_policy() {
    let db = database().await;
    let registry = registry(&db).await;
    registry.register("OrderPlaced", &order_v1()).await.unwrap();
    let valid = json!({"order_id": "o-1", "total": 3.5});
    let invalid = json!({"order_id": "o-1", "total": "3.5", "coupon": "X"});

    // Default: off.
    assert_eq!(
        registry.validate("OrderPlaced", 1, &invalid).await.unwrap(),
        ValidationOutcome::NotChecked
    );

    registry
        .set_validation("OrderPlaced", Some(ValidationMode::Enforce))
        .await
        .unwrap();
    assert_eq!(
        registry.validate("OrderPlaced", 1, &valid).await.unwrap(),
        ValidationOutcome::Valid
    );
    let error = registry
        .validate("OrderPlaced", 1, &invalid)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "SCHEMA_VIOLATION");
    match &error {
        SchemaError::Violation {
            violations,
            version,
            ..
        } => {
            assert_eq!(*version, 1);
            let mut found: Vec<(&str, &str)> = violations
                .iter()
                .map(|v| (v.path.as_str(), v.keyword.as_str()))
                .collect();
            found.sort();
            assert_eq!(
                found,
                vec![("$", "additionalProperties"), ("$.total", "type")]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        registry
            .validate("OrderPlaced", 7, &valid)
            .await
            .unwrap_err()
            .code(),
        "SCHEMA_NOT_FOUND"
    );

    registry
        .set_validation("OrderPlaced", Some(ValidationMode::Warn))
        .await
        .unwrap();
    match registry.validate("OrderPlaced", 1, &invalid).await.unwrap() {
        ValidationOutcome::Invalid(violations) => assert_eq!(violations.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        registry.validate("OrderPlaced", 7, &valid).await.unwrap(),
        ValidationOutcome::UnknownVersion
    );

    // The server-wide default applies to a type without its own mode.
    registry.set_validation("OrderPlaced", None).await.unwrap();
    registry
        .set_default_validation(ValidationMode::Enforce)
        .await
        .unwrap();
    assert_eq!(
        registry.validation_mode("OrderPlaced").await.unwrap(),
        ValidationMode::Enforce
    );
    assert!(registry.validate("OrderPlaced", 1, &invalid).await.is_err());

    // Types without a schema: the server's policy.
    assert_eq!(
        registry.validate("Unknown", 1, &json!({})).await.unwrap(),
        ValidationOutcome::Unregistered
    );
    registry
        .set_unregistered_policy(UnregisteredPolicy::Refuse)
        .await
        .unwrap();
    let refused = registry
        .validate("Unknown", 1, &json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "SCHEMA_REQUIRED");
    assert_eq!(
        registry.settings().await.unwrap().unregistered_policy,
        UnregisteredPolicy::Refuse
    );
}

#[tokio::test]
async fn versions_that_events_claim_are_never_deleted() {
    let db = database().await;
    let registry = registry(&db).await;
    registry
        .set_default_mode(CompatibilityMode::None)
        .await
        .unwrap();
    for n in 1..=3 {
        let schema = closed(json!({format!("f{n}"): {"type": "string"}}), &[]);
        assert_eq!(registry.register("T", &schema).await.unwrap().version, n);
    }
    store_event(&db, "T", 1, 1).await;
    store_event(&db, "T", 1, 2).await;
    store_event(&db, "Other", 2, 3).await;

    let error = registry.delete_version("T", 1).await.unwrap_err();
    assert_eq!(error.code(), "SCHEMA_IN_USE");
    assert!(matches!(
        error,
        SchemaError::InUse {
            events: 2,
            version: 1,
            ..
        }
    ));
    registry.delete_version("T", 2).await.unwrap();
    assert_eq!(
        registry.delete_version("T", 2).await.unwrap_err().code(),
        "SCHEMA_NOT_FOUND"
    );
    assert_eq!(registry.list().await.unwrap()[0].versions, vec![1, 3]);

    // A deleted number is not given out again.
    let next = closed(json!({"f4": {"type": "string"}}), &[]);
    assert_eq!(registry.register("T", &next).await.unwrap().version, 4);

    // The database refuses the deletion of a used version whoever asks.
    let (client, connection) = db.pg_config().connect(NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    let refused = client
        .execute(
            "DELETE FROM schema_versions WHERE event_type = 'T' AND version = 1",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::RESTRICT_VIOLATION)
    );
    drop(client);
    connection.await.unwrap().unwrap();
}

#[tokio::test]
async fn another_process_sees_changes_once_its_view_may_be_stale() {
    let db = database().await;
    let writer = registry(&db).await;
    let fresh = registry(&db).await;
    let cached = Registry::open(
        db.pool(2),
        RegistryOptions {
            max_staleness: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    let invalid = json!({"order_id": 1});
    assert!(cached.latest("OrderPlaced").await.unwrap().is_none());

    writer.register("OrderPlaced", &order_v1()).await.unwrap();
    writer
        .set_validation("OrderPlaced", Some(ValidationMode::Enforce))
        .await
        .unwrap();
    // A zero staleness reads the generation on every call.
    assert_eq!(
        fresh.latest("OrderPlaced").await.unwrap().unwrap().version,
        1
    );
    assert!(fresh.validate("OrderPlaced", 1, &invalid).await.is_err());
    // A long one keeps its snapshot until it is due or refreshed.
    assert!(cached.latest("OrderPlaced").await.unwrap().is_none());
    assert_eq!(
        cached.validate("OrderPlaced", 1, &invalid).await.unwrap(),
        ValidationOutcome::Unregistered
    );
    cached.refresh().await.unwrap();
    assert_eq!(
        cached.latest("OrderPlaced").await.unwrap().unwrap().version,
        1
    );
    assert!(cached.validate("OrderPlaced", 1, &invalid).await.is_err());
}

/// v1 `{name}` → v2 `{full_name, country}` declaratively (stored in the registry) → v3
/// `{first_name, last_name, country}` by a Rust upcaster of the application.
#[tokio::test]
async fn readers_see_the_latest_version_through_the_upcaster_chain() {
    let db = database().await;
    let registry = registry(&db).await;
    registry
        .set_mode("CustomerRegistered", Some(CompatibilityMode::None))
        .await
        .unwrap();
    let v1 = closed(json!({"name": {"type": "string"}}), &["name"]);
    let v2 = closed(
        json!({"full_name": {"type": "string"}, "country": {"type": "string"}}),
        &["full_name", "country"],
    )
    .with_upcast_from_previous(vec![
        DeclarativeUpcast::RenameField {
            from: "name".into(),
            to: "full_name".into(),
        },
        DeclarativeUpcast::AddField {
            path: "country".into(),
            default: json!("NL"),
        },
    ]);
    let v3 = closed(
        json!({"first_name": {"type": "string"}, "last_name": {"type": "string"},
               "country": {"type": "string"}}),
        &["first_name", "last_name", "country"],
    );
    for (n, schema) in [(1, &v1), (2, &v2), (3, &v3)] {
        assert_eq!(
            registry
                .register("CustomerRegistered", schema)
                .await
                .unwrap()
                .version,
            n
        );
    }
    let stored = registry.get("CustomerRegistered", 1).await.unwrap();
    assert_eq!(stored.upcast_to_next.as_ref().map(Vec::len), Some(2));

    let mut upcasters = Upcasters::new();
    upcasters
        .register_fn("CustomerRegistered", 2, |payload| {
            let full = payload["full_name"].as_str().ok_or("no full_name")?;
            let (first, last) = full.split_once(' ').unwrap_or((full, ""));
            Ok(json!({"first_name": first, "last_name": last, "country": payload["country"]}))
        })
        .unwrap();

    let (version, latest) = registry
        .to_latest(
            &upcasters,
            "CustomerRegistered",
            1,
            json!({"name": "Ada Lovelace"}),
        )
        .await
        .unwrap();
    assert_eq!(version, 3);
    let expected = json!({"first_name": "Ada", "last_name": "Lovelace", "country": "NL"});
    assert_eq!(latest, expected);
    // The result is valid for the latest schema, and reading it again changes nothing.
    registry
        .set_validation("CustomerRegistered", Some(ValidationMode::Enforce))
        .await
        .unwrap();
    assert_eq!(
        registry
            .validate("CustomerRegistered", 3, &latest)
            .await
            .unwrap(),
        ValidationOutcome::Valid
    );
    let (_, again) = registry
        .to_latest(&upcasters, "CustomerRegistered", 3, latest.clone())
        .await
        .unwrap();
    assert_eq!(again, expected);

    // Without the application's upcaster the chain has a gap, named in the error.
    let error = registry
        .to_latest(
            &Upcasters::new(),
            "CustomerRegistered",
            1,
            json!({"name": "Ada"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), "UPCAST_FAILED");
    assert!(error.to_string().contains("from version 2 to 3"), "{error}");

    // The stored upcast can be replaced; the new one applies at once.
    registry
        .set_upcast(
            "CustomerRegistered",
            1,
            Some(&[
                DeclarativeUpcast::RenameField {
                    from: "name".into(),
                    to: "full_name".into(),
                },
                DeclarativeUpcast::AddField {
                    path: "country".into(),
                    default: json!("GB"),
                },
            ]),
        )
        .await
        .unwrap();
    let (_, latest) = registry
        .to_latest(
            &upcasters,
            "CustomerRegistered",
            1,
            json!({"name": "Ada Lovelace"}),
        )
        .await
        .unwrap();
    assert_eq!(latest["country"], "GB");
}

const AVRO_V1: &str = r#"{"type": "record", "name": "OrderPlaced", "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "total", "type": "double"},
    {"name": "note", "type": ["null", "string"], "default": null}
]}"#;

const AVRO_V2: &str = r#"{"type": "record", "name": "OrderPlaced", "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "total", "type": "double"},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "channel", "type": "string", "default": "web"}
]}"#;

fn avro_json_v1() -> SchemaDefinition {
    closed(
        json!({"order_id": {"type": "string"}, "total": {"type": "number"},
               "note": {"type": ["string", "null"]}}),
        &["order_id", "total"],
    )
    .with_avro(AVRO_V1)
}

fn avro_json_v2() -> SchemaDefinition {
    closed(
        json!({"order_id": {"type": "string"}, "total": {"type": "number"},
               "note": {"type": ["string", "null"]},
               "channel": {"type": "string", "default": "web"}}),
        &["order_id", "total", "channel"],
    )
    .with_avro(AVRO_V2)
    .with_upcast_from_previous(vec![DeclarativeUpcast::AddField {
        path: "channel".into(),
        default: json!("web"),
    }])
}

#[tokio::test]
async fn binary_and_json_events_of_the_same_content_read_the_same() {
    let db = database().await;
    let registry = registry(&db).await;
    registry
        .register("OrderPlaced", &avro_json_v1())
        .await
        .unwrap();
    registry
        .set_validation("OrderPlaced", Some(ValidationMode::Enforce))
        .await
        .unwrap();
    let payloads = [
        json!({"order_id": "o-1", "total": 12.5}),
        json!({"order_id": "o-2", "total": 3.0, "note": "gift"}),
    ];
    for json_event in &payloads {
        registry
            .validate("OrderPlaced", 1, json_event)
            .await
            .unwrap();
        let binary = registry
            .encode_avro("OrderPlaced", 1, json_event)
            .await
            .unwrap();
        let (version, decoded) = registry
            .decode_avro("OrderPlaced", 1, &binary, AvroTarget::Written)
            .await
            .unwrap();
        assert_eq!((version, &decoded), (1, json_event));
    }

    registry
        .register("OrderPlaced", &avro_json_v2())
        .await
        .unwrap();
    let upcasters = Upcasters::new();
    for json_event in &payloads {
        let binary = registry
            .encode_avro("OrderPlaced", 1, json_event)
            .await
            .unwrap();
        // Read as JSON written at v1, and as binary written at v1, each to the latest version.
        let from_json = registry
            .to_latest(&upcasters, "OrderPlaced", 1, json_event.clone())
            .await
            .unwrap();
        let (written, decoded) = registry
            .decode_avro("OrderPlaced", 1, &binary, AvroTarget::Written)
            .await
            .unwrap();
        let from_binary = registry
            .to_latest(&upcasters, "OrderPlaced", written, decoded)
            .await
            .unwrap();
        assert_eq!(from_binary, from_json);
        // Avro's own resolution into the latest schema gives the same.
        let resolved = registry
            .decode_avro("OrderPlaced", 1, &binary, AvroTarget::Latest)
            .await
            .unwrap();
        assert_eq!(resolved, from_json);
        assert_eq!(resolved.0, 2);
        assert_eq!(resolved.1["channel"], "web");
    }

    // An Avro schema that cannot read the earlier one is refused like a JSON Schema.
    let breaking = closed(
        json!({"order_id": {"type": "string"}, "total": {"type": "number"},
               "note": {"type": ["string", "null"]},
               "channel": {"type": "string", "default": "web"},
               "region": {"type": "string", "default": "eu"}}),
        &["order_id", "total", "channel"],
    )
    .with_avro(
        r#"{"type": "record", "name": "OrderPlaced", "fields": [
            {"name": "order_id", "type": "string"},
            {"name": "total", "type": "double"},
            {"name": "note", "type": ["null", "string"], "default": null},
            {"name": "channel", "type": "string", "default": "web"},
            {"name": "region", "type": "string"}
        ]}"#,
    );
    let error = registry
        .register("OrderPlaced", &breaking)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "SCHEMA_INCOMPATIBLE");
    assert!(error.to_string().contains("$.region"), "{error}");

    // A version without an Avro schema cannot take binary payloads.
    registry
        .set_mode("Plain", Some(CompatibilityMode::None))
        .await
        .unwrap();
    registry.register("Plain", &order_v1()).await.unwrap();
    let error = registry
        .encode_avro("Plain", 1, &json!({"order_id": "o", "total": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SchemaError::NoAvroSchema { version: 1, .. }),
        "{error}"
    );
}
