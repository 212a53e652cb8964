//! Templates: node types, their allowed children and typed properties, parsed and validated from YAML.
//!
//! A template file is read into a generic YAML value first and walked by hand,
//! so that unknown keys (icons, colours, view settings of later Talus Tally
//! versions) are ignored and odd shapes get a message naming the place,
//! instead of a serde error about a struct. A property type this server does
//! not know (from a Talus Tally newer than it) is no reason to refuse the
//! template: the property holds opaque JSON and the template carries a warning.

use std::collections::HashMap;
use std::fmt;

use serde_json::{json, Value};
use serde_norway::{Mapping, Value as Yaml};
use sha1::{Digest, Sha1};
use uuid::Uuid;

use super::error::{err, DomainError, ErrorCode};
use super::graph::{Key, Properties};
use super::value;

/// A loaded, validated template. Once you hold one, every cross-reference in it resolves.
///
/// The public fields are for reading: lookups go through an index built on
/// load, so a template is meant to be shared (`Arc<Template>`), not edited.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The file name without extension: the template's identity.
    pub id: String,
    /// An `id:` key inside the file, kept only as an alias.
    pub alias: Option<String>,
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub node_types: Vec<NodeType>,
    /// What loaded but deserves a look (unknown property types, unknown target types), in the order found.
    pub warnings: Vec<String>,
    index: Index,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeType {
    pub id: String,
    pub uuid: Uuid,
    pub name: String,
    /// Node type ids (uuids in the file are resolved to ids on load).
    pub allowed_children: Vec<String>,
    pub properties: Vec<PropertyDef>,
    pub features: Vec<String>,
    index: Index,
}

/// What a property's values are. Template files may also spell `text` as
/// `string`; `checkbox` keeps its own kind (its values are booleans) so a
/// client can render what the template asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyType {
    Text,
    Number,
    Currency,
    Boolean,
    Date,
    Select,
    /// The id (UUID) of a node, usually one of a person type; from later Talus Tally versions.
    Person,
    /// Rich text: a string kept exactly as given, markup and newlines included.
    Editor,
    /// A boolean shown as a checkbox.
    Checkbox,
    /// A list of ids of other nodes of the same project (of `target_type` when the property names one).
    NodeReference,
    /// Any JSON object (e.g. an allocation map); a node starts with `{}`.
    Object,
    /// A type this server does not know: any JSON value, kept as it is.
    Opaque,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PropertyDef {
    pub id: String,
    pub uuid: Uuid,
    pub name: String,
    pub kind: PropertyType,
    pub required: bool,
    /// The default value, already normalised (see `value.rs`).
    pub default: Option<Value>,
    pub options: Vec<SelectOption>,
    /// The type name as the file spells it (`string`, `checkbox`, or an unknown one kept opaque).
    pub type_name: String,
    /// For a node reference: the node type (id, resolved from an id or uuid) every referenced node must have.
    pub target_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SelectOption {
    pub id: String,
    pub name: String,
    pub indicator_id: Option<String>,
    pub bullet: Option<String>,
}

/// A template file that failed to load: which file, and what is wrong where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct TemplateError {
    pub file: String,
    pub message: String,
}

/// `stable(ns, name)`: the first 16 bytes of SHA-1 of `"{ns}:{name}"` as a UUID, as Talus Tally computes it.
///
/// No version or variant bits are set, so these are not RFC 4122 UUIDs; they
/// only have to match the ids in Talus Tally project files.
pub fn stable_uuid(ns: &str, name: &str) -> Uuid {
    let digest = Sha1::digest(format!("{ns}:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// Position lookups by id and by uuid, built once on load.
#[derive(Clone, Default, PartialEq)]
struct Index {
    by_id: HashMap<String, usize>,
    by_uuid: HashMap<Uuid, usize>,
}

impl Index {
    fn build<'a>(items: impl Iterator<Item = (&'a str, Uuid)>) -> Index {
        let mut index = Index::default();
        for (position, (id, uuid)) in items.enumerate() {
            index.by_id.insert(id.to_owned(), position);
            index.by_uuid.insert(uuid, position);
        }
        index
    }
}

impl fmt::Debug for Index {
    // The index repeats what the items say; leave it out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("..")
    }
}

impl Template {
    /// Parses and validates a template. `id` is the file stem; `file` names the file in messages.
    pub fn from_yaml(id: &str, file: &str, text: &str) -> Result<Template, TemplateError> {
        parse_template(id, text).map_err(|message| TemplateError {
            file: file.to_owned(),
            message,
        })
    }

    pub fn node_type(&self, id: &str) -> Option<&NodeType> {
        self.index.by_id.get(id).map(|&i| &self.node_types[i])
    }

    pub fn node_type_by_uuid(&self, uuid: &Uuid) -> Option<&NodeType> {
        self.index.by_uuid.get(uuid).map(|&i| &self.node_types[i])
    }

    /// A node type by id, or else by uuid (project files of later versions name types by uuid).
    pub fn resolve_node_type(&self, id_or_uuid: &str) -> Option<&NodeType> {
        self.node_type(id_or_uuid).or_else(|| {
            let uuid = Uuid::parse_str(id_or_uuid).ok()?;
            self.node_type_by_uuid(&uuid)
        })
    }

    /// Whether any node type has a node reference property (deletes then clean references up).
    pub fn has_node_references(&self) -> bool {
        self.node_types.iter().any(|t| {
            t.properties
                .iter()
                .any(|p| p.kind == PropertyType::NodeReference)
        })
    }

    /// The type with feature `is_root`, else the first.
    pub fn root_type(&self) -> &NodeType {
        self.node_types
            .iter()
            .find(|t| t.has_feature("is_root"))
            .unwrap_or(&self.node_types[0])
    }
}

impl NodeType {
    pub fn property(&self, id: &str) -> Option<&PropertyDef> {
        self.index.by_id.get(id).map(|&i| &self.properties[i])
    }

    pub fn property_by_uuid(&self, uuid: &Uuid) -> Option<&PropertyDef> {
        self.index.by_uuid.get(uuid).map(|&i| &self.properties[i])
    }

    /// A property by id, or else by uuid (project files of later versions key properties by uuid).
    pub fn resolve_property(&self, id_or_uuid: &str) -> Option<&PropertyDef> {
        self.property(id_or_uuid).or_else(|| {
            let uuid = Uuid::parse_str(id_or_uuid).ok()?;
            self.property_by_uuid(&uuid)
        })
    }

    pub fn allows_child(&self, type_id: &str) -> bool {
        self.allowed_children.iter().any(|c| c == type_id)
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// The initial properties of a new node: every default; a select without one gets its first option.
    pub fn initial_properties(&self) -> Properties {
        self.properties
            .iter()
            .filter_map(|p| {
                let initial = match (&p.default, p.kind) {
                    (Some(default), _) => Some(default.clone()),
                    (None, PropertyType::Select) => {
                        p.options.first().map(|o| Value::String(o.id.clone()))
                    }
                    (None, _) => None,
                };
                initial.map(|v| (Key::from(p.id.as_str()), v))
            })
            .collect()
    }

    /// Ids of the required properties with no value, in definition order.
    ///
    /// Absent, `null`, blank text (empty or only whitespace), an empty list
    /// (of node references) and an empty object all count as no value.
    pub fn missing_required(&self, props: &Properties) -> Vec<String> {
        self.properties
            .iter()
            .filter(|p| p.required)
            .filter(|p| match props.get(p.id.as_str()) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.trim().is_empty(),
                Some(Value::Array(items)) => items.is_empty(),
                Some(Value::Object(map)) => map.is_empty(),
                Some(_) => false,
            })
            .map(|p| p.id.clone())
            .collect()
    }
}

