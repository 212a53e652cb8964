//! Session events over graphql-transport-ws: order, seqs, client ids, presence, disconnects, `since` replay and slow subscribers.

mod common;

use std::time::Duration;

use common::{assert_consecutive, int_of, seqs, str_of, types, App, RESULT_FIELDS};
use serde_json::{json, Value};

#[tokio::test]
async fn two_clients_on_one_session_receive_every_change_undo_and_redo_in_the_same_order() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Bronco").await;

    let mut alice = app.ws_as("alice", "Alice").await;
    alice.subscribe_events("a", &session, None).await;
    alice.wait_joined("a").await;
    let mut bob = app.ws_as("bob", "Bob").await;
    bob.subscribe_events("b", &session, None).await;
    let bob_joined = bob.wait_joined("b").await;
    assert_eq!(bob_joined["activeClients"], 2);
    assert_eq!(bob_joined["clientId"], "bob");
    assert_eq!(
        alice.next_event("a").await,
        bob_joined,
        "alice sees bob join"
    );

    // A mutation over alice's websocket, one over HTTP with x-client-id, undo over bob's websocket, redo over HTTP.
    let created = alice
        .operation(
            &format!("mutation($s: ID!, $r: ID!) {{ createNode(sessionId: $s, input: {{ parentId: $r, typeId: \"phase\", name: \"Teardown\" }}) {{ {RESULT_FIELDS} }} }}"),
            json!({ "s": session, "r": root }),
        )
        .await["createNode"]
        .clone();
    let phase = str_of(&created["nodeId"]);
    let carol = app.as_client("carol-rest");
    let changed = carol
        .update_property(&session, &root, "budget", json!("25000.50"))
        .await;
    let undone = bob
        .operation(
            &format!("mutation($s: ID!) {{ undo(sessionId: $s) {{ {RESULT_FIELDS} }} }}"),
            json!({ "s": session }),
        )
        .await["undo"]
        .clone();
    let redone = carol.redo(&session).await;

    let last = int_of(&redone["events"].as_array().unwrap().last().unwrap()["seq"]);
    let seen_by_alice = alice.events_through("a", last).await;
    let seen_by_bob = bob.events_through("b", last).await;
    assert_eq!(
        seen_by_alice, seen_by_bob,
        "both clients see the same events"
    );
    let events = seen_by_alice;
    assert_consecutive(&events, int_of(&bob_joined["seq"]) + 1);
    assert_eq!(
        types(&events),
        [
            "CommandExecuting",
            "NodeCreated",
            "CommandExecuted",
            "CommandExecuting",
            "PropertyChanged",
            "CommandExecuted",
            "PropertyChanged",
            "CommandUndone",
            "PropertyChanged",
            "CommandRedone",
        ]
    );
    let client_ids: Vec<&str> = events
        .iter()
        .map(|e| e["clientId"].as_str().unwrap())
        .collect();
    assert_eq!(
        client_ids,
        [
            "alice",
            "alice",
            "alice",
            "carol-rest",
            "carol-rest",
            "carol-rest",
            "bob",
            "bob",
            "carol-rest",
            "carol-rest"
        ]
    );

    // The events carry what happened.
    assert_eq!(events[0]["commandType"], "createNode");
    assert_eq!(events[1]["node"]["nodeId"], phase.as_str());
    assert_eq!(events[1]["node"]["name"], "Teardown");
    assert_eq!(events[1]["node"]["typeId"], "phase");
    assert_eq!(events[1]["parentId"], root.as_str());
    assert_eq!(events[1]["index"], 0);
    assert_eq!(events[2]["version"], 1);
    assert_eq!(events[4]["propertyId"], "budget");
    assert_eq!(events[4]["oldValue"], Value::Null);
    assert_ne!(events[4]["newValue"], Value::Null);
    assert_eq!(events[5]["version"], 2);
    assert_eq!(events[6]["oldValue"], events[4]["newValue"]);
    assert_eq!(events[6]["newValue"], Value::Null);
    assert_eq!(events[7]["commandType"], "updateProperty");
    assert_eq!(events[7]["version"], 3);
    assert_eq!(events[8]["newValue"], events[4]["newValue"]);
    assert_eq!(events[9]["version"], 4);
    for e in &events {
        assert_eq!(e["sessionId"], session.as_str());
    }
    let command = &events[3]["commandId"];
    assert!(events[3..6].iter().all(|e| e["commandId"] == *command));
    assert_eq!(changed["commandId"], *command);

    // Each mutation's result lists exactly the events subscribers got for it.
    let delivered = |from: usize, to: usize| -> Vec<Value> {
        events[from..to]
            .iter()
            .map(|e| json!({ "__typename": e["__typename"], "seq": e["seq"], "clientId": e["clientId"] }))
            .collect()
    };
    assert_eq!(created["events"].as_array().unwrap(), &delivered(0, 3));
    assert_eq!(changed["events"].as_array().unwrap(), &delivered(3, 6));
    assert_eq!(undone["events"].as_array().unwrap(), &delivered(6, 8));
    assert_eq!(redone["events"].as_array().unwrap(), &delivered(8, 10));
    assert_eq!(app.last_seq(&session).await, last);
}

