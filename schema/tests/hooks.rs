//! The registry installed on a real store: validation on append refuses exactly the bad
//! events and writes nothing of their append; reads through the upcasting handle see the
//! latest version while the log keeps what was written.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tidemark_schema::registry::{Registry, RegistryOptions, SchemaDefinition};
use tidemark_schema::{
    DeclarativeUpcast, SchemaError, SchemaUpcaster, SchemaValidator, UnregisteredPolicy, Upcasters,
    ValidationMode,
};
use tidemark_store::{
    AppendRequest, Direction, EventStore, ExpectedVersion, LogFilter, NewEvent, StoreConfig,
    StoreError,
};
use tidemark_testkit::{read_all, TestDatabase};

async fn store(db: &TestDatabase) -> (EventStore, Arc<Registry>) {
    let config = StoreConfig {
        migrations: tidemark_store::MigrationSet::store().with(tidemark_schema::MIGRATIONS),
        ..StoreConfig::default()
    };
    let store = EventStore::open_with_pool(db.pool(8), db.pg_config(), config)
        .await
        .unwrap();
    let options = RegistryOptions {
        max_staleness: Duration::ZERO,
    };
    let registry = Arc::new(Registry::open(store.pool().clone(), options).await.unwrap());
    store.set_append_validator(Some(Arc::new(SchemaValidator::new(registry.clone()))));
    (store, registry)
}

fn deposit_v1() -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": {"amount": {"type": "integer", "minimum": 1}},
        "required": ["amount"],
        "additionalProperties": false
    }))
}

fn deposit_v2() -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": {
            "amount": {"type": "integer", "minimum": 1},
            "currency": {"type": "string", "default": "EUR"}
        },
        "required": ["amount", "currency"],
        "additionalProperties": false
    }))
}

fn deposit(payload: Value) -> NewEvent {
    NewEvent::new("Deposited", payload)
}

fn refusal(error: StoreError) -> (usize, SchemaError) {
    match error {
        StoreError::Refused(hook) => {
            let schema = hook
                .downcast_ref::<SchemaError>()
                .expect("the registry's own error")
                .clone();
            (hook.event_index.expect("an event index"), schema)
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn enforce_refuses_a_mixed_batch_whole_and_accepts_the_good_events_alone() {
    let db = TestDatabase::create().await;
    let (store, registry) = store(&db).await;
    registry.register("Deposited", &deposit_v1()).await.unwrap();
    registry
        .set_validation("Deposited", Some(ValidationMode::Enforce))
        .await
        .unwrap();

    let good = [deposit(json!({"amount": 5})), deposit(json!({"amount": 7}))];
    let mixed = vec![
        good[0].clone(),
        deposit(json!({"amount": "seven"})),
        good[1].clone(),
    ];
    let error = store
        .append(AppendRequest::new("account-1", ExpectedVersion::Any, mixed))
        .await
        .expect_err("the bad event refuses the append");
    let (index, schema) = refusal(error);
    assert_eq!(index, 1);
    assert_eq!(schema.code(), "SCHEMA_VIOLATION");
    let SchemaError::Violation { violations, .. } = schema else {
        panic!("a violation")
    };
    assert_eq!(violations[0].path, "$.amount");
    assert_eq!(violations[0].keyword, "type");
    assert!(
        read_all(&store).await.is_empty(),
        "nothing of the append is written"
    );

    store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            good.to_vec(),
        ))
        .await
        .expect("the good events alone are written");
    assert_eq!(read_all(&store).await.len(), 2);

    // A claimed version that does not exist is refused too under ENFORCE.
    let error = store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            vec![deposit(json!({"amount": 1})).with_schema_version(9)],
        ))
        .await
        .unwrap_err();
    assert_eq!(refusal(error).1.code(), "SCHEMA_NOT_FOUND");
}

