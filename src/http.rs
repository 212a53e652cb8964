//! The axum router: GraphQL over HTTP and websockets on `/graphql`, the playground, the SDL and health.
//!
//! `/graphql` follows the GraphQL-over-HTTP spec: POST with an
//! `application/json` body, GET with URL parameters for queries only, responses
//! as `application/graphql-response+json` when the client accepts it (request
//! errors then answer 400 without `data`) and `application/json` otherwise
//! (always 200 for a well-formed request). Every request to it first passes
//! the origin check (`origin::origin_allowed`), then tower-http's CORS layer.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::WebSocketProtocols;
use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, BatchResponse};
use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::api::expensive::{Admitted, ExpensiveLimiter, EXPENSIVE_BODY_BYTES};
use crate::api::guard::{selected_operation, selects_mutation, ReadOnly};
use crate::api::{AppSchema, Caller, HttpClient};
use crate::auth::{AuthError, Verifier};
use crate::origin::{host_allowed, origin_allowed, OriginPolicy};
use crate::sse::{StreamSettings, Streaming};

/// Read buffer of a websocket; larger client messages are read in several steps.
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

/// How long a browser may cache a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub schema: AppSchema,
    pub max_body_bytes: usize,
    /// Most operations in one HTTP batch (a JSON list of requests), `--max-http-batch`.
    pub max_http_batch: usize,
    /// How often the server pings a websocket; a connection silent for `ws_timeout` is dropped.
    pub ws_ping_interval: Duration,
    pub ws_timeout: Duration,
    /// How long a websocket may take to send `connection_init`.
    pub ws_init_timeout: Duration,
    /// Frames queued per websocket connection before its operations wait.
    pub ws_queue: usize,
    pub shutdown: watch::Receiver<bool>,
    /// Every websocket connection, so a shutdown waits for them to end.
    pub connections: tokio_util::task::TaskTracker,
    /// Which `Origin`s may call `/graphql` (HTTP and websocket upgrades).
    pub origins: Arc<OriginPolicy>,
    /// Verifies bearer tokens; `None` while authentication is off.
    pub verifier: Option<Arc<Verifier>>,
    /// Open websockets per user (`--max-connections-per-user`).
    pub user_connections: Arc<crate::ws::UserConnections>,
}

pub fn router(state: AppState) -> Router {
    let policy = state.origins.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |_, parts| {
            origin_allowed(&policy, &parts.headers)
        }))
        .allow_methods([Method::GET, Method::POST])
        // Any header an allowed origin asks for (content-type, x-client-id,
        // apollo-require-preflight, ...): the origin is trusted already.
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(CORS_MAX_AGE);
    let graphql = Router::new()
        .route(
            "/graphql",
            get(graphql_get).head(graphql_head).post(graphql_post),
        )
        // graphql-sse clients' conventional path; the same as /graphql with Accept: text/event-stream.
        .route(
            "/graphql/stream",
            get(graphql_get).head(graphql_head).post(graphql_post),
        )
        .layer(cors)
        // Outermost: a foreign origin is refused before anything else, its
        // preflight included. A `ValidateRequest` rather than `from_fn`
        // middleware: that cloned the whole inner stack (CORS, route) and the
        // state for every request.
        .layer(ValidateRequestHeaderLayer::custom(OriginGuard(
            state.origins.clone(),
        )));
    Router::new()
        .merge(graphql)
        .route("/schema.graphql", get(sdl))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .merge(crate::playground::router())
        // Shared, not cloned field by field for every request.
        .with_state(Arc::new(state))
}

/// Refuses a request addressed to a `Host` this server does not answer, or
/// whose `Origin` is neither the server's own nor allowed (403).
#[derive(Clone)]
struct OriginGuard(Arc<OriginPolicy>);

impl ValidateRequest<Body> for OriginGuard {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request) -> Result<(), Response> {
        match refusal(&self.0, request.headers()) {
            None => Ok(()),
            Some(response) => Err(response),
        }
    }
}