#[tokio::test]
async fn clients_joining_and_leaving_are_announced_with_the_active_count_and_listed_in_the_session()
{
    let app = App::start().await;
    let (session, _) = app.create_project("restomod", "Scout").await;
    let mut watcher = app.ws_as("watcher", "Wanda").await;
    watcher.subscribe_events("w", &session, None).await;
    let joined = watcher.wait_joined("w").await;
    assert_eq!(
        joined["client"],
        json!({ "clientId": "watcher", "name": "Wanda" })
    );
    assert_eq!(joined["activeClients"], 1);

    // Dana subscribes twice on one connection: one client, announced once.
    let mut dana = app.ws_as("dana", "Dana").await;
    dana.subscribe_events("one", &session, None).await;
    dana.wait_joined("one").await;
    let event = watcher.next_event("w").await;
    assert_eq!(event["__typename"], "ClientJoined");
    assert_eq!(
        event["client"],
        json!({ "clientId": "dana", "name": "Dana" })
    );
    assert_eq!(event["activeClients"], 2);
    assert_eq!(event["clientId"], "dana");
    assert_eq!(event["commandId"], Value::Null);
    dana.subscribe_events("two", &session, Some(int_of(&event["seq"])))
        .await;

    let state = app.session(&session).await;
    assert_eq!(state["activeClients"], 2);
    let mut clients = state["clients"].as_array().unwrap().clone();
    clients.sort_by_key(|c| c["clientId"].as_str().unwrap().to_string());
    assert_eq!(
        clients,
        [
            json!({ "clientId": "dana", "name": "Dana" }),
            json!({ "clientId": "watcher", "name": "Wanda" })
        ]
    );

    // Leaving by unsubscribing: only the last subscription of a client makes it leave.
    dana.unsubscribe("one").await;
    dana.unsubscribe("two").await;
    let left = watcher.next_event("w").await;
    assert_eq!(
        left["__typename"], "ClientLeft",
        "no event before the last subscription ended: {left}"
    );
    assert_eq!(
        left["client"],
        json!({ "clientId": "dana", "name": "Dana" })
    );
    assert_eq!(left["activeClients"], 1);
    assert_eq!(left["seq"], int_of(&event["seq"]) + 1);

    // Leaving by closing the socket.
    let mut erin = app.ws_as("erin", "Erin").await;
    erin.subscribe_events("e", &session, None).await;
    erin.wait_joined("e").await;
    let joined = watcher.next_event("w").await;
    assert_eq!(
        (
            joined["__typename"].as_str(),
            joined["activeClients"].as_i64()
        ),
        (Some("ClientJoined"), Some(2))
    );
    erin.close().await;
    let left = watcher.next_event("w").await;
    assert_eq!(left["__typename"], "ClientLeft");
    assert_eq!(left["client"]["clientId"], "erin");
    assert_eq!(left["activeClients"], 1);

    let state = app.session(&session).await;
    assert_eq!(state["activeClients"], 1);
    assert_eq!(
        state["clients"],
        json!([{ "clientId": "watcher", "name": "Wanda" }])
    );
}

