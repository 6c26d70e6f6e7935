//! The HTTP surface: routes, the GraphQL endpoint over HTTP and WebSocket, health,
//! readiness, metrics, and the JSON errors for requests that never reach GraphQL (bodies
//! that are too large or not JSON, unknown routes).
//!
//! | route            | what                                                          |
//! |------------------|---------------------------------------------------------------|
//! | `GET /`          | GraphiQL (served from the binary, see `graphiql`)             |
//! | `GET /assets/*`  | GraphiQL's scripts and styles                                 |
//! | `GET /ui`        | the operator's dashboard (served from the binary, see `ui`)   |
//! | `GET /ui/*`      | the dashboard's script and styles (`/ui/` redirects to `/ui`) |
//! | `POST /graphql`  | queries and mutations (JSON body, batches allowed)            |
//! | `GET /graphql`   | subscriptions over WebSocket (graphql-transport-ws, graphql-ws) |
//! | `GET /health`    | liveness: the process is worth keeping (503 while an embedded PostgreSQL cannot be restarted) |
//! | `GET /ready`     | readiness: database reachable, migrations applied, engine up  |
//! | `GET /metrics`   | Prometheus text                                               |

use crate::auth::{Authenticator, Principal};
use crate::config::ApiLimits;
use crate::error::{ApiError, ErrorCode};
use crate::schema::ApiSchema;
use crate::Tidemark;
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{BatchRequest, Data, Executor};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{
    DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State, WebSocketUpgrade,
};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_pg_embedded::ClusterHealth;
use tokio::sync::{watch, Semaphore};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::correlation::RequestIds;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub schema: ApiSchema,
    pub auth: Authenticator,
    pub tidemark: Tidemark,
    pub limits: ApiLimits,
    pub ws_permits: Arc<Semaphore>,
    /// Turns for GraphQL requests over HTTP (`ApiLimits::max_concurrent_requests`).
    pub request_permits: Arc<Semaphore>,
    /// Whether this process runs projections (`--no-projections` turns them off).
    pub engine_running: bool,
    /// Set on shutdown (see `drain`).
    pub drain: crate::drain::Drain,
    /// The embedded cluster's supervisor reports; `None` with `DATABASE_URL`.
    pub embedded: Option<watch::Receiver<ClusterHealth>>,
}

pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let cors = cors_layer(&state.limits.cors_origins);
    let router = Router::new()
        .route("/", get(graphiql))
        .route("/assets/{name}", get(graphiql_asset))
        .route("/ui", get(dashboard))
        .route("/ui/", get(dashboard_slash))
        .route("/ui/{name}", get(dashboard_asset))
        .route("/graphql", get(graphql_ws).post(graphql_http))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn(track))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.drain.clone(),
            crate::drain::track,
        ))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The CORS answers for `origins` (see `ApiLimits::cors_origins`); `None` when no origin
/// is allowed, so the server sends no CORS headers at all. Origins are checked with the
/// rest of the configuration ([`crate::config::check_cors_origin`]).
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(3600)),
    )
}

/// A GraphQL-shaped error body (`{"errors": [...]}`) for failures outside GraphQL.
fn error_response(status: StatusCode, error: ApiError) -> Response {
    metrics::counter!("tidemark_api_errors_total", "code" => error.code.as_str()).increment(1);
    let body = json!({ "errors": [error.into_server_error()] });
    (status, Json(body)).into_response()
}

async fn graphiql() -> Response {
    crate::graphiql::page()
}

async fn graphiql_asset(
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    crate::graphiql::asset(&name, query.as_deref(), &headers).unwrap_or_else(|| {
        error_response(
            StatusCode::NOT_FOUND,
            ApiError::not_found(format!("no asset named {name:?}")),
        )
    })
}

async fn dashboard() -> Response {
    crate::ui::page()
}

/// `/ui/` would resolve the page's relative URLs one level too deep: send it to `/ui`
/// (relatively, so it works under a proxy's path prefix too).
async fn dashboard_slash() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, "../ui")],
    )
        .into_response()
}

async fn dashboard_asset(
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    crate::ui::asset(&name, query.as_deref(), &headers).unwrap_or_else(|| {
        error_response(
            StatusCode::NOT_FOUND,
            ApiError::not_found(format!("the dashboard has no asset named {name:?}")),
        )
    })
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
}

