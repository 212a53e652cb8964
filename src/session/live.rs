//! One live session: its open project, its single writer (the actor), its event log and broadcast.
//!
//! Every change to a session goes through its actor task, one group of jobs
//! at a time: the actor applies the group to the in-memory state, commits the
//! group's ops and events to the store in one call, and only then publishes
//! the events and answers the callers. If the commit fails, every change of
//! the group is reverted exactly (`Dispatcher::revert`), so memory never runs
//! ahead of the disk.
//!
//! The actor runs only while there is work: the first job queued to an idle
//! session spawns it, and it ends as soon as it finds the queue empty. An idle
//! session therefore holds no task, no channel and no queue buffer, only its
//! state and a few words of bookkeeping (`Inbox`, two `Notify`s).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, oneshot, Notify};
use uuid::Uuid;

use super::config::SessionConfig;
use super::event::{Batch, ClientInfo, EventKind, SessionEvent};
use super::subscribe::StorePages;
use super::ProjectIndex;
use crate::domain::error::err;
use crate::domain::history::Revert;
use crate::domain::{Command, Ctx, Dispatcher, DomainError, ErrorCode, Template};
use crate::store::{ProjectRecord, SessionRecord, Store, StoredEvent, Write};

/// The project a session has open.
pub struct OpenProject {
    pub record: ProjectRecord,
    pub template: Arc<Template>,
    pub dispatcher: Dispatcher,
    /// Ops committed since the last snapshot.
    ops_since_snapshot: u64,
}

