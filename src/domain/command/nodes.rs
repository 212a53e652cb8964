//! Commands that create, delete, rename and copy nodes.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{check_allowed, position, references, Ctx, Tx};
use crate::domain::error::{err, DomainError, ErrorCode};
use crate::domain::graph::{Delta, NodeData, NodeId};
use crate::domain::template::NodeType;

pub(super) struct NewNode<'a> {
    pub parent_id: Option<NodeId>,
    pub type_id: &'a str,
    pub name: Option<&'a str>,
    pub properties: Option<&'a Map<String, Value>>,
    pub index: Option<usize>,
    pub id: Option<NodeId>,
}

fn node_type<'t>(ctx: &Ctx<'t>, type_id: &str) -> Result<&'t NodeType, DomainError> {
    ctx.template.node_type(type_id).ok_or_else(|| {
        let known: Vec<&str> = ctx
            .template
            .node_types
            .iter()
            .map(|t| t.id.as_str())
            .collect();
        err(
            ErrorCode::NodeTypeNotFound,
            format!(
                "template '{}' has no node type '{type_id}'; its types are: {}",
                ctx.template.id,
                known.join(", ")
            ),
        )
    })
}

/// A node name: trimmed, non-empty.
pub fn clean_name(name: &str) -> Result<String, DomainError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(err(
            ErrorCode::BadUserInput,
            "a node name must not be empty",
        ));
    }
    Ok(trimmed.to_string())
}

pub(super) fn create(
    tx: &mut Tx<'_>,
    ctx: &mut Ctx<'_>,
    new: NewNode<'_>,
) -> Result<(), DomainError> {
    let ty = node_type(ctx, new.type_id)?;
    let graph = tx.graph();
    if let Some(parent) = new.parent_id {
        check_allowed(graph, ctx.template, parent, &ty.id)?;
    }
    let index = position(new.index, graph.siblings(new.parent_id.as_ref()).len())?;
    let id = match new.id {
        Some(id) if graph.contains(&id) => {
            return Err(err(
                ErrorCode::DuplicateId,
                format!("a node with id {id} already exists; omit id to get a fresh one"),
            ))
        }
        Some(id) => id,
        None => (ctx.new_id)(),
    };
    let name = match new.name {
        Some(n) => clean_name(n)?,
        None => ty.name.clone(),
    };
    let mut properties = ty.initial_properties();
    if let Some(given) = new.properties {
        for (key, raw) in given {
            let def = ty.property(key).ok_or_else(|| unknown_property(ty, key))?;
            match def.parse_value(raw)? {
                Some(v) => {
                    references::check(graph, def, &v)?;
                    properties.insert(def.id.as_str().into(), v)
                }
                None => properties.remove(def.id.as_str()),
            };
        }
    }
    tx.reserve_nodes(1, &ctx.limits)?;
    tx.apply(Delta::NodeCreated {
        node: NodeData {
            id,
            type_id: ty.id.as_str().into(),
            name,
            properties,
            created_at: ctx.now,
        },
        parent_id: new.parent_id,
        index,
    })
}

pub(super) fn unknown_property(ty: &NodeType, key: &str) -> DomainError {
    let known: Vec<&str> = ty.properties.iter().map(|p| p.id.as_str()).collect();
    err(
        ErrorCode::UnknownProperty,
        format!(
            "node type '{}' has no property '{key}'; its properties are: {}",
            ty.id,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    )
}

/// Deletes the node with its subtree; references to those nodes from elsewhere are removed first (see `references.rs`).
pub(super) fn delete(tx: &mut Tx<'_>, ctx: &Ctx<'_>, node_id: NodeId) -> Result<(), DomainError> {
    let graph = tx.graph();
    let node = graph.node(&node_id)?;
    let parent_id = node.parent;
    let deleted_ids = graph.subtree(&node_id);
    references::release(tx, ctx.template, &deleted_ids)?;
    tx.apply(Delta::NodeDeleted {
        node_id,
        parent_id,
        deleted_ids,
    })
}

pub(super) fn rename(tx: &mut Tx<'_>, node_id: NodeId, name: &str) -> Result<(), DomainError> {
    let node = tx.graph().node(&node_id)?;
    let delta = Delta::NodeRenamed {
        node_id,
        old_name: node.name.clone(),
        new_name: clean_name(name)?,
    };
    tx.apply(delta)
}

/// Deep-copies the children of `kit_root_id` (with their subtrees) under `target_id`, with fresh ids.
pub(super) fn apply_kit(
    tx: &mut Tx<'_>,
    ctx: &mut Ctx<'_>,
    target_id: NodeId,
    kit_root_id: NodeId,
) -> Result<(), DomainError> {
    let graph = tx.graph();
    graph.node(&target_id)?;
    let kit = graph.node(&kit_root_id)?;
    if kit.children.is_empty() {
        return Err(err(
            ErrorCode::BadUserInput,
            format!("kit {kit_root_id} has no children to copy"),
        ));
    }
    for child in &kit.children {
        let child = graph.node(child)?;
        check_allowed(graph, ctx.template, target_id, &child.type_id)?;
    }
    // Count the copies before planning them, and stop counting at the room
    // left: the cost of refusing a kit that is too big is the limit, not the kit.
    let room = tx.node_room(&ctx.limits);
    let graph = tx.graph();
    let kit = graph.node(&kit_root_id)?;
    let mut copies = 0usize;
    let mut counting: Vec<NodeId> = kit.children.clone();
    while let Some(id) = counting.pop() {
        copies += 1;
        if copies > room {
            break;
        }
        counting.extend(graph.node(&id)?.children.iter().copied());
    }
    tx.reserve_nodes(copies, &ctx.limits)?;
    let graph = tx.graph();
    let kit = graph.node(&kit_root_id)?;
    // Plan every copy before applying any, so copying a kit into itself terminates.
    let first_index = graph.node(&target_id)?.children.len();
    let mut plan: Vec<Delta> = Vec::new();
    let mut copies: HashMap<NodeId, NodeId> = HashMap::new();
    let mut stack: Vec<(NodeId, NodeId, usize)> = kit
        .children
        .iter()
        .enumerate()
        .rev()
        .map(|(i, c)| (*c, target_id, first_index + i))
        .collect();
    while let Some((source, new_parent, index)) = stack.pop() {
        let node = graph.node(&source)?;
        let copy_id = (ctx.new_id)();
        copies.insert(source, copy_id);
        stack.extend(
            node.children
                .iter()
                .enumerate()
                .rev()
                .map(|(i, c)| (*c, copy_id, i)),
        );
        plan.push(Delta::NodeCreated {
            node: NodeData {
                id: copy_id,
                type_id: node.type_id.clone(),
                name: node.name.clone(),
                properties: node.properties.clone(),
                created_at: ctx.now,
            },
            parent_id: Some(new_parent),
            index,
        });
    }
    references::point_at_copies(&mut plan, &copies, ctx.template);
    for delta in plan {
        tx.apply(delta)?;
    }
    Ok(())
}
