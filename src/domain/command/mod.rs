//! Commands: validated, all-or-nothing changes to a graph that yield their deltas and exact inverse.
//!
//! A command checks everything against the graph and the template, then
//! applies its deltas one by one through `Tx`; if anything fails midway
//! (possible only in a batch), `Tx` rolls back what was applied, so a failed
//! command never changes the graph.

mod nodes;
mod properties;
mod references;
mod structure;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use nodes::clean_name;
pub(crate) use references::reference_values;

use super::error::{err, DomainError, ErrorCode};
use super::graph::{Delta, Graph, NodeId};
use super::template::Template;

/// A request to change the graph, as a client states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Command {
    CreateNode {
        parent_id: Option<NodeId>,
        type_id: String,
        name: Option<String>,
        properties: Option<Map<String, Value>>,
        index: Option<usize>,
        id: Option<NodeId>,
    },
    DeleteNode {
        node_id: NodeId,
    },
    RenameNode {
        node_id: NodeId,
        name: String,
    },
    UpdateProperty {
        node_id: NodeId,
        property_id: String,
        value: Value,
    },
    DeleteProperty {
        node_id: NodeId,
        property_id: String,
    },
    LinkNode {
        parent_id: NodeId,
        child_id: NodeId,
        index: Option<usize>,
    },
    UnlinkNode {
        parent_id: NodeId,
        child_id: NodeId,
    },
    MoveNode {
        node_id: NodeId,
        new_parent_id: NodeId,
        index: Option<usize>,
    },
    ReorderNode {
        node_id: NodeId,
        index: usize,
    },
    ApplyKit {
        target_id: NodeId,
        kit_root_id: NodeId,
    },
    /// Several commands applied atomically and undone as one step.
    Batch {
        commands: Vec<Command>,
    },
}

impl Command {
    /// The command's name as events report it (`commandType`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::CreateNode { .. } => "createNode",
            Command::DeleteNode { .. } => "deleteNode",
            Command::RenameNode { .. } => "renameNode",
            Command::UpdateProperty { .. } => "updateProperty",
            Command::DeleteProperty { .. } => "deleteProperty",
            Command::LinkNode { .. } => "linkNode",
            Command::UnlinkNode { .. } => "unlinkNode",
            Command::MoveNode { .. } => "moveNode",
            Command::ReorderNode { .. } => "reorderNode",
            Command::ApplyKit { .. } => "applyKit",
            Command::Batch { .. } => "batch",
        }
    }
}

/// How much one command (a batch counts as one) may do; checked before any delta is applied.
///
/// A command that would pass a bound fails with LIMIT_EXCEEDED and changes
/// nothing. Without these, one `executeBatch` of 14 `applyKit`s of a node into
/// itself doubles the subtree 14 times and exhausts the server's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Commands in one batch (`--max-batch-commands`).
    pub max_batch_commands: usize,
    /// Nodes one command creates, all of a batch's commands together (`--max-nodes-per-request`).
    pub max_nodes_created: usize,
    /// Nodes a project's graph may hold (`--max-nodes-per-project`).
    pub max_nodes_per_project: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_commands: 1_000,
            max_nodes_created: 10_000,
            max_nodes_per_project: 100_000,
        }
    }
}

/// What a command may draw on besides the graph: the template, the clock, fresh ids and its limits.
pub struct Ctx<'a> {
    pub template: &'a Template,
    pub now: DateTime<Utc>,
    pub new_id: &'a mut dyn FnMut() -> Uuid,
    pub limits: Limits,
}

impl<'a> Ctx<'a> {
    pub fn new(
        template: &'a Template,
        now: DateTime<Utc>,
        new_id: &'a mut dyn FnMut() -> Uuid,
    ) -> Self {
        Ctx {
            template,
            now,
            new_id,
            limits: Limits::default(),
        }
    }

    /// The same context with other limits.
    pub fn with_limits(self, limits: Limits) -> Self {
        Ctx { limits, ..self }
    }
}

