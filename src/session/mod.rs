//! The session layer: the only owner of live state.
//!
//! Layout:
//! - `hub.rs`: the registry of sessions and projects; opening, creating, importing, closing.
//! - `live.rs`: one session, its single-writer actor, its broadcast and event tail.
//! - `subscribe.rs`: a subscriber's gap-free event stream.
//! - `event.rs`: the event records.
//! - `config.rs`: tunables.

pub mod config;
pub mod event;
mod hub;
mod live;
mod subscribe;

use std::collections::HashMap;

use parking_lot::RwLock;
use uuid::Uuid;

pub use config::SessionConfig;
pub use event::{ClientInfo, EventKind, RenderKey, SessionEvent};
pub use hub::{CleanupResult, Hub};
pub use live::{OpenProject, Outcome, Session, State};

use crate::store::ProjectRecord;

/// The metadata of every stored project, kept current by the sessions' commits.
#[derive(Default)]
pub struct ProjectIndex {
    projects: RwLock<HashMap<Uuid, ProjectRecord>>,
}

impl ProjectIndex {
    pub fn upsert(&self, record: ProjectRecord) {
        self.projects.write().insert(record.id, record);
    }

    pub fn remove(&self, id: &Uuid) {
        self.projects.write().remove(id);
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
