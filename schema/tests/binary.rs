//! Avro binary payloads on a real store: JSON and Avro events of one type, mixed in one log,
//! read back the same as JSON through every read path (log, stream, subscription, the
//! upcasting handle, an aggregate load); an Avro v1 event read as v2 takes v2's default; an
//! event that does not fit its Avro schema refuses its whole append; dedup and idempotent
//! retries behave as for JSON events.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tidemark_schema::registry::{Registry, RegistryOptions, SchemaDefinition};
use tidemark_schema::{
    SchemaCodec, SchemaError, SchemaUpcaster, SchemaValidator, Upcasters, ValidationMode,
};
use tidemark_store::aggregate::{Aggregate, CommandBus};
use tidemark_store::{
    AppendRequest, Direction, EventStore, ExpectedVersion, LogFilter, NewEvent, PayloadEncoding,
    RecordedEvent, StoreConfig, StoreError, SubscribeOptions, ValidationError,
};
use tidemark_testkit::{connect, read_all, TestDatabase};

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
    store.set_payload_codec(Some(Arc::new(SchemaCodec::new(registry.clone()))));
    (store, registry)
}

const AVRO_V1: &str = r#"{"type": "record", "name": "Deposited", "fields": [
    {"name": "amount", "type": "long"},
    {"name": "memo", "type": ["null", "string"], "default": null}
]}"#;

const AVRO_V2: &str = r#"{"type": "record", "name": "Deposited", "fields": [
    {"name": "amount", "type": "long"},
    {"name": "memo", "type": ["null", "string"], "default": null},
    {"name": "currency", "type": "string", "default": "EUR"}
]}"#;

fn deposit_v1() -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": {"amount": {"type": "integer"}, "memo": {"type": "string"}},
        "required": ["amount"],
        "additionalProperties": false
    }))
    .with_avro(AVRO_V1)
}

fn deposit_v2() -> SchemaDefinition {
    SchemaDefinition::json(json!({
        "type": "object",
        "properties": {
            "amount": {"type": "integer"},
            "memo": {"type": "string"},
            "currency": {"type": "string", "default": "EUR"}
        },
        "required": ["amount", "currency"],
        "additionalProperties": false
    }))
    .with_avro(AVRO_V2)
}

fn deposit(payload: Value) -> NewEvent {
    NewEvent::new("Deposited", payload)
}

/// Per position: whether the row holds an Avro payload (and no JSON).
async fn stored_as_avro(db: &TestDatabase) -> Vec<bool> {
    connect(db)
        .await
        .query(
            "SELECT payload_avro IS NOT NULL AND payload IS NULL FROM events ORDER BY position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// What a reader sees of an event: everything but how it is stored.
fn seen(events: &[RecordedEvent]) -> Vec<(i64, String, i32, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e.position,
                e.event_type.clone(),
                e.schema_version,
                e.payload.clone(),
            )
        })
        .collect()
}

#[derive(Debug, Default)]
struct Account {
    balance: i64,
    memos: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
enum AccountEvent {
    Deposited {
        amount: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memo: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Account {
    type Command = i64;
    type Event = AccountEvent;
    type Error = Never;
    const CATEGORY: &'static str = "account";

    fn apply(&mut self, event: AccountEvent) {
        let AccountEvent::Deposited { amount, memo } = event;
        self.balance += amount;
        self.memos.extend(memo);
    }

    fn handle(&self, amount: &i64) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![AccountEvent::Deposited {
            amount: *amount,
            memo: Some("by command".into()),
        }])
    }
}

#[tokio::test]
async fn json_and_avro_events_mixed_in_one_log_read_back_the_same_through_every_read_path() {
    let db = TestDatabase::create().await;
    let (store, registry) = store(&db).await;
    registry.register("Deposited", &deposit_v1()).await.unwrap();

    let payloads = [
        json!({"amount": 5}),
        json!({"amount": 7, "memo": "rent"}),
        json!({"amount": 9}),
        json!({"amount": 11, "memo": "gift"}),
    ];
    // Per event: JSON by default, AVRO asked for, JSON asked for, AVRO by the type's setting.
    store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::NoStream,
            vec![
                deposit(payloads[0].clone()),
                deposit(payloads[1].clone()).with_encoding(PayloadEncoding::Avro),
            ],
        ))
        .await
        .unwrap();
    registry
        .set_encoding("Deposited", Some(PayloadEncoding::Avro))
        .await
        .unwrap();
    store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Exact(1),
            vec![
                deposit(payloads[2].clone()).with_encoding(PayloadEncoding::Json),
                deposit(payloads[3].clone()),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(stored_as_avro(&db).await, [false, true, false, true]);

    let expected: Vec<(i64, String, i32, Value)> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as i64 + 1, "Deposited".to_owned(), 1, p.clone()))
        .collect();
    let log = read_all(&store).await;
    assert_eq!(seen(&log), expected, "read_log");
    let encodings: Vec<PayloadEncoding> = log.iter().map(|e| e.encoding).collect();
    use PayloadEncoding::{Avro, Json};
    assert_eq!(encodings, [Json, Avro, Json, Avro]);
    let stream = store
        .read_stream("account-1", None, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(seen(&stream), expected, "read_stream");
    let backwards = store
        .read_stream("account-1", None, Direction::Backward, 100)
        .await
        .unwrap();
    assert_eq!(
        seen(&backwards).into_iter().rev().collect::<Vec<_>>(),
        expected
    );
    let subscribed: Vec<RecordedEvent> = store
        .subscribe(SubscribeOptions {
            page_size: 3,
            ..SubscribeOptions::default()
        })
        .take(4)
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(seen(&subscribed), expected, "subscribe");
    let upcasting = store.with_read_hook(Arc::new(SchemaUpcaster::new(
        registry.clone(),
        Arc::new(Upcasters::new()),
    )));
    let mut pages = std::pin::pin!(upcasting.subscribe_pages(SubscribeOptions {
        filter: LogFilter::event_types(["Deposited"]),
        ..SubscribeOptions::default()
    }));
    let page = pages.next().await.unwrap().unwrap();
    assert_eq!(seen(&page.events), expected, "subscribe_pages, upcasting");

    // The aggregate's command is stored as Avro (the type's setting) and loads back.
    let bus = CommandBus::new(upcasting.clone());
    bus.execute::<Account>("1", &3).await.unwrap();
    assert_eq!(stored_as_avro(&db).await.last(), Some(&true));
    let (account, version) = bus.load::<Account>("1").await.unwrap();
    assert_eq!(version, Some(4));
    assert_eq!(account.balance, 5 + 7 + 9 + 11 + 3);
    assert_eq!(account.memos, ["rent", "gift", "by command"]);
}

