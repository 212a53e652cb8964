//! The session actor's lifecycle seen from outside: group commit, order, restart after idling, and a close that waits for the group in flight.
//!
//! The store here is a memory store behind a commit hook that records every
//! commit and can hold commits back, so a test can keep a group in flight while it queues more
//! work or closes the session.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{code_of, first_error, int_of, test_config, App, TIMEOUT};
use parking_lot::Mutex;
use serde_json::{json, Value};
use talus_tally::store::faulty::{CommitHook, HookedStore};
use talus_tally::store::{MemoryStore, Store, StoreError, Write};
use tokio::sync::watch;
use uuid::Uuid;

/// Logs each commit's writes and, while held, makes the commits of commands wait.
#[derive(Default)]
struct Gate {
    log: Mutex<Vec<Vec<Write>>>,
    held: watch::Sender<bool>,
    /// Commits currently waiting at the gate.
    waiting: AtomicUsize,
}

/// A memory store behind the gate.
type GatedStore = HookedStore<MemoryStore, Gate>;

fn gated_store() -> Arc<GatedStore> {
    Arc::new(HookedStore::with_hook(MemoryStore::new(), Gate::default()))
}

impl Gate {
    fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Waits until `n` commits are held at the gate.
    async fn until_waiting(&self, n: usize) {
        tokio::time::timeout(TIMEOUT, async {
            while self.waiting.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("commits reach the gate");
    }

    /// The versions of the ops of each commit that appended any, in commit order.
    fn op_groups(&self) -> Vec<Vec<u64>> {
        self.log
            .lock()
            .iter()
            .map(|writes| {
                writes
                    .iter()
                    .filter_map(|w| match w {
                        Write::AppendOp { version, .. } => Some(*version),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|ops| !ops.is_empty())
            .collect()
    }
}

#[async_trait]
impl CommitHook for Gate {
    async fn before_commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        // Only the commits of commands wait: creating or closing a session does not.
        if writes.iter().any(|w| matches!(w, Write::AppendOp { .. })) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _ = self.held.subscribe().wait_for(|held| !*held).await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.log.lock().push(writes.to_vec());
        Ok(())
    }
}

async fn start(store: Arc<GatedStore>) -> App {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = test_config(dir.path());
    App::start_on(dir, config, store).await
}

const SET_VIN: &str = "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"vin\", value: $v) { version } }";

/// Sends `count` updateProperty at once, each from its own task; their answers in sending order.
fn send_updates(
    app: &App,
    session: &str,
    root: &str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Value>> {
    (0..count)
        .map(|i| {
            let http = app.http.clone();
            let variables = json!({ "s": session, "n": root, "v": format!("VIN-{i}") });
            tokio::spawn(async move { http.request(SET_VIN, variables).await })
        })
        .collect()
}

#[tokio::test]
async fn commands_queued_behind_a_commit_are_committed_together_in_order() {
    let store = gated_store();
    let app = start(store.clone()).await;
    let (session, root) = app.create_project("restomod", "Grouped").await;

    store.hook().hold(true);
    let first = send_updates(&app, &session, &root, 1);
    store.hook().until_waiting(1).await;
    // These queue behind the held commit.
    let rest = send_updates(&app, &session, &root, 20);
    // Give the requests time to reach the session's queue (a slow machine
    // only makes the second group smaller, not the test wrong).
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.hook().hold(false);

    let mut versions = Vec::new();
    for handle in first.into_iter().chain(rest) {
        let answer = handle.await.expect("the request task");
        assert!(answer.get("errors").is_none(), "{answer:#}");
        versions.push(int_of(&answer["data"]["updateProperty"]["version"]));
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=21).collect::<Vec<i64>>());

    let groups = store.hook().op_groups();
    let flat: Vec<u64> = groups.iter().flatten().copied().collect();
    assert_eq!(
        flat,
        (1..=21).collect::<Vec<u64>>(),
        "ops in order: {groups:?}"
    );
    assert!(
        groups.len() < 21,
        "queued commands share a commit: {groups:?}"
    );

    // The session went idle; the next command starts its writer again.
    let answer = app
        .query(SET_VIN, json!({ "s": session, "n": root, "v": "VIN-last" }))
        .await;
    assert_eq!(answer["updateProperty"]["version"], 22);
}

#[tokio::test]
async fn closing_a_session_waits_for_its_commit_in_flight_and_nothing_is_written_after() {
    let store = gated_store();
    let app = start(store.clone()).await;
    let (session, root) = app.create_project("restomod", "Closing").await;
    let session_id: Uuid = session.parse().expect("a uuid");

    store.hook().hold(true);
    let updates = send_updates(&app, &session, &root, 5);
    store.hook().until_waiting(1).await;
    let close = {
        let http = app.http.clone();
        let s = session.clone();
        tokio::spawn(async move {
            http.request(
                "mutation($s: ID!) { closeSession(id: $s) }",
                json!({ "s": s }),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !close.is_finished(),
        "closeSession returned while a group of the session was not committed"
    );
    store.hook().hold(false);

    let closed = close.await.expect("the close task");
    assert_eq!(closed["data"]["closeSession"], true, "{closed:#}");
    let mut versions = Vec::new();
    for handle in updates {
        let answer = handle.await.expect("the request task");
        if answer.get("errors").is_some() {
            // Only a request that reached the session after the close may fail.
            assert_eq!(code_of(&first_error(&answer)), "SESSION_NOT_FOUND");
        } else {
            versions.push(int_of(&answer["data"]["updateProperty"]["version"]));
        }
    }
    versions.sort_unstable();
    let applied = versions.len();
    assert!(applied >= 1, "the update in flight was committed");
    assert_eq!(versions, (1..=applied as i64).collect::<Vec<i64>>());

    // The session's deletion is the last write that names it: no group of
    // its actor was committed after it (that would bring the session back).
    let log = store.hook().log.lock().clone();
    let deleted_at = log
        .iter()
        .position(|writes| writes.contains(&Write::DeleteSession(session_id)))
        .expect("the session was deleted");
    let names_session = |w: &Write| match w {
        Write::UpsertSession(r) => r.id == session_id,
        Write::AppendEvents { session_id: s, .. } => *s == session_id,
        _ => false,
    };
    assert!(
        log[deleted_at + 1..]
            .iter()
            .all(|writes| !writes.iter().any(names_session)),
        "nothing written for the session after it was deleted"
    );
    assert!(store.sessions().await.unwrap().is_empty());
    let project = store.projects().await.unwrap().remove(0);
    assert_eq!(
        project.version, applied as u64,
        "every answered update is stored"
    );
    assert_eq!(app.session(&session).await, Value::Null);
}

/// Commits through the memory store's `commit_now` (as the in-memory store
/// does: under the session's lock, the group kept applied), and refuses them
/// while switched on.
#[derive(Default)]
struct RefuseNow {
    refusing: std::sync::atomic::AtomicBool,
    immediate: AtomicUsize,
}

#[async_trait]
impl CommitHook for RefuseNow {
    async fn before_commit(&self, _: &[Write]) -> Result<(), StoreError> {
        Ok(())
    }

    fn before_commit_now(&self, _: &[Write]) -> Option<Result<(), StoreError>> {
        self.immediate.fetch_add(1, Ordering::SeqCst);
        if self.refusing.load(Ordering::SeqCst) {
            return Some(Err(StoreError::Full("injected: disk full".into())));
        }
        Some(Ok(()))
    }
}

/// Sets the root's vin and returns the answer.
async fn set_vin(app: &App, session: &str, root: &str, vin: &str) -> Value {
    app.http
        .request(SET_VIN, json!({ "s": session, "n": root, "v": vin }))
        .await
}

#[tokio::test]
async fn a_change_refused_by_a_store_that_commits_at_once_is_taken_back() {
    let store = Arc::new(HookedStore::with_hook(
        MemoryStore::new(),
        RefuseNow::default(),
    ));
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = test_config(dir.path());
    let app = App::start_on(dir, config, store.clone()).await;
    let (session, root) = app.create_project("restomod", "At once").await;

    let ok = set_vin(&app, &session, &root, "VIN-1").await;
    assert_eq!(int_of(&ok["data"]["updateProperty"]["version"]), 1, "{ok}");
    let before = app.graph(&session).await;
    let seq_before = app.last_seq(&session).await;
    let undo_before = app.session(&session).await["canUndo"].clone();

    store.hook().refusing.store(true, Ordering::SeqCst);
    let refused = set_vin(&app, &session, &root, "VIN-2").await;
    assert_eq!(
        code_of(&first_error(&refused)),
        "STORE_UNAVAILABLE",
        "{refused}"
    );
    // Nothing of it is left: graph, log and history are as before.
    assert_eq!(app.graph(&session).await, before);
    assert_eq!(app.last_seq(&session).await, seq_before);
    assert_eq!(app.session(&session).await["canUndo"], undo_before);
    let stored = store
        .inner()
        .events(Uuid::parse_str(&session).unwrap(), 0, 10_000)
        .await
        .unwrap();
    assert_eq!(stored.last().map(|e| e.seq as i64), Some(seq_before));

    store.hook().refusing.store(false, Ordering::SeqCst);
    let again = set_vin(&app, &session, &root, "VIN-3").await;
    assert_eq!(
        int_of(&again["data"]["updateProperty"]["version"]),
        2,
        "{again}"
    );
    // Undo takes the kept change back to the first one's value.
    let undone = app
        .http
        .request(
            "mutation($s: ID!) { undo(sessionId: $s) { version } }",
            json!({ "s": session }),
        )
        .await;
    assert_eq!(int_of(&undone["data"]["undo"]["version"]), 3, "{undone}");
    assert_eq!(app.graph(&session).await["nodes"], before["nodes"]);
    assert!(store.hook().immediate.load(Ordering::SeqCst) >= 4);
}