async fn graphql_http(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = state.limits.max_body_bytes;
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is larger than the limit of {limit} bytes"),
                )
                .with("limitBytes", limit as u64),
            );
        }
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ApiError::bad_input(
                    "body",
                    format!("could not read the request body: {}", rejection.body_text()),
                ),
            )
        }
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ApiError::bad_input(
                    "body",
                    format!(
                        "the request body is not a GraphQL request in JSON ({error}); send \
                         {{\"query\": \"...\", \"variables\": {{...}}}} with Content-Type: application/json"
                    ),
                ),
            )
        }
    };
    let Some(_turn) = take_turn(&state).await else {
        metrics::counter!("tidemark_http_requests_shed_total").increment(1);
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::overloaded(format!(
                "the server is busy: {} requests are running and none finished within the \
                 admission budget of {} ms; nothing was done, retry after the hint",
                state.limits.max_concurrent_requests,
                state.limits.admission_budget.as_millis()
            )),
        );
        set_retry_after(&mut response, crate::error::RETRY_AFTER_MS);
        return response;
    };
    let ids = match RequestIds::from_headers(&headers) {
        Ok(ids) => ids,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, error),
    };
    let span = tracing::info_span!(
        "graphql",
        operation = operation_names(&batch).as_str(),
        correlation_id = ids.correlation_id.as_str(),
        errors = tracing::field::Empty,
    );
    let principal = state.auth.authenticate(authorization(&headers)).await;
    let correlation_id = HeaderValue::from_str(&ids.correlation_id).ok();
    let batch = batch.data(principal).data(ids);
    match tokio::time::timeout(
        state.limits.request_timeout,
        state.schema.execute_batch(batch).instrument(span.clone()),
    )
    .await
    {
        Ok(response) => {
            let errors = match &response {
                async_graphql::BatchResponse::Single(one) => one.errors.len(),
                async_graphql::BatchResponse::Batch(many) => {
                    many.iter().map(|one| one.errors.len()).sum()
                }
            };
            span.record("errors", errors);
            let retry_after = overloaded_retry_after_ms(&response);
            let mut response = Json(response).into_response();
            if let Some(retry_after_ms) = retry_after {
                set_retry_after(&mut response, retry_after_ms);
            }
            if let Some(correlation_id) = correlation_id {
                response
                    .headers_mut()
                    .insert(crate::correlation::CORRELATION_HEADER, correlation_id);
            }
            response
        }
        Err(_) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the request took longer than {} ms and was abandoned; an append in it may \
                     or may not have been written, so retry it with the same event ids",
                    state.limits.request_timeout.as_millis()
                ),
            ),
        ),
    }
}

/// The operation names of a request, for its span: `appendEvents`-style names when the
/// client named them, else `anonymous`; a batch's joined with `,`.
fn operation_names(batch: &BatchRequest) -> String {
    let name = |request: &async_graphql::Request| {
        request
            .operation_name
            .clone()
            .unwrap_or_else(|| "anonymous".to_string())
    };
    match batch {
        BatchRequest::Single(request) => name(request),
        BatchRequest::Batch(requests) => requests.iter().map(name).collect::<Vec<_>>().join(","),
    }
}

/// Waits for a turn to execute, at most the admission budget (forever when it is zero).
async fn take_turn(state: &AppState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let permits = state.request_permits.clone();
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    let budget = state.limits.admission_budget;
    if budget.is_zero() {
        return permits.acquire_owned().await.ok();
    }
    tokio::time::timeout(budget, permits.acquire_owned())
        .await
        .ok()?
        .ok()
}

/// The longest retry hint among the `OVERLOADED` errors of a response, if any.
fn overloaded_retry_after_ms(response: &async_graphql::BatchResponse) -> Option<u64> {
    let responses: &[async_graphql::Response] = match response {
        async_graphql::BatchResponse::Single(one) => std::slice::from_ref(one),
        async_graphql::BatchResponse::Batch(many) => many,
    };
    responses
        .iter()
        .flat_map(|r| r.errors.iter())
        .filter_map(|error| {
            let extensions = error.extensions.as_ref()?;
            match extensions.get("code") {
                Some(async_graphql::Value::String(code))
                    if code == ErrorCode::Overloaded.as_str() => {}
                _ => return None,
            }
            match extensions.get("retryAfterMs") {
                Some(async_graphql::Value::Number(ms)) => ms.as_u64(),
                _ => Some(crate::error::RETRY_AFTER_MS),
            }
        })
        .max()
}

/// `Retry-After` in whole seconds (HTTP has no finer unit), rounded up.
fn set_retry_after(response: &mut Response, retry_after_ms: u64) {
    let seconds = retry_after_ms.div_ceil(1000).max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
}

async fn graphql_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    protocol: Result<GraphQLProtocol, StatusCode>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return error_response(
            StatusCode::BAD_REQUEST,
            ApiError::bad_input(
                "method",
                "GET /graphql is for subscriptions over WebSocket (graphql-transport-ws); send \
                 queries and mutations with POST",
            ),
        );
    };
    let Ok(protocol) = protocol else {
        return error_response(
            StatusCode::BAD_REQUEST,
            ApiError::bad_input(
                "Sec-WebSocket-Protocol",
                "ask for the graphql-transport-ws (or graphql-ws) subprotocol",
            ),
        );
    };
    let Ok(permit) = state.ws_permits.clone().try_acquire_owned() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::overloaded(format!(
                "too many WebSocket connections (the limit is {}); retry later",
                state.limits.max_ws_connections
            )),
        );
    };
    let header_principal = state.auth.authenticate(authorization(&headers)).await;
    let auth = state.auth.clone();
    let schema = state.schema.clone();
    let stop = state.tidemark.shutdown_token();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            metrics::gauge!("tidemark_ws_connections").increment(1.0);
            let connection = GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    // A key in the init payload wins over the upgrade request's header.
                    let principal = match key_in_payload(&payload) {
                        Some(value) if value.contains(' ') => auth.authenticate(Some(&value)).await,
                        Some(key) => auth.authenticate_key(&key).await,
                        None => header_principal,
                    };
                    let mut data = Data::default();
                    data.insert(principal);
                    Ok(data)
                })
                .serve();
            tokio::select! {
                _ = connection => {}
                _ = stop.cancelled() => {}
            }
            metrics::gauge!("tidemark_ws_connections").decrement(1.0);
        })
}

