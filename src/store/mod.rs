//! Storage behind a small trait: what the session layer persists and reads back.
//!
//! The session layer hands the store one `commit` per group of changes; a
//! commit is atomic and, for a durable store, on disk when it returns. Values
//! are opaque JSON strings (serialised dispatcher state, ops and events) so a
//! store never needs to understand the domain. `sqlite` is the default
//! embedded store; `memory` keeps everything in the process (`--in-memory`);
//! `postgres` is shared by the instances of a cluster (`--database-url`), with
//! a lease per session and fenced commits; `faulty` wraps a store to make
//! commits fail on demand in tests.

#[cfg(any(test, feature = "test-support"))]
pub mod faulty;
pub mod memory;
pub mod postgres;
pub mod sqlite;

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Role;

pub use memory::MemoryStore;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};

/// A project's metadata, kept up to date with every commit that changes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub id: Uuid,
    pub name: String,
    pub template_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Dispatcher version after the newest committed op.
    pub version: u64,
    pub node_count: u64,
}

/// A session: which project it has open and when it was last used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: Uuid,
    pub project_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_activity: DateTime<Utc>,
    /// Seq of the session's newest event, kept here as well as in the log so
    /// that seqs continue after a restart whatever retention pruned.
    #[serde(default)]
    pub last_seq: u64,
}

/// One event of a session's log: its sequence number and its serialised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub json: Payload,
}

/// Something that serialises itself when its text is first asked for, and
/// keeps the text (an event caches its own JSON).
pub trait Serialise: Send + Sync {
    fn text(&self) -> &str;
}

impl Serialise for String {
    fn text(&self) -> &str {
        self
    }
}

/// The opaque text of a stored value, cheap to clone, made when a store
/// first reads it: a durable store when it writes the commit (on its own
/// thread), the in-memory store only if the value is ever read back. Making
/// an event's JSON on the session's actor for a store that never reads it was
/// an eighth of an in-memory mutation's CPU.
#[derive(Clone)]
pub struct Payload(std::sync::Arc<dyn Serialise>);

impl Payload {
    /// A value serialised on first use.
    pub fn lazy(value: std::sync::Arc<dyn Serialise>) -> Payload {
        Payload(value)
    }

    pub fn as_str(&self) -> &str {
        self.0.text()
    }
}

impl From<String> for Payload {
    fn from(text: String) -> Payload {
        Payload(std::sync::Arc::new(text))
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Payload {
        Payload::from(text.to_string())
    }
}

impl std::ops::Deref for Payload {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Payload {}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What is needed to rebuild a project's dispatcher: the newest snapshot and the ops after it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedProject {
    pub record: ProjectRecord,
    /// (version, serialised dispatcher state); `None` if none was ever written.
    pub snapshot: Option<(u64, String)>,
    /// (version, serialised op) for every op with version > the snapshot's, ascending.
    pub tail: Vec<(u64, String)>,
}

/// A user's role on a project (authentication on). Kept with the project:
/// deleting the project deletes its memberships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub project_id: Uuid,
    pub user_id: String,
    pub role: Role,
}

/// One change to the store; a `commit` applies a list of them atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Insert or replace a project's metadata.
    UpsertProject(ProjectRecord),
    /// Replace the project's snapshot unless a newer one is stored; ops at or
    /// below `version` are no longer needed.
    Snapshot {
        project_id: Uuid,
        version: u64,
        state: String,
    },
    /// Append the op that took the project to `version`; `Conflict` if that
    /// version is already stored (never an overwrite).
    AppendOp {
        project_id: Uuid,
        version: u64,
        op: String,
    },
    /// Remove a project with its snapshot, ops and memberships.
    DeleteProject(Uuid),
    /// Give a user a role on a project, replacing the role it had.
    PutMember(Membership),
    /// Take a user's role on a project away (nothing if it had none).
    RemoveMember {
        project_id: Uuid,
        user_id: String,
    },
    UpsertSession(SessionRecord),
    /// Remove a session with its event log.
    DeleteSession(Uuid),
    /// Append events; `Conflict` if a seq is already stored (never an overwrite).
    AppendEvents {
        session_id: Uuid,
        events: Vec<StoredEvent>,
    },
    /// Drop a session's events with seq < `below_seq` (retention).
    PruneEvents {
        session_id: Uuid,
        below_seq: u64,
    },
}

