//! Presence at scale: joins and leaves coalesced per session per interval.
//!
//! The first change after a quiet interval is its own ClientJoined/ClientLeft
//! at once; later ones within the interval are folded into one
//! PresenceChanged when it ends. Here the interval's end is a gate
//! (`SessionConfig::presence_gate`): a folded event is sent only when the test
//! adds a permit, so what is folded never depends on timing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_consecutive, int_of, App, Ws, TIMEOUT};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// A server whose presence windows last until the test opens `gate` (and 10 minutes otherwise).
async fn gated(list_limit: usize) -> (App, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let app = App::start_with(move |c| {
        c.session.presence_interval = Duration::from_secs(600);
        c.session.presence_list_limit = list_limit;
        c.session.presence_gate = Some(g);
    })
    .await;
    (app, gate)
}

/// Waits until the session counts `n` active clients (its presence is committed).
async fn wait_active(app: &App, session: &str, n: i64) {
    tokio::time::timeout(TIMEOUT, async {
        while app.session(session).await["activeClients"] != n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the session never had {n} active clients"));
}

/// A connection of `id` subscribed to the session's events (as "e"), not waiting for anything.
async fn join(app: &App, session: &str, id: &str) -> Ws {
    let mut ws = app.ws_as(id, &id.to_uppercase()).await;
    ws.subscribe_events("e", session, None).await;
    ws
}

fn ids(clients: &Value) -> Vec<&str> {
    clients
        .as_array()
        .expect("a list of clients")
        .iter()
        .map(|c| c["clientId"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_single_join_is_its_own_client_joined_at_once() {
    // The gate is never opened: a folded join would never arrive.
    let (app, _gate) = gated(100).await;
    let (session, _) = app.create_project("restomod", "Solo").await;
    let mut ann = join(&app, &session, "ann").await;
    let joined = ann.next_event("e").await;
    assert_eq!(joined["__typename"], "ClientJoined", "{joined}");
    assert_eq!(
        joined["client"],
        json!({ "clientId": "ann", "name": "ANN" })
    );
    assert_eq!(joined["activeClients"], 1);
}

#[tokio::test]
async fn joins_within_the_interval_become_one_presence_changed_beside_the_graph_events() {
    let (app, gate) = gated(100).await;
    let (session, root) = app.create_project("restomod", "Crowd").await;
    let mut ann = join(&app, &session, "ann").await;
    let first = ann.wait_joined("e").await;
    assert_eq!(first["__typename"], "ClientJoined");

    // Three more within the window: no event yet, but they are present.
    let mut others = Vec::new();
    for (n, id) in ["bob", "cy", "dee"].into_iter().enumerate() {
        others.push(join(&app, &session, id).await);
        wait_active(&app, &session, n as i64 + 2).await;
    }
    // A change meanwhile arrives at once, on the same subscription.
    app.update_property(&session, &root, "vin", json!("VIN-9"))
        .await;
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|e: &Value| e["__typename"] != "CommandExecuted")
    {
        events.push(ann.next_event("e").await);
    }
    assert!(
        events.iter().all(|e| e["__typename"] != "PresenceChanged"),
        "{events:?}"
    );

    gate.add_permits(1);
    let folded = ann.next_event("e").await;
    events.push(folded.clone());
    assert_consecutive(&events, int_of(&first["seq"]) + 1);
    assert_eq!(folded["__typename"], "PresenceChanged", "{folded}");
    assert_eq!(ids(&folded["joined"]), ["bob", "cy", "dee"]);
    assert_eq!(
        folded["joined"][0],
        json!({ "clientId": "bob", "name": "BOB" })
    );
    assert_eq!(folded["left"], json!([]));
    assert_eq!(folded["joinedCount"], 3);
    assert_eq!(folded["leftCount"], 0);
    assert_eq!(folded["activeClients"], 4);
    assert_eq!(folded["clientId"], Value::Null);
    // Each of the three learns of its own join from it.
    for ws in &mut others {
        assert_eq!(ws.wait_joined("e").await["seq"], folded["seq"]);
    }
    assert_eq!(app.session(&session).await["activeClients"], 4);
}

#[tokio::test]
async fn the_lists_are_bounded_and_the_counts_exact() {
    let (app, gate) = gated(2).await;
    let (session, _) = app.create_project("restomod", "Bounded").await;
    let mut ann = join(&app, &session, "ann").await;
    ann.wait_joined("e").await;
    let mut others = Vec::new();
    for (n, id) in ["b1", "b2", "b3", "b4", "b5"].into_iter().enumerate() {
        others.push(join(&app, &session, id).await);
        wait_active(&app, &session, n as i64 + 2).await;
    }
    // Two leave again within the same window.
    for n in 0..2 {
        others.remove(0).close().await;
        wait_active(&app, &session, 5 - n).await;
    }
    gate.add_permits(1);
    let folded = ann.next_event("e").await;
    assert_eq!(folded["__typename"], "PresenceChanged", "{folded}");
    assert_eq!(ids(&folded["joined"]), ["b1", "b2"]);
    assert_eq!(folded["joinedCount"], 5);
    assert_eq!(ids(&folded["left"]), ["b1", "b2"]);
    assert_eq!(folded["leftCount"], 2);
    assert_eq!(folded["activeClients"], 4);
}

#[tokio::test]
async fn a_window_with_one_change_sends_it_as_its_own_event() {
    let (app, gate) = gated(100).await;
    let (session, _) = app.create_project("restomod", "Pair").await;
    let mut ann = join(&app, &session, "ann").await;
    let first = ann.wait_joined("e").await;
    let mut bob = join(&app, &session, "bob").await;
    wait_active(&app, &session, 2).await;
    gate.add_permits(1);
    let joined = ann.next_event("e").await;
    assert_eq!(joined["__typename"], "ClientJoined", "{joined}");
    assert_eq!(joined["client"]["clientId"], "bob");
    assert_eq!(joined["activeClients"], 2);
    assert_eq!(joined["seq"], int_of(&first["seq"]) + 1);
    assert_eq!(bob.wait_joined("e").await["seq"], joined["seq"]);

    // The window goes on after a send: bob's leave is folded too, and sent
    // as its own ClientLeft when the window ends.
    bob.close().await;
    wait_active(&app, &session, 1).await;
    gate.add_permits(1);
    let left = ann.next_event("e").await;
    assert_eq!(left["__typename"], "ClientLeft", "{left}");
    assert_eq!(left["client"]["clientId"], "bob");
    assert_eq!(left["activeClients"], 1);
}

#[tokio::test]
async fn a_shutdown_records_the_leaves_of_a_session_as_one_event() {
    // No coalescing while running (the test default): each join is its own event.
    let app = App::start().await;
    let (session, _) = app.create_project("restomod", "Closing").await;
    let mut clients = Vec::new();
    for id in ["ann", "bob", "cy"] {
        let mut ws = join(&app, &session, id).await;
        ws.wait_joined("e").await;
        clients.push(ws);
    }
    let before = app.last_seq(&session).await;
    let dir = app.restart().await;
    drop(clients);

    let app = App::start_in(dir, |_| {}).await;
    assert_eq!(app.session(&session).await["activeClients"], 0);
    let last = app.last_seq(&session).await;
    assert_eq!(last, before + 1, "one event for the three leaves");
    let mut auditor = app.ws_as("auditor", "Auditor").await;
    auditor.subscribe_events("r", &session, Some(before)).await;
    let left = auditor.next_event("r").await;
    assert_eq!(left["__typename"], "PresenceChanged", "{left}");
    assert_eq!(left["seq"], last);
    let mut gone = ids(&left["left"]);
    gone.sort();
    assert_eq!(gone, ["ann", "bob", "cy"]);
    assert_eq!(left["leftCount"], 3);
    assert_eq!(left["joinedCount"], 0);
    assert_eq!(left["activeClients"], 0);
}