#[tokio::test]
async fn a_client_that_drops_its_connection_without_closing_leaves_the_session_undisturbed() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Camper").await;
    let mut watcher = app.subscribe(&session).await;
    let frank = app.ws_as("frank", "Frank").await;
    let mut frank = frank;
    frank.subscribe_events("f", &session, None).await;
    frank.wait_joined("f").await;
    let joined = watcher.event().await;
    assert_eq!(joined["client"]["clientId"], "frank");

    frank.drop_abruptly();
    let result = app
        .update_property(&session, &root, "vin", json!("VIN-1"))
        .await;
    assert_eq!(result["version"], 1, "mutations keep working");

    // Frank's ClientLeft and the change both arrive, in some order, with no gap.
    let mut events = Vec::new();
    while !(types(&events).contains(&"ClientLeft".to_string())
        && types(&events).contains(&"CommandExecuted".to_string()))
    {
        events.push(watcher.event().await);
    }
    assert_consecutive(&events, int_of(&joined["seq"]) + 1);
    let left = events
        .iter()
        .find(|e| e["__typename"] == "ClientLeft")
        .unwrap();
    assert_eq!(left["client"]["clientId"], "frank");
    assert_eq!(left["activeClients"], 1);
    assert_eq!(events.len(), 4);

    let next = app
        .update_property(&session, &root, "vin", json!("VIN-2"))
        .await;
    assert_eq!(next["version"], 2);
    let more = watcher.events(3).await;
    assert_consecutive(&more, int_of(&events[3]["seq"]) + 1);
    assert_eq!(more[1]["newValue"], "VIN-2");
    assert_eq!(app.session(&session).await["activeClients"], 1);
}

#[tokio::test]
async fn a_failed_command_yields_executing_then_failed_and_the_mutation_returns_the_same_error() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Mustang").await;
    let mut ws = app.subscribe(&session).await;
    let before = app.graph(&session).await;

    let error = app
        .as_client("gina")
        .error(
            "mutation($s: ID!, $r: ID!) { updateProperty(sessionId: $s, nodeId: $r, propertyId: \"horsepower\", value: 400) { version } }",
            json!({ "s": session, "r": root }),
        )
        .await;
    assert_eq!(common::code_of(&error), "UNKNOWN_PROPERTY");

    let events = ws.events(2).await;
    assert_eq!(types(&events), ["CommandExecuting", "CommandFailed"]);
    assert_consecutive(&events, int_of(&ws.joined.as_ref().unwrap()["seq"]) + 1);
    assert_eq!(events[0]["commandType"], "updateProperty");
    assert_eq!(events[1]["commandType"], "updateProperty");
    assert_eq!(events[1]["code"], "UNKNOWN_PROPERTY");
    assert_eq!(events[1]["message"], error["message"]);
    assert_eq!(events[0]["commandId"], events[1]["commandId"]);
    assert_eq!(events[1]["clientId"], "gina");
    assert_eq!(app.graph(&session).await, before, "nothing changed");
    assert_eq!(app.session(&session).await["canUndo"], false);
}

