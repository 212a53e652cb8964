//! One live session: its open project, its single writer (the actor), its event log and broadcast.
//!
//! Every change to a session goes through its actor task, one group of jobs
//! at a time. Under the state's write lock the actor applies the group (to
//! validate it and compute its ops and events), then takes it back exactly
//! (`Dispatcher::revert`), so readers only ever see committed state. It
//! commits the group's ops and events to the store in one call and only then,
//! again under one write lock, replays the group's ops and advances
//! `last_seq`: a reader sees the group's whole effect together with its
//! events' seqs, or none of it. Then it publishes and answers the callers. A
//! failed commit therefore needs no revert and leaves no trace; a panic or a
//! serialisation failure while applying fails the whole group with INTERNAL.
//!
//! Snapshots are taken off the lock: a blocking thread copies the dispatcher
//! under a read lock and serialises the copy, while the actor goes on.
//!
//! The actor runs only while there is work: the first job queued to an idle
//! session spawns it, and it ends as soon as it finds the queue empty. An idle
//! session therefore holds no task, no channel and no queue buffer, only its
//! state and a few words of bookkeeping (`Inbox`, two `Notify`s).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tracing::Instrument;

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, oneshot, Notify};
use uuid::Uuid;

use super::cluster::{self, Follow, RemoteWork};
use super::config::SessionConfig;
use super::event::{Actor, Batch, ClientInfo, EventKind, SessionEvent};
use super::subscribe::StorePages;
use super::ProjectIndex;
use crate::domain::error::err;
use crate::domain::history::Revert;
use crate::domain::{Command, Ctx, Dispatcher, DomainError, ErrorCode, Op, Template};
use crate::store::{Fence, ProjectRecord, SessionRecord, Store, StoreError, StoredEvent, Write};

/// The project a session has open.
pub struct OpenProject {
    pub record: ProjectRecord,
    pub template: Arc<Template>,
    pub dispatcher: Dispatcher,
    /// Version of the newest snapshot stored (or being stored).
    snapshot_version: u64,
}

impl OpenProject {
    pub fn new(
        record: ProjectRecord,
        template: Arc<Template>,
        dispatcher: Dispatcher,
        ops_since_snapshot: u64,
    ) -> Self {
        let snapshot_version = dispatcher.version().saturating_sub(ops_since_snapshot);
        OpenProject {
            record,
            template,
            dispatcher,
            snapshot_version,
        }
    }
}

/// NO_PROJECT, for anything that needs the session's open project.
fn no_project() -> DomainError {
    err(
        ErrorCode::NoProject,
        "this session has no project open; use openProject or createProject",
    )
}

/// What readers see of a session.
pub struct State {
    /// Boxed: an empty session then keeps one pointer here instead of a whole `OpenProject`.
    pub project: Option<Box<OpenProject>>,
    /// Seq of the newest committed event.
    pub last_seq: u64,
    /// Active clients by id, with how many subscriptions each holds.
    clients: BTreeMap<String, (ClientInfo, usize)>,
    /// Presence changes being folded into one PresenceChanged (the actor's alone).
    presence: PresenceWindow,
}

/// Presence coalescing (`SessionConfig::presence_interval`): the first change
/// after a quiet interval is sent at once as ClientJoined/ClientLeft and opens
/// a window; changes within the window are folded here and sent as one event
/// when it ends (a timer queues `Work::PresenceFlush`). A join storm of N
/// clients therefore costs about one event per interval, not N events each
/// delivered to up to N subscribers.
#[derive(Default)]
struct PresenceWindow {
    /// Changes before this instant are folded; `None` or past: quiet.
    until: Option<tokio::time::Instant>,
    /// The first `presence_list_limit` clients that joined / left in the window, in order.
    joined: Vec<ClientInfo>,
    left: Vec<ClientInfo>,
    /// Exact counts of the folded changes.
    joined_count: u32,
    left_count: u32,
    /// A flush is on its way (a timer task exists).
    scheduled: bool,
}

impl PresenceWindow {
    fn folded(&self) -> bool {
        self.joined_count > 0 || self.left_count > 0
    }
}

impl State {
    /// Presence as a follower learns it from the log: ClientJoined adds, ClientLeft removes.
    /// Applies a presence event of the log to a follower's client list;
    /// false when the event does not say who is here exactly (a
    /// `PresenceChanged` whose lists were cut to `--presence-list-limit`, or
    /// whose count disagrees), so the follower must ask the owner.
    pub(super) fn follow_presence(&mut self, event: &SessionEvent) -> bool {
        match &event.kind {
            EventKind::ClientJoined { client, .. } => {
                self.clients.insert(client.id.clone(), (client.clone(), 1));
            }
            EventKind::ClientLeft { client, .. } => {
                self.clients.remove(&client.id);
            }
            EventKind::PresenceChanged {
                joined,
                left,
                joined_count,
                left_count,
                active_clients,
            } => {
                for client in left {
                    self.clients.remove(&client.id);
                }
                for client in joined {
                    self.clients.insert(client.id.clone(), (client.clone(), 1));
                }
                return joined.len() as u64 == u64::from(*joined_count)
                    && left.len() as u64 == u64::from(*left_count)
                    && self.clients.len() as u64 == u64::from(*active_clients);
            }
            _ => {}
        }
        true
    }

    /// Every active client with its count of subscriptions (presence handed to a follower).
    pub(super) fn presence(&self) -> Vec<(ClientInfo, usize)> {
        self.clients.values().cloned().collect()
    }

    pub(super) fn set_presence(&mut self, clients: Vec<(ClientInfo, usize)>) {
        self.clients = clients
            .into_iter()
            .map(|(c, n)| (c.id.clone(), (c, n)))
            .collect();
    }

    pub fn clients(&self) -> impl Iterator<Item = &ClientInfo> {
        self.clients.values().map(|(c, _)| c)
    }

    pub fn active_clients(&self) -> usize {
        self.clients.len()
    }

    /// The open project, or NO_PROJECT.
    pub fn project(&self) -> Result<&OpenProject, DomainError> {
        self.project.as_deref().ok_or_else(no_project)
    }
}

/// The result of a command, undo or redo, once committed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub command_id: Uuid,
    pub version: u64,
    pub node_id: Option<Uuid>,
    pub events: Vec<Arc<SessionEvent>>,
    pub can_undo: bool,
    pub can_redo: bool,
}

type Reply<T> = oneshot::Sender<Result<T, DomainError>>;

