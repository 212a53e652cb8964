//! Session events: immutable, sequenced records of everything that happened in a session.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Delta;

/// A time as chrono serialises it (RFC 3339 in UTC with `Z`, as many fraction
/// digits as needed), formatted in one piece: chrono's own `Serialize` goes
/// through `collect_str`, which escapes each formatted fragment separately and
/// cost a fifth of the serialisation of an event.
fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// A person (a websocket connection) present in a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub id: String,
    pub name: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub connected_at: DateTime<Utc>,
    /// The authenticated user behind the client; events stored before users existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Who causes a change: the client and, with authentication on, the user
/// behind it. Every event the change writes names both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub client_id: Option<String>,
    /// The authenticated user (the token's `sub`); none while authentication is off.
    pub user_id: Option<String>,
}

/// What happened; the graph deltas are the domain's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    Delta(Delta),
    CommandExecuting {
        command_type: String,
    },
    CommandExecuted {
        command_type: String,
        version: u64,
    },
    CommandFailed {
        command_type: String,
        code: String,
        message: String,
    },
    CommandUndone {
        command_type: String,
        version: u64,
    },
    CommandRedone {
        command_type: String,
        version: u64,
    },
    ClientJoined {
        client: ClientInfo,
        active_clients: u32,
    },
    ClientLeft {
        client: ClientInfo,
        active_clients: u32,
    },
    /// Presence changes folded together: those after the first of a busy
    /// interval, or a shutdown's leaves. Lists hold at most
    /// `--presence-list-limit` clients each (the first ones); counts are exact.
    PresenceChanged {
        joined: Vec<ClientInfo>,
        left: Vec<ClientInfo>,
        joined_count: u32,
        left_count: u32,
        active_clients: u32,
    },
    /// Never stored: sent to one subscriber that fell behind what is retained.
    ResyncRequired {
        reason: String,
    },
}

/// The events of one committed group, in seq order, as the session broadcasts them.
pub type Batch = Arc<[Arc<SessionEvent>]>;

/// One event of a session's stream. Live or replayed, it reads the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub seq: u64,
    pub session_id: Uuid,
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    pub command_id: Option<Uuid>,
    pub client_id: Option<String>,
    /// The authenticated user whose request caused it; none while authentication is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub kind: EventKind,
    /// Serialised form, computed once and shared by the store and every subscriber.
    #[serde(skip)]
    json: OnceLock<String>,
    /// Renderings of this event for transports, by the full text of what was
    /// rendered (e.g. a GraphQL selection), so one rendering serves every
    /// subscriber that asked for exactly the same thing.
    #[serde(skip)]
    renders: Renders,
}

/// What a rendering is keyed by: the whole description of the rendering (for
/// the websocket transport, the query text, operation name and variables), so
/// two different selections can never share one (as they could a hash).
pub type RenderKey = Arc<str>;

/// A small memo of renderings of one event; each is computed at most once.
/// Bounded by the distinct selections of the session's subscribers.
///
/// The first rendering finished is also kept in `first`, read without a
/// lock: subscribers of a session mostly share one selection, and a thousand
/// of them taking the memo's lock and cloning its `Arc`s for every event made
/// the cache lines of those counters travel between the cores once per
/// subscriber (perf, fan-out to 1,000).
#[derive(Default)]
pub struct Renders {
    all: parking_lot::Mutex<Vec<(RenderKey, Rendering)>>,
    first: OnceLock<(RenderKey, Arc<str>)>,
}

/// One rendering, filled once by whoever needs it first.
type Rendering = Arc<tokio::sync::OnceCell<Arc<str>>>;

impl Clone for Renders {
    /// A copy of an event starts with no renderings.
    fn clone(&self) -> Self {
        Renders::default()
    }
}

impl PartialEq for Renders {
    /// Renderings are a cache: they never make two events different.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Renders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Renders({})", self.all.lock().len())
    }
}

impl SessionEvent {
    pub fn new(
        seq: u64,
        session_id: Uuid,
        timestamp: DateTime<Utc>,
        command_id: Option<Uuid>,
        client_id: Option<String>,
        kind: EventKind,
    ) -> Self {
        SessionEvent {
            seq,
            session_id,
            timestamp,
            command_id,
            client_id,
            user_id: None,
            kind,
            json: OnceLock::new(),
            renders: Renders::default(),
        }
    }

    /// The rendering of this event under `key` if it is the first one made,
    /// read without taking a lock or touching a reference count.
    pub fn rendered_now(&self, key: &RenderKey) -> Option<&str> {
        let (k, text) = self.renders.first.get()?;
        (Arc::ptr_eq(k, key) || **k == **key).then_some(&**text)
    }

    /// The rendering of this event under `key`, computed by `render` only by the first caller.
    pub async fn rendered<F, Fut>(&self, key: &RenderKey, render: F) -> Arc<str>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Arc<str>>,
    {
        let cell = {
            let mut renders = self.renders.all.lock();
            // Comparing the text costs a memcmp of the selection per subscriber and event.
            match renders
                .iter()
                .find(|(k, _)| Arc::ptr_eq(k, key) || **k == **key)
            {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    renders.push((key.clone(), cell.clone()));
                    cell
                }
            }
        };
        let text = cell.get_or_init(render).await.clone();
        // Only the first key is kept there; a later one is found in `all`.
        let _ = self.renders.first.set((key.clone(), text.clone()));
        text
    }

    /// The stored form of the event.
    pub fn to_json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(self).expect("events serialise"))
    }

    /// The stored form, made when the store first reads it (see `store::Payload`).
    pub fn payload(self: &Arc<Self>) -> crate::store::Payload {
        crate::store::Payload::lazy(self.clone())
    }

    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The contract's type name of this event (`__typename`).
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            EventKind::Delta(d) => match d {
                Delta::NodeCreated { .. } => "NodeCreated",
                Delta::NodeDeleted { .. } => "NodeDeleted",
                Delta::NodeRenamed { .. } => "NodeRenamed",
                Delta::NodeLinked { .. } => "NodeLinked",
                Delta::NodeUnlinked { .. } => "NodeUnlinked",
                Delta::NodeMoved { .. } => "NodeMoved",
                Delta::PropertyChanged { .. } => "PropertyChanged",
            },
            EventKind::CommandExecuting { .. } => "CommandExecuting",
            EventKind::CommandExecuted { .. } => "CommandExecuted",
            EventKind::CommandFailed { .. } => "CommandFailed",
            EventKind::CommandUndone { .. } => "CommandUndone",
            EventKind::CommandRedone { .. } => "CommandRedone",
            EventKind::ClientJoined { .. } => "ClientJoined",
            EventKind::ClientLeft { .. } => "ClientLeft",
            EventKind::PresenceChanged { .. } => "PresenceChanged",
            EventKind::ResyncRequired { .. } => "ResyncRequired",
        }
    }
}

impl crate::store::Serialise for SessionEvent {
    fn text(&self) -> &str {
        self.to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let base = Utc.with_ymd_and_hms(2026, 12, 2, 13, 19, 37).unwrap();
        for nanos in [0, 500_000_000, 568_000_000, 568_490_000, 568_490_123, 1] {
            let t = base + chrono::Duration::nanoseconds(nanos);
            let mut ours = serde_json::Serializer::new(Vec::new());
            rfc3339(&t, &mut ours).unwrap();
            assert_eq!(
                String::from_utf8(ours.into_inner()).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
    }
}