impl OpenProject {
    pub fn new(
        record: ProjectRecord,
        template: Arc<Template>,
        dispatcher: Dispatcher,
        ops_since_snapshot: u64,
    ) -> Self {
        OpenProject {
            record,
            template,
            dispatcher,
            ops_since_snapshot,
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
}

impl State {
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
#[derive(Debug, Clone)]
pub struct Outcome {
    pub command_id: Uuid,
    pub version: u64,
    pub node_id: Option<Uuid>,
    pub events: Vec<Arc<SessionEvent>>,
    pub can_undo: bool,
    pub can_redo: bool,
}

type Reply<T> = oneshot::Sender<Result<T, DomainError>>;

pub(super) enum Job {
    Execute {
        command: Command,
        expected_version: Option<u64>,
        client_id: Option<String>,
        reply: Reply<Outcome>,
    },
    Undo {
        client_id: Option<String>,
        reply: Reply<Outcome>,
    },
    Redo {
        client_id: Option<String>,
        reply: Reply<Outcome>,
    },
    Join {
        client: ClientInfo,
        reply: Reply<()>,
    },
    Leave {
        client_id: String,
    },
    /// Persist the session record (last activity) even without other changes.
    Flush {
        reply: Reply<()>,
    },
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
    pub(super) config: Arc<SessionConfig>,
    pub(super) store: Arc<dyn Store>,
    index: Arc<ProjectIndex>,
}

impl Session {
    /// A session with no actor yet: the first job starts one. The caller has already stored its record.
    pub(super) fn new(
        record: &SessionRecord,
        project: Option<OpenProject>,
        last_seq: u64,
        config: Arc<SessionConfig>,
        store: Arc<dyn Store>,
        index: Arc<ProjectIndex>,
    ) -> Arc<Session> {
        Arc::new(Session {
            id: record.id,
            created_at: record.created_at,
            state: RwLock::new(State {
                project: project.map(Box::new),
                last_seq,
                clients: BTreeMap::new(),
            }),
            last_activity_ms: AtomicI64::new(record.last_activity.timestamp_millis()),
            inbox: Mutex::new(Inbox::default()),
            events: OnceLock::new(),
            recent: Mutex::new(VecDeque::new()),
            pages: StorePages::default(),
            closed: Notify::new(),
            idle: Notify::new(),
            config,
            store,
            index,
        })
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
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inbox.lock().closed
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

    async fn ask<T>(self: &Arc<Self>, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, DomainError> {
        self.touch();
        let (tx, rx) = oneshot::channel();
        if !self.enqueue(job(tx)) {
            return Err(err(
                ErrorCode::SessionNotFound,
                format!("session {} is closed", self.id),
            ));
        }
        rx.await.map_err(|_| {
            err(
                ErrorCode::SessionNotFound,
                format!("session {} was closed", self.id),
            )
        })?
    }

    pub async fn execute(
        self: &Arc<Self>,
        command: Command,
        expected_version: Option<u64>,
        client_id: Option<String>,
    ) -> Result<Outcome, DomainError> {
        self.ask(|reply| Job::Execute {
            command,
            expected_version,
            client_id,
            reply,
        })
        .await
    }

    pub async fn undo(self: &Arc<Self>, client_id: Option<String>) -> Result<Outcome, DomainError> {
        self.ask(|reply| Job::Undo { client_id, reply }).await
    }

    pub async fn redo(self: &Arc<Self>, client_id: Option<String>) -> Result<Outcome, DomainError> {
        self.ask(|reply| Job::Redo { client_id, reply }).await
    }

    pub(super) async fn join(self: &Arc<Self>, client: ClientInfo) -> Result<(), DomainError> {
        self.ask(|reply| Job::Join { client, reply }).await
    }

    pub(super) fn leave(self: &Arc<Self>, client_id: String) {
        // Refused only once the session is closed, when nobody is told of presence any more.
        self.enqueue(Job::Leave { client_id });
    }

    /// Persists the session record now (e.g. before shutdown).
    pub async fn flush(self: &Arc<Self>) -> Result<(), DomainError> {
        self.ask(|reply| Job::Flush { reply }).await
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

/// A job's answer, held until the group is committed.
enum Pending {
    Outcome(Reply<Outcome>, Result<Outcome, DomainError>),
    Unit(Reply<()>, Result<(), DomainError>),
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
            // Cancelled (the runtime is shutting down) or panicked: nobody will
            // take the queued jobs, so drop them (their callers get an error,
            // as from a dead actor) and let the next job start a fresh actor.
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

/// The session's single writer: takes the queued jobs in groups, commits each group once, then
/// publishes; ends when the queue is empty.
async fn actor(mut running: Running) {
    let session = running.session.clone();
    loop {
        let jobs: Vec<Job> = {
            let mut inbox = session.inbox.lock();
            if inbox.jobs.is_empty() {
                // Under the same lock as `enqueue` checks `running`: a job
                // queued from now on starts a new actor.
                inbox.running = false;
                inbox.jobs = VecDeque::new();
                running.released = true;
                return;
            }
            let n = inbox.jobs.len().min(session.config.max_group.max(1));
            inbox.jobs.drain(..n).collect()
        };
        run_group(&session, jobs).await;
    }
}

struct Group<'a> {
    session: &'a Session,
    next_seq: u64,
    events: Vec<Arc<SessionEvent>>,
    writes: Vec<Write>,
    reverts: Vec<Revert>,
    /// Clients that joined in this group: a failed commit takes their joins back.
    joined: Vec<String>,
    pending: Vec<Pending>,
}

impl Group<'_> {
    fn event(
        &mut self,
        command_id: Option<Uuid>,
        client_id: &Option<String>,
        kind: EventKind,
    ) -> Arc<SessionEvent> {
        let event = Arc::new(SessionEvent::new(
            self.next_seq,
            self.session.id,
            Utc::now(),
            command_id,
            client_id.clone(),
            kind,
        ));
        self.next_seq += 1;
        self.events.push(event.clone());
        event
    }
}

async fn run_group(session: &Session, jobs: Vec<Job>) {
    let mut group = {
        let last_seq = session.state.read().last_seq;
        Group {
            session,
            next_seq: last_seq + 1,
            events: Vec::new(),
            writes: Vec::new(),
            reverts: Vec::new(),
            joined: Vec::new(),
            pending: Vec::new(),
        }
    };
    let project_before;
    let mut project_after = None;
    {
        let mut state = session.state.write();
        project_before = state.project.as_ref().map(|p| p.record.clone());
        for job in jobs {
            apply_job(&mut state, &mut group, job);
        }
        if let Some(project) = state.project.as_mut() {
            if project_before.as_ref().map(|r| r.version) != Some(project.dispatcher.version()) {
                project.record.version = project.dispatcher.version();
                project.record.node_count = project.dispatcher.graph().len() as u64;
                project.record.updated_at = Utc::now();
                group
                    .writes
                    .push(Write::UpsertProject(project.record.clone()));
                let due = session
                    .config
                    .snapshot_interval
                    .max(project.record.node_count / 8);
                if project.ops_since_snapshot >= due {
                    match serde_json::to_string(&project.dispatcher) {
                        Ok(state_json) => group.writes.push(Write::Snapshot {
                            project_id: project.record.id,
                            version: project.dispatcher.version(),
                            state: state_json,
                        }),
                        Err(e) => tracing::error!(error = %e, "could not serialise a snapshot"),
                    }
                }
                project_after = Some(project.record.clone());
            }
        }
    }
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
            // Prune whenever the log crosses a multiple of 256 events: cheap and bounded.
            let last = group.next_seq - 1;
            let first = group.events[0].seq;
            if last > keep && (first - 1) / 256 != last / 256 {
                group.writes.push(Write::PruneEvents {
                    session_id: session.id,
                    below_seq: last - keep + 1,
                });
            }
        }
    }
    group.writes.push(Write::UpsertSession(session.record()));

    let snapshot_written = group
        .writes
        .iter()
        .any(|w| matches!(w, Write::Snapshot { .. }));
    let writes = std::mem::take(&mut group.writes);
    match session.store.commit(writes).await {
        Ok(()) => {
            {
                let mut state = session.state.write();
                state.last_seq = group.next_seq - 1;
                if let Some(project) = state.project.as_mut() {
                    if snapshot_written {
                        project.ops_since_snapshot = 0;
                    }
                }
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
                }
            }
        }
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "commit failed; reverting the group");
            {
                let mut state = session.state.write();
                if let Some(project) = state.project.as_mut() {
                    for revert in group.reverts.drain(..).rev() {
                        project.dispatcher.revert(revert);
                        project.ops_since_snapshot = project.ops_since_snapshot.saturating_sub(1);
                    }
                    if let Some(before) = project_before {
                        project.record = before;
                    }
                }
                // Their subscriptions fail, so they never joined. (Leaves stay: those clients are gone.)
                for id in group.joined.drain(..) {
                    if let Some(entry) = state.clients.get_mut(&id) {
                        entry.1 -= 1;
                        if entry.1 == 0 {
                            state.clients.remove(&id);
                        }
                    }
                }
            }
            let failure = err(
                ErrorCode::StoreUnavailable,
                format!(
                    "the change could not be stored ({}); nothing changed, retry later",
                    e.0
                ),
            );
            for p in group.pending {
                match p {
                    Pending::Outcome(reply, _) => {
                        let _ = reply.send(Err(failure.clone()));
                    }
                    Pending::Unit(reply, _) => {
                        let _ = reply.send(Err(failure.clone()));
                    }
                }
            }
        }
    }
}

fn publish(session: &Session, events: &[Arc<SessionEvent>]) {
    if events.is_empty() {
        return;
    }
    {
        let mut recent = session.recent.lock();
        for e in events {
            recent.push_back(e.clone());
        }
        while recent.len() > session.config.recent_events {
            recent.pop_front();
        }
    }
    if let Some(tx) = session.events.get() {
        // No receivers is fine: nobody is listening.
        let _ = tx.send(Batch::from(events));
    }
}

fn apply_job(state: &mut State, group: &mut Group<'_>, job: Job) {
    match job {
        Job::Execute {
            command,
            expected_version,
            client_id,
            reply,
        } => {
            let command_id = Uuid::new_v4();
            let command_type = command.type_name().to_string();
            let Some(project) = state.project.as_mut() else {
                let e = no_project();
                group.pending.push(Pending::Outcome(reply, Err(e)));
                return;
            };
            group.event(
                Some(command_id),
                &client_id,
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
                Ok(applied) => finish_applied(
                    project,
                    group,
                    applied,
                    &client_id,
                    |command_type, version| EventKind::CommandExecuted {
                        command_type,
                        version,
                    },
                ),
                Err(e) => {
                    group.event(
                        Some(command_id),
                        &client_id,
                        EventKind::CommandFailed {
                            command_type,
                            code: e.code.as_str().to_string(),
                            message: e.message.clone(),
                        },
                    );
                    Err(e)
                }
            };
            group.pending.push(Pending::Outcome(reply, outcome));
        }
        Job::Undo { client_id, reply } => {
            let outcome = history_step(state, group, &client_id, false);
            group.pending.push(Pending::Outcome(reply, outcome));
        }
        Job::Redo { client_id, reply } => {
            let outcome = history_step(state, group, &client_id, true);
            group.pending.push(Pending::Outcome(reply, outcome));
        }
        Job::Join { client, reply } => {
            let entry = state
                .clients
                .entry(client.id.clone())
                .or_insert_with(|| (client.clone(), 0));
            entry.1 += 1;
            group.joined.push(client.id.clone());
            if entry.1 == 1 {
                let active = state.clients.len() as u32;
                group.event(
                    None,
                    &Some(client.id.clone()),
                    EventKind::ClientJoined {
                        client,
                        active_clients: active,
                    },
                );
            }
            group.pending.push(Pending::Unit(reply, Ok(())));
        }
        Job::Leave { client_id } => {
            let Some(entry) = state.clients.get_mut(&client_id) else {
                return;
            };
            entry.1 -= 1;
            if entry.1 == 0 {
                let (client, _) = state.clients.remove(&client_id).expect("present");
                let active = state.clients.len() as u32;
                group.event(
                    None,
                    &Some(client_id),
                    EventKind::ClientLeft {
                        client,
                        active_clients: active,
                    },
                );
            }
        }
        Job::Flush { reply } => group.pending.push(Pending::Unit(reply, Ok(()))),
    }
}

/// Undoes (or redoes) the newest step of the session's project.
fn history_step(
    state: &mut State,
    group: &mut Group<'_>,
    client_id: &Option<String>,
    redo: bool,
) -> Result<Outcome, DomainError> {
    let project = state.project.as_mut().ok_or_else(no_project)?;
    let applied = if redo {
        project.dispatcher.redo()?
    } else {
        project.dispatcher.undo()?
    };
    finish_applied(
        project,
        group,
        applied,
        client_id,
        |command_type, version| {
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
        },
    )
}

/// Turns an applied dispatcher step into its events and logged op.
fn finish_applied(
    project: &mut OpenProject,
    group: &mut Group<'_>,
    applied: crate::domain::Applied,
    client_id: &Option<String>,
    done: impl FnOnce(String, u64) -> EventKind,
) -> Result<Outcome, DomainError> {
    let first = group.events.len();
    for delta in applied.deltas {
        group.event(Some(applied.command_id), client_id, EventKind::Delta(delta));
    }
    group.event(
        Some(applied.command_id),
        client_id,
        done(applied.command_type, applied.version),
    );
    match serde_json::to_string(&applied.op) {
        Ok(op) => group.writes.push(Write::AppendOp {
            project_id: project.record.id,
            version: applied.version,
            op,
        }),
        Err(e) => tracing::error!(error = %e, "could not serialise an op"),
    }
    group.reverts.push(applied.revert);
    project.ops_since_snapshot += 1;
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
