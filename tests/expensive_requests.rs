//! The expensive-request limiter through the real server: big bodies and queries that list a
//! project's nodes run at most `--max-expensive-requests` at once, at most `--max-expensive-queue`
//! wait, one more is refused with LIMIT_EXCEEDED, and ordinary requests never wait for them.
//!
//! An expensive mutation is kept in flight by a commit hook that holds the
//! commits of commands, so what waits and what is refused is decided by the
//! limiter alone, not by timing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use common::{code_of, first_error, str_of, test_config, App, TIMEOUT};
use futures_util::future::{self, Either};
use serde_json::json;
use talus_tally::store::faulty::{CommitHook, HookedStore};
use talus_tally::store::{MemoryStore, StoreError, Write};
use tokio::sync::watch;

/// Holds the commits of commands while `held` is true.
#[derive(Default)]
struct Gate {
    held: watch::Sender<bool>,
    waiting: AtomicUsize,
}

#[async_trait]
impl CommitHook for Gate {
    async fn before_commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.iter().any(|w| matches!(w, Write::AppendOp { .. })) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _ = self.held.subscribe().wait_for(|held| !*held).await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A body of well over 16 KiB: an expensive request whatever it asks.
fn big_update(session: &str, node: &str) -> String {
    json!({
        "query": "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"vin\", value: $v) { version } }",
        "variables": { "s": session, "n": node, "v": "v".repeat(20 * 1024) },
    })
    .to_string()
}

fn big_query() -> String {
    json!({
        "query": "query($pad: String!) { __type(name: $pad) { name } }",
        "variables": { "pad": "p".repeat(20 * 1024) },
    })
    .to_string()
}

/// Sends an expensive update whose commit the gate holds, so it keeps the
/// only permit; returns once it is at the commit, with its answer to come.
async fn hold_the_permit(
    app: &App,
    store: &HookedStore<MemoryStore, Gate>,
    session: &str,
    node: &str,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    store.hook().held.send_replace(true);
    let answer = {
        let (http, body) = (app.http.clone(), big_update(session, node));
        tokio::spawn(async move { http.post_body(body).await })
    };
    tokio::time::timeout(TIMEOUT, async {
        while store.hook().waiting.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the update reaches the commit");
    answer
}

#[tokio::test]
async fn expensive_requests_run_one_at_a_time_queue_up_to_the_limit_and_ordinary_ones_never_wait() {
    let store = Arc::new(HookedStore::with_hook(MemoryStore::new(), Gate::default()));
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = test_config(dir.path());
    config.limits.max_expensive_requests = 1;
    config.limits.max_expensive_queue = 1;
    let app = App::start_on(dir, config, store.clone()).await;
    let (session, root) = app.create_project("restomod", "Busy").await;
    // A project of more nodes than `EXPENSIVE_ITEMS` (1,000): listing them is expensive.
    let (big, big_root) = app.create_project("project", "Big").await;
    for _ in 0..3 {
        let commands: Vec<_> = (0..400)
            .map(|i| json!({ "createNode": { "parentId": big_root, "typeId": "workstream", "name": format!("w{i}") } }))
            .collect();
        app.query(
            "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }",
            json!({ "s": big, "c": commands }),
        )
        .await;
    }

    // The first expensive request takes the only permit and keeps it while its commit is held.
    let first = hold_the_permit(&app, &store, &session, &root).await;

    // Two more expensive ones: one waits (the queue holds one), the other is refused.
    let second = {
        let (http, body) = (app.http.clone(), big_query());
        tokio::spawn(async move { http.post_body(body).await })
    };
    let third = {
        let (http, body) = (app.http.clone(), big_query());
        tokio::spawn(async move { http.post_body(body).await })
    };
    let first_answer = tokio::time::timeout(TIMEOUT, future::select(second, third))
        .await
        .expect("one of them is refused at once");
    let (refused, queued) = match first_answer {
        Either::Left((answer, other)) | Either::Right((answer, other)) => (answer.unwrap(), other),
    };
    let (status, body) = refused;
    assert_eq!(status, 503, "{body:#}");
    let error = first_error(&body);
    assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{body:#}");
    let message = str_of(&error["message"]);
    assert!(
        message.contains("max-expensive-requests is 1")
            && message.contains("max-expensive-queue is 1"),
        "{message}"
    );

    // Listing the 1,201 nodes of the big project is expensive too, through
    // the root field and through a session's graph alike: refused before the list is built.
    for query in [
        "query($s: ID!) { graph(sessionId: $s) { nodes { id } } }",
        "query($s: ID!) { session(id: $s) { graph { nodes { id } } } }",
        "query($s: ID!) { graph(sessionId: $s) { roots { children { id } } } }",
    ] {
        let nodes = app.request(query, json!({ "s": big })).await;
        let error = first_error(&nodes);
        assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{query}: {nodes:#}");
        assert!(str_of(&error["message"]).contains("max-expensive-queue is 1"));
    }

    // Ordinary requests are answered while all of this waits, listing the
    // nodes of a small project among them: its document is as complex as
    // the refused one, but what it lists is small.
    let ordinary = app
        .query(
            "query($s: ID!) { graph(sessionId: $s) { version nodeCount roots { id name } nodes { id } } }",
            json!({ "s": session }),
        )
        .await;
    assert_eq!(ordinary["graph"]["version"], 0);
    assert_eq!(ordinary["graph"]["nodes"].as_array().map(Vec::len), Some(1));
    let big_count = app
        .query(
            "query($s: ID!) { graph(sessionId: $s) { nodeCount roots { name } } }",
            json!({ "s": big }),
        )
        .await;
    assert_eq!(big_count["graph"]["nodeCount"], 1201);
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert!(
        !queued.is_finished(),
        "the queued request waits for the permit"
    );
    assert!(!first.is_finished());

    // Releasing the commit frees the permit: the first answers, then the queued one runs.
    store.hook().held.send_replace(false);
    let (status, body) = tokio::time::timeout(TIMEOUT, first).await.unwrap().unwrap();
    assert_eq!(
        (status, &body["data"]["updateProperty"]["version"]),
        (200, &json!(1)),
        "{body:#}"
    );
    let (status, body) = tokio::time::timeout(TIMEOUT, queued)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["data"], json!({ "__type": null }), "{body:#}");
    // With the permit free, the big nodes query runs.
    let nodes = app
        .query(
            "query($s: ID!) { graph(sessionId: $s) { nodes { id } } }",
            json!({ "s": big }),
        )
        .await;
    assert_eq!(nodes["graph"]["nodes"].as_array().map(Vec::len), Some(1201));
    // Lists that are small each count together: three aliases of the graph
    // of a 401-node project are 1,203 items, an expensive request.
    let (medium, medium_root) = app.create_project("project", "Medium").await;
    let commands: Vec<_> = (0..400)
        .map(|i| json!({ "createNode": { "parentId": medium_root, "typeId": "workstream", "name": format!("m{i}") } }))
        .collect();
    app.query(
        "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }",
        json!({ "s": medium, "c": commands }),
    )
    .await;
    let aliases = "query($s: ID!) { a: graph(sessionId: $s) { nodes { id } } b: graph(sessionId: $s) { nodes { id } } c: graph(sessionId: $s) { nodes { id } } }";
    let one = app
        .query(
            "query($s: ID!) { graph(sessionId: $s) { nodes { id } } }",
            json!({ "s": medium }),
        )
        .await;
    assert_eq!(one["graph"]["nodes"].as_array().map(Vec::len), Some(401));
    // While the permit is held and the queue is full, the aliased listing
    // is refused like one big list.
    let holder = hold_the_permit(&app, &store, &session, &root).await;
    // Two such requests: one waits in the queue, the other is refused at
    // once. Were the aliases not counted together, both would run.
    let body = json!({ "query": aliases, "variables": { "s": medium } }).to_string();
    let (x, y) = (
        tokio::spawn({
            let (http, body) = (app.http.clone(), body.clone());
            async move { http.post_body(body).await }
        }),
        tokio::spawn({
            let (http, body) = (app.http.clone(), body.clone());
            async move { http.post_body(body).await }
        }),
    );
    let (refused, waiter) = match tokio::time::timeout(TIMEOUT, future::select(x, y))
        .await
        .expect("one of them is refused at once")
    {
        Either::Left((answer, other)) | Either::Right((answer, other)) => (answer.unwrap(), other),
    };
    let error = first_error(&refused.1);
    assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{:#}", refused.1);
    assert!(str_of(&error["message"]).contains("max-expensive-queue is 1"));
    store.hook().held.send_replace(false);
    assert_eq!(
        tokio::time::timeout(TIMEOUT, holder)
            .await
            .unwrap()
            .unwrap()
            .0,
        200
    );
    let (status, body) = tokio::time::timeout(TIMEOUT, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status, body["data"]["c"]["nodes"].as_array().map(Vec::len)),
        (200, Some(401))
    );

    // With the permit free, many resolvers of one request that cross the
    // count at once share the request's one permit (none waits for it).
    let all = app.query(aliases, json!({ "s": medium })).await;
    assert_eq!(all["c"]["nodes"].as_array().map(Vec::len), Some(401));
    let nested = app
        .query(
            "query($s: ID!) { graph(sessionId: $s) { roots { children { a: parent { id } b: parent { id } c: parent { id } } } } }",
            json!({ "s": medium }),
        )
        .await;
    assert_eq!(
        nested["graph"]["roots"][0]["children"]
            .as_array()
            .map(Vec::len),
        Some(400)
    );
}