/// One queued request to the actor and where its answer goes.
pub(super) struct Job {
    work: Work,
    reply: Answer,
}

pub(super) enum Work {
    Execute {
        command: Command,
        expected_version: Option<u64>,
        by: Actor,
    },
    Undo {
        by: Actor,
    },
    Redo {
        by: Actor,
    },
    Join {
        client: ClientInfo,
    },
    Leave {
        client_id: String,
    },
    /// Sends the presence changes folded so far as one event (the window's end).
    PresenceFlush,
    /// Persist the session record (last activity) even without other changes.
    Flush,
}

/// Where a job's answer goes, kept apart from the work so that a job that
/// panics is still answered.
enum Answer {
    Outcome(Reply<Outcome>),
    Unit(Reply<()>),
    None,
}

impl Answer {
    fn fail(self, e: DomainError) {
        match self {
            Answer::Outcome(r) => {
                let _ = r.send(Err(e));
            }
            Answer::Unit(r) => {
                let _ = r.send(Err(e));
            }
            Answer::None => {}
        }
    }
}

/// The jobs waiting for a session's actor, and the two flags that go with them.
///
/// One lock covers all three so that "queue a job" and "the actor found the
/// queue empty and stops" cannot interleave: a job is either taken by the
/// running actor or starts a new one, and there is never more than one actor.
#[derive(Default)]
struct Inbox {
    /// FIFO; an idle session keeps no buffer here (the actor frees it when it stops).
    jobs: VecDeque<Job>,
    /// An actor task exists and will take every job queued.
    running: bool,
    /// `close` was called: no job is accepted any more.
    closed: bool,
}

/// A live session.
pub struct Session {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// Who created the session, when authentication is on: an empty session
    /// (no project yet) belongs to its creator. Kept in memory only; a session
    /// with a project is governed by the project's members.
    pub owner: Option<String>,
    state: RwLock<State>,
    last_activity_ms: AtomicI64,
    inbox: Mutex<Inbox>,
    /// Created with the first subscriber, so an idle session costs little memory.
    /// One message per committed group: every subscriber wakes once per
    /// group and gets all its events together (they go out in one write).
    events: OnceLock<broadcast::Sender<Batch>>,
    /// The newest committed events, for subscribers catching up.
    recent: Mutex<VecDeque<Arc<SessionEvent>>>,
    /// Older events read back from the store, shared by subscribers catching up.
    pub(super) pages: StorePages,
    /// Woken once, by `close` (subscriptions end).
    closed: Notify,
    /// Woken whenever an actor stops (for `stopped`).
    idle: Notify,
    /// Woken when a job is queued to a running actor (which may be waiting for a snapshot).
    work: Notify,
    /// Set by a shutdown: jobs are refused with a message saying so.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Set when the lease went to another instance (`lose`).
    lost: std::sync::atomic::AtomicBool,
    /// Set by a shutdown: every presence change is folded until `flush_presence`.
    presence_held: std::sync::atomic::AtomicBool,
    /// On an owner: the subscriptions other instances forwarded, by client
    /// and the presence lease of the instance they are on, so they can be
    /// taken back if that instance dies (nothing would forward their leaves).
    remote_clients: Mutex<HashMap<(String, Uuid), u32>>,
    pub(super) config: Arc<SessionConfig>,
    pub(super) store: Arc<dyn Store>,
    index: Arc<ProjectIndex>,
    /// The epoch of this instance's lease on the session, in a shared store:
    /// every commit of the session is fenced with it. 0 (`epoch()` = `None`)
    /// for a store one process owns, and for a follower until it takes the
    /// lease over (`cluster::promote`). A session whose lease is lost is
    /// closed, never re-armed.
    epoch: AtomicU64,
    /// Set on a follower (a session another instance owns): its commands go
    /// to the owner and its state follows the log (`cluster.rs`).
    pub(super) follow: Option<Box<Follow>>,
}

