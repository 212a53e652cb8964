//! The project graph: typed nodes with properties and ordered children, and the deltas that change it.
//!
//! `Graph::apply` is the only way a graph changes. Every delta is checked
//! against the graph's structure first and then applied whole, and applying it
//! returns the exact inverse, so undo and rollback are just more deltas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smol_str::SmolStr;
use uuid::Uuid;

use super::error::{err, DomainError, ErrorCode};
use super::node_table::NodeTable;
pub use super::properties::Properties;

pub type NodeId = Uuid;

/// A node type id or property id. Ids are short, so they are kept inline
/// (up to 23 bytes) rather than behind a pointer: reading a node's type and
/// looking up one of its properties touches no memory beyond the node and
/// its property map, which keeps a command's cost flat as the graph grows
/// past what fits in cache.
pub type Key = SmolStr;

/// A node in the graph, with its links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub type_id: Key,
    pub name: String,
    pub properties: Properties,
    pub children: Vec<NodeId>,
    pub parent: Option<NodeId>,
    pub created_at: DateTime<Utc>,
}

/// A node's own data without its links: what a `NodeCreated` delta records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeData {
    pub id: NodeId,
    pub type_id: Key,
    pub name: String,
    pub properties: Properties,
    pub created_at: DateTime<Utc>,
}

impl Node {
    /// The node's own data, without parent and children.
    pub fn data(&self) -> NodeData {
        NodeData {
            id: self.id,
            type_id: self.type_id.clone(),
            name: self.name.clone(),
            properties: self.properties.clone(),
            created_at: self.created_at,
        }
    }
}

/// One structural change to a graph; the events clients receive carry exactly these.
///
/// Positions (`index`) are final positions among the parent's children, or
/// among the roots when there is no parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Delta {
    NodeCreated {
        node: NodeData,
        parent_id: Option<NodeId>,
        index: usize,
    },
    /// Removes `node_id` and its whole subtree (`deleted_ids`, pre-order).
    NodeDeleted {
        node_id: NodeId,
        parent_id: Option<NodeId>,
        deleted_ids: Vec<NodeId>,
    },
    NodeRenamed {
        node_id: NodeId,
        old_name: String,
        new_name: String,
    },
    /// Attaches the root `child_id` under `parent_id`.
    NodeLinked {
        parent_id: NodeId,
        child_id: NodeId,
        index: usize,
    },
    /// Detaches `child_id` from `parent_id`; it becomes a root at `root_index`.
    NodeUnlinked {
        parent_id: NodeId,
        child_id: NodeId,
        root_index: usize,
    },
    NodeMoved {
        node_id: NodeId,
        old_parent_id: Option<NodeId>,
        new_parent_id: Option<NodeId>,
        index: usize,
    },
    PropertyChanged {
        node_id: NodeId,
        property_id: Key,
        old_value: Option<Value>,
        new_value: Option<Value>,
    },
}

/// A forest of nodes. Invariants (see `check_invariants`): every child's parent
/// points back, every parentless node is a root, each node appears once, no
/// node is its own ancestor, and no id dangles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    nodes: NodeTable,
    roots: Vec<NodeId>,
}

fn not_found(id: NodeId) -> DomainError {
    err(ErrorCode::NodeNotFound, format!("node {id} does not exist"))
}

