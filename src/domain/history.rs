//! The dispatcher: runs commands against a project's graph and keeps exact undo/redo history.
//!
//! Each history entry keeps a command's deltas together with their inverse,
//! computed when it was applied, so undo applies the inverse and redo the
//! deltas, exactly. The graph version grows by one for every applied command,
//! undo and redo. Every change also returns a `Revert` that takes it back
//! entirely (history included), so a caller that fails to persist a change
//! can restore the dispatcher to what it was.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::command::{self, Change, Command, Ctx};
use super::error::{err, DomainError, ErrorCode};
use super::graph::{Delta, Graph, NodeId};

/// Default number of undo steps kept.
pub const DEFAULT_HISTORY_LIMIT: usize = 1000;

/// One undoable step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub command_id: Uuid,
    pub command_type: String,
    pub forward: Vec<Delta>,
    pub inverse: Vec<Delta>,
}

/// What the dispatcher did, as it is logged: enough to redo it on a copy of the state it was applied to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Op {
    Execute {
        command_id: Uuid,
        command_type: String,
        forward: Vec<Delta>,
    },
    Undo,
    Redo,
}

/// Takes one dispatcher step back, history included.
#[derive(Debug)]
pub enum Revert {
    Executed {
        evicted: Option<Arc<Entry>>,
        cleared_redo: Vec<Arc<Entry>>,
    },
    Undone,
    Redone,
}

/// The result of an execute, undo or redo.
#[derive(Debug)]
pub struct Applied {
    pub command_id: Uuid,
    pub command_type: String,
    /// The deltas applied, in order (for undo: the inverse deltas).
    pub deltas: Vec<Delta>,
    pub version: u64,
    /// The first node a command created, if any.
    pub node_id: Option<NodeId>,
    pub op: Op,
    pub revert: Revert,
}

/// A project's graph, history and version: everything the store persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatcher {
    graph: Graph,
    // Entries are shared, so copying the dispatcher for a snapshot does not
    // copy up to `history_limit` steps' deltas.
    undo: VecDeque<Arc<Entry>>,
    redo: Vec<Arc<Entry>>,
    version: u64,
    #[serde(skip, default = "default_limit")]
    history_limit: usize,
}

fn default_limit() -> usize {
    DEFAULT_HISTORY_LIMIT
}

impl Dispatcher {
    pub fn new(graph: Graph) -> Self {
        Dispatcher {
            graph,
            undo: VecDeque::new(),
            redo: Vec::new(),
            version: 0,
            history_limit: DEFAULT_HISTORY_LIMIT,
        }
    }