#[tokio::test]
async fn an_avro_v1_event_reads_as_v2_with_the_default_by_avro_resolution() {
    let db = TestDatabase::create().await;
    let (store, registry) = store(&db).await;
    registry.register("Deposited", &deposit_v1()).await.unwrap();
    store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            vec![
                deposit(json!({"amount": 5, "memo": "rent"})).with_encoding(PayloadEncoding::Avro),
                deposit(json!({"amount": 6})),
            ],
        ))
        .await
        .unwrap();
    // v2 adds `currency` with a default; no upcaster is registered, Rust or declarative.
    registry.register("Deposited", &deposit_v2()).await.unwrap();
    store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            vec![deposit(json!({"amount": 7, "currency": "USD"}))
                .with_schema_version(2)
                .with_encoding(PayloadEncoding::Avro)],
        ))
        .await
        .unwrap();

    let upcasting = store.with_read_hook(Arc::new(SchemaUpcaster::new(
        registry.clone(),
        Arc::new(Upcasters::new()),
    )));
    let read = read_all(&upcasting).await;
    let as_v2: Vec<(i32, Value)> = read
        .iter()
        .map(|e| (e.schema_version, e.payload.clone()))
        .collect();
    assert_eq!(
        as_v2,
        [
            (2, json!({"amount": 5, "memo": "rent", "currency": "EUR"})),
            (2, json!({"amount": 6, "currency": "EUR"})),
            (2, json!({"amount": 7, "currency": "USD"})),
        ]
    );
    // The log as written, through the handle without a read hook.
    let written: Vec<(i32, Value)> = read_all(&store)
        .await
        .iter()
        .map(|e| (e.schema_version, e.payload.clone()))
        .collect();
    assert_eq!(
        written,
        [
            (1, json!({"amount": 5, "memo": "rent"})),
            (1, json!({"amount": 6})),
            (2, json!({"amount": 7, "currency": "USD"})),
        ]
    );
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
async fn an_append_whose_event_does_not_fit_the_avro_schema_is_refused_whole_naming_the_field() {
    let db = TestDatabase::create().await;
    let (store, registry) = store(&db).await;
    registry.register("Deposited", &deposit_v1()).await.unwrap();
    // Validation off: the Avro schema alone refuses.
    registry
        .set_validation("Deposited", Some(ValidationMode::Off))
        .await
        .unwrap();
    let append = |events: Vec<NewEvent>| {
        store.append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            events,
        ))
    };
    let good = deposit(json!({"amount": 5})).with_encoding(PayloadEncoding::Avro);

    let error = append(vec![
        good.clone(),
        deposit(json!({"amount": "five"})).with_encoding(PayloadEncoding::Avro),
    ])
    .await
    .unwrap_err();
    let (index, schema) = refusal(error);
    assert_eq!((index, schema.code()), (1, "SCHEMA_VIOLATION"));
    assert!(
        matches!(&schema, SchemaError::AvroEncode { path, .. } if path == "$.amount"),
        "{schema:?}"
    );

    let error = append(vec![
        good.clone(),
        deposit(json!({"amount": 5, "extra": true})).with_encoding(PayloadEncoding::Avro),
    ])
    .await
    .unwrap_err();
    let (_, schema) = refusal(error);
    assert!(
        matches!(&schema, SchemaError::AvroEncode { path, .. } if path == "$.extra"),
        "{schema:?}"
    );

    // A version that is not registered, or has no Avro schema.
    let error = append(vec![deposit(json!({"amount": 5}))
        .with_schema_version(3)
        .with_encoding(PayloadEncoding::Avro)])
    .await
    .unwrap_err();
    assert_eq!(refusal(error).1.code(), "SCHEMA_NOT_FOUND");
    registry
        .register("Plain", &SchemaDefinition::json(json!({"type": "object"})))
        .await
        .unwrap();
    let error = append(vec![
        NewEvent::new("Plain", json!({})).with_encoding(PayloadEncoding::Avro)
    ])
    .await
    .unwrap_err();
    let (_, schema) = refusal(error);
    assert!(matches!(
        schema,
        SchemaError::NoAvroSchema { version: 1, .. }
    ));
    // A type without an Avro schema cannot be set to store as Avro.
    assert!(matches!(
        registry
            .set_encoding("Plain", Some(PayloadEncoding::Avro))
            .await,
        Err(SchemaError::NoAvroSchema { .. })
    ));

    assert!(read_all(&store).await.is_empty(), "nothing was written");
    assert!(stored_as_avro(&db).await.is_empty());

    // Without a codec on the store, AVRO is refused before anything is written, and a
    // binary payload already stored cannot be read.
    append(vec![good.clone()]).await.unwrap();
    store.set_payload_codec(None);
    assert!(matches!(
        append(vec![good.clone()]).await,
        Err(StoreError::Invalid(ValidationError::NoPayloadCodec {
            event_index: 0
        }))
    ));
    match store.read_log(0, &LogFilter::all(), 10).await {
        Err(StoreError::Unreadable(hook)) => assert_eq!(hook.code, "PAYLOAD_UNREADABLE"),
        other => panic!("expected an unreadable payload, got {other:?}"),
    }
    store.set_payload_codec(Some(Arc::new(SchemaCodec::new(registry.clone()))));
    assert_eq!(read_all(&store).await.len(), 1);
}

