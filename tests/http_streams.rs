//! Subscriptions over plain HTTP: GraphQL over SSE (graphql-sse, distinct
//! connections mode, resumable through `Last-Event-ID`) and Apollo's multipart
//! subscriptions carry the same events, in the same order, as websockets.

mod common;

use std::collections::VecDeque;

use common::*;
use serde_json::{json, Value};

const SSE: &str = "text/event-stream";
const MULTIPART: &str =
    "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0,application/json";

/// One message of a stream: an SSE event (with its id) or a multipart part.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// Reads SSE events or multipart parts from a streamed response.
struct Stream {
    response: reqwest::Response,
    buffer: String,
    ready: VecDeque<Message>,
    multipart: bool,
}

impl Stream {
    /// Sends `request` asking for `accept`, naming itself `client` (none if empty, as an EventSource).
    async fn open(accept: &str, client: &str, request: reqwest::RequestBuilder) -> Stream {
        let mut request = request.header("accept", accept);
        if !client.is_empty() {
            request = request.header("x-client-id", client);
        }
        let response = request.send().await.expect("the stream opens");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let multipart = accept.starts_with("multipart");
        if multipart {
            assert!(
                content_type.starts_with("multipart/mixed")
                    && content_type.contains("subscriptionSpec=1.0"),
                "{content_type}"
            );
        } else {
            assert!(
                content_type.starts_with("text/event-stream"),
                "{content_type}"
            );
        }
        Stream {
            response,
            buffer: String::new(),
            ready: VecDeque::new(),
            multipart,
        }
    }

    async fn post(
        app: &App,
        accept: &str,
        client: &str,
        session: &str,
        since: Option<i64>,
    ) -> Stream {
        let body = json!({ "query": events_subscription(), "variables": { "s": session, "since": since } });
        let request = streaming_client()
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .body(body.to_string());
        Stream::open(accept, client, request).await
    }

    /// The next message, skipping heartbeats.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Some(m);
            }
            let chunk = tokio::time::timeout(TIMEOUT, self.response.chunk())
                .await
                .expect("the stream answers in time")
                .expect("the stream reads")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            if self.multipart {
                self.parse_parts();
            } else {
                self.parse_events();
            }
        }
    }

    fn parse_events(&mut self) {
        while let Some(end) = self.buffer.find("\n\n") {
            let frame: String = self.buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().expect("a numeric id"));
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim_start().to_string();
                }
            }
            if event.is_empty() {
                continue; // a heartbeat comment
            }
            let data = if data.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&data).unwrap()
            };
            self.ready.push_back(Message { id, event, data });
        }
    }

    fn parse_parts(&mut self) {
        const DELIMITER: &str = "\r\n--graphql";
        loop {
            let Some(start) = self.buffer.find(DELIMITER) else {
                return;
            };
            let rest = &self.buffer[start + DELIMITER.len()..];
            if rest.starts_with("--") {
                self.buffer.clear();
                self.ready.push_back(Message {
                    id: None,
                    event: "end".into(),
                    data: Value::Null,
                });
                return;
            }
            // A part is complete when the next delimiter has arrived.
            let Some(next) = rest.find(DELIMITER) else {
                return;
            };
            let part = rest[..next].to_string();
            self.buffer.drain(..start + DELIMITER.len() + next);
            let (head, body) = part
                .split_once("\r\n\r\n")
                .expect("a part has headers and a body");
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{head}"
            );
            let body: Value = serde_json::from_str(body).expect("a JSON part");
            if body == json!({}) {
                continue; // a heartbeat
            }
            self.ready.push_back(Message {
                id: None,
                event: "next".into(),
                data: body,
            });
        }
    }

    /// The next event of a `sessionEvents` stream.
    async fn event(&mut self) -> (Option<i64>, Value) {
        let m = self.next().await.expect("the stream goes on");
        assert_eq!(m.event, "next", "{m:?}");
        let result = if self.multipart {
            m.data["payload"].clone()
        } else {
            m.data
        };
        assert!(result.get("errors").is_none(), "{result:#}");
        (m.id, result["data"]["sessionEvents"].clone())
    }

    /// Events up to and including the first one `done` accepts.
    async fn events_until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let (id, event) = self.event().await;
            if !self.multipart {
                assert_eq!(
                    id,
                    Some(int_of(&event["seq"])),
                    "the SSE id is the event's seq"
                );
            }
            let stop = done(&event);
            out.push(event);
            if stop {
                return out;
            }
        }
    }

    /// Events up to and including seq `last`.
    async fn events_through(&mut self, last: i64) -> Vec<Value> {
        self.events_until(|e| int_of(&e["seq"]) >= last).await
    }
}

