//! The websocket transport of `/graphql`: graphql-transport-ws (and the legacy graphql-ws) as their
//! specifications state them, a bounded outbound queue per connection, timed writes, and
//! session-event subscriptions rendered once per event and selection, shared by every subscriber.
//!
//! The protocol state machine is this module's own: async-graphql's engine
//! closes with codes clients treat as fatal (1002, 1011), sends no `error`
//! message, keeps two streams under one id, has no `connection_init` timeout,
//! and buffers without bound. Operations still execute through the schema
//! (`Schema::execute_stream`); this module only frames them.
//!
//! Each operation runs in its own task and hands its frames to the
//! connection through one bounded queue (`--ws-queue` frames). A subscription
//! that finds the queue full waits, so it stops reading its session stream,
//! which then lags behind the session's broadcast and catches up from the
//! event log when it reads again (or gets `ResyncRequired` when the log no
//! longer has the events): a slow reader costs the queue and the socket
//! buffers, never memory that grows with the events it missed. Every socket
//! write has a timeout (`--ws-timeout-secs`); a peer that does not drain is
//! dropped, which ends its subscriptions and so its presence in the session.
//!
//! A `sessionEvents` subscription that passes validation takes a fast path:
//! each event is executed against the subscription's selection once (through
//! the same resolver, see `api::RenderOne`) and the JSON is memoised on the
//! event under the full selection, so a thousand subscribers with the same
//! selection cost one execution and a thousand socket writes. Its task only
//! sets it up: it hands the subscription's stream of frames (`Frames`) to the
//! connection, whose own task polls it from then on, so a delivery wakes one
//! task, not a subscription task and then the connection. Backpressure is the
//! same without the queue: while the connection waits for a write (a peer
//! that does not read), it polls none of its subscriptions, which lag and
//! later catch up from the log. The connection's rarely woken branches (the
//! socket's read side, the queue, the ping timer, shutdown) are polled only
//! when they woke (`gate::Gate`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::WebSocketProtocols;
use async_graphql::parser::types::{OperationType, Selection};
use async_graphql::{Request, Response, Variables};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use crate::api::extension::Validated;
use crate::api::{ApiLimits, AppSchema, Caller, ConnClient, Probe, RenderOne};
use crate::auth::{AuthError, Verifier};
use crate::gate::Gate;
use crate::http::AppState;
use crate::session::{ClientInfo, EventKind, RenderKey, SessionEvent};

/// Most frames written before one flush.
const MAX_BURST: usize = 64;

/// Longest a closing connection waits to hand over its close frame and for the peer's answer.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Operations a connection may have in flight beyond its subscription limit
/// (queries and mutations waiting for their turn or for the queue).
const MAX_EXTRA_OPERATIONS: usize = 64;

/// Longest text of an identifying field of `connection_init` (`clientId`, `name`).
const MAX_IDENTITY_BYTES: usize = 200;

/// Identity of a websocket client from its `connection_init` payload (`clientId`, `name`), else generated.
///
/// A payload whose `clientId` or `name` is not a short string is refused
/// rather than ignored: the client would otherwise act under an identity it
/// did not ask for.
pub fn connection_client(payload: Option<&Map<String, Value>>) -> Result<ConnClient, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match payload.and_then(|p| p.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().len() <= MAX_IDENTITY_BYTES => {
                Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty()))
            }
            Some(_) => Err(format!(
                "{key} must be a string of at most {MAX_IDENTITY_BYTES} bytes"
            )),
        }
    };
    let id = text("clientId")?;
    let name = text("name")?;
    Ok(ConnClient {
        id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name,
        connected_at: Utc::now(),
        subscriptions: Arc::new(AtomicUsize::new(0)),
    })
}

/// The bearer token of a `connection_init` payload: `authorization`, or
/// `headers.Authorization` (any case), as graphql-ws clients send them.
fn payload_token(payload: Option<&Map<String, Value>>) -> Option<&str> {
    fn find(map: &Map<String, Value>) -> Option<&str> {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.as_str())
    }
    let payload = payload?;
    find(payload).or_else(|| match payload.get("headers") {
        Some(Value::Object(headers)) => find(headers),
        _ => None,
    })
}

/// The user a `connection_init` payload authenticates, when authentication is on.
pub fn connection_caller(
    verifier: &Verifier,
    payload: Option<&Map<String, Value>>,
) -> Result<Caller, AuthError> {
    let value = payload_token(payload).ok_or(AuthError::Missing)?;
    Ok(Caller(Arc::new(verifier.verify_bearer(value)?)))
}

/// Open websockets per authenticated user, capped (`--max-connections-per-user`).
pub struct UserConnections {
    open: Mutex<HashMap<String, usize>>,
    limit: usize,
}

impl UserConnections {
    pub fn new(limit: usize) -> Self {
        UserConnections {
            open: Mutex::new(HashMap::new()),
            limit,
        }
    }