/// The applied effect of a command: its deltas in order, and the deltas that undo it, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub forward: Vec<Delta>,
    pub inverse: Vec<Delta>,
    /// The first node the command created, if any.
    pub node_id: Option<NodeId>,
}

/// A transaction over a graph: applies deltas, remembers their inverses, and
/// rolls everything back unless finished.
pub(crate) struct Tx<'g> {
    graph: &'g mut Graph,
    forward: Vec<Delta>,
    inverses: Vec<Vec<Delta>>,
    node_id: Option<NodeId>,
    /// Nodes this transaction has reserved (see `reserve_nodes`).
    created: usize,
}

impl<'g> Tx<'g> {
    pub(crate) fn new(graph: &'g mut Graph) -> Self {
        Tx {
            graph,
            forward: Vec::new(),
            inverses: Vec::new(),
            node_id: None,
            created: 0,
        }
    }

    /// How many more nodes this transaction may create: the smaller of what is
    /// left of the per-command budget and of the project's room.
    pub(crate) fn node_room(&self, limits: &Limits) -> usize {
        let per_command = limits.max_nodes_created.saturating_sub(self.created);
        let per_project = limits
            .max_nodes_per_project
            .saturating_sub(self.graph.len());
        per_command.min(per_project)
    }

    /// Reserves `n` new nodes, or LIMIT_EXCEEDED naming the bound it would pass;
    /// called before a command builds or applies anything.
    pub(crate) fn reserve_nodes(&mut self, n: usize, limits: &Limits) -> Result<(), DomainError> {
        let created = self.created.saturating_add(n);
        if created > limits.max_nodes_created {
            return Err(err(
                ErrorCode::LimitExceeded,
                format!(
                    "this command would create more than {} nodes (the limit max-nodes-per-request is {})",
                    limits.max_nodes_created, limits.max_nodes_created
                ),
            ));
        }
        let total = self.graph.len().saturating_add(n);
        if total > limits.max_nodes_per_project {
            return Err(err(
                ErrorCode::LimitExceeded,
                format!(
                    "the project has {} nodes and this command would take it past {} (the limit max-nodes-per-project is {})",
                    self.graph.len(),
                    limits.max_nodes_per_project,
                    limits.max_nodes_per_project
                ),
            ));
        }
        self.created = created;
        Ok(())
    }

    pub(crate) fn graph(&self) -> &Graph {
        self.graph
    }

