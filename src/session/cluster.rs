//! A session in a cluster of instances on one shared store: followers and forwarding.
//!
//! One instance owns a session (its lease holder, `hub.rs`); every other
//! instance that is asked for it keeps a *follower*: a replica of the
//! session's state that follows the log, and the place its local
//! subscribers and readers use.
//!
//! - The owner's commit rings a doorbell in the store (`Store::listen`,
//!   PostgreSQL `NOTIFY`). The hub wakes the follower (`Follow::ring`); its
//!   one pump task reads the events after its cursor from the table, and the
//!   ops those events name, replays the ops into the replica and publishes
//!   the events to its subscribers through the session's own broadcast. One
//!   read per doorbell and session, whatever the number of subscribers. A
//!   lost doorbell costs latency only: the pump also reads every lease
//!   period, and after the listener reconnects.
//! - Commands, joins and leaves on a follower are forwarded to the owner
//!   (`forward`) over HTTP (`/internal/forward`, authenticated by the cluster
//!   secret), carrying the caller's identity; access was checked where the
//!   request entered. The answer comes back as on one instance; the follower
//!   then reads the log up to the command's events, so the caller reads its own writes.
//! - An owner that cannot be reached (connection refused) is replaced: the
//!   follower takes the lease once it has expired (`promote`), reads the log
//!   to its end (the fence now refuses anything the old owner could still
//!   send) and becomes the owner in place, its subscribers untouched. A
//!   request whose outcome is unknown (sent, no answer) is never retried: the
//!   caller gets STORE_UNAVAILABLE saying so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use super::event::{Actor, ClientInfo, EventKind, SessionEvent};
use super::live::{parse_op, publish, remember, Outcome, Session};
use crate::domain::error::err;
use crate::domain::{Command, DomainError, ErrorCode};
use crate::store::{LeaseClaim, StoreError};

/// The internal endpoint forwarded work is posted to.
pub const FORWARD_PATH: &str = "/internal/forward";
/// The header that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-talus-cluster-secret";

/// Events a follower reads per query.
const PAGE: usize = 1000;

/// How this instance reaches the others: one HTTP client (connections pooled
/// per owner) and the cluster secret.
#[derive(Clone)]
pub struct ClusterLink {
    client: reqwest::Client,
    secret: Option<String>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ClusterLink {
    /// A link whose forwarded requests give up after `timeout`; at most
    /// `idle_connections` idle connections are kept per owner.
    pub fn new(
        secret: Option<String>,
        timeout: Duration,
        idle_connections: usize,
    ) -> anyhow::Result<ClusterLink> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .timeout(timeout)
            .pool_max_idle_per_host(idle_connections)
            .build()?;
        Ok(ClusterLink { client, secret })
    }

    /// Whether `given` is the cluster secret (no secret configured: anything is).
    pub fn accepts(&self, given: Option<&str>) -> bool {
        match &self.secret {
            None => true,
            Some(secret) => {
                given.is_some_and(|g| constant_time_eq(g.as_bytes(), secret.as_bytes()))
            }
        }
    }

    async fn send(&self, url: &str, body: &Forwarded) -> Sent {
        let mut request = self.client.post(format!("{url}{FORWARD_PATH}")).json(body);
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret);
        }
        match request.send().await {
            Err(e) if e.is_connect() => Sent::NotDelivered(e.to_string()),
            Err(e) => Sent::Unknown(e.to_string()),
            Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                Sent::Answer(ForwardAnswer::Done(Err(err(
                    ErrorCode::StoreUnavailable,
                    "the instance that serves this session refused this one's cluster secret (--cluster-secret must be the same on every instance); nothing changed",
                ))))
            }
            Ok(response) => match response.json::<ForwardAnswer>().await {
                Ok(answer) => Sent::Answer(answer),
                Err(e) => Sent::Unknown(e.to_string()),
            },
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What became of a forwarded request.
enum Sent {
    Answer(ForwardAnswer),
    /// Never reached the owner (no connection): nothing was applied.
    NotDelivered(String),
    /// Sent, but no answer: it may or may not have been applied.
    Unknown(String),
}

/// Who owns a followed session, and where it takes forwarded work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Remote {
    pub owner: String,
    pub url: Option<String>,
}

/// A follower's part of a session.
pub(super) struct Follow {
    /// The owner; `None` once this instance took the session over.
    pub remote: Mutex<Option<Remote>>,
    /// Woken by a doorbell (or a reconnect) for this session.
    pub ring: Notify,
    /// One reader of the log at a time: the pump, a read-your-writes catch
    /// up, or a takeover.
    reader: tokio::sync::Mutex<()>,
    /// Presence up to this seq came from the owner (`adopt_presence`); the
    /// log's ClientJoined/ClientLeft after it are applied.
    presence_after: AtomicU64,
    /// The log's presence events no longer say exactly who is here (a
    /// folded event with cut lists): the pump asks the owner.
    presence_stale: std::sync::atomic::AtomicBool,
    /// This instance's presence lease, named with every forwarded join and leave.
    pub via: Option<Uuid>,
}

