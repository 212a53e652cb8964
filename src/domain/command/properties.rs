//! Commands that set and clear property values.

use serde_json::Value;

use super::nodes::unknown_property;
use super::{references, Ctx, Tx};
use crate::domain::error::{err, DomainError, ErrorCode};
use crate::domain::graph::{Delta, NodeId};
use crate::domain::template::NodeType;

fn type_of<'t>(ctx: &Ctx<'t>, type_id: &str) -> Result<&'t NodeType, DomainError> {
    ctx.template.node_type(type_id).ok_or_else(|| {
        err(
            ErrorCode::NodeTypeNotFound,
            format!(
                "template '{}' no longer defines node type '{type_id}'",
                ctx.template.id
            ),
        )
    })
}

pub(super) fn update(
    tx: &mut Tx<'_>,
    ctx: &mut Ctx<'_>,
    node_id: NodeId,
    property_id: &str,
    value: &Value,
) -> Result<(), DomainError> {
    let node = tx.graph().node(&node_id)?;
    let ty = type_of(ctx, &node.type_id)?;
    let def = ty
        .property(property_id)
        .ok_or_else(|| unknown_property(ty, property_id))?;
    let new_value = def.parse_value(value)?;
    if let Some(v) = &new_value {
        references::check(tx.graph(), def, v)?;
    }
    let delta = Delta::PropertyChanged {
        node_id,
        property_id: def.id.as_str().into(),
        old_value: node.properties.get(def.id.as_str()).cloned(),
        new_value,
    };
    tx.apply(delta)
}

/// Clears a property; also removes values the template no longer defines (orphaned by an import).
pub(super) fn delete(
    tx: &mut Tx<'_>,
    ctx: &mut Ctx<'_>,
    node_id: NodeId,
    property_id: &str,
) -> Result<(), DomainError> {
    let node = tx.graph().node(&node_id)?;
    let old_value = node.properties.get(property_id).cloned();
    if old_value.is_none() {
        let ty = type_of(ctx, &node.type_id)?;
        ty.property(property_id)
            .ok_or_else(|| unknown_property(ty, property_id))?;
        // Defined but already empty: nothing to change.
        return Ok(());
    }
    let delta = Delta::PropertyChanged {
        node_id,
        property_id: property_id.into(),
        old_value,
        new_value: None,
    };
    tx.apply(delta)
}
