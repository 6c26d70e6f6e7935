//! Bad input of every kind gets its stable code, and nothing is stored. An application's
//! own resolvers get the same codes for command and store errors, through `?`.

use crate::common;

use async_graphql::{Context, Object};
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tidemark_api::{ApiResult, Role, RoleGuard, Tidemark, TidemarkApp};
use tidemark_store::aggregate::Aggregate;
use tidemark_store::{AppendRequest, ExpectedVersion, NewEvent};

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

// ------------------------------------------------------------------ an application's `?`

/// A seat that can be booked once. Booking meets [`Rendezvous`] first when told to, so that
/// two clients decide on the same (empty) stream and one of them loses the race for sure.
#[derive(Default)]
struct Seat {
    booked_by: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum SeatEvent {
    SeatBooked { by: String },
}

struct Book {
    by: String,
    meet: Option<Arc<Rendezvous>>,
}

#[derive(Debug)]
struct SeatTaken(String);

impl std::fmt::Display for SeatTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the seat is taken by {}", self.0)
    }
}

impl std::error::Error for SeatTaken {}

impl Aggregate for Seat {
    type Command = Book;
    type Event = SeatEvent;
    type Error = SeatTaken;
    const CATEGORY: &'static str = "seat";

    fn apply(&mut self, event: SeatEvent) {
        let SeatEvent::SeatBooked { by } = event;
        self.booked_by = Some(by);
    }

    fn handle(&self, command: &Book) -> Result<Vec<SeatEvent>, SeatTaken> {
        if let Some(meet) = &command.meet {
            meet.arrive();
        }
        match &self.booked_by {
            Some(by) => Err(SeatTaken(by.clone())),
            None => Ok(vec![SeatEvent::SeatBooked {
                by: command.by.clone(),
            }]),
        }
    }
}

/// Holds each arriving decision until `parties` have arrived (or a few seconds have
/// passed), blocking its thread: a stand-in for clients that decide at the same moment.
struct Rendezvous {
    arrived: Mutex<usize>,
    all_here: Condvar,
    parties: usize,
}

impl Rendezvous {
    fn new(parties: usize) -> Arc<Rendezvous> {
        Arc::new(Rendezvous {
            arrived: Mutex::new(0),
            all_here: Condvar::new(),
            parties,
        })
    }

    fn arrive(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        if *arrived >= self.parties {
            self.all_here.notify_all();
            return;
        }
        let _ = self
            .all_here
            .wait_timeout_while(arrived, Duration::from_secs(10), |n| *n < self.parties)
            .unwrap();
    }
}

/// Mutations that answer with `?` on the command bus and on the store, as an application's
/// resolvers do.
#[derive(Clone)]
struct SeatMutation {
    meet: Arc<Rendezvous>,
}

#[Object]
impl SeatMutation {
    /// Books a seat, trying once (no retry after a conflict); with `race`, only after
    /// another racing booking has decided too.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn book(
        &self,
        ctx: &Context<'_>,
        seat: String,
        by: String,
        race: bool,
    ) -> ApiResult<i64> {
        let bus = Tidemark::from_ctx(ctx)?
            .commands()
            .clone()
            .with_max_attempts(1);
        let meet = race.then(|| self.meet.clone());
        let outcome = bus.execute::<Seat>(&seat, &Book { by, meet }).await?;
        Ok(outcome.position())
    }

    /// Appends a booking straight to the store, expecting the seat's stream at `version`.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn book_at(&self, ctx: &Context<'_>, seat: String, version: i64) -> ApiResult<i64> {
        let store = Tidemark::from_ctx(ctx)?.store();
        let request = AppendRequest::new(
            Seat::stream_id(&seat),
            ExpectedVersion::Exact(version),
            vec![NewEvent::new("SeatBooked", json!({ "by": "the store" }))],
        );
        Ok(store.append(request).await?.last_position())
    }
}

const BOOK: &str = "mutation($seat: String!, $by: String!, $race: Boolean!) {
  book(seat: $seat, by: $by, race: $race) }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn command_and_store_errors_of_an_application_resolver_get_their_codes_through_question_mark()
{
    let app = spawn_app_with(
        TidemarkApp::builder()
            .name("seats")
            .graphql_mutation(SeatMutation {
                meet: Rendezvous::new(2),
            })
            .build(),
        |_| {},
    )
    .await;
    let book = |seat: &str, by: &str, race: bool| {
        app.graphql(
            BOOK,
            json!({ "seat": seat, "by": by, "race": race }),
            Some(APPEND_KEY),
        )
    };

    assert_no_errors(&book("1A", "ann", false).await);
    // The aggregate's refusal: REJECTED with its sentence.
    let body = book("1A", "bob", false).await;
    let error = assert_error(&body, "REJECTED");
    assert_eq!(error["message"], "the seat is taken by ann");

    // Two bookings decide on the empty stream at once; the one that commits second finds
    // the stream moved and, with no attempt left, answers WRONG_EXPECTED_VERSION.
    let (first, second) = futures::join!(book("2B", "cat", true), book("2B", "dan", true));
    let (won, lost) = if error_code(&first).is_none() {
        (first, second)
    } else {
        (second, first)
    };
    assert_no_errors(&won);
    let error = assert_error(&lost, "WRONG_EXPECTED_VERSION");
    assert_eq!(error["extensions"]["streamId"], "seat-2B", "{error}");
    assert_eq!(
        error["extensions"]["expectedVersion"], "no_stream",
        "{error}"
    );
    assert_eq!(error["extensions"]["actualVersion"], 0, "{error}");

    // `?` on the store's own error.
    let body = app
        .graphql(
            "mutation { bookAt(seat: \"1A\", version: 5) }",
            json!({}),
            Some(APPEND_KEY),
        )
        .await;
    let error = assert_error(&body, "WRONG_EXPECTED_VERSION");
    assert_eq!(error["extensions"]["actualVersion"], 0, "{error}");

    // A stream the aggregate cannot read: INTERNAL, and the details stay in the log.
    app.append("seat-3C", json!([{ "type": "SeatTeleported", "data": {} }]))
        .await;
    let body = book("3C", "eve", false).await;
    let error = assert_error(&body, "INTERNAL");
    assert!(
        !error["message"]
            .as_str()
            .unwrap()
            .contains("SeatTeleported"),
        "{error}"
    );
}
