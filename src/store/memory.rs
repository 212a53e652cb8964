//! The in-memory store (`--in-memory`): same semantics as a durable store, kept in the process only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound::{Excluded, Unbounded};

use async_trait::async_trait;
use parking_lot::Mutex;
use uuid::Uuid;

use super::{
    Immediate, LoadedProject, Membership, ProjectRecord, SessionRecord, Store, StoreError,
    StoredEvent, Write,
};

/// Maps by id: ids are random, so a fast hash is enough (SipHash was ~1 k
/// instructions per commit).
type ById<V> = HashMap<Uuid, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Data {
    projects: ById<ProjectRecord>,
    snapshots: ById<(u64, String)>,
    ops: ById<BTreeMap<u64, String>>,
    sessions: ById<SessionRecord>,
    events: ById<BTreeMap<u64, super::Payload>>,
    /// Project -> user -> role.
    members: ById<BTreeMap<String, crate::domain::Role>>,
}

impl Data {
    /// `Conflict` if the writes would store an op version or an event seq a second time.
    fn check_collisions(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut ops: HashSet<_, foldhash::fast::RandomState> = HashSet::default();
        let mut events: HashSet<_, foldhash::fast::RandomState> = HashSet::default();
        for w in writes {
            match w {
                Write::AppendOp {
                    project_id,
                    version,
                    ..
                } => {
                    let stored = self
                        .ops
                        .get(project_id)
                        .is_some_and(|o| o.contains_key(version));
                    if stored || !ops.insert((*project_id, *version)) {
                        return Err(StoreError::Conflict(format!(
                            "op version {version} of project {project_id} is already stored"
                        )));
                    }
                }
                Write::AppendEvents {
                    session_id,
                    events: list,
                } => {
                    let log = self.events.get(session_id);
                    for e in list {
                        let stored = log.is_some_and(|l| l.contains_key(&e.seq));
                        if stored || !events.insert((*session_id, e.seq)) {
                            return Err(StoreError::Conflict(format!(
                                "event seq {} of session {session_id} is already stored",
                                e.seq
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Keeps everything in memory; lost when the process ends.
#[derive(Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn commit_sync(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut d = self.data.lock();
        // Collisions are checked before anything is applied, so a refused
        // commit leaves nothing behind (like a rolled-back transaction).
        d.check_collisions(&writes)?;
        for w in writes {
            match w {
                Write::UpsertProject(p) => {
                    d.projects.insert(p.id, p);
                }
                Write::Snapshot {
                    project_id,
                    version,
                    state,
                } => {
                    // A newer stored snapshot stays (see `Write::Snapshot`).
                    if d.snapshots.get(&project_id).is_none_or(|s| s.0 <= version) {
                        d.snapshots.insert(project_id, (version, state));
                    }
                    if let Some(ops) = d.ops.get_mut(&project_id) {
                        *ops = ops.split_off(&(version + 1));
                    }
                }
                Write::AppendOp {
                    project_id,
                    version,
                    op,
                } => {
                    d.ops.entry(project_id).or_default().insert(version, op);
                }
                Write::DeleteProject(id) => {
                    d.projects.remove(&id);
                    d.snapshots.remove(&id);
                    d.ops.remove(&id);
                    d.members.remove(&id);
                }
                Write::PutMember(m) => {
                    d.members
                        .entry(m.project_id)
                        .or_default()
                        .insert(m.user_id, m.role);
                }
                Write::RemoveMember {
                    project_id,
                    user_id,
                } => {
                    if let Some(members) = d.members.get_mut(&project_id) {
                        members.remove(&user_id);
                    }
                }
                Write::UpsertSession(s) => {
                    d.sessions.insert(s.id, s);
                }
                Write::DeleteSession(id) => {
                    d.sessions.remove(&id);
                    d.events.remove(&id);
                }
                Write::AppendEvents { session_id, events } => {
                    let log = d.events.entry(session_id).or_default();
                    for e in events {
                        log.insert(e.seq, e.json);
                    }
                }
                Write::PruneEvents {
                    session_id,
                    below_seq,
                } => {
                    if let Some(log) = d.events.get_mut(&session_id) {
                        *log = log.split_off(&below_seq);
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.commit_sync(writes)
    }

    fn commit_now(&self, writes: Vec<Write>) -> Immediate {
        Immediate::Done(self.commit_sync(writes))
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        Ok(self.data.lock().projects.values().cloned().collect())
    }

    async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.data.lock().sessions.values().cloned().collect())
    }

    async fn memberships(&self) -> Result<Vec<Membership>, StoreError> {
        let d = self.data.lock();
        Ok(d.members
            .iter()
            .flat_map(|(project_id, members)| {
                members.iter().map(|(user_id, role)| Membership {
                    project_id: *project_id,
                    user_id: user_id.clone(),
                    role: *role,
                })
            })
            .collect())
    }

    async fn load_project(&self, id: Uuid) -> Result<Option<LoadedProject>, StoreError> {
        let d = self.data.lock();
        let Some(record) = d.projects.get(&id).cloned() else {
            return Ok(None);
        };
        let snapshot = d.snapshots.get(&id).cloned();
        let after = snapshot.as_ref().map_or(0, |s| s.0);
        let tail = d
            .ops
            .get(&id)
            .map(|ops| {
                ops.range((Excluded(after), Unbounded))
                    .map(|(v, o)| (*v, o.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(LoadedProject {
            record,
            snapshot,
            tail,
        }))
    }

    async fn events(
        &self,
        session_id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let d = self.data.lock();
        Ok(d.events
            .get(&session_id)
            .map(|log| {
                log.range((Excluded(after), Unbounded))
                    .take(limit)
                    .map(|(seq, json)| StoredEvent {
                        seq: *seq,
                        json: json.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn event_range(&self, session_id: Uuid) -> Result<Option<(u64, u64)>, StoreError> {
        let d = self.data.lock();
        Ok(d.events.get(&session_id).and_then(|log| {
            let first = log.keys().next()?;
            let last = log.keys().next_back()?;
            Some((*first, *last))
        }))
    }

    fn is_durable(&self) -> bool {
        false
    }
}