    /// A connection slot for `user`, held until dropped; `None` at the cap.
    pub fn take(self: &Arc<Self>, user: &str) -> Option<UserSlot> {
        let mut open = self.open.lock();
        let n = open.entry(user.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            owner: self.clone(),
            user: user.to_string(),
        })
    }
}

/// One open websocket of a user.
pub struct UserSlot {
    owner: Arc<UserConnections>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock();
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// The `payload` of a subscribe (`start`) message.
struct Payload {
    /// Empty for a persisted query (APQ) sent by its hash alone.
    query: String,
    operation_name: Option<String>,
    variables: Option<Map<String, Value>>,
    /// `extensions` (e.g. `persistedQuery`), for the engine's extensions.
    extensions: Option<Map<String, Value>>,
}

impl Payload {
    fn request(&self) -> Request {
        let mut request = Request::new(self.query.clone());
        if let Some(name) = &self.operation_name {
            request = request.operation_name(name.clone());
        }
        if let Some(vars) = &self.variables {
            request = request.variables(Variables::from_json(Value::Object(vars.clone())));
        }
        if let Some(extensions) = &self.extensions {
            for (key, value) in extensions {
                request.extensions.insert(
                    key.clone(),
                    async_graphql::Value::from_json(value.clone()).unwrap_or_default(),
                );
            }
        }
        request
    }

    fn persisted(&self) -> bool {
        self.extensions
            .as_ref()
            .is_some_and(|e| e.contains_key("persistedQuery"))
    }
}

/// A client message, checked against the protocol's message shapes.
enum Incoming {
    Init(Option<Map<String, Value>>),
    Ping(Option<Map<String, Value>>),
    Pong,
    Subscribe {
        id: String,
        payload: Payload,
    },
    Complete {
        id: String,
    },
    /// Legacy `connection_terminate`.
    Terminate,
}

/// An optional field that must be an object (or null) when present.
fn optional_object(
    message: &mut Map<String, Value>,
    field: &str,
    of: &str,
) -> Result<Option<Map<String, Value>>, String> {
    match message.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(format!(
            "Invalid message received: the {field} of {of} must be an object"
        )),
    }
}

fn operation_id(message: &Map<String, Value>, of: &str) -> Result<String, String> {
    match message.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(format!(
            "Invalid message received: {of} needs a non-empty string id"
        )),
    }
}

fn subscribe_payload(message: &mut Map<String, Value>, of: &str) -> Result<Payload, String> {
    let bad = |what: &str| format!("Invalid message received: the payload of {of} {what}");
    let Some(Value::Object(mut p)) = message.remove("payload") else {
        return Err(bad("must be an object"));
    };
    let extensions = optional_object(&mut p, "extensions", of)?;
    let persisted = extensions
        .as_ref()
        .is_some_and(|e| e.contains_key("persistedQuery"));
    let query = match p.remove("query") {
        Some(Value::String(query)) => query,
        // A persisted query may come by its hash alone (APQ).
        None | Some(Value::Null) if persisted => String::new(),
        _ => return Err(bad("needs a query string")),
    };
    let operation_name = match p.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err(bad("has an operationName that is not a string")),
    };
    let variables = optional_object(&mut p, "variables", of)?;
    Ok(Payload {
        query,
        operation_name,
        variables,
        extensions,
    })
}

/// Parses one client message; the error is the reason for closing with 4400.
fn parse(text: &str, legacy: bool) -> Result<Incoming, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("Invalid message received: {e}"))?;
    let Value::Object(mut message) = value else {
        return Err("Invalid message received: not a JSON object".into());
    };
    let kind = match message.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err("Invalid message received: it has no type".into()),
    };
    match (kind.as_str(), legacy) {
        ("connection_init", _) => Ok(Incoming::Init(optional_object(
            &mut message,
            "payload",
            "connection_init",
        )?)),
        ("ping", false) => Ok(Incoming::Ping(optional_object(
            &mut message,
            "payload",
            "ping",
        )?)),
        ("pong", false) => {
            optional_object(&mut message, "payload", "pong")?;
            Ok(Incoming::Pong)
        }
        ("subscribe", false) | ("start", true) => {
            let id = operation_id(&message, &kind)?;
            let payload = subscribe_payload(&mut message, &kind)?;
            Ok(Incoming::Subscribe { id, payload })
        }
        ("complete", false) | ("stop", true) => Ok(Incoming::Complete {
            id: operation_id(&message, &kind)?,
        }),
        ("connection_terminate", true) => Ok(Incoming::Terminate),
        (other, _) => Err(format!("Unexpected message of type {other} received")),
    }
}

/// A `sessionEvents` subscription request, ready to render events.
struct Plan {
    request: Payload,
    /// The full selection: the query, operation and variables other than the
    /// field's own arguments. Renderings are shared under it, so it is the
    /// text itself, not a hash that two selections could share.
    key: RenderKey,
}

