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
//!
//! Here: the handle, its state, the inbox and the actor. The group commit is
//! in `group`, presence and its coalescing in `presence`.

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

mod group;
mod presence;

use group::*;
pub(super) use group::{parse_op, publish, remember};
use presence::*;

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

impl State {
    /// Applies a presence event of the log to a follower's client list
    /// (ClientJoined adds, ClientLeft removes, PresenceChanged does both);
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

    /// `commit` at once if the store can (see `Store::commit_now`); never
    /// for a fenced (cluster) commit. Called with the state's write lock
    /// held, so it must not take the state (as `fence` does).
    pub(super) fn commit_now(&self, writes: Vec<Write>) -> crate::store::Immediate {
        match self.epoch() {
            Some(_) => crate::store::Immediate::Later(writes),
            None => self.store.commit_now(writes),
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
                // One span per group at debug: with `RUST_LOG=talus_tally=debug`
                // every line logged while it runs names the session and what
                // the group does. At the default filter it is disabled, since
                // formatting its fields was ~4% of a small mutation's CPU, and
                // the group's own warnings and errors name their session.
                let span = tracing::debug_span!(
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