/// The store could not do what was asked; nothing of the failed commit was kept.
///
/// Each variant says how the caller should react; the message is for people
/// and never carries SQL or file contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another connection holds a lock for now: retry.
    #[error("store busy: {0}")]
    Busy(String),
    /// A seq or version that is already stored was written again (another
    /// writer on the same data, or a bug): step down, never overwrite.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// The disk is full: refuse writes, keep serving reads.
    #[error("store full: {0}")]
    Full(String),
    /// The store cannot be written (read-only, I/O error, closed): refuse writes, keep serving reads.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// What is stored cannot be read back as it was written: refuse to load it.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The kind, as a word (busy, conflict, full, unavailable, corrupt): for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Busy(_) => "busy",
            StoreError::Conflict(_) => "conflict",
            StoreError::Full(_) => "full",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt(_) => "corrupt",
        }
    }

    /// The message without its kind.
    pub fn message(&self) -> &str {
        match self {
            StoreError::Busy(m)
            | StoreError::Conflict(m)
            | StoreError::Full(m)
            | StoreError::Unavailable(m)
            | StoreError::Corrupt(m) => m,
        }
    }
}

/// What a commit of a session in a shared store must still find true, checked
/// in the commit's own transaction: this instance holds the session's lease
/// with `epoch`, and the session's newest stored seq is `last_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub session_id: Uuid,
    /// The fencing token: grows with every claim of the lease.
    pub epoch: u64,
    /// The seq the session's log ends at before this commit.
    pub last_seq: u64,
}

/// The answer to `take_lease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseClaim {
    /// This instance owns the session now; commit with this fence (its
    /// `last_seq` is to be filled in from the stored session).
    Held(Fence),
    /// Another instance owns it, for at least `expires_in` unless it renews.
    HeldBy {
        owner: String,
        /// Where the owner takes forwarded commands (its `--advertise-url`),
        /// if it said.
        owner_url: Option<String>,
        expires_in: std::time::Duration,
    },
}

/// A doorbell from the shared store: a commit of another instance (or of
/// this one) added events to a session. Carries no event: a follower always
/// reads them from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    /// The session's log now reaches `seq`.
    Rang { session_id: Uuid, seq: u64 },
    /// The listener reconnected: notifications may have been lost, so every
    /// follower reads the log from its cursor.
    Reconnected,
}

/// Called by a store's listener for every doorbell; must not block.
pub type DoorbellFn = std::sync::Arc<dyn Fn(Doorbell) + Send + Sync>;