impl PropertyType {
    /// Every kind a template can name (all but `Opaque`, which is what an unknown name becomes).
    pub const ALL: [PropertyType; 11] = [
        PropertyType::Text,
        PropertyType::Number,
        PropertyType::Currency,
        PropertyType::Boolean,
        PropertyType::Date,
        PropertyType::Select,
        PropertyType::Person,
        PropertyType::Editor,
        PropertyType::Checkbox,
        PropertyType::NodeReference,
        PropertyType::Object,
    ];

    /// The name used in template files (lower case); `opaque` for a type the server does not know.
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyType::Text => "text",
            PropertyType::Number => "number",
            PropertyType::Currency => "currency",
            PropertyType::Boolean => "boolean",
            PropertyType::Date => "date",
            PropertyType::Select => "select",
            PropertyType::Person => "person",
            PropertyType::Editor => "editor",
            PropertyType::Checkbox => "checkbox",
            PropertyType::NodeReference => "node_reference",
            PropertyType::Object => "object",
            PropertyType::Opaque => "opaque",
        }
    }

    /// A known type name from a template file, case-insensitively; `string` is `text`.
    pub fn parse(name: &str) -> Option<PropertyType> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("string") {
            return Some(PropertyType::Text);
        }
        PropertyType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for PropertyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PropertyDef {
    /// Parses a client value into its stored (normalised) form; `Ok(None)` for JSON null (clears).
    /// Errors are INVALID_PROPERTY_VALUE with a message saying what was expected.
    pub fn parse_value(&self, raw: &Value) -> Result<Option<Value>, DomainError> {
        if raw.is_null() {
            return Ok(None);
        }
        let parsed = match self.kind {
            PropertyType::Text => raw.is_string().then(|| raw.clone()),
            PropertyType::Number => value::number(raw).map(Value::Number),
            PropertyType::Currency => value::currency(raw).map(value::currency_to_json),
            PropertyType::Boolean => raw.is_boolean().then(|| raw.clone()),
            PropertyType::Date => match value::date(raw) {
                Ok(day) => Some(value::date_to_json(day)),
                Err(value::DateProblem::NoSuchDay) => {
                    return Err(self.invalid("a real calendar date (YYYY-MM-DD)", raw));
                }
                Err(value::DateProblem::NotIsoDate) => None,
            },
            PropertyType::Select => raw
                .as_str()
                .and_then(|s| self.option(s))
                .map(|o| Value::String(o.id.clone())),
            PropertyType::Person => value::uuid(raw).map(value::uuid_to_json),
            PropertyType::Editor => raw.is_string().then(|| raw.clone()),
            PropertyType::Checkbox => raw.is_boolean().then(|| raw.clone()),
            PropertyType::NodeReference => match value::node_references(raw) {
                Ok(ids) => Some(value::node_references_to_json(&ids)),
                Err(value::ReferenceProblem::Twice(id)) => {
                    return Err(self.invalid(&format!("each node once; {id} is listed twice"), raw));
                }
                Err(value::ReferenceProblem::NotIds) => None,
            },
            PropertyType::Object => raw.is_object().then(|| raw.clone()),
            PropertyType::Opaque => Some(raw.clone()),
        };
        parsed
            .map(Some)
            .ok_or_else(|| self.invalid(&self.expected(), raw))
    }

    /// A select option by id, or else by its exact name.
    pub fn option(&self, id_or_name: &str) -> Option<&SelectOption> {
        let options = &self.options;
        options
            .iter()
            .find(|o| o.id == id_or_name)
            .or_else(|| options.iter().find(|o| o.name == id_or_name))
    }

    /// What a value of this property must be, in words, for error messages.
    pub fn expected(&self) -> String {
        match self.kind {
            PropertyType::Text => "text (a string)".to_owned(),
            PropertyType::Number => "a number".to_owned(),
            PropertyType::Currency => {
                "an amount (a number or a decimal string like \"12.50\")".to_owned()
            }
            PropertyType::Boolean => "true or false".to_owned(),
            PropertyType::Date => "a date as YYYY-MM-DD".to_owned(),
            PropertyType::Select => {
                let names: Vec<&str> = self.options.iter().map(|o| o.name.as_str()).collect();
                format!("one of: {}", names.join(", "))
            }
            PropertyType::Person => "the id of a person node (a UUID)".to_owned(),
            PropertyType::Editor => "rich text (a string)".to_owned(),
            PropertyType::Checkbox => "true or false".to_owned(),
            PropertyType::NodeReference => match &self.target_type {
                Some(target) => format!("a list of ids of '{target}' nodes (UUIDs)"),
                None => "a list of node ids (UUIDs)".to_owned(),
            },
            PropertyType::Object => "a JSON object".to_owned(),
            PropertyType::Opaque => "any JSON value".to_owned(),
        }
    }

    fn invalid(&self, expected: &str, raw: &Value) -> DomainError {
        err(
            ErrorCode::InvalidPropertyValue,
            format!(
                "property '{}' expects {expected}; got {}",
                self.id,
                value::describe(raw)
            ),
        )
    }
}

// ---------------------------------------------------------------------------
// Loading. Every parser returns `Err(message)`; `Template::from_yaml` adds the file.

fn parse_template(id: &str, text: &str) -> Result<Template, String> {
    let mut doc: Yaml = serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    doc.apply_merge()
        .map_err(|e| format!("not valid YAML: {e}"))?;
    let top = match &doc {
        Yaml::Mapping(top) => top,
        Yaml::Null => {
            return Err("the file is empty; expected a mapping with `name` and `node_types`".into())
        }
        other => {
            return Err(format!(
                "expected a mapping with `name` and `node_types` at the top level, found {}",
                shape(other)
            ))
        }
    };

    let alias = scalar_field(top, "id", "the template")?;
    let name = scalar_field(top, "name", "the template")?.unwrap_or_else(|| id.to_owned());
    let version = scalar_field(top, "version", "the template")?.unwrap_or_else(|| "1.0".into());
    let description = scalar_field(top, "description", "the template")?;

    let raw_types = match field(top, "node_types") {
        Some(Yaml::Sequence(list)) if !list.is_empty() => list,
        None | Some(Yaml::Sequence(_)) => {
            return Err("no node types: `node_types` must be a non-empty list".into())
        }
        Some(other) => {
            return Err(format!(
                "`node_types` must be a list, found {}",
                shape(other)
            ))
        }
    };

    let mut warnings = Vec::new();
    let mut node_types = Vec::with_capacity(raw_types.len());
    let mut raw_children = Vec::with_capacity(raw_types.len());
    for (position, raw) in raw_types.iter().enumerate() {
        let (node_type, children) = parse_node_type(position, raw, &mut warnings)?;
        if node_types.iter().any(|t: &NodeType| t.id == node_type.id) {
            return Err(format!("duplicate node type id '{}'", node_type.id));
        }
        if let Some(other) = node_types.iter().find(|t| t.uuid == node_type.uuid) {
            return Err(format!(
                "node type '{}' has the same uuid as node type '{}' ({})",
                node_type.id, other.id, node_type.uuid
            ));
        }
        node_types.push(node_type);
        raw_children.push(children);
    }

    let index = Index::build(node_types.iter().map(|t| (t.id.as_str(), t.uuid)));
    for (position, children) in raw_children.into_iter().enumerate() {
        let mut resolved: Vec<String> = Vec::with_capacity(children.len());
        for child in children {
            let target = index.by_id.get(&child).copied().or_else(|| {
                let uuid = Uuid::parse_str(&child).ok()?;
                index.by_uuid.get(&uuid).copied()
            });
            let Some(target) = target else {
                let known: Vec<&str> = node_types.iter().map(|t| t.id.as_str()).collect();
                return Err(format!(
                    "node type '{}': allowed_children names unknown node type '{child}' (known: {})",
                    node_types[position].id,
                    known.join(", ")
                ));
            };
            let child_id = &node_types[target].id;
            if !resolved.contains(child_id) {
                resolved.push(child_id.clone());
            }
        }
        node_types[position].allowed_children = resolved;
    }

    // Node references name their target type by id or uuid; store the id, as for children.
    for position in 0..node_types.len() {
        for p in 0..node_types[position].properties.len() {
            let Some(target) = node_types[position].properties[p].target_type.clone() else {
                continue;
            };
            let found = index.by_id.get(&target).copied().or_else(|| {
                let uuid = Uuid::parse_str(&target).ok()?;
                index.by_uuid.get(&uuid).copied()
            });
            let Some(found) = found else {
                // Kept as written, so no node matches: the property takes only [] until the
                // template is fixed. Refusing the whole template would lose every other type.
                let known: Vec<&str> = node_types.iter().map(|t| t.id.as_str()).collect();
                warnings.push(format!(
                    "node type '{}', property '{}': target_type names unknown node type '{target}' (known: {}); no node can be referenced",
                    node_types[position].id,
                    node_types[position].properties[p].id,
                    known.join(", ")
                ));
                continue;
            };
            let target_id = node_types[found].id.clone();
            node_types[position].properties[p].target_type = Some(target_id);
        }
    }

    Ok(Template {
        id: id.to_owned(),
        alias,
        name,
        version,
        description,
        node_types,
        warnings,
        index,
    })
}

