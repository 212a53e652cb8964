//! Event log retention: a `since` older than what is kept yields ResyncRequired, then live events.

mod common;

use common::{int_of, str_of, App};
use serde_json::json;

#[tokio::test]
async fn since_older_than_the_retained_log_gets_resync_required_then_live_events() {
    let app = App::start_with(|c| {
        c.session.event_retention = Some(50);
        c.session.recent_events = 16;
    })
    .await;
    let (session, root) = app.create_project("restomod", "Retention").await;
    for i in 0..100 {
        app.update_property(&session, &root, "vin", json!(format!("VIN-{i}")))
            .await;
    }
    // 300 events: the log crossed seq 256, so everything below 256 - 50 + 1 is pruned.
    let last = app.last_seq(&session).await;
    assert_eq!(last, 300);

    let mut ws = app.ws().await;
    ws.subscribe_events("old", &session, Some(5)).await;
    let first = ws.next_event("old").await;
    assert_eq!(str_of(&first["__typename"]), "ResyncRequired", "{first}");
    // The resync points at the newest seq (this client's own ClientJoined is already there).
    let resync_seq = int_of(&first["seq"]);
    assert!(resync_seq > last, "{first}");
    app.update_property(&session, &root, "vin", json!("after"))
        .await;
    let next = ws.next_event("old").await;
    assert_eq!(
        int_of(&next["seq"]),
        resync_seq + 1,
        "live events follow the resync"
    );

    // A `since` still inside the retained log replays normally.
    let mut ws2 = app.ws().await;
    ws2.subscribe_events("recent", &session, Some(last - 10))
        .await;
    for seq in last - 9..=last + 3 {
        let e = ws2.next_event("recent").await;
        assert_eq!(int_of(&e["seq"]), seq);
    }
}
