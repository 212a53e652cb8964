//! Group commit: a group of jobs applied under the state's write lock,
//! taken back, committed to the store in one call, then replayed and
//! published (see the module above for the whole sequence).

use super::*;

/// A job's answer, held until the group is committed.
pub(super) enum Pending {
    Outcome(Reply<Outcome>, Result<Outcome, DomainError>),
    Unit(Reply<()>, Result<(), DomainError>),
    /// A join: answered Ok even if its event could not be stored (presence is best effort).
    Presence(Reply<()>),
}

/// What applying one job produced.
pub(super) enum Done {
    Outcome(Result<Outcome, DomainError>),
    Unit(Result<(), DomainError>),
    Presence,
    Nothing,
}

pub(super) fn pending(answer: Answer, done: Done) -> Option<Pending> {
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
pub(super) fn internal(what: &str) -> DomainError {
    err(
        ErrorCode::Internal,
        format!("{what}; nothing changed; see the server log"),
    )
}

pub(super) fn group_failed() -> DomainError {
    internal("the change could not be applied because of an internal error")
}

/// A commit failure as callers see it.
pub(super) fn commit_error(session: &Session, e: &StoreError) -> DomainError {
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
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

pub(super) struct Group<'a> {
    pub(super) session: &'a Arc<Session>,
    next_seq: u64,
    events: Vec<Arc<SessionEvent>>,
    writes: Vec<Write>,
    reverts: Vec<Revert>,
    /// The ops applied, in order: replayed on the committed state once stored.
    ops: Vec<Op>,
    /// Presence changes of the group; kept whether or not the commit succeeds.
    pub(super) clients: ClientChanges,
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
    pub(super) fn event(
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
pub(super) struct ClientChanges {
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

    pub(super) fn active(&self, state: &State) -> usize {
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
pub(in crate::session) fn op_json(
    op: &Op,
    history_limit: usize,
) -> Result<String, serde_json::Error> {
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
pub(in crate::session) fn parse_op(json: &str) -> Result<(Op, Option<usize>), serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Limit {
        history_limit: Option<usize>,
    }
    let op: Op = serde_json::from_str(json)?;
    let limit: Limit = serde_json::from_str(json)?;
    Ok((op, limit.history_limit))
}

/// What a group's jobs are, for its span: command types, undo, redo, presence.
pub(super) fn group_kinds(jobs: &[Job]) -> String {
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

pub(super) async fn run_group(session: &Arc<Session>, jobs: Vec<Job>) {
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
    let nothing_to_store;
    let mut committed_now = None;
    let kept;
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
        // A group of folded presence changes only (no event, no op) has nothing
        // to store but the session's last activity, which every later commit and
        // the shutdown store anyway: it skips the store (and its fsync), so a
        // join storm costs one commit per presence interval, not one per join.
        nothing_to_store = group.events.is_empty()
            && group.ops.is_empty()
            && project_after.is_none()
            && !group.store_record;
        // A store with nothing to wait for (in memory) commits here, under
        // the state's lock: readers never see the group uncommitted, so it
        // stays applied instead of being taken back and replayed.
        if !group.broken && !nothing_to_store {
            let started = std::time::Instant::now();
            let writes = std::mem::take(&mut group.writes);
            let now = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                session.commit_now(writes)
            }))
            .unwrap_or_else(|panic| {
                crate::store::Immediate::Done(Err(StoreError::Unavailable(format!(
                    "the store panicked during a commit: {}",
                    panic_message(&*panic)
                ))))
            });
            match now {
                crate::store::Immediate::Done(result) => {
                    record_commit(started, &group);
                    committed_now = Some(result);
                }
                crate::store::Immediate::Later(writes) => group.writes = writes,
            }
        }
        kept = matches!(committed_now, Some(Ok(())));
        if kept {
            settle(session, &mut state, &mut group, &project_after);
        }
        // Otherwise take the group back: readers see committed state only, and
        // this is what the group's ops are replayed on once they are stored.
        if let (false, Some(project)) = (kept, state.project.as_mut()) {
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

    let committed = match committed_now {
        Some(result) => result,
        None if nothing_to_store => Ok(()),
        None => {
            let writes = std::mem::take(&mut group.writes);
            let started = std::time::Instant::now();
            let committed = session.commit(writes).await;
            record_commit(started, &group);
            committed
        }
    };
    match committed {
        Ok(()) => {
            let mut broken = None;
            if !kept {
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
                }
                settle(session, &mut state, &mut group, &project_after);
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

/// Makes a committed group the session's state, under its write lock: the
/// project's record, the events in the tail, `last_seq` and presence.
fn settle(
    session: &Session,
    state: &mut State,
    group: &mut Group<'_>,
    project_after: &Option<ProjectRecord>,
) {
    if let (Some(project), Some(record)) = (state.project.as_mut(), project_after) {
        project.record = record.clone();
    }
    // In the tail before `last_seq` moves: a subscriber that reads
    // `last_seq` finds every event up to it (an empty catch-up while behind
    // means the events are gone).
    remember(session, &group.events);
    state.last_seq = group.next_seq - 1;
    group.clients.apply_to(&mut state.clients);
}

/// Times a commit and records its group's size.
fn record_commit(started: std::time::Instant, group: &Group<'_>) {
    use crate::metrics::{cached, names};
    static SECONDS: OnceLock<metrics::Histogram> = OnceLock::new();
    static SIZE: OnceLock<metrics::Histogram> = OnceLock::new();
    cached(&SECONDS, || metrics::histogram!(names::COMMIT_SECONDS))
        .record(started.elapsed().as_secs_f64());
    cached(&SIZE, || metrics::histogram!(names::COMMIT_GROUP_SIZE))
        .record(group.pending.len() as f64);
}

/// The group's writes besides its ops: the project record, events, retention
/// and the session record. Returns the project record after the group.
pub(super) fn build_writes(state: &State, group: &mut Group<'_>) -> Option<ProjectRecord> {
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
                    json: e.payload(),
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
pub(in crate::session) fn remember(session: &Session, events: &[Arc<SessionEvent>]) {
    let mut recent = session.recent.lock();
    for e in events {
        recent.push_back(e.clone());
    }
    while recent.len() > session.config.recent_events {
        recent.pop_front();
    }
}

/// Broadcasts committed events (already in the tail) to live subscribers.
pub(in crate::session) fn publish(session: &Session, events: &[Arc<SessionEvent>]) {
    if events.is_empty() {
        return;
    }
    static PUBLISHED: OnceLock<metrics::Counter> = OnceLock::new();
    crate::metrics::cached(&PUBLISHED, || {
        metrics::counter!(crate::metrics::names::EVENTS_PUBLISHED)
    })
    .increment(events.len() as u64);
    if let Some(tx) = session.events.get() {
        // No receivers is fine: nobody is listening.
        let _ = tx.send(Batch::from(events));
    }
}

pub(super) fn apply_job(state: &mut State, group: &mut Group<'_>, work: Work) -> Done {
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
            if fault == Some(crate::session::config::FaultKind::Panic) {
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
                    if fault == Some(crate::session::config::FaultKind::Unserialisable) {
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

/// Undoes (or redoes) the newest step of the session's project.
pub(super) fn history_step(
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
pub(super) fn finish_applied(
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