/// Whether `event` is the ClientJoined of `client`.
fn joined(client: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| e["__typename"] == "ClientJoined" && e["client"]["clientId"] == client
}

impl Ws {
    /// Events of subscription `id` up to and including the first one `done` accepts.
    async fn events_until(&mut self, id: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let event = self.next_event(id).await;
            let stop = done(&event);
            out.push(event);
            if stop {
                return out;
            }
        }
    }
}

/// A client without the per-request timeout: streams stay open.
fn streaming_client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| int_of(&e["seq"])).collect()
}

#[tokio::test]
async fn sse_and_multipart_subscribers_receive_the_same_events_as_a_websocket_subscriber() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Streams").await;
    let mut ws = app.ws_as("ws-1", "Websocket").await;
    ws.subscribe_events("w", &session, Some(0)).await;
    let mut sse = Stream::post(&app, SSE, "sse-1", &session, Some(0)).await;
    let mut multipart = Stream::post(&app, MULTIPART, "mp-1", &session, Some(0)).await;
    // Each has joined once its own join arrives.
    let mut from_ws = ws.events_until("w", joined("ws-1")).await;
    let mut from_sse = sse.events_until(joined("sse-1")).await;
    let mut from_multipart = multipart.events_until(joined("mp-1")).await;

    let writer = app.as_client("writer");
    let phase = writer
        .create_node(&session, Some(&root), "phase", "Bodywork")
        .await;
    writer
        .update_property(&session, &phase, "status", json!("In Progress"))
        .await;
    writer.undo(&session).await;
    let last = app.last_seq(&session).await;

    from_ws.extend(ws.events_through("w", last).await);
    from_sse.extend(sse.events_through(last).await);
    from_multipart.extend(multipart.events_through(last).await);
    assert_eq!(
        seqs(&from_ws),
        (1..=last).collect::<Vec<_>>(),
        "gap-free from seq 1"
    );
    assert_eq!(from_sse, from_ws, "SSE carries the websocket's events");
    assert_eq!(
        from_multipart, from_ws,
        "multipart carries the websocket's events"
    );
    let joined: Vec<_> = from_ws
        .iter()
        .filter(|e| e["__typename"] == "ClientJoined")
        .map(|e| str_of(&e["client"]["clientId"]))
        .collect();
    for client in ["ws-1", "sse-1", "mp-1"] {
        assert!(
            joined.contains(&client.to_string()),
            "{client} joined: {joined:?}"
        );
    }
    let created = from_ws
        .iter()
        .find(|e| e["__typename"] == "NodeCreated")
        .unwrap();
    assert_eq!(created["clientId"], "writer");
    assert_eq!(created["node"]["nodeId"], phase.as_str());
}

