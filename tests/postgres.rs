//! The PostgreSQL store and a cluster of instances on it, against a private PostgreSQL started by the tests.
//!
//! Every test gets its own database on one cluster per test process
//! (`common::postgres`). Without PostgreSQL binaries each test says it was
//! skipped and how to install them; with `TALUS_REQUIRE_POSTGRES=1` it fails.

#[path = "common/binary.rs"]
mod binary;
mod common;
#[path = "common/store_suite.rs"]
mod store_suite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::{cluster, options};
use store_suite::events;
use talus_tally::domain::Role;
use talus_tally::store::{
    Doorbell, Fence, LeaseClaim, Membership, PostgresStore, Store, StoreError, Write,
};
use uuid::Uuid;

/// The cluster, or an early return after the skip notice.
macro_rules! cluster_or_skip {
    () => {
        match cluster() {
            Some(c) => c,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_round_trips_exactly_as_in_the_memory_store() {
    let pg = cluster_or_skip!();
    let (_, store) = pg.store().await;
    store_suite::round_trips_as_the_memory_store(&store).await;
    store_suite::put_snapshot_is_a_snapshot_commit(&store).await;
    store.close().await;
    let error = store
        .commit(vec![events(Uuid::new_v4(), [1])])
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "store unavailable: the store is closed");
}

/// Also the benchmark of commits on PostgreSQL: it prints commits per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_32_tasks_all_land() {
    let pg = cluster_or_skip!();
    let (_, store) = pg.store().await;
    let store: Arc<dyn Store> = Arc::new(store);
    let elapsed = store_suite::concurrent_commits_all_land(store.clone(), 32, 30).await;
    println!(
        "{} commits from 32 tasks in {elapsed:.2?}: {:.0} commits/s",
        32 * 30,
        (32 * 30) as f64 / elapsed.as_secs_f64()
    );
    store.close().await;
}

/// A plain connection to the test database, beside the store under test.
async fn psql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn schema_version(url: &str) -> i64 {
    psql(url)
        .await
        .query_one("SELECT version FROM talus_schema", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_on_an_empty_database_migrate_it_once() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let starts = (0..3).map(|i| {
        let url = url.clone();
        tokio::spawn(async move {
            PostgresStore::connect(&url, options(&format!("i{i}")))
                .await
                .unwrap()
        })
    });
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap());
    }
    assert_eq!(schema_version(&url).await, 4);
    let s = Uuid::new_v4();
    stores[0].commit(vec![events(s, 1..=2)]).await.unwrap();
    assert_eq!(stores[2].event_range(s).await.unwrap(), Some((1, 2)));
    // A restart on the migrated database changes nothing.
    drop(stores);
    let again = PostgresStore::connect(&url, options("again"))
        .await
        .unwrap();
    assert_eq!(again.event_range(s).await.unwrap(), Some((1, 2)));
    assert_eq!(schema_version(&url).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_schema_gains_the_memberships_table_and_keeps_its_data() {
    let pg = cluster_or_skip!();
    let (url, store) = pg.store().await;
    let s = Uuid::new_v4();
    store.commit(vec![events(s, 1..=3)]).await.unwrap();
    store.close().await;
    // Schema 1 as an earlier release left it: no project_members table, no owner_url, no fence function.
    psql(&url)
        .await
        .batch_execute(
            "DROP FUNCTION talus_fence; DROP TABLE project_members; ALTER TABLE session_leases DROP COLUMN owner_url; UPDATE talus_schema SET version = 1",
        )
        .await
        .unwrap();

    let store = PostgresStore::connect(&url, options("upgraded"))
        .await
        .unwrap();

    assert_eq!(schema_version(&url).await, 4);
    assert_eq!(store.event_range(s).await.unwrap(), Some((1, 3)));
    assert_eq!(store.memberships().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_2_gains_the_lease_owner_address_and_keeps_its_leases() {
    let pg = cluster_or_skip!();
    let (url, store) = pg.store().await;
    let s = Uuid::new_v4();
    let LeaseClaim::Held(fence) = store.take_lease(s).await.unwrap() else {
        panic!("a free lease is taken");
    };
    store.close().await;
    psql(&url)
        .await
        .batch_execute(
            "DROP FUNCTION talus_fence; ALTER TABLE session_leases DROP COLUMN owner_url; UPDATE talus_schema SET version = 2",
        )
        .await
        .unwrap();

    let upgraded = PostgresStore::connect(&url, options("other"))
        .await
        .unwrap();

    assert_eq!(schema_version(&url).await, 4);
    match upgraded.take_lease(s).await.unwrap() {
        LeaseClaim::HeldBy { owner_url, .. } => {
            assert_eq!(owner_url, None, "the old lease has no address")
        }
        other => panic!("the lease of {fence:?} is still held: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_3_gains_the_fence_function_and_its_leases_and_log_still_fence() {
    let pg = cluster_or_skip!();
    let (url, store) = pg.store().await;
    let s = Uuid::new_v4();
    let LeaseClaim::Held(fence) = store.take_lease(s).await.unwrap() else {
        panic!("a free lease is taken");
    };
    store
        .commit_fenced(&fence, vec![events(s, 1..=2), last_seq(s, 2)])
        .await
        .unwrap();
    store.close().await;
    psql(&url)
        .await
        .batch_execute("DROP FUNCTION talus_fence; UPDATE talus_schema SET version = 3")
        .await
        .unwrap();

    // The same instance name: the lease it held before the upgrade is its own.
    let upgraded = PostgresStore::connect(&url, options("test")).await.unwrap();

    assert_eq!(schema_version(&url).await, 4);
    let at_2 = Fence {
        last_seq: 2,
        ..fence
    };
    let stale = upgraded
        .commit_fenced(&fence, vec![events(s, 3..=3), last_seq(s, 3)])
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict(_)), "{stale:?}");
    upgraded
        .commit_fenced(&at_2, vec![events(s, 3..=3), last_seq(s, 3)])
        .await
        .unwrap();
    assert_eq!(upgraded.event_range(s).await.unwrap(), Some((1, 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_newer_schema_is_refused_and_left_untouched() {
    let pg = cluster_or_skip!();
    let (url, store) = pg.store().await;
    store.close().await;
    psql(&url)
        .await
        .batch_execute("UPDATE talus_schema SET version = 99")
        .await
        .unwrap();

    let error = PostgresStore::connect(&url, options("new"))
        .await
        .err()
        .unwrap();

    assert_eq!(
        format!("{error:#}"),
        "the database was written by a newer Talus Tally (schema 99, this binary knows up to 4); refusing to use it"
    );
    assert_eq!(schema_version(&url).await, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_has_one_lease_holder_and_a_stale_owner_cannot_commit() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let a = PostgresStore::connect(&url, options("a")).await.unwrap();
    let b = PostgresStore::connect(&url, options("b")).await.unwrap();
    let s = Uuid::new_v4();

    let LeaseClaim::Held(fence_a) = a.take_lease(s).await.unwrap() else {
        panic!("a free lease is taken");
    };
    match b.take_lease(s).await.unwrap() {
        LeaseClaim::HeldBy {
            owner, expires_in, ..
        } => {
            assert_eq!(owner, "a");
            assert!(expires_in <= Duration::from_secs(2), "{expires_in:?}");
        }
        other => panic!("the lease is a's: {other:?}"),
    }
    a.commit_fenced(&fence_a, vec![events(s, 1..=2), last_seq(s, 2)])
        .await
        .unwrap();
    // The fence's seq is checked too: a commit that does not start where the log ends is refused.
    let error = a
        .commit_fenced(&fence_a, vec![events(s, 3..=3), last_seq(s, 3)])
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    let at_2 = Fence {
        last_seq: 2,
        ..fence_a
    };

    // a stops renewing (as if killed); b takes the lease once it expired.
    let started = Instant::now();
    let fence_b = loop {
        match b.take_lease(s).await.unwrap() {
            LeaseClaim::Held(fence) => break fence,
            LeaseClaim::HeldBy { expires_in, .. } => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the lease expires"
                );
                tokio::time::sleep(expires_in.max(Duration::from_millis(20))).await;
            }
        }
    };
    assert!(fence_b.epoch > fence_a.epoch);
    assert_eq!(
        a.renew_leases(&[(s, fence_a.epoch)]).await.unwrap(),
        vec![s]
    );

    let error = a
        .commit_fenced(&at_2, vec![events(s, 3..=3), last_seq(s, 3)])
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
    let fence_b = Fence {
        last_seq: 2,
        ..fence_b
    };
    b.commit_fenced(&fence_b, vec![events(s, 3..=3), last_seq(s, 3)])
        .await
        .unwrap();
    assert!(b
        .renew_leases(&[(s, fence_b.epoch)])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(a.event_range(s).await.unwrap(), Some((1, 3)));
}

/// A commit is one pipeline (BEGIN, fence, writes, COMMIT, doorbell sent
/// together): a fence that does not hold must fail the transaction so that
/// the COMMIT sent behind it rolls back, and the doorbell behind that must
/// stay silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_miss_in_the_pipelined_commit_writes_nothing_and_rings_no_doorbell() {
    let pg = cluster_or_skip!();
    let (_, store) = pg.store().await;
    fence_miss_writes_and_rings_nothing(store).await;
}

/// The same with the ringer (`--doorbell-batch`): doorbells handed over only
/// after the commit succeeded, and a commit that finds the ringer's limit
/// reached rings its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_miss_rings_no_doorbell_through_the_ringer_and_doorbells_beyond_its_limit_ring_too()
{
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let store = PostgresStore::connect(
        &url,
        talus_tally::store::PostgresOptions {
            doorbell_batch: 1,
            ..options("test")
        },
    )
    .await
    .unwrap();
    fence_miss_writes_and_rings_nothing(store).await;
}

async fn fence_miss_writes_and_rings_nothing(store: PostgresStore) {
    let (bells, mut heard) = tokio::sync::mpsc::unbounded_channel();
    assert!(store.listen(Arc::new(move |bell| {
        let _ = bells.send(bell);
    })));
    // Listening once a doorbell of another session is heard.
    let warm = Uuid::new_v4();
    let mut seq = 0;
    common::eventually("the listener hears a doorbell", async || {
        seq += 1;
        store.commit(vec![events(warm, [seq])]).await.unwrap();
        while let Ok(bell) = heard.try_recv() {
            if matches!(bell, Doorbell::Rang { session_id, .. } if session_id == warm) {
                return true;
            }
        }
        false
    })
    .await;

    let (s, p) = (Uuid::new_v4(), Uuid::new_v4());
    let LeaseClaim::Held(fence) = store.take_lease(s).await.unwrap() else {
        panic!("a free lease is taken");
    };
    store
        .commit_fenced(
            &fence,
            vec![store_suite::op(p, 1), events(s, 1..=2), last_seq(s, 2)],
        )
        .await
        .unwrap();
    let before = store_suite::everything(&store, &[p], &[s]).await;
    let members_before = store.memberships().await.unwrap();
    let refused_writes = || {
        vec![
            store_suite::op(p, 2),
            events(s, 3..=4),
            last_seq(s, 4),
            Write::UpsertProject(store_suite::project(p, "refused", 2)),
            Write::PutMember(Membership {
                project_id: p,
                user_id: "refused".into(),
                role: Role::Owner,
            }),
        ]
    };
    let misses = [
        // A stale epoch (the lease was taken again since).
        Fence {
            epoch: fence.epoch + 1,
            last_seq: 2,
            ..fence
        },
        // The right epoch, but the log does not end where the committer thinks.
        Fence {
            last_seq: 1,
            ..fence
        },
    ];
    for miss in misses {
        let error = store
            .commit_fenced(&miss, refused_writes())
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
        assert_eq!(store_suite::everything(&store, &[p], &[s]).await, before);
        assert_eq!(store.memberships().await.unwrap(), members_before);
    }
    // The connections that carried the refused commits are usable again.
    for _ in 0..16 {
        assert_eq!(store.event_range(s).await.unwrap(), Some((1, 2)));
    }
    let at_2 = Fence {
        last_seq: 2,
        ..fence
    };
    store
        .commit_fenced(&at_2, vec![events(s, 3..=3), last_seq(s, 3)])
        .await
        .unwrap();
    assert_eq!(store.event_range(s).await.unwrap(), Some((1, 3)));

    // One commit for two more sessions: with a ringer of limit 1 at least one
    // of them does not fit and is rung by the commit itself; both ring.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    store
        .commit(vec![events(a, [1]), events(b, [1])])
        .await
        .unwrap();

    // The bells of s, in commit order: the two commits that landed (the
    // ringer may fold the first into the second), nothing of the refused ones.
    let mut rung = Vec::new();
    let mut others = std::collections::HashSet::new();
    while rung.last() != Some(&3) || others.len() < 2 {
        let bell = tokio::time::timeout(Duration::from_secs(20), heard.recv())
            .await
            .expect("the doorbells of the last commits ring")
            .expect("the listener runs");
        if let Doorbell::Rang { session_id, seq } = bell {
            if session_id == s {
                rung.push(seq);
            } else if session_id == a || session_id == b {
                assert_eq!(seq, 1);
                others.insert(session_id);
            }
        }
    }
    assert!(rung == vec![2, 3] || rung == vec![3], "{rung:?}");
    store.close().await;
}

/// The session record with its newest seq, as every group's commit writes it.
fn last_seq(id: Uuid, seq: u64) -> Write {
    let mut record = store_suite::session(id, None, 0);
    record.last_seq = seq;
    Write::UpsertSession(record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_commits_racing_from_the_same_seq_land_once_in_seq_order() {
    let pg = cluster_or_skip!();
    let (_, store) = pg.store().await;
    let store = Arc::new(store);
    let s = Uuid::new_v4();
    let LeaseClaim::Held(fence) = store.take_lease(s).await.unwrap() else {
        panic!("a free lease is taken");
    };
    // 16 commits each believe the log ends at 0: exactly one lands.
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .commit_fenced(&fence, vec![events(s, 1..=3), last_seq(s, 3)])
                    .await
            })
        })
        .collect();
    let mut landed = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => landed += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("a racer failed otherwise: {e:?}"),
        }
    }
    assert_eq!(landed, 1);
    assert_eq!(store.event_range(s).await.unwrap(), Some((1, 3)));
}

/// A server on the PostgreSQL database at `url`, as instance `instance`.
async fn app_on(url: &str, instance: &str) -> common::App {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.session.lease = Duration::from_secs(2);
    let store = PostgresStore::connect(url, options(instance))
        .await
        .unwrap();
    common::App::start_on(dir, config, Arc::new(store)).await
}

/// Instances "a" and "b" on the database at `url`.
async fn two_instances(url: &str) -> (common::App, common::App) {
    (app_on(url, "a").await, app_on(url, "b").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_undo_and_redo_survive_a_move_to_another_instance_which_loads_the_session_lazily()
{
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let a = app_on(&url, "a").await;
    let (session, root) = a.create_project("restomod", "Bus").await;
    let phase = a.create_node(&session, Some(&root), "phase", "Strip").await;
    a.create_node(&session, Some(&phase), "job", "Engine out")
        .await;
    a.undo(&session).await;
    a.redo(&session).await;
    a.undo(&session).await;
    let graph = a.graph(&session).await;
    let last = a.last_seq(&session).await;
    // A graceful stop stores the session and gives its lease up.
    a.shutdown().await;

    let b = app_on(&url, "b").await;
    assert_eq!(b.graph(&session).await, graph, "b loads what a committed");
    assert_eq!(b.last_seq(&session).await, last);
    let redone = b.redo(&session).await;
    assert_eq!(
        common::int_of(&redone["events"][0]["seq"]),
        last + 1,
        "seqs continue where a stopped"
    );
    assert_eq!(
        common::int_of(&b.graph(&session).await["nodeCount"]),
        common::int_of(&graph["nodeCount"]) + 1
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_an_instance_that_does_not_own_the_session_is_forwarded_to_the_owner() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let (a, b) = two_instances(&url).await;
    let (session, root) = a.create_project("restomod", "Bus").await;

    let phase = b.create_node(&session, Some(&root), "phase", "Strip").await;

    // Applied once, by the owner, and read back on both instances.
    let on_a = a.graph(&session).await;
    assert!(on_a["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == phase.as_str()));
    assert_eq!(b.graph(&session).await, on_a, "b reads its own write");
    assert_eq!(a.last_seq(&session).await, b.last_seq(&session).await);
    let undone = b.undo(&session).await;
    assert_eq!(undone["canRedo"], true);
    assert_eq!(a.graph(&session).await["nodeCount"], 1);
    b.redo(&session).await;
    assert_eq!(b.graph(&session).await, a.graph(&session).await);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_of_the_owner_under_16_writers_another_instance_takes_over_and_nothing_acknowledged_is_lost(
) {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let start = |name: &str| {
        binary::spawn_with(&[
            "--database-url".as_ref(),
            url.as_ref(),
            "--instance-id".as_ref(),
            name.as_ref(),
            "--lease-secs".as_ref(),
            "1".as_ref(),
        ])
    };
    let a = start("a");
    let b = start("b");
    let (a_url, b_url) = (a.url.clone(), b.url.clone());
    let (session, root) = common::Http::new(&a_url)
        .create_project("restomod", "Bus")
        .await;

    let acked = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let a_dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_on_b = Arc::new(parking_lot::Mutex::new(None::<Instant>));
    let deadline = Instant::now() + Duration::from_secs(30);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (acked, a_dead, first_on_b) = (acked.clone(), a_dead.clone(), first_on_b.clone());
            let (session, root, a_url, b_url) =
                (session.clone(), root.clone(), a_url.clone(), b_url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for i in 0..6 {
                    let name = format!("w{w}-{i}");
                    loop {
                        assert!(
                            Instant::now() < deadline,
                            "{name} is acknowledged within 30 s"
                        );
                        // Half the writers on b from the start (forwarded to the owner a).
                        let dead = a_dead.load(std::sync::atomic::Ordering::SeqCst);
                        let on_b = dead || w % 2 == 1;
                        let base = if on_b { &b_url } else { &a_url };
                        match common::try_create_node(&client, base, &session, &root, &name).await {
                            Ok(Some(id)) => {
                                if dead {
                                    first_on_b.lock().get_or_insert_with(Instant::now);
                                }
                                acked.lock().push(id);
                                break;
                            }
                            // Refused, or a is gone: retry (on b once a is dead).
                            Ok(None) | Err(_) => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // SIGKILL a once a third of the writes are acknowledged.
    while acked.lock().len() < 32 {
        assert!(Instant::now() < deadline, "a acknowledges writes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    a.kill();
    a_dead.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let takeover = first_on_b.lock().expect("b committed") - killed_at;
    println!("failover: {takeover:.2?} from SIGKILL of the owner to the first commit on another instance (lease 1 s)");
    assert!(
        takeover < Duration::from_secs(5),
        "taken over within a few seconds: {takeover:?}"
    );

    let hb = common::Http::new(&b_url);
    let graph = hb.graph(&session).await;
    let ids: std::collections::HashSet<String> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| common::str_of(&n["id"]))
        .collect();
    let acked = acked.lock().clone();
    assert_eq!(acked.len(), 96);
    for id in &acked {
        assert!(ids.contains(id), "acknowledged node {id} is in the graph");
    }
    // The log is gap-free: seqs 1..=last, each once.
    let reader = PostgresStore::connect(&url, options("reader"))
        .await
        .unwrap();
    let sid = Uuid::parse_str(&session).unwrap();
    let log = reader.events(sid, 0, 100_000).await.unwrap();
    assert!(!log.is_empty());
    assert!(
        log.iter().map(|e| e.seq).eq(1..=log.len() as u64),
        "gap-free"
    );
    assert_eq!(hb.last_seq(&session).await, log.len() as i64);
    // Undo and redo work on the new owner.
    let undone = hb.undo(&session).await;
    assert!(undone["canRedo"].as_bool().unwrap());
    hb.redo(&session).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_created_on_one_instance_opens_on_another() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let (a, b) = two_instances(&url).await;
    let (session, _) = a.create_project("restomod", "Bus").await;
    let project = common::str_of(&a.session(&session).await["project"]["id"]);

    let opened = b
        .query(
            "mutation($p: ID!) { openProject(projectId: $p) { id project { id name } } }",
            serde_json::json!({ "p": project }),
        )
        .await;

    assert_eq!(
        opened["openProject"]["project"],
        serde_json::json!({ "id": project, "name": "Bus" })
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_created_or_deleted_on_one_instance_is_listed_or_gone_on_another() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let (a, b) = two_instances(&url).await;
    let (session, _) = a.create_project("restomod", "Listed elsewhere").await;
    let project = common::str_of(&a.session(&session).await["project"]["id"]);
    let listed = |data: &serde_json::Value| {
        data["projects"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["id"] == project.as_str()))
    };
    // B read the index at its start, before the project existed; it reads
    // the store again every third of a lease (2 s here).
    let projects = async || {
        listed(
            &b.query("{ projects { id name } }", serde_json::json!({}))
                .await,
        )
    };
    common::eventually("b lists the project", projects).await;
    a.query(
        "mutation($p: ID!) { deleteProject(id: $p) }",
        serde_json::json!({ "p": project }),
    )
    .await;
    let gone = async || {
        !listed(
            &b.query("{ projects { id name } }", serde_json::json!({}))
                .await,
        )
    };
    common::eventually("b no longer lists the project", gone).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_opens_into_one_session_whichever_instance_is_asked() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let (a, b) = two_instances(&url).await;
    let (session, root) = a.create_project("restomod", "Opened twice").await;
    let project = common::str_of(&a.session(&session).await["project"]["id"]);
    let open = async |app: &common::App| {
        let opened = app
            .query(
                "mutation($p: ID!) { openProject(projectId: $p) { id } }",
                serde_json::json!({ "p": project }),
            )
            .await;
        common::str_of(&opened["openProject"]["id"])
    };

    // Open in a session of a: b answers with that session, and a change made
    // through b is the session's (forwarded to a), not another writer's.
    assert_eq!(
        open(&b).await,
        session,
        "b opens the project into a's session"
    );
    b.create_node(&session, Some(&root), "phase", "Through b")
        .await;
    assert_eq!(a.graph(&session).await, b.graph(&session).await);
    assert_eq!(common::int_of(&a.graph(&session).await["nodeCount"]), 2);

    // Closed, then opened on both instances at once: one new session for both.
    a.query(
        "mutation($s: ID!) { closeSession(id: $s) }",
        serde_json::json!({ "s": session }),
    )
    .await;
    let (on_a, on_b) = tokio::join!(open(&a), open(&b));
    assert_eq!(
        on_a, on_b,
        "both instances opened the project into one session"
    );
    assert_ne!(on_a, session);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_lists_the_sessions_of_the_cluster() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let (a, b) = two_instances(&url).await;
    let (on_a, _) = a.create_project("restomod", "Listed on a").await;
    let (on_b, _) = b.create_project("restomod", "Listed on b").await;
    let listed = async |app: &common::App| {
        let data = app
            .query(
                "{ sessions { id project { name } } }",
                serde_json::json!({}),
            )
            .await;
        data["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    common::str_of(&s["id"]),
                    common::str_of(&s["project"]["name"]),
                )
            })
            .collect::<Vec<_>>()
    };
    let both = vec![
        (on_a.clone(), "Listed on a".to_string()),
        (on_b.clone(), "Listed on b".to_string()),
    ];
    assert_eq!(
        listed(&a).await,
        both,
        "a lists b's session too, oldest first"
    );
    assert_eq!(listed(&b).await, both, "b lists a's session too");

    // Closed on its owner: gone from both lists, the follower on b included.
    a.query(
        "mutation($s: ID!) { closeSession(id: $s) }",
        serde_json::json!({ "s": on_a }),
    )
    .await;
    let only_b = vec![(on_b.clone(), "Listed on b".to_string())];
    assert_eq!(listed(&a).await, only_b);
    assert_eq!(listed(&b).await, only_b);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_by_its_owner_ends_the_subscriptions_on_other_instances() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let (a, b) = two_instances(&url).await;
    let (session, _) = a.create_project("restomod", "Closed on a").await;
    let mut on_b = b.ws_as("watcher", "Watcher").await;
    on_b.subscribe_events("e", &session, None).await;
    on_b.wait_joined("e").await;

    a.query(
        "mutation($s: ID!) { closeSession(id: $s) }",
        serde_json::json!({ "s": session }),
    )
    .await;
    // No doorbell rings for a close: b's follower finds the session gone on
    // its next read of the store (within a lease, 2 s here) and ends.
    on_b.wait_complete("e").await;
    let seen = b
        .query(
            "query($s: ID!) { session(id: $s) { id } }",
            serde_json::json!({ "s": session }),
        )
        .await;
    assert_eq!(
        seen["session"],
        serde_json::Value::Null,
        "b no longer has it"
    );
    a.shutdown().await;
    b.shutdown().await;
}