/// A node type, with its `allowed_children` still unresolved (ids or uuids as written).
fn parse_node_type(
    position: usize,
    raw: &Yaml,
    warnings: &mut Vec<String>,
) -> Result<(NodeType, Vec<String>), String> {
    let here = format!("node type #{}", position + 1);
    let map = mapping(raw, &here)?;
    let id = required_id(map, &here)?;
    let here = format!("node type '{id}'");

    let uuid = match uuid_field(map, &here)? {
        Some(uuid) => uuid,
        None => stable_uuid("node_type", &id),
    };
    let name = label(map, &here)?.unwrap_or_else(|| id.clone());
    let features = string_list(map, "features", &here)?;
    let children = string_list(map, "allowed_children", &here)?;

    let raw_properties = match field(map, "properties") {
        None => &[][..],
        Some(Yaml::Sequence(list)) => list,
        Some(other) => {
            return Err(format!(
                "{here}: `properties` must be a list, found {}",
                shape(other)
            ))
        }
    };
    let mut properties: Vec<PropertyDef> = Vec::with_capacity(raw_properties.len());
    for (position, raw) in raw_properties.iter().enumerate() {
        let property = parse_property(&id, position, raw, warnings)?;
        if properties.iter().any(|p| p.id == property.id) {
            return Err(format!("{here}: duplicate property id '{}'", property.id));
        }
        if let Some(other) = properties.iter().find(|p| p.uuid == property.uuid) {
            return Err(format!(
                "{here}: property '{}' has the same uuid as property '{}' ({})",
                property.id, other.id, property.uuid
            ));
        }
        properties.push(property);
    }

    let index = Index::build(properties.iter().map(|p| (p.id.as_str(), p.uuid)));
    let node_type = NodeType {
        id,
        uuid,
        name,
        allowed_children: Vec::new(),
        properties,
        features,
        index,
    };
    Ok((node_type, children))
}

fn parse_property(
    type_id: &str,
    position: usize,
    raw: &Yaml,
    warnings: &mut Vec<String>,
) -> Result<PropertyDef, String> {
    let here = format!("node type '{type_id}', property #{}", position + 1);
    let map = mapping(raw, &here)?;
    let id = required_id(map, &here)?;
    let here = format!("node type '{type_id}', property '{id}'");

    let uuid = match uuid_field(map, &here)? {
        Some(uuid) => uuid,
        None => stable_uuid(&format!("property.{type_id}"), &id),
    };
    let name = label(map, &here)?.unwrap_or_else(|| id.clone());
    let kind_name = scalar_field(map, "type", &here)?
        .ok_or_else(|| format!("{here} has no `type` (expected one of: {})", type_names()))?;
    let kind = PropertyType::parse(&kind_name).unwrap_or_else(|| {
        warnings.push(format!(
            "{here} has unknown type '{kind_name}' (known: {}); its values are kept as opaque JSON",
            type_names()
        ));
        PropertyType::Opaque
    });
    let required = match field(map, "required") {
        None => false,
        Some(Yaml::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "{here}: `required` must be true or false, found {}",
                shape(other)
            ))
        }
    };
    // Options only mean something for a select; elsewhere they are ignored like any unknown key.
    let options = if kind == PropertyType::Select {
        parse_options(type_id, &id, map, &here)?
    } else {
        Vec::new()
    };

    // The target type is checked once every node type is known (`parse_template`).
    let target_type = if kind == PropertyType::NodeReference {
        scalar_field(map, "target_type", &here)?.filter(|t| !t.trim().is_empty())
    } else {
        None
    };

    let mut property = PropertyDef {
        id,
        uuid,
        name,
        kind,
        required,
        default: None,
        options,
        type_name: kind_name.trim().to_owned(),
        target_type,
    };
    if let Some(raw_default) = field(map, "value") {
        let json = yaml_to_json(raw_default).ok_or_else(|| {
            format!(
                "{here}: default value must be a plain value, found {}",
                shape(raw_default)
            )
        })?;
        property.default = property
            .parse_value(&json)
            .map_err(|e| format!("{here}: invalid default value: {}", e.message))?;
        // A default would name nodes of no particular project; only "none" makes sense.
        if kind == PropertyType::NodeReference
            && property.default.as_ref().is_some_and(|d| d != &json!([]))
        {
            return Err(format!(
                "{here}: a node reference cannot have a default other than []"
            ));
        }
    }
    // An object property starts as an empty object unless the template says otherwise.
    if kind == PropertyType::Object && property.default.is_none() {
        property.default = Some(json!({}));
    }
    Ok(property)
}

fn parse_options(
    type_id: &str,
    property_id: &str,
    map: &Mapping,
    here: &str,
) -> Result<Vec<SelectOption>, String> {
    let raw_options = match field(map, "options") {
        Some(Yaml::Sequence(list)) if !list.is_empty() => list,
        None | Some(Yaml::Sequence(_)) => {
            return Err(format!("{here}: a select needs a non-empty `options` list"))
        }
        Some(other) => {
            return Err(format!(
                "{here}: `options` must be a list, found {}",
                shape(other)
            ))
        }
    };
    let ns = format!("{type_id}.{property_id}");
    let mut options: Vec<SelectOption> = Vec::with_capacity(raw_options.len());
    for (position, raw) in raw_options.iter().enumerate() {
        let at = format!("{here}, option #{}", position + 1);
        let option = match raw {
            Yaml::Mapping(option) => {
                let name = scalar_field(option, "name", &at)?
                    .or(scalar_field(option, "label", &at)?)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| format!("{at} has no `name`"))?;
                let id = scalar_field(option, "id", &at)?
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| stable_uuid(&ns, &name).to_string());
                SelectOption {
                    id,
                    name,
                    indicator_id: scalar_field(option, "indicator_id", &at)?,
                    bullet: scalar_field(option, "bullet", &at)?,
                }
            }
            other => {
                let name = scalar(other).filter(|n| !n.is_empty()).ok_or_else(|| {
                    format!(
                        "{at} must be a name or a mapping with `name`, found {}",
                        shape(other)
                    )
                })?;
                SelectOption {
                    id: stable_uuid(&ns, &name).to_string(),
                    name,
                    indicator_id: None,
                    bullet: None,
                }
            }
        };
        if options.iter().any(|o| o.id == option.id) {
            return Err(format!("{here}: duplicate option id '{}'", option.id));
        }
        if options.iter().any(|o| o.name == option.name) {
            // Values may name an option; two with one name would make that ambiguous.
            return Err(format!("{here}: duplicate option name '{}'", option.name));
        }
        options.push(option);
    }
    Ok(options)
}