/// What `Store::commit_now` did.
pub enum Immediate {
    /// Committed (or refused) already.
    Done(Result<(), StoreError>),
    /// Not committed: use `commit`.
    Later(Vec<Write>),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies every write atomically; for a durable store, durably before returning.
    /// Concurrent commits may be grouped into one transaction, but each call
    /// succeeds or fails as a whole.
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError>;
    /// `commit` on the caller's thread, for a store that has nothing to wait
    /// for (the in-memory store); any other hands the writes back (`Later`)
    /// and they go through `commit`. The session layer then commits a group
    /// while it still holds the session's state, and keeps the group applied
    /// instead of taking it back and replaying it after the commit.
    fn commit_now(&self, writes: Vec<Write>) -> Immediate {
        Immediate::Later(writes)
    }
    /// `commit`, refused with `Conflict` (and nothing kept) unless `fence`
    /// still holds. A store owned by one process has no other writer, so by
    /// default this is `commit`.
    async fn commit_fenced(&self, fence: &Fence, writes: Vec<Write>) -> Result<(), StoreError> {
        let _ = fence;
        self.commit(writes).await
    }
    /// Replaces the project's snapshot with `state` at `version` (unless a
    /// newer one is stored) and drops the ops it covers, as a commit of
    /// `Write::Snapshot` does. A store may write a large state in several
    /// transactions so that other commits are not held up behind it; the
    /// previous snapshot stays in force until the new one is complete.
    async fn put_snapshot(
        &self,
        project_id: Uuid,
        version: u64,
        state: String,
    ) -> Result<(), StoreError> {
        self.commit(vec![Write::Snapshot {
            project_id,
            version,
            state,
        }])
        .await
    }
    async fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError>;
    async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError>;
    async fn load_project(&self, id: Uuid) -> Result<Option<LoadedProject>, StoreError>;
    /// Every project's memberships (read once at start, like `projects`).
    async fn memberships(&self) -> Result<Vec<Membership>, StoreError>;
    /// Up to `limit` events of the session with seq > `after`, ascending.
    async fn events(
        &self,
        session_id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// The (oldest, newest) retained seq of the session's log, or `None` if it is empty.
    async fn event_range(&self, session_id: Uuid) -> Result<Option<(u64, u64)>, StoreError>;
    /// One stored session record.
    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.sessions().await?.into_iter().find(|s| s.id == id))
    }
    /// Whether commits survive a restart (false for the in-memory store).
    fn is_durable(&self) -> bool;
    /// Whether several processes share the store, so that a session needs a
    /// lease (`take_lease`) and its commits a fence. False by default: the
    /// SQLite store is locked by one process, the memory store lives in one.
    fn is_shared(&self) -> bool {
        false
    }
    /// Claims the session's lease for this process (free, expired or already
    /// its own), with a new epoch. Unshared stores have one owner: always held.
    async fn take_lease(&self, session_id: Uuid) -> Result<LeaseClaim, StoreError> {
        Ok(LeaseClaim::Held(Fence {
            session_id,
            epoch: 0,
            last_seq: 0,
        }))
    }
    /// Extends the leases held as (session, epoch); returns the sessions whose
    /// lease is no longer this process's (taken over, or gone).
    async fn renew_leases(&self, held: &[(Uuid, u64)]) -> Result<Vec<Uuid>, StoreError> {
        let _ = held;
        Ok(Vec::new())
    }
    /// Stores `record`, a new session for its project, unless a session of
    /// that project is stored already: then nothing is written and that
    /// session's id is returned. In a shared store this is one step no other
    /// instance can interleave with, so a project is open in at most one
    /// session across the cluster. An unshared store has one process, whose
    /// hub already made sure (its lifecycle lock): it just stores the record.
    async fn open_project_session(
        &self,
        record: &SessionRecord,
    ) -> Result<Option<Uuid>, StoreError> {
        self.commit(vec![Write::UpsertSession(record.clone())])
            .await
            .map(|()| None)
    }
    /// Which of `ids` have an unexpired lease (whoever holds it). Unshared
    /// stores have one process, alive while it asks: all of them.
    async fn live_leases(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        Ok(ids.iter().copied().collect())
    }
    /// Gives a lease up (the session closed here), so another instance need not wait for it to expire.
    async fn release_lease(&self, session_id: Uuid, epoch: u64) -> Result<(), StoreError> {
        let _ = (session_id, epoch);
        Ok(())
    }
    /// Where this instance takes forwarded commands (`--advertise-url`),
    /// recorded with every lease it takes. Unshared stores ignore it.
    fn set_advertise_url(&self, url: String) {
        let _ = url;
    }
    /// Starts listening for doorbells (commits of every instance), calling
    /// `ring` for each; `false` when the store has no other writer to hear.
    fn listen(&self, ring: DoorbellFn) -> bool {
        let _ = ring;
        false
    }
    /// The project's stored ops with `after < version <= upto`, ascending
    /// (a follower replaying what the events it read name). Ops at or below
    /// the newest snapshot are gone: the caller then reloads the project.
    async fn ops_between(
        &self,
        project_id: Uuid,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let _ = (project_id, after, upto);
        Ok(Vec::new())
    }
    /// Finishes pending commits; called once at shutdown.
    async fn close(&self) {}
}