/// Documents whose plan is remembered (`PLANS`); longer ones are parsed each time.
const PLAN_CACHE_MAX_QUERY_BYTES: usize = 4 * 1024;
/// Plans remembered, least recently used first out.
const PLAN_CACHE_ENTRIES: usize = 256;

/// What a document says about the fast path, by its text and operation
/// name: `None` if it is not a `sessionEvents` subscription, else the
/// variables its field takes as arguments. Every subscriber of a storm sends
/// the same document, and parsing it was a third of the server's instructions
/// per connection (callgrind, 1,000 clients connecting).
type Shape = Option<Fields>;

/// What a `sessionEvents` document's plan needs from its parse.
#[derive(Clone)]
struct Fields {
    /// The variables the field takes as arguments.
    arguments: Arc<[String]>,
    /// The render key of the document with no other variables, made once, so
    /// that its subscribers share one key and finding an event's rendering
    /// compares pointers, not the selection's text, per subscriber and event.
    plain: RenderKey,
}

/// A document's text and operation name.
type PlanKey = (String, Option<String>);

static PLANS: std::sync::LazyLock<Mutex<lru::LruCache<PlanKey, Shape>>> =
    std::sync::LazyLock::new(|| {
        Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(PLAN_CACHE_ENTRIES).expect("not zero"),
        ))
    });

/// Recognises a subscription whose only root field is `sessionEvents`.
fn plan(payload: &Payload) -> Option<Plan> {
    // Automatic Persisted Queries (register, look up, hash check) run in the
    // engine's extensions, so such a subscription is left to the engine.
    if payload.persisted() {
        return None;
    }
    let key = (payload.query.clone(), payload.operation_name.clone());
    let cached = PLANS.lock().get(&key).cloned();
    let fields = match cached {
        Some(shape) => shape?,
        None => {
            let shape = shape(&payload.query, payload.operation_name.as_deref());
            if payload.query.len() <= PLAN_CACHE_MAX_QUERY_BYTES {
                PLANS.lock().put(key, shape.clone());
            }
            shape?
        }
    };
    // The arguments choose the session and where to start, not what an event renders as.
    let mut shape = payload.variables.clone().unwrap_or_default();
    for name in fields.arguments.iter() {
        shape.remove(name);
    }
    let key = if shape.is_empty() {
        fields.plain.clone()
    } else {
        RenderKey::from(render_key(&payload.query, &payload.operation_name, &shape)?)
    };
    Some(Plan {
        key,
        request: Payload {
            query: payload.query.clone(),
            operation_name: payload.operation_name.clone(),
            variables: payload.variables.clone(),
            extensions: None,
        },
    })
}

/// The full selection's text: query, operation name and the variables that are not arguments.
fn render_key(
    query: &str,
    operation_name: &Option<String>,
    variables: &Map<String, Value>,
) -> Option<String> {
    // serde_json's map is ordered, so equal variables print equally.
    serde_json::to_string(&(query, operation_name, variables)).ok()
}

/// Parses a document for `plan`: the variables of its `sessionEvents` field's arguments, if it is one.
fn shape(query: &str, operation_name: Option<&str>) -> Shape {
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let mut ops = doc.operations.iter();
    let op = match operation_name {
        Some(name) => ops.find(|(n, _)| n.map(|n| n.as_str()) == Some(name))?.1,
        None => {
            let (_, op) = ops.next()?;
            if ops.next().is_some() {
                return None;
            }
            op
        }
    };
    if op.node.ty != OperationType::Subscription || !op.node.directives.is_empty() {
        return None;
    }
    let [item] = op.node.selection_set.node.items.as_slice() else {
        return None;
    };
    let Selection::Field(field) = &item.node else {
        return None;
    };
    if field.node.name.node != "sessionEvents" || !field.node.directives.is_empty() {
        return None;
    }
    // A variable argument prints as `$name`.
    let names: Vec<String> = field
        .node
        .arguments
        .iter()
        .filter_map(|(_, value)| value.node.to_string().strip_prefix('$').map(str::to_string))
        .collect();
    let name = operation_name.map(str::to_string);
    Some(Fields {
        arguments: names.into(),
        plain: RenderKey::from(render_key(query, &name, &Map::new())?),
    })
}

