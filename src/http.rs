//! The axum router: GraphQL over HTTP and websockets on `/graphql`, the playground, the SDL and health.

use std::time::Duration;

use async_graphql::http::WebSocketProtocols;
use async_graphql::BatchRequest;
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::watch;

use crate::api::{AppSchema, HttpClient};
use crate::sse::{StreamSettings, Streaming};

/// Read buffer of a websocket; larger client messages are read in several steps.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub schema: AppSchema,
    pub max_body_bytes: usize,
    /// How often the server pings a websocket; a connection silent for `ws_timeout` is dropped.
    pub ws_ping_interval: Duration,
    pub ws_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        // graphql-sse clients' conventional path; the same as /graphql with Accept: text/event-stream.
        .route("/graphql/stream", get(graphql_get).post(graphql_post))
        .route("/schema.graphql", get(sdl))
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::playground::router())
        .with_state(state)
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, axum::Json(body)).into_response()
}

fn http_client(headers: &HeaderMap) -> Option<HttpClient> {
    headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(|v| HttpClient(v.to_string()))
}

async fn execute(state: &AppState, headers: &HeaderMap, request: BatchRequest) -> Response {
    let mut request = request;
    if let Some(client) = http_client(headers) {
        request = request.data(client);
    }
    let response = state.schema.execute_batch(request).await;
    let mut out = axum::Json(&response).into_response();
    if let Some(cache) = response.cache_control().value() {
        if let Ok(v) = cache.parse() {
            out.headers_mut().insert(header::CACHE_CONTROL, v);
        }
    }
    out
}

async fn graphql_post(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes: Bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "LIMIT_EXCEEDED",
                format!(
                    "the request body is larger than the limit of {} bytes",
                    state.max_body_bytes
                ),
            )
        }
    };
    let request: BatchRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                format!("the body must be a GraphQL request as JSON ({{\"query\": ...}}): {e}"),
            )
        }
    };
    if let Some(kind) = Streaming::requested(&headers) {
        let BatchRequest::Single(request) = request else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "a streamed response carries one operation, not a batch".to_string(),
            );
        };
        return stream(&state, &headers, request, kind);
    }
    execute(&state, &headers, request).await
}

/// Streams an operation's results over SSE or multipart HTTP (src/sse.rs).
fn stream(
    state: &AppState,
    headers: &HeaderMap,
    request: async_graphql::Request,
    kind: Streaming,
) -> Response {
    let settings = StreamSettings {
        heartbeat: state.ws_ping_interval,
        write_timeout: state.ws_timeout,
        shutdown: state.shutdown.clone(),
    };
    crate::sse::respond(state.schema.clone(), settings, headers, request, kind)
}

async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let is_upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        let protocol = parts
            .headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
            });
        let Some(protocol) = protocol else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "websocket clients must ask for the graphql-transport-ws or graphql-ws subprotocol"
                    .to_string(),
            );
        };
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
        return upgrade
            // Answer with the subprotocol this connection will speak (the client's
            // first supported one), not axum's pick from a list, or a client
            // offering both would be told one protocol and spoken to in the other.
            .protocols([protocol.sec_websocket_protocol()])
            // Clients only send small messages (subscribe, complete, pong), and
            // tungstenite zero-fills the free part of its read buffer before
            // every read attempt: the default 128 KiB cost a 128 KiB memset per
            // poll and 128 KiB of RSS per connection (talus-bench, BENCHMARKS.md).
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .on_upgrade(move |socket| crate::ws::serve(socket, state, protocol))
            .into_response();
    }
    let query = parts.uri.query().unwrap_or("");
    let request = match async_graphql::http::parse_query_string(query) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                format!(
                    "GET /graphql needs ?query=... (and optional variables, operationName): {e}"
                ),
            )
        }
    };
    if parts.method == Method::GET && has_mutation(&request.query) {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_USER_INPUT",
            "mutations must be sent with POST".to_string(),
        );
    }
    if let Some(kind) = Streaming::requested(&parts.headers) {
        return stream(&state, &parts.headers, request, kind);
    }
    execute(&state, &parts.headers, BatchRequest::Single(request)).await
}

/// Whether a document holds a mutation, wherever it stands (after comments or
/// fragments too). A document that does not parse is left to the executor,
/// which reports it as BAD_USER_INPUT.
fn has_mutation(query: &str) -> bool {
    async_graphql::parser::parse_query(query).is_ok_and(|doc| {
        doc.operations
            .iter()
            .any(|(_, op)| op.node.ty == async_graphql::parser::types::OperationType::Mutation)
    })
}

async fn sdl(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        state.schema.sdl(),
    )
        .into_response()
}