/// The 403 for a request `OriginGuard` refuses, or None.
fn refusal(origins: &OriginPolicy, headers: &HeaderMap) -> Option<Response> {
    let media = || MediaType::negotiate(headers).unwrap_or(MediaType::Json);
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if !host_allowed(origins, headers) {
        let host = text(header::HOST);
        tracing::info!(%host, "refused a request addressed to an unknown host");
        return Some(error_response(
            media(),
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!(
                "requests addressed to the host {host} are not answered (DNS-rebinding protection); \
                 the server's operator can allow the name with --allowed-hosts"
            ),
        ));
    }
    if origin_allowed(origins, headers) {
        return None;
    }
    let origin = text(header::ORIGIN);
    tracing::info!(%origin, "refused a request from a foreign origin");
    Some(error_response(
        media(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        format!(
            "requests from the origin {origin} are not allowed; the server's operator can allow it with --cors-origins"
        ),
    ))
}

/// The two media types a GraphQL response can be sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaType {
    /// `application/graphql-response+json`: status codes say whether the request ran.
    GraphQlResponse,
    /// `application/json`: the legacy type, 200 for every well-formed request.
    Json,
}

impl MediaType {
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            MediaType::GraphQlResponse => "application/graphql-response+json; charset=utf-8",
            MediaType::Json => "application/json; charset=utf-8",
        })
    }

    /// The response type the `Accept` header prefers, `application/json` when
    /// there is none or it accepts anything (what the GraphQL-over-HTTP audit
    /// and legacy clients expect), or None when it accepts neither (406).
    fn negotiate(headers: &HeaderMap) -> Option<MediaType> {
        let ranges: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        if ranges.is_empty() {
            return Some(MediaType::Json);
        }
        // For each type: (q, specificity, -position) of the most specific range that matches it.
        let mut best: [Option<(u32, u8, i64)>; 2] = [None, None];
        for (position, range) in ranges.iter().enumerate() {
            let mut parts = range.split(';').map(str::trim);
            let essence = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1000;
            let mut utf8 = true;
            for param in parts {
                let (k, v) = param.split_once('=').unwrap_or((param, ""));
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = parse_q(v),
                    "charset" => utf8 = v.eq_ignore_ascii_case("utf-8"),
                    _ => {}
                }
            }
            if !utf8 {
                continue;
            }
            for (i, exact) in ["application/graphql-response+json", "application/json"]
                .iter()
                .enumerate()
            {
                let specificity = if essence == *exact {
                    2
                } else if essence == "application/*" {
                    1
                } else if essence == "*/*" {
                    0
                } else {
                    continue;
                };
                let candidate = (q, specificity, -(position as i64));
                // The most specific range decides a type's q (RFC 9110 12.5.1).
                if best[i].is_none_or(|b| (specificity, -(position as i64)) > (b.1, b.2)) {
                    best[i] = Some(candidate);
                }
            }
        }
        let score = |b: Option<(u32, u8, i64)>| b.filter(|b| b.0 > 0);
        match (score(best[0]), score(best[1])) {
            (None, None) => None,
            (Some(_), None) => Some(MediaType::GraphQlResponse),
            (None, Some(_)) => Some(MediaType::Json),
            // A wildcard alone means application/json; otherwise the higher q,
            // then the one named exactly, then the one listed first.
            (Some(g), Some(j)) if g.1 > 0 && (g.0, g.1, g.2) > (j.0, j.1, j.2) => {
                Some(MediaType::GraphQlResponse)
            }
            _ => Some(MediaType::Json),
        }
    }
}

/// A `q` parameter as thousandths (0 to 1000); a malformed one counts as 0.
fn parse_q(v: &str) -> u32 {
    v.parse::<f64>()
        .ok()
        .filter(|q| (0.0..=1.0).contains(q))
        .map_or(0, |q| (q * 1000.0).round() as u32)
}

fn error_response(media: MediaType, status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    json_response(media, status, &body)
}

fn json_response(media: MediaType, status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    response
}

/// The media type of a non-streamed answer (None: 406); a streamed one has its
/// own, and its errors before the stream starts are `application/json`.
fn response_media(headers: &HeaderMap, streaming: Option<Streaming>) -> Option<MediaType> {
    match streaming {
        Some(_) => Some(MediaType::Json),
        None => MediaType::negotiate(headers),
    }
}