impl Follow {
    pub fn new(owner: String, url: Option<String>, via: Option<Uuid>) -> Box<Follow> {
        Box::new(Follow {
            via,
            remote: Mutex::new(Some(Remote { owner, url })),
            ring: Notify::new(),
            reader: tokio::sync::Mutex::new(()),
            presence_after: AtomicU64::new(0),
            presence_stale: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Work forwarded from a follower to the owner, with the caller's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    pub session_id: Uuid,
    pub work: RemoteWork,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteWork {
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
    /// `via`: the presence lease of the instance the client is on
    /// (`Hub::presence_lease`), so the owner drops the client if that instance dies.
    Join {
        client: ClientInfo,
        #[serde(default)]
        via: Option<Uuid>,
    },
    Leave {
        client_id: String,
        #[serde(default)]
        via: Option<Uuid>,
    },
    Close,
    /// The owner's active clients and the seq they are current at.
    Presence,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteReply {
    Outcome(Outcome),
    Unit,
    Presence {
        last_seq: u64,
        clients: Vec<(ClientInfo, usize)>,
    },
}

/// The internal endpoint's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardAnswer {
    Done(Result<RemoteReply, DomainError>),
    /// The addressed instance does not own the session (any more).
    NotOwner,
}

fn unavailable(message: String) -> DomainError {
    err(ErrorCode::StoreUnavailable, message)
}

fn store_unavailable(e: StoreError) -> DomainError {
    unavailable(format!(
        "the store could not be used ({}); nothing changed, retry later",
        e.message()
    ))
}

/// The outcome of a takeover attempt.
enum Promotion {
    /// This instance owns the session now (or already did).
    Promoted,
    /// Another instance still owns it.
    Owned {
        changed: bool,
        owner: String,
        expires_in: Duration,
    },
}

/// Sends `work` to the owner. `None`: this instance owns the session now
/// (it took it over), so the caller runs the work itself.
async fn forward(
    session: &Arc<Session>,
    work: RemoteWork,
) -> Option<Result<RemoteReply, DomainError>> {
    let follow = session.follow.as_ref()?;
    let Some(link) = session.config.cluster.as_ref() else {
        return Some(Err(unavailable(format!(
            "session {} is served by another instance and this one has no cluster link; retry there",
            session.id
        ))));
    };
    // Twice at most: once more after learning of a new owner.
    for _ in 0..2 {
        let remote = follow.remote.lock().clone()?;
        let Some(url) = remote.url.clone() else {
            return Some(Err(unavailable(format!(
                "session {} is served by instance {}, which advertises no address; nothing changed, retry later",
                session.id, remote.owner
            ))));
        };
        let body = Forwarded {
            session_id: session.id,
            work: work.clone(),
        };
        let why = match link.send(&url, &body).await {
            Sent::Answer(ForwardAnswer::Done(result)) => return Some(result),
            Sent::Answer(ForwardAnswer::NotOwner) => {
                format!("instance {} no longer serves it", remote.owner)
            }
            Sent::NotDelivered(e) => format!("instance {} cannot be reached ({e})", remote.owner),
            Sent::Unknown(e) => {
                return Some(Err(unavailable(format!(
                    "instance {} that serves session {} did not answer ({e}); the change may or may not have been applied: read the session's version before retrying",
                    remote.owner, session.id
                ))))
            }
        };
        match promote(session).await {
            Ok(Promotion::Promoted) => return None,
            Ok(Promotion::Owned { changed: true, .. }) => continue,
            Ok(Promotion::Owned {
                owner, expires_in, ..
            }) => {
                return Some(Err(unavailable(format!(
                    "session {}: {why}; nothing changed, retry (its lease expires in {:.1} s unless {owner} renews it)",
                    session.id,
                    expires_in.as_secs_f64()
                ))))
            }
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Err(unavailable(format!(
        "session {} changed owners while the request was forwarded; nothing changed, retry",
        session.id
    ))))
}

/// `forward` for a command, undo or redo; the follower then reads the log up
/// to the command's events, so what the caller reads next includes them.
pub(super) async fn forward_outcome(
    session: &Arc<Session>,
    work: RemoteWork,
) -> Option<Result<Outcome, DomainError>> {
    let result = forward(session, work).await?;
    let outcome = match result {
        Ok(RemoteReply::Outcome(outcome)) => outcome,
        Ok(other) => {
            return Some(Err(err(
                ErrorCode::Internal,
                format!("the owner answered a command with {other:?}"),
            )))
        }
        Err(e) => return Some(Err(e)),
    };
    // Read-your-writes: the events are committed, so one read finds them.
    if let Some(seq) = outcome.events.last().map(|e| e.seq) {
        if session.read().last_seq < seq {
            if let Err(e) = follow(session).await {
                tracing::warn!(session = %session.id, error = %e, "could not read the log after a forwarded command");
            }
        }
    }
    Some(Ok(outcome))
}

/// Asks the owner to close the session (`closeSession` on a follower).
pub(super) async fn forward_close(session: &Arc<Session>) -> Result<(), DomainError> {
    match forward(session, RemoteWork::Close).await {
        Some(result) => result.map(|_| ()),
        // Taken over: closing is this instance's own business now.
        None => Ok(()),
    }
}

/// `forward` for a join.
pub(super) async fn forward_unit(
    session: &Arc<Session>,
    work: RemoteWork,
) -> Option<Result<(), DomainError>> {
    let result = forward(session, work).await?;
    Some(result.map(|_| ()))
}

/// Forwards a leave in the background (a stream's drop cannot wait for it).
pub(super) fn forward_leave(session: &Arc<Session>, client_id: String) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let session = session.clone();
    runtime.spawn(async move {
        let work = RemoteWork::Leave {
            client_id: client_id.clone(),
            via: session.follow.as_ref().and_then(|f| f.via),
        };
        match forward(&session, work).await {
            // Taken over meanwhile: the leave is this instance's to apply.
            None => session.leave(client_id),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(session = %session.id, error = %e, "could not tell the owner that a client left")
            }
        }
    });
}

/// Takes the session over if its lease is free or expired: reads the log to
/// its end and becomes the owner in place.
async fn promote(session: &Arc<Session>) -> Result<Promotion, DomainError> {
    let Some(follow) = session.follow.as_ref() else {
        return Ok(Promotion::Promoted);
    };
    let _reader = follow.reader.lock().await;
    let before = follow.remote.lock().clone();
    let Some(before) = before else {
        return Ok(Promotion::Promoted);
    };
    match session
        .store
        .take_lease(session.id)
        .await
        .map_err(store_unavailable)?
    {
        LeaseClaim::Held(fence) => {
            // With the lease ours, the old owner's commits are refused from
            // here on: the log read now is the whole log.
            if let Err(e) = follow_locked(session).await {
                if let Err(e) = session.store.release_lease(session.id, fence.epoch).await {
                    tracing::warn!(session = %session.id, error = %e, "could not release a lease");
                }
                return Err(e);
            }
            session.set_epoch(fence.epoch);
            *follow.remote.lock() = None;
            tracing::info!(session = %session.id, epoch = fence.epoch, from = %before.owner, last_seq = session.read().last_seq, "took the session over");
            Ok(Promotion::Promoted)
        }
        LeaseClaim::HeldBy {
            owner,
            owner_url,
            expires_in,
        } => {
            let now = Remote {
                owner: owner.clone(),
                url: owner_url,
            };
            let changed = now != before;
            *follow.remote.lock() = Some(now);
            Ok(Promotion::Owned {
                changed,
                owner,
                expires_in,
            })
        }
    }
}

/// Takes the owner's presence (its active clients, current at some seq), so
/// a follower counts every client of the session from the start.
pub(super) async fn adopt_presence(session: &Arc<Session>) {
    let Some(follow) = session.follow.as_ref() else {
        return;
    };
    match forward(session, RemoteWork::Presence).await {
        Some(Ok(RemoteReply::Presence { last_seq, clients })) => {
            session.write_state().set_presence(clients);
            follow.presence_after.store(last_seq, Ordering::SeqCst);
        }
        Some(Ok(other)) => {
            tracing::warn!(session = %session.id, "the owner answered presence with {other:?}")
        }
        Some(Err(e)) => {
            tracing::warn!(session = %session.id, error = %e, "could not learn the owner's presence; counting from the log")
        }
        None => {}
    }
}

/// Starts the follower's pump: one task that reads the log whenever the
/// doorbell rings (and every `every`, in case a doorbell was lost), until the
/// session closes or this instance takes it over.
pub(super) fn start_pump(session: Arc<Session>, every: Duration) {
    tokio::spawn(async move {
        let Some(f) = session.follow.as_ref() else {
            return;
        };
        loop {
            let rung = f.ring.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            if session.is_closed() || !session.is_follower() {
                return;
            }
            if let Err(e) = follow(&session).await {
                tracing::warn!(session = %session.id, error = %e, "a follower could not read the log");
            }
            if f.presence_stale.swap(false, Ordering::SeqCst) {
                adopt_presence(&session).await;
            }
            tokio::select! {
                _ = &mut rung => {}
                _ = session.wait_closed() => return,
                _ = tokio::time::sleep(every) => {
                    // No doorbell for a whole lease: the owner may have closed
                    // the session (its row is gone). Then the follower ends
                    // too, and so do its subscriptions, as they do on the owner.
                    if let Ok(None) = session.store.session(session.id).await {
                        tracing::info!(session = %session.id, "the session was closed by its owner; its follower here ends");
                        session.lose();
                        return;
                    }
                }
            }
        }
    });
}

/// Reads what the log has after the follower's cursor and applies it.
pub(super) async fn follow(session: &Arc<Session>) -> Result<(), DomainError> {
    let Some(f) = session.follow.as_ref() else {
        return Ok(());
    };
    let _reader = f.reader.lock().await;
    follow_locked(session).await
}

/// `follow` for a caller holding the reader lock: pages of events after
/// `last_seq`, and for each page the ops its events name (the ops of a group
/// are committed with its events, so they are stored once the events are),
/// replayed and published under one write lock, as the owner does.
async fn follow_locked(session: &Arc<Session>) -> Result<(), DomainError> {
    let Some(f) = session.follow.as_ref() else {
        return Ok(());
    };
    loop {
        if f.remote.lock().is_none() {
            return Ok(());
        }
        let (after, version, project_id) = {
            let state = session.read();
            let project = state.project.as_ref();
            (
                state.last_seq,
                project.map(|p| p.dispatcher.version()),
                project.map(|p| p.record.id),
            )
        };
        let stored = session
            .store
            .events(session.id, after, PAGE)
            .await
            .map_err(store_unavailable)?;
        let Some(last) = stored.last().map(|s| s.seq) else {
            return Ok(());
        };
        let full = stored.len() == PAGE;
        let mut events = Vec::with_capacity(stored.len());
        for s in &stored {
            let event = SessionEvent::from_json(&s.json).map_err(|e| {
                err(
                    ErrorCode::Internal,
                    format!(
                        "event {} of session {} cannot be read: {e}",
                        s.seq, session.id
                    ),
                )
            })?;
            events.push(Arc::new(event));
        }
        let upto = events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::CommandExecuted { version, .. }
                | EventKind::CommandUndone { version, .. }
                | EventKind::CommandRedone { version, .. } => Some(version),
                _ => None,
            })
            .max();
        let mut ops = Vec::new();
        if let (Some(pid), Some(version), Some(upto)) = (project_id, version, upto) {
            if upto > version {
                let stored_ops = session
                    .store
                    .ops_between(pid, version, upto)
                    .await
                    .map_err(store_unavailable)?;
                if stored_ops.len() as u64 != upto - version
                    || stored_ops.first().map(|o| o.0) != Some(version + 1)
                {
                    // A snapshot replaced the ops this replica needs: it
                    // closes, and the next use loads the session afresh.
                    session.lose();
                    return Err(unavailable(format!(
                        "the follower of session {} fell behind a snapshot; it reloads on the next request",
                        session.id
                    )));
                }
                for (v, json) in stored_ops {
                    let parsed = parse_op(&json).map_err(|e| {
                        err(
                            ErrorCode::Internal,
                            format!("op {v} of project {pid} cannot be read: {e}"),
                        )
                    })?;
                    ops.push(parsed);
                }
            }
        }
        let presence_after = f.presence_after.load(Ordering::SeqCst);
        let limit = session.config.history_limit.max(1);
        let mut broken = None;
        let mut presence_unknown = false;
        let record = {
            let mut state = session.write_state();
            let mut record = None;
            if let Some(project) = state.project.as_mut() {
                for (op, applied_under) in ops {
                    project
                        .dispatcher
                        .set_history_limit(applied_under.unwrap_or(usize::MAX));
                    if let Err(e) = project.dispatcher.replay(op) {
                        broken = Some(e);
                        break;
                    }
                }
                project.dispatcher.set_history_limit(limit);
                project.record.version = project.dispatcher.version();
                project.record.node_count = project.dispatcher.graph().len() as u64;
                record = Some(project.record.clone());
            }
            if broken.is_none() {
                for e in &events {
                    if e.seq > presence_after && !state.follow_presence(e) {
                        presence_unknown = true;
                    }
                }
                remember(session, &events);
                state.last_seq = last;
            }
            record
        };
        if let Some(e) = broken {
            session.lose();
            return Err(err(
                ErrorCode::Internal,
                format!(
                    "the follower of session {} could not replay an op ({}); it reloads on the next request",
                    session.id, e.message
                ),
            ));
        }
        if let Some(record) = record {
            session.index().upsert(record);
        }
        publish(session, &events);
        if presence_unknown {
            // A folded presence event named only some of the clients: the
            // pump asks the owner for the exact list once it has let go of
            // the reader lock (the answer's own catch-up would wait for it).
            f.presence_stale.store(true, Ordering::SeqCst);
        }
        if !full {
            return Ok(());
        }
    }
}
