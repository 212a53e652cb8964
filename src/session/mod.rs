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
pub use hub::{CleanupResult, Hub};
pub use live::{OpenProject, Outcome, Session, State};

use crate::domain::Role;
use crate::store::ProjectRecord;

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

    /// Every project, newest first.
    pub fn list(&self) -> Vec<ProjectRecord> {
        let mut all: Vec<ProjectRecord> = self.projects.read().values().cloned().collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        all
    }
}
