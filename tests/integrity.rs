//! Integrity under operations, through the real server on 127.0.0.1:0 with SQLite in temp dirs:
//! restarts with changed flags, `Graph.seq` under concurrent writers and failed commits,
//! lifecycle races, contained panics, corrupt snapshots, reads while the store cannot write.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use talus_tally::domain::Command;
use talus_tally::session::config::{ApplyFault, FaultKind};
use talus_tally::store::faulty::{FaultSwitch, FaultyStore};
use talus_tally::store::{SqliteOptions, SqliteStore, Store, Write};
use uuid::Uuid;

/// Everything a restart must bring back of a session, as the API reports it.
async fn state_of(app: &App, session: &str) -> Value {
    app.query(
        "query($s: ID!) { session(id: $s) { lastSeq version canUndo canRedo nodeCount graph { seq version nodes { id typeId name properties parentId childIds } } } }",
        json!({ "s": session }),
    )
    .await["session"]
        .clone()
}

/// What these tests read of a session besides its graph.
async fn info(app: &App, session: &str) -> Value {
    app.query(
        "query($s: ID!) { session(id: $s) { lastSeq activeClients project { id } } }",
        json!({ "s": session }),
    )
    .await["session"]
        .clone()
}

async fn last_seq(app: &App, session: &str) -> i64 {
    int_of(&info(app, session).await["lastSeq"])
}

/// The event fields these tests follow a graph with.
const EVENTS_SINCE: &str =
    "subscription($s: ID!, $since: Int) { sessionEvents(sessionId: $s, since: $since) {
    __typename seq
    ... on NodeCreated { node { nodeId name typeId properties } parentId }
    ... on NodeDeleted { deletedIds }
    ... on PropertyChanged { nodeId propertyId newValue }
    ... on ResyncRequired { reason } } }";

/// Subscribes `ws` to the session's events after `since` under `id`.
async fn follow(ws: &mut Ws, id: &str, session: &str, since: i64) {
    ws.start(id, EVENTS_SINCE, json!({ "s": session, "since": since }))
        .await;
}

