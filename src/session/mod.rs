//! The session layer: the only owner of live state.
//!
//! Layout:
//! - `hub.rs`: the registry of sessions and projects; opening, creating, importing, closing.
//! - `live.rs`: one session, its single-writer actor, its broadcast and event tail.
//! - `subscribe.rs`: a subscriber's gap-free event stream.
//! - `event.rs`: the event records.
//! - `config.rs`: tunables.

pub mod cluster;
pub mod config;
pub mod event;
mod hub;
mod live;
mod subscribe;

use std::collections::{BTreeMap, HashMap};

use parking_lot::RwLock;
use tokio::sync::watch;
use uuid::Uuid;

pub use config::SessionConfig;
pub use event::{Actor, ClientInfo, EventKind, RenderKey, SessionEvent};
pub use hub::{oldest_first, CleanupResult, Hub};
pub use live::{OpenProject, Outcome, Session, State};

use crate::domain::Role;
use crate::store::{Membership, ProjectRecord};

/// The metadata of every stored project, kept current by the sessions' commits,
/// and who may use each (its members, with authentication on).
pub struct ProjectIndex {
    projects: RwLock<HashMap<Uuid, ProjectRecord>>,
    members: RwLock<HashMap<Uuid, BTreeMap<String, Role>>>,
    /// Bumped whenever a membership changes or a project goes, so that open
    /// subscriptions check their user's access again at once.
    access: watch::Sender<u64>,
}

impl Default for ProjectIndex {
    fn default() -> Self {
        ProjectIndex {
            projects: RwLock::default(),
            members: RwLock::default(),
            access: watch::channel(0).0,
        }
    }
}

impl ProjectIndex {
    /// `user`'s role on the project, if it is a member.
    pub fn role(&self, project_id: &Uuid, user: &str) -> Option<Role> {
        self.members.read().get(project_id)?.get(user).copied()
    }

    /// The project's members, by user id.
    pub fn members(&self, project_id: &Uuid) -> Vec<(String, Role)> {
        self.members
            .read()
            .get(project_id)
            .map(|m| m.iter().map(|(u, r)| (u.clone(), *r)).collect())
            .unwrap_or_default()
    }

    pub fn set_member(&self, project_id: Uuid, user: String, role: Role) {
        self.members
            .write()
            .entry(project_id)
            .or_default()
            .insert(user, role);
        self.access.send_modify(|v| *v += 1);
    }

    pub fn remove_member(&self, project_id: &Uuid, user: &str) {
        if let Some(m) = self.members.write().get_mut(project_id) {
            m.remove(user);
        }
        self.access.send_modify(|v| *v += 1);
    }

    /// Wakes whenever access to some project may have changed.
    pub fn access_changes(&self) -> watch::Receiver<u64> {
        self.access.subscribe()
    }

    pub fn upsert(&self, record: ProjectRecord) {
        self.projects.write().insert(record.id, record);
    }

    pub fn remove(&self, id: &Uuid) {
        self.projects.write().remove(id);
        self.members.write().remove(id);
        self.access.send_modify(|v| *v += 1);
    }

    pub fn get(&self, id: &Uuid) -> Option<ProjectRecord> {
        self.projects.read().get(id).cloned()
    }

    /// Takes the stored projects and memberships as they are now (another
    /// instance of a cluster may have changed them). A record this instance
    /// holds at a higher version stays: its own commit may have landed after
    /// the store was read. Wakes the access watchers if any project went or
    /// any membership changed.
    pub fn replace_all(&self, records: Vec<ProjectRecord>, memberships: Vec<Membership>) {
        let mut members: HashMap<Uuid, BTreeMap<String, Role>> = HashMap::new();
        for m in memberships {
            members
                .entry(m.project_id)
                .or_default()
                .insert(m.user_id, m.role);
        }
        let gone = {
            let mut projects = self.projects.write();
            let mut fresh: HashMap<Uuid, ProjectRecord> =
                records.into_iter().map(|r| (r.id, r)).collect();
            for (id, fresh_record) in fresh.iter_mut() {
                if let Some(local) = projects
                    .get(id)
                    .filter(|l| l.version > fresh_record.version)
                {
                    *fresh_record = local.clone();
                }
            }
            let gone = projects.keys().any(|id| !fresh.contains_key(id));
            *projects = fresh;
            gone
        };
        let changed = {
            let mut current = self.members.write();
            let changed = *current != members;
            if changed {
                *current = members;
            }
            changed
        };
        if gone || changed {
            self.access.send_modify(|v| *v += 1);
        }
    }

    /// Every project, newest first.
    pub fn list(&self) -> Vec<ProjectRecord> {
        let mut all: Vec<ProjectRecord> = self.projects.read().values().cloned().collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        all
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn record(id: Uuid, version: u64) -> ProjectRecord {
        ProjectRecord {
            id,
            name: format!("at {version}"),
            template_id: "restomod".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            version,
            node_count: 1,
        }
    }

    fn member(project_id: Uuid, user: &str, role: Role) -> Membership {
        Membership {
            project_id,
            user_id: user.into(),
            role,
        }
    }

    #[test]
    fn replacing_the_index_keeps_newer_local_records_and_wakes_watchers_only_on_access_changes() {
        let index = ProjectIndex::default();
        let (kept, gone, new) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        index.upsert(record(kept, 7));
        index.upsert(record(gone, 1));
        index.set_member(kept, "alice".into(), Role::Owner);
        let mut access = index.access_changes();
        access.mark_unchanged();

        // The store was read before this instance's own commit of version 7 landed.
        index.replace_all(
            vec![record(kept, 6), record(new, 2)],
            vec![member(kept, "alice", Role::Owner)],
        );
        assert_eq!(
            index.get(&kept).unwrap().version,
            7,
            "the newer local record stays"
        );
        assert!(
            index.get(&gone).is_none(),
            "a project deleted elsewhere is gone"
        );
        assert_eq!(
            index.get(&new).unwrap().version,
            2,
            "one created elsewhere is listed"
        );
        assert!(
            access.has_changed().unwrap(),
            "a project went: access is checked again"
        );
        access.mark_unchanged();

        // The same again: nothing changed, nobody is woken.
        index.replace_all(
            vec![record(kept, 6), record(new, 2)],
            vec![member(kept, "alice", Role::Owner)],
        );
        assert!(!access.has_changed().unwrap());

        // A membership taken away on another instance.
        index.replace_all(vec![record(kept, 6), record(new, 2)], vec![]);
        assert_eq!(index.role(&kept, "alice"), None);
        assert!(access.has_changed().unwrap());
    }
}