fn check_index(index: usize, len: usize) -> Result<(), DomainError> {
    if index > len {
        return Err(err(
            ErrorCode::IndexOutOfRange,
            format!("index {index} is out of range: there are {len} positions (0..={len})"),
        ));
    }
    Ok(())
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// The node, or NODE_NOT_FOUND.
    pub fn node(&self, id: &NodeId) -> Result<&Node, DomainError> {
        self.nodes.get(id).ok_or_else(|| not_found(*id))
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.nodes.contains_key(id)
    }

    pub fn roots(&self) -> &[NodeId] {
        &self.roots
    }

    /// The ordered children of `parent`, or the roots for `None`.
    pub fn siblings(&self, parent: Option<&NodeId>) -> &[NodeId] {
        match parent {
            Some(p) => self
                .nodes
                .get(p)
                .map(|n| n.children.as_slice())
                .unwrap_or(&[]),
            None => &self.roots,
        }
    }

    /// Position of `id` among its siblings.
    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        let node = self.nodes.get(id)?;
        self.siblings(node.parent.as_ref())
            .iter()
            .position(|c| c == id)
    }

    /// Whether `ancestor` is `id` itself or one of its ancestors. O(depth).
    pub fn is_ancestor_or_self(&self, ancestor: &NodeId, id: &NodeId) -> bool {
        let mut cur = Some(*id);
        while let Some(c) = cur {
            if c == *ancestor {
                return true;
            }
            cur = self.nodes.get(&c).and_then(|n| n.parent);
        }
        false
    }

    /// The subtree rooted at `id` in pre-order (parents before children, children in order).
    pub fn subtree(&self, id: &NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = vec![*id];
        while let Some(cur) = stack.pop() {
            if let Some(node) = self.nodes.get(&cur) {
                out.push(cur);
                stack.extend(node.children.iter().rev());
            }
        }
        out
    }

    /// Every node, parents before children, roots and children in order.
    pub fn preorder(&self) -> impl Iterator<Item = &Node> + '_ {
        let mut stack: Vec<NodeId> = self.roots.iter().rev().copied().collect();
        std::iter::from_fn(move || {
            let id = stack.pop()?;
            let node = self.nodes.get(&id)?;
            stack.extend(node.children.iter().rev());
            Some(node)
        })
    }

    /// Every node in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.values()
    }

    fn siblings_mut(&mut self, parent: Option<NodeId>) -> &mut Vec<NodeId> {
        match parent {
            Some(p) => {
                &mut self
                    .nodes
                    .get_mut(&p)
                    .expect("parent existence is checked before mutating")
                    .children
            }
            None => &mut self.roots,
        }
    }

    fn remove_from_siblings(&mut self, parent: Option<NodeId>, id: NodeId) -> usize {
        let siblings = self.siblings_mut(parent);
        let pos = siblings
            .iter()
            .position(|c| *c == id)
            .expect("a linked node is among its parent's children");
        siblings.remove(pos);
        pos
    }

    fn parent_exists(&self, parent: Option<&NodeId>) -> Result<(), DomainError> {
        match parent {
            Some(p) if !self.nodes.contains_key(p) => Err(not_found(*p)),
            _ => Ok(()),
        }
    }

    /// Applies one delta whole or not at all, and returns the deltas that undo it, in order.
    pub fn apply(&mut self, delta: &Delta) -> Result<Vec<Delta>, DomainError> {
        match delta {
            Delta::NodeCreated {
                node,
                parent_id,
                index,
            } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(err(
                        ErrorCode::DuplicateId,
                        format!("a node with id {} already exists", node.id),
                    ));
                }
                self.parent_exists(parent_id.as_ref())?;
                check_index(*index, self.siblings(parent_id.as_ref()).len())?;
                self.siblings_mut(*parent_id).insert(*index, node.id);
                self.nodes.insert(Node {
                    id: node.id,
                    type_id: node.type_id.clone(),
                    name: node.name.clone(),
                    properties: node.properties.clone(),
                    children: Vec::new(),
                    parent: *parent_id,
                    created_at: node.created_at,
                });
                Ok(vec![Delta::NodeDeleted {
                    node_id: node.id,
                    parent_id: *parent_id,
                    deleted_ids: vec![node.id],
                }])
            }
            Delta::NodeDeleted {
                node_id, parent_id, ..
            } => {
                let node = self.node(node_id)?;
                if node.parent != *parent_id {
                    return Err(err(
                        ErrorCode::NotAChild,
                        format!("node {node_id} is not where the deletion expects it"),
                    ));
                }
                let index = self.remove_from_siblings(*parent_id, *node_id);
                // Pre-order with each node's position among its siblings, so
                // recreating the inverse in order rebuilds the same tree.
                let mut inverse = Vec::new();
                let mut stack = vec![(*node_id, index)];
                while let Some((id, position)) = stack.pop() {
                    let n = self.nodes.remove(&id).expect("subtree ids exist");
                    stack.extend(n.children.iter().enumerate().rev().map(|(i, c)| (*c, i)));
                    inverse.push(Delta::NodeCreated {
                        node: n.data(),
                        parent_id: n.parent,
                        index: position,
                    });
                }
                Ok(inverse)
            }
            Delta::NodeRenamed {
                node_id,
                old_name,
                new_name,
            } => {
                let node = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| not_found(*node_id))?;
                if node.name != *old_name {
                    return Err(err(
                        ErrorCode::Internal,
                        format!("node {node_id} is not named '{old_name}'"),
                    ));
                }
                node.name = new_name.clone();
                Ok(vec![Delta::NodeRenamed {
                    node_id: *node_id,
                    old_name: new_name.clone(),
                    new_name: old_name.clone(),
                }])
            }
            Delta::NodeLinked {
                parent_id,
                child_id,
                index,
            } => {
                let child = self.node(child_id)?;
                let parent = self.node(parent_id)?;
                if let Some(p) = child.parent {
                    return Err(err(
                        ErrorCode::AlreadyHasParent,
                        format!(
                            "node {child_id} already has a parent ({p}); unlink or move it instead"
                        ),
                    ));
                }
                if self.is_ancestor_or_self(child_id, parent_id) {
                    return Err(err(
                        ErrorCode::Cycle,
                        format!(
                            "linking {child_id} under {parent_id} would make it its own ancestor"
                        ),
                    ));
                }
                check_index(*index, parent.children.len())?;
                let root_index = self.remove_from_siblings(None, *child_id);
                self.siblings_mut(Some(*parent_id))
                    .insert(*index, *child_id);
                self.nodes.get_mut(child_id).expect("checked").parent = Some(*parent_id);
                Ok(vec![Delta::NodeUnlinked {
                    parent_id: *parent_id,
                    child_id: *child_id,
                    root_index,
                }])
            }
            Delta::NodeUnlinked {
                parent_id,
                child_id,
                root_index,
            } => {
                let child = self.node(child_id)?;
                self.node(parent_id)?;
                if child.parent != Some(*parent_id) {
                    return Err(err(
                        ErrorCode::NotAChild,
                        format!("node {child_id} is not a child of {parent_id}"),
                    ));
                }
                check_index(*root_index, self.roots.len())?;
                let index = self.remove_from_siblings(Some(*parent_id), *child_id);
                self.roots.insert(*root_index, *child_id);
                self.nodes.get_mut(child_id).expect("checked").parent = None;
                Ok(vec![Delta::NodeLinked {
                    parent_id: *parent_id,
                    child_id: *child_id,
                    index,
                }])
            }
            Delta::NodeMoved {
                node_id,
                old_parent_id,
                new_parent_id,
                index,
            } => {
                let node = self.node(node_id)?;
                if node.parent != *old_parent_id {
                    return Err(err(
                        ErrorCode::NotAChild,
                        format!("node {node_id} is not where the move expects it"),
                    ));
                }
                self.parent_exists(new_parent_id.as_ref())?;
                if let Some(np) = new_parent_id {
                    if self.is_ancestor_or_self(node_id, np) {
                        return Err(err(
                            ErrorCode::Cycle,
                            format!("moving {node_id} under {np} would make it its own ancestor"),
                        ));
                    }
                }
                let mut len = self.siblings(new_parent_id.as_ref()).len();
                if old_parent_id == new_parent_id {
                    len -= 1;
                }
                check_index(*index, len)?;
                let old_index = self.remove_from_siblings(*old_parent_id, *node_id);
                self.siblings_mut(*new_parent_id).insert(*index, *node_id);
                self.nodes.get_mut(node_id).expect("checked").parent = *new_parent_id;
                Ok(vec![Delta::NodeMoved {
                    node_id: *node_id,
                    old_parent_id: *new_parent_id,
                    new_parent_id: *old_parent_id,
                    index: old_index,
                }])
            }
            Delta::PropertyChanged {
                node_id,
                property_id,
                old_value,
                new_value,
            } => {
                let node = self
                    .nodes
                    .get_mut(node_id)
                    .ok_or_else(|| not_found(*node_id))?;
                if node.properties.get(property_id) != old_value.as_ref() {
                    return Err(err(
                        ErrorCode::Internal,
                        format!("property '{property_id}' of {node_id} does not hold the expected old value"),
                    ));
                }
                match new_value {
                    Some(v) => node.properties.insert(property_id.clone(), v.clone()),
                    None => node.properties.remove(property_id),
                };
                Ok(vec![Delta::PropertyChanged {
                    node_id: *node_id,
                    property_id: property_id.clone(),
                    old_value: new_value.clone(),
                    new_value: old_value.clone(),
                }])
            }
        }
    }

    /// Checks every structural invariant; the error says which one broke.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::with_capacity(self.nodes.len());
        let mut stack: Vec<(NodeId, Option<NodeId>)> =
            self.roots.iter().rev().map(|r| (*r, None)).collect();
        while let Some((id, expected_parent)) = stack.pop() {
            let node = self
                .nodes
                .get(&id)
                .ok_or_else(|| format!("dangling id {id} (listed under {expected_parent:?})"))?;
            if !seen.insert(id) {
                return Err(format!(
                    "node {id} appears more than once (or is its own ancestor)"
                ));
            }
            if node.id != id {
                return Err(format!("node stored under {id} says its id is {}", node.id));
            }
            if node.parent != expected_parent {
                return Err(format!(
                    "node {id} says its parent is {:?} but is listed under {expected_parent:?}",
                    node.parent
                ));
            }
            stack.extend(node.children.iter().rev().map(|c| (*c, Some(id))));
        }
        if seen.len() != self.nodes.len() {
            let lost = self.nodes.keys().find(|k| !seen.contains(k));
            return Err(format!(
                "{} node(s) unreachable from the roots, e.g. {lost:?}",
                self.nodes.len() - seen.len()
            ));
        }
        Ok(())
    }
}