// ---------------------------------------------------------------------------
// Small readers over generic YAML. `null` counts as absent everywhere.

fn field<'a>(map: &'a Mapping, key: &str) -> Option<&'a Yaml> {
    map.get(key).filter(|v| !v.is_null())
}

fn shape(value: &Yaml) -> &'static str {
    match value {
        Yaml::Null => "nothing",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// A scalar as text: `version: 1.0` reads as "1.0", `id: 7` as "7".
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn scalar_field(map: &Mapping, key: &str, here: &str) -> Result<Option<String>, String> {
    match field(map, key) {
        None => Ok(None),
        Some(value) => scalar(value).map(Some).ok_or_else(|| {
            format!(
                "{here}: `{key}` must be a single value, found {}",
                shape(value)
            )
        }),
    }
}

fn mapping<'a>(value: &'a Yaml, here: &str) -> Result<&'a Mapping, String> {
    match value {
        Yaml::Mapping(map) => Ok(map),
        other => Err(format!("{here} must be a mapping, found {}", shape(other))),
    }
}

fn required_id(map: &Mapping, here: &str) -> Result<String, String> {
    scalar_field(map, "id", here)?
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| format!("{here} has no `id`"))
}

/// `label`, or the older `name`.
fn label(map: &Mapping, here: &str) -> Result<Option<String>, String> {
    Ok(scalar_field(map, "label", here)?.or(scalar_field(map, "name", here)?))
}

fn uuid_field(map: &Mapping, here: &str) -> Result<Option<Uuid>, String> {
    match scalar_field(map, "uuid", here)? {
        None => Ok(None),
        Some(text) => Uuid::parse_str(&text)
            .map(Some)
            .map_err(|_| format!("{here}: `uuid` '{text}' is not a UUID")),
    }
}

fn string_list(map: &Mapping, key: &str, here: &str) -> Result<Vec<String>, String> {
    match field(map, key) {
        None => Ok(Vec::new()),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|item| {
                scalar(item).ok_or_else(|| {
                    format!("{here}: `{key}` must list names, found {}", shape(item))
                })
            })
            .collect(),
        Some(other) => Err(format!(
            "{here}: `{key}` must be a list, found {}",
            shape(other)
        )),
    }
}

/// A default value as JSON. Mapping keys must be scalars; tags and non-finite floats have no JSON form.
fn yaml_to_json(value: &Yaml) -> Option<Value> {
    Some(match value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                Value::Number(serde_json::Number::from_f64(n.as_f64()?)?)
            }
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Sequence(items) => {
            Value::Array(items.iter().map(yaml_to_json).collect::<Option<_>>()?)
        }
        Yaml::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Some((scalar(k)?, yaml_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
        Yaml::Tagged(_) => return None,
    })
}

