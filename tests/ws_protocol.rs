//! graphql-transport-ws as enisdenjo/graphql-ws PROTOCOL.md states it, the legacy keep-alive,
//! the websocket message size limit and the Origin check, each through a raw websocket.

mod common;

use std::time::Duration;

use common::App;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The websocket message limit the conformance server runs with (= its body limit).
const LIMIT: usize = 64 * 1024;

/// A server with short websocket timers, so the timer rules are seen within a test.
async fn server() -> App {
    App::start_with(|c| {
        c.in_memory = true;
        c.max_body_bytes = LIMIT;
        c.ws_init_timeout = Duration::from_millis(300);
        c.ws_ping_interval = Duration::from_millis(150);
        c.ws_timeout = Duration::from_secs(5);
    })
    .await
}

async fn open(app: &App, subprotocol: &str) -> Socket {
    let mut request = app.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", subprotocol.parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the handshake succeeds");
    socket
}

/// What a client sends in one step of a case.
enum Send {
    Json(Value),
    Text(&'static str),
    /// A text message in fragments: the first frame, then continuations.
    Fragments(usize, usize),
}

/// What the server answers: messages (by type, `ping`/`pong` frames of the
/// websocket itself left out) and, if it closes, the close code.
#[derive(Debug, PartialEq)]
struct Answer {
    types: Vec<String>,
    close: Option<u16>,
}

fn init() -> Send {
    Send::Json(json!({ "type": "connection_init", "payload": { "name": "Conformance" } }))
}

fn subscribe(id: &str, query: &str) -> Send {
    Send::Json(json!({ "id": id, "type": "subscribe", "payload": { "query": query } }))
}

/// Runs the steps, then reads until the server closes; or, when `expect_open`
/// messages are expected and no close, reads those, sends a marker ping and
/// reads until its pong (so whatever the server sent after them shows too).
async fn run(
    app: &App,
    subprotocol: &str,
    steps: Vec<Send>,
    expect_open: Option<usize>,
) -> (Answer, Vec<Value>) {
    let mut socket = open(app, subprotocol).await;
    for step in steps {
        let sent = match step {
            Send::Json(v) => socket.send(Message::Text(v.to_string().into())).await,
            Send::Text(t) => socket.send(Message::Text(t.into())).await,
            Send::Fragments(size, count) => {
                let chunk = "x".repeat(size);
                let mut result = Ok(());
                for i in 0..count {
                    let opcode = if i == 0 {
                        OpCode::Data(Data::Text)
                    } else {
                        OpCode::Data(Data::Continue)
                    };
                    let frame = Frame::message(chunk.clone(), opcode, i + 1 == count);
                    result = socket.send(Message::Frame(frame)).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if sent.is_err() {
            // The server may already have closed; what it said is read below.
            break;
        }
    }
    let mut answer = Answer {
        types: Vec::new(),
        close: None,
    };
    let mut messages = Vec::new();
    loop {
        let frame = tokio::time::timeout(common::TIMEOUT, socket.next())
            .await
            .expect("the server answers within the timeout");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(text.as_str()).expect("JSON");
                let kind = message["type"].as_str().unwrap_or("?").to_string();
                let is_marker = kind == "pong" && message["payload"]["marker"] == true;
                answer.types.push(kind);
                messages.push(message);
                if is_marker {
                    break;
                }
                if Some(messages.len()) == expect_open {
                    let ping = json!({ "type": "ping", "payload": { "marker": true } });
                    socket
                        .send(Message::Text(ping.to_string().into()))
                        .await
                        .expect("the connection is open");
                }
            }
            Some(Ok(Message::Close(frame))) => {
                answer.close = Some(frame.map_or(1005, |f| u16::from(f.code)));
                break;
            }
            Some(Ok(_)) => {}
            // A connection dropped without a close frame, as the issue saw it (1006).
            Some(Err(_)) | None => {
                answer.close = Some(1006);
                break;
            }
        }
    }
    (answer, messages)
}

fn answer(types: &[&str], close: Option<u16>) -> Answer {
    Answer {
        types: types.iter().map(|t| t.to_string()).collect(),
        close,
    }
}

#[tokio::test]
async fn every_rule_of_graphql_transport_ws_is_kept() {
    let app = server().await;
    let (session, _) = app.create_project("restomod", "Conformance").await;
    let events = format!("subscription {{ sessionEvents(sessionId: \"{session}\") {{ seq }} }}");
    let ws = "graphql-transport-ws";
    let cases: Vec<(&str, Vec<Send>, Answer)> = vec![
        (
            "invalid JSON is a bad message",
            vec![init(), Send::Text("{not json")],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a message that is not an object is a bad message",
            vec![Send::Text("[1, 2]")],
            answer(&[], Some(4400)),
        ),
        (
            "an unknown type is a bad message",
            vec![init(), Send::Json(json!({ "type": "hello" }))],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a server's message type from the client is a bad message",
            vec![init(), Send::Json(json!({ "id": "1", "type": "next", "payload": {} }))],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a subscribe without id is a bad message",
            vec![
                init(),
                Send::Json(json!({ "type": "subscribe", "payload": { "query": "{ __typename }" } })),
            ],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a subscribe with an empty id is a bad message",
            vec![init(), subscribe("", "{ __typename }")],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a subscribe whose payload is not an object is a bad message",
            vec![init(), Send::Json(json!({ "id": "1", "type": "subscribe", "payload": "q" }))],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a subscribe without a query string is a bad message",
            vec![init(), Send::Json(json!({ "id": "1", "type": "subscribe", "payload": { "query": 7 } }))],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "variables that are not an object are a bad message",
            vec![
                init(),
                Send::Json(json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ __typename }", "variables": [1] } })),
            ],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a connection_init payload that is not an object is a bad message",
            vec![Send::Json(json!({ "type": "connection_init", "payload": "token" }))],
            answer(&[], Some(4400)),
        ),
        (
            "a complete without id is a bad message",
            vec![init(), Send::Json(json!({ "type": "complete" }))],
            answer(&["connection_ack"], Some(4400)),
        ),
        (
            "a subscribe before connection_ack is unauthorized",
            vec![subscribe("1", "{ __typename }")],
            answer(&[], Some(4401)),
        ),
        (
            "a connection_init with a clientId that is not a string is refused",
            vec![Send::Json(json!({ "type": "connection_init", "payload": { "clientId": 42 } }))],
            answer(&[], Some(4403)),
        ),
        (
            "a connection_init with an over-long clientId is refused",
            vec![Send::Json(json!({ "type": "connection_init", "payload": { "clientId": "c".repeat(201) } }))],
            answer(&[], Some(4403)),
        ),
        (
            "no connection_init within the init timeout closes with 4408",
            vec![],
            answer(&[], Some(4408)),
        ),
        (
            "a ping before connection_init does not count as one",
            vec![Send::Json(json!({ "type": "ping" }))],
            answer(&["pong"], Some(4408)),
        ),
        (
            "a second connection_init closes with 4429",
            vec![init(), init()],
            answer(&["connection_ack"], Some(4429)),
        ),
        (
            "a duplicate id of an active subscription closes with 4409",
            vec![init(), subscribe("s", &events), subscribe("s", &events)],
            answer(&["connection_ack"], Some(4409)),
        ),
        (
            "a ping is answered with a pong carrying its payload",
            vec![Send::Json(json!({ "type": "ping", "payload": { "n": 1 } }))],
            answer(&["pong"], None),
        ),
        (
            "a pong from the client is accepted and not answered",
            vec![init(), Send::Json(json!({ "type": "pong" }))],
            answer(&["connection_ack"], None),
        ),
        (
            "a query gets next and complete",
            vec![init(), subscribe("q", "{ __typename }")],
            answer(&["connection_ack", "next", "complete"], None),
        ),
        (
            "a query that fails validation gets error and no complete",
            vec![init(), subscribe("v", "{ noSuchField }")],
            answer(&["connection_ack", "error"], None),
        ),
        (
            "a subscription that fails validation gets error and no complete",
            vec![
                init(),
                subscribe("v", &format!("subscription {{ sessionEvents(sessionId: \"{session}\") {{ noSuchField }} }}")),
            ],
            answer(&["connection_ack", "error"], None),
        ),
        (
            "a document that does not parse gets error and no complete",
            vec![init(), subscribe("p", "subscription {")],
            answer(&["connection_ack", "error"], None),
        ),
        (
            "a complete for an unknown id is ignored",
            vec![init(), Send::Json(json!({ "id": "nope", "type": "complete" }))],
            answer(&["connection_ack"], None),
        ),
        (
            "a message over the body limit closes with 1009",
            vec![init(), Send::Text(Box::leak("y".repeat(LIMIT + 1).into_boxed_str()))],
            answer(&["connection_ack"], Some(1009)),
        ),
        (
            "a message over the body limit in small fragments closes with 1009",
            vec![init(), Send::Fragments(8 * 1024, LIMIT / (8 * 1024) + 2)],
            answer(&["connection_ack"], Some(1009)),
        ),
    ];
    for (name, steps, expected) in cases {
        let open = expected.close.is_none().then_some(expected.types.len());
        let (mut got, messages) = run(&app, ws, steps, open).await;
        if open.is_some() {
            assert_eq!(
                got.types.pop().as_deref(),
                Some("pong"),
                "{name}: the marker's pong ends it"
            );
        }
        // Events of an accepted subscription may come before the close.
        if name.contains("4409") {
            got.types.retain(|t| t != "next");
        }
        assert_eq!(got, expected, "{name}: {messages:?}");
        if name.contains("validation") || name.contains("parse") {
            let error = messages.iter().find(|m| m["type"] == "error").unwrap();
            let first = &error["payload"][0];
            assert!(
                first["message"].is_string(),
                "{name}: the payload is a list of GraphQL errors: {error}"
            );
            assert_eq!(first["extensions"]["code"], "BAD_USER_INPUT", "{name}");
        }
        if name.starts_with("a ping is answered") {
            assert_eq!(messages[0]["payload"], json!({ "n": 1 }));
        }
    }
    // Every connection is closed: the subscriptions of the 4409 case left the session.
    assert_eq!(app.session(&session).await["activeClients"], 0);
}

#[tokio::test]
async fn the_id_of_an_operation_is_free_again_once_its_complete_was_sent() {
    let app = server().await;
    let mut socket = open(&app, "graphql-transport-ws").await;
    let init = json!({ "type": "connection_init" });
    socket
        .send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    let query = json!({ "id": "q", "type": "subscribe", "payload": { "query": "{ __typename }" } });
    socket
        .send(Message::Text(query.to_string().into()))
        .await
        .unwrap();
    let mut types = Vec::new();
    while types.len() < 5 {
        let frame = tokio::time::timeout(common::TIMEOUT, socket.next())
            .await
            .expect("an answer within the timeout");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                let kind = message["type"].as_str().unwrap().to_string();
                // Once `complete` arrived the id is free: subscribing again with it is fine.
                if kind == "complete" && types.len() == 2 {
                    socket
                        .send(Message::Text(query.to_string().into()))
                        .await
                        .unwrap();
                }
                types.push(kind);
            }
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?} after {types:?}"),
            Some(Ok(_)) => {}
            other => panic!("{other:?} after {types:?}"),
        }
    }
    assert_eq!(
        types,
        ["connection_ack", "next", "complete", "next", "complete"]
    );
}

