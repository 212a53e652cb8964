//! Black-box tests of `SqliteStore` on real files: same behaviour as `MemoryStore`, durability, group commit, failures.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use talus_tally::store::{
    MemoryStore, ProjectRecord, SessionRecord, SqliteOptions, SqliteStore, Store, StoreError,
    StoredEvent, Write,
};
use uuid::Uuid;

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).unwrap()
}

fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, nanos).unwrap()
}

fn project(id: Uuid, name: &str, version: u64) -> ProjectRecord {
    ProjectRecord {
        id,
        name: name.into(),
        template_id: "restomod".into(),
        created_at: at(0, 123_456_789),
        updated_at: at(version as i64, 5),
        version,
        node_count: version * 3,
    }
}

fn session(id: Uuid, project_id: Option<Uuid>, secs: i64) -> SessionRecord {
    SessionRecord {
        id,
        project_id,
        created_at: at(secs, 0),
        last_activity: at(secs + 10, 999_999_999),
        last_seq: secs as u64,
    }
}

fn events(session_id: Uuid, seqs: impl IntoIterator<Item = u64>) -> Write {
    Write::AppendEvents {
        session_id,
        events: seqs
            .into_iter()
            .map(|seq| StoredEvent {
                seq,
                json: format!(r#"{{"seq":{seq},"kind":"NodeCreated"}}"#),
            })
            .collect(),
    }
}

fn op(project_id: Uuid, version: u64) -> Write {
    Write::AppendOp {
        project_id,
        version,
        op: format!(r#"{{"op":{version}}}"#),
    }
}

/// Every read of the store for the given ids, in a comparable form.
async fn everything(store: &dyn Store, projects: &[Uuid], sessions: &[Uuid]) -> String {
    let mut out = String::new();
    let mut all_projects = store.projects().await.unwrap();
    all_projects.sort_by_key(|p| p.id);
    out += &format!("projects: {all_projects:?}\n");
    let mut all_sessions = store.sessions().await.unwrap();
    all_sessions.sort_by_key(|s| s.id);
    out += &format!("sessions: {all_sessions:?}\n");
    for id in projects {
        out += &format!("load {id}: {:?}\n", store.load_project(*id).await.unwrap());
    }
    for id in sessions {
        out += &format!("range {id}: {:?}\n", store.event_range(*id).await.unwrap());
        for (after, limit) in [(0, 1000), (0, 2), (3, 2), (5, 100), (1000, 10)] {
            out += &format!(
                "events {id} after {after} limit {limit}: {:?}\n",
                store.events(*id, after, limit).await.unwrap()
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_round_trips_exactly_as_in_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&dir.path().join("talus.db"));
    let memory = MemoryStore::new();
    let (p1, p2, p3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (s1, s2, s3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    let steps: Vec<Vec<Write>> = vec![
        vec![
            Write::UpsertProject(project(p1, "Bus", 0)),
            Write::UpsertProject(project(p2, "Truck", 0)),
            Write::UpsertSession(session(s1, Some(p1), 1)),
            Write::UpsertSession(session(s2, None, 2)),
        ],
        vec![
            op(p1, 1),
            op(p1, 2),
            op(p1, 3),
            Write::UpsertProject(project(p1, "Bus", 3)),
        ],
        vec![events(s1, 1..=6), events(s2, 1..=3)],
        // A snapshot drops the ops at or below its version.
        vec![Write::Snapshot {
            project_id: p1,
            version: 2,
            state: r#"{"graph":"at 2"}"#.into(),
        }],
        vec![
            op(p1, 4),
            Write::UpsertProject(project(p1, "Bus renamed", 4)),
        ],
        vec![Write::Snapshot {
            project_id: p1,
            version: 4,
            state: r#"{"graph":"at 4"}"#.into(),
        }],
        // Ops and a snapshot for a project without a record are kept but not loaded.
        vec![
            op(p3, 1),
            Write::Snapshot {
                project_id: p3,
                version: 1,
                state: "{}".into(),
            },
        ],
        vec![Write::PruneEvents {
            session_id: s1,
            below_seq: 4,
        }],
        vec![Write::PruneEvents {
            session_id: s2,
            below_seq: u64::MAX,
        }],
        vec![
            Write::UpsertSession(session(s2, Some(p2), 3)),
            events(s3, [7]),
        ],
        vec![op(p2, 1), Write::DeleteProject(p2)],
        vec![Write::DeleteSession(s3)],
        vec![Write::UpsertProject(project(p3, "Late record", 1))],
        // A snapshot older than the stored one leaves the stored one.
        vec![Write::Snapshot {
            project_id: p1,
            version: 3,
            state: r#"{"graph":"at 3"}"#.into(),
        }],
    ];

    let projects = [p1, p2, p3];
    let sessions = [s1, s2, s3];
    for (i, writes) in steps.into_iter().enumerate() {
        sqlite.commit(writes.clone()).await.unwrap();
        memory.commit(writes).await.unwrap();
        assert_eq!(
            everything(&sqlite, &projects, &sessions).await,
            everything(&memory, &projects, &sessions).await,
            "after step {i}"
        );
    }

    // The final state, spelled out.
    let loaded = sqlite.load_project(p1).await.unwrap().unwrap();
    assert_eq!(loaded.record, project(p1, "Bus renamed", 4));
    assert_eq!(loaded.snapshot, Some((4, r#"{"graph":"at 4"}"#.into())));
    assert!(loaded.tail.is_empty());
    assert_eq!(sqlite.load_project(p2).await.unwrap(), None);
    let late = sqlite.load_project(p3).await.unwrap().unwrap();
    assert_eq!((late.snapshot, late.tail), (Some((1, "{}".into())), vec![]));
    assert_eq!(sqlite.event_range(s1).await.unwrap(), Some((4, 6)));
    assert_eq!(sqlite.event_range(s2).await.unwrap(), None);
    assert_eq!(sqlite.event_range(s3).await.unwrap(), None);
    // Seqs are SQLite integers, so nothing is stored after i64::MAX.
    assert_eq!(sqlite.events(s1, u64::MAX, 10).await.unwrap(), vec![]);
    assert!(sqlite.is_durable());

    // A repeated op version or event seq is a conflict in both stores, and
    // the whole commit is refused: nothing of it (not even the new op 6) is kept.
    for store in [&sqlite as &dyn Store, &memory] {
        store.commit(vec![op(p1, 5)]).await.unwrap();
    }
    for writes in [vec![op(p1, 6), op(p1, 5)], vec![op(p1, 6), events(s1, [6])]] {
        for store in [&sqlite as &dyn Store, &memory] {
            let error = store.commit(writes.clone()).await.unwrap_err();
            assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
        }
    }
    assert_eq!(
        everything(&sqlite, &projects, &sessions).await,
        everything(&memory, &projects, &sessions).await,
        "after the refused commits"
    );

    sqlite.close().await;
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
        "talus.db was written by a newer Talus Tally (schema 99, this binary knows up to 3); refusing to open it"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

fn small_job(project_id: Uuid, session_id: Uuid, n: u64) -> Vec<Write> {
    let payload = "x".repeat(280);
    vec![
        Write::AppendOp {
            project_id,
            version: n,
            op: format!(r#"{{"n":{n},"p":"{payload}"}}"#),
        },
        Write::AppendEvents {
            session_id,
            events: (0..3)
                .map(|i| StoredEvent {
                    seq: n * 3 + i,
                    json: format!(r#"{{"n":{n},"p":"{payload}"}}"#),
                })
                .collect(),
        },
        Write::UpsertProject(project(project_id, "Bus", n)),
    ]
}

/// Also the benchmark of group commit: it prints commits per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_32_tasks_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir.path().join("talus.db")));
    let per_task = 50u64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let (p, s) = (Uuid::new_v4(), Uuid::new_v4());
                for n in 1..=per_task {
                    store.commit(small_job(p, s, n)).await.unwrap();
                }
                (p, s)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
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
    for (p, s) in ids {
        let loaded = store.load_project(p).await.unwrap().unwrap();
        assert_eq!(loaded.record.version, per_task);
        assert_eq!(loaded.tail.len() as u64, per_task);
        assert_eq!(
            store.event_range(s).await.unwrap(),
            Some((3, per_task * 3 + 2))
        );
    }
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
                        json: format!(r#"{{"seq":{seq:>8},"p":"{payload}"}}"#),
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
