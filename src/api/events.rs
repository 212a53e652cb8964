//! The `SessionEvent` interface and its types, resolved only from the recorded event.

use std::sync::Arc;

use async_graphql::{Interface, Json, Object, ID};
use serde_json::Value;

use super::error::{int, Result};
use super::scalars::Timestamp;
use super::types::ClientView;
use crate::domain::{Delta, Key, Template};
use crate::session::{EventKind, SessionEvent};

/// A recorded event plus the template its nodes belong to.
#[derive(Clone)]
pub struct EventView {
    pub event: Arc<SessionEvent>,
    pub template: Option<Arc<Template>>,
}

fn id<T: ToString>(v: &T) -> ID {
    ID(v.to_string())
}

/// Defines an event object type with the interface's fields plus its own.
macro_rules! event_type {
    ($(#[$doc:meta])* $name:ident { $($body:tt)* }) => {
        $(#[$doc])*
        pub struct $name(pub EventView);

        $(#[$doc])*
        #[Object]
        impl $name {
            /// Per-session sequence number, strictly increasing by 1 with no gaps.
            async fn seq(&self) -> Result<i32> {
                int(self.0.event.seq)
            }
            async fn session_id(&self) -> ID {
                id(&self.0.event.session_id)
            }
            async fn timestamp(&self) -> Timestamp {
                Timestamp(self.0.event.timestamp)
            }
            /// The command that caused it, if any.
            async fn command_id(&self) -> Option<ID> {
                self.0.event.command_id.as_ref().map(id)
            }
            /// The client whose request caused it, if known.
            async fn client_id(&self) -> Option<ID> {
                self.0.event.client_id.as_ref().map(|c| ID(c.clone()))
            }
            /// The authenticated user whose request caused it (null when authentication is off).
            async fn user_id(&self) -> Option<ID> {
                self.0.event.user_id.as_ref().map(|u| ID(u.clone()))
            }
            $($body)*
        }
    };
}

/// Reads a field of the event's kind; the interface guarantees the variant.
macro_rules! field {
    ($self:ident, $pat:pat => $out:expr, $default:expr) => {
        match &$self.0.event.kind {
            $pat => $out,
            _ => $default,
        }
    };
}

/// The created node as it was when created (a snapshot, not the live Node).
pub struct NodeSnapshot {
    node_id: uuid::Uuid,
    type_id: Key,
    name: String,
    properties: crate::domain::Properties,
    parent_id: Option<uuid::Uuid>,
    child_ids: Vec<uuid::Uuid>,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// The created node as it was when created (a snapshot, not the live Node).
#[Object]
impl NodeSnapshot {
    async fn node_id(&self) -> ID {
        id(&self.node_id)
    }
    async fn type_id(&self) -> ID {
        ID(self.type_id.to_string())
    }
    async fn name(&self) -> &str {
        &self.name
    }
    /// Property id -> value.
    async fn properties(&self) -> Json<&crate::domain::Properties> {
        Json(&self.properties)
    }
    async fn parent_id(&self) -> Option<ID> {
        self.parent_id.as_ref().map(id)
    }
    /// The node's children when it was created: none, since each child arrives as its own NodeCreated event after it.
    async fn child_ids(&self) -> Vec<ID> {
        self.child_ids.iter().map(id).collect()
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.created_at)
    }
}

event_type!(NodeCreated {
    /// The node as created (its children arrive as their own NodeCreated events).
    async fn node(&self) -> NodeSnapshot {
        field!(self, EventKind::Delta(Delta::NodeCreated { node, parent_id, .. }) => NodeSnapshot {
            node_id: node.id,
            type_id: node.type_id.clone(),
            name: node.name.clone(),
            properties: node.properties.clone(),
            parent_id: *parent_id,
            child_ids: Vec::new(),
            created_at: node.created_at,
        }, unreachable_node())
    }
    async fn parent_id(&self) -> Option<ID> {
        field!(self, EventKind::Delta(Delta::NodeCreated { parent_id, .. }) => parent_id.as_ref().map(id), None)
    }
    async fn index(&self) -> Result<i32> {
        field!(self, EventKind::Delta(Delta::NodeCreated { index, .. }) => int(*index), Ok(0))
    }
});

event_type!(NodeDeleted {
    async fn node_id(&self) -> ID {
        field!(self, EventKind::Delta(Delta::NodeDeleted { node_id, .. }) => id(node_id), ID::default())
    }
    async fn parent_id(&self) -> Option<ID> {
        field!(self, EventKind::Delta(Delta::NodeDeleted { parent_id, .. }) => parent_id.as_ref().map(id), None)
    }
    /// ids of the whole deleted subtree
    async fn deleted_ids(&self) -> Vec<ID> {
        field!(self, EventKind::Delta(Delta::NodeDeleted { deleted_ids, .. }) => deleted_ids.iter().map(id).collect(), Vec::new())
    }
});

event_type!(NodeRenamed {
    async fn node_id(&self) -> ID {
        field!(self, EventKind::Delta(Delta::NodeRenamed { node_id, .. }) => id(node_id), ID::default())
    }
    async fn old_name(&self) -> &str {
        field!(self, EventKind::Delta(Delta::NodeRenamed { old_name, .. }) => old_name.as_str(), "")
    }
    async fn new_name(&self) -> &str {
        field!(self, EventKind::Delta(Delta::NodeRenamed { new_name, .. }) => new_name.as_str(), "")
    }
});

event_type!(
    /// parentId is always set here; it is nullable only to match the other events' parentId, so one selection can span them all.
    NodeLinked {
    async fn parent_id(&self) -> Option<ID> {
        field!(self, EventKind::Delta(Delta::NodeLinked { parent_id, .. }) => Some(id(parent_id)), None)
    }
    async fn child_id(&self) -> ID {
        field!(self, EventKind::Delta(Delta::NodeLinked { child_id, .. }) => id(child_id), ID::default())
    }
    async fn index(&self) -> Result<i32> {
        field!(self, EventKind::Delta(Delta::NodeLinked { index, .. }) => int(*index), Ok(0))
    }
});

event_type!(NodeUnlinked {
    async fn parent_id(&self) -> Option<ID> {
        field!(self, EventKind::Delta(Delta::NodeUnlinked { parent_id, .. }) => Some(id(parent_id)), None)
    }
    async fn child_id(&self) -> ID {
        field!(self, EventKind::Delta(Delta::NodeUnlinked { child_id, .. }) => id(child_id), ID::default())
    }
    /// Position of the detached node among the roots.
    async fn index(&self) -> Result<i32> {
        field!(self, EventKind::Delta(Delta::NodeUnlinked { root_index, .. }) => int(*root_index), Ok(0))
    }
});

event_type!(NodeMoved {
    async fn node_id(&self) -> ID {
        field!(self, EventKind::Delta(Delta::NodeMoved { node_id, .. }) => id(node_id), ID::default())
    }
    async fn old_parent_id(&self) -> Option<ID> {
        field!(self, EventKind::Delta(Delta::NodeMoved { old_parent_id, .. }) => old_parent_id.as_ref().map(id), None)
    }
    async fn new_parent_id(&self) -> Option<ID> {
        field!(self, EventKind::Delta(Delta::NodeMoved { new_parent_id, .. }) => new_parent_id.as_ref().map(id), None)
    }
    async fn index(&self) -> Result<i32> {
        field!(self, EventKind::Delta(Delta::NodeMoved { index, .. }) => int(*index), Ok(0))
    }
});

event_type!(PropertyChanged {
    async fn node_id(&self) -> ID {
        field!(self, EventKind::Delta(Delta::PropertyChanged { node_id, .. }) => id(node_id), ID::default())
    }
    async fn property_id(&self) -> ID {
        field!(self, EventKind::Delta(Delta::PropertyChanged { property_id, .. }) => ID(property_id.to_string()), ID::default())
    }
    async fn old_value(&self) -> Option<Json<Value>> {
        field!(self, EventKind::Delta(Delta::PropertyChanged { old_value, .. }) => old_value.clone().map(Json), None)
    }
    async fn new_value(&self) -> Option<Json<Value>> {
        field!(self, EventKind::Delta(Delta::PropertyChanged { new_value, .. }) => new_value.clone().map(Json), None)
    }
});

fn command_type(kind: &EventKind) -> &str {
    match kind {
        EventKind::CommandExecuting { command_type }
        | EventKind::CommandExecuted { command_type, .. }
        | EventKind::CommandFailed { command_type, .. }
        | EventKind::CommandUndone { command_type, .. }
        | EventKind::CommandRedone { command_type, .. } => command_type,
        _ => "",
    }
}

fn version(kind: &EventKind) -> Result<i32> {
    match kind {
        EventKind::CommandExecuted { version, .. }
        | EventKind::CommandUndone { version, .. }
        | EventKind::CommandRedone { version, .. } => int(*version),
        _ => Ok(0),
    }
}

event_type!(CommandExecuting {
    async fn command_type(&self) -> &str {
        command_type(&self.0.event.kind)
    }
});

event_type!(CommandExecuted {
    async fn command_type(&self) -> &str {
        command_type(&self.0.event.kind)
    }
    async fn version(&self) -> Result<i32> {
        version(&self.0.event.kind)
    }
});

event_type!(CommandFailed {
    async fn command_type(&self) -> &str {
        command_type(&self.0.event.kind)
    }
    async fn code(&self) -> &str {
        field!(self, EventKind::CommandFailed { code, .. } => code.as_str(), "")
    }
    async fn message(&self) -> &str {
        field!(self, EventKind::CommandFailed { message, .. } => message.as_str(), "")
    }
});

event_type!(CommandUndone {
    async fn command_type(&self) -> &str {
        command_type(&self.0.event.kind)
    }
    async fn version(&self) -> Result<i32> {
        version(&self.0.event.kind)
    }
});

event_type!(CommandRedone {
    async fn command_type(&self) -> &str {
        command_type(&self.0.event.kind)
    }
    async fn version(&self) -> Result<i32> {
        version(&self.0.event.kind)
    }
});

fn presence(kind: &EventKind) -> Option<(&crate::session::ClientInfo, u32)> {
    match kind {
        EventKind::ClientJoined {
            client,
            active_clients,
        }
        | EventKind::ClientLeft {
            client,
            active_clients,
        } => Some((client, *active_clients)),
        _ => None,
    }
}

event_type!(ClientJoined {
    async fn client(&self) -> ClientView {
        ClientView(presence(&self.0.event.kind).map_or_else(unknown_client, |(c, _)| c.clone()))
    }
    async fn active_clients(&self) -> Result<i32> {
        presence(&self.0.event.kind).map_or(Ok(0), |(_, n)| int(n))
    }
});

event_type!(ClientLeft {
    async fn client(&self) -> ClientView {
        ClientView(presence(&self.0.event.kind).map_or_else(unknown_client, |(c, _)| c.clone()))
    }
    async fn active_clients(&self) -> Result<i32> {
        presence(&self.0.event.kind).map_or(Ok(0), |(_, n)| int(n))
    }
});

/// A PresenceChanged's fields: joined, left, joinedCount, leftCount, activeClients.
type Folded<'a> = (
    &'a [crate::session::ClientInfo],
    &'a [crate::session::ClientInfo],
    u32,
    u32,
    u32,
);

/// The folded presence fields, if the event is a PresenceChanged.
fn folded(kind: &EventKind) -> Option<Folded<'_>> {
    match kind {
        EventKind::PresenceChanged {
            joined,
            left,
            joined_count,
            left_count,
            active_clients,
        } => Some((joined, left, *joined_count, *left_count, *active_clients)),
        _ => None,
    }
}

event_type!(
    /// Several presence changes in one event: the joins and leaves within one presence interval after the first (which came as its own ClientJoined or ClientLeft), or a shutdown's leaves. `joined` and `left` name at most --presence-list-limit clients each, in order; the counts are exact.
    PresenceChanged {
    /// Clients that joined, oldest first (at most --presence-list-limit; joinedCount is exact).
    async fn joined(&self) -> Vec<ClientView> {
        folded(&self.0.event.kind).map_or_else(Vec::new, |f| f.0.iter().cloned().map(ClientView).collect())
    }
    /// Clients that left, oldest first (at most --presence-list-limit; leftCount is exact).
    async fn left(&self) -> Vec<ClientView> {
        folded(&self.0.event.kind).map_or_else(Vec::new, |f| f.1.iter().cloned().map(ClientView).collect())
    }
    async fn joined_count(&self) -> Result<i32> {
        folded(&self.0.event.kind).map_or(Ok(0), |f| int(f.2))
    }
    async fn left_count(&self) -> Result<i32> {
        folded(&self.0.event.kind).map_or(Ok(0), |f| int(f.3))
    }
    /// Clients in the session after these changes.
    async fn active_clients(&self) -> Result<i32> {
        folded(&self.0.event.kind).map_or(Ok(0), |f| int(f.4))
    }
});

event_type!(
    /// The subscriber fell further behind than the server keeps: refetch the graph (and Session.lastSeq), then subscribe again with since = that lastSeq. The stream stays open.
    ResyncRequired {
    async fn reason(&self) -> &str {
        field!(self, EventKind::ResyncRequired { reason } => reason.as_str(), "")
    }
});

fn unknown_client() -> crate::session::ClientInfo {
    crate::session::ClientInfo {
        id: String::new(),
        name: None,
        connected_at: chrono::DateTime::UNIX_EPOCH,
        user_id: None,
    }
}

fn unreachable_node() -> NodeSnapshot {
    NodeSnapshot {
        node_id: uuid::Uuid::nil(),
        type_id: Key::default(),
        name: String::new(),
        properties: Default::default(),
        parent_id: None,
        child_ids: Vec::new(),
        created_at: chrono::DateTime::UNIX_EPOCH,
    }
}

/// Fields that share a name across event types share one type (nullability included), so a client can select them all in one subscription.
// The field list repeats `ty = ...` by design; clippy reads it as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(Interface)]
#[graphql(
    name = "SessionEvent",
    field(
        name = "seq",
        ty = "i32",
        desc = "Per-session sequence number, strictly increasing by 1 with no gaps."
    ),
    field(name = "session_id", ty = "ID"),
    field(name = "timestamp", ty = "Timestamp"),
    field(
        name = "command_id",
        ty = "Option<ID>",
        desc = "The command that caused it, if any."
    ),
    field(
        name = "client_id",
        ty = "Option<ID>",
        desc = "The client whose request caused it, if known."
    ),
    field(
        name = "user_id",
        ty = "Option<ID>",
        desc = "The authenticated user whose request caused it (null when authentication is off)."
    )
)]
pub enum SessionEventView {
    NodeCreated(NodeCreated),
    NodeDeleted(NodeDeleted),
    NodeRenamed(NodeRenamed),
    NodeLinked(NodeLinked),
    NodeUnlinked(NodeUnlinked),
    NodeMoved(NodeMoved),
    PropertyChanged(PropertyChanged),
    CommandExecuting(CommandExecuting),
    CommandExecuted(CommandExecuted),
    CommandFailed(CommandFailed),
    CommandUndone(CommandUndone),
    CommandRedone(CommandRedone),
    ClientJoined(ClientJoined),
    ClientLeft(ClientLeft),
    PresenceChanged(PresenceChanged),
    ResyncRequired(ResyncRequired),
}

