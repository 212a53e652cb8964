//! A failing store (disk full, read-only, locked) gives STORE_UNAVAILABLE, changes nothing, and recovers by itself.

use std::sync::Arc;

use serde_json::{json, Value};
use talus_tally::server::{self, Config};
use talus_tally::store::faulty::FaultyStore;
use talus_tally::store::{SqliteOptions, SqliteStore};

async fn gql(http: &reqwest::Client, url: &str, query: &str, variables: Value) -> Value {
    http.post(format!("{url}/graphql"))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn code(resp: &Value) -> &str {
    resp["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
}

const STATE: &str = "query($s: ID!) { session(id: $s) { lastSeq version canUndo canRedo graph { nodes { id name properties } } } }";

#[tokio::test]
async fn a_failing_store_rejects_changes_keeps_state_and_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("talus.db"), SqliteOptions::default()).unwrap();
    let (store, switch) = FaultyStore::new(sqlite);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let running = server::start(config, listener, Arc::new(store))
        .await
        .unwrap();
    let url = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    let created = gql(
        &http,
        &url,
        "mutation { createProject(templateId: \"restomod\", name: \"Disk full\") { id graph { roots { id } } } }",
        json!({}),
    )
    .await;
    let session = created["data"]["createProject"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let root = created["data"]["createProject"]["graph"]["roots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let set_vin = "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"vin\", value: $v) { version } }";
    let ok = gql(
        &http,
        &url,
        set_vin,
        json!({"s": session, "n": root, "v": "VIN-1"}),
    )
    .await;
    assert!(ok.get("errors").is_none(), "{ok}");
    let before = gql(&http, &url, STATE, json!({"s": session})).await;

    switch.fail_writes(true);
    let failed = gql(
        &http,
        &url,
        set_vin,
        json!({"s": session, "n": root, "v": "VIN-2"}),
    )
    .await;
    assert_eq!(code(&failed), "STORE_UNAVAILABLE", "{failed}");
    let create = "mutation($s: ID!, $p: ID!) { createNode(sessionId: $s, input: {parentId: $p, typeId: \"phase\"}) { nodeId } }";
    assert_eq!(
        code(&gql(&http, &url, create, json!({"s": session, "p": root})).await),
        "STORE_UNAVAILABLE"
    );
    let undo = "mutation($s: ID!) { undo(sessionId: $s) { version } }";
    assert_eq!(
        code(&gql(&http, &url, undo, json!({"s": session})).await),
        "STORE_UNAVAILABLE"
    );
    let new_project = "mutation { createProject(templateId: \"restomod\", name: \"Nope\") { id } }";
    assert_eq!(
        code(&gql(&http, &url, new_project, json!({})).await),
        "STORE_UNAVAILABLE"
    );
    // Reads keep working and show nothing of the failed changes.
    let during = gql(&http, &url, STATE, json!({"s": session})).await;
    assert_eq!(before, during, "a failed commit changes nothing in memory");
    let projects = gql(&http, &url, "{ projects { name } }", json!({})).await;
    assert_eq!(projects["data"]["projects"].as_array().unwrap().len(), 1);

    // The store comes back: the next change works and the event log continues without a gap.
    switch.fail_writes(false);
    let recovered = gql(
        &http,
        &url,
        set_vin,
        json!({"s": session, "n": root, "v": "VIN-3"}),
    )
    .await;
    assert!(recovered.get("errors").is_none(), "{recovered}");
    let after = gql(&http, &url, STATE, json!({"s": session})).await;
    let seq_before = before["data"]["session"]["lastSeq"].as_u64().unwrap();
    assert_eq!(
        after["data"]["session"]["lastSeq"].as_u64(),
        Some(seq_before + 3)
    );
    assert_eq!(
        after["data"]["session"]["version"].as_u64(),
        Some(before["data"]["session"]["version"].as_u64().unwrap() + 1)
    );
    // Undo still undoes exactly the last stored change.
    let undone = gql(&http, &url, undo, json!({"s": session})).await;
    assert!(undone.get("errors").is_none(), "{undone}");
    let vin = "query($s: ID!, $n: ID!) { node(sessionId: $s, id: $n) { property(id: \"vin\") } }";
    let v = gql(&http, &url, vin, json!({"s": session, "n": root})).await;
    assert_eq!(v["data"]["node"]["property"], "VIN-1");
    running.shutdown().await.unwrap();
}
