//! `/metrics` after a scripted workload shows the expected counts.
//!
//! The metrics registry is one per process, so this file holds one test and
//! compares scrapes before and after the workload.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::json;

/// A scrape: `name{labels}` -> value.
async fn scrape(app: &App) -> HashMap<String, f64> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// The sum of every series of metric `name` whose labels include all of `labels`.
fn sum(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_count_operations_errors_connections_subscriptions_and_deliveries() {
    let app = App::start().await;
    let before = scrape(&app).await;

    let (session, root) = app.create_project("restomod", "Metrics").await;
    let mut ws = app.ws_as("metrics-ws", "Watcher").await;
    ws.subscribe_events("w", &session, Some(0)).await;
    ws.wait_joined("w").await;
    let during = scrape(&app).await;
    assert_eq!(
        get(&during, "talus_websocket_connections"),
        1.0,
        "one websocket open"
    );
    assert!(get(&during, "talus_subscriptions") >= 1.0, "{during:#?}");
    assert!(get(&during, "talus_sessions_live") >= 1.0);

    for name in ["One", "Two", "Three"] {
        app.query(
            "mutation AddPhase($s: ID!, $r: ID!, $n: String!) { createNode(sessionId: $s, input: { parentId: $r, typeId: \"phase\", name: $n }) { nodeId } }",
            json!({ "s": session, "r": root, "n": name }),
        )
        .await;
    }
    let error = app
        .error(
            "mutation Wrong($s: ID!, $r: ID!) { createNode(sessionId: $s, input: { parentId: $r, typeId: \"no-such-type\" }) { nodeId } }",
            json!({ "s": session, "r": root }),
        )
        .await;
    assert_eq!(code_of(&error), "NODE_TYPE_NOT_FOUND");
    let last = app.last_seq(&session).await;
    let received = ws.events_through("w", last).await.len() as f64;
    ws.close().await;

    let after = scrape(&app).await;
    let delta =
        |name: &str, labels: &[&str]| sum(&after, name, labels) - sum(&before, name, labels);
    assert_eq!(
        delta(
            "talus_graphql_operations_total",
            &["type=\"mutation\"", "name=\"AddPhase\"", "outcome=\"ok\""]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "talus_graphql_operations_total",
            &["type=\"mutation\"", "name=\"Wrong\"", "outcome=\"error\""]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "talus_graphql_errors_total",
            &["code=\"NODE_TYPE_NOT_FOUND\""]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "talus_graphql_operations_total",
            &["type=\"subscription\"", "outcome=\"ok\""]
        ),
        1.0,
        "the websocket's one subscription"
    );
    assert!(
        delta(
            "talus_graphql_operation_duration_seconds_count",
            &["type=\"mutation\""]
        ) >= 5.0,
        "createProject, three createNode, the failed one"
    );
    assert!(
        delta("talus_events_delivered_total", &[]) >= received,
        "at least the {received} events the websocket read"
    );
    assert!(
        delta("talus_events_published_total", &[]) >= 9.0 + 1.0,
        "three commands of three events, and a join"
    );
    assert!(
        delta("talus_commit_duration_seconds_count", &[]) >= 4.0,
        "each command's group was committed and timed"
    );
    assert!(delta("talus_commit_group_size_count", &[]) >= 4.0);
    // The closed websocket and its subscription are gone from the gauges.
    for _ in 0..100 {
        if get(&scrape(&app).await, "talus_websocket_connections") == 0.0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let closed = scrape(&app).await;
    assert_eq!(get(&closed, "talus_websocket_connections"), 0.0);
    assert_eq!(get(&closed, "talus_subscriptions"), 0.0);
}
