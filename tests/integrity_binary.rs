//! Integrity through the real binary: one process per data dir, and a graceful stop under SIGTERM with writers in flight.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[path = "common/binary.rs"]
mod binary;
use binary::spawn;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn gql(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    variables: Value,
) -> Result<Value, reqwest::Error> {
    http.post(format!("{url}/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?
        .json()
        .await
}

async fn ok(http: &reqwest::Client, url: &str, query: &str, variables: Value) -> Value {
    let body = gql(http, url, query, variables).await.expect("a response");
    assert!(body.get("errors").is_none(), "unexpected errors: {body}");
    body["data"].clone()
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let created = runtime.block_on(ok(
        &http,
        &first.url,
        "mutation { createProject(templateId: \"restomod\", name: \"Owned\") { id } }",
        json!({}),
    ));

    let second = Command::new(env!("CARGO_BIN_EXE_talus-tally"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("the second binary runs");
    assert!(!second.status.success(), "the second server must not start");
    let said = String::from_utf8_lossy(&second.stderr).to_string()
        + &String::from_utf8_lossy(&second.stdout);
    assert!(
        said.contains(&dir.path().display().to_string()),
        "names the dir: {said}"
    );
    let holder = format!("pid {}", first.child.id());
    assert!(
        said.contains(&holder),
        "names the holder ({holder}): {said}"
    );
    let addr = first.url.trim_start_matches("http://");
    assert!(said.contains(addr), "names the holder's address: {said}");

    // The first is untouched: its session is there and it takes writes.
    let session = created["createProject"]["id"].as_str().unwrap().to_string();
    let state = runtime.block_on(ok(
        &http,
        &first.url,
        "query($s: ID!) { session(id: $s) { id graph { roots { id } } } }",
        json!({ "s": session }),
    ));
    let root = state["session"]["graph"]["roots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    runtime.block_on(ok(
        &http,
        &first.url,
        "mutation($s: ID!, $p: ID!) { createNode(sessionId: $s, input: {parentId: $p, typeId: \"phase\"}) { nodeId } }",
        json!({ "s": session, "p": root }),
    ));
}

#[test]
fn sigterm_with_writers_in_flight_stores_every_acknowledged_change_records_leaves_and_exits_cleanly(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let url = server.url.clone();
    let (session, root) = runtime.block_on(async {
        let data = ok(
            &http,
            &url,
            "mutation { createProject(templateId: \"restomod\", name: \"Stopping\") { id graph { roots { id } } } }",
            json!({}),
        )
        .await;
        let s = &data["createProject"];
        (
            s["id"].as_str().unwrap().to_string(),
            s["graph"]["roots"][0]["id"].as_str().unwrap().to_string(),
        )
    });

    // A present client, and writers whose acknowledged nodes are noted.
    let ws_url = url.replace("http://", "ws://") + "/graphql";
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
            .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let (ws, writers) = runtime.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws.send(Message::text(json!({"type": "connection_init", "payload": {"clientId": "watcher", "name": "Watcher"}}).to_string())).await.unwrap();
        ws.send(Message::text(json!({"id": "e", "type": "subscribe", "payload": {
            "query": "subscription($s: ID!) { sessionEvents(sessionId: $s) { __typename } }",
            "variables": {"s": session}}}).to_string())).await.unwrap();
        // Until the subscription is live (its ClientJoined arrives).
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("the websocket closed") };
            if t.contains("ClientJoined") {
                break;
            }
        }
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (http, url, session, root) = (http.clone(), url.clone(), session.clone(), root.clone());
                let (acked, refused) = (acked.clone(), refused.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let body = gql(&http, &url,
                            "mutation($s: ID!, $p: ID!, $n: String) { createNode(sessionId: $s, input: {parentId: $p, typeId: \"phase\", name: $n}) { nodeId } }",
                            json!({ "s": session, "p": root, "n": format!("w{w}-{i}") })).await;
                        match body {
                            Ok(b) if b.get("errors").is_none() => {
                                acked.lock().push(b["data"]["createNode"]["nodeId"].as_str().unwrap().to_string());
                            }
                            Ok(b) => {
                                // A clear error, not a silent loss.
                                let code = b["errors"][0]["extensions"]["code"].as_str().unwrap_or("").to_string();
                                assert!(matches!(code.as_str(), "STORE_UNAVAILABLE" | "SESSION_NOT_FOUND"), "{b}");
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            // The listener is closed: the server is stopping.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        // Until some writes are acknowledged.
        while acked.lock().len() < 20 {
            tokio::task::yield_now().await;
        }
        (ws, writers)
    });

    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let noisy: Vec<String> = server
        .lines
        .lock()
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .cloned()
        .collect();
    assert!(
        noisy.is_empty(),
        "nothing at WARN or above in a clean stop: {noisy:#?}"
    );
    runtime.block_on(async {
        for w in writers {
            w.await.unwrap();
        }
    });
    drop(ws);
    drop(server);

    let server = spawn(dir.path());
    let (nodes, log) = runtime.block_on(async {
        let state = ok(&http, &server.url,
            "query($s: ID!) { session(id: $s) { lastSeq activeClients graph { nodes { id } } } }",
            json!({ "s": session })).await;
        let nodes: std::collections::HashSet<String> = state["session"]["graph"]["nodes"]
            .as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(state["session"]["activeClients"], 0);
        let last = state["session"]["lastSeq"].as_i64().unwrap();
        // The presence events of the log, replayed.
        let ws_url = server.url.replace("http://", "ws://") + "/graphql";
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url).unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws.send(Message::text(json!({"type": "connection_init", "payload": {"clientId": "auditor"}}).to_string())).await.unwrap();
        ws.send(Message::text(json!({"id": "r", "type": "subscribe", "payload": {
            "query": "subscription($s: ID!) { sessionEvents(sessionId: $s, since: 0) { __typename seq ... on ClientLeft { client { name } } ... on ClientJoined { client { name } } } }",
            "variables": {"s": session}}}).to_string())).await.unwrap();
        let mut log = Vec::new();
        while log.last().is_none_or(|e: &Value| e["seq"].as_i64().unwrap() < last) {
            let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("the replay ended early") };
            let m: Value = serde_json::from_str(&t).unwrap();
            if m["type"] == "next" {
                log.push(m["payload"]["data"]["sessionEvents"].clone());
            }
        }
        (nodes, log)
    });
    for id in acked.lock().iter() {
        assert!(nodes.contains(id), "acknowledged node {id} is on disk");
    }
    let watcher: Vec<&str> = log
        .iter()
        .filter(|e| e["client"]["name"] == "Watcher")
        .map(|e| e["__typename"].as_str().unwrap())
        .collect();
    assert_eq!(
        watcher,
        ["ClientJoined", "ClientLeft"],
        "the watcher's leave is recorded"
    );
}

#[test]
fn out_of_range_flags_are_refused_with_a_message_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for flags in [
        ["--idle-hours", "1e300"],
        ["--idle-hours", "NaN"],
        ["--reaper-secs", "0"],
        ["--reaper-secs", "18446744073709551615"],
        ["--history-limit", "0"],
        ["--snapshot-interval", "0"],
        ["--ws-timeout-secs", "99999999999"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_talus-tally"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(flags)
            .output()
            .expect("the binary runs");
        let said = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(!output.status.success(), "{flags:?} must be refused");
        assert!(!said.contains("panicked"), "{flags:?} panicked: {said}");
        assert!(
            said.contains(flags[0]),
            "{flags:?}: the message names the flag: {said}"
        );
    }
}