#[tokio::test]
async fn warn_and_off_write_bad_events_and_unregistered_types_follow_the_policy() {
    let db = TestDatabase::create().await;
    let (store, registry) = store(&db).await;
    registry.register("Deposited", &deposit_v1()).await.unwrap();
    let bad = || {
        AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            vec![deposit(json!({"amount": 0}))],
        )
    };
    registry
        .set_validation("Deposited", Some(ValidationMode::Warn))
        .await
        .unwrap();
    store.append(bad()).await.expect("WARN writes and logs");
    registry
        .set_validation("Deposited", Some(ValidationMode::Off))
        .await
        .unwrap();
    store.append(bad()).await.expect("OFF writes");
    registry
        .set_validation("Deposited", Some(ValidationMode::Enforce))
        .await
        .unwrap();
    let (_, schema) = refusal(store.append(bad()).await.unwrap_err());
    let SchemaError::Violation { violations, .. } = schema else {
        panic!("a violation")
    };
    assert_eq!(violations[0].keyword, "minimum");

    let unknown = || {
        AppendRequest::new(
            "other-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Unknown", json!({}))],
        )
    };
    store.append(unknown()).await.expect("ALLOW by default");
    registry
        .set_unregistered_policy(UnregisteredPolicy::Refuse)
        .await
        .unwrap();
    let (_, schema) = refusal(store.append(unknown()).await.unwrap_err());
    assert_eq!(schema.code(), "SCHEMA_REQUIRED");
    assert_eq!(read_all(&store).await.len(), 3);

    store.set_append_validator(None);
    store
        .append(unknown())
        .await
        .expect("no validator, no check");
}

#[tokio::test]
async fn reads_through_the_upcasting_handle_see_the_latest_version_and_the_log_keeps_the_written() {
    let db = TestDatabase::create().await;
    let (store, registry) = store(&db).await;
    registry.register("Deposited", &deposit_v1()).await.unwrap();
    store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            vec![deposit(json!({"amount": 5}))],
        ))
        .await
        .unwrap();
    registry
        .register(
            "Deposited",
            &deposit_v2().with_upcast_from_previous(vec![DeclarativeUpcast::AddField {
                path: "currency".into(),
                default: json!("EUR"),
            }]),
        )
        .await
        .unwrap();
    store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            vec![deposit(json!({"amount": 7, "currency": "USD"})).with_schema_version(2)],
        ))
        .await
        .unwrap();

    let upcasting = store.with_read_hook(Arc::new(SchemaUpcaster::new(
        registry.clone(),
        Arc::new(Upcasters::new()),
    )));
    let payloads = |events: Vec<tidemark_store::RecordedEvent>| {
        events
            .into_iter()
            .map(|e| (e.schema_version, e.payload))
            .collect::<Vec<_>>()
    };
    let latest = vec![
        (2, json!({"amount": 5, "currency": "EUR"})),
        (2, json!({"amount": 7, "currency": "USD"})),
    ];
    assert_eq!(
        payloads(
            upcasting
                .read_stream("account-1", None, Direction::Forward, 10)
                .await
                .unwrap()
        ),
        latest
    );
    assert_eq!(payloads(read_all(&upcasting).await), latest);
    let mut pages = std::pin::pin!(upcasting.subscribe_pages(Default::default()));
    let page = futures::StreamExt::next(&mut pages).await.unwrap().unwrap();
    assert_eq!(payloads(page.events), latest);

    // The log and every other handle keep what was written.
    assert_eq!(
        payloads(read_all(&store).await)[0],
        (1, json!({"amount": 5}))
    );

    // A Rust upcaster takes precedence over the declarative one for its step.
    let mut rust = Upcasters::new();
    rust.register_fn("Deposited", 1, |mut payload| {
        payload["currency"] = json!("GBP");
        Ok(payload)
    })
    .unwrap();
    let with_rust = store.with_read_hook(Arc::new(SchemaUpcaster::new(
        registry.clone(),
        Arc::new(rust),
    )));
    assert_eq!(
        payloads(with_rust.read_log(0, &LogFilter::all(), 1).await.unwrap()),
        vec![(2, json!({"amount": 5, "currency": "GBP"}))]
    );

    // A gap in the chain fails the read with a coded error instead of a wrong shape.
    registry.set_upcast("Deposited", 1, None).await.unwrap();
    let error = upcasting
        .read_log(0, &LogFilter::all(), 10)
        .await
        .unwrap_err();
    let StoreError::Unreadable(hook) = error else {
        panic!("an unreadable event, got {error}")
    };
    assert_eq!(hook.code, "UPCAST_FAILED");
    assert!(hook.message.contains("position 1"), "{}", hook.message);
}
