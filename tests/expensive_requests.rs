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

#[tokio::test]
async fn expensive_requests_run_one_at_a_time_queue_up_to_the_limit_and_ordinary_ones_never_wait() {
    let store = Arc::new(HookedStore::with_hook(MemoryStore::new(), Gate::default()));
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = test_config(dir.path());
    config.limits.max_expensive_requests = 1;
    config.limits.max_expensive_queue = 1;
    let app = App::start_on(dir, config, store.clone()).await;
    let (session, root) = app.create_project("restomod", "Busy").await;

    // The first expensive request takes the only permit and keeps it while its commit is held.
    store.hook().held.send_replace(true);
    let first = {
        let (http, body) = (app.http.clone(), big_update(&session, &root));
        tokio::spawn(async move { http.post_body(body).await })
    };
    tokio::time::timeout(TIMEOUT, async {
        while store.hook().waiting.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first update reaches the commit");

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

    // A query listing the nodes is expensive too: the engine refuses it before executing.
    let nodes = app
        .request(
            "query($s: ID!) { graph(sessionId: $s) { nodes { id } } }",
            json!({ "s": session }),
        )
        .await;
    let error = first_error(&nodes);
    assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{nodes:#}");
    assert!(str_of(&error["message"]).contains("max-expensive-queue is 1"));

    // Ordinary requests are answered while all of this waits.
    let ordinary = app
        .query(
            "query($s: ID!) { graph(sessionId: $s) { version nodeCount roots { id name } } }",
            json!({ "s": session }),
        )
        .await;
    assert_eq!(ordinary["graph"]["version"], 0);
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
    // With the permit free, the nodes query runs.
    let nodes = app
        .query(
            "query($s: ID!) { graph(sessionId: $s) { nodes { id } } }",
            json!({ "s": session }),
        )
        .await;
    assert_eq!(nodes["graph"]["nodes"].as_array().map(Vec::len), Some(1));
}
