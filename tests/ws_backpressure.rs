//! Websocket backpressure: a subscriber that stops reading is held to a bounded queue, falls back to
//! the event log (or `ResyncRequired`), and is dropped when it does not drain within the timeout.

mod common;

use std::time::Duration;

use common::{assert_consecutive, int_of, App, EVENTS};
use serde_json::{json, Value};

/// Writes `batches` executeBatch requests of `per_batch` property changes with values of `bytes`.
async fn write(
    app: &App,
    session: &str,
    node: &str,
    batches: usize,
    per_batch: usize,
    bytes: usize,
) {
    let filler = "x".repeat(bytes);
    let batch = "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }";
    for b in 0..batches {
        let commands: Vec<Value> = (0..per_batch)
            .map(|i| json!({ "updateProperty": { "nodeId": node, "propertyId": "vin", "value": format!("{b}-{i}-{filler}") } }))
            .collect();
        app.query(batch, json!({ "s": session, "c": commands }))
            .await;
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_past_the_retained_log_gets_resync_required_not_a_buffered_backlog(
) {
    let app = App::start_with(|c| {
        // The memory store prunes the log like SQLite does; what is tested is
        // the transport and the subscription, and 16 MB of fsynced SQLite
        // writes took most of this test's time.
        c.in_memory = true;
        c.session.event_retention = Some(100);
        c.session.recent_events = 16;
        c.session.broadcast_capacity = 2;
        c.ws_queue = 4;
    })
    .await;
    let (session, root) = app.create_project("restomod", "Stalled").await;
    let mut slow = app.slow_reader("slow").await;
    slow.subscribe_events(EVENTS, &session, None).await;
    slow.wait_joined(EVENTS).await;
    let from = app.last_seq(&session).await + 1;

    // 1,020 events of about 16 KiB each (old and new value) while it reads
    // nothing: far more than its queue, its socket buffers and the 100 events
    // the log keeps.
    tokio::time::timeout(common::TIMEOUT, write(&app, &session, &root, 10, 100, 8000))
        .await
        .expect("the writer is not held up by the subscriber");
    let last = app.last_seq(&session).await;
    assert_eq!(last - from + 1, 1020);

    // Reading again: what was queued, then ResyncRequired (the events it
    // missed are gone from the log), then live events again.
    let mut before = Vec::new();
    let resync = loop {
        let event = slow.event().await;
        if event["__typename"] == "ResyncRequired" {
            break event;
        }
        before.push(event);
    };
    assert!(
        resync["reason"]
            .as_str()
            .unwrap()
            .contains("no longer retained"),
        "{resync}"
    );
    assert_consecutive(&before, from);
    // What it still got: its queue (4 frames), the rest of the committed
    // group its stream was in, and what the kernel's socket buffers took
    // (autotuned up to 4 MiB on Linux), but nothing held for it in memory.
    assert!(
        before.len() <= 512,
        "only the queue and the socket buffers held events for it, not {} events",
        before.len()
    );
    app.update_property(&session, &root, "vin", json!("after"))
        .await;
    let mut after = slow.event().await;
    // Events committed between the resync and now may come first.
    while after["__typename"] != "CommandExecuting" || int_of(&after["seq"]) <= last {
        after = slow.event().await;
    }
    assert!(int_of(&after["seq"]) > int_of(&resync["seq"]));
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_after_the_write_timeout_and_leaves_the_session()
{
    let app = App::start_with(|c| {
        c.in_memory = true;
        // Pings alone would not find it within the test: only the write timeout can.
        c.ws_ping_interval = Duration::from_secs(3600);
        c.ws_timeout = Duration::from_millis(500);
        c.ws_queue = 4;
    })
    .await;
    let (session, root) = app.create_project("restomod", "Dropped").await;
    let mut watcher = app.subscribe(&session).await;
    let mut slow = app.slow_reader("stalled").await;
    slow.subscribe_events(EVENTS, &session, None).await;
    slow.wait_joined(EVENTS).await;
    assert_eq!(watcher.event().await["client"]["clientId"], "stalled");

    // The watcher keeps reading while changes pile up on the stalled socket.
    let left = async {
        loop {
            let event = watcher.event().await;
            if event["__typename"] == "ClientLeft" {
                return event;
            }
        }
    };
    let writes = async {
        loop {
            write(&app, &session, &root, 1, 50, 2000).await;
        }
    };
    let left = tokio::select! {
        left = left => left,
        _ = writes => unreachable!("the writer never ends"),
    };
    assert_eq!(left["client"]["clientId"], "stalled");
    assert_eq!(left["activeClients"], 1);
    assert_eq!(app.session(&session).await["activeClients"], 1);
    drop(slow);
}