/// Waits until the session has no active client (a replay's ClientLeft is stored).
async fn until_no_clients(app: &App, session: &str) {
    for _ in 0..10_000 {
        if int_of(&info(app, session).await["activeClients"]) == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the session kept an active client");
}

/// The whole retained log of a session after `since`, replayed through a
/// websocket (whose own ClientJoined and ClientLeft come after it).
async fn log_of(app: &App, session: &str, since: i64) -> Vec<Value> {
    let last = last_seq(app, session).await;
    if last <= since {
        return Vec::new();
    }
    let mut ws = app.connect(Protocol::TransportWs, json!({})).await;
    follow(&mut ws, "log", session, since).await;
    let events = ws.events_through("log", last).await;
    ws.close().await;
    events
}

async fn set_status(app: &App, session: &str, node: &str, i: usize) -> Value {
    app.update_property(session, node, "vin", json!(format!("VIN-{i}")))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_other_flags_restores_graph_version_undo_redo_and_log() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Flags").await;
    for i in 0..20 {
        set_status(&app, &session, &root, i).await;
    }
    for _ in 0..15 {
        app.undo(&session).await;
    }
    let log = log_of(&app, &session, 0).await;
    until_no_clients(&app, &session).await;
    let before = state_of(&app, &session).await;
    assert_eq!(int_of(&before["version"]), 35);

    // Lower history limit, other snapshot interval, retention of nothing.
    let dir = app.restart().await;
    let app = App::start_in(dir, |c| {
        c.session.history_limit = 5;
        c.session.snapshot_interval = 3;
        c.session.event_retention = Some(0);
    })
    .await;
    assert_eq!(state_of(&app, &session).await, before);
    assert_eq!(log_of(&app, &session, 0).await[..log.len()], log[..]);
    // Exactly 5 undo steps and 15 redo steps, as before the restart.
    for _ in 0..5 {
        app.undo(&session).await;
    }
    let error = app
        .error(
            "mutation($s: ID!) { undo(sessionId: $s) { version } }",
            json!({ "s": session }),
        )
        .await;
    assert_eq!(code_of(&error), "NOTHING_TO_UNDO");
    for _ in 0..20 {
        app.redo(&session).await;
    }
    let after_redo = state_of(&app, &session).await;
    assert_eq!(after_redo["canRedo"], json!(false));

    // Retention 0 keeps the newest event: enough writes to cross a prune
    // point, then a restart: seqs continue, never repeat.
    for i in 0..100 {
        set_status(&app, &session, &root, 100 + i).await;
    }
    let last = last_seq(&app, &session).await;
    assert!(last > 256, "the log crossed a prune point ({last})");
    let dir = app.restart().await;
    let app = App::start_in(dir, |c| c.session.event_retention = Some(0)).await;
    assert_eq!(
        last_seq(&app, &session).await,
        last,
        "lastSeq survives retention and restart"
    );
    let result = set_status(&app, &session, &root, 999).await;
    assert_eq!(int_of(&result["events"][0]["seq"]), last + 1, "{result}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_an_emptied_log_is_told_to_resync_not_left_silent() {
    // It edits the SQLite file behind the server's back.
    let app = App::start_sqlite().await;
    let (session, root) = app.create_project("restomod", "Pruned").await;
    for i in 0..5 {
        set_status(&app, &session, &root, i).await;
    }
    let last = last_seq(&app, &session).await;
    let dir = app.restart().await;
    // An older server's retention could leave no event at all.
    let store = SqliteStore::open(
        &dir.path().join("data").join("talus.db"),
        SqliteOptions::default(),
    )
    .unwrap();
    store
        .commit(vec![Write::PruneEvents {
            session_id: session.parse().unwrap(),
            below_seq: u64::MAX,
        }])
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let app = App::start_in(dir, |_| {}).await;
    assert_eq!(last_seq(&app, &session).await, last);
    let mut ws = app.connect(Protocol::TransportWs, json!({})).await;
    follow(&mut ws, "behind", &session, 1).await;
    let first = ws.next_event("behind").await;
    assert_eq!(first["__typename"], "ResyncRequired", "{first}");
    // Its seq is the newest committed (this client's own ClientJoined may be it).
    assert!(int_of(&first["seq"]) >= last, "{first}");
    ws.close().await;
    app.shutdown().await;
}

/// A graph as a map id -> (name, type, parent, properties), for comparing.
type Nodes = BTreeMap<String, Value>;

fn nodes_of(graph: &Value) -> Nodes {
    graph["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                str_of(&n["id"]),
                json!({ "name": n["name"], "parentId": n["parentId"], "properties": n["properties"] }),
            )
        })
        .collect()
}

