//! Black-box tests of `SqliteStore` on real files: same behaviour as `MemoryStore`, durability, group commit, failures.

#[path = "common/store_suite.rs"]
mod store_suite;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store_suite::{events, op, project, session};
use talus_tally::store::{SqliteOptions, SqliteStore, Store, StoreError, StoredEvent, Write};
use uuid::Uuid;

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_round_trips_exactly_as_in_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&dir.path().join("talus.db"));
    store_suite::round_trips_as_the_memory_store(&sqlite).await;
    sqlite.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_put_in_parts_reads_back_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&dir.path().join("talus.db"));
    store_suite::put_snapshot_is_a_snapshot_commit(&sqlite).await;
    sqlite.close().await;
}

/// Opens the file beside the store to count what `put_snapshot` left in its tables.
fn stored_parts(path: &Path, project: Uuid) -> Vec<(u64, u64)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT version, part FROM snapshot_parts WHERE project_id = ?1 ORDER BY version, part",
        )
        .unwrap();
    stmt.query_map([project.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_is_written_in_parts_that_other_commits_pass_between() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("talus.db");
    let store = Arc::new(open(&path));
    let p = Uuid::new_v4();
    store
        .commit(vec![
            Write::UpsertProject(project(p, "Big", 0)),
            op(p, 1),
            op(p, 2),
        ])
        .await
        .unwrap();
    // Parts of version 1 that an earlier attempt left behind before it
    // could swap them in (a crash): never read, dropped by the next snapshot.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO snapshot_parts (project_id, version, part, data) VALUES (?1, 1, 0, 'stray')",
            [p.to_string()],
        )
        .unwrap();
    }
    assert_eq!(store.load_project(p).await.unwrap().unwrap().snapshot, None);

    // 24 MiB, in parts of 256 KiB: while it is written, another project's
    // small commits keep landing between the parts instead of waiting for
    // the whole state (written in one transaction, each would wait for it).
    let state = store_suite::large_state("big", 24 << 20);
    let groups_before = store.stats().groups;
    let put = tokio::spawn({
        let (store, state) = (store.clone(), state.clone());
        async move { store.put_snapshot(p, 2, state).await }
    });
    let other = Uuid::new_v4();
    let mut landed_meanwhile = 0u64;
    while !put.is_finished() {
        landed_meanwhile += 1;
        store
            .commit(vec![op(other, landed_meanwhile)])
            .await
            .unwrap();
    }
    put.await.unwrap().unwrap();
    let groups = store.stats().groups - groups_before;
    // Each part is its own job, committed alone.
    assert!(
        groups >= 98 + landed_meanwhile,
        "{groups} groups for 97 parts, the swap and {landed_meanwhile} commits"
    );
    assert!(
        landed_meanwhile >= 48,
        "only {landed_meanwhile} commits landed while 97 parts were written"
    );
    let loaded = store.load_project(p).await.unwrap().unwrap();
    assert!(
        loaded.snapshot == Some((2, state)),
        "the snapshot reads back whole"
    );
    assert!(loaded.tail.is_empty());
    let parts = stored_parts(&path, p);
    assert!(
        parts.iter().all(|&(v, _)| v == 2),
        "the stray part was dropped"
    );
    assert_eq!(parts.len(), 97, "24 MiB and a bit, in parts of 256 KiB");

    // A newer snapshot replaces these parts; the old ones are dropped.
    store.put_snapshot(p, 3, "small".into()).await.unwrap();
    assert_eq!(stored_parts(&path, p), vec![(3, 0)]);
    store.commit(vec![Write::DeleteProject(p)]).await.unwrap();
    assert_eq!(stored_parts(&path, p), vec![]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen_and_drop_without_close() {
    let dir = tempfile::tempdir().unwrap();
    // The directory is created on first start.
    let path = dir.path().join("talus-data").join("talus.db");
    let (p, s) = (Uuid::new_v4(), Uuid::new_v4());

    let store = open(&path);
    store
        .commit(vec![
            Write::UpsertProject(project(p, "Bus", 2)),
            Write::Snapshot {
                project_id: p,
                version: 1,
                state: "state".into(),
            },
            op(p, 2),
            Write::UpsertSession(session(s, Some(p), 0)),
            events(s, 1..=3),
        ])
        .await
        .unwrap();
    store.close().await;
    let error = store.commit(vec![events(s, [4])]).await.unwrap_err();
    assert_eq!(error.to_string(), "store unavailable: the store is closed");
    drop(store);
    // A clean close leaves no WAL content behind.
    let wal = path.with_file_name("talus.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);

    let store = open(&path);
    let loaded = store.load_project(p).await.unwrap().unwrap();
    assert_eq!(loaded.record, project(p, "Bus", 2));
    assert_eq!(loaded.snapshot, Some((1, "state".into())));
    assert_eq!(loaded.tail, vec![(2, r#"{"op":2}"#.into())]);
    assert_eq!(
        store.sessions().await.unwrap(),
        vec![session(s, Some(p), 0)]
    );
    store.commit(vec![events(s, [4])]).await.unwrap();
    drop(store);

    let store = open(&path);
    assert_eq!(store.event_range(s).await.unwrap(), Some((1, 4)));
    store.close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("talus.db");
    open(&path).close().await;
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let before = std::fs::read(&path).unwrap();

    let error = SqliteStore::open(&path, SqliteOptions::default())
        .err()
        .unwrap();

    assert_eq!(
        format!("{error:#}").rsplit(": ").next().unwrap(),
        "talus.db was written by a newer Talus Tally (schema 99, this binary knows up to 4); refusing to open it"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// Also the benchmark of group commit: it prints commits per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_32_tasks_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("talus.db")));
    let per_task = 50u64;
    let elapsed = store_suite::concurrent_commits_all_land(store.clone(), 32, per_task).await;
    let stats = store.stats();
    println!(
        "{} commits from 32 tasks in {elapsed:.2?}: {:.0} commits/s, {} groups ({:.1} jobs per group)",
        stats.committed,
        stats.committed as f64 / elapsed.as_secs_f64(),
        stats.groups,
        stats.committed as f64 / stats.groups as f64
    );
    assert_eq!(stats.committed, 32 * per_task);
    assert_eq!(stats.failed, 0);
    store.close().await;
}

/// "Locked" stands in for every failure of the file: the same path answers
/// read-only files and full disks. (`chmod 0444` on talus.db and its -wal and
/// -shm files gives SQLITE_READONLY for a normal user, but not for root, who
/// runs these tests; the in-file tests of `sqlite.rs` cover read-only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_fail_while_another_process_locks_the_file_then_recover_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("talus.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(&path, options).unwrap();
    let s = Uuid::new_v4();
    store.commit(vec![events(s, [1])]).await.unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let error = store.commit(vec![events(s, [2])]).await.unwrap_err();
    // Busy: the caller may retry.
    assert_eq!(
        error,
        StoreError::Busy("the database is locked by another connection".into())
    );
    assert_eq!(
        store.events(s, 0, 10).await.unwrap().len(),
        1,
        "reads keep working"
    );
    assert_eq!(
        store.event_range(s).await.unwrap(),
        Some((1, 1)),
        "nothing of the job was kept"
    );

    other.execute_batch("COMMIT").unwrap();
    store.commit(vec![events(s, [2])]).await.unwrap();
    assert_eq!(store.event_range(s).await.unwrap(), Some((1, 2)));
    let stats = store.stats();
    assert_eq!((stats.committed, stats.failed), (2, 1));
    store.close().await;
}

/// Also measures the size on disk of 100,000 events of about 300 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pages_through_a_100k_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("talus.db");
    let store = open(&path);
    let (s, other) = (Uuid::new_v4(), Uuid::new_v4());
    let payload = "y".repeat(277);
    for chunk in 0..100u64 {
        let seqs = chunk * 1000 + 1..=chunk * 1000 + 1000;
        let writes = vec![
            Write::AppendEvents {
                session_id: s,
                events: seqs
                    .clone()
                    .map(|seq| StoredEvent {
                        seq,
                        json: format!(r#"{{"seq":{seq:>8},"p":"{payload}"}}"#).into(),
                    })
                    .collect(),
            },
            events(other, seqs.step_by(100)),
        ];
        store.commit(writes).await.unwrap();
    }

    // Warm the read connections, then time one page and the range.
    for _ in 0..8 {
        store.events(s, 0, 1).await.unwrap();
    }
    let started = Instant::now();
    let page = store.events(s, 73_456, 100).await.unwrap();
    let page_time = started.elapsed();
    let started = Instant::now();
    let range = store.event_range(s).await.unwrap();
    let range_time = started.elapsed();
    println!("a page of 100 events of 100k: {page_time:.2?}; event_range: {range_time:.2?}");

    assert_eq!(page.len(), 100);
    assert!(page.iter().map(|e| e.seq).eq(73_457..73_557));
    assert_eq!(page[0].json.len(), 300);
    assert!(page[0].json.starts_with(r#"{"seq":   73457,"#));
    assert_eq!(range, Some((1, 100_000)));
    assert_eq!(store.events(s, 99_990, 100).await.unwrap().len(), 10);
    assert_eq!(store.event_range(other).await.unwrap(), Some((1, 99_901)));

    store.close().await;
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "on disk: {:.1} MB for 100,000 events of 300 bytes (+1,000 small ones)",
        size as f64 / 1e6
    );
}