impl Session {
    /// A session with no actor yet: the first job starts one. The caller has already stored its record.
    // Each argument is a part the hub holds separately (its record, creator,
    // project, log position, config, store, index and lease); only `register` calls this.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        record: &SessionRecord,
        owner: Option<String>,
        project: Option<OpenProject>,
        last_seq: u64,
        config: Arc<SessionConfig>,
        store: Arc<dyn Store>,
        index: Arc<ProjectIndex>,
        epoch: Option<u64>,
        follow: Option<Box<Follow>>,
    ) -> Arc<Session> {
        Arc::new(Session {
            id: record.id,
            created_at: record.created_at,
            owner,
            state: RwLock::new(State {
                project: project.map(Box::new),
                last_seq,
                clients: BTreeMap::new(),
                presence: PresenceWindow::default(),
            }),
            last_activity_ms: AtomicI64::new(record.last_activity.timestamp_millis()),
            inbox: Mutex::new(Inbox::default()),
            events: OnceLock::new(),
            recent: Mutex::new(VecDeque::new()),
            pages: StorePages::default(),
            closed: Notify::new(),
            idle: Notify::new(),
            work: Notify::new(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            lost: std::sync::atomic::AtomicBool::new(false),
            presence_held: std::sync::atomic::AtomicBool::new(false),
            remote_clients: Mutex::new(HashMap::new()),
            config,
            store,
            index,
            epoch: AtomicU64::new(epoch.unwrap_or(0)),
            follow,
        })
    }

    /// The epoch of this instance's lease, if it owns the session in a shared store.
    pub fn epoch(&self) -> Option<u64> {
        Some(self.epoch.load(Ordering::SeqCst)).filter(|e| *e > 0)
    }

    /// Makes this instance the owner under `epoch` (a follower that took the lease over).
    pub(super) fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// Whether another instance owns the session (commands are forwarded there).
    pub fn is_follower(&self) -> bool {
        self.follow
            .as_ref()
            .is_some_and(|f| f.remote.lock().is_some())
    }

    /// Write access to the state, for a follower applying what it read from the log.
    pub(super) fn write_state(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
        self.state.write()
    }

    pub(super) fn index(&self) -> &ProjectIndex {
        &self.index
    }

    /// The fence for a commit on top of the committed state, if the store is shared.
    pub(super) fn fence(&self) -> Option<Fence> {
        self.epoch().map(|epoch| Fence {
            session_id: self.id,
            epoch,
            last_seq: self.state.read().last_seq,
        })
    }

    /// Commits `writes`, fenced by the session's lease when the store is shared.
    pub(super) async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        match self.fence() {
            Some(fence) => self.store.commit_fenced(&fence, writes).await,
            None => self.store.commit(writes).await,
        }
    }

    /// Whether this instance lost the session to another (its lease was taken over).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Closes the session here because another instance owns it now: jobs
    /// are refused with a retryable error and the next use loads it afresh.
    pub(super) fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.close();
    }

    /// Read access to the session's state; hold it briefly and never across an await.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    pub fn last_activity(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.last_activity_ms.load(Ordering::Relaxed))
            .single()
            .unwrap_or(self.created_at)
    }

    /// Marks the session as used now.
    pub fn touch(&self) {
        self.last_activity_ms
            .fetch_max(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            id: self.id,
            project_id: self.state.read().project.as_ref().map(|p| p.record.id),
            created_at: self.created_at,
            last_activity: self.last_activity(),
            last_seq: self.state.read().last_seq,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inbox.lock().closed
    }

    /// As `close`, for a server that is stopping: late jobs are told so.
    pub(super) fn close_for_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.close();
    }

    /// Ends every subscription and refuses new jobs; the actor still finishes what is queued.
    pub(super) fn close(&self) {
        self.inbox.lock().closed = true;
        self.closed.notify_waiters();
    }

    /// Resolves once the session is closed.
    pub(super) async fn wait_closed(&self) {
        wait_until(&self.closed, || self.is_closed()).await
    }

    /// Waits until no actor runs. After `close`, nothing can start one again,
    /// so this is when everything queued before `close` is committed.
    pub(super) async fn stopped(&self) {
        wait_until(&self.idle, || !self.inbox.lock().running).await
    }

    pub(super) fn sender(&self) -> broadcast::Sender<Batch> {
        self.events
            .get_or_init(|| broadcast::channel(self.config.broadcast_capacity.max(1)).0)
            .clone()
    }

    /// Queues a job, spawning the actor if none is running. False (and the job dropped) if the
    /// session is closed.
    fn enqueue(self: &Arc<Self>, job: Job) -> bool {
        let mut inbox = self.inbox.lock();
        if inbox.closed {
            return false;
        }
        inbox.jobs.push_back(job);
        if inbox.running {
            // The actor may be waiting for a snapshot rather than for the lock.
            self.work.notify_one();
            return true;
        }
        // Outside a Tokio runtime (a subscription stream dropped on a thread
        // that belongs to none) nothing can run the job now; it stays queued
        // and runs with the next job queued from inside one.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            inbox.running = true;
            drop(inbox);
            runtime.spawn(actor(Running {
                session: self.clone(),
                released: false,
            }));
        }
        true
    }

    /// The error for a job refused by a closed session.
    fn closed_error(&self) -> DomainError {
        if self.is_lost() {
            err(
                ErrorCode::StoreUnavailable,
                format!(
                    "session {} moved to another instance; nothing changed, retry",
                    self.id
                ),
            )
        } else if self.shutting_down.load(Ordering::SeqCst) {
            err(
                ErrorCode::StoreUnavailable,
                "the server is shutting down; nothing changed, retry once it is back",
            )
        } else {
            err(
                ErrorCode::SessionNotFound,
                format!("session {} is closed", self.id),
            )
        }
    }

    async fn ask<T>(
        self: &Arc<Self>,
        work: Work,
        answer: impl FnOnce(Reply<T>) -> Answer,
    ) -> Result<T, DomainError> {
        self.touch();
        let (tx, rx) = oneshot::channel();
        let job = Job {
            work,
            reply: answer(tx),
        };
        if !self.enqueue(job) {
            return Err(self.closed_error());
        }
        rx.await.map_err(|_| {
            err(
                ErrorCode::SessionNotFound,
                format!("session {} was closed", self.id),
            )
        })?
    }

    /// Runs a command for `by`, whose client and user every event it causes names.
    pub async fn execute(
        self: &Arc<Self>,
        command: Command,
        expected_version: Option<u64>,
        by: Actor,
    ) -> Result<Outcome, DomainError> {
        if self.is_follower() {
            let work = RemoteWork::Execute {
                command: command.clone(),
                expected_version,
                by: by.clone(),
            };
            if let Some(done) = cluster::forward_outcome(self, work).await {
                return done;
            }
        }
        self.ask(
            Work::Execute {
                command,
                expected_version,
                by,
            },
            Answer::Outcome,
        )
        .await
    }

    pub async fn undo(self: &Arc<Self>, by: Actor) -> Result<Outcome, DomainError> {
        if self.is_follower() {
            let work = RemoteWork::Undo { by: by.clone() };
            if let Some(done) = cluster::forward_outcome(self, work).await {
                return done;
            }
        }
        self.ask(Work::Undo { by }, Answer::Outcome).await
    }

    pub async fn redo(self: &Arc<Self>, by: Actor) -> Result<Outcome, DomainError> {
        if self.is_follower() {
            let work = RemoteWork::Redo { by: by.clone() };
            if let Some(done) = cluster::forward_outcome(self, work).await {
                return done;
            }
        }
        self.ask(Work::Redo { by }, Answer::Outcome).await
    }

    pub(super) async fn join(self: &Arc<Self>, client: ClientInfo) -> Result<(), DomainError> {
        if self.is_follower() {
            let work = RemoteWork::Join {
                client: client.clone(),
                via: self.follow.as_ref().and_then(|f| f.via),
            };
            if let Some(done) = cluster::forward_unit(self, work).await {
                // Presence is best effort: an unreachable owner does not fail the subscription.
                if let Err(e) = done {
                    tracing::warn!(session = %self.id, error = %e, "could not tell the owner that a client joined");
                }
                return Ok(());
            }
        }
        self.ask(Work::Join { client }, Answer::Unit).await
    }

    /// A subscription another instance forwarded (`via` its presence lease) joined.
    pub(super) fn remote_joined(&self, client_id: &str, via: Uuid) {
        *self
            .remote_clients
            .lock()
            .entry((client_id.to_string(), via))
            .or_insert(0) += 1;
    }

    /// A subscription another instance forwarded left.
    pub(super) fn remote_left(&self, client_id: &str, via: Uuid) {
        let mut remote = self.remote_clients.lock();
        let key = (client_id.to_string(), via);
        if let Some(n) = remote.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                remote.remove(&key);
            }
        }
    }

    /// The presence leases other instances' subscriptions came through.
    pub(super) fn remote_instances(&self) -> Vec<Uuid> {
        let mut all: Vec<Uuid> = self.remote_clients.lock().keys().map(|k| k.1).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Leaves every subscription that came through a presence lease `alive`
    /// does not accept (its instance died); returns how many.
    pub(super) fn drop_remote_clients(self: &Arc<Self>, alive: impl Fn(&Uuid) -> bool) -> usize {
        let gone: Vec<(String, u32)> = {
            let mut remote = self.remote_clients.lock();
            let dead: Vec<(String, Uuid)> =
                remote.keys().filter(|k| !alive(&k.1)).cloned().collect();
            dead.into_iter()
                .filter_map(|k| remote.remove(&k).map(|n| (k.0, n)))
                .collect()
        };
        let mut left = 0;
        for (client_id, n) in gone {
            for _ in 0..n {
                self.leave(client_id.clone());
                left += 1;
            }
        }
        left
    }

    pub(super) fn leave(self: &Arc<Self>, client_id: String) {
        if self.is_follower() {
            cluster::forward_leave(self, client_id);
            return;
        }
        // Refused only once the session is closed, when nobody is told of presence any more.
        self.enqueue(Job {
            work: Work::Leave { client_id },
            reply: Answer::None,
        });
    }

    /// From now on every presence change is folded (none is sent on its
    /// own) until `flush_presence`: a shutdown's leaves become one event.
    pub(super) fn hold_presence(&self) {
        self.presence_held.store(true, Ordering::SeqCst);
    }

    /// Queues the send of the presence changes folded so far (after every job queued before it).
    pub(super) fn flush_presence(self: &Arc<Self>) {
        self.enqueue(Job {
            work: Work::PresenceFlush,
            reply: Answer::None,
        });
    }

    /// Persists the session record now (e.g. before shutdown).
    pub async fn flush(self: &Arc<Self>) -> Result<(), DomainError> {
        if self.is_follower() {
            // The owner stores the record; a follower has nothing of its own.
            return Ok(());
        }
        self.ask(Work::Flush, Answer::Unit).await
    }

    /// Committed events with seq > `after` still held in memory, if they reach back that far.
    pub(super) fn recent_after(&self, after: u64) -> Option<Vec<Arc<SessionEvent>>> {
        let recent = self.recent.lock();
        let first = recent.front().map(|e| e.seq)?;
        if first > after.saturating_add(1) {
            return None;
        }
        let skip = (after.saturating_add(1) - first) as usize;
        Some(recent.iter().skip(skip).cloned().collect())
    }
}

