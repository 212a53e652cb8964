//! The hub: every live session, the project index, templates and the store, and the operations across them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::Stream;
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::cluster::{self, Follow, ForwardAnswer, Forwarded, RemoteReply, RemoteWork};
use super::config::SessionConfig;
use super::event::{ClientInfo, SessionEvent};
use super::live::{parse_op, OpenProject, Session};
use super::{subscribe, ProjectIndex};
use crate::domain::command::clean_name;
use crate::domain::error::err;
use crate::domain::graph::NodeData;
use crate::domain::{
    project_file, Delta, Dispatcher, DomainError, ErrorCode, Graph, Role, Template,
};
use crate::store::{
    Doorbell, LeaseClaim, Membership, ProjectRecord, SessionRecord, Store, StoreError, Write,
};
use crate::templates::TemplateCatalog;

fn store_error(e: StoreError) -> DomainError {
    match e {
        StoreError::Conflict(_) | StoreError::Corrupt(_) => {
            internal("the store refused the change", e)
        }
        _ => err(
            ErrorCode::StoreUnavailable,
            format!(
                "the store could not be used ({}); nothing changed, retry later",
                e.message()
            ),
        ),
    }
}

fn no_session(id: Uuid) -> DomainError {
    err(
        ErrorCode::SessionNotFound,
        format!("there is no session {id}; it may have been closed"),
    )
}

fn internal(what: &str, e: impl std::fmt::Display) -> DomainError {
    tracing::error!(error = %e, "{what}");
    err(ErrorCode::Internal, format!("{what}; see the server log"))
}

/// What `cleanupSessions` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupResult {
    pub sessions_removed: usize,
    pub active_sessions: usize,
}

/// Every live session and the shared pieces they use.
pub struct Hub {
    config: Arc<SessionConfig>,
    templates: Arc<TemplateCatalog>,
    store: Arc<dyn Store>,
    index: Arc<ProjectIndex>,
    sessions: RwLock<HashMap<Uuid, Arc<Session>>>,
    /// Project id -> the session that has it open.
    open: RwLock<HashMap<Uuid, Uuid>>,
    /// Serialises every lifecycle operation (create, open, import, delete,
    /// close, cleanup): each checks and acts under it, so a project is never
    /// open in two sessions, nor reopened while it is being deleted.
    lifecycle: tokio::sync::Mutex<()>,
    stop: watch::Sender<bool>,
    /// Every subscriber stream, so a shutdown can wait until each has ended
    /// (and queued its ClientLeft) before the sessions close.
    streams: TaskTracker,
    /// In a shared store: this process's presence lease (id, epoch), a lease
    /// on a random id no session has, renewed with the sessions' leases. The
    /// joins this instance forwards name it; an owner drops the clients that
    /// came through one that expired (the process died).
    presence: parking_lot::Mutex<Option<(Uuid, u64)>>,
}

