//! The websocket transport of `/graphql`: graphql-transport-ws and the legacy graphql-ws, server pings, and
//! session-event subscriptions rendered once per event and selection, shared by every subscriber.
//!
//! async-graphql's protocol engine serves everything (connection_init, queries,
//! mutations, other subscriptions, errors), except one case this module takes
//! over because it dominates fan-out: a `sessionEvents` subscription that
//! passes validation. For those, each event is executed against the
//! subscription's selection once (through the same resolver, see
//! `api::RenderOne`) and the JSON is memoised on the event, so a thousand
//! subscribers with the same selection cost one execution and a thousand
//! socket writes.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::http::{WebSocketProtocols, WsMessage};
use async_graphql::parser::types::{OperationType, Selection};
use async_graphql::{Data, Request, Response, Variables};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chrono::Utc;
use futures_util::{FutureExt, SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{ApiLimits, AppSchema, ConnClient, Probe, RenderOne};
use crate::http::AppState;
use crate::session::{ClientInfo, EventKind, SessionEvent};

/// Most frames written before one flush.
const MAX_BURST: usize = 64;

/// Identity of a websocket client from its `connection_init` payload (`clientId`, `name`), else generated.
pub fn connection_client(payload: &Value) -> ConnClient {
    let text = |key: &str| {
        payload
            .get(key)
            .and_then(|v| v.as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s.len() <= 200)
    };
    ConnClient {
        id: text("clientId").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name: text("name"),
        connected_at: Utc::now(),
        subscriptions: Arc::new(AtomicUsize::new(0)),
    }
}

/// A `sessionEvents` subscription request, ready to render events.
struct Plan {
    query: String,
    operation_name: Option<String>,
    variables: Variables,
    /// Identifies the selection: the query, operation and variables other than the field's own arguments.
    key: u64,
}

/// Recognises a subscription whose only root field is `sessionEvents`.
fn plan(payload: &Value) -> Option<Plan> {
    // Automatic Persisted Queries (register, look up, hash check) run in the
    // engine's extensions, so such a subscription is left to the engine.
    if payload.pointer("/extensions/persistedQuery").is_some() {
        return None;
    }
    let query = payload.get("query")?.as_str()?;
    let operation_name = payload
        .get("operationName")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let doc = async_graphql::parser::parse_query(query).ok()?;
    let mut ops = doc.operations.iter();
    let op = match &operation_name {
        Some(name) => {
            ops.find(|(n, _)| n.map(|n| n.as_str()) == Some(name.as_str()))?
                .1
        }
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
    let variables = match payload.get("variables") {
        Some(v) if !v.is_null() => Variables::from_json(v.clone()),
        _ => Variables::default(),
    };
    // The arguments choose the session and where to start, not what an event renders as.
    let mut shape = variables.clone();
    for (_, value) in &field.node.arguments {
        // A variable argument prints as `$name`.
        if let Some(name) = value.node.to_string().strip_prefix('$') {
            shape.remove(&async_graphql::Name::new(name));
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    query.hash(&mut hasher);
    operation_name.hash(&mut hasher);
    serde_json::to_string(&shape)
        .unwrap_or_default()
        .hash(&mut hasher);
    Some(Plan {
        query: query.to_string(),
        operation_name,
        variables,
        key: hasher.finish(),
    })
}

/// Executes the plan's selection on one event; with a probe, also learns the arguments.
async fn render(
    schema: &AppSchema,
    plan: &Plan,
    event: Arc<SessionEvent>,
    probe: Option<Probe>,
) -> Response {
    let mut request = Request::new(plan.query.clone()).variables(plan.variables.clone());
    if let Some(name) = &plan.operation_name {
        request = request.operation_name(name.clone());
    }
    let request = request.data(RenderOne { event, probe });
    schema
        .execute_stream(request)
        .next()
        .await
        .unwrap_or_else(|| {
            Response::from_errors(vec![async_graphql::ServerError::new("no result", None)])
        })
}

/// The frame that ends subscription `id`.
fn complete_frame(id: &str) -> String {
    format!(r#"{{"id":{},"type":"complete"}}"#, json_string(id))
}

/// A frame with a payload up to the payload itself: `{"id":..,"type":..,"payload":`.
fn frame_head(id: &str, kind: &str) -> String {
    format!(r#"{{"id":{},"type":"{kind}","payload":"#, json_string(id))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// What a subscription task needs from its connection.
#[derive(Clone)]
struct Link {
    schema: AppSchema,
    client: ClientInfo,
    open: Arc<AtomicUsize>,
    /// Frames for the connection to write, each batch with one flush.
    out: mpsc::UnboundedSender<Vec<String>>,
    engine: mpsc::UnboundedSender<Vec<u8>>,
    legacy: bool,
}

/// Frees a subscription slot of the connection when the task ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one `sessionEvents` subscription; anything unusual goes back to the engine, which reports it.
async fn run(link: Link, id: String, raw: Vec<u8>, plan: Plan) {
    let slot = Slot(link.open.clone());
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
    let checked = render(&link.schema, &plan, synthetic, Some(probe.clone())).await;
    let args = *probe.lock();
    let hub = link.schema.data_unchecked_hub();
    let (Some((session_id, since)), true) = (args, checked.errors.is_empty()) else {
        drop(slot);
        let _ = link.engine.send(raw);
        return;
    };
    let events = match hub
        .subscribe(session_id, since, Some(link.client.clone()))
        .await
    {
        Ok(events) => events,
        Err(_) => {
            drop(slot);
            let _ = link.engine.send(raw);
            return;
        }
    };
    let next = if link.legacy { "data" } else { "next" };
    let schema = &link.schema;
    let plan = &plan;
    let id = id.as_str();
    // Every frame of this subscription starts the same way: build that once.
    let head = frame_head(id, next);
    let head = head.as_str();
    let to_frame = |event: Arc<SessionEvent>| async move {
        let rendered = event
            .rendered(plan.key, || async {
                let response = render(schema, plan, event.clone(), None).await;
                Arc::from(serde_json::to_string(&response).unwrap_or_else(|_| "{}".into()))
            })
            .await;
        let mut frame = String::with_capacity(head.len() + rendered.len() + 1);
        frame.push_str(head);
        frame.push_str(&rendered);
        frame.push('}');
        frame
    };
    crate::metrics::count_operation("subscription", plan.operation_name.as_deref(), true);
    let _active = crate::metrics::GaugeGuard::new(crate::metrics::names::SUBSCRIPTIONS);
    let mut events = std::pin::pin!(events);
    let mut ended = false;
    while let Some(event) = events.next().await {
        // The session broadcasts a committed group at once: take every event
        // already here, so the connection writes them with one flush.
        let mut frames = vec![to_frame(event).await];
        while frames.len() < MAX_BURST {
            match events.next().now_or_never() {
                Some(Some(event)) => frames.push(to_frame(event).await),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        metrics::counter!(crate::metrics::names::EVENTS_DELIVERED).increment(frames.len() as u64);
        if link.out.send(frames).is_err() {
            return;
        }
        if ended {
            break;
        }
    }
    let _ = link.out.send(vec![complete_frame(id)]);
    drop(slot);
}

/// Extension to reach the hub from the schema.
trait SchemaHub {
    fn data_unchecked_hub(&self) -> Arc<crate::session::Hub>;
}

impl SchemaHub for AppSchema {
    fn data_unchecked_hub(&self) -> Arc<crate::session::Hub> {
        self.data::<Arc<crate::session::Hub>>()
            .expect("the schema carries the hub")
            .clone()
    }
}

/// Our own subscriptions on one connection; aborted when the connection ends.
#[derive(Default)]
struct Tasks(HashMap<String, tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, task) in self.0.drain() {
            task.abort();
        }
    }
}

/// Serves one websocket connection until it closes, stops answering pings, or the server shuts down.
pub async fn serve(socket: WebSocket, state: AppState, protocol: WebSocketProtocols) {
    let _open = crate::metrics::GaugeGuard::new(crate::metrics::names::WEBSOCKETS);
    let legacy = matches!(protocol, WebSocketProtocols::SubscriptionsTransportWS);
    let (mut sink, mut stream) = socket.split();
    let (engine_tx, engine_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<String>>();
    let pending_client: Arc<Mutex<Option<ConnClient>>> = Arc::default();
    let init_slot = pending_client.clone();
    let mut engine = async_graphql::http::WebSocket::new(
        state.schema.clone(),
        UnboundedReceiverStream::new(engine_rx),
        protocol,
    )
    .on_connection_init(move |payload| {
        let client = init_slot
            .lock()
            .take()
            .unwrap_or_else(|| connection_client(&payload));
        async move {
            let mut data = Data::default();
            data.insert(client);
            Ok(data)
        }
    });
    let limit = state
        .schema
        .data::<ApiLimits>()
        .map_or(usize::MAX, |l| l.max_subscriptions_per_connection);
    let mut link: Option<Link> = None;
    let mut tasks = Tasks::default();
    let mut last_seen = Instant::now();
    let mut ping = tokio::time::interval(state.ws_ping_interval);
    ping.tick().await;
    let mut shutdown = state.shutdown.clone();
    // Made once: a fresh one per wake-up would register and drop a waiter every time.
    let shutdown = stopped(&mut shutdown);
    tokio::pin!(shutdown);
    let mut pending: Vec<Message> = Vec::new();
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(b))) => {
                        last_seen = Instant::now();
                        let _ = engine_tx.send(b.to_vec());
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_seen = Instant::now();
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                last_seen = Instant::now();
                let raw = text.as_str().as_bytes().to_vec();
                let Ok(message) = serde_json::from_slice::<Value>(&raw) else {
                    let _ = engine_tx.send(raw);
                    continue;
                };
                let kind = message.get("type").and_then(|t| t.as_str()).unwrap_or("");
                let id = message.get("id").and_then(|i| i.as_str()).map(str::to_string);
                match (kind, id) {
                    ("connection_init", _) if link.is_none() => {
                        let client = connection_client(message.get("payload").unwrap_or(&Value::Null));
                        link = Some(Link {
                            schema: state.schema.clone(),
                            client: ClientInfo {
                                id: client.id.clone(),
                                name: client.name.clone(),
                                connected_at: client.connected_at,
                                user_id: None,
                            },
                            open: client.subscriptions.clone(),
                            out: out_tx.clone(),
                            engine: engine_tx.clone(),
                            legacy,
                        });
                        *pending_client.lock() = Some(client);
                        let _ = engine_tx.send(raw);
                    }
                    ("subscribe" | "start", Some(id)) => {
                        let taken = tasks.0.get(&id).is_some_and(|t| !t.is_finished());
                        let planned = match (&link, taken) {
                            (Some(link), false) => message.get("payload").and_then(plan).map(|p| (link.clone(), p)),
                            _ => None,
                        };
                        match planned {
                            Some((link, plan)) if link.open.fetch_add(1, Ordering::Relaxed) < limit => {
                                tasks.0.retain(|_, t| !t.is_finished());
                                tasks.0.insert(id.clone(), tokio::spawn(run(link, id, raw, plan)));
                            }
                            Some((link, _)) => {
                                // Over the limit: the engine reports LIMIT_EXCEEDED.
                                link.open.fetch_sub(1, Ordering::Relaxed);
                                let _ = engine_tx.send(raw);
                            }
                            None => {
                                let _ = engine_tx.send(raw);
                            }
                        }
                    }
                    ("complete" | "stop", Some(id)) if tasks.0.contains_key(&id) => {
                        if let Some(task) = tasks.0.remove(&id) {
                            task.abort();
                        }
                        // As async-graphql's engine does for its own subscriptions.
                        let _ = out_tx.send(vec![complete_frame(&id)]);
                    }
                    _ => {
                        let _ = engine_tx.send(raw);
                    }
                }
            }
            msg = engine.next() => {
                match msg {
                    Some(WsMessage::Text(text)) => pending.push(Message::Text(text.into())),
                    Some(WsMessage::Close(code, reason)) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        break;
                    }
                    None => break,
                }
            }
            Some(frames) = out_rx.recv() => pending.extend(frames.into_iter().map(|f| Message::Text(f.into()))),
            _ = ping.tick() => {
                if last_seen.elapsed() > state.ws_timeout {
                    tracing::info!("dropping a websocket that stopped answering pings");
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "ping timeout".into() }))).await;
                    break;
                }
                pending.push(Message::Ping(Bytes::from_static(b"talus")));
            }
            _ = &mut shutdown => {
                // Subscriptions end on their own (the hub stops them); let their
                // last messages go out before closing.
                let deadline = tokio::time::sleep(Duration::from_millis(200));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        msg = engine.next() => match msg {
                            Some(WsMessage::Text(text)) => pending.push(Message::Text(text.into())),
                            _ => break,
                        },
                        Some(frames) = out_rx.recv() => pending.extend(frames.into_iter().map(|f| Message::Text(f.into()))),
                        _ = &mut deadline => break,
                    }
                }
                pending.push(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() })));
                let _ = write(&mut sink, &mut pending, &mut out_rx).await;
                break;
            }
        }
        if !pending.is_empty() && write(&mut sink, &mut pending, &mut out_rx).await.is_err() {
            break;
        }
        // Engine messages that are already waiting go out in the same burst.
        while pending.len() < MAX_BURST {
            match engine.next().now_or_never() {
                Some(Some(WsMessage::Text(text))) => pending.push(Message::Text(text.into())),
                _ => break,
            }
        }
        if !pending.is_empty() && write(&mut sink, &mut pending, &mut out_rx).await.is_err() {
            break;
        }
    }
}

/// Writes the pending frames and whatever else our subscriptions queued, with one flush.
async fn write<S>(
    sink: &mut S,
    pending: &mut Vec<Message>,
    out_rx: &mut mpsc::UnboundedReceiver<Vec<String>>,
) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut written = 0;
    for message in pending.drain(..) {
        sink.feed(message).await.map_err(|_| ())?;
        written += 1;
    }
    while written < MAX_BURST {
        match out_rx.try_recv() {
            Ok(frames) => {
                for text in frames {
                    sink.feed(Message::Text(text.into()))
                        .await
                        .map_err(|_| ())?;
                    written += 1;
                }
            }
            Err(_) => break,
        }
    }
    sink.flush().await.map_err(|_| ())
}

/// Resolves once the flag is set (holding no borrow across awaits).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await.map(|_| ());
}