/// Executes the plan's selection on one event; with a probe, also learns the arguments.
async fn render(
    schema: &AppSchema,
    plan: &Plan,
    event: Arc<SessionEvent>,
    probe: Option<Probe>,
    caller: Option<&Caller>,
) -> Response {
    let mut request = plan.request.request().data(RenderOne { event, probe });
    if let Some(caller) = caller {
        request = request.data(caller.clone());
    }
    schema
        .execute_stream(request)
        .next()
        .await
        .unwrap_or_else(|| {
            Response::from_errors(vec![async_graphql::ServerError::new("no result", None)])
        })
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The frame that ends operation `id`.
fn complete_frame(id: &str) -> String {
    format!(r#"{{"id":{},"type":"complete"}}"#, json_string(id))
}

/// A frame from its head (`frame_head`) and its payload.
fn frame(head: &str, payload: &str) -> String {
    let mut text = String::with_capacity(head.len() + payload.len() + 1);
    text.push_str(head);
    text.push_str(payload);
    text.push('}');
    text
}

/// A frame with a payload up to the payload itself: `{"id":..,"type":..,"payload":`.
fn frame_head(id: &str, kind: &str) -> String {
    format!(r#"{{"id":{},"type":"{kind}","payload":"#, json_string(id))
}

/// What an operation hands its connection: a frame to write, or (the
/// `sessionEvents` fast path) the stream of its frames, which the
/// connection's own task polls from then on.
struct Out {
    op: u64,
    what: Outgoing,
}

enum Outgoing {
    Frame(Frame),
    Events(Frames),
}

/// A frame of an operation.
struct Frame {
    text: String,
    /// The operation's last frame (`complete` or `error`): once written, its id is free again.
    last: bool,
}

/// A `sessionEvents` subscription as frames, ending with its `complete`.
///
/// The connection's task polls it itself, so a delivery wakes that one
/// task (the session's broadcast wakes it directly) instead of a
/// subscription task that then queued the frame and woke the connection;
/// and a connection that is not writing (its peer does not read) does not
/// poll it, so the subscription lags and later catches up from the log.
type Frames = std::pin::Pin<Box<dyn futures_util::Stream<Item = Frame> + Send>>;

/// A subscription slot of the connection (`--max-subscriptions`), released once.
struct Slot {
    open: Arc<AtomicUsize>,
    held: AtomicBool,
}

impl Slot {
    /// Takes a slot if fewer than `limit` are taken.
    fn take(open: &Arc<AtomicUsize>, limit: usize) -> Option<Arc<Slot>> {
        if open.fetch_add(1, Ordering::Relaxed) < limit {
            Some(Arc::new(Slot {
                open: open.clone(),
                held: AtomicBool::new(true),
            }))
        } else {
            open.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }

    fn release(&self) {
        if self.held.swap(false, Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// One operation of a connection, as the connection sees it.
struct Running {
    serial: u64,
    task: tokio::task::JoinHandle<()>,
    /// Released by the connection as soon as the operation ends for the client,
    /// so a client that saw `complete` may subscribe again at once.
    _slot: Option<Arc<Slot>>,
}

/// The connection's active operations, by id and by serial (frames carry the serial).
#[derive(Default)]
struct Ops {
    by_id: HashMap<String, Running, foldhash::fast::RandomState>,
    /// Looked up for every frame written.
    ids: HashMap<u64, String, foldhash::fast::RandomState>,
    next: u64,
    /// The `sessionEvents` subscriptions this connection polls itself, by serial.
    events: StreamMap<u64, Frames>,
}

impl Ops {
    fn serial(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn insert(&mut self, id: String, running: Running) {
        self.ids.insert(running.serial, id.clone());
        self.by_id.insert(id, running);
    }

    fn is_live(&self, serial: u64) -> bool {
        self.ids.contains_key(&serial)
    }

    /// Forgets operation `serial` (its last frame was written).
    fn finished(&mut self, serial: u64) {
        if let Some(id) = self.ids.remove(&serial) {
            self.by_id.remove(&id);
        }
        self.events.remove(&serial);
    }

    /// Stops operation `id` on the client's request; whether it was active.
    fn stop(&mut self, id: &str) -> bool {
        match self.by_id.remove(id) {
            Some(running) => {
                self.ids.remove(&running.serial);
                // Its subscription ends here, and with it the client's presence.
                self.events.remove(&running.serial);
                running.task.abort();
                true
            }
            None => false,
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        for (_, running) in self.by_id.drain() {
            running.task.abort();
        }
    }
}

/// What one operation task needs from its connection.
struct Op {
    schema: AppSchema,
    client: ConnClient,
    /// The connection's authenticated user (authentication on).
    caller: Option<Caller>,
    out: mpsc::Sender<Out>,
    serial: u64,
    id: String,
    legacy: bool,
}

impl Op {
    /// Queues a frame, waiting while the connection's queue is full; false once the connection is gone.
    async fn send(&self, text: String, last: bool) -> bool {
        let out = Out {
            op: self.serial,
            what: Outgoing::Frame(Frame { text, last }),
        };
        self.out.send(out).await.is_ok()
    }

    fn next_type(&self) -> &'static str {
        if self.legacy {
            "data"
        } else {
            "next"
        }
    }

    async fn run(self, payload: Payload, fast: Option<(Plan, Arc<Slot>)>) {
        if let Some((plan, slot)) = fast {
            if let Some(frames) = self.session_events(plan).await {
                let out = Out {
                    op: self.serial,
                    what: Outgoing::Events(frames),
                };
                // A connection that is gone drops the stream, and with it the subscription.
                let _ = self.out.send(out).await;
                return;
            }
            // The engine reports whatever made the fast path decline, and counts its own slot.
            slot.release();
        }
        self.execute(payload).await;
    }

    /// Any operation, executed by the schema: results as `next`, request errors as `error`.
    async fn execute(&self, payload: Payload) {
        let validated = Arc::new(AtomicBool::new(false));
        let mut request = payload
            .request()
            .data(self.client.clone())
            .data(Validated(validated.clone()));
        if let Some(caller) = &self.caller {
            request = request.data(caller.clone());
        }
        let mut results = self.schema.execute_stream(request);
        let head = frame_head(&self.id, self.next_type());
        let mut first = true;
        while let Some(response) = results.next().await {
            if first && response.is_err() && !validated.load(Ordering::Relaxed) {
                // Parse, validation and limit errors happen before execution:
                // the protocols answer them with `error` and no `complete`.
                let errors =
                    serde_json::to_string(&response.errors).unwrap_or_else(|_| "[]".into());
                let frame = format!("{}{errors}}}", frame_head(&self.id, "error"));
                self.send(frame, true).await;
                return;
            }
            first = false;
            let body = serde_json::to_string(&response).unwrap_or_else(|_| "{}".into());
            if !self.send(format!("{head}{body}}}"), false).await {
                return;
            }
        }
        self.send(complete_frame(&self.id), true).await;
    }

    /// A `sessionEvents` subscription on the fast path, as the stream of its
    /// frames; `None` when it declines (a validation error, an unknown
    /// session), leaving the report to `execute`.
    async fn session_events(&self, plan: Plan) -> Option<Frames> {
        let probe = Arc::new(Mutex::new(None));
        let synthetic = Arc::new(SessionEvent::new(
            0,
            uuid::Uuid::nil(),
            Utc::now(),
            None,
            None,
            EventKind::ResyncRequired {
                reason: String::new(),
            },
        ));
        let checked = render(
            &self.schema,
            &plan,
            synthetic,
            Some(probe.clone()),
            self.caller.as_ref(),
        )
        .await;
        let args = *probe.lock();
        let (Some((session_id, since)), true) = (args, checked.errors.is_empty()) else {
            return None;
        };
        let hub = self.schema.data::<Arc<crate::session::Hub>>()?;
        let client = ClientInfo {
            id: self.client.id.clone(),
            name: self.client.name.clone(),
            connected_at: self.client.connected_at,
            user_id: self.caller.as_ref().map(|c| c.0.id.clone()),
        };
        // Watched from before the subscription starts, so a revocation in
        // between is not missed.
        let lost: futures_util::future::BoxFuture<'static, ()> =
            match (&self.caller, hub.find_session(session_id)) {
                (Some(caller), Some(session)) => {
                    Box::pin(hub.access_lost(&session, caller.0.id.clone()))
                }
                _ => Box::pin(std::future::pending()),
            };
        let events = hub.subscribe(session_id, since, Some(client)).await.ok()?;
        crate::metrics::count_operation(
            "subscription",
            plan.request.operation_name.as_deref(),
            true,
        );
        let active = crate::metrics::GaugeGuard::new(crate::metrics::names::SUBSCRIPTIONS);
        // Every frame of this subscription starts the same way: build that once.
        let head = frame_head(&self.id, self.next_type());
        let complete = complete_frame(&self.id);
        let schema = self.schema.clone();
        let frames = async_stream::stream! {
            let _active = active;
            let mut events = std::pin::pin!(events);
            let mut lost = lost;
            loop {
                let event = tokio::select! {
                    biased;
                    _ = &mut lost => {
                        // Removed from the project: the stream ends with FORBIDDEN.
                        let error = async_graphql::Response::from_errors(vec![
                            crate::api::access::revoked().into_server_error(async_graphql::Pos::default()),
                        ]);
                        let body = serde_json::to_string(&error).unwrap_or_else(|_| "{}".into());
                        yield Frame { text: format!("{head}{body}}}"), last: false };
                        break;
                    }
                    event = events.next() => match event {
                        Some(event) => event,
                        None => break,
                    },
                };
                let text = match event.rendered_now(&plan.key) {
                    Some(rendered) => frame(&head, rendered),
                    None => {
                        let rendered = event
                            .rendered(&plan.key, || async {
                                let response = render(&schema, &plan, event.clone(), None, None).await;
                                Arc::from(serde_json::to_string(&response).unwrap_or_else(|_| "{}".into()))
                            })
                            .await;
                        frame(&head, &rendered)
                    }
                };
                yield Frame { text, last: false };
            }
            yield Frame { text: complete, last: true };
        };
        Some(Box::pin(frames))
    }
}

/// Which of a connection's rarely woken branches is ready.
enum Rare {
    Incoming(Option<Result<Message, axum::Error>>),
    /// Frames were taken from the queue into the batch.
    Queue,
    Ping,
    Shutdown,
}

/// How a connection ends.
enum End {
    /// The peer closed or the socket failed: nothing more to say.
    Gone,
    /// A write did not finish within the timeout: the peer does not read.
    Stalled,
    /// Close with this code and reason.
    Close(u16, String),
}

/// Whether a read error is a message over the configured size.
fn too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// A close reason fits a control frame (123 bytes).
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Serves one websocket connection until it closes, stops reading or answering pings, or the server shuts down.
pub async fn serve(socket: WebSocket, state: AppState, protocol: WebSocketProtocols) {
    let _open = crate::metrics::GaugeGuard::new(crate::metrics::names::WEBSOCKETS);
    let legacy = matches!(protocol, WebSocketProtocols::SubscriptionsTransportWS);
    // Not split: both halves are used by this task only, and a split puts a
    // lock (and the sink's one-frame slot) in front of every read and write.
    let mut socket = socket;
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(state.ws_queue.max(1));
    let limit = state
        .schema
        .data::<ApiLimits>()
        .map_or(usize::MAX, |l| l.max_subscriptions_per_connection);
    let timeout = state.ws_timeout;
    let mut ops = Ops::default();
    let mut client: Option<ConnClient> = None;
    let mut caller: Option<Caller> = None;
    // Held while the connection lives: the user's share of --max-connections-per-user.
    let mut _user_slot: Option<crate::ws::UserSlot> = None;
    // Armed at connection_init with the token's expiry: the connection closes then.
    let expiry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(expiry);
    let mut last_seen = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + state.ws_ping_interval,
        state.ws_ping_interval,
    );
    let init_deadline = tokio::time::sleep(state.ws_init_timeout);
    tokio::pin!(init_deadline);
    let mut shutdown = state.shutdown.clone();
    // Made once: a fresh one per wake-up would register and drop a waiter every time.
    let shutdown = stopped(&mut shutdown);
    tokio::pin!(shutdown);
    let mut batch: Vec<Out> = Vec::with_capacity(MAX_BURST);
    // The branches that wake rarely (the socket's read side, the queue, the
    // ping timer, shutdown) are polled, together, only when one of them woke
    // (see `gate`): during a fan-out the connection wakes for its
    // subscriptions, and one gate is one cache line to look at, not four.
    let rare_gate = Gate::new();
    let mut turn: usize = 0;
    // Looked up once per connection, not once per delivered event.
    let delivered = metrics::counter!(crate::metrics::names::EVENTS_DELIVERED);
    let end = loop {
        tokio::select! {
            rare = std::future::poll_fn(|cx| rare_gate.poll(cx, |cx| {
                // Each from a different one first, so none starves the others.
                turn = turn.wrapping_add(1);
                for i in 0..4 {
                    let polled = match (turn + i) % 4 {
                        0 => socket.poll_next_unpin(cx).map(Rare::Incoming),
                        1 => out_rx.poll_recv_many(cx, &mut batch, MAX_BURST).map(|_| Rare::Queue),
                        2 => ping.poll_tick(cx).map(|_| Rare::Ping),
                        _ => std::future::Future::poll(shutdown.as_mut(), cx).map(|()| Rare::Shutdown),
                    };
                    if polled.is_ready() {
                        return polled;
                    }
                }
                std::task::Poll::Pending
            })) => match rare {
                Rare::Incoming(incoming) => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                        Some(Ok(Message::Binary(b))) => match String::from_utf8(b.to_vec()) {
                            Ok(t) => t,
                            Err(_) => break End::Close(4400, "Invalid message received: binary data that is not UTF-8".into()),
                        },
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                            last_seen = Instant::now();
                            continue;
                        }
                        Some(Ok(Message::Close(_))) | None => break End::Gone,
                        Some(Err(e)) => break if too_big(e) {
                            End::Close(1009, format!("a message is larger than the limit of {} bytes", state.max_body_bytes))
                        } else {
                            End::Gone
                        },
                    };
                    last_seen = Instant::now();
                    let reply = match parse(&text, legacy) {
                        Err(reason) => break End::Close(4400, reason),
                        Ok(Incoming::Init(payload)) => {
                            if client.is_some() {
                                break End::Close(4429, "Too many initialisation requests".into());
                            }
                            let mut c = match connection_client(payload.as_ref()) {
                                Ok(c) => c,
                                Err(reason) => break End::Close(4403, format!("Forbidden: {reason}")),
                            };
                            if let Some(verifier) = &state.verifier {
                                let user = match connection_caller(verifier, payload.as_ref()) {
                                    Ok(user) => user,
                                    Err(e) => break End::Close(4403, close_reason(&format!("Forbidden: {e}"))),
                                };
                                let Some(slot) = state.user_connections.take(&user.0.id) else {
                                    break End::Close(4429, close_reason(&format!(
                                        "Too many connections: the limit max-connections-per-user is {}",
                                        state.user_connections.limit
                                    )));
                                };
                                _user_slot = Some(slot);
                                // The display name is the token's, never the payload's.
                                c.name = user.0.name.clone();
                                let deadline = Instant::now() + user.0.remaining(verifier.leeway_secs());
                                expiry.as_mut().reset(deadline);
                                caller = Some(user);
                            }
                            client = Some(c);
                            let mut frames = vec![r#"{"type":"connection_ack"}"#.to_string()];
                            if legacy {
                                // The legacy protocol's keep-alive starts right after the ack.
                                frames.push(r#"{"type":"ka"}"#.to_string());
                            }
                            frames
                        }
                        Ok(Incoming::Ping(payload)) => vec![match payload {
                            Some(p) => serde_json::json!({ "type": "pong", "payload": p }).to_string(),
                            None => r#"{"type":"pong"}"#.to_string(),
                        }],
                        Ok(Incoming::Pong) => Vec::new(),
                        Ok(Incoming::Subscribe { id, payload }) => {
                            let Some(c) = &client else {
                                break End::Close(4401, "Unauthorized".into());
                            };
                            if ops.by_id.contains_key(&id) {
                                break End::Close(4409, close_reason(&format!("Subscriber for {id} already exists")));
                            }
                            if ops.by_id.len() >= limit.saturating_add(MAX_EXTRA_OPERATIONS) {
                                let error = serde_json::json!([{
                                    "message": format!(
                                        "this connection already has {} operations in flight (the limit is {} subscriptions plus {MAX_EXTRA_OPERATIONS})",
                                        ops.by_id.len(), limit
                                    ),
                                    "extensions": { "code": "LIMIT_EXCEEDED" },
                                }]);
                                vec![format!("{}{error}}}", frame_head(&id, "error"))]
                            } else {
                            // The slot is taken here, in message order, so of two
                            // subscriptions the later one is the one refused.
                            let fast = plan(&payload).and_then(|p| Some((p, Slot::take(&c.subscriptions, limit)?)));
                            let slot = fast.as_ref().map(|(_, s)| s.clone());
                            let serial = ops.serial();
                            let op = Op {
                                schema: state.schema.clone(),
                                client: c.clone(),
                                caller: caller.clone(),
                                out: out_tx.clone(),
                                serial,
                                id: id.clone(),
                                legacy,
                            };
                            let task = tokio::spawn(op.run(payload, fast));
                            ops.insert(id, Running { serial, task, _slot: slot });
                            Vec::new()
                            }
                        }
                        Ok(Incoming::Complete { id }) => {
                            if ops.stop(&id) {
                                // An acknowledgement that the operation ended and
                                // its slot is free (async-graphql did the same);
                                // frames it had queued are dropped, not written.
                                vec![complete_frame(&id)]
                            } else {
                                Vec::new()
                            }
                        }
                        Ok(Incoming::Terminate) => break End::Close(1000, "connection_terminate".into()),
                    };
                    if !reply.is_empty() {
                        let frames = reply.into_iter().map(|t| Message::Text(t.into()));
                        match tokio::time::timeout(timeout, write_all(&mut socket, frames)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(())) => break End::Gone,
                            Err(_) => break End::Stalled,
                        }
                    }
                }
                Rare::Queue => {
                    match timed(timeout, write_batch(&mut socket, &mut batch, &mut ops)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(())) => break End::Gone,
                        Err(_) => break End::Stalled,
                    }
                }
                Rare::Ping => {
                    if last_seen.elapsed() > timeout {
                        break End::Close(1001, "ping timeout".into());
                    }
                    let mut frames = vec![Message::Ping(Bytes::from_static(b"talus"))];
                    if legacy && client.is_some() {
                        frames.push(Message::Text(r#"{"type":"ka"}"#.into()));
                    }
                    match tokio::time::timeout(timeout, write_all(&mut socket, frames.into_iter())).await {
                        Ok(Ok(())) => {}
                        Ok(Err(())) => break End::Gone,
                        Err(_) => break End::Stalled,
                    }
                }
                Rare::Shutdown => {
                    // Subscriptions end on their own (the hub stops them); let their
                    // last messages go out before closing.
                    let deadline = tokio::time::sleep(Duration::from_millis(200));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = out_rx.recv_many(&mut batch, MAX_BURST) => {
                                let written = tokio::time::timeout(timeout, write_batch(&mut socket, &mut batch, &mut ops)).await;
                                if !matches!(written, Ok(Ok(()))) {
                                    break;
                                }
                            }
                            Some(first) = ops.events.next(), if !ops.events.is_empty() => {
                                take_events(first, &mut ops, &mut batch, &delivered).await;
                                let written = tokio::time::timeout(timeout, write_batch(&mut socket, &mut batch, &mut ops)).await;
                                if !matches!(written, Ok(Ok(()))) {
                                    break;
                                }
                            }
                            _ = &mut deadline => break,
                        }
                        if ops.by_id.is_empty() {
                            break;
                        }
                    }
                    break End::Close(1001, "server shutting down".into());
                }
            },
            Some(first) = ops.events.next(), if !ops.events.is_empty() => {
                take_events(first, &mut ops, &mut batch, &delivered).await;
                match timed(timeout, write_batch(&mut socket, &mut batch, &mut ops)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(())) => break End::Gone,
                    Err(_) => break End::Stalled,
                }
            }
            _ = &mut expiry, if caller.is_some() => {
                break End::Close(4403, "Forbidden: the token expired; reconnect with a new one".into());
            }
            _ = &mut init_deadline, if client.is_none() => {
                break End::Close(4408, "Connection initialisation timeout".into());
            }
        }
    };
    // Ends every operation: their streams drop, and with them the client's presence.
    drop(ops);
    drop(out_rx);
    match end {
        End::Gone => {}
        End::Stalled => {
            tracing::info!(
                timeout_s = timeout.as_secs_f64(),
                "dropping a websocket that stopped reading"
            );
        }
        End::Close(code, reason) => {
            if code == 1001 && reason == "ping timeout" {
                tracing::info!("dropping a websocket that stopped answering pings");
            }
            if legacy && code >= 4000 {
                // The legacy protocol has no close codes of its own: say why first.
                let error = serde_json::json!({ "type": "connection_error", "payload": { "message": reason } });
                let frame = std::iter::once(Message::Text(error.to_string().into()));
                let _ =
                    tokio::time::timeout(timeout.min(CLOSE_LINGER), write_all(&mut socket, frame))
                        .await;
            }
            close(&mut socket, code, reason, timeout).await;
        }
    }
}

/// Sends the close frame and waits briefly for the peer's, so the frame is
/// read before the TCP connection goes (closing a socket with unread input
/// resets it, and the peer may then never see the close code).
async fn close<W>(socket: &mut W, code: u16, reason: String, timeout: Duration)
where
    W: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, axum::Error>>
        + Unpin,
{
    let linger = timeout.min(CLOSE_LINGER);
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: close_reason(&reason).into(),
    }));
    if !matches!(
        tokio::time::timeout(linger, socket.send(frame)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _ = tokio::time::timeout(linger, async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Writes `frames` with one flush.
async fn write_all<S>(sink: &mut S, frames: impl Iterator<Item = Message>) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    for frame in frames {
        sink.feed(frame).await.map_err(|_| ())?;
    }
    sink.flush().await.map_err(|_| ())
}

/// Adds `first` and the frames the connection's subscriptions have ready
/// after it (up to `MAX_BURST` in the batch) to `batch`, without waiting.
async fn take_events(
    first: (u64, Frame),
    ops: &mut Ops,
    batch: &mut Vec<Out>,
    delivered: &metrics::Counter,
) {
    let mut events = 0;
    let mut take = |batch: &mut Vec<Out>, (op, frame): (u64, Frame)| {
        events += u64::from(!frame.last);
        batch.push(Out {
            op,
            what: Outgoing::Frame(frame),
        });
    };
    take(batch, first);
    std::future::poll_fn(|cx| {
        while batch.len() < MAX_BURST {
            match ops.events.poll_next_unpin(cx) {
                std::task::Poll::Ready(Some(next)) => take(batch, next),
                _ => break,
            }
        }
        std::task::Poll::Ready(())
    })
    .await;
    delivered.increment(events);
}

/// Writes the queued frames of operations that are still active, with one
/// flush; a subscription's stream of frames joins the connection's.
async fn write_batch<S>(sink: &mut S, batch: &mut Vec<Out>, ops: &mut Ops) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    for out in batch.drain(..) {
        if !ops.is_live(out.op) {
            // The client completed it: nothing more of it is sent (a
            // subscription's stream is dropped, which ends it).
            continue;
        }
        match out.what {
            Outgoing::Events(frames) => {
                ops.events.insert(out.op, frames);
            }
            Outgoing::Frame(frame) => {
                if frame.last {
                    ops.finished(out.op);
                }
                sink.feed(Message::Text(frame.text.into()))
                    .await
                    .map_err(|_| ())?;
            }
        }
    }
    sink.flush().await.map_err(|_| ())
}

/// `tokio::time::timeout`, with the timer made only if `work` does not
/// finish in its first poll (a write to a socket with room, nearly always):
/// a timer per delivery cost a clock read and a runtime handle's reference
/// count, shared by every connection.
async fn timed<F: std::future::Future>(
    limit: Duration,
    work: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut work = std::pin::pin!(work);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(done) = first {
        return Ok(done);
    }
    tokio::time::timeout(limit, work).await
}

/// Resolves once the flag is set (holding no borrow across awaits).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await.map(|_| ());
}