impl Hub {
    /// Loads every stored session (with its project's graph and history) and starts the reaper.
    pub async fn start(
        config: SessionConfig,
        store: Arc<dyn Store>,
        templates: Arc<TemplateCatalog>,
    ) -> anyhow::Result<Arc<Hub>> {
        let hub = Arc::new(Hub {
            config: Arc::new(config),
            templates,
            store,
            index: Arc::new(ProjectIndex::default()),
            sessions: RwLock::new(HashMap::new()),
            open: RwLock::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            stop: watch::channel(false).0,
            streams: TaskTracker::new(),
            presence: parking_lot::Mutex::new(None),
        });
        for record in hub.store.projects().await? {
            hub.index.upsert(record);
        }
        for m in hub.store.memberships().await? {
            hub.index.set_member(m.project_id, m.user_id, m.role);
        }
        if hub.store.is_shared() {
            // Sessions load lazily, by the instance that takes their lease
            // (`session`), so startup does not grow with the stored sessions.
            hub.take_presence_lease().await;
            hub.start_lease_renewal();
            hub.start_index_refresh();
            // Followers are woken by the doorbell of every instance's commits.
            let weak = Arc::downgrade(&hub);
            hub.store.listen(Arc::new(move |bell| {
                if let Some(hub) = weak.upgrade() {
                    hub.ring(bell);
                }
            }));
        }
        let restore = if hub.store.is_shared() {
            Vec::new()
        } else {
            hub.store.sessions().await?
        };
        for record in restore {
            let project = match record.project_id {
                Some(pid) => match hub.load_project(pid).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // The session stays stored as it is (not re-registered
                        // without its project); openProject reports the error.
                        tracing::error!(session = %record.id, project = %pid, error = %e, "could not reopen the session's project; the session is not restored");
                        continue;
                    }
                },
                None => None,
            };
            // The record keeps the newest seq even when retention pruned the
            // whole log; the log may be ahead of a record written before it.
            let logged = hub.store.event_range(record.id).await?.map_or(0, |r| r.1);
            let last_seq = record.last_seq.max(logged);
            hub.register(&record, None, project, last_seq, None, None);
        }
        let weak = Arc::downgrade(&hub);
        let interval = hub.config.reaper_interval;
        let mut stop = hub.stop.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let Some(hub) = weak.upgrade() else { return };
                let idle = hub.config.idle_limit;
                match hub.cleanup(idle).await {
                    Ok(r) if r.sessions_removed > 0 => {
                        tracing::info!(
                            removed = r.sessions_removed,
                            active = r.active_sessions,
                            "reaped idle sessions"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "session reaper failed"),
                }
            }
        });
        Ok(hub)
    }

    pub fn templates(&self) -> &TemplateCatalog {
        &self.templates
    }

    pub fn template(&self, id: &str) -> Result<Arc<Template>, DomainError> {
        self.templates.get(id).ok_or_else(|| {
            let known: Vec<String> = self.templates.list().iter().map(|t| t.id.clone()).collect();
            err(
                ErrorCode::TemplateNotFound,
                format!(
                    "there is no template '{id}'; available: {}",
                    known.join(", ")
                ),
            )
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn store_is_durable(&self) -> bool {
        self.store.is_durable()
    }

    /// A live session, or SESSION_NOT_FOUND. Counts as activity. With a
    /// shared store, a session that is not live here is loaded from the store
    /// under a new lease (or refused with STORE_UNAVAILABLE while another
    /// instance holds it).
    pub async fn session(&self, id: Uuid) -> Result<Arc<Session>, DomainError> {
        let session = self.session_quietly(id).await?;
        session.touch();
        Ok(session)
    }

    /// `session` without counting as activity: a list shows a session, it
    /// does not use it, so listing never keeps one from being reaped.
    pub async fn session_quietly(&self, id: Uuid) -> Result<Arc<Session>, DomainError> {
        let live = self.sessions.read().get(&id).cloned();
        match live {
            Some(s) if !s.is_lost() => Ok(s),
            _ if self.store.is_shared() => self.load_session(id).await,
            _ => Err(no_session(id)),
        }
    }

    /// Wakes the followers a doorbell concerns.
    fn ring(&self, bell: Doorbell) {
        let sessions = self.sessions.read();
        match bell {
            Doorbell::Rang { session_id, seq } => {
                if let Some(s) = sessions.get(&session_id) {
                    if let Some(f) = s.follow.as_ref() {
                        if s.read().last_seq < seq {
                            f.ring.notify_one();
                        }
                    }
                }
            }
            Doorbell::Reconnected => {
                for s in sessions.values() {
                    if let Some(f) = s.follow.as_ref() {
                        f.ring.notify_one();
                    }
                }
            }
        }
    }

    /// Serves work another instance forwarded to this one (`cluster.rs`),
    /// if this instance owns the session (loading it under its lease when
    /// the lease is free); `NotOwner` otherwise.
    pub async fn serve_forwarded(&self, forwarded: Forwarded) -> ForwardAnswer {
        let id = forwarded.session_id;
        let session = match self.session(id).await {
            Ok(s) if !s.is_follower() => s,
            Ok(_) => return ForwardAnswer::NotOwner,
            Err(e) => return ForwardAnswer::Done(Err(e)),
        };
        let done = match forwarded.work {
            RemoteWork::Execute {
                command,
                expected_version,
                by,
            } => session
                .execute(command, expected_version, by)
                .await
                .map(RemoteReply::Outcome),
            RemoteWork::Undo { by } => session.undo(by).await.map(RemoteReply::Outcome),
            RemoteWork::Redo { by } => session.redo(by).await.map(RemoteReply::Outcome),
            RemoteWork::Join { client, via } => {
                let client_id = client.id.clone();
                let joined = session.join(client).await;
                if let (Ok(()), Some(via)) = (&joined, via) {
                    session.remote_joined(&client_id, via);
                }
                joined.map(|()| RemoteReply::Unit)
            }
            RemoteWork::Leave { client_id, via } => {
                if let Some(via) = via {
                    session.remote_left(&client_id, via);
                }
                session.leave(client_id);
                Ok(RemoteReply::Unit)
            }
            RemoteWork::Close => self.close_session(id).await.map(|_| RemoteReply::Unit),
            RemoteWork::Presence => {
                let state = session.read();
                Ok(RemoteReply::Presence {
                    last_seq: state.last_seq,
                    clients: state.presence(),
                })
            }
        };
        ForwardAnswer::Done(done)
    }

    /// A follower of a session another instance owns: the session's state
    /// from the store, kept current from the log by its pump (`cluster.rs`).
    async fn load_follower(
        &self,
        id: Uuid,
        owner: String,
        owner_url: Option<String>,
    ) -> Result<Arc<Session>, DomainError> {
        let record = self
            .store
            .session(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| no_session(id))?;
        // The log's end before the project: the project read after it may be
        // ahead (never behind) of it, and the first read of the log below
        // brings both to one commit.
        let logged = self
            .store
            .event_range(id)
            .await
            .map_err(store_error)?
            .map_or(0, |r| r.1);
        let project = match record.project_id {
            Some(pid) => Some(self.load_project(pid).await?),
            None => None,
        };
        let last_seq = record.last_seq.max(logged);
        let follow = Follow::new(owner.clone(), owner_url, self.presence_lease());
        let session = self.register(&record, None, project, last_seq, None, Some(follow));
        cluster::adopt_presence(&session).await;
        if let Err(e) = cluster::follow(&session).await {
            tracing::warn!(session = %id, error = %e, "a new follower could not read the log yet");
        }
        cluster::start_pump(session.clone(), self.config.lease);
        tracing::info!(session = %id, %owner, last_seq = session.read().last_seq, "following the session");
        Ok(session)
    }

    /// Takes the session's lease and loads it from the shared store.
    async fn load_session(&self, id: Uuid) -> Result<Arc<Session>, DomainError> {
        let _guard = self.lifecycle.lock().await;
        if let Some(s) = self.find_session(id) {
            if !s.is_lost() {
                return Ok(s);
            }
            self.forget(&s);
        }
        // A session that is not stored (never was, or closed) takes no lease:
        // asking for one would write a lease row per request for a made-up
        // id, and race a closing owner's release.
        if self.store.session(id).await.map_err(store_error)?.is_none() {
            return Err(no_session(id));
        }
        // The lease first: a commit of the previous owner is then either
        // visible to the reads below or refused by its fence.
        let epoch = match self.store.take_lease(id).await.map_err(store_error)? {
            LeaseClaim::Held(fence) => fence.epoch,
            LeaseClaim::HeldBy {
                owner, owner_url, ..
            } => return self.load_follower(id, owner, owner_url).await,
        };
        let loaded = async {
            let record = self
                .store
                .session(id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| no_session(id))?;
            let project = match record.project_id {
                Some(pid) => Some(self.load_project(pid).await?),
                None => None,
            };
            let logged = self
                .store
                .event_range(id)
                .await
                .map_err(store_error)?
                .map_or(0, |r| r.1);
            Ok::<_, DomainError>((record.last_seq.max(logged), record, project))
        }
        .await;
        match loaded {
            Ok((last_seq, record, project)) => {
                tracing::info!(session = %id, epoch, last_seq, "took the session over");
                Ok(self.register(&record, None, project, last_seq, Some(epoch), None))
            }
            Err(e) => {
                if let Err(e) = self.store.release_lease(id, epoch).await {
                    tracing::warn!(session = %id, error = %e, "could not release a lease");
                }
                Err(e)
            }
        }
    }

    /// This instance's lease on `id` (its epoch), or STORE_UNAVAILABLE naming the owner.
    async fn claim(&self, id: Uuid) -> Result<u64, DomainError> {
        match self.store.take_lease(id).await.map_err(store_error)? {
            LeaseClaim::Held(fence) => Ok(fence.epoch),
            LeaseClaim::HeldBy {
                owner, expires_in, ..
            } => Err(err(
                ErrorCode::StoreUnavailable,
                format!(
                    "session {id} is served by instance {owner} now; nothing changed, retry there, or here once its lease expires (in {:.1} s unless renewed)",
                    expires_in.as_secs_f64()
                ),
            )),
        }
    }

    /// The epoch to register a new session with: a lease in a shared store, none otherwise.
    async fn new_epoch(&self, id: Uuid) -> Result<Option<u64>, DomainError> {
        if self.store.is_shared() {
            Ok(Some(self.claim(id).await?))
        } else {
            Ok(None)
        }
    }

    /// Drops a session from this instance's maps, leaving the store alone.
    fn forget(&self, session: &Session) {
        self.sessions.write().remove(&session.id);
        let project_id = session.read().project.as_ref().map(|p| p.record.id);
        if let Some(pid) = project_id {
            let mut open = self.open.write();
            if open.get(&pid) == Some(&session.id) {
                open.remove(&pid);
            }
        }
    }

    /// Runs `job` every third of a lease (a cluster's periodic work) until
    /// the hub stops or is dropped.
    fn every_third_of_a_lease<F, Fut>(self: &Arc<Self>, job: F)
    where
        F: Fn(Arc<Hub>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let weak = Arc::downgrade(self);
        let every = (self.config.lease / 3).max(std::time::Duration::from_millis(100));
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let Some(hub) = weak.upgrade() else { return };
                job(hub).await;
            }
        });
    }

    /// This process's presence lease, if it holds one.
    pub(super) fn presence_lease(&self) -> Option<Uuid> {
        self.presence.lock().map(|p| p.0)
    }

    /// Takes a presence lease on a new random id (a new one for every
    /// process, so a restarted instance's old clients are not mistaken for
    /// its new ones). Without one, joins are forwarded unnamed, as before.
    async fn take_presence_lease(&self) {
        let id = Uuid::new_v4();
        match self.store.take_lease(id).await {
            Ok(LeaseClaim::Held(fence)) => *self.presence.lock() = Some((id, fence.epoch)),
            Ok(LeaseClaim::HeldBy { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not take a presence lease; clients of this instance stay counted by owners if it dies")
            }
        }
    }

    /// On the sessions this instance owns, leaves the subscriptions other
    /// instances forwarded through a presence lease that is gone: their
    /// instance died (or lost the database for a whole lease) and will never
    /// forward their leaves.
    async fn drop_clients_of_gone_instances(&self) {
        let owned: Vec<Arc<Session>> = self
            .sessions
            .read()
            .values()
            .filter(|s| !s.is_follower() && !s.is_lost())
            .cloned()
            .collect();
        let mut vias: Vec<Uuid> = owned.iter().flat_map(|s| s.remote_instances()).collect();
        if vias.is_empty() {
            return;
        }
        vias.sort_unstable();
        vias.dedup();
        let alive = match self.store.live_leases(&vias).await {
            Ok(alive) => alive,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the other instances' presence leases");
                return;
            }
        };
        for s in owned {
            let left = s.drop_remote_clients(|via| alive.contains(via));
            if left > 0 {
                tracing::info!(session = %s.id, left, "subscriptions of an instance that is gone left");
            }
        }
    }

    /// Renews this instance's leases every third of a lease; a session whose
    /// lease is gone is closed here (`Session::lose`) and forgotten. Then
    /// drops the clients of instances whose presence lease is gone.
    fn start_lease_renewal(self: &Arc<Self>) {
        self.every_third_of_a_lease(|hub| async move {
            let presence = *hub.presence.lock();
            let mut held: Vec<(Uuid, u64)> = hub
                .sessions
                .read()
                .values()
                .filter(|s| !s.is_lost())
                .filter_map(|s| s.epoch().map(|e| (s.id, e)))
                .collect();
            held.extend(presence);
            match hub.store.renew_leases(&held).await {
                Ok(lost) => {
                    for id in lost {
                        if Some(id) == presence.map(|p| p.0) {
                            // Away from the database for a whole lease: owners
                            // dropped this instance's clients. A new lease;
                            // clients that join from now on count again.
                            tracing::warn!("this instance's presence lease expired; taking a new one");
                            hub.take_presence_lease().await;
                            continue;
                        }
                        if let Some(s) = hub.find_session(id) {
                            tracing::warn!(session = %id, "the session's lease is gone; closing it here");
                            s.lose();
                            hub.forget(&s);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the session leases"),
            }
            hub.drop_clients_of_gone_instances().await;
        });
    }

    /// In a cluster, reads the stored projects and memberships every third of
    /// a lease, so a project created, deleted or shared on another instance
    /// (and a membership taken away there) is seen here within that time.
    /// Under the lifecycle lock, like every local change of the index, so
    /// a read never undoes a change this instance has just made.
    fn start_index_refresh(self: &Arc<Self>) {
        self.every_third_of_a_lease(|hub| async move {
            if let Err(e) = hub.refresh_index().await {
                tracing::warn!(error = %e, "could not read the stored projects; the project list may be behind");
            }
        });
    }

    /// Replaces the project index with what the store holds now.
    async fn refresh_index(&self) -> Result<(), crate::store::StoreError> {
        let _guard = self.lifecycle.lock().await;
        let records = self.store.projects().await?;
        let memberships = self.store.memberships().await?;
        self.index.replace_all(records, memberships);
        Ok(())
    }

    /// A live session if there is one (no error, no activity).
    pub fn find_session(&self, id: Uuid) -> Option<Arc<Session>> {
        self.sessions.read().get(&id).cloned()
    }

    /// The sessions a list shows: the live ones, and in a shared store the
    /// ids of the stored sessions not live on this instance whose project
    /// `visible` accepts (None: a session without a project), to be loaded by
    /// the caller. A follower whose session its owner closed (no longer
    /// stored) is dropped here rather than listed.
    pub async fn sessions_everywhere(
        &self,
        visible: impl Fn(Option<Uuid>) -> bool,
    ) -> Result<(Vec<Arc<Session>>, Vec<Uuid>), DomainError> {
        if !self.store.is_shared() {
            return Ok((self.sessions(), Vec::new()));
        }
        // Under the lifecycle lock: no open or close slips between the read and the drops.
        let _guard = self.lifecycle.lock().await;
        let stored = self.store.sessions().await.map_err(store_error)?;
        let ids: HashSet<Uuid> = stored.iter().map(|r| r.id).collect();
        let (kept, closed): (Vec<_>, Vec<_>) = self
            .sessions()
            .into_iter()
            .partition(|s| !s.is_follower() || ids.contains(&s.id));
        for s in closed {
            self.drop_closed_follower(&s);
        }
        let here: HashSet<Uuid> = kept.iter().map(|s| s.id).collect();
        let elsewhere = stored
            .into_iter()
            .filter(|r| !here.contains(&r.id) && visible(r.project_id))
            .map(|r| r.id)
            .collect();
        Ok((kept, elsewhere))
    }

    /// Ends and forgets a follower whose session its owner closed (its row is
    /// gone); its pump notices the same on its own within a lease.
    fn drop_closed_follower(&self, session: &Session) {
        session.lose();
        self.forget(session);
    }

    /// Every live session, oldest first.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        oldest_first(&mut all);
        all
    }

    pub fn projects(&self) -> Vec<ProjectRecord> {
        self.index.list()
    }

    pub fn project(&self, id: Uuid) -> Option<ProjectRecord> {
        self.index.get(&id)
    }

    /// The live session that has `project_id` open, if any (not one lost
    /// to another instance, or closed by its owner elsewhere).
    pub fn session_of_project(&self, project_id: Uuid) -> Option<Arc<Session>> {
        let sid = *self.open.read().get(&project_id)?;
        self.find_session(sid).filter(|s| !s.is_lost())
    }

    fn register(
        &self,
        record: &SessionRecord,
        owner: Option<String>,
        project: Option<OpenProject>,
        last_seq: u64,
        epoch: Option<u64>,
        follow: Option<Box<Follow>>,
    ) -> Arc<Session> {
        let project_id = project.as_ref().map(|p| p.record.id);
        let session = Session::new(
            record,
            owner,
            project,
            last_seq,
            self.config.clone(),
            self.store.clone(),
            self.index.clone(),
            epoch,
            follow,
        );
        self.sessions.write().insert(session.id, session.clone());
        if let Some(pid) = project_id {
            self.open.write().insert(pid, session.id);
        }
        session
    }

    fn new_session_record(project_id: Option<Uuid>) -> SessionRecord {
        let now = Utc::now();
        SessionRecord {
            id: Uuid::new_v4(),
            project_id,
            created_at: now,
            last_activity: now,
            last_seq: 0,
        }
    }

    /// A new empty session, belonging to `owner` (with authentication on).
    pub async fn create_session(&self, owner: Option<&str>) -> Result<Arc<Session>, DomainError> {
        let record = Self::new_session_record(None);
        let epoch = self.new_epoch(record.id).await?;
        self.store
            .commit(vec![Write::UpsertSession(record.clone())])
            .await
            .map_err(store_error)?;
        Ok(self.register(&record, owner.map(str::to_string), None, 0, epoch, None))
    }

    /// `user`'s role on a stored project, if it is a member.
    pub fn role(&self, project_id: Uuid, user: &str) -> Option<Role> {
        self.index.role(&project_id, user)
    }

    /// `user`'s role in a session: its project's role, or OWNER of an empty
    /// session it created.
    pub fn session_role(&self, session: &Session, user: &str) -> Option<Role> {
        let project = session.read().project.as_ref().map(|p| p.record.id);
        match project {
            Some(pid) => self.index.role(&pid, user),
            None => (session.owner.as_deref() == Some(user)).then_some(Role::Owner),
        }
    }

    /// A project's members, by user id.
    pub fn members(&self, project_id: Uuid) -> Vec<(String, Role)> {
        self.index.members(&project_id)
    }

    /// Wakes whenever some membership changes or a project is deleted.
    pub fn access_changes(&self) -> watch::Receiver<u64> {
        self.index.access_changes()
    }

    /// Resolves once `user` may no longer see `session`: removed from its
    /// project, or the project deleted. Never, for an empty session (its
    /// creator owns it for good).
    pub fn access_lost(
        &self,
        session: &Session,
        user: String,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        // Subscribed before the first check, so no change slips between them.
        let mut changes = self.index.access_changes();
        let index = self.index.clone();
        let project = session.read().project.as_ref().map(|p| p.record.id);
        async move {
            let Some(pid) = project else {
                return std::future::pending().await;
            };
            while index.role(&pid, &user).is_some() {
                if changes.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Gives `user` `role` on a stored project (replacing its role); the last
    /// owner cannot be demoted.
    pub async fn grant(&self, project_id: Uuid, user: &str, role: Role) -> Result<(), DomainError> {
        let _guard = self.lifecycle.lock().await;
        self.check_not_last_owner(project_id, user, Some(role))?;
        self.store
            .commit(vec![Write::PutMember(Membership {
                project_id,
                user_id: user.to_string(),
                role,
            })])
            .await
            .map_err(store_error)?;
        self.index.set_member(project_id, user.to_string(), role);
        Ok(())
    }

    /// Takes `user`'s role on a stored project away; the last owner cannot be removed.
    pub async fn revoke(&self, project_id: Uuid, user: &str) -> Result<(), DomainError> {
        let _guard = self.lifecycle.lock().await;
        self.check_not_last_owner(project_id, user, None)?;
        self.store
            .commit(vec![Write::RemoveMember {
                project_id,
                user_id: user.to_string(),
            }])
            .await
            .map_err(store_error)?;
        self.index.remove_member(&project_id, user);
        Ok(())
    }

    /// Refuses a change of `user`'s role to `to` that would leave the project without an owner.
    fn check_not_last_owner(
        &self,
        project_id: Uuid,
        user: &str,
        to: Option<Role>,
    ) -> Result<(), DomainError> {
        if self.index.get(&project_id).is_none() {
            return Err(err(
                ErrorCode::ProjectNotFound,
                format!("there is no project {project_id}"),
            ));
        }
        let members = self.index.members(&project_id);
        let owners = members.iter().filter(|(_, r)| *r == Role::Owner).count();
        let is_owner = members.iter().any(|(u, r)| u == user && *r == Role::Owner);
        if is_owner && owners == 1 && to != Some(Role::Owner) {
            return Err(err(
                ErrorCode::BadUserInput,
                format!("{user} is the last owner of project {project_id}; make someone else OWNER first"),
            ));
        }
        Ok(())
    }

    /// Stores a new project with `graph` and opens it in a new session.
    async fn start_project(
        &self,
        template: Arc<Template>,
        name: String,
        graph: Graph,
        owner: Option<&str>,
    ) -> Result<Arc<Session>, DomainError> {
        let now = Utc::now();
        let mut dispatcher = Dispatcher::new(graph);
        dispatcher.set_history_limit(self.config.history_limit);
        let record = ProjectRecord {
            id: Uuid::new_v4(),
            name,
            template_id: template.id.clone(),
            created_at: now,
            updated_at: now,
            version: 0,
            node_count: dispatcher.graph().len() as u64,
        };
        let state = serde_json::to_string(&dispatcher)
            .map_err(|e| internal("could not serialise a new project", e))?;
        let session_record = Self::new_session_record(Some(record.id));
        let _guard = self.lifecycle.lock().await;
        let epoch = self.new_epoch(session_record.id).await?;
        let mut writes = vec![
            Write::UpsertProject(record.clone()),
            Write::Snapshot {
                project_id: record.id,
                version: 0,
                state,
            },
            Write::UpsertSession(session_record.clone()),
        ];
        // The creator owns the project from its first commit on: there is no
        // moment at which it exists without an owner.
        if let Some(owner) = owner {
            writes.push(Write::PutMember(Membership {
                project_id: record.id,
                user_id: owner.to_string(),
                role: Role::Owner,
            }));
        }
        self.store.commit(writes).await.map_err(store_error)?;
        self.index.upsert(record.clone());
        if let Some(owner) = owner {
            self.index
                .set_member(record.id, owner.to_string(), Role::Owner);
        }
        let project = OpenProject::new(record, template, dispatcher, 0);
        Ok(self.register(&session_record, None, Some(project), 0, epoch, None))
    }

    /// A new project from a template, with its root node named after it, open
    /// in a new session; `owner` (with authentication on) becomes its OWNER.
    pub async fn create_project(
        &self,
        template_id: &str,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Arc<Session>, DomainError> {
        let template = self.template(template_id)?;
        let name = clean_name(name)?;
        let root = template.root_type();
        let mut graph = Graph::new();
        graph.apply(&Delta::NodeCreated {
            node: NodeData {
                id: Uuid::new_v4(),
                type_id: root.id.as_str().into(),
                name: name.clone(),
                properties: root.initial_properties(),
                created_at: Utc::now(),
            },
            parent_id: None,
            index: 0,
        })?;
        self.start_project(template, name, graph, owner).await
    }

    /// Imports a Talus Tally project file as a new project, open in a new
    /// session; `owner` (with authentication on) becomes its OWNER.
    pub async fn import_project(
        &self,
        file: &Value,
        template_id: Option<&str>,
        name: Option<&str>,
        limits: &project_file::ImportLimits,
        owner: Option<&str>,
    ) -> Result<(Arc<Session>, project_file::Imported), DomainError> {
        let template_id = match template_id {
            Some(t) => t.to_string(),
            None => project_file::template_hint(file).ok_or_else(|| {
                err(
                    ErrorCode::BadUserInput,
                    "the file does not name its template; pass templateId",
                )
            })?,
        };
        let template = self.template(&template_id)?;
        let imported = project_file::import_within(file, &template, Utc::now(), limits)?;
        let name = match name.or(imported.name.as_deref()) {
            Some(n) => clean_name(n)?,
            None => "Imported project".to_string(),
        };
        let session = self
            .start_project(template, name, imported.graph.clone(), owner)
            .await?;
        Ok((session, imported))
    }

    /// Rebuilds a stored project's dispatcher: newest snapshot plus the ops after it.
    async fn load_project(&self, project_id: Uuid) -> Result<OpenProject, DomainError> {
        let loaded = self
            .store
            .load_project(project_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                err(
                    ErrorCode::ProjectNotFound,
                    format!("there is no project {project_id}"),
                )
            })?;
        let template = self.template(&loaded.record.template_id)?;
        let limit = self.config.history_limit.max(1);
        tokio::task::spawn_blocking(move || {
            let name = &loaded.record.name;
            let corrupt = |what: String, e: &dyn std::fmt::Display| {
                internal(
                    &format!("project {project_id} ('{name}') cannot be loaded: {what}"),
                    e,
                )
            };
            let mut dispatcher = match &loaded.snapshot {
                Some((version, json)) => {
                    let d = serde_json::from_str::<Dispatcher>(json).map_err(|e| {
                        corrupt(
                            format!("its snapshot at version {version} is unreadable"),
                            &e,
                        )
                    })?;
                    d.graph().check_invariants().map_err(|e| {
                        corrupt(
                            format!(
                                "its snapshot at version {version} breaks the graph's invariants"
                            ),
                            &e,
                        )
                    })?;
                    d
                }
                None => Dispatcher::new(Graph::new()),
            };
            let tail = loaded.tail.len() as u64;
            for (version, json) in &loaded.tail {
                let (op, applied_under) = parse_op(json)
                    .map_err(|e| corrupt(format!("its op {version} is unreadable"), &e))?;
                // Each op replays under the history limit it was applied
                // under, so undo and redo come back exactly whatever the
                // limit is now; ops stored before limits were recorded
                // replay without evicting anything.
                dispatcher.set_history_limit(applied_under.unwrap_or(usize::MAX));
                dispatcher
                    .replay(op)
                    .map_err(|e| corrupt(format!("its op {version} could not be replayed"), &e))?;
            }
            dispatcher.set_history_limit(limit);
            let mut record = loaded.record;
            record.version = dispatcher.version();
            record.node_count = dispatcher.graph().len() as u64;
            Ok(OpenProject::new(record, template, dispatcher, tail))
        })
        .await
        .map_err(|e| internal("loading a project failed", e))?
    }

    /// Opens a stored project; a live session that already has it open is returned instead.
    pub async fn open_project(&self, project_id: Uuid) -> Result<Arc<Session>, DomainError> {
        let guard = self.lifecycle.lock().await;
        if let Some(session) = self.session_of_project(project_id) {
            // A follower's session may have been closed by its owner since:
            // then it is not the project's session any more.
            let closed_elsewhere =
                session.is_follower() && matches!(self.store.session(session.id).await, Ok(None));
            if !closed_elsewhere {
                session.touch();
                return Ok(session);
            }
            self.drop_closed_follower(&session);
        }
        // In a shared store another instance may have created it since this
        // one read its index: the store decides (PROJECT_NOT_FOUND from the load).
        if self.index.get(&project_id).is_none() && !self.store.is_shared() {
            return Err(err(
                ErrorCode::ProjectNotFound,
                format!("there is no project {project_id}"),
            ));
        }
        let project = self.load_project(project_id).await?;
        if self.store.is_shared() {
            self.index.upsert(project.record.clone());
        }
        let record = Self::new_session_record(Some(project_id));
        let epoch = self.new_epoch(record.id).await?;
        let opened = self.store.open_project_session(&record).await;
        match opened {
            Ok(None) => Ok(self.register(&record, None, Some(project), 0, epoch, None)),
            // Open in a session of another instance (or one stored before this
            // instance loaded it): that one, loaded here as usual (owner or follower).
            Ok(Some(existing)) => {
                self.give_up_lease(record.id, epoch).await;
                drop(guard);
                self.session(existing).await
            }
            Err(e) => {
                self.give_up_lease(record.id, epoch).await;
                Err(store_error(e))
            }
        }
    }

    /// Releases the lease of a session that was never stored.
    async fn give_up_lease(&self, id: Uuid, epoch: Option<u64>) {
        if let Some(epoch) = epoch {
            if let Err(e) = self.store.release_lease(id, epoch).await {
                tracing::warn!(session = %id, error = %e, "could not release a lease");
            }
        }
    }

    /// Deletes a stored project; refused while people are working in it.
    pub async fn delete_project(&self, project_id: Uuid) -> Result<bool, DomainError> {
        let _guard = self.lifecycle.lock().await;
        if self.index.get(&project_id).is_none() {
            return Err(err(
                ErrorCode::ProjectNotFound,
                format!("there is no project {project_id}"),
            ));
        }
        if let Some(session) = self.session_of_project(project_id) {
            // A client that just unsubscribed has its leave queued to the actor;
            // let the actor apply it first so the count is current.
            session.flush().await?;
            let active = session.read().active_clients();
            if active > 0 {
                return Err(err(
                    ErrorCode::BadUserInput,
                    format!(
                        "project {project_id} is open in session {} with {active} active client(s); they must leave (or the session be closed) before it can be deleted",
                        session.id
                    ),
                ));
            }
            if session.is_follower() {
                cluster::forward_close(&session).await?;
            }
            self.close_locked(session.id).await?;
        }
        self.store
            .commit(vec![Write::DeleteProject(project_id)])
            .await
            .map_err(store_error)?;
        self.index.remove(&project_id);
        Ok(true)
    }

    /// Closes a session: its subscriptions end; its project stays stored.
    pub async fn close_session(&self, id: Uuid) -> Result<bool, DomainError> {
        let _guard = self.lifecycle.lock().await;
        if let Some(s) = self.find_session(id) {
            if s.is_follower() {
                // The owner closes it; this instance stops following.
                cluster::forward_close(&s).await?;
                return self.close_locked(id).await;
            }
        }
        self.close_locked(id).await
    }

    /// `close_session` for a caller that holds the lifecycle lock. A
    /// follower only stops following here: the owner keeps the session.
    async fn close_locked(&self, id: Uuid) -> Result<bool, DomainError> {
        let session = self.find_session(id).ok_or_else(|| {
            err(
                ErrorCode::SessionNotFound,
                format!("there is no session {id}; it may have been closed"),
            )
        })?;
        if session.is_follower() {
            session.close();
            self.forget(&session);
            return Ok(true);
        }
        session.close();
        session.stopped().await;
        // Fenced in a shared store: an instance that lost the session must not delete it.
        session
            .commit(vec![Write::DeleteSession(id)])
            .await
            .map_err(store_error)?;
        self.forget(&session);
        Ok(true)
    }

    /// Closes sessions with no active client idle for longer than `max_idle`.
    pub async fn cleanup(&self, max_idle: Duration) -> Result<CleanupResult, DomainError> {
        self.cleanup_matching(max_idle, |_| true).await
    }

    /// `cleanup` limited to the sessions `pick` chooses (with authentication
    /// on, those the caller owns).
    pub async fn cleanup_matching(
        &self,
        max_idle: Duration,
        pick: impl Fn(&Session) -> bool,
    ) -> Result<CleanupResult, DomainError> {
        // Chosen and closed under the lock, so no open or delete slips in between.
        let _guard = self.lifecycle.lock().await;
        // Saturating: an idle limit longer than the calendar reaches closes nothing.
        let cutoff = chrono::Duration::from_std(max_idle)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let idle: Vec<Uuid> = self
            .sessions()
            .into_iter()
            .filter(|s| {
                // The read guard is released before `pick`, which reads the state again.
                let idle = s.read().active_clients() == 0;
                idle && s.last_activity() < cutoff && pick(s)
            })
            .map(|s| s.id)
            .collect();
        let mut removed = 0;
        for id in idle {
            if self.close_locked(id).await.is_ok() {
                removed += 1;
            }
        }
        Ok(CleanupResult {
            sessions_removed: removed,
            active_sessions: self.sessions.read().len(),
        })
    }

    /// The session's events (after `since`, else from now on), joining `client` to it while the stream lives.
    pub async fn subscribe(
        &self,
        session_id: Uuid,
        since: Option<u64>,
        client: Option<ClientInfo>,
    ) -> Result<impl Stream<Item = Arc<SessionEvent>>, DomainError> {
        let session = self.session(session_id).await?;
        if *self.stop.borrow() {
            return Err(err(
                ErrorCode::StoreUnavailable,
                "the server is shutting down; subscribe again once it is back",
            ));
        }
        let rx = session.sender().subscribe();
        let mut start = session.read().last_seq;
        if since.is_some_and(|since| since > start) && session.is_follower() {
            // A client that resumes here right after dropping from the owner
            // may be ahead of this follower's last doorbell: read the log first.
            if let Err(e) = cluster::follow(&session).await {
                tracing::warn!(session = %session_id, error = %e, "a follower could not read the log");
            }
            start = session.read().last_seq;
        }
        if let Some(since) = since {
            if since > start {
                return Err(err(
                    ErrorCode::BadUserInput,
                    format!("since {since} is ahead of the session's newest event ({start})"),
                ));
            }
        }
        let client_id = client.as_ref().map(|c| c.id.clone());
        // Taken before joining, so a shutdown that starts meanwhile waits for this stream too.
        let token = self.streams.token();
        if let Some(client) = client {
            // Fails only if the session closed; a ClientJoined that cannot be
            // stored does not fail the subscription (presence is best effort).
            session.join(client).await?;
        }
        Ok(subscribe::stream(
            session,
            since,
            client_id,
            rx,
            start,
            self.stop.subscribe(),
            token,
        ))
    }

    /// Ends every subscription (and refuses new ones); the first step of a
    /// shutdown. Every leave the ending streams cause is folded (no session
    /// sends one on its own): `shutdown` sends each session's leaves as one event.
    pub fn end_subscriptions(&self) {
        for session in self.sessions() {
            session.hold_presence();
        }
        self.stop.send_replace(true);
    }

    /// Stops in order: ends every subscription and waits until each stream
    /// has ended (queueing its leave; a session's leaves are folded into one
    /// presence event, sent before it closes), closes every session and waits
    /// until its last group is committed, stores every session's record, and
    /// closes the store. Call it once no request is in flight any more.
    pub async fn shutdown(&self) {
        self.end_subscriptions();
        self.streams.close();
        self.streams.wait().await;
        let _guard = self.lifecycle.lock().await;
        let sessions = self.sessions();
        for session in &sessions {
            // After every leave (each queued before its stream ended).
            session.flush_presence();
            session.close_for_shutdown();
        }
        for session in &sessions {
            session.stopped().await;
        }
        if self.store.is_shared() {
            // Each record fenced, so an instance that lost a session leaves
            // it alone; then the lease goes, and another instance need not
            // wait for it to expire.
            for s in sessions
                .iter()
                .filter(|s| !s.is_lost() && s.epoch().is_some())
            {
                if let Err(e) = s.commit(vec![Write::UpsertSession(s.record())]).await {
                    tracing::warn!(session = %s.id, error = %e, "could not store the session's last activity on shutdown");
                }
                if let Some(epoch) = s.epoch() {
                    if let Err(e) = self.store.release_lease(s.id, epoch).await {
                        tracing::warn!(session = %s.id, error = %e, "could not release the session's lease");
                    }
                }
            }
            // Last: this instance's leaves have been forwarded by now.
            let presence = self.presence.lock().take();
            if let Some((id, epoch)) = presence {
                self.give_up_lease(id, Some(epoch)).await;
            }
            self.store.close().await;
            return;
        }
        // Last activity moves with reads too; store it once more.
        let records = sessions
            .iter()
            .map(|s| Write::UpsertSession(s.record()))
            .collect::<Vec<_>>();
        if !records.is_empty() {
            if let Err(e) = self.store.commit(records).await {
                tracing::warn!(error = %e, "could not store the sessions' last activity on shutdown");
            }
        }
        self.store.close().await;
    }
}

/// Sorts sessions oldest first (by creation, then id), the order of every list.
pub fn oldest_first(sessions: &mut [Arc<Session>]) {
    sessions.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
}