#[tokio::test]
async fn an_event_source_that_reconnects_with_last_event_id_misses_nothing_and_sees_nothing_twice()
{
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Resume").await;
    let query = events_subscription();
    let variables = json!({ "s": session, "since": 0 }).to_string();
    let extensions = json!({ "clientId": "tab-1", "clientName": "Tab" }).to_string();
    // An EventSource can only GET and cannot set headers: everything is in the URL.
    let get = || {
        streaming_client().get(app.url("/graphql/stream")).query(&[
            ("query", query.as_str()),
            ("variables", &variables),
            ("extensions", &extensions),
        ])
    };
    let mut watcher = app.ws_as("watcher", "Watcher").await;
    watcher.subscribe_events("w", &session, None).await;
    watcher.events_until("w", joined("watcher")).await;
    let mut first = Stream::open(SSE, "", get()).await;
    let seen_events = first.events_until(joined("tab-1")).await;
    let event = seen_events.last().unwrap();
    assert_eq!(
        event["client"],
        json!({ "clientId": "tab-1", "name": "Tab" }),
        "an EventSource names itself in the extensions"
    );
    let seen = int_of(&event["seq"]);
    drop(first);

    // While it is away: its ClientLeft, and three commands.
    watcher
        .events_until("w", |e| {
            e["__typename"] == "ClientLeft" && e["client"]["clientId"] == "tab-1"
        })
        .await;
    for name in ["One", "Two", "Three"] {
        app.create_node(&session, Some(&root), "phase", name).await;
    }
    let missed_through = app.last_seq(&session).await;

    let mut again = Stream::open(SSE, "", get().header("last-event-id", seen.to_string())).await;
    let events = again.events_through(missed_through + 1).await;
    assert_eq!(
        seqs(&events),
        ((seen + 1)..=(missed_through + 1)).collect::<Vec<_>>(),
        "exactly what it missed, then live events"
    );
    let kinds: Vec<_> = events.iter().map(|e| str_of(&e["__typename"])).collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "NodeCreated").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().unwrap(),
        "ClientJoined",
        "its own join comes live"
    );
    assert!(kinds.contains(&"ClientLeft".to_string()), "{kinds:?}");
    assert_eq!(
        events.last().unwrap()["client"],
        json!({ "clientId": "tab-1", "name": "Tab" })
    );
}

#[tokio::test]
async fn an_invalid_subscription_over_sse_is_one_next_event_with_the_errors_then_complete() {
    let app = App::start().await;
    let request = streaming_client()
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(
            json!({ "query": "subscription { sessionEvents(sessionId: \"x\") { nope } }" })
                .to_string(),
        );
    let mut stream = Stream::open(SSE, "bad", request).await;
    let m = stream.next().await.unwrap();
    assert_eq!(m.event, "next");
    assert!(
        m.data["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{m:?}"
    );
    let end = stream.next().await.unwrap();
    assert_eq!(end.event, "complete");
    assert_eq!(stream.next().await, None, "the response ends");
}

#[tokio::test]
async fn a_query_over_multipart_is_one_part_and_the_closing_boundary() {
    let app = App::start().await;
    let request = streaming_client()
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(json!({ "query": "{ templates { id } }" }).to_string());
    // Only the stream is acceptable: with JSON beside it, a query gets JSON.
    let mut stream = Stream::open("multipart/mixed;subscriptionSpec=1.0", "q", request).await;
    let part = stream.next().await.unwrap();
    assert!(
        part.data["payload"]["data"]["templates"]
            .as_array()
            .is_some(),
        "{part:?}"
    );
    assert_eq!(stream.next().await.unwrap().event, "end");
}

#[tokio::test]
async fn a_mutation_over_an_event_source_get_is_refused_and_changes_nothing() {
    let app = App::start().await;
    let before = app.projects().await.len();
    let request = streaming_client().get(app.url("/graphql/stream")).query(&[(
        "query",
        "mutation { createProject(templateId: \"restomod\", name: \"Sneaky\") { id } }",
    )]);
    let response = request.header("accept", SSE).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(app.projects().await.len(), before);
}

/// What urql's fetch exchange sends with every query and mutation.
const URQL_ACCEPT: &str = "application/graphql-response+json, application/graphql+json, application/json, text/event-stream, multipart/mixed";

#[tokio::test]
async fn a_query_from_a_client_that_accepts_json_and_streams_is_answered_with_json() {
    let app = App::start().await;
    for accept in [
        URQL_ACCEPT,
        "text/event-stream, application/json",
        MULTIPART,
    ] {
        let response = streaming_client()
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(json!({ "query": "{ templates { id } }" }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("application/graphql-response+json")
                || content_type.starts_with("application/json"),
            "{accept}: {content_type}"
        );
        let body: Value = response.json().await.unwrap();
        assert!(
            body["data"]["templates"].as_array().is_some(),
            "{accept}: {body}"
        );
    }
    // The same header on a subscription streams.
    let (session, _) = app.create_project("restomod", "Streams").await;
    let request = streaming_client()
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(
            json!({
                "query": "subscription($s: ID!) { sessionEvents(sessionId: $s, since: 0) { seq } }",
                "variables": { "s": session },
            })
            .to_string(),
        );
    let mut stream = Stream::open(URQL_ACCEPT, "urql", request).await;
    let first = stream.next().await.unwrap();
    assert_eq!(first.event, "next", "{first:?}");
}
