//! Command inputs: parsed at the edge into domain `Command`s (parse, don't validate).

use async_graphql::{InputObject, Json, OneofObject, ID};
use serde_json::Value;

use super::error::{code, index, uuid, Result};
use super::ApiLimits;
use crate::domain::{Command, ErrorCode};

/// Exactly one field must be set (GraphQL @oneOf input).
#[derive(OneofObject)]
pub enum CommandInput {
    CreateNode(CreateNodeInput),
    DeleteNode(DeleteNodeInput),
    RenameNode(RenameNodeInput),
    UpdateProperty(UpdatePropertyInput),
    DeleteProperty(DeletePropertyInput),
    LinkNode(LinkNodeInput),
    UnlinkNode(UnlinkNodeInput),
    MoveNode(MoveNodeInput),
    ReorderNode(ReorderNodeInput),
    ApplyKit(ApplyKitInput),
}

#[derive(InputObject)]
pub struct CreateNodeInput {
    /// Omit for a new root.
    pub parent_id: Option<ID>,
    pub type_id: ID,
    /// Defaults to the node type's name.
    pub name: Option<String>,
    /// Initial property values, validated like updateProperty.
    pub properties: Option<Json<Value>>,
    /// Position among the parent's children; default: last.
    pub index: Option<i32>,
    /// A client-chosen UUID for the new node (optimistic UI); default: generated.
    pub id: Option<ID>,
}

#[derive(InputObject)]
pub struct DeleteNodeInput {
    pub node_id: ID,
}

#[derive(InputObject)]
pub struct RenameNodeInput {
    pub node_id: ID,
    pub name: String,
}

/// value null clears the property.
#[derive(InputObject)]
pub struct UpdatePropertyInput {
    pub node_id: ID,
    pub property_id: ID,
    pub value: Option<Json<Value>>,
}

#[derive(InputObject)]
pub struct DeletePropertyInput {
    pub node_id: ID,
    pub property_id: ID,
}

/// Attach a parentless node under parentId.
#[derive(InputObject)]
pub struct LinkNodeInput {
    pub parent_id: ID,
    pub child_id: ID,
    pub index: Option<i32>,
}

/// Detach childId from parentId; it becomes a root.
#[derive(InputObject)]
pub struct UnlinkNodeInput {
    pub parent_id: ID,
    pub child_id: ID,
}

#[derive(InputObject)]
pub struct MoveNodeInput {
    pub node_id: ID,
    pub new_parent_id: ID,
    pub index: Option<i32>,
}

#[derive(InputObject)]
pub struct ReorderNodeInput {
    pub node_id: ID,
    pub index: i32,
}

/// Deep-copy the children of kitRootId (with their subtrees) under targetId.
#[derive(InputObject)]
pub struct ApplyKitInput {
    pub target_id: ID,
    pub kit_root_id: ID,
}

fn opt_index(i: Option<i32>) -> Result<Option<usize>> {
    i.map(index).transpose()
}

impl CreateNodeInput {
    pub fn into_command(self) -> Result<Command> {
        let properties = match self.properties.map(|j| j.0) {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map),
            Some(other) => {
                return Err(code(
                    ErrorCode::BadUserInput,
                    format!(
                        "properties must be a JSON object of property id -> value, got {other}"
                    ),
                ))
            }
        };
        Ok(Command::CreateNode {
            parent_id: self
                .parent_id
                .as_ref()
                .map(|p| uuid(p, "parentId"))
                .transpose()?,
            type_id: self.type_id.0,
            name: self.name,
            properties,
            index: opt_index(self.index)?,
            id: self.id.as_ref().map(|i| uuid(i, "id")).transpose()?,
        })
    }
}