/// Whether to answer `request` with a stream of `requested`: when the
/// operation is a subscription, or when the client accepts no single JSON
/// response (graphql-sse clients send only `text/event-stream`, and get their
/// queries as a stream too). A query or mutation from a client that accepts
/// JSON as well gets JSON: urql sends `application/graphql-response+json, ...,
/// text/event-stream, multipart/mixed` with every query and reads a stream
/// to its end. A hash-only persisted query keeps the stream it asked for
/// (its operation is not known here).
fn answer_streaming(
    headers: &HeaderMap,
    requested: Option<Streaming>,
    request: &async_graphql::Request,
) -> Option<Streaming> {
    let requested = requested?;
    if MediaType::negotiate(headers).is_none() || request.query.is_empty() {
        return Some(requested);
    }
    // Most requests from such clients are queries: without the keyword the
    // document cannot hold a subscription, and is not parsed a second time.
    if !request.query.contains("subscription") {
        return None;
    }
    let subscription = async_graphql::parser::parse_query(&request.query)
        .ok()
        .and_then(|doc| selected_operation(&doc, request.operation_name.as_deref()))
        .is_some_and(|ty| ty == OperationType::Subscription);
    subscription.then_some(requested)
}

fn not_acceptable() -> Response {
    error_response(
        MediaType::Json,
        StatusCode::NOT_ACCEPTABLE,
        "BAD_USER_INPUT",
        "the Accept header allows neither application/graphql-response+json nor application/json"
            .to_string(),
    )
}

fn bad_request(media: MediaType, message: String) -> Response {
    error_response(media, StatusCode::BAD_REQUEST, "BAD_USER_INPUT", message)
}