/// Resolves once `done()` holds, checking it whenever `notify` wakes its waiters.
///
/// The waiter is registered (`enable`) before `done` is read, so a wake-up
/// between the check and the await is not lost.
async fn wait_until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

/// The actor's hold on its session; dropped when the actor ends, however it ends.
struct Running {
    session: Arc<Session>,
    /// Set when the actor cleared `Inbox::running` itself, on finding the queue empty.
    released: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.released {
            // Cancelled (the runtime is shutting down): nobody will take the
            // queued jobs, so drop them (their callers get an error, as from a
            // dead actor) and let the next job start a fresh actor.
            let stale = {
                let mut inbox = self.session.inbox.lock();
                inbox.running = false;
                std::mem::take(&mut inbox.jobs)
            };
            drop(stale);
        }
        self.session.idle.notify_waiters();
    }
}

/// A snapshot on its way to the store: copied, serialised on a blocking
/// thread and stored by its own task, while the actor goes on committing
/// groups. Its answer is the (project, version) it was of, stored or not: a
/// failure is logged, the ops since the last snapshot are kept, and the next
/// one is due an interval later.
type SnapshotTask = tokio::task::JoinHandle<(Uuid, u64)>;

/// The session's single writer: takes the queued jobs in groups, commits each group once, then
/// publishes; ends when the queue is empty and no snapshot is on its way.
async fn actor(mut running: Running) {
    let session = running.session.clone();
    let mut snapshot: Option<SnapshotTask> = None;
    loop {
        let jobs: Option<Vec<Job>> = {
            let mut inbox = session.inbox.lock();
            if inbox.jobs.is_empty() {
                if snapshot.is_none() {
                    // Under the same lock as `enqueue` checks `running`: a job
                    // queued from now on starts a new actor.
                    inbox.running = false;
                    inbox.jobs = VecDeque::new();
                    running.released = true;
                    return;
                }
                None
            } else {
                let n = inbox.jobs.len().min(session.config.max_group.max(1));
                Some(inbox.jobs.drain(..n).collect())
            }
        };
        match jobs {
            Some(jobs) => {
                // One span per group: every line logged while it runs names
                // the session and what the group does.
                let span = tracing::info_span!(
                    "group",
                    session = %session.id,
                    jobs = jobs.len(),
                    commands = %group_kinds(&jobs),
                );
                run_group(&session, jobs).instrument(span).await;
                if snapshot.as_ref().is_some_and(|t| t.is_finished()) {
                    if let Some(task) = snapshot.take() {
                        snapshot_done(&session, task.await);
                    }
                }
                if snapshot.is_none() {
                    snapshot = start_snapshot(&session);
                }
            }
            None => {
                // Idle with a snapshot on its way: store it, unless work comes first.
                let Some(task) = snapshot.as_mut() else {
                    continue;
                };
                tokio::select! {
                    done = task => {
                        snapshot = None;
                        snapshot_done(&session, done);
                    }
                    _ = session.work.notified() => {}
                }
            }
        }
    }
}

