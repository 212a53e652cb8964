//! The PostgreSQL store and a cluster of instances on it, against a private PostgreSQL started by the tests.
//!
//! Every test gets its own database on one cluster per test process
//! (`common::postgres`). Without PostgreSQL binaries each test says it was
//! skipped and how to install them; with `TALUS_REQUIRE_POSTGRES=1` it fails.

mod common;
#[path = "common/postgres.rs"]
mod pg;
#[path = "common/store_suite.rs"]
mod store_suite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pg::{cluster, options};
use store_suite::events;
use talus_tally::store::{Fence, LeaseClaim, PostgresStore, Store, StoreError, Write};
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
    store.close().await;
    let error = store.commit(vec![events(Uuid::new_v4(), [1])]).await.unwrap_err();
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

async fn schema_version(url: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
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
    assert_eq!(schema_version(&url).await, 1);
    let s = Uuid::new_v4();
    stores[0].commit(vec![events(s, 1..=2)]).await.unwrap();
    assert_eq!(stores[2].event_range(s).await.unwrap(), Some((1, 2)));
    // A restart on the migrated database changes nothing.
    drop(stores);
    let again = PostgresStore::connect(&url, options("again")).await.unwrap();
    assert_eq!(again.event_range(s).await.unwrap(), Some((1, 2)));
    assert_eq!(schema_version(&url).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_newer_schema_is_refused_and_left_untouched() {
    let pg = cluster_or_skip!();
    let (url, store) = pg.store().await;
    store.close().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("UPDATE talus_schema SET version = 99")
        .await
        .unwrap();

    let error = PostgresStore::connect(&url, options("new"))
        .await
        .err()
        .unwrap();

    assert_eq!(
        format!("{error:#}"),
        "the database was written by a newer Talus Tally (schema 99, this binary knows up to 1); refusing to use it"
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
        LeaseClaim::HeldBy { owner, expires_in } => {
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
                assert!(started.elapsed() < Duration::from_secs(10), "the lease expires");
                tokio::time::sleep(expires_in.max(Duration::from_millis(20))).await;
            }
        }
    };
    assert!(fence_b.epoch > fence_a.epoch);
    assert_eq!(a.renew_leases(&[(s, fence_a.epoch)]).await.unwrap(), vec![s]);

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
    assert_eq!(b.renew_leases(&[(s, fence_b.epoch)]).await.unwrap(), vec![]);
    assert_eq!(a.event_range(s).await.unwrap(), Some((1, 3)));
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
