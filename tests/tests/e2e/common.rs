//! Test support: start the real server on a free port against a fresh database, and talk
//! to it as a client would (HTTP for queries and mutations, WebSocket with the
//! graphql-transport-ws protocol for subscriptions).
//!
//! ```ignore
//! let app = spawn_app().await;
//! let body = app.graphql("{ head }", json!({}), Some(READ_KEY)).await;
//! let mut sub = app.subscribe("subscription { events { position } }", json!({}), Some(READ_KEY)).await;
//! let first = sub.next().await;
//! ```
//!
//! Polling (`eventually`, `wait_until`) comes from `tidemark_testkit`.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tidemark_api::auth::ConfiguredKey;
use tidemark_api::{Application, DatabaseConfig, Role, ServerConfig, Tidemark, TidemarkApp};
use tidemark_testkit::TestDatabase;
pub use tidemark_testkit::{eventually, wait_until};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Keys every test app accepts (configured, not stored).
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const APPEND_KEY: &str = "test-append-key-0123456789";
pub const READ_KEY: &str = "test-read-key-0123456789";

/// How long a helper waits for the server before failing the test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running server and what it needs to be restarted.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    /// The runtime handles of the server (store, engine).
    pub tidemark: Tidemark,
    /// `None` for a server on its own embedded PostgreSQL.
    db: Option<Arc<TestDatabase>>,
    app: TidemarkApp,
    config: ServerConfig,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The built-in application with default limits.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(TidemarkApp::builder().build(), |_| {}).await
}

/// `app` on a fresh database; `configure` may change limits and other settings.
pub async fn spawn_app_with(
    app: TidemarkApp,
    configure: impl FnOnce(&mut ServerConfig),
) -> TestApp {
    spawn_app_on(Arc::new(TestDatabase::create().await), app, configure).await
}

/// `app` on `db`, which the test made (e.g. to put a proxy in front of it: `configure` may
/// point `database` elsewhere).
pub async fn spawn_app_on(
    db: Arc<TestDatabase>,
    app: TidemarkApp,
    configure: impl FnOnce(&mut ServerConfig),
) -> TestApp {
    let mut config = test_config(DatabaseConfig::url(db.url()));
    configure(&mut config);
    start(Some(db), app, config).await
}

/// The built-in application on an embedded PostgreSQL in `data_dir` (no `DATABASE_URL`), as
/// `tidemark serve` runs without one.
pub async fn spawn_app_embedded(
    data_dir: std::path::PathBuf,
    configure: impl FnOnce(&mut ServerConfig),
) -> TestApp {
    let mut config = test_config(DatabaseConfig::Embedded { data_dir });
    configure(&mut config);
    start(None, TidemarkApp::builder().build(), config).await
}

/// The built-in application on `database` (e.g. a URL the test's own server serves).
pub async fn spawn_app_at(database: DatabaseConfig) -> TestApp {
    start(None, TidemarkApp::builder().build(), test_config(database)).await
}

/// `app` on the primary of `cluster`, reading events from its standby
/// (`--read-database-url`); `configure` may change other settings.
pub async fn spawn_app_replicated(
    cluster: &tidemark_testkit::replica::ReplicatedCluster,
    app: TidemarkApp,
    configure: impl FnOnce(&mut ServerConfig),
) -> TestApp {
    let mut config = test_config(DatabaseConfig::url(cluster.primary_url()));
    config.read_database_url = Some(cluster.standby_url());
    configure(&mut config);
    start(None, app, config).await
}

/// The settings of every test server: a free loopback port, the test keys, 4 partitions.
pub fn test_config(database: DatabaseConfig) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        database,
        max_connections: 16,
        partitions: 4,
        api_keys: vec![
            ConfiguredKey::new(Role::Admin, ADMIN_KEY),
            ConfiguredKey::new(Role::Append, APPEND_KEY),
            ConfiguredKey::new(Role::Read, READ_KEY),
        ],
        shutdown_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    }
}

