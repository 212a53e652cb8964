//! Commands that change where nodes sit: link, unlink, move and reorder.

use super::{check_allowed, position, Ctx, Tx};
use crate::domain::error::{err, DomainError, ErrorCode};
use crate::domain::graph::{Delta, NodeId};

fn check_no_cycle(
    tx: &Tx<'_>,
    node_id: NodeId,
    new_parent_id: NodeId,
    verb: &str,
) -> Result<(), DomainError> {
    if tx.graph().is_ancestor_or_self(&node_id, &new_parent_id) {
        let what = if node_id == new_parent_id {
            "itself".to_string()
        } else {
            format!("its descendant {new_parent_id}")
        };
        return Err(err(
            ErrorCode::Cycle,
            format!("cannot {verb} node {node_id} under {what}: it would become its own ancestor"),
        ));
    }
    Ok(())
}

pub(super) fn link(
    tx: &mut Tx<'_>,
    ctx: &mut Ctx<'_>,
    parent_id: NodeId,
    child_id: NodeId,
    index: Option<usize>,
) -> Result<(), DomainError> {
    let graph = tx.graph();
    let parent = graph.node(&parent_id)?;
    let child = graph.node(&child_id)?;
    if let Some(current) = child.parent {
        return Err(err(
            ErrorCode::AlreadyHasParent,
            format!(
                "node {child_id} already has a parent ({current}); unlink it first or use moveNode"
            ),
        ));
    }
    check_no_cycle(tx, child_id, parent_id, "link")?;
    check_allowed(graph, ctx.template, parent_id, &child.type_id)?;
    let index = position(index, parent.children.len())?;
    tx.apply(Delta::NodeLinked {
        parent_id,
        child_id,
        index,
    })
}

pub(super) fn unlink(
    tx: &mut Tx<'_>,
    parent_id: NodeId,
    child_id: NodeId,
) -> Result<(), DomainError> {
    let graph = tx.graph();
    graph.node(&parent_id)?;
    let child = graph.node(&child_id)?;
    if child.parent != Some(parent_id) {
        return Err(err(
            ErrorCode::NotAChild,
            format!("node {child_id} is not a child of {parent_id}"),
        ));
    }
    let root_index = graph.roots().len();
    tx.apply(Delta::NodeUnlinked {
        parent_id,
        child_id,
        root_index,
    })
}

pub(super) fn move_node(
    tx: &mut Tx<'_>,
    ctx: &mut Ctx<'_>,
    node_id: NodeId,
    new_parent_id: NodeId,
    index: Option<usize>,
) -> Result<(), DomainError> {
    let graph = tx.graph();
    let node = graph.node(&node_id)?;
    let new_parent = graph.node(&new_parent_id)?;
    check_no_cycle(tx, node_id, new_parent_id, "move")?;
    check_allowed(graph, ctx.template, new_parent_id, &node.type_id)?;
    let mut len = new_parent.children.len();
    if node.parent == Some(new_parent_id) {
        len -= 1;
    }
    let index = position(index, len)?;
    tx.apply(Delta::NodeMoved {
        node_id,
        old_parent_id: node.parent,
        new_parent_id: Some(new_parent_id),
        index,
    })
}

pub(super) fn reorder(tx: &mut Tx<'_>, node_id: NodeId, index: usize) -> Result<(), DomainError> {
    let graph = tx.graph();
    let node = graph.node(&node_id)?;
    let len = graph.siblings(node.parent.as_ref()).len();
    if index >= len {
        return Err(err(
            ErrorCode::IndexOutOfRange,
            format!("index {index} is out of range: node {node_id} has {len} sibling position(s) (0..{len})"),
        ));
    }
    tx.apply(Delta::NodeMoved {
        node_id,
        old_parent_id: node.parent,
        new_parent_id: node.parent,
        index,
    })
}