/// Applies a session's graph events to `nodes`, as a client following the stream does.
fn apply(nodes: &mut Nodes, event: &Value) {
    match event["__typename"].as_str().unwrap_or("") {
        "NodeCreated" => {
            let n = &event["node"];
            nodes.insert(
                str_of(&n["nodeId"]),
                json!({ "name": n["name"], "parentId": event["parentId"], "properties": n["properties"] }),
            );
        }
        "NodeDeleted" => {
            for id in event["deletedIds"].as_array().expect("deletedIds") {
                nodes.remove(&str_of(id));
            }
        }
        "PropertyChanged" => {
            let node = nodes
                .get_mut(&str_of(&event["nodeId"]))
                .expect("a known node");
            let property = str_of(&event["propertyId"]);
            if event["newValue"].is_null() {
                node["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove(&property);
            } else {
                node["properties"][property] = event["newValue"].clone();
            }
        }
        "CommandExecuting" | "CommandExecuted" | "CommandFailed" | "CommandUndone"
        | "CommandRedone" | "ClientJoined" | "ClientLeft" => {}
        other => panic!("unexpected event {other}: {event}"),
    }
}

const GRAPH: &str = "query($s: ID!) { graph(sessionId: $s) { seq version nodes { id typeId name properties parentId } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_seq_then_events_since_it_reproduce_the_live_graph_under_writers_and_failed_commits()
{
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let sqlite =
        SqliteStore::open(&config.data_dir.join("talus.db"), SqliteOptions::default()).unwrap();
    let (store, switch) = FaultyStore::new(sqlite);
    let app = Arc::new(App::start_on(dir, config, Arc::new(store)).await);
    let (session, root) = app.create_project("restomod", "Racing").await;

    let writers = (0..4).map(|w| {
        let app = app.clone();
        let (session, root) = (session.clone(), root.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let q = match i % 3 {
                    0 => json!({ "query": "mutation($s: ID!, $p: ID!, $n: String) { createNode(sessionId: $s, input: {parentId: $p, typeId: \"phase\", name: $n}) { version } }", "variables": { "s": session, "p": root, "n": format!("w{w}-{i}") } }),
                    1 => json!({ "query": "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"vin\", value: $v) { version } }", "variables": { "s": session, "n": root, "v": format!("w{w}-{i}") } }),
                    _ => json!({ "query": "mutation($s: ID!) { undo(sessionId: $s) { version } }", "variables": { "s": session } }),
                };
                // Failures (STORE_UNAVAILABLE, NOTHING_TO_UNDO) are part of the race.
                let _ = app.request(q["query"].as_str().unwrap(), q["variables"].clone()).await;
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    let faults = {
        let switch: FaultSwitch = switch.clone();
        let app = app.clone();
        let session = session.clone();
        tokio::spawn(async move {
            // Flip the store between failing and working as commits go by.
            for i in 0..60 {
                switch.fail_writes(i % 2 == 0);
                let _ = info(&app, &session).await;
            }
            switch.fail_writes(false);
        })
    };
    let mut samples = Vec::new();
    for _ in 0..25 {
        samples.push(app.query(GRAPH, json!({ "s": session })).await["graph"].clone());
    }
    for w in writers {
        w.await.unwrap();
    }
    faults.await.unwrap();

    let last = app.query(GRAPH, json!({ "s": session })).await["graph"].clone();
    let target = int_of(&last["seq"]);
    assert_eq!(target, last_seq(&app, &session).await);
    let expected = nodes_of(&last);
    for sample in samples {
        let since = int_of(&sample["seq"]);
        let mut nodes = nodes_of(&sample);
        for event in log_of(&app, &session, since).await {
            assert!(int_of(&event["seq"]) > since);
            apply(&mut nodes, &event);
        }
        assert_eq!(nodes, expected, "graph at seq {since} + events after it");
    }
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_lifecycle_operations_leave_the_store_loadable_and_as_acknowledged() {
    let app = Arc::new(App::start().await);
    // splitmix64, seeded: the same interleavings of requests on every run.
    let mut state = 11u64;
    let mut below = |n: usize| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    };
    // Acknowledged facts: project -> its root; deleted projects; nodes created per project.
    let mut projects: Vec<(String, String)> = Vec::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut created_nodes: Vec<(String, String)> = Vec::new();
    let mut sessions: Vec<(String, String)> = Vec::new();
    for _ in 0..4 {
        let (s, root) = app.create_project("restomod", "Seed").await;
        let project = str_of(&info(&app, &s).await["project"]["id"]);
        projects.push((project.clone(), root));
        sessions.push((s, project));
    }
    let mut done = 0;
    while done < 1000 {
        let mut round = Vec::new();
        for _ in 0..10 {
            let pick = below(projects.len());
            let (project, root) = projects[pick].clone();
            let session = sessions[below(sessions.len())].0.clone();
            let op = below(6);
            let app = app.clone();
            round.push(tokio::spawn(async move {
                let (query, vars) = match op {
                    0 => ("mutation { createProject(templateId: \"restomod\", name: \"New\") { id project { id } graph { roots { id } } } }", json!({})),
                    1 => ("mutation($p: ID!) { openProject(projectId: $p) { id project { id } } }", json!({ "p": project })),
                    2 => ("mutation($p: ID!) { deleteProject(id: $p) }", json!({ "p": project })),
                    3 => ("mutation($s: ID!) { closeSession(id: $s) }", json!({ "s": session })),
                    4 => ("mutation { cleanupSessions(maxInactiveHours: 0) { sessionsRemoved } }", json!({})),
                    _ => ("mutation($s: ID!, $p: ID!) { createNode(sessionId: $s, input: {parentId: $p, typeId: \"phase\"}) { nodeId session { project { id } } } }", json!({ "s": session, "p": root })),
                };
                (op, project, app.request(query, vars).await)
            }));
        }
        for r in join_all(round).await {
            let (op, project, body) = r.unwrap();
            done += 1;
            if body.get("errors").is_some() {
                continue;
            }
            let data = &body["data"];
            match op {
                0 => {
                    let s = &data["createProject"];
                    let p = str_of(&s["project"]["id"]);
                    projects.push((p.clone(), str_of(&s["graph"]["roots"][0]["id"])));
                    sessions.push((str_of(&s["id"]), p));
                }
                1 => sessions.push((str_of(&data["openProject"]["id"]), project)),
                2 => {
                    deleted.insert(project);
                }
                5 => {
                    let r = &data["createNode"];
                    created_nodes
                        .push((str_of(&r["session"]["project"]["id"]), str_of(&r["nodeId"])));
                }
                _ => {}
            }
        }
    }

    let dir = Arc::into_inner(app).unwrap().restart().await;
    let app = App::start_in(dir, |_| {}).await;
    let stored: HashSet<String> = app.projects().await.into_iter().map(|(id, _)| id).collect();
    for (project, _) in &projects {
        assert_eq!(
            stored.contains(project),
            !deleted.contains(project),
            "project {project} stored iff not acknowledged deleted"
        );
    }
    for project in &stored {
        let opened = app
            .query(
                "mutation($p: ID!) { openProject(projectId: $p) { graph { nodes { id } } } }",
                json!({ "p": project }),
            )
            .await;
        let ids: HashSet<String> = opened["openProject"]["graph"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| str_of(&n["id"]))
            .collect();
        for (p, node) in &created_nodes {
            if p == project {
                assert!(
                    ids.contains(node),
                    "acknowledged node {node} of {project} is stored"
                );
            }
        }
    }
    app.shutdown().await;
}

/// A server whose actor panics on nodes named "PANIC" and cannot serialise the op of nodes named "UNSERIALISABLE".
async fn faulty_apply_app(dir: tempfile::TempDir) -> App {
    App::start_in(dir, |c| {
        c.session.apply_fault = Some(ApplyFault(Arc::new(|command: &Command| match command {
            Command::CreateNode { name: Some(n), .. } if n == "PANIC" => Some(FaultKind::Panic),
            Command::CreateNode { name: Some(n), .. } if n == "UNSERIALISABLE" => {
                Some(FaultKind::Unserialisable)
            }
            _ => None,
        })));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_or_unserialisable_op_fails_with_internal_reverts_and_leaves_the_session_usable() {
    let app = faulty_apply_app(tempfile::tempdir().unwrap()).await;
    let (session, root) = app.create_project("restomod", "Fragile").await;
    app.create_node(&session, Some(&root), "phase", "Before")
        .await;
    let before = state_of(&app, &session).await;
    let create = "mutation($s: ID!, $p: ID!, $n: String) { createNode(sessionId: $s, input: {parentId: $p, typeId: \"phase\", name: $n}) { nodeId } }";
    for name in ["PANIC", "UNSERIALISABLE"] {
        let error = app
            .error(create, json!({ "s": session, "p": root, "n": name }))
            .await;
        assert_eq!(code_of(&error), "INTERNAL", "{error}");
        let message = str_of(&error["message"]);
        assert!(
            !message.contains("injected"),
            "nothing of the cause leaks: {message}"
        );
        assert_eq!(
            state_of(&app, &session).await,
            before,
            "nothing of {name} is visible"
        );
    }
    // The session goes on, versions and seqs without a hole.
    app.create_node(&session, Some(&root), "phase", "After")
        .await;
    let log = log_of(&app, &session, 0).await;
    assert_consecutive(&log, 1);
    until_no_clients(&app, &session).await;
    let live = state_of(&app, &session).await;
    assert_eq!(int_of(&live["version"]), int_of(&before["version"]) + 1);

    let dir = app.restart().await;
    let app = faulty_apply_app(dir).await;
    assert_eq!(
        state_of(&app, &session).await,
        live,
        "the store has what was acknowledged"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_breaks_the_graph_invariants_is_refused_naming_the_project() {
    // It edits the SQLite file behind the server's back.
    let app = App::start_sqlite().await;
    let (session, _) = app.create_project("restomod", "Tampered").await;
    let project = str_of(&info(&app, &session).await["project"]["id"]);
    let dir = app.restart().await;

    let store = SqliteStore::open(
        &dir.path().join("data").join("talus.db"),
        SqliteOptions::default(),
    )
    .unwrap();
    let id: Uuid = project.parse().unwrap();
    let loaded = store.load_project(id).await.unwrap().unwrap();
    let (version, state) = loaded.snapshot.unwrap();
    let mut state: Value = serde_json::from_str(&state).unwrap();
    // A root id that names no node.
    state["graph"]["roots"]
        .as_array_mut()
        .expect("the snapshot lists its roots")
        .push(json!(Uuid::new_v4()));
    store
        .commit(vec![Write::Snapshot {
            project_id: id,
            version,
            state: state.to_string(),
        }])
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let app = App::start_in(dir, |_| {}).await;
    let error = app
        .error(
            "mutation($p: ID!) { openProject(projectId: $p) { id } }",
            json!({ "p": project }),
        )
        .await;
    assert_eq!(code_of(&error), "INTERNAL", "{error}");
    let message = str_of(&error["message"]);
    assert!(
        message.contains(&project) && message.contains("invariants"),
        "{message}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_cannot_write_subscribing_replaying_and_queries_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let sqlite =
        SqliteStore::open(&config.data_dir.join("talus.db"), SqliteOptions::default()).unwrap();
    let (store, switch) = FaultyStore::new(sqlite);
    let app = App::start_on(dir, config, Arc::new(store)).await;
    let (session, root) = app.create_project("restomod", "Disk full").await;
    set_status(&app, &session, &root, 1).await;
    let last = last_seq(&app, &session).await;
    let before = state_of(&app, &session).await;

    switch.fail_writes(true);
    // A joined client (its ClientJoined cannot be stored) replays from 0.
    let mut ws = app.ws_as("reader", "Reader").await;
    follow(&mut ws, "replay", &session, 0).await;
    let events = ws.events_through("replay", last).await;
    assert_consecutive(&events, 1);
    assert_eq!(state_of(&app, &session).await, before);
    assert_eq!(int_of(&info(&app, &session).await["activeClients"]), 1);
    let failed = app
        .request(
            "mutation($s: ID!, $n: ID!) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"vin\", value: \"x\") { version } }",
            json!({ "s": session, "n": root }),
        )
        .await;
    assert_eq!(code_of(&first_error(&failed)), "STORE_UNAVAILABLE");

    // Writable again: the subscription is live and sees the next change.
    switch.fail_writes(false);
    set_status(&app, &session, &root, 2).await;
    let next = ws.next_event("replay").await;
    assert_eq!(int_of(&next["seq"]), last + 1, "{next}");
    ws.close().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_file_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("talus.db");
    let first = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let refused = SqliteStore::open(&path, SqliteOptions::default())
        .err()
        .expect("a second store is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    first.close().await;
    SqliteStore::open(&path, SqliteOptions::default()).expect("free again after close");
}