/// Starts a snapshot of the committed state if one is due.
///
/// The copy is cheap (nodes and history entries are shared, see
/// `domain::node_table`), so the read lock that makes it is held for about a
/// millisecond for 100,000 nodes; the serialisation runs on a blocking
/// thread and the store writes the result in parts (`Store::put_snapshot`).
/// The actor does not wait for any of it.
fn start_snapshot(session: &Arc<Session>) -> Option<SnapshotTask> {
    let (project_id, copy) = {
        let state = session.state.read();
        let project = state.project.as_ref()?;
        let due = session
            .config
            .snapshot_interval
            .max(1)
            .max(project.record.node_count / 8);
        if project
            .dispatcher
            .version()
            .saturating_sub(project.snapshot_version)
            < due
        {
            return None;
        }
        (project.record.id, project.dispatcher.clone())
    };
    let session = session.clone();
    Some(tokio::spawn(async move {
        let version = copy.version();
        let json = tokio::task::spawn_blocking(move || serde_json::to_string(&copy)).await;
        match json {
            Ok(Ok(state)) => {
                if let Err(e) = session.store.put_snapshot(project_id, version, state).await {
                    tracing::warn!(session = %session.id, project = %project_id, error = %e, "snapshot not stored; the ops since the last one are kept");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(session = %session.id, project = %project_id, error = %e, "could not serialise a snapshot");
            }
            Err(e) => {
                tracing::error!(session = %session.id, project = %project_id, error = %e, "serialising a snapshot failed");
            }
        }
        (project_id, version)
    }))
}

/// Notes a finished snapshot; success or failure, the next one is due an interval later.
fn snapshot_done(session: &Session, done: Result<(Uuid, u64), tokio::task::JoinError>) {
    let mut state = session.state.write();
    let Some(project) = state.project.as_mut() else {
        return;
    };
    let version = match done {
        Ok((id, version)) if id == project.record.id => version,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(session = %session.id, error = %e, "the snapshot task failed");
            project.dispatcher.version()
        }
    };
    project.snapshot_version = project.snapshot_version.max(version);
}

/// A job's answer, held until the group is committed.
enum Pending {
    Outcome(Reply<Outcome>, Result<Outcome, DomainError>),
    Unit(Reply<()>, Result<(), DomainError>),
    /// A join: answered Ok even if its event could not be stored (presence is best effort).
    Presence(Reply<()>),
}

/// What applying one job produced.
enum Done {
    Outcome(Result<Outcome, DomainError>),
    Unit(Result<(), DomainError>),
    Presence,
    Nothing,
}

fn pending(answer: Answer, done: Done) -> Option<Pending> {
    match (answer, done) {
        (Answer::Outcome(r), Done::Outcome(result)) => Some(Pending::Outcome(r, result)),
        (Answer::Unit(r), Done::Unit(result)) => Some(Pending::Unit(r, result)),
        (Answer::Unit(r), Done::Presence) => Some(Pending::Presence(r)),
        (answer, _) => {
            // Not reached: every job kind has its answer kind.
            answer.fail(internal("a job was answered with the wrong kind of result"));
            None
        }
    }
}

/// INTERNAL with a message that says nothing of the cause (which goes to the log).
fn internal(what: &str) -> DomainError {
    err(
        ErrorCode::Internal,
        format!("{what}; nothing changed; see the server log"),
    )
}

fn group_failed() -> DomainError {
    internal("the change could not be applied because of an internal error")
}

/// A commit failure as callers see it.
fn commit_error(session: &Session, e: &StoreError) -> DomainError {
    match e {
        StoreError::Conflict(_) if session.is_lost() => err(
            ErrorCode::StoreUnavailable,
            format!(
                "session {} moved to another instance; nothing changed, retry",
                session.id
            ),
        ),
        StoreError::Conflict(_) | StoreError::Corrupt(_) => {
            tracing::error!(session = %session.id, error = %e, "commit refused by the store");
            internal("the change collides with what is stored and was not applied")
        }
        _ => err(
            ErrorCode::StoreUnavailable,
            format!(
                "the change could not be stored ({}); nothing changed, retry later",
                e.message()
            ),
        ),
    }
}

/// The text of a panic payload, for the log.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

struct Group<'a> {
    session: &'a Arc<Session>,
    next_seq: u64,
    events: Vec<Arc<SessionEvent>>,
    writes: Vec<Write>,
    reverts: Vec<Revert>,
    /// The ops applied, in order: replayed on the committed state once stored.
    ops: Vec<Op>,
    /// Presence changes of the group; kept whether or not the commit succeeds.
    clients: ClientChanges,
    pending: Vec<Pending>,
    /// A job panicked or an op could not be serialised: the whole group fails.
    broken: bool,
    /// A job asked for the session record to be stored (`Work::Flush`).
    store_record: bool,
    /// Test fault: the next op fails to serialise.
    #[cfg(any(test, feature = "test-support"))]
    unserialisable: bool,
}

impl Group<'_> {
    fn event(
        &mut self,
        command_id: Option<Uuid>,
        by: &Actor,
        kind: EventKind,
    ) -> Arc<SessionEvent> {
        let mut event = SessionEvent::new(
            self.next_seq,
            self.session.id,
            Utc::now(),
            command_id,
            by.client_id.clone(),
            kind,
        );
        event.user_id = by.user_id.clone();
        let event = Arc::new(event);
        self.next_seq += 1;
        self.events.push(event.clone());
        event
    }
}

/// A group's changes to the session's clients, over the committed map: a
/// join or leave costs O(log clients), not a copy of every client.
#[derive(Default)]
struct ClientChanges {
    changed: BTreeMap<String, Option<(ClientInfo, usize)>>,
    /// Active clients after the changes, once there are any.
    active: Option<usize>,
}

impl ClientChanges {
    fn get(&self, state: &State, id: &str) -> Option<(ClientInfo, usize)> {
        match self.changed.get(id) {
            Some(entry) => entry.clone(),
            None => state.clients.get(id).cloned(),
        }
    }

    fn set(&mut self, state: &State, id: String, entry: Option<(ClientInfo, usize)>) {
        let was = self.get(state, &id).is_some();
        let active = self.active(state) + usize::from(entry.is_some()) - usize::from(was);
        self.active = Some(active);
        self.changed.insert(id, entry);
    }

    fn active(&self, state: &State) -> usize {
        self.active.unwrap_or(state.clients.len())
    }

    /// Applies the changes to the session's clients.
    fn apply_to(&mut self, clients: &mut BTreeMap<String, (ClientInfo, usize)>) {
        for (id, entry) in std::mem::take(&mut self.changed) {
            match entry {
                Some(entry) => {
                    clients.insert(id, entry);
                }
                None => {
                    clients.remove(&id);
                }
            }
        }
        self.active = None;
    }
}

/// An op as stored: the dispatcher's `Op` plus the history limit it was
/// applied under, so that recovery evicts undo steps exactly as the original
/// did, whatever `--history-limit` says at the next start.
pub(super) fn op_json(op: &Op, history_limit: usize) -> Result<String, serde_json::Error> {
    // An op is an internally tagged object (`{"op":"Execute",...}`): the limit
    // is written as its first member, without building a `Value` tree.
    let body = serde_json::to_string(op)?;
    let Some(rest) = body.strip_prefix('{') else {
        return Ok(body);
    };
    let mut json = String::with_capacity(body.len() + 24);
    json.push_str("{\"history_limit\":");
    json.push_str(&history_limit.to_string());
    if rest != "}" {
        json.push(',');
    }
    json.push_str(rest);
    Ok(json)
}