/// The key a WebSocket client sent in `connection_init`: `{"Authorization": "Bearer k"}`,
/// `{"headers": {"Authorization": ...}}` or `{"apiKey": "k"}`.
fn key_in_payload(payload: &serde_json::Value) -> Option<String> {
    let find = |object: &serde_json::Value| -> Option<String> {
        let map = object.as_object()?;
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization") || k.as_str() == "apiKey")
            .and_then(|(_, v)| v.as_str().map(str::to_string))
    };
    find(payload).or_else(|| payload.get("headers").and_then(find))
}

/// Liveness. With an embedded PostgreSQL, a process whose cluster is down and cannot be
/// restarted is not worth keeping: 503, so that a process supervisor replaces it. A cluster
/// that is down but being restarted keeps the process alive (only `/ready` fails then).
async fn health(State(state): State<AppState>) -> Response {
    let Some(embedded) = state
        .embedded
        .as_ref()
        .map(|reports| reports.borrow().clone())
    else {
        return Json(json!({ "status": "ok" })).into_response();
    };
    if embedded.is_healthy() {
        Json(json!({ "status": "ok", "embeddedPostgres": embedded_json(&embedded) }))
            .into_response()
    } else {
        let body = json!({
            "status": "failing",
            "reason": embedded.describe(),
            "embeddedPostgres": embedded_json(&embedded),
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

fn embedded_json(health: &ClusterHealth) -> serde_json::Value {
    json!({
        "state": health.state.as_str(),
        "pid": health.pid,
        "restarts": health.restarts,
        "restartsInARow": health.restarts_in_a_row,
        "lastError": health.last_error,
    })
}

async fn ready(State(state): State<AppState>) -> Response {
    let store = state.tidemark.store();
    let embedded = state
        .embedded
        .as_ref()
        .map(|reports| reports.borrow().clone());
    let embedded_up = embedded.as_ref().is_none_or(ClusterHealth::is_running);
    let check = async {
        if !embedded_up {
            return Err("the embedded PostgreSQL is down".to_string());
        }
        let client = store.pool().get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        tidemark_store::migrate::is_up_to_date(&client, &store.config().migrations)
            .await
            .map_err(|e| e.to_string())
    };
    let (database, migrations) = match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(up_to_date)) => (true, up_to_date),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness check: database unreachable");
            (false, false)
        }
        Err(_) => (false, false),
    };
    // Event reads go to the read replica when there is one: without it they fail.
    let replica = match store.replica_pool() {
        None => None,
        Some(pool) => {
            let check = async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| e.to_string())
            };
            Some(
                match tokio::time::timeout(Duration::from_secs(2), check).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "readiness check: read replica unreachable");
                        false
                    }
                    Err(_) => false,
                },
            )
        }
    };
    // An API-only node (projections off) has no engine to wait for.
    let engine = !state.engine_running || !state.tidemark.engine().shutdown_token().is_cancelled();
    // A draining server answers what it is sent but wants no new traffic.
    let draining = state.drain.is_draining();
    let is_ready = database && migrations && engine && !draining && replica != Some(false);
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if is_ready { "ready" } else { "not ready" },
        "checks": { "database": database, "migrations": migrations, "engine": engine, "draining": draining },
        "projections": if state.engine_running { "on" } else { "off" },
    });
    if let Some(replica) = replica {
        body["checks"]["readReplica"] = replica.into();
    }
    if let Some(embedded) = &embedded {
        body["embeddedPostgres"] = embedded_json(embedded);
        if !embedded.is_running() {
            body["reason"] = embedded.describe().into();
        }
    }
    (status, Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    metrics::gauge!("tidemark_append_queue_depth").set(state.tidemark.store().queue_depth() as f64);
    let Some(handle) = crate::telemetry::prometheus() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "# another metrics recorder is installed in this process\n",
        )
            .into_response();
    };
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        ApiError::not_found(
            "no such route; GraphQL is at /graphql, GraphiQL at /, the dashboard at /ui",
        ),
    )
}

/// Counts requests by route, method and status, and times them.
async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("tidemark_http_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("tidemark_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The principal of a request, for application code that needs the caller's identity.
pub fn principal<'a>(ctx: &async_graphql::Context<'a>) -> &'a Principal {
    ctx.data_opt::<Principal>().unwrap_or(&Principal::Anonymous)
}