/// 405 for a mutation sent with another method than POST.
fn mutation_not_allowed(media: MediaType, method: &Method) -> Response {
    let mut response = error_response(
        media,
        StatusCode::METHOD_NOT_ALLOWED,
        "BAD_USER_INPUT",
        format!("mutations must be sent with POST, not {method}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// 401 with a GraphQL error body: the token is missing where one is needed, or bad.
fn unauthenticated_response(media: MediaType, error: &AuthError) -> Response {
    let mut response = error_response(
        media,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        error.to_string(),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The caller an `Authorization` header names: `Ok(None)` without a header
/// (or with authentication off), `Err` for a bad token (answered with 401
/// before anything runs).
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, AuthError> {
    let Some(verifier) = &state.verifier else {
        return Ok(None);
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("the Authorization header is not text".into()))?;
    let user = verifier.verify_bearer(value)?;
    Ok(Some(Caller(Arc::new(user))))
}

/// Whether a request that carries no token may still run as a stream: with
/// authentication on only the public root fields (templates, template,
/// templateErrors, introspection) may, as over plain HTTP.
fn public_only(request: &async_graphql::Request) -> bool {
    use async_graphql::parser::types::Selection;
    const PUBLIC: [&str; 6] = [
        "templates",
        "template",
        "templateErrors",
        "__typename",
        "__schema",
        "__type",
    ];
    let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
        // The engine reports the parse error; it runs nothing.
        return true;
    };
    doc.operations.iter().all(|(_, op)| {
        op.node.ty == OperationType::Query
            && op
                .node
                .selection_set
                .node
                .items
                .iter()
                .all(|item| match &item.node {
                    Selection::Field(f) => PUBLIC.contains(&f.node.name.node.as_str()),
                    _ => false,
                })
    })
}

/// Whether any error of a response is UNAUTHENTICATED (answered with 401).
fn needs_token(response: &async_graphql::Response) -> bool {
    response.errors.iter().any(|e| {
        e.extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .is_some_and(|c| *c == async_graphql::Value::from("UNAUTHENTICATED"))
    })
}

fn http_client(headers: &HeaderMap) -> Option<HttpClient> {
    headers
        .get("x-client-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(|v| HttpClient(v.to_string()))
}

/// The GraphQL-over-HTTP request parameters, checked for their types: `query`
/// a string (absent only for a persisted query's hash), `operationName` a
/// string, `variables` and `extensions` maps; `null` is the same as absent.
fn graphql_request(params: &Map<String, Value>) -> Result<async_graphql::Request, String> {
    let present = |key: &str| params.get(key).filter(|v| !v.is_null());
    let extensions = match present("extensions") {
        None => None,
        Some(Value::Object(map)) => Some(map),
        Some(other) => return Err(format!("extensions must be a map, got {}", kind(other))),
    };
    let query = match present("query") {
        Some(Value::String(q)) => q.as_str(),
        Some(other) => return Err(format!("query must be a string, got {}", kind(other))),
        None if extensions.is_some_and(|e| e.contains_key("persistedQuery")) => "",
        None => return Err("the request has no query: send {\"query\": \"{ ... }\"}".to_string()),
    };
    let operation_name = match present("operationName") {
        None => None,
        Some(Value::String(name)) if name.is_empty() => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(other) => {
            return Err(format!(
                "operationName must be a string, got {}",
                kind(other)
            ))
        }
    };
    let mut request = async_graphql::Request::new(query);
    match present("variables") {
        None => {}
        Some(v @ Value::Object(_)) => {
            request = request.variables(async_graphql::Variables::from_json(v.clone()))
        }
        Some(other) => return Err(format!("variables must be a map, got {}", kind(other))),
    }
    if let Some(name) = operation_name {
        request = request.operation_name(name);
    }
    if let Some(extensions) = extensions {
        for (key, value) in extensions {
            let value = async_graphql::Value::from_json(value.clone())
                .map_err(|e| format!("extensions.{key} is not a GraphQL value: {e}"))?;
            request.extensions.insert(key.clone(), value);
        }
    }
    Ok(request)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Whether a response is a GraphQL request error: it failed before execution
/// (parse, validation, operation selection, variable coercion, an unknown
/// persisted query). Those have no `data` and their errors no `path`; a field
/// error always has a path, even when it nulls the whole `data`.
fn is_request_error(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

/// A response as the body of `media`: under graphql-response+json a request
/// error has no `data` entry.
fn response_body(media: MediaType, response: &async_graphql::Response) -> ResponseBody<'_> {
    ResponseBody {
        data: !(media == MediaType::GraphQlResponse && is_request_error(response)),
        response,
    }
}

/// A response written straight to JSON (no `serde_json::Value` in between):
/// `data` unless left out, then `errors` and `extensions` when there are any.
struct ResponseBody<'a> {
    response: &'a async_graphql::Response,
    data: bool,
}

impl serde::Serialize for ResponseBody<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.response;
        let mut map = serializer.serialize_map(None)?;
        if self.data {
            map.serialize_entry("data", &r.data)?;
        }
        if !r.errors.is_empty() {
            map.serialize_entry("errors", &r.errors)?;
        }
        if !r.extensions.is_empty() {
            map.serialize_entry("extensions", &r.extensions)?;
        }
        map.end()
    }
}

async fn execute(
    state: &AppState,
    headers: &HeaderMap,
    media: MediaType,
    request: BatchRequest,
) -> Response {
    let mut request = request;
    if let Some(client) = http_client(headers) {
        request = request.data(client);
    }
    match authenticate(state, headers) {
        Ok(Some(caller)) => request = request.data(caller),
        Ok(None) => {}
        Err(e) => return unauthenticated_response(media, &e),
    }
    let response = state.schema.execute_batch(request).await;
    let mut out = match &response {
        BatchResponse::Single(one) => {
            let status = if needs_token(one) {
                StatusCode::UNAUTHORIZED
            } else if media == MediaType::GraphQlResponse && is_request_error(one) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            json_response(media, status, &response_body(media, one))
        }
        // The spec does not cover batches: each answer is shaped for the media
        // type, and the batch as a whole ran, so 200.
        BatchResponse::Batch(all) => {
            let status = if all.iter().any(needs_token) {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            let bodies: Vec<_> = all.iter().map(|r| response_body(media, r)).collect();
            json_response(media, status, &bodies)
        }
    };
    let status = out.status();
    if status == StatusCode::UNAUTHORIZED {
        out.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(cache) = response.cache_control().value() {
        if let Ok(v) = cache.parse() {
            out.headers_mut().insert(header::CACHE_CONTROL, v);
        }
    }
    out
}

/// Whether a POST body's `Content-Type` is one this server reads: JSON, UTF-8.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';').map(str::trim);
    let essence = parts.next().unwrap_or("").to_ascii_lowercase();
    let charset_ok = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    charset_ok
        && matches!(
            essence.as_str(),
            "application/json" | "application/graphql-response+json"
        )
}

async fn graphql_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let streaming = Streaming::requested(&headers);
    let Some(media) = response_media(&headers, streaming) else {
        return not_acceptable();
    };
    // Only JSON bodies: a form, multipart or text/plain POST is what a page
    // on another site can send without a CORS preflight.
    if !json_content_type(&headers) {
        let got = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        return error_response(
            media,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BAD_USER_INPUT",
            format!("a POST body must be application/json (UTF-8); the Content-Type was {got}"),
        );
    }
    let bytes: Bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(
                media,
                StatusCode::PAYLOAD_TOO_LARGE,
                "LIMIT_EXCEEDED",
                format!(
                    "the request body is larger than the limit of {} bytes",
                    state.max_body_bytes
                ),
            )
        }
    };
    // A big body is expensive to parse and to run: it waits for a permit of
    // the expensive-request limiter (without holding a worker) before either.
    let limiter = state.schema.data::<Arc<ExpensiveLimiter>>();
    let permit = match limiter.filter(|_| bytes.len() > EXPENSIVE_BODY_BYTES) {
        None => None,
        Some(limiter) => match limiter.admit().await {
            Ok(permit) => Some(permit),
            Err(e) => {
                let mut response = error_response(
                    media,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "LIMIT_EXCEEDED",
                    e.message,
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        },
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return bad_request(
            media,
            "the body is empty: send a GraphQL request as JSON ({\"query\": ...})".to_string(),
        );
    }
    let request = match fast_request(&bytes) {
        Some(request) => Ok(BatchRequest::Single(request)),
        None => slow_request(&bytes, state.max_http_batch),
    };
    let request = match request {
        Ok(request) => request,
        Err(Refusal::BadRequest(message)) => return bad_request(media, message),
        Err(Refusal::Batch(message)) => {
            return error_response(media, StatusCode::BAD_REQUEST, "LIMIT_EXCEEDED", message)
        }
    };
    let streaming = match &request {
        BatchRequest::Single(single) => answer_streaming(&headers, streaming, single),
        BatchRequest::Batch(_) => streaming.filter(|_| MediaType::negotiate(&headers).is_none()),
    };
    match (request, streaming) {
        (BatchRequest::Single(request), Some(kind)) => stream(&state, &headers, request, kind),
        (_, Some(_)) => bad_request(
            media,
            "a streamed response carries one operation, not a batch".to_string(),
        ),
        (request, None) => {
            let media = MediaType::negotiate(&headers).unwrap_or(media);
            // The permit covers the whole execution, so the engine must not wait for another.
            let request = match &permit {
                Some(_) => request.data(Admitted),
                None => request,
            };
            let response = execute(&state, &headers, media, request).await;
            drop(permit);
            response
        }
    }
}

/// Why a POST body is not run.
enum Refusal {
    /// Not a GraphQL request (BAD_USER_INPUT).
    BadRequest(String),
    /// A batch of more operations than `--max-http-batch` (LIMIT_EXCEEDED).
    Batch(String),
}

/// The common case read in one pass: a single request (a JSON map) whose
/// members all have the types the spec gives them, straight into the
/// engine's types, without a `serde_json::Value` tree in between (that tree
/// and its conversion were about a tenth of a small mutation's CPU). `None`
/// for anything else (a batch, a member of another type, a duplicate member,
/// bad JSON, no query): `slow_request` reads those and says exactly what is
/// wrong, or runs a persisted query's hash.
fn fast_request(bytes: &[u8]) -> Option<async_graphql::Request> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Params {
        query: String,
        operation_name: Option<String>,
        variables: Option<async_graphql::Variables>,
        extensions: Option<std::collections::BTreeMap<String, async_graphql::Value>>,
    }
    // A derived struct would also read a JSON list as its members in order.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let params: Params = serde_json::from_slice(bytes).ok()?;
    let mut request = async_graphql::Request::new(params.query);
    if let Some(variables) = params.variables {
        request = request.variables(variables);
    }
    if let Some(name) = params.operation_name.filter(|n| !n.is_empty()) {
        request = request.operation_name(name);
    }
    request
        .extensions
        .extend(params.extensions.unwrap_or_default());
    Some(request)
}

/// Any POST body, as JSON first: a request, or a batch of at most
/// `max_batch`, each member's type checked with a message naming it.
fn slow_request(bytes: &[u8], max_batch: usize) -> Result<BatchRequest, Refusal> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| {
        Refusal::BadRequest(format!(
            "the body must be a GraphQL request as JSON ({{\"query\": ...}}): {e}"
        ))
    })?;
    // A batch is refused whole before any of it is parsed into requests or
    // run: each operation is bounded on its own, so the count bounds the sum.
    if let Value::Array(items) = &body {
        if items.len() > max_batch {
            return Err(Refusal::Batch(format!(
                "the batch has {} operations, more than the limit (max-http-batch is {max_batch}); none of them ran",
                items.len(),
            )));
        }
    }
    match &body {
        Value::Object(params) => graphql_request(params).map(BatchRequest::Single),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(params) => {
                    graphql_request(params).map_err(|e| format!("request {i} of the batch: {e}"))
                }
                other => Err(format!(
                    "request {i} of the batch is {}, not a map",
                    kind(other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(BatchRequest::Batch),
        other => Err(format!(
            "the body must be a GraphQL request (a map) or a list of them, got {}",
            kind(other)
        )),
    }
    .map_err(Refusal::BadRequest)
}

/// The GraphQL-over-HTTP parameters of a GET's query string: `variables` and
/// `extensions` as JSON text, an empty `operationName` as none, other
/// parameters ignored; a parameter given twice is refused.
fn get_params(query: &str) -> Result<Map<String, Value>, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| format!("the query string is not URL-encoded parameters: {e}"))?;
    let mut params = Map::new();
    for (key, value) in pairs {
        let value = match key.as_str() {
            "query" => Value::String(value),
            "operationName" if value.is_empty() => Value::Null,
            "operationName" => Value::String(value),
            "variables" | "extensions" if value.is_empty() => Value::Null,
            "variables" | "extensions" => serde_json::from_str(&value)
                .map_err(|e| format!("{key} must be a map as JSON: {e}"))?,
            _ => continue,
        };
        if params.insert(key.clone(), value).is_some() {
            return Err(format!("the parameter {key} is given more than once"));
        }
    }
    Ok(params)
}

/// Streams an operation's results over SSE or multipart HTTP (src/sse.rs).
fn stream(
    state: &AppState,
    headers: &HeaderMap,
    request: async_graphql::Request,
    kind: Streaming,
) -> Response {
    // A stream cannot turn into a 401 once it has started: the token is checked first.
    let mut request = request;
    match authenticate(state, headers) {
        Ok(Some(caller)) => request = request.data(caller),
        Ok(None) if state.verifier.is_some() && !public_only(&request) => {
            return unauthenticated_response(MediaType::Json, &AuthError::Missing)
        }
        Ok(None) => {}
        Err(e) => return unauthenticated_response(MediaType::Json, &e),
    }
    let settings = StreamSettings {
        heartbeat: state.ws_ping_interval,
        write_timeout: state.ws_timeout,
        shutdown: state.shutdown.clone(),
    };
    crate::sse::respond(state.schema.clone(), settings, headers, request, kind)
}

async fn graphql_get(State(state): State<Arc<AppState>>, request: Request) -> Response {
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
                MediaType::Json,
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
            // A message, whole or in fragments, is a request body: the same
            // limit, closed with 1009 (see `ws::serve`).
            .max_message_size(state.max_body_bytes)
            .max_frame_size(state.max_body_bytes)
            .on_upgrade(move |socket| {
                let connections = state.connections.clone();
                connections.track_future(crate::ws::serve(socket, (*state).clone(), protocol))
            })
            .into_response();
    }
    let streaming = Streaming::requested(&parts.headers);
    let Some(media) = response_media(&parts.headers, streaming) else {
        return not_acceptable();
    };
    let params = parts.uri.query().unwrap_or("");
    let request = match get_params(params).and_then(|p| graphql_request(&p)) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(
                media,
                format!("GET /graphql needs ?query=... (and optional variables, operationName, extensions): {e}"),
            )
        }
    };
    // The engine refuses a mutation (also one found by a persisted query's
    // hash) and says so through the marker; GET is for queries only.
    let read_only = ReadOnly::new(request.operation_name.as_deref());
    let request = request.data(read_only.clone());
    let streaming = answer_streaming(&parts.headers, streaming, &request);
    let media = MediaType::negotiate(&parts.headers)
        .filter(|_| streaming.is_none())
        .unwrap_or(media);
    if let Some(kind) = streaming {
        // A stream cannot turn into a 405 once it has started: a mutation's
        // text is refused here, and one found by its hash inside the engine
        // (an error event; it does not run).
        let mutation = !request.query.is_empty()
            && async_graphql::parser::parse_query(&request.query)
                .is_ok_and(|doc| selects_mutation(&doc, request.operation_name.as_deref()));
        if mutation {
            return mutation_not_allowed(media, &parts.method);
        }
        return stream(&state, &parts.headers, request, kind);
    }
    let response = execute(&state, &parts.headers, media, BatchRequest::Single(request)).await;
    if read_only.refused() {
        return mutation_not_allowed(media, &parts.method);
    }
    response
}