/// A stored op and the history limit it was applied under (absent in ops stored before it was recorded).
pub(super) fn parse_op(json: &str) -> Result<(Op, Option<usize>), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Limit {
        history_limit: Option<usize>,
    }
    let op: Op = serde_json::from_str(json)?;
    let limit: Limit = serde_json::from_str(json)?;
    Ok((op, limit.history_limit))
}

/// What a group's jobs are, for its span: command types, undo, redo, presence.
fn group_kinds(jobs: &[Job]) -> String {
    let mut kinds: Vec<&str> = jobs
        .iter()
        .map(|j| match &j.work {
            Work::Execute { command, .. } => command.type_name(),
            Work::Undo { .. } => "undo",
            Work::Redo { .. } => "redo",
            Work::Join { .. } => "join",
            Work::Leave { .. } => "leave",
            Work::PresenceFlush => "presence",
            Work::Flush => "flush",
        })
        .collect();
    kinds.dedup();
    kinds.join(",")
}

async fn run_group(session: &Arc<Session>, jobs: Vec<Job>) {
    let mut group = Group {
        session,
        next_seq: 0,
        events: Vec::new(),
        writes: Vec::new(),
        reverts: Vec::new(),
        ops: Vec::new(),
        clients: ClientChanges::default(),
        pending: Vec::new(),
        broken: false,
        store_record: false,
        #[cfg(any(test, feature = "test-support"))]
        unserialisable: false,
    };
    let mut project_after = None;
    let mut close = false;
    {
        let mut state = session.state.write();
        group.next_seq = state.last_seq + 1;
        let version_before = state.project.as_ref().map(|p| p.dispatcher.version());
        for Job { work, reply } in jobs {
            let presence = matches!(
                work,
                Work::Join { .. } | Work::Leave { .. } | Work::PresenceFlush
            );
            if group.broken && !presence {
                reply.fail(group_failed());
                continue;
            }
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                apply_job(&mut state, &mut group, work)
            }));
            match applied {
                Ok(done) => group.pending.extend(pending(reply, done)),
                Err(panic) => {
                    tracing::error!(session = %session.id, cause = %panic_message(&*panic), "a change panicked while being applied; its whole group is reverted");
                    group.broken = true;
                    reply.fail(group_failed());
                }
            }
        }
        if !group.broken {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                build_writes(&state, &mut group)
            }));
            match built {
                Ok(after) => project_after = after,
                Err(panic) => {
                    tracing::error!(session = %session.id, cause = %panic_message(&*panic), "a group could not be prepared for the store; it is reverted");
                    group.broken = true;
                }
            }
        }
        // Take the group back: readers see committed state only, and this is
        // what the group's ops are replayed on once they are stored.
        if let Some(project) = state.project.as_mut() {
            for revert in group.reverts.drain(..).rev() {
                project.dispatcher.revert(revert);
            }
            if group.broken {
                let intact = Some(project.dispatcher.version()) == version_before
                    && project.dispatcher.graph().check_invariants().is_ok();
                if !intact {
                    tracing::error!(session = %session.id, project = %project.record.id, "the project could not be restored after a panic; closing the session (the store has its committed state)");
                    close = true;
                }
            }
        }
        if group.broken {
            let State { clients, .. } = &mut *state;
            group.clients.apply_to(clients);
        }
        schedule_presence_flush(session, &mut state);
    }
    if close {
        session.close();
    }
    if group.broken {
        for p in group.pending.drain(..) {
            match p {
                Pending::Outcome(reply, _) => {
                    let _ = reply.send(Err(group_failed()));
                }
                Pending::Unit(reply, _) => {
                    let _ = reply.send(Err(group_failed()));
                }
                Pending::Presence(reply) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        return;
    }

    let writes = std::mem::take(&mut group.writes);
    let started = std::time::Instant::now();
    // A group of folded presence changes only (no event, no op) has nothing
    // to store but the session's last activity, which every later commit and
    // the shutdown store anyway: it skips the store (and its fsync), so a
    // join storm costs one commit per presence interval, not one per join.
    let nothing_to_store = group.events.is_empty()
        && group.ops.is_empty()
        && project_after.is_none()
        && !group.store_record;
    let committed = if nothing_to_store {
        Ok(())
    } else {
        let committed = session.commit(writes).await;
        metrics::histogram!(crate::metrics::names::COMMIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::names::COMMIT_GROUP_SIZE)
            .record(group.pending.len() as f64);
        committed
    };
    match committed {
        Ok(()) => {
            let mut broken = None;
            {
                let mut state = session.state.write();
                if let Some(project) = state.project.as_mut() {
                    for op in group.ops.drain(..) {
                        let replayed =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                project.dispatcher.replay(op)
                            }));
                        match replayed {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => broken = Some(e.message),
                            Err(panic) => broken = Some(panic_message(&*panic)),
                        }
                        if broken.is_some() {
                            break;
                        }
                    }
                    if let Some(record) = project_after.clone() {
                        project.record = record;
                    }
                }
                // In the tail before `last_seq` moves: a subscriber that
                // reads `last_seq` finds every event up to it (an empty
                // catch-up while behind means the events are gone).
                remember(session, &group.events);
                state.last_seq = group.next_seq - 1;
                let State { clients, .. } = &mut *state;
                group.clients.apply_to(clients);
            }
            if let Some(cause) = broken {
                // Stored but not in memory: the store has the truth, so the
                // session closes and the project reopens from it.
                tracing::error!(session = %session.id, %cause, "a committed group could not be replayed; closing the session");
                session.close();
            }
            if let Some(record) = project_after {
                session.index.upsert(record);
            }
            publish(session, &group.events);
            for p in group.pending {
                match p {
                    Pending::Outcome(reply, result) => {
                        let _ = reply.send(result);
                    }
                    Pending::Unit(reply, result) => {
                        let _ = reply.send(result);
                    }
                    Pending::Presence(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
        Err(e) => {
            metrics::counter!(crate::metrics::names::STORE_ERRORS, "kind" => e.kind()).increment(1);
            tracing::warn!(session = %session.id, error = %e, "commit failed; the group is dropped");
            // Presence is what it is whether or not it could be recorded.
            {
                let mut state = session.state.write();
                let State { clients, .. } = &mut *state;
                group.clients.apply_to(clients);
            }
            if session.epoch().is_some() && matches!(e, StoreError::Conflict(_)) {
                // The lease went to another instance (or the log moved on
                // without us): this copy is stale. It closes; the next use
                // loads the session from the store under a new lease.
                tracing::warn!(session = %session.id, error = %e, "lost the session to another instance; closing it here");
                session.lose();
            }
            let failure = commit_error(session, &e);
            for p in group.pending {
                match p {
                    Pending::Outcome(reply, _) => {
                        let _ = reply.send(Err(failure.clone()));
                    }
                    Pending::Unit(reply, _) => {
                        let _ = reply.send(Err(failure.clone()));
                    }
                    Pending::Presence(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
    }
}

/// The group's writes besides its ops: the project record, events, retention
/// and the session record. Returns the project record after the group.
fn build_writes(state: &State, group: &mut Group<'_>) -> Option<ProjectRecord> {
    let session = group.session;
    let mut project_after = None;
    if let Some(project) = state.project.as_ref() {
        if project.record.version != project.dispatcher.version() {
            let mut record = project.record.clone();
            record.version = project.dispatcher.version();
            record.node_count = project.dispatcher.graph().len() as u64;
            record.updated_at = Utc::now();
            group.writes.push(Write::UpsertProject(record.clone()));
            project_after = Some(record);
        }
    }
    let last = group.next_seq - 1;
    if !group.events.is_empty() {
        group.writes.push(Write::AppendEvents {
            session_id: session.id,
            events: group
                .events
                .iter()
                .map(|e| StoredEvent {
                    seq: e.seq,
                    json: e.to_json().to_string(),
                })
                .collect(),
        });
        if let Some(keep) = session.config.event_retention {
            // At least the newest event stays, so the log always shows where seqs are.
            let keep = keep.max(1);
            // Prune whenever the log crosses a multiple of 256 events: cheap and bounded.
            let first = group.events[0].seq;
            if last > keep && (first - 1) / 256 != last / 256 {
                group.writes.push(Write::PruneEvents {
                    session_id: session.id,
                    below_seq: last - keep + 1,
                });
            }
        }
    }
    group.writes.push(Write::UpsertSession(SessionRecord {
        id: session.id,
        project_id: state.project.as_ref().map(|p| p.record.id),
        created_at: session.created_at,
        last_activity: session.last_activity(),
        last_seq: last,
    }));
    project_after
}

/// Adds committed events to the in-memory tail.
pub(super) fn remember(session: &Session, events: &[Arc<SessionEvent>]) {
    let mut recent = session.recent.lock();
    for e in events {
        recent.push_back(e.clone());
    }
    while recent.len() > session.config.recent_events {
        recent.pop_front();
    }
}

/// Broadcasts committed events (already in the tail) to live subscribers.
pub(super) fn publish(session: &Session, events: &[Arc<SessionEvent>]) {
    if events.is_empty() {
        return;
    }
    metrics::counter!(crate::metrics::names::EVENTS_PUBLISHED).increment(events.len() as u64);
    if let Some(tx) = session.events.get() {
        // No receivers is fine: nobody is listening.
        let _ = tx.send(Batch::from(events));
    }
}

fn apply_job(state: &mut State, group: &mut Group<'_>, work: Work) -> Done {
    match work {
        Work::Execute {
            command,
            expected_version,
            by,
        } => {
            let command_id = Uuid::new_v4();
            let command_type = command.type_name().to_string();
            let Some(project) = state.project.as_mut() else {
                return Done::Outcome(Err(no_project()));
            };
            #[cfg(any(test, feature = "test-support"))]
            let fault = group
                .session
                .config
                .apply_fault
                .as_ref()
                .and_then(|f| f.check(&command));
            #[cfg(any(test, feature = "test-support"))]
            if fault == Some(super::config::FaultKind::Panic) {
                panic!("injected panic while applying {command_type}");
            }
            group.event(
                Some(command_id),
                &by,
                EventKind::CommandExecuting {
                    command_type: command_type.clone(),
                },
            );
            let template = project.template.clone();
            let mut new_id = Uuid::new_v4;
            let mut ctx = Ctx::new(&template, Utc::now(), &mut new_id)
                .with_limits(group.session.config.command_limits);
            let result =
                project
                    .dispatcher
                    .execute(&command, expected_version, command_id, &mut ctx);
            let outcome = match result {
                Ok(applied) => {
                    #[cfg(any(test, feature = "test-support"))]
                    if fault == Some(super::config::FaultKind::Unserialisable) {
                        group.unserialisable = true;
                    }
                    finish_applied(project, group, applied, &by, |command_type, version| {
                        EventKind::CommandExecuted {
                            command_type,
                            version,
                        }
                    })
                }
                Err(e) => {
                    group.event(
                        Some(command_id),
                        &by,
                        EventKind::CommandFailed {
                            command_type,
                            code: e.code.as_str().to_string(),
                            message: e.message.clone(),
                        },
                    );
                    Err(e)
                }
            };
            Done::Outcome(outcome)
        }
        Work::Undo { by } => Done::Outcome(history_step(state, group, &by, false)),
        Work::Redo { by } => Done::Outcome(history_step(state, group, &by, true)),
        Work::Join { client } => {
            let (info, count) = group
                .clients
                .get(state, &client.id)
                .unwrap_or_else(|| (client.clone(), 0));
            group
                .clients
                .set(state, client.id.clone(), Some((info, count + 1)));
            if count == 0 {
                presence_change(state, group, client, true);
            }
            Done::Presence
        }
        Work::Leave { client_id } => {
            let Some((client, count)) = group.clients.get(state, &client_id) else {
                return Done::Nothing;
            };
            if count > 1 {
                group
                    .clients
                    .set(state, client_id, Some((client, count - 1)));
            } else {
                group.clients.set(state, client_id, None);
                presence_change(state, group, client, false);
            }
            Done::Nothing
        }
        Work::PresenceFlush => {
            send_folded(state, group);
            Done::Nothing
        }
        Work::Flush => {
            group.store_record = true;
            Done::Unit(Ok(()))
        }
    }
}

/// A client became present (`joined`) or absent: its own event now if the
/// session's presence is quiet, else folded into the window.
fn presence_change(state: &mut State, group: &mut Group<'_>, client: ClientInfo, joined: bool) {
    let session = group.session;
    let config = &session.config;
    let held = session.presence_held.load(Ordering::SeqCst);
    let now = tokio::time::Instant::now();
    let window = &mut state.presence;
    let quiet = !held && !window.folded() && window.until.is_none_or(|until| now >= until);
    if quiet || (!held && config.presence_interval.is_zero()) {
        window.until = now.checked_add(config.presence_interval);
        let active = u32::try_from(group.clients.active(state)).unwrap_or(u32::MAX);
        presence_event(group, client, joined, active);
        return;
    }
    let (list, count) = if joined {
        (&mut window.joined, &mut window.joined_count)
    } else {
        (&mut window.left, &mut window.left_count)
    };
    *count = count.saturating_add(1);
    if list.len() < config.presence_list_limit {
        list.push(client);
    }
}

/// A ClientJoined or ClientLeft, named for the client.
fn presence_event(group: &mut Group<'_>, client: ClientInfo, joined: bool, active_clients: u32) {
    let by = Actor {
        client_id: Some(client.id.clone()),
        user_id: client.user_id.clone(),
    };
    let kind = if joined {
        EventKind::ClientJoined {
            client,
            active_clients,
        }
    } else {
        EventKind::ClientLeft {
            client,
            active_clients,
        }
    };
    group.event(None, &by, kind);
}

/// The window's end: the folded changes as one event (a single one as its
/// own ClientJoined/ClientLeft); the next window starts now, so changes keep
/// being folded until an interval passes without any.
fn send_folded(state: &mut State, group: &mut Group<'_>) {
    state.presence.scheduled = false;
    if !state.presence.folded() {
        return;
    }
    let window = std::mem::take(&mut state.presence);
    state.presence.until =
        tokio::time::Instant::now().checked_add(group.session.config.presence_interval);
    let active = u32::try_from(group.clients.active(state)).unwrap_or(u32::MAX);
    let PresenceWindow {
        mut joined,
        mut left,
        joined_count,
        left_count,
        ..
    } = window;
    match (joined_count, left_count) {
        (1, 0) if joined.len() == 1 => presence_event(group, joined.remove(0), true, active),
        (0, 1) if left.len() == 1 => presence_event(group, left.remove(0), false, active),
        _ => {
            group.event(
                None,
                &Actor::default(),
                EventKind::PresenceChanged {
                    joined,
                    left,
                    joined_count,
                    left_count,
                    active_clients: active,
                },
            );
        }
    }
}

/// Starts the timer that ends the presence window, if changes were folded
/// and none is running (a held session is flushed by the shutdown instead).
fn schedule_presence_flush(session: &Arc<Session>, state: &mut State) {
    let window = &mut state.presence;
    if !window.folded() || window.scheduled || session.presence_held.load(Ordering::SeqCst) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    window.scheduled = true;
    let at = window.until.unwrap_or_else(tokio::time::Instant::now);
    #[cfg(any(test, feature = "test-support"))]
    let gate = session.config.presence_gate.clone();
    #[cfg(not(any(test, feature = "test-support")))]
    let gate: Option<Arc<tokio::sync::Semaphore>> = None;
    let session = session.clone();
    runtime.spawn(async move {
        match gate {
            Some(gate) => {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            None => tokio::time::sleep_until(at).await,
        }
        session.flush_presence();
    });
}

/// Undoes (or redoes) the newest step of the session's project.
fn history_step(
    state: &mut State,
    group: &mut Group<'_>,
    by: &Actor,
    redo: bool,
) -> Result<Outcome, DomainError> {
    let project = state.project.as_mut().ok_or_else(no_project)?;
    let applied = if redo {
        project.dispatcher.redo()?
    } else {
        project.dispatcher.undo()?
    };
    finish_applied(project, group, applied, by, |command_type, version| {
        if redo {
            EventKind::CommandRedone {
                command_type,
                version,
            }
        } else {
            EventKind::CommandUndone {
                command_type,
                version,
            }
        }
    })
}

/// Turns an applied dispatcher step into its events and logged op.
fn finish_applied(
    project: &mut OpenProject,
    group: &mut Group<'_>,
    applied: crate::domain::Applied,
    by: &Actor,
    done: impl FnOnce(String, u64) -> EventKind,
) -> Result<Outcome, DomainError> {
    // First, so that whatever happens next the step can be taken back.
    group.reverts.push(applied.revert);
    #[allow(unused_mut)]
    let mut op = op_json(&applied.op, group.session.config.history_limit.max(1));
    #[cfg(any(test, feature = "test-support"))]
    if std::mem::take(&mut group.unserialisable) {
        op = Err(<serde_json::Error as serde::ser::Error>::custom(
            "injected: the op cannot be serialised",
        ));
    }
    match op {
        Ok(op) => group.writes.push(Write::AppendOp {
            project_id: project.record.id,
            version: applied.version,
            op,
        }),
        Err(e) => {
            // Never acknowledged without being stored: the whole group fails.
            tracing::error!(session = %group.session.id, error = %e, "could not serialise an op; its group is reverted");
            group.broken = true;
            return Err(group_failed());
        }
    }
    group.ops.push(applied.op);
    let first = group.events.len();
    for delta in applied.deltas {
        group.event(Some(applied.command_id), by, EventKind::Delta(delta));
    }
    group.event(
        Some(applied.command_id),
        by,
        done(applied.command_type, applied.version),
    );
    // Events of an execute start with its CommandExecuting, already in the group.
    let start = group.events[..first]
        .iter()
        .rposition(|e| {
            e.command_id == Some(applied.command_id)
                && matches!(e.kind, EventKind::CommandExecuting { .. })
        })
        .filter(|i| *i + 1 == first)
        .unwrap_or(first);
    Ok(Outcome {
        command_id: applied.command_id,
        version: applied.version,
        node_id: applied.node_id,
        events: group.events[start..].to_vec(),
        can_undo: project.dispatcher.can_undo(),
        can_redo: project.dispatcher.can_redo(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Delta;

    #[test]
    fn an_op_is_stored_with_its_history_limit_and_reads_back_the_same() {
        let ops = [
            Op::Execute {
                command_id: Uuid::from_u128(7),
                command_type: "UpdateProperty".to_string(),
                forward: Vec::<Delta>::new(),
            },
            Op::Undo,
            Op::Redo,
        ];
        for op in ops {
            let json = op_json(&op, 37).unwrap();
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(value["history_limit"], 37, "{json}");
            assert_eq!(parse_op(&json).unwrap(), (op, Some(37)));
        }
    }
}