    pub(crate) fn apply(&mut self, delta: Delta) -> Result<(), DomainError> {
        let inverse = self.graph.apply(&delta)?;
        if let (None, Delta::NodeCreated { node, .. }) = (self.node_id, &delta) {
            self.node_id = Some(node.id);
        }
        self.forward.push(delta);
        self.inverses.push(inverse);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Change {
        let inverse = std::mem::take(&mut self.inverses)
            .into_iter()
            .rev()
            .flatten()
            .collect();
        Change {
            forward: std::mem::take(&mut self.forward),
            inverse,
            node_id: self.node_id,
        }
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // Unfinished: undo what was applied, newest first.
        for inverse in self.inverses.drain(..).rev() {
            for delta in &inverse {
                self.graph
                    .apply(delta)
                    .expect("the inverse of a just-applied delta applies");
            }
        }
    }
}

/// Validates `command` against `graph` and the template and applies it whole, or fails changing nothing.
pub fn run(command: &Command, graph: &mut Graph, ctx: &mut Ctx<'_>) -> Result<Change, DomainError> {
    let mut tx = Tx::new(graph);
    run_in(command, &mut tx, ctx)?;
    Ok(tx.finish())
}

/// Replays deltas recorded earlier (for redo or recovery) and returns them with their fresh inverse.
pub fn replay(forward: Vec<Delta>, graph: &mut Graph) -> Result<Change, DomainError> {
    let mut tx = Tx::new(graph);
    for delta in forward {
        tx.apply(delta)?;
    }
    Ok(tx.finish())
}

fn run_in(command: &Command, tx: &mut Tx<'_>, ctx: &mut Ctx<'_>) -> Result<(), DomainError> {
    match command {
        Command::CreateNode {
            parent_id,
            type_id,
            name,
            properties,
            index,
            id,
        } => nodes::create(
            tx,
            ctx,
            nodes::NewNode {
                parent_id: *parent_id,
                type_id,
                name: name.as_deref(),
                properties: properties.as_ref(),
                index: *index,
                id: *id,
            },
        ),
        Command::DeleteNode { node_id } => nodes::delete(tx, ctx, *node_id),
        Command::RenameNode { node_id, name } => nodes::rename(tx, *node_id, name),
        Command::ApplyKit {
            target_id,
            kit_root_id,
        } => nodes::apply_kit(tx, ctx, *target_id, *kit_root_id),
        Command::UpdateProperty {
            node_id,
            property_id,
            value,
        } => properties::update(tx, ctx, *node_id, property_id, value),
        Command::DeleteProperty {
            node_id,
            property_id,
        } => properties::delete(tx, ctx, *node_id, property_id),
        Command::LinkNode {
            parent_id,
            child_id,
            index,
        } => structure::link(tx, ctx, *parent_id, *child_id, *index),
        Command::UnlinkNode {
            parent_id,
            child_id,
        } => structure::unlink(tx, *parent_id, *child_id),
        Command::MoveNode {
            node_id,
            new_parent_id,
            index,
        } => structure::move_node(tx, ctx, *node_id, *new_parent_id, *index),
        Command::ReorderNode { node_id, index } => structure::reorder(tx, *node_id, *index),
        Command::Batch { commands } => {
            if commands.is_empty() {
                return Err(err(
                    ErrorCode::BadUserInput,
                    "a batch needs at least one command",
                ));
            }
            let max = ctx.limits.max_batch_commands;
            if commands.len() > max {
                return Err(err(
                    ErrorCode::LimitExceeded,
                    format!(
                        "a batch of {} commands is too long (the limit max-batch-commands is {max})",
                        commands.len()
                    ),
                ));
            }
            for (i, c) in commands.iter().enumerate() {
                run_in(c, tx, ctx).map_err(|e| DomainError {
                    code: e.code,
                    message: format!(
                        "command {i} ({}) of the batch failed: {}",
                        c.type_name(),
                        e.message
                    ),
                })?;
            }
            Ok(())
        }
    }
}

/// CHILD_NOT_ALLOWED unless the template lets `child_type` live under `parent_id`.
pub(crate) fn check_allowed(
    graph: &Graph,
    template: &Template,
    parent_id: NodeId,
    child_type: &str,
) -> Result<(), DomainError> {
    let parent = graph.node(&parent_id)?;
    let parent_type = template.node_type(&parent.type_id).ok_or_else(|| {
        err(
            ErrorCode::NodeTypeNotFound,
            format!(
                "node {parent_id} has type '{}', which template '{}' no longer defines",
                parent.type_id, template.id
            ),
        )
    })?;
    if parent_type.allows_child(child_type) {
        return Ok(());
    }
    let allowed = if parent_type.allowed_children.is_empty() {
        "none".to_string()
    } else {
        parent_type.allowed_children.join(", ")
    };
    Err(err(
        ErrorCode::ChildNotAllowed,
        format!(
            "node type '{child_type}' is not allowed under '{}'; allowed: {allowed}",
            parent_type.id
        ),
    ))
}

/// INDEX_OUT_OF_RANGE unless `index <= len`; `None` means last.
pub(crate) fn position(index: Option<usize>, len: usize) -> Result<usize, DomainError> {
    match index {
        None => Ok(len),
        Some(i) if i <= len => Ok(i),
        Some(i) => Err(err(
            ErrorCode::IndexOutOfRange,
            format!("index {i} is out of range: the position must be between 0 and {len}"),
        )),
    }
}