#[tokio::test]
async fn dedup_and_idempotent_retries_hold_for_avro_events() {
    let db = TestDatabase::create().await;
    let (store, registry) = store(&db).await;
    registry.register("Deposited", &deposit_v1()).await.unwrap();
    let id = uuid::Uuid::now_v7();
    let event = deposit(json!({"amount": 5}))
        .with_id(id)
        .with_encoding(PayloadEncoding::Avro);
    let first = store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::NoStream,
            vec![event.clone()],
        ))
        .await
        .unwrap();
    // A blind retry (same id, same content) is the original.
    let retry = store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::NoStream,
            vec![event.clone()],
        ))
        .await
        .unwrap();
    assert!(retry.all_duplicates());
    assert_eq!(retry.events[0].position, first.events[0].position);
    // The same id with other content is a conflict, whatever the encoding.
    let error = store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::Any,
            vec![deposit(json!({"amount": 6}))
                .with_id(id)
                .with_encoding(PayloadEncoding::Avro)],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::EventIdConflict { .. }),
        "{error}"
    );
    // Content dedup hashes the JSON, so the same content sent as JSON is the same event...
    let as_json = store
        .append(
            AppendRequest::new(
                "account-1",
                ExpectedVersion::Any,
                vec![deposit(json!({"amount": 5})).with_encoding(PayloadEncoding::Json)],
            )
            .with_content_dedup(true),
        )
        .await
        .unwrap();
    assert!(as_json.all_duplicates());
    assert_eq!(as_json.events[0].position, first.events[0].position);
    // ... and content first stored as JSON dedups an Avro append of it.
    store
        .append(AppendRequest::new(
            "account-2",
            ExpectedVersion::Any,
            vec![deposit(json!({"amount": 8}))],
        ))
        .await
        .unwrap();
    let as_avro = store
        .append(
            AppendRequest::new(
                "account-2",
                ExpectedVersion::Any,
                vec![deposit(json!({"amount": 8})).with_encoding(PayloadEncoding::Avro)],
            )
            .with_content_dedup(true),
        )
        .await
        .unwrap();
    assert!(as_avro.all_duplicates());
    assert_eq!(stored_as_avro(&db).await, [true, false]);
    let log = read_all(&store).await;
    assert_eq!(log[0].content_hash, {
        let json_twin = deposit(json!({"amount": 5}));
        tidemark_store::hashing::content_hash("account-1", &json_twin)
    });
}