/// HEAD never executes anything (axum would otherwise run the GET handler and
/// drop the body, mutations included): 405, with `Allow: POST` for a mutation.
async fn graphql_head(request: Request) -> Response {
    let media = MediaType::negotiate(request.headers()).unwrap_or(MediaType::Json);
    let mutation = get_params(request.uri().query().unwrap_or(""))
        .ok()
        .and_then(|p| {
            let query = p.get("query")?.as_str()?.to_string();
            let name = p
                .get("operationName")
                .and_then(Value::as_str)
                .map(str::to_string);
            Some((query, name))
        })
        .is_some_and(|(query, name)| {
            async_graphql::parser::parse_query(&query)
                .is_ok_and(|doc| selects_mutation(&doc, name.as_deref()))
        });
    if mutation {
        return mutation_not_allowed(media, &Method::HEAD);
    }
    let mut response = error_response(
        media,
        StatusCode::METHOD_NOT_ALLOWED,
        "BAD_USER_INPUT",
        "HEAD runs nothing: send queries with GET or POST".to_string(),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    response
}

/// Prometheus metrics (text exposition format); see src/metrics.rs for what is counted.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(hub) = state.schema.data::<std::sync::Arc<crate::session::Hub>>() {
        metrics::gauge!(crate::metrics::names::SESSIONS).set(hub.sessions().len() as f64);
    }
    let handle = crate::metrics::handle();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

async fn sdl(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        state.schema.sdl(),
    )
        .into_response()
}

/// The internal endpoint of a cluster (`session::cluster`): work another
/// instance forwards for a session this one owns, authenticated by the
/// cluster secret. Answers 401 without the secret, 400 for a body that is
/// not forwarded work, else 200 with the `ForwardAnswer`.
pub fn cluster_router(
    hub: Arc<crate::session::Hub>,
    link: crate::session::cluster::ClusterLink,
    max_body_bytes: usize,
) -> Router {
    use crate::session::cluster::{Forwarded, FORWARD_PATH, SECRET_HEADER};
    let handler = move |headers: HeaderMap, body: Bytes| {
        let (hub, link) = (hub.clone(), link.clone());
        async move {
            let given = headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok());
            if !link.accepts(given) {
                return (StatusCode::UNAUTHORIZED, "a cluster secret is required").into_response();
            }
            let forwarded: Forwarded = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => {
                    return (StatusCode::BAD_REQUEST, format!("not forwarded work: {e}"))
                        .into_response()
                }
            };
            axum::Json(hub.serve_forwarded(forwarded).await).into_response()
        }
    };
    Router::new()
        .route(FORWARD_PATH, axum::routing::post(handler))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
}