async fn start(db: Option<Arc<TestDatabase>>, app: TidemarkApp, config: ServerConfig) -> TestApp {
    let application = Application::build(config.clone(), app.clone())
        .await
        .expect("the application starts");
    let port = application.port();
    let tidemark = application.tidemark().clone();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::new(),
        tidemark,
        db,
        app,
        config,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    /// The test's database (shared with a restarted server).
    pub fn database(&self) -> &TestDatabase {
        self.db
            .as_deref()
            .expect("this server runs on a test database, not an embedded one")
    }

    /// POSTs a GraphQL request; returns the JSON body (`data` and/or `errors`).
    pub async fn graphql(&self, query: &str, variables: Value, key: Option<&str>) -> Value {
        let body = json!({ "query": query, "variables": variables });
        let (_, json) = self.post_raw(body.to_string(), key).await;
        json
    }

    /// POSTs any body to `/graphql`; returns the status and the JSON body.
    pub async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.address))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("the body is not JSON (status {status}): {text}"));
        (status, json)
    }

    /// GETs a path; returns the status and the body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }

    /// Appends `events` (JSON list of `{type, data}`) to `stream` with an admin key; panics
    /// on errors. Returns `appendEvents`.
    pub async fn append(&self, stream: &str, events: Value) -> Value {
        let body = self
            .graphql(
                "mutation($s: String!, $e: [EventInput!]!) {
                   appendEvents(streamId: $s, events: $e) {
                     streamVersion lastPosition duplicates events { eventId position streamVersion duplicate }
                   } }",
                json!({ "s": stream, "e": events }),
                Some(APPEND_KEY),
            )
            .await;
        assert_no_errors(&body);
        body["data"]["appendEvents"].clone()
    }

    /// Opens a subscription over WebSocket (graphql-transport-ws), authenticating with `key`
    /// in the `connection_init` payload.
    pub async fn subscribe(
        &self,
        query: &str,
        variables: Value,
        key: Option<&str>,
    ) -> Subscription {
        let mut request = format!("ws://127.0.0.1:{}/graphql", self.port)
            .into_client_request()
            .expect("a valid URL");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("a valid header"),
        );
        let (mut socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connects in time")
            .expect("the WebSocket upgrade succeeds");
        let payload = match key {
            Some(key) => json!({ "Authorization": format!("Bearer {key}") }),
            None => json!({}),
        };
        send(
            &mut socket,
            json!({ "type": "connection_init", "payload": payload }),
        )
        .await;
        let ack = receive(&mut socket)
            .await
            .expect("an answer to connection_init");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        send(
            &mut socket,
            json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } }),
        )
        .await;
        Subscription { socket }
    }

    /// Stops the server gracefully and waits for it; the database stays.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(60), server)
                .await
                .expect("the server stops in time")
                .expect("the server task does not panic")
                .expect("the server stops cleanly");
        }
    }

    /// Stops this server and starts a new one (a new port) on the same database.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        start(self.db.clone(), self.app.clone(), self.config.clone()).await
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .expect("the message is sent");
}

/// The next protocol message (answering pings), or `None` when the socket closed.
async fn receive(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message arrives in time")?
            .ok()?;
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("JSON messages");
                if value["type"] == "ping" {
                    send(socket, json!({ "type": "pong" })).await;
                    continue;
                }
                return Some(value);
            }
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// An open subscription.
pub struct Subscription {
    socket: Socket,
}

impl Subscription {
    /// The next message for the subscription: `{"type": "next", "payload": {...}}`,
    /// `{"type": "error", "payload": [...]}` or `{"type": "complete"}`.
    pub async fn next_message(&mut self) -> Value {
        receive(&mut self.socket)
            .await
            .expect("the socket stays open")
    }

    /// The `data` of the next result; panics on anything else.
    pub async fn next(&mut self) -> Value {
        let message = self.next_message().await;
        assert_eq!(message["type"], "next", "{message}");
        assert!(message["payload"]["errors"].is_null(), "{message}");
        message["payload"]["data"].clone()
    }

    pub async fn close(mut self) {
        let _ = send(&mut self.socket, json!({ "id": "1", "type": "complete" })).await;
        let _ = self.socket.close(None).await;
    }
}

/// The `extensions.code` of the first error, if any.
pub fn error_code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

/// The code of a subscription's error: graphql-transport-ws sends it as a `next` with
/// `errors` (then `complete`), or as an `error` message.
pub fn subscription_error_code(message: &Value) -> Option<&str> {
    let errors = if message["type"] == "error" {
        &message["payload"]
    } else {
        &message["payload"]["errors"]
    };
    errors[0]["extensions"]["code"].as_str()
}

pub fn assert_no_errors(body: &Value) {
    assert!(body["errors"].is_null(), "unexpected errors: {body}");
}

/// Asserts the first error has `code`; returns the error.
pub fn assert_error(body: &Value, code: &str) -> Value {
    assert_eq!(error_code(body), Some(code), "expected {code} in {body}");
    body["errors"][0].clone()
}

impl TestApp {
    /// [`TestApp::graphql`], asserting the answer has no errors; returns its `data`.
    pub async fn graphql_data(&self, query: &str, variables: Value, key: Option<&str>) -> Value {
        let body = self.graphql(query, variables, key).await;
        assert_no_errors(&body);
        body["data"].clone()
    }

    /// Every event of the log, in position order, read from the store itself (not through
    /// the API): what read models and answers are checked against.
    pub async fn all_events(&self) -> Vec<tidemark_store::RecordedEvent> {
        tidemark_testkit::read_all(self.tidemark.store()).await
    }
}
