//! Node references: the write check (every id names a node of the project, of the target type) and what a delete does to them.
//!
//! A `node_reference` value is a list of node ids. Writes are checked against
//! the graph here, because `PropertyDef::parse_value` sees only the value.
//! Deleting nodes removes them from every reference outside the deleted
//! subtree, as `PropertyChanged` deltas of the delete command itself, applied
//! before its `NodeDeleted`. So subscribers see each reference change as an
//! event, no command leaves a reference dangling, and undo (which applies the
//! recorded inverse) puts the node and every reference to it back exactly.
//! A kit copy's references to nodes of the same kit point at their copies.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use uuid::Uuid;

use super::Tx;
use crate::domain::error::{err, DomainError, ErrorCode};
use crate::domain::graph::{Delta, Graph, Node, NodeId};
use crate::domain::template::{PropertyDef, PropertyType, Template};

/// INVALID_PROPERTY_VALUE unless every id of a (parsed) node reference value names a node of `graph` of the target type.
///
/// Other kinds pass unchecked. The node being written may reference itself
/// only once it exists, i.e. on update, not in the command that creates it.
pub(super) fn check(graph: &Graph, def: &PropertyDef, value: &Value) -> Result<(), DomainError> {
    if def.kind != PropertyType::NodeReference {
        return Ok(());
    }
    let Value::Array(items) = value else {
        return Ok(());
    };
    for item in items {
        let Some(id) = item.as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
            continue;
        };
        let Some(node) = graph.get(&id) else {
            return Err(err(
                ErrorCode::InvalidPropertyValue,
                format!(
                    "property '{}' references node {id}, which does not exist in this project",
                    def.id
                ),
            ));
        };
        if let Some(target) = &def.target_type {
            if node.type_id != target.as_str() {
                return Err(err(
                    ErrorCode::InvalidPropertyValue,
                    format!(
                        "property '{}' references node {id}, a '{}'; it must be a '{target}'",
                        def.id, node.type_id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every node reference value of `graph`, as (node, property, ids), nodes in
/// pre-order and properties in template order; nothing for templates
/// without node references.
pub(crate) fn reference_values<'g>(
    graph: &'g Graph,
    template: &'g Template,
) -> impl Iterator<Item = (&'g Node, &'g PropertyDef, &'g Vec<Value>)> + 'g {
    let any = template.has_node_references();
    graph
        .preorder()
        .filter(move |_| any)
        .filter_map(move |node| Some((node, template.node_type(&node.type_id)?)))
        .flat_map(|(node, ty)| {
            ty.properties
                .iter()
                .filter(|p| p.kind == PropertyType::NodeReference)
                .filter_map(move |def| match node.properties.get(def.id.as_str()) {
                    Some(Value::Array(items)) => Some((node, def, items)),
                    _ => None,
                })
        })
}

/// Removes the nodes of `deleted` from every node reference outside them, one `PropertyChanged` per value that changes.
///
/// Costs nothing for templates without node references; otherwise one pass
/// over the graph (there is no reverse index, so the cost is that of the graph,
/// not of the references). Values in pre-order of their nodes, properties in
/// template order. Ids that are not UUIDs (kept as they were by an import)
/// stay where they are.
pub(super) fn release(
    tx: &mut Tx<'_>,
    template: &Template,
    deleted: &[NodeId],
) -> Result<(), DomainError> {
    if !template.has_node_references() {
        return Ok(());
    }
    let gone: HashSet<NodeId> = deleted.iter().copied().collect();
    let points_at_gone = |item: &Value| {
        item.as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .is_some_and(|id| gone.contains(&id))
    };
    let changes: Vec<Delta> = reference_values(tx.graph(), template)
        .filter(|(node, _, items)| !gone.contains(&node.id) && items.iter().any(points_at_gone))
        .map(|(node, def, items)| Delta::PropertyChanged {
            node_id: node.id,
            property_id: def.id.as_str().into(),
            old_value: Some(Value::Array(items.clone())),
            new_value: Some(Value::Array(
                items
                    .iter()
                    .filter(|i| !points_at_gone(i))
                    .cloned()
                    .collect(),
            )),
        })
        .collect();
    for delta in changes {
        tx.apply(delta)?;
    }
    Ok(())
}

/// In the `NodeCreated` deltas of a kit copy, points references to copied nodes at their copies.
///
/// A kit whose shots reference each other copies as shots that reference
/// each other, not the kit's originals; references to nodes outside the kit
/// are kept (those nodes exist, and have the target type they had).
pub(super) fn point_at_copies(
    plan: &mut [Delta],
    copies: &HashMap<NodeId, NodeId>,
    template: &Template,
) {
    if !template.has_node_references() {
        return;
    }
    for delta in plan {
        let Delta::NodeCreated { node, .. } = delta else {
            continue;
        };
        let Some(ty) = template.node_type(&node.type_id) else {
            continue;
        };
        for def in ty
            .properties
            .iter()
            .filter(|p| p.kind == PropertyType::NodeReference)
        {
            let Some(Value::Array(items)) = node.properties.get(def.id.as_str()) else {
                continue;
            };
            let mapped: Vec<Value> = items
                .iter()
                .map(|item| {
                    let copy = item
                        .as_str()
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .and_then(|id| copies.get(&id));
                    match copy {
                        Some(copy) => Value::String(copy.to_string()),
                        None => item.clone(),
                    }
                })
                .collect();
            node.properties
                .insert(def.id.as_str().into(), Value::Array(mapped));
        }
    }
}