impl CommandInput {
    pub fn into_command(self) -> Result<Command> {
        Ok(match self {
            CommandInput::CreateNode(c) => c.into_command()?,
            CommandInput::DeleteNode(c) => Command::DeleteNode {
                node_id: uuid(&c.node_id, "nodeId")?,
            },
            CommandInput::RenameNode(c) => Command::RenameNode {
                node_id: uuid(&c.node_id, "nodeId")?,
                name: c.name,
            },
            CommandInput::UpdateProperty(c) => Command::UpdateProperty {
                node_id: uuid(&c.node_id, "nodeId")?,
                property_id: c.property_id.0,
                value: c.value.map_or(Value::Null, |j| j.0),
            },
            CommandInput::DeleteProperty(c) => Command::DeleteProperty {
                node_id: uuid(&c.node_id, "nodeId")?,
                property_id: c.property_id.0,
            },
            CommandInput::LinkNode(c) => Command::LinkNode {
                parent_id: uuid(&c.parent_id, "parentId")?,
                child_id: uuid(&c.child_id, "childId")?,
                index: opt_index(c.index)?,
            },
            CommandInput::UnlinkNode(c) => Command::UnlinkNode {
                parent_id: uuid(&c.parent_id, "parentId")?,
                child_id: uuid(&c.child_id, "childId")?,
            },
            CommandInput::MoveNode(c) => Command::MoveNode {
                node_id: uuid(&c.node_id, "nodeId")?,
                new_parent_id: uuid(&c.new_parent_id, "newParentId")?,
                index: opt_index(c.index)?,
            },
            CommandInput::ReorderNode(c) => Command::ReorderNode {
                node_id: uuid(&c.node_id, "nodeId")?,
                index: index(c.index)?,
            },
            CommandInput::ApplyKit(c) => Command::ApplyKit {
                target_id: uuid(&c.target_id, "targetId")?,
                kit_root_id: uuid(&c.kit_root_id, "kitRootId")?,
            },
        })
    }
}

/// LIMIT_EXCEEDED if a name (`what`) is longer than `--max-name-bytes`;
/// BAD_USER_INPUT if it holds a NUL character, which no store can keep as
/// text (PostgreSQL refuses it) and which no name needs.
pub fn check_name(name: &str, what: &str, limits: &ApiLimits) -> Result<()> {
    if name.contains('\0') {
        return Err(code(
            ErrorCode::BadUserInput,
            format!("{what} contains a NUL character (U+0000), which names may not hold"),
        ));
    }
    let max = limits.max_name_bytes;
    if name.len() > max {
        return Err(code(
            ErrorCode::LimitExceeded,
            format!(
                "{what} is {} bytes long (the limit max-name-bytes is {max})",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// LIMIT_EXCEEDED if a property value, as JSON, is longer than `--max-value-bytes`.
pub fn check_value(value: &Value, property: &str, limits: &ApiLimits) -> Result<()> {
    let max = limits.max_value_bytes;
    if crate::domain::value::json_longer_than(value, max) {
        return Err(code(
            ErrorCode::LimitExceeded,
            format!(
                "the value of property '{property}' is more than {max} bytes as JSON (the limit max-value-bytes is {max})"
            ),
        ));
    }
    Ok(())
}

/// Refuses a command with a name or property value over its limit, before it reaches the session.
pub fn check_sizes(command: &Command, limits: &ApiLimits) -> Result<()> {
    match command {
        Command::CreateNode {
            name, properties, ..
        } => {
            if let Some(name) = name {
                check_name(name, "the node name", limits)?;
            }
            for (property, value) in properties.iter().flatten() {
                check_name(property, "a property id", limits)?;
                check_value(value, property, limits)?;
            }
            Ok(())
        }
        Command::RenameNode { name, .. } => check_name(name, "the node name", limits),
        Command::UpdateProperty {
            property_id, value, ..
        } => {
            check_name(property_id, "the property id", limits)?;
            check_value(value, property_id, limits)
        }
        Command::Batch { commands } => commands.iter().try_for_each(|c| check_sizes(c, limits)),
        _ => Ok(()),
    }
}