    /// Sets how many undo steps are kept (at least 1); older ones are dropped.
    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        while self.undo.len() > self.history_limit {
            self.undo.pop_front();
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    pub fn undo_depth(&self) -> usize {
        self.undo.len()
    }

    pub fn redo_depth(&self) -> usize {
        self.redo.len()
    }

    /// Runs a command; with `expected_version`, fails with VERSION_CONFLICT if the graph moved on.
    pub fn execute(
        &mut self,
        command: &Command,
        expected_version: Option<u64>,
        command_id: Uuid,
        ctx: &mut Ctx<'_>,
    ) -> Result<Applied, DomainError> {
        if let Some(expected) = expected_version {
            if expected != self.version {
                return Err(err(
                    ErrorCode::VersionConflict,
                    format!(
                        "the graph is at version {}, not {expected}: refetch and retry",
                        self.version
                    ),
                ));
            }
        }
        let change = command::run(command, &mut self.graph, ctx)?;
        Ok(self.record(command_id, command.type_name().to_string(), change))
    }

    fn record(&mut self, command_id: Uuid, command_type: String, change: Change) -> Applied {
        let Change {
            forward,
            inverse,
            node_id,
        } = change;
        let op = Op::Execute {
            command_id,
            command_type: command_type.clone(),
            forward: forward.clone(),
        };
        self.undo.push_back(Arc::new(Entry {
            command_id,
            command_type: command_type.clone(),
            forward: forward.clone(),
            inverse,
        }));
        let evicted = if self.undo.len() > self.history_limit {
            self.undo.pop_front()
        } else {
            None
        };
        let cleared_redo = std::mem::take(&mut self.redo);
        self.version += 1;
        Applied {
            command_id,
            command_type,
            deltas: forward,
            version: self.version,
            node_id,
            op,
            revert: Revert::Executed {
                evicted,
                cleared_redo,
            },
        }
    }

    /// Undoes the newest step; NOTHING_TO_UNDO when there is none.
    pub fn undo(&mut self) -> Result<Applied, DomainError> {
        let entry = self
            .undo
            .pop_back()
            .ok_or_else(|| err(ErrorCode::NothingToUndo, "there is nothing to undo"))?;
        if let Err(e) = apply_all(&mut self.graph, &entry.inverse) {
            self.undo.push_back(entry);
            return Err(e);
        }
        self.version += 1;
        let applied = Applied {
            command_id: entry.command_id,
            command_type: entry.command_type.clone(),
            deltas: entry.inverse.clone(),
            version: self.version,
            node_id: None,
            op: Op::Undo,
            revert: Revert::Undone,
        };
        self.redo.push(entry);
        Ok(applied)
    }

    /// Redoes the newest undone step; NOTHING_TO_REDO when there is none.
    pub fn redo(&mut self) -> Result<Applied, DomainError> {
        let entry = self
            .redo
            .pop()
            .ok_or_else(|| err(ErrorCode::NothingToRedo, "there is nothing to redo"))?;
        if let Err(e) = apply_all(&mut self.graph, &entry.forward) {
            self.redo.push(entry);
            return Err(e);
        }
        self.version += 1;
        let applied = Applied {
            command_id: entry.command_id,
            command_type: entry.command_type.clone(),
            deltas: entry.forward.clone(),
            version: self.version,
            node_id: first_created(&entry.forward),
            op: Op::Redo,
            revert: Revert::Redone,
        };
        self.undo.push_back(entry);
        Ok(applied)
    }

    /// Takes back the newest step exactly, history included. Reverts must be
    /// given newest first, each right after the steps that followed it.
    pub fn revert(&mut self, revert: Revert) {
        match revert {
            Revert::Executed {
                evicted,
                cleared_redo,
            } => {
                let entry = self.undo.pop_back().expect("reverting an executed step");
                apply_all(&mut self.graph, &entry.inverse)
                    .expect("inverse of the newest step applies");
                if let Some(old) = evicted {
                    self.undo.push_front(old);
                }
                self.redo = cleared_redo;
            }
            Revert::Undone => {
                let entry = self.redo.pop().expect("reverting an undo");
                apply_all(&mut self.graph, &entry.forward)
                    .expect("forward of an undone step applies");
                self.undo.push_back(entry);
            }
            Revert::Redone => {
                let entry = self.undo.pop_back().expect("reverting a redo");
                apply_all(&mut self.graph, &entry.inverse)
                    .expect("inverse of a redone step applies");
                self.redo.push(entry);
            }
        }
        self.version -= 1;
    }

    /// Replays a logged step on the state it was first applied to (recovery).
    pub fn replay(&mut self, op: Op) -> Result<(), DomainError> {
        match op {
            Op::Execute {
                command_id,
                command_type,
                forward,
            } => {
                let change = command::replay(forward, &mut self.graph)?;
                self.record(command_id, command_type, change);
            }
            Op::Undo => {
                self.undo()?;
            }
            Op::Redo => {
                self.redo()?;
            }
        }
        Ok(())
    }
}

fn first_created(deltas: &[Delta]) -> Option<NodeId> {
    deltas.iter().find_map(|d| match d {
        Delta::NodeCreated { node, .. } => Some(node.id),
        _ => None,
    })
}

/// Applies deltas in order, all or nothing.
fn apply_all(graph: &mut Graph, deltas: &[Delta]) -> Result<(), DomainError> {
    command::replay(deltas.to_vec(), graph).map(|_| ())
}