impl SessionEventView {
    pub fn from_event(event: Arc<SessionEvent>, template: Option<Arc<Template>>) -> Self {
        let v = EventView { event, template };
        match &v.event.kind {
            EventKind::Delta(d) => match d {
                Delta::NodeCreated { .. } => Self::NodeCreated(NodeCreated(v)),
                Delta::NodeDeleted { .. } => Self::NodeDeleted(NodeDeleted(v)),
                Delta::NodeRenamed { .. } => Self::NodeRenamed(NodeRenamed(v)),
                Delta::NodeLinked { .. } => Self::NodeLinked(NodeLinked(v)),
                Delta::NodeUnlinked { .. } => Self::NodeUnlinked(NodeUnlinked(v)),
                Delta::NodeMoved { .. } => Self::NodeMoved(NodeMoved(v)),
                Delta::PropertyChanged { .. } => Self::PropertyChanged(PropertyChanged(v)),
            },
            EventKind::CommandExecuting { .. } => Self::CommandExecuting(CommandExecuting(v)),
            EventKind::CommandExecuted { .. } => Self::CommandExecuted(CommandExecuted(v)),
            EventKind::CommandFailed { .. } => Self::CommandFailed(CommandFailed(v)),
            EventKind::CommandUndone { .. } => Self::CommandUndone(CommandUndone(v)),
            EventKind::CommandRedone { .. } => Self::CommandRedone(CommandRedone(v)),
            EventKind::ClientJoined { .. } => Self::ClientJoined(ClientJoined(v)),
            EventKind::ClientLeft { .. } => Self::ClientLeft(ClientLeft(v)),
            EventKind::PresenceChanged { .. } => Self::PresenceChanged(PresenceChanged(v)),
            EventKind::ResyncRequired { .. } => Self::ResyncRequired(ResyncRequired(v)),
        }
    }
}
