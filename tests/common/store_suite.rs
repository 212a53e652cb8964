//! The store-level suite every durable store passes (SQLite, PostgreSQL):
//! the same reads as `MemoryStore` after every kind of write, collisions as
//! `Conflict`, and concurrent commits that all land.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use talus_tally::store::{
    MemoryStore, ProjectRecord, SessionRecord, Store, StoreError, StoredEvent, Write,
};
use uuid::Uuid;

pub fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, nanos).unwrap()
}

pub fn project(id: Uuid, name: &str, version: u64) -> ProjectRecord {
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

pub fn session(id: Uuid, project_id: Option<Uuid>, secs: i64) -> SessionRecord {
    SessionRecord {
        id,
        project_id,
        created_at: at(secs, 0),
        last_activity: at(secs + 10, 999_999_999),
        last_seq: secs as u64,
    }
}

pub fn events(session_id: Uuid, seqs: impl IntoIterator<Item = u64>) -> Write {
    Write::AppendEvents {
        session_id,
        events: seqs
            .into_iter()
            .map(|seq| StoredEvent {
                seq,
                json: format!(r#"{{"seq":{seq},"kind":"NodeCreated"}}"#).into(),
            })
            .collect(),
    }
}

pub fn op(project_id: Uuid, version: u64) -> Write {
    Write::AppendOp {
        project_id,
        version,
        op: format!(r#"{{"op":{version}}}"#),
    }
}

/// Every read of the store for the given ids, in a comparable form.
pub async fn everything(store: &dyn Store, projects: &[Uuid], sessions: &[Uuid]) -> String {
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

/// Runs every kind of write on `store` and on a `MemoryStore`, comparing every read after each step.
pub async fn round_trips_as_the_memory_store(store: &dyn Store) {
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
        store.commit(writes.clone()).await.unwrap();
        memory.commit(writes).await.unwrap();
        assert_eq!(
            everything(store, &projects, &sessions).await,
            everything(&memory, &projects, &sessions).await,
            "after step {i}"
        );
    }

    // The final state, spelled out.
    let loaded = store.load_project(p1).await.unwrap().unwrap();
    assert_eq!(loaded.record, project(p1, "Bus renamed", 4));
    assert_eq!(loaded.snapshot, Some((4, r#"{"graph":"at 4"}"#.into())));
    assert!(loaded.tail.is_empty());
    assert_eq!(store.load_project(p2).await.unwrap(), None);
    let late = store.load_project(p3).await.unwrap().unwrap();
    assert_eq!((late.snapshot, late.tail), (Some((1, "{}".into())), vec![]));
    assert_eq!(store.event_range(s1).await.unwrap(), Some((4, 6)));
    assert_eq!(store.event_range(s2).await.unwrap(), None);
    assert_eq!(store.event_range(s3).await.unwrap(), None);
    // Seqs are stored as 64-bit signed integers, so nothing is stored after i64::MAX.
    assert_eq!(store.events(s1, u64::MAX, 10).await.unwrap(), vec![]);
    assert!(store.is_durable());

    // A repeated op version or event seq is a conflict in both stores, and
    // the whole commit is refused: nothing of it (not even the new op 6) is kept.
    for store in [store, &memory] {
        store.commit(vec![op(p1, 5)]).await.unwrap();
    }
    for writes in [vec![op(p1, 6), op(p1, 5)], vec![op(p1, 6), events(s1, [6])]] {
        for store in [store, &memory] {
            let error = store.commit(writes.clone()).await.unwrap_err();
            assert!(matches!(error, StoreError::Conflict(_)), "{error:?}");
        }
    }
    assert_eq!(
        everything(store, &projects, &sessions).await,
        everything(&memory, &projects, &sessions).await,
        "after the refused commits"
    );
}

pub fn small_job(project_id: Uuid, session_id: Uuid, n: u64) -> Vec<Write> {
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
                    json: format!(r#"{{"n":{n},"p":"{payload}"}}"#).into(),
                })
                .collect(),
        },
        Write::UpsertProject(project(project_id, "Bus", n)),
    ]
}

/// `tasks` tasks commit `per_task` small jobs each; every one lands. Returns the time taken.
pub async fn concurrent_commits_all_land(
    store: Arc<dyn Store>,
    tasks: usize,
    per_task: u64,
) -> Duration {
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
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
    for handle in handles {
        ids.push(handle.await.unwrap());
    }
    let elapsed = started.elapsed();
    for (p, s) in ids {
        let loaded = store.load_project(p).await.unwrap().unwrap();
        assert_eq!(loaded.record.version, per_task);
        assert_eq!(loaded.tail.len() as u64, per_task);
        assert_eq!(
            store.event_range(s).await.unwrap(),
            Some((3, per_task * 3 + 2))
        );
    }
    elapsed
}

/// A state of about `bytes` bytes with multi-byte characters throughout, so
/// a store that cuts it into parts must cut at character boundaries.
pub fn large_state(tag: &str, bytes: usize) -> String {
    let unit = format!("{{\"n\":\"{tag} Zürich 東京 ✓\"}},");
    let mut s = String::with_capacity(bytes + unit.len() + 2);
    s.push('[');
    while s.len() < bytes {
        s.push_str(&unit);
    }
    s.push_str("null]");
    s
}

/// `put_snapshot` does what a commit of `Write::Snapshot` does, for states
/// large enough to be written in parts: the newest stays, the ops it covers
/// go, and an older one changes nothing.
pub async fn put_snapshot_is_a_snapshot_commit(store: &dyn Store) {
    let memory = MemoryStore::new();
    let p = Uuid::new_v4();
    let setup = vec![
        Write::UpsertProject(project(p, "Big", 5)),
        Write::Snapshot {
            project_id: p,
            version: 0,
            state: "{}".into(),
        },
        op(p, 1),
        op(p, 2),
        op(p, 3),
        op(p, 4),
        op(p, 5),
    ];
    let at_3 = large_state("three", 2_500_000);
    let at_5 = large_state("five", 3_300_000);
    for s in [store, &memory as &dyn Store] {
        s.commit(setup.clone()).await.unwrap();
        s.put_snapshot(p, 3, at_3.clone()).await.unwrap();
        let loaded = s.load_project(p).await.unwrap().unwrap();
        assert_eq!(loaded.snapshot.as_ref().map(|(v, _)| *v), Some(3));
        assert!(
            loaded.snapshot.as_ref().unwrap().1 == at_3,
            "the state at 3 round-trips"
        );
        assert_eq!(
            loaded.tail.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            vec![4, 5]
        );
        // An older snapshot (one serialised before a newer one was stored) changes nothing.
        s.put_snapshot(p, 2, "older".into()).await.unwrap();
        let again = s.load_project(p).await.unwrap().unwrap();
        assert!(again == loaded, "an older snapshot left the stored one");
        s.put_snapshot(p, 5, at_5.clone()).await.unwrap();
        let loaded = s.load_project(p).await.unwrap().unwrap();
        assert_eq!(loaded.snapshot.as_ref().map(|(v, _)| *v), Some(5));
        assert!(
            loaded.snapshot.as_ref().unwrap().1 == at_5,
            "the state at 5 round-trips"
        );
        assert!(loaded.tail.is_empty());
        // A commit of a new op after it is the tail; an empty state round-trips too.
        s.commit(vec![op(p, 6)]).await.unwrap();
        s.put_snapshot(p, 6, String::new()).await.unwrap();
        let loaded = s.load_project(p).await.unwrap().unwrap();
        assert_eq!(loaded.snapshot, Some((6, String::new())));
        s.commit(vec![Write::DeleteProject(p)]).await.unwrap();
        assert_eq!(s.load_project(p).await.unwrap(), None);
    }
}