fn type_names() -> String {
    let names: Vec<&str> = PropertyType::ALL.iter().map(|t| t.as_str()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RESTOMOD: &str = include_str!("../../templates/restomod.yaml");

    /// The project's own fixtures in the later Talus Tally format (see tests/fixtures/README.md).
    const BUDGET: &str = include_str!("../../tests/fixtures/templates/budget.yaml");
    const BUDGET_PROJECT: &str = include_str!("../../tests/fixtures/projects/budget_project.json");
    const STUDIO: &str = include_str!("../../tests/fixtures/templates/studio.yaml");

    fn restomod() -> Template {
        Template::from_yaml("restomod", "restomod.yaml", RESTOMOD).expect("restomod loads")
    }

    fn budget() -> Template {
        Template::from_yaml("budget", "budget.yaml", BUDGET).expect("budget loads")
    }

    fn studio() -> Template {
        Template::from_yaml("studio", "studio.yaml", STUDIO).expect("studio loads")
    }

    /// Loads `text` expecting failure and returns the message.
    fn load_error(text: &str) -> String {
        match Template::from_yaml("broken", "broken.yaml", text) {
            Ok(_) => panic!("expected a load error for:\n{text}"),
            Err(e) => {
                assert_eq!(e.file, "broken.yaml");
                e.message
            }
        }
    }

    /// A one-type template with the given property list (YAML, indented as list items under `properties:`).
    fn with_properties(properties: &str) -> String {
        format!("name: T\nnode_types:\n  - id: item\n    properties:\n{properties}")
    }

    fn property(kind: &str) -> PropertyDef {
        let text = with_properties(&format!(
            "      - id: p\n        type: {kind}\n        options: [Planned, In Progress]\n"
        ));
        let template = Template::from_yaml("t", "t.yaml", &text).unwrap();
        template.node_types[0].properties[0].clone()
    }

    fn parsed(kind: &str, raw: Value) -> Result<Option<Value>, DomainError> {
        property(kind).parse_value(&raw)
    }

    fn rejected(kind: &str, raw: Value) -> String {
        let error = parsed(kind, raw.clone()).expect_err(&format!("{kind} must reject {raw}"));
        assert_eq!(error.code, ErrorCode::InvalidPropertyValue);
        error.message
    }

    // --- stable uuids ---------------------------------------------------------

    #[test]
    fn stable_uuid_of_the_project_root_type_matches_talus_tally() {
        assert_eq!(
            stable_uuid("node_type", "project_root").to_string(),
            "292b9e11-45c7-94f4-20db-7f6085266a4f"
        );
    }

    #[test]
    fn budget_project_node_types_map_to_the_template_by_stable_uuid() {
        let template = budget();
        let project: Value = serde_json::from_str(BUDGET_PROJECT).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for node in project["graph"]["nodes"].as_array().unwrap() {
            let type_uuid: Uuid = node["type"].as_str().unwrap().parse().unwrap();
            let node_type = template.node_type_by_uuid(&type_uuid).expect("type maps");
            seen.insert(node_type.id.clone(), ());
        }
        let seen: Vec<_> = seen.into_keys().collect();
        assert_eq!(seen, ["person", "project_root", "task", "team"]);
    }

    #[test]
    fn every_budget_project_property_key_maps_to_a_stable_property_uuid_and_its_value_parses() {
        let template = budget();
        let project: Value = serde_json::from_str(BUDGET_PROJECT).unwrap();
        let mut mapped = 0;
        for node in project["graph"]["nodes"].as_array().unwrap() {
            let node_type = template
                .resolve_node_type(node["type"].as_str().unwrap())
                .unwrap();
            for (key, raw) in node["properties"].as_object().unwrap() {
                let property = node_type
                    .resolve_property(key)
                    .unwrap_or_else(|| panic!("{key} of a {} maps", node_type.id));
                assert_eq!(
                    property.uuid,
                    stable_uuid(&format!("property.{}", node_type.id), &property.id)
                );
                let stored = property.parse_value(raw).unwrap().unwrap();
                if property.kind == PropertyType::Currency {
                    assert_eq!(stored, Value::String(raw.to_string()));
                } else {
                    assert_eq!(&stored, raw);
                }
                mapped += 1;
            }
        }
        assert_eq!(mapped, 63);
    }

    // --- the built-in and fixture templates ---------------------------------------

    #[test]
    fn restomod_loads_with_its_five_types_and_the_inner_id_as_alias() {
        let template = restomod();
        assert_eq!(template.id, "restomod");
        assert_eq!(template.alias.as_deref(), Some("restomod_v1"));
        assert_eq!(template.name, "Restomod Creator");
        assert_eq!(template.version, "1.0");
        let ids: Vec<&str> = template.node_types.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["project_root", "phase", "job", "task", "part"]);
        assert_eq!(template.root_type().id, "project_root");
        assert!(template.node_type("task").unwrap().allows_child("part"));
        assert!(!template.node_type("phase").unwrap().allows_child("task"));
        assert!(template
            .node_type("part")
            .unwrap()
            .allowed_children
            .is_empty());
    }

    #[test]
    fn restomod_options_get_stable_ids_and_keep_indicators() {
        let template = restomod();
        let status = template
            .node_type("phase")
            .unwrap()
            .property("status")
            .unwrap();
        assert_eq!(status.kind, PropertyType::Select);
        let planned = &status.options[0];
        assert_eq!(planned.name, "Planned");
        assert_eq!(
            planned.id,
            stable_uuid("phase.status", "Planned").to_string()
        );
        assert_eq!(planned.indicator_id.as_deref(), Some("empty"));
        assert_eq!(planned.bullet.as_deref(), Some("◯"));
        let priority = template
            .node_type("job")
            .unwrap()
            .property("priority")
            .unwrap();
        let names: Vec<&str> = priority.options.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["Low", "Medium", "High", "Critical"]);
        assert_eq!(priority.options[0].indicator_id, None);
    }

    #[test]
    fn budget_template_loads_with_a_person_property_and_an_explicit_root() {
        let template = budget();
        assert_eq!(template.name, "Event Budget");
        assert!(template.warnings.is_empty(), "{:?}", template.warnings);
        assert_eq!(template.version, "1.0");
        assert_eq!(template.alias, None);
        assert_eq!(template.root_type().id, "project_root");
        assert!(template
            .node_type("person")
            .unwrap()
            .has_feature("is_person"));
        let assigned = template
            .node_type("task")
            .unwrap()
            .property("lead")
            .unwrap();
        assert_eq!(assigned.kind, PropertyType::Person);
        let status = template
            .node_type("task")
            .unwrap()
            .property("state")
            .unwrap();
        assert_eq!(status.options[2].id, "closed");
    }

    #[test]
    fn lookups_by_id_and_uuid_agree() {
        let template = restomod();
        let part = template.node_type("part").unwrap();
        assert_eq!(template.node_type_by_uuid(&part.uuid), Some(part));
        assert_eq!(
            template.resolve_node_type(&part.uuid.to_string()),
            Some(part)
        );
        let qty = part.property("quantity").unwrap();
        assert_eq!(qty.uuid, stable_uuid("property.part", "quantity"));
        assert_eq!(part.property_by_uuid(&qty.uuid), Some(qty));
        assert_eq!(part.resolve_property("quantity"), Some(qty));
        assert_eq!(template.node_type("nope"), None);
        assert_eq!(part.property("nope"), None);
        assert_eq!(part.resolve_property("not-a-uuid"), None);
    }

    // --- loading rules ----------------------------------------------------------

    #[test]
    fn root_type_is_the_is_root_type_else_the_first() {
        let text = "node_types:\n  - id: a\n  - id: b\n    features: [is_root]\n";
        assert_eq!(
            Template::from_yaml("t", "t", text).unwrap().root_type().id,
            "b"
        );
        let text = "node_types:\n  - id: a\n  - id: b\n";
        assert_eq!(
            Template::from_yaml("t", "t", text).unwrap().root_type().id,
            "a"
        );
    }

    #[test]
    fn version_may_be_a_number_and_defaults_to_one_point_oh() {
        let load = |text: &str| Template::from_yaml("t", "t", text).unwrap().version;
        assert_eq!(load("version: 2\nnode_types: [{id: a}]"), "2");
        assert_eq!(load("version: 1.5\nnode_types: [{id: a}]"), "1.5");
        assert_eq!(load("version: \"1.10\"\nnode_types: [{id: a}]"), "1.10");
        assert_eq!(load("node_types: [{id: a}]"), "1.0");
    }

    #[test]
    fn name_and_labels_fall_back_to_the_ids() {
        let text = "node_types:\n  - id: a\n    properties:\n      - {id: p, type: text}\n  - id: b\n    name: Bee\n";
        let template = Template::from_yaml("fallback", "f.yaml", text).unwrap();
        assert_eq!(template.name, "fallback");
        assert_eq!(template.node_types[0].name, "a");
        assert_eq!(template.node_types[0].properties[0].name, "p");
        assert_eq!(template.node_types[1].name, "Bee");
    }

    #[test]
    fn unknown_keys_anywhere_are_ignored() {
        let text = r##"
name: T
blocking_view: {node_size: {base_height: 100}}
uuid: e25eab50-938e-4c76-b7bb-25f818099f81
node_types:
  - id: a
    icon: folder
    color: '#fff'
    base_type: x
    system_locked: true
    velocityConfig: {baseScore: 3}
    properties:
      - id: p
        type: TEXT
        indicator_set: status
        whatever: [1, 2]
"##;
        let template = Template::from_yaml("t", "t", text).unwrap();
        assert_eq!(
            template.node_types[0].properties[0].kind,
            PropertyType::Text
        );
    }

    #[test]
    fn allowed_children_given_as_uuids_resolve_to_ids() {
        let b = stable_uuid("node_type", "b");
        let text = format!(
            "node_types:\n  - id: a\n    allowed_children: [{b}, c, b]\n  - id: b\n  - id: c\n    uuid: 0f0e0d0c-0b0a-0908-0706-050403020100\n    allowed_children: ['0f0e0d0c-0b0a-0908-0706-050403020100']\n"
        );
        let template = Template::from_yaml("t", "t", &text).unwrap();
        assert_eq!(template.node_types[0].allowed_children, ["b", "c"]);
        assert_eq!(template.node_types[2].allowed_children, ["c"]);
        assert_eq!(
            template.node_types[2].uuid.to_string(),
            "0f0e0d0c-0b0a-0908-0706-050403020100"
        );
    }

    #[test]
    fn explicit_property_uuids_and_option_ids_are_kept() {
        let text = with_properties(
            "      - id: s\n        uuid: 11111111-2222-3333-4444-555555555555\n        type: Select\n        options:\n          - {id: todo, name: To Do}\n          - {name: Done}\n",
        );
        let template = Template::from_yaml("t", "t", &text).unwrap();
        let s = &template.node_types[0].properties[0];
        assert_eq!(s.uuid.to_string(), "11111111-2222-3333-4444-555555555555");
        assert_eq!(s.options[0].id, "todo");
        assert_eq!(s.options[1].id, stable_uuid("item.s", "Done").to_string());
    }

    // --- validation failures ------------------------------------------------------

    #[test]
    fn text_that_is_not_yaml_is_rejected() {
        assert!(load_error("node_types: [a, b").contains("not valid YAML"));
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_rejected() {
        assert!(load_error("- a\n- b\n").contains("top level, found a list"));
        assert!(load_error("").contains("the file is empty"));
    }

    #[test]
    fn a_template_without_node_types_is_rejected() {
        assert!(load_error("name: T\n").contains("no node types"));
        assert!(load_error("name: T\nnode_types: []\n").contains("no node types"));
        assert!(load_error("node_types: {a: 1}\n")
            .contains("`node_types` must be a list, found a mapping"));
    }

    #[test]
    fn a_node_type_without_an_id_is_rejected_by_position() {
        let message = load_error("node_types:\n  - id: a\n  - label: Nameless\n");
        assert_eq!(message, "node type #2 has no `id`");
        assert!(load_error("node_types: [a]\n")
            .contains("node type #1 must be a mapping, found a string"));
    }

    #[test]
    fn duplicate_node_type_ids_are_rejected() {
        let message = load_error("node_types:\n  - id: a\n  - id: b\n  - id: a\n");
        assert_eq!(message, "duplicate node type id 'a'");
    }

    #[test]
    fn duplicate_property_ids_within_a_type_are_rejected() {
        let message = load_error(&with_properties(
            "      - {id: p, type: text}\n      - {id: p, type: number}\n",
        ));
        assert_eq!(message, "node type 'item': duplicate property id 'p'");
    }

    #[test]
    fn the_same_property_id_in_two_types_is_fine() {
        let text = "node_types:\n  - id: a\n    properties: [{id: p, type: text}]\n  - id: b\n    properties: [{id: p, type: text}]\n";
        assert!(Template::from_yaml("t", "t", text).is_ok());
    }

    #[test]
    fn allowed_children_naming_an_unknown_type_are_rejected() {
        let message =
            load_error("node_types:\n  - id: phase\n    allowed_children: [jobb]\n  - id: job\n");
        assert_eq!(
            message,
            "node type 'phase': allowed_children names unknown node type 'jobb' (known: phase, job)"
        );
    }

    #[test]
    fn an_unknown_property_type_loads_as_opaque_json_with_a_warning() {
        let text = with_properties(
            "      - {id: colour, type: rgb, value: {r: 1, g: 2, b: 3}}\n      - {id: n, type: text}\n",
        );
        let template = Template::from_yaml("t", "t.yaml", &text).expect("the template loads");
        let colour = template.node_types[0].property("colour").unwrap();
        assert_eq!(colour.kind, PropertyType::Opaque);
        assert_eq!(colour.type_name, "rgb");
        assert_eq!(colour.default, Some(json!({"r": 1, "g": 2, "b": 3})));
        assert_eq!(template.warnings.len(), 1, "{:?}", template.warnings);
        let warning = &template.warnings[0];
        assert!(
            warning.starts_with("node type 'item', property 'colour' has unknown type 'rgb'"),
            "{warning}"
        );
        assert!(warning.contains("kept as opaque JSON"), "{warning}");
        assert!(
            warning.contains("editor, checkbox, node_reference, object"),
            "{warning}"
        );
        for raw in [
            json!("#ff0000"),
            json!([1, 2]),
            json!(7),
            json!({"any": "thing"}),
        ] {
            assert_eq!(colour.parse_value(&raw), Ok(Some(raw.clone())));
        }
        // A property without any type is still a broken template.
        let message = load_error(&with_properties("      - {id: colour}\n"));
        assert!(message.contains("property 'colour' has no `type`"));
    }

    #[test]
    fn string_is_text_and_checkbox_is_a_boolean_of_its_own_kind() {
        let text = with_properties(
            "      - {id: s, type: String}\n      - {id: c, type: checkbox, value: true}\n",
        );
        let template = Template::from_yaml("t", "t.yaml", &text).unwrap();
        let item = &template.node_types[0];
        let s = item.property("s").unwrap();
        assert_eq!(
            (s.kind, s.type_name.as_str()),
            (PropertyType::Text, "String")
        );
        let c = item.property("c").unwrap();
        assert_eq!(c.kind, PropertyType::Checkbox);
        assert_eq!(c.default, Some(json!(true)));
        assert!(template.warnings.is_empty());
        assert_eq!(
            rejected("checkbox", json!("yes")),
            "property 'p' expects true or false; got \"yes\""
        );
    }

    #[test]
    fn editor_text_keeps_its_markup_and_newlines_exactly() {
        let rich = "<p>Line one &amp; <b>two</b></p>\n\n  - item\n";
        assert_eq!(parsed("editor", json!(rich)), Ok(Some(json!(rich))));
        assert_eq!(parsed("editor", json!("")), Ok(Some(json!(""))));
        assert_eq!(
            rejected("editor", json!({"ops": []})),
            "property 'p' expects rich text (a string); got {\"ops\":[]}"
        );
    }

    #[test]
    fn node_references_are_lists_of_distinct_node_ids() {
        let a = "4B7B7187-A20B-4468-A7FA-EF77F0B04770";
        let b = "89ab5140-9a48-4176-a375-646745c20511";
        assert_eq!(
            parsed("node_reference", json!([a, b])),
            Ok(Some(json!([a.to_lowercase(), b])))
        );
        assert_eq!(parsed("node_reference", json!(b)), Ok(Some(json!([b]))));
        assert_eq!(parsed("node_reference", json!([])), Ok(Some(json!([]))));
        let message = rejected("node_reference", json!([b, b]));
        assert!(
            message.starts_with(&format!(
                "property 'p' expects each node once; {b} is listed twice; got [\"{b}\""
            )),
            "{message}"
        );
        assert_eq!(
            rejected("node_reference", json!(["Alice"])),
            "property 'p' expects a list of node ids (UUIDs); got [\"Alice\"]"
        );
        rejected("node_reference", json!({"id": b}));
    }

    #[test]
    fn objects_are_json_objects_and_start_empty() {
        let map = json!({"2026-06-08": {"0a191c5c-9d12-4d62-a8ed-4c95feee16fd": 8}});
        assert_eq!(parsed("object", map.clone()), Ok(Some(map)));
        assert_eq!(
            rejected("object", json!([1])),
            "property 'p' expects a JSON object; got [1]"
        );
        let template = Template::from_yaml(
            "t",
            "t.yaml",
            &with_properties("      - {id: plan, type: object}\n      - {id: set, type: object, value: {a: 1}}\n"),
        )
        .unwrap();
        let initial = template.node_types[0].initial_properties();
        assert_eq!(initial.get("plan"), Some(&json!({})));
        assert_eq!(initial.get("set"), Some(&json!({"a": 1})));
    }

    #[test]
    fn target_types_resolve_by_id_or_uuid_and_an_unknown_one_is_a_warning() {
        let person_uuid = stable_uuid("node_type", "person");
        let text = format!(
            "node_types:\n  - id: task\n    properties:\n      - {{id: who, type: node_reference, target_type: person}}\n      - {{id: by, type: node_reference, target_type: {person_uuid}}}\n      - {{id: any, type: node_reference}}\n  - id: person\n"
        );
        let template = Template::from_yaml("t", "t.yaml", &text).unwrap();
        let task = template.node_type("task").unwrap();
        assert_eq!(
            task.property("who").unwrap().target_type.as_deref(),
            Some("person")
        );
        assert_eq!(
            task.property("by").unwrap().target_type.as_deref(),
            Some("person")
        );
        assert_eq!(task.property("any").unwrap().target_type, None);
        assert!(template.has_node_references());
        assert!(!restomod().has_node_references());
        assert_eq!(
            task.property("who").unwrap().expected(),
            "a list of ids of 'person' nodes (UUIDs)"
        );

        let typo = Template::from_yaml(
            "t",
            "t.yaml",
            "node_types:\n  - id: task\n    properties: [{id: who, type: node_reference, target_type: persn}]\n",
        )
        .expect("a template with a broken target type still loads");
        assert_eq!(
            typo.warnings,
            ["node type 'task', property 'who': target_type names unknown node type 'persn' (known: task); no node can be referenced"]
        );
        let who = typo.node_types[0].property("who").unwrap();
        assert_eq!(who.target_type.as_deref(), Some("persn"));
        // A node reference's default could only name nodes of no particular project.
        let message = load_error(&with_properties(
            "      - {id: r, type: node_reference, value: [4b7b7187-a20b-4468-a7fa-ef77f0b04770]}\n",
        ));
        assert!(
            message.contains("cannot have a default other than []"),
            "{message}"
        );
    }

    #[test]
    fn the_current_format_template_loads_every_property_type_and_ignores_extra_keys() {
        let template = studio();
        assert!(template.warnings.is_empty(), "{:?}", template.warnings);
        assert_eq!(template.name, "Animation Studio");
        assert_eq!(template.version, "2.1");
        let ids: Vec<&str> = template.node_types.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["project_root", "sequence", "shot", "person"]);
        assert_eq!(template.root_type().id, "project_root");
        let shot = template.node_type("shot").unwrap();
        assert_eq!(shot.features, ["scheduling"]);
        let kinds: Vec<(&str, PropertyType, &str)> = shot
            .properties
            .iter()
            .map(|p| (p.id.as_str(), p.kind, p.type_name.as_str()))
            .collect();
        use PropertyType::*;
        assert_eq!(
            kinds,
            [
                ("name", Text, "text"),
                ("code", Text, "string"),
                ("frames", Number, "number"),
                ("cost", Currency, "currency"),
                ("status", Select, "select"),
                ("approved", Checkbox, "checkbox"),
                ("due", Date, "date"),
                ("brief", Editor, "editor"),
                ("supervisor", Person, "person"),
                ("artists", NodeReference, "node_reference"),
                ("after", NodeReference, "node_reference"),
                ("allocation", Object, "object"),
            ]
        );
        assert_eq!(
            shot.property("artists").unwrap().target_type.as_deref(),
            Some("person")
        );
        assert_eq!(shot.property("after").unwrap().target_type, None);
        let status = shot.property("status").unwrap();
        assert_eq!(status.options[1].id, "wip");
        assert_eq!(status.options[1].bullet.as_deref(), Some("◐"));
        let mood = template
            .node_type("sequence")
            .unwrap()
            .property("mood")
            .unwrap();
        assert_eq!(
            mood.options[0].id,
            stable_uuid("sequence.mood", "Calm").to_string()
        );
        let every: std::collections::HashSet<PropertyType> = template
            .node_types
            .iter()
            .flat_map(|t| t.properties.iter().map(|p| p.kind))
            .collect();
        for kind in PropertyType::ALL {
            assert!(every.contains(&kind), "studio.yaml has no {kind} property");
        }
    }

    #[test]
    fn a_property_without_an_id_is_rejected_by_position() {
        let message = load_error(&with_properties(
            "      - {id: a, type: text}\n      - {type: text}\n",
        ));
        assert_eq!(message, "node type 'item', property #2 has no `id`");
    }

    #[test]
    fn a_select_without_options_is_rejected() {
        let message = load_error(&with_properties("      - {id: status, type: select}\n"));
        assert_eq!(
            message,
            "node type 'item', property 'status': a select needs a non-empty `options` list"
        );
        assert!(load_error(&with_properties(
            "      - {id: s, type: select, options: []}\n"
        ))
        .contains("non-empty `options`"));
    }

    #[test]
    fn duplicate_option_ids_and_names_are_rejected() {
        let message = load_error(&with_properties(
            "      - id: s\n        type: select\n        options: [{id: x, name: One}, {id: x, name: Two}]\n",
        ));
        assert_eq!(
            message,
            "node type 'item', property 's': duplicate option id 'x'"
        );
        let message = load_error(&with_properties(
            "      - {id: s, type: select, options: [A, B, A]}\n",
        ));
        assert!(message.contains("property 's': duplicate option id"));
        let message = load_error(&with_properties(
            "      - id: s\n        type: select\n        options: [{id: x, name: One}, {id: y, name: One}]\n",
        ));
        assert_eq!(
            message,
            "node type 'item', property 's': duplicate option name 'One'"
        );
    }

    #[test]
    fn an_option_without_a_name_is_rejected() {
        let message = load_error(&with_properties(
            "      - id: s\n        type: select\n        options: [{id: x}]\n",
        ));
        assert_eq!(
            message,
            "node type 'item', property 's', option #1 has no `name`"
        );
    }

    #[test]
    fn a_default_that_does_not_fit_its_type_is_rejected() {
        let cases = [
            ("{id: qty, type: number, value: lots}", "property 'qty': invalid default value: property 'qty' expects a number; got \"lots\""),
            ("{id: due, type: date, value: 2025-02-30}", "expects a real calendar date (YYYY-MM-DD); got \"2025-02-30\""),
            ("{id: done, type: boolean, value: yes}", "expects true or false; got \"yes\""),
            ("{id: cost, type: currency, value: 'ten'}", "expects an amount"),
            ("{id: s, type: select, options: [A, B], value: C}", "expects one of: A, B; got \"C\""),
            ("{id: who, type: person, value: bob}", "expects the id of a person node"),
            ("{id: t, type: text, value: !tag x}", "default value must be a plain value, found a tagged value"),
        ];
        for (yaml, expected) in cases {
            let message = load_error(&with_properties(&format!("      - {yaml}\n")));
            assert!(
                message.contains(expected),
                "{message} should contain {expected}"
            );
            assert!(
                message.starts_with("node type 'item', property '"),
                "{message}"
            );
        }
    }

    #[test]
    fn odd_shapes_get_messages_naming_the_place() {
        let cases = [
            ("node_types:\n  - id: a\n    allowed_children: b\n", "node type 'a': `allowed_children` must be a list, found a string"),
            ("node_types:\n  - id: a\n    properties: {p: 1}\n", "node type 'a': `properties` must be a list, found a mapping"),
            ("node_types:\n  - id: a\n    properties: [{id: p, type: text, required: maybe}]\n", "property 'p': `required` must be true or false, found a string"),
            ("node_types:\n  - id: a\n    uuid: nope\n", "node type 'a': `uuid` 'nope' is not a UUID"),
            ("name: [a]\nnode_types: [{id: a}]\n", "the template: `name` must be a single value, found a list"),
            ("node_types:\n  - id: a\n  - id: b\n    uuid: e70b1a55-c885-a8e2-b5e8-255fa69438fe\n", "same uuid as node type 'a'"),
        ];
        assert_eq!(
            stable_uuid("node_type", "a").to_string(),
            "e70b1a55-c885-a8e2-b5e8-255fa69438fe"
        );
        for (text, expected) in cases {
            let message = load_error(text);
            assert!(
                message.contains(expected),
                "{message} should contain {expected}"
            );
        }
    }

    #[test]
    fn template_errors_display_the_file_first() {
        let error = Template::from_yaml("x", "x.yaml", "node_types: []").unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.yaml: no node types: `node_types` must be a non-empty list"
        );
    }

    // --- property values ------------------------------------------------------------

    #[test]
    fn null_clears_a_value_of_every_type() {
        for kind in PropertyType::ALL {
            assert_eq!(parsed(kind.as_str(), Value::Null), Ok(None), "{kind}");
        }
    }

    #[test]
    fn text_accepts_strings_only() {
        assert_eq!(parsed("text", json!("hello")), Ok(Some(json!("hello"))));
        assert_eq!(parsed("text", json!("")), Ok(Some(json!(""))));
        assert_eq!(
            rejected("text", json!(12)),
            "property 'p' expects text (a string); got 12"
        );
    }

    #[test]
    fn numbers_accept_numbers_and_numeric_strings() {
        assert_eq!(parsed("number", json!(3)), Ok(Some(json!(3))));
        assert_eq!(parsed("number", json!(2.5)), Ok(Some(json!(2.5))));
        assert_eq!(parsed("number", json!("42")), Ok(Some(json!(42))));
        assert_eq!(parsed("number", json!("-1.25")), Ok(Some(json!(-1.25))));
        assert_eq!(parsed("number", json!(4.0)), Ok(Some(json!(4))));
        assert_eq!(
            rejected("number", json!("abc")),
            "property 'p' expects a number; got \"abc\""
        );
        rejected("number", json!("NaN"));
        rejected("number", json!(true));
    }

    #[test]
    fn currency_is_kept_exact_as_a_decimal_string() {
        assert_eq!(parsed("currency", json!("0.10")), Ok(Some(json!("0.10"))));
        assert_eq!(parsed("currency", json!(0.1)), Ok(Some(json!("0.1"))));
        assert_eq!(parsed("currency", json!("12.50")), Ok(Some(json!("12.50"))));
        assert_eq!(parsed("currency", json!(12)), Ok(Some(json!("12"))));
        let sum: f64 = 0.1 + 0.2;
        assert_eq!(
            parsed("currency", json!(sum)),
            Ok(Some(json!("0.30000000000000004")))
        );
        let message = rejected("currency", json!("12,50"));
        assert_eq!(
            message,
            "property 'p' expects an amount (a number or a decimal string like \"12.50\"); got \"12,50\""
        );
        rejected("currency", json!(false));
    }

    #[test]
    fn booleans_are_true_or_false_only() {
        assert_eq!(parsed("boolean", json!(true)), Ok(Some(json!(true))));
        assert_eq!(parsed("boolean", json!(false)), Ok(Some(json!(false))));
        assert_eq!(
            rejected("boolean", json!("true")),
            "property 'p' expects true or false; got \"true\""
        );
        rejected("boolean", json!(1));
    }

    #[test]
    fn dates_must_be_real_calendar_days() {
        assert_eq!(
            parsed("date", json!("2024-02-29")),
            Ok(Some(json!("2024-02-29")))
        );
        assert_eq!(
            parsed("date", json!("2000-02-29")),
            Ok(Some(json!("2000-02-29")))
        );
        assert_eq!(
            rejected("date", json!("2025-02-30")),
            "property 'p' expects a real calendar date (YYYY-MM-DD); got \"2025-02-30\""
        );
        rejected("date", json!("2023-02-29"));
        rejected("date", json!("1900-02-29"));
        assert_eq!(
            rejected("date", json!("30/01/2025")),
            "property 'p' expects a date as YYYY-MM-DD; got \"30/01/2025\""
        );
        rejected("date", json!(20250101));
    }

    #[test]
    fn select_accepts_an_option_id_or_exact_name_and_stores_the_id() {
        let select = property("select");
        let in_progress = select.options[1].id.clone();
        assert_eq!(
            select.parse_value(&json!("In Progress")),
            Ok(Some(json!(in_progress)))
        );
        assert_eq!(
            select.parse_value(&json!(in_progress)),
            Ok(Some(json!(in_progress)))
        );
        assert_eq!(
            rejected("select", json!("in progress")),
            "property 'p' expects one of: Planned, In Progress; got \"in progress\""
        );
        rejected("select", json!(1));
    }

    #[test]
    fn select_rejection_lists_the_option_names() {
        let status = restomod()
            .node_type("phase")
            .unwrap()
            .property("status")
            .unwrap()
            .clone();
        let error = status.parse_value(&json!("Done")).unwrap_err();
        assert_eq!(
            error.message,
            "property 'status' expects one of: Planned, In Progress, Completed; got \"Done\""
        );
    }

    #[test]
    fn person_accepts_a_uuid_and_stores_it_lower_case() {
        assert_eq!(
            parsed("person", json!("4B7B7187-A20B-4468-A7FA-EF77F0B04770")),
            Ok(Some(json!("4b7b7187-a20b-4468-a7fa-ef77f0b04770")))
        );
        assert_eq!(
            rejected("person", json!("Alice")),
            "property 'p' expects the id of a person node (a UUID); got \"Alice\""
        );
        rejected("person", json!(7));
    }

    #[test]
    fn a_stored_value_parses_back_to_itself() {
        let cases = [
            ("text", json!("x")),
            ("number", json!("7.50")),
            ("currency", json!("7.50")),
            ("boolean", json!(true)),
            ("date", json!("2024-02-29")),
            ("select", json!("Planned")),
            ("person", json!("4B7B7187-A20B-4468-A7FA-EF77F0B04770")),
            ("string", json!("x")),
            ("editor", json!("<p>x</p>\n")),
            ("checkbox", json!(false)),
            (
                "node_reference",
                json!("4B7B7187-A20B-4468-A7FA-EF77F0B04770"),
            ),
            ("object", json!({"a": {"b": [1]}})),
            ("rgb", json!([0, 0, 255])),
        ];
        for (kind, raw) in cases {
            let stored = parsed(kind, raw).unwrap();
            assert_eq!(parsed(kind, stored.clone().unwrap()), Ok(stored), "{kind}");
        }
    }

    // --- defaults and required ------------------------------------------------------

    #[test]
    fn initial_properties_hold_defaults_and_the_first_option_of_each_select() {
        let template = restomod();
        let part = template.node_type("part").unwrap();
        let status = part.property("status").unwrap();
        let initial = part.initial_properties();
        assert_eq!(initial.get("quantity"), Some(&json!(1)));
        assert_eq!(initial.get("status"), Some(&json!(status.options[0].id)));
        assert_eq!(
            initial.len(),
            2,
            "properties without a default are absent: {initial:?}"
        );
        assert!(template
            .node_type("project_root")
            .unwrap()
            .initial_properties()
            .is_empty());
    }

    #[test]
    fn defaults_are_normalised_like_client_values() {
        let text = with_properties(concat!(
            "      - {id: level, type: select, options: [Low, Medium, High], value: Medium}\n",
            "      - {id: fee, type: currency, value: '0.10'}\n",
            "      - {id: count, type: number, value: '3'}\n",
            "      - {id: start, type: date, value: 2024-02-29}\n",
            "      - {id: on, type: boolean, value: false}\n",
            "      - {id: empty, type: text, value: null}\n",
        ));
        let template = Template::from_yaml("t", "t", &text).unwrap();
        let item = &template.node_types[0];
        let medium = stable_uuid("item.level", "Medium").to_string();
        assert_eq!(item.property("level").unwrap().default, Some(json!(medium)));
        assert_eq!(item.property("empty").unwrap().default, None);
        let initial = item.initial_properties();
        let expected: Properties = [
            ("level", json!(medium)),
            ("fee", json!("0.10")),
            ("count", json!(3)),
            ("start", json!("2024-02-29")),
            ("on", json!(false)),
        ]
        .into_iter()
        .map(|(k, v)| (Key::from(k), v))
        .collect();
        assert_eq!(initial, expected);
    }

    #[test]
    fn missing_required_lists_required_properties_without_a_value_in_order() {
        let text = with_properties(concat!(
            "      - {id: b, type: text, required: true}\n",
            "      - {id: a, type: number, required: true}\n",
            "      - {id: c, type: text}\n",
        ));
        let template = Template::from_yaml("t", "t", &text).unwrap();
        let item = &template.node_types[0];
        let props = |pairs: &[(&str, Value)]| -> Properties {
            pairs
                .iter()
                .map(|(k, v)| (Key::from(*k), v.clone()))
                .collect()
        };
        assert_eq!(item.missing_required(&props(&[])), ["b", "a"]);
        assert_eq!(
            item.missing_required(&props(&[("a", json!(0)), ("b", json!("  "))])),
            ["b"]
        );
        assert_eq!(
            item.missing_required(&props(&[("a", Value::Null), ("b", json!("x"))])),
            ["a"]
        );
        assert!(item
            .missing_required(&props(&[("a", json!(1)), ("b", json!("x"))]))
            .is_empty());
    }

    #[test]
    fn an_empty_reference_list_or_object_counts_as_no_value_for_required() {
        let text = with_properties(concat!(
            "      - {id: who, type: node_reference, required: true}\n",
            "      - {id: plan, type: object, required: true}\n",
        ));
        let template = Template::from_yaml("t", "t", &text).unwrap();
        let item = &template.node_types[0];
        let props = |who: Value, plan: Value| -> Properties {
            [("who", who), ("plan", plan)]
                .into_iter()
                .map(|(k, v)| (Key::from(k), v))
                .collect()
        };
        assert_eq!(
            item.missing_required(&item.initial_properties()),
            ["who", "plan"]
        );
        assert_eq!(
            item.missing_required(&props(json!([]), json!({}))),
            ["who", "plan"]
        );
        let id = "4b7b7187-a20b-4468-a7fa-ef77f0b04770";
        assert!(item
            .missing_required(&props(json!([id]), json!({"a": 1})))
            .is_empty());
    }
}