#[tokio::test]
async fn a_subscriber_with_since_during_concurrent_writes_gets_every_seq_exactly_once_in_order() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Writer").await;
    let (progress, mut written) = tokio::sync::watch::channel(0usize);
    let (subscribed, mut sent) = tokio::sync::watch::channel(false);
    let writer = {
        let http = app.as_client("writer");
        let (session, root) = (session.clone(), root.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                if i == 200 {
                    // However slow the subscriber's connection, the last 100
                    // writes race with its replay.
                    sent.wait_for(|s| *s).await.unwrap();
                }
                http.update_property(&session, &root, "vin", json!(format!("VIN-{i}")))
                    .await;
                progress.send_replace(i + 1);
            }
        })
    };

    tokio::time::timeout(common::TIMEOUT, written.wait_for(|n| *n >= 60))
        .await
        .expect("the writer makes progress")
        .unwrap();
    let since = app.last_seq(&session).await / 2;
    let mut ws = app.ws().await;
    ws.subscribe_events("late", &session, Some(since)).await;
    subscribed.send_replace(true);

    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finishes")
        .unwrap();
    let last = app.last_seq(&session).await;
    let events = ws.events_through("late", last).await;
    assert_consecutive(&events, since + 1);
    assert_eq!(*seqs(&events).last().unwrap(), last);
    let joins = events
        .iter()
        .filter(|e| e["__typename"] == "ClientJoined")
        .count();
    assert_eq!(joins, 1, "the subscriber's own join appears once");
    let changes = events
        .iter()
        .filter(|e| e["__typename"] == "PropertyChanged")
        .count();
    assert!(
        changes as i64 >= (last - since - 1) / 3,
        "replayed and live changes all arrive"
    );
    assert_eq!(
        events
            .iter()
            .rev()
            .find(|e| e["__typename"] == "PropertyChanged")
            .unwrap()["newValue"],
        "VIN-299"
    );
}

#[tokio::test]
async fn subscribers_that_never_read_catch_up_in_order_and_do_not_hold_up_the_writer() {
    let app = App::start_with(|c| {
        c.session.broadcast_capacity = 2;
        c.session.recent_events = 64;
    })
    .await;
    let (session, root) = app.create_project("restomod", "Firehose").await;
    // Three of them, so they catch up from the store together (sharing what it reads).
    let mut lazy = Vec::new();
    for _ in 0..3 {
        lazy.push(app.subscribe(&session).await);
    }
    let from = app.last_seq(&session).await + 1;

    // 20 batches of 100 changes: 2040 events, with values big enough to fill socket buffers.
    let filler = "x".repeat(600);
    let batch = "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }";
    let writes = async {
        for b in 0..20 {
            let commands: Vec<Value> = (0..100)
                .map(|i| json!({ "updateProperty": { "nodeId": root, "propertyId": "vin", "value": format!("{b}-{i}-{filler}") } }))
                .collect();
            let data = app
                .query(batch, json!({ "s": session, "c": commands }))
                .await;
            assert_eq!(data["executeBatch"]["version"], b + 1);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .expect("the writer finishes while the subscriber reads nothing");

    let last = app.last_seq(&session).await;
    assert_eq!(last - from + 1, 2040);
    let reads = lazy
        .iter_mut()
        .map(|ws| ws.events_through(common::EVENTS, last));
    for mut events in futures_util::future::join_all(reads).await {
        // The later subscribers also saw the joins of those after them.
        events.retain(|e| int_of(&e["seq"]) >= from);
        assert_consecutive(&events, from);
        assert!(!types(&events).contains(&"ResyncRequired".to_string()));
        for (b, chunk) in events.chunks(102).enumerate() {
            assert_eq!(chunk[0]["__typename"], "CommandExecuting");
            assert_eq!(chunk[101]["__typename"], "CommandExecuted");
            assert_eq!(chunk[101]["version"], b as i64 + 1);
            for (i, e) in chunk[1..101].iter().enumerate() {
                assert_eq!(e["newValue"], format!("{b}-{i}-{filler}"));
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped_and_leaves_the_session() {
    let app = App::start_with(|c| {
        c.ws_ping_interval = Duration::from_millis(100);
        c.ws_timeout = Duration::from_millis(1000);
    })
    .await;
    let (session, _) = app.create_project("restomod", "Half-open").await;
    // The watcher keeps reading, so tungstenite answers the server's pings for it.
    let mut watcher = app.subscribe(&session).await;
    let mut silent = app.ws_as("silent", "Silent").await;
    silent.subscribe_events("s", &session, None).await;
    silent.wait_joined("s").await;
    assert_eq!(watcher.event().await["client"]["clientId"], "silent");

    // From here on the silent client reads nothing, so it never answers a ping.
    let left = watcher.event().await;
    assert_eq!(left["__typename"], "ClientLeft");
    assert_eq!(left["client"]["clientId"], "silent");
    assert_eq!(left["activeClients"], 1);
    assert_eq!(app.session(&session).await["activeClients"], 1);
    drop(silent);
}
