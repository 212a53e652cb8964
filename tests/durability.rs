//! Durability through the real binary: SIGKILL under load, SIGTERM, resume with `since`, and store failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/binary.rs"]
mod binary;
use binary::spawn;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn gql(http: &reqwest::Client, url: &str, query: &str, variables: Value) -> Value {
    http.post(format!("{url}/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON response")
}

/// `data.<field>` of a successful response, or a panic with the errors.
fn data(resp: &Value, field: &str) -> Value {
    assert!(resp.get("errors").is_none(), "unexpected errors: {resp}");
    resp["data"][field].clone()
}

const CREATE: &str = "mutation($t: ID!, $n: String!) { createProject(templateId: $t, name: $n) { id graph { roots { id } } } }";
const BATCH: &str = "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { commandId version } }";
const UPDATE: &str = "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"start_date\", value: $v) { commandId } }";
const STATE: &str = "query($s: ID!) { session(id: $s) { lastSeq version canUndo canRedo graph { nodes { id parentId name properties children { id parentId } } } } }";

/// A new restomod project: (session id, root node id).
async fn create_project(http: &reqwest::Client, url: &str, name: &str) -> (String, String) {
    let created = data(
        &gql(http, url, CREATE, json!({"t": "restomod", "n": name})).await,
        "createProject",
    );
    let id = |v: &Value| v.as_str().expect("an id").to_string();
    (id(&created["id"]), id(&created["graph"]["roots"][0]["id"]))
}

/// Adds phases named "Phase i" under the root, one batch each.
async fn add_phases(
    http: &reqwest::Client,
    url: &str,
    session: &str,
    root: &str,
    range: std::ops::Range<usize>,
) {
    for i in range {
        let commands = json!([{"createNode": {"parentId": root, "typeId": "phase", "name": format!("Phase {i}")}}]);
        data(
            &gql(http, url, BATCH, json!({"s": session, "c": commands})).await,
            "executeBatch",
        );
    }
}

/// The session's newest seq.
async fn last_seq(http: &reqwest::Client, url: &str, session: &str) -> u64 {
    data(
        &gql(http, url, STATE, json!({"s": session})).await,
        "session",
    )["lastSeq"]
        .as_u64()
        .expect("lastSeq")
}

/// Reads every event of a session with `since` over graphql-transport-ws until `until_seq`.
async fn replay(url: &str, session: &str, since: u64, until_seq: u64) -> Vec<Value> {
    let ws_url = url.replace("http://", "ws://") + "/graphql";
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket connects");
    ws.send(Message::text(
        json!({"type": "connection_init", "payload": {"clientId": "replayer"}}).to_string(),
    ))
    .await
    .unwrap();
    let query = "subscription($s: ID!, $since: Int) { sessionEvents(sessionId: $s, since: $since) { __typename seq commandId } }";
    ws.send(Message::text(
        json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"s": session, "since": since}}})
            .to_string(),
    ))
    .await
    .unwrap();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while events
        .last()
        .map_or(since, |e: &Value| e["seq"].as_u64().unwrap())
        < until_seq
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("events arrive within 30 s")
            .expect("socket open")
            .expect("frame");
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str() {
            Some("next") => {
                assert!(
                    v["payload"].get("errors").is_none(),
                    "subscription error: {v}"
                );
                events.push(v["payload"]["data"]["sessionEvents"].clone());
            }
            Some("connection_ack") | Some("ping") | Some("pong") => {}
            other => panic!("unexpected message {other:?}: {v}"),
        }
    }
    events
}

fn assert_consecutive(events: &[Value], from: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(from + 1 + i as u64),
            "gap or duplicate at {e}"
        );
    }
}

/// Structural invariants as a client sees them.
fn assert_graph_consistent(state: &Value) {
    let nodes = state["graph"]["nodes"].as_array().unwrap();
    let ids: std::collections::HashSet<&str> =
        nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), nodes.len(), "a node appears twice");
    for n in nodes {
        for c in n["children"].as_array().unwrap() {
            assert_eq!(
                c["parentId"], n["id"],
                "child {c} does not point back to {}",
                n["id"]
            );
        }
        if let Some(p) = n["parentId"].as_str() {
            assert!(ids.contains(p), "dangling parent {p}");
        }
    }
}