#[tokio::test]
async fn completing_a_session_events_subscription_ends_it_at_once_and_its_id_can_subscribe_again() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Again").await;
    let mut watcher = app.subscribe(&session).await;
    let mut ws = app.ws_as("again", "Again").await;
    ws.subscribe_events("e", &session, None).await;
    ws.wait_joined("e").await;
    let joined = watcher.event().await;
    assert_eq!(joined["__typename"], "ClientJoined", "{joined}");

    // The connection polls the subscription itself: a complete drops it there.
    ws.send(json!({ "id": "e", "type": "complete" })).await;
    ws.expect_complete("e").await;
    let left = watcher.event().await;
    assert_eq!(left["__typename"], "ClientLeft", "{left}");
    assert_eq!(left["client"]["clientId"], "again");

    // The same id subscribes again and gets each event of a change once, in order.
    ws.subscribe_events("e", &session, None).await;
    ws.wait_joined("e").await;
    app.update_property(&session, &root, "vin", json!("again"))
        .await;
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(ws.next_event("e").await);
    }
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["__typename"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        types,
        ["CommandExecuting", "PropertyChanged", "CommandExecuted"]
    );
    common::assert_consecutive(&events, common::int_of(&events[0]["seq"]));
}

#[tokio::test]
async fn the_legacy_subprotocol_sends_ka_after_the_ack_and_then_periodically() {
    let app = server().await;
    let mut socket = open(&app, "graphql-ws").await;
    socket
        .send(Message::Text(
            json!({ "type": "connection_init", "payload": {} })
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let mut types = Vec::new();
    // The ack, the first ka at once, then one per ping interval (150 ms here).
    while types.len() < 4 {
        let frame = tokio::time::timeout(common::TIMEOUT, socket.next())
            .await
            .expect("a message within the timeout");
        if let Some(Ok(Message::Text(text))) = frame {
            let message: Value = serde_json::from_str(text.as_str()).unwrap();
            types.push(message["type"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(types, ["connection_ack", "ka", "ka", "ka"]);
}

#[tokio::test]
async fn the_legacy_subprotocol_closes_on_a_bad_message_after_saying_why() {
    let app = server().await;
    let (got, messages) = run(&app, "graphql-ws", vec![Send::Text("{not json")], None).await;
    assert_eq!(got, answer(&["connection_error"], Some(4400)));
    assert!(messages[0]["payload"]["message"].is_string());
}

/// The status of a websocket handshake to `/graphql` with these headers.
async fn handshake(app: &App, headers: &[(&str, &str)]) -> u16 {
    let mut request = app.ws_url().into_client_request().unwrap();
    for (name, value) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse().unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn websocket_upgrades_from_foreign_origins_are_refused() {
    let app = App::start_with(|c| {
        c.in_memory = true;
        c.cors_origins = vec!["https://app.example.com".parse().unwrap()];
    })
    .await;
    let own = format!("http://{}", app.addr);
    let ws = ("sec-websocket-protocol", "graphql-transport-ws");
    let cases = [
        ("no Origin (a program, not a page)", vec![ws], 101),
        (
            "the server's own origin",
            vec![ws, ("origin", own.as_str())],
            101,
        ),
        (
            "an origin from --cors-origins",
            vec![ws, ("origin", "https://app.example.com")],
            101,
        ),
        (
            "a local dev server while listening on loopback",
            vec![ws, ("origin", "http://localhost:5173")],
            101,
        ),
        (
            "127.0.0.1 on another port while listening on loopback",
            vec![ws, ("origin", "http://127.0.0.1:3000")],
            101,
        ),
        (
            "a foreign page",
            vec![ws, ("origin", "https://evil.example")],
            403,
        ),
        ("an opaque origin", vec![ws, ("origin", "null")], 403),
        (
            "a subdomain of an allowed origin",
            vec![ws, ("origin", "https://x.app.example.com")],
            403,
        ),
        (
            "an unsupported subprotocol",
            vec![("sec-websocket-protocol", "chat")],
            400,
        ),
        (
            "a page whose own name was rebound to 127.0.0.1 (DNS rebinding)",
            vec![
                ws,
                ("host", "evil.example"),
                ("origin", "http://evil.example"),
            ],
            403,
        ),
    ];
    for (name, headers, status) in cases {
        assert_eq!(handshake(&app, &headers).await, status, "{name}");
    }
}