/// A tiny deterministic generator, seeded per run and printed for reproduction.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default)]
struct Acked {
    /// (phase id, job id) pairs whose batch was acknowledged.
    pairs: Vec<(String, String)>,
    /// Pairs sent but not acknowledged when the server died.
    in_flight: Vec<(String, String)>,
    commands: Vec<String>,
    /// Node -> (last acknowledged value, value in flight).
    values: std::collections::HashMap<String, (Option<String>, Option<String>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write_and_half_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let http = reqwest::Client::new();
    let mut server = spawn(dir.path());
    let (session, root) = create_project(&http, &server.url, "Crash test").await;
    let acked = Arc::new(Mutex::new(Acked::default()));

    for round in 0..3 {
        // Load: 6 writers, each creating phase+job pairs atomically and updating its phases.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..6 {
            let (http, url, session, root, acked, stop) = (
                http.clone(),
                server.url.clone(),
                session.clone(),
                root.clone(),
                acked.clone(),
                stop.clone(),
            );
            writers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let phase = uuid::Uuid::new_v4().to_string();
                    let job = uuid::Uuid::new_v4().to_string();
                    let commands = json!([
                        {"createNode": {"parentId": root, "typeId": "phase", "id": phase, "name": format!("r{round} w{w} #{i}")}},
                        {"createNode": {"parentId": phase, "typeId": "job", "id": job}}
                    ]);
                    acked.lock().in_flight.push((phase.clone(), job.clone()));
                    let Ok(resp) = http
                        .post(format!("{url}/graphql"))
                        .json(&json!({"query": BATCH, "variables": {"s": session, "c": commands}}))
                        .send()
                        .await
                    else {
                        return;
                    };
                    let Ok(resp) = resp.json::<Value>().await else { return };
                    let result = data(&resp, "executeBatch");
                    {
                        let mut a = acked.lock();
                        a.in_flight.retain(|p| p.0 != phase);
                        a.pairs.push((phase.clone(), job));
                        a.commands.push(result["commandId"].as_str().unwrap().to_string());
                    }
                    let day = format!("2025-01-{:02}", 1 + i % 28);
                    acked.lock().values.insert(phase.clone(), (None, Some(day.clone())));
                    let Ok(resp) = http
                        .post(format!("{url}/graphql"))
                        .json(&json!({"query": UPDATE, "variables": {"s": session, "n": phase, "v": day}}))
                        .send()
                        .await
                    else {
                        return;
                    };
                    let Ok(resp) = resp.json::<Value>().await else { return };
                    let result = data(&resp, "updateProperty");
                    let mut a = acked.lock();
                    a.values.insert(phase.clone(), (Some(day), None));
                    a.commands.push(result["commandId"].as_str().unwrap().to_string());
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + rng.next() % 600)).await;
        server.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            let _ = w.await;
        }

        server = spawn(dir.path());
        let state = data(
            &gql(&http, &server.url, STATE, json!({"s": session})).await,
            "session",
        );
        assert!(!state.is_null(), "the session survives the crash");
        assert_graph_consistent(&state);
        let nodes: std::collections::HashMap<String, Value> = state["graph"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].as_str().unwrap().to_string(), n.clone()))
            .collect();
        {
            let a = acked.lock();
            assert!(
                !a.pairs.is_empty(),
                "round {round}: the load acknowledged nothing before the kill"
            );
            for (phase, job) in &a.pairs {
                assert!(nodes.contains_key(phase), "acknowledged phase {phase} lost");
                assert!(nodes.contains_key(job), "acknowledged job {job} lost");
            }
            for (phase, job) in &a.in_flight {
                assert_eq!(
                    nodes.contains_key(phase),
                    nodes.contains_key(job),
                    "a batch was half applied: phase {phase} / job {job}"
                );
            }
            for (node, (acked_value, in_flight)) in &a.values {
                let Some(n) = nodes.get(node) else { continue };
                let got = n["properties"]["start_date"].as_str().map(str::to_string);
                if got != *acked_value {
                    assert!(
                        in_flight.is_some() && got == *in_flight,
                        "node {node}: start_date {got:?}, acknowledged {acked_value:?}"
                    );
                }
            }
        }
        // The log replays from seq 1 without a gap and holds every acknowledged command.
        let last_seq = state["lastSeq"].as_u64().unwrap();
        let events = replay(&server.url, &session, 0, last_seq).await;
        assert_consecutive(&events, 0);
        let logged: std::collections::HashSet<&str> = events
            .iter()
            .filter(|e| e["__typename"] == "CommandExecuted")
            .filter_map(|e| e["commandId"].as_str())
            .collect();
        for c in &acked.lock().commands {
            assert!(
                logged.contains(c.as_str()),
                "acknowledged command {c} has no CommandExecuted in the log"
            );
        }
        acked.lock().in_flight.clear();
        acked.lock().values.retain(|_, v| v.0.is_some());
        for v in acked.lock().values.values_mut() {
            v.1 = None;
        }
    }
    // Undo still works after all the crashes, and redo puts the change back.
    let before = data(
        &gql(&http, &server.url, STATE, json!({"s": session})).await,
        "session",
    );
    let undo = "mutation($s: ID!) { undo(sessionId: $s) { version canRedo } }";
    let undone = data(
        &gql(&http, &server.url, undo, json!({"s": session})).await,
        "undo",
    );
    assert_eq!(undone["canRedo"], true);
    let redo = "mutation($s: ID!) { redo(sessionId: $s) { version } }";
    data(
        &gql(&http, &server.url, redo, json!({"s": session})).await,
        "redo",
    );
    let after = data(
        &gql(&http, &server.url, STATE, json!({"s": session})).await,
        "session",
    );
    assert_eq!(
        before["graph"], after["graph"],
        "undo then redo restores the graph exactly"
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut server = spawn(dir.path());
    let (session, root) = create_project(&http, &server.url, "Clean stop").await;
    for i in 0..5 {
        let commands = json!([{"createNode": {"parentId": root, "typeId": "phase", "name": format!("Phase {i}")}}]);
        data(
            &gql(
                &http,
                &server.url,
                BATCH,
                json!({"s": session, "c": commands}),
            )
            .await,
            "executeBatch",
        );
    }
    let undo = "mutation($s: ID!) { undo(sessionId: $s) { version } }";
    data(
        &gql(&http, &server.url, undo, json!({"s": session})).await,
        "undo",
    );
    let before = data(
        &gql(&http, &server.url, STATE, json!({"s": session})).await,
        "session",
    );
    let projects_q = "{ projects { id name nodeCount version } }";
    let projects_before = data(
        &gql(&http, &server.url, projects_q, json!({})).await,
        "projects",
    );

    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits with 0, got {status}");

    let mut server = spawn(dir.path());
    let after = data(
        &gql(&http, &server.url, STATE, json!({"s": session})).await,
        "session",
    );
    assert_eq!(
        before, after,
        "sessions, graph, version, lastSeq and undo/redo state survive"
    );
    assert_eq!(after["canRedo"], true);
    let projects_after = data(
        &gql(&http, &server.url, projects_q, json!({})).await,
        "projects",
    );
    assert_eq!(projects_before, projects_after);
    // Redo continues where it stopped.
    let redo = "mutation($s: ID!) { redo(sessionId: $s) { version canRedo } }";
    let redone = data(
        &gql(&http, &server.url, redo, json!({"s": session})).await,
        "redo",
    );
    assert_eq!(
        redone["version"].as_u64(),
        Some(before["version"].as_u64().unwrap() + 1)
    );
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_with_since_after_a_restart_gets_exactly_the_missed_events() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let server = spawn(dir.path());
    let (session, root) = create_project(&http, &server.url, "Resume").await;
    add_phases(&http, &server.url, &session, &root, 0..3).await;
    let seen_up_to = last_seq(&http, &server.url, &session).await;
    let first = replay(&server.url, &session, 0, seen_up_to).await;
    assert_consecutive(&first, 0);
    // Events the client misses: some before the crash, some after the restart.
    add_phases(&http, &server.url, &session, &root, 3..6).await;
    server.kill();
    let server = spawn(dir.path());
    add_phases(&http, &server.url, &session, &root, 6..8).await;
    let last = last_seq(&http, &server.url, &session).await;
    let missed = replay(&server.url, &session, seen_up_to, last).await;
    assert_consecutive(&missed, seen_up_to);
    assert_eq!(missed.last().unwrap()["seq"].as_u64(), Some(last));
    let executed = missed
        .iter()
        .filter(|e| e["__typename"] == "CommandExecuted")
        .count();
    assert_eq!(
        executed, 5,
        "the five commands after seq {seen_up_to} arrive, once each"
    );
}
