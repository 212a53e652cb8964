//! Talus Tally project files: export a graph as format 1.0, import 1.0 files and the later `graph.nodes` files.
//!
//! Everything here is a pure function over `serde_json::Value`; reading and
//! writing files is the caller's business. Import is all or nothing: the file
//! is checked whole (ids, types, links, cycles) before the graph is built, and
//! the graph is built with `Graph::apply` in pre-order, so a graph that comes
//! out of `import` satisfies `Graph::check_invariants` by construction.
//!
//! Import keeps data rather than judging it: property values the template does
//! not define are kept under their original key and listed in
//! `Imported::orphaned`; values of defined properties that do not parse are
//! kept as they were and listed in `Imported::warnings`, as are node references
//! to nodes the file does not have. Keys the server has no use for (the
//! current format's `expanded_map`, `blocking_relationships`, `filter_sets`,
//! and per-node view keys such as `icon_id` or `schema_color`) are ignored.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::error::{err, DomainError, ErrorCode};
use super::graph::{Delta, Graph, NodeData, NodeId, Properties};
use super::template::Template;
use super::value::json_longer_than;

/// The version string of the format `export` writes.
pub const FORMAT_VERSION: &str = "1.0";

/// Which kind of project file was imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The original format: `{"version": "1.0", "templates": [..], "nodes": {id: node}}`.
    V1,
    /// The later format: `{"template_id": .., "graph": {"nodes": [node, ..]}}`, keyed by stable UUIDs.
    Graph,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::V1 => "1.0",
            Format::Graph => "graph",
        }
    }
}

/// A property value the template does not define; it is kept in the node under `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub node_id: NodeId,
    /// The key exactly as the file spells it.
    pub key: String,
    pub value: Value,
}

/// Something in the file that was kept as it is but deserves a look.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub node_id: Option<NodeId>,
    pub message: String,
}

/// A successfully imported project file.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub graph: Graph,
    pub format: Format,
    /// The file's `name`, else the first root's name.
    pub name: Option<String>,
    pub orphaned: Vec<Orphan>,
    pub warnings: Vec<Warning>,
}

/// What an imported file may hold: the limits commands are held to
/// (`--max-nodes-per-project`, `--max-name-bytes`, `--max-value-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    pub max_nodes: usize,
    /// Longest node name, property id or project name, in bytes.
    pub max_name_bytes: usize,
    /// Longest property value, as JSON, in bytes.
    pub max_value_bytes: usize,
}

impl ImportLimits {
    /// No limits: a file is judged by its content only.
    pub const NONE: ImportLimits = ImportLimits {
        max_nodes: usize::MAX,
        max_name_bytes: usize::MAX,
        max_value_bytes: usize::MAX,
    };

    /// LIMIT_EXCEEDED if `name` (`what`) is longer than `max_name_bytes`;
    /// BAD_USER_INPUT if it holds a NUL character (no store keeps one as text).
    fn check_name(&self, name: &str, what: impl FnOnce() -> String) -> Result<(), DomainError> {
        if name.contains('\0') {
            return Err(err(
                ErrorCode::BadUserInput,
                format!(
                    "{} contains a NUL character (U+0000), which names may not hold",
                    what()
                ),
            ));
        }
        if name.len() > self.max_name_bytes {
            return Err(err(
                ErrorCode::LimitExceeded,
                format!(
                    "{} is {} bytes long (the limit max-name-bytes is {})",
                    what(),
                    name.len(),
                    self.max_name_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// The template id a file names (`template_id`, else the first of `templates`), so a caller can pick the template.
pub fn template_hint(file: &Value) -> Option<String> {
    let obj = file.as_object()?;
    if let Some(Value::String(id)) = obj.get("template_id") {
        return Some(id.clone());
    }
    match obj.get("templates") {
        Some(Value::Array(ids)) => ids.first().and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The graph as a format 1.0 project file, with `roots` so root order survives a round trip.
pub fn export(graph: &Graph, template_id: &str) -> Value {
    export_named(graph, template_id, None)
}

/// Like `export`, with the project's name as the file's top-level `name`.
pub fn export_named(graph: &Graph, template_id: &str, name: Option<&str>) -> Value {
    let mut nodes = Map::new();
    for node in graph.preorder() {
        let properties: Map<String, Value> = node
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        nodes.insert(
            node.id.to_string(),
            json!({
                "id": node.id.to_string(),
                "type": node.type_id,
                "name": node.name,
                // AutoSi writes as many fractional digits as the instant has, so it reads back exactly.
                "created_at": node.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                "properties": properties,
                "children": node.children.iter().map(Uuid::to_string).collect::<Vec<_>>(),
                "parent_id": node.parent.map(|p| p.to_string()),
            }),
        );
    }
    let mut file = Map::new();
    file.insert("version".into(), json!(FORMAT_VERSION));
    file.insert("templates".into(), json!([template_id]));
    if let Some(name) = name {
        file.insert("name".into(), json!(name));
    }
    file.insert(
        "roots".into(),
        json!(graph
            .roots()
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()),
    );
    file.insert("nodes".into(), Value::Object(nodes));
    Value::Object(file)
}

/// One node as read from the file, before it is placed in the graph.
struct RawNode<'f> {
    id: NodeId,
    obj: &'f Map<String, Value>,
    children: Vec<NodeId>,
    /// Only the 1.0 format states the parent; it must agree with the children lists.
    parent_id: Option<Option<NodeId>>,
}

fn bad(message: impl Into<String>) -> DomainError {
    err(ErrorCode::BadUserInput, message)
}

/// Imports a project file against `template`; nodes without a `created_at` get `now`.
///
/// The roots are the file's `roots` list when it has one (parentless nodes
/// the list leaves out follow it), else the parentless nodes in file order.
/// For a 1.0 `nodes` object "file order" is the order `serde_json::Map`
/// keeps, which is by id (the crate does not enable `preserve_order`); that
/// is why `export` writes `roots`.
///
/// Fails with BAD_USER_INPUT (or NODE_TYPE_NOT_FOUND for a type the template
/// lacks) when the file cannot become a valid graph; nothing is created then.
pub fn import(
    file: &Value,
    template: &Template,
    now: DateTime<Utc>,
) -> Result<Imported, DomainError> {
    import_within(file, template, now, &ImportLimits::NONE)
}

/// `import`, refusing a file over `limits` with LIMIT_EXCEEDED naming the
/// limit: the node count before any node is built, and each name, property id
/// and property value (as it would be stored) as its node is built.
pub fn import_within(
    file: &Value,
    template: &Template,
    now: DateTime<Utc>,
    limits: &ImportLimits,
) -> Result<Imported, DomainError> {
    let obj = file
        .as_object()
        .ok_or_else(|| bad("a project file must be a JSON object"))?;
    let (format, raw, listed_roots) = read_nodes(obj)?;
    if raw.len() > limits.max_nodes {
        return Err(err(
            ErrorCode::LimitExceeded,
            format!(
                "the file holds {} nodes (the limit max-nodes-per-project is {})",
                raw.len(),
                limits.max_nodes
            ),
        ));
    }
    if let Some(Value::String(name)) = obj.get("name") {
        limits.check_name(name, || "the file's project name".to_string())?;
    }
    let mut warnings = Vec::new();
    if let Some(hint) = template_hint(file) {
        if hint != template.id && Some(&hint) != template.alias.as_ref() {
            warnings.push(Warning {
                node_id: None,
                message: format!(
                    "the file was made with template '{hint}' and is imported with '{}'",
                    template.id
                ),
            });
        }
    }
    let order = place(&raw, listed_roots)?;

    let mut graph = Graph::new();
    let mut orphaned = Vec::new();
    for (index_in_file, parent, index) in order {
        let node = &raw[index_in_file];
        let data = node_data(node, template, now, limits, &mut orphaned, &mut warnings)?;
        if let Some(p) = parent {
            let parent_type = &graph.node(&p)?.type_id;
            let allowed = template
                .node_type(parent_type)
                .is_some_and(|t| t.allows_child(&data.type_id));
            if !allowed {
                warnings.push(Warning {
                    node_id: Some(data.id),
                    message: format!(
                        "node {} of type '{}' sits under a '{parent_type}', which the template does not allow",
                        data.id, data.type_id
                    ),
                });
            }
        }
        graph.apply(&Delta::NodeCreated {
            node: data,
            parent_id: parent,
            index,
        })?;
    }
    debug_assert_eq!(graph.check_invariants(), Ok(()));
    dangling_references(&graph, template, &mut warnings);

    let name = match obj.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => Some(n.clone()),
        _ => graph
            .roots()
            .first()
            .and_then(|r| graph.get(r))
            .map(|n| n.name.clone()),
    };
    Ok(Imported {
        graph,
        format,
        name,
        orphaned,
        warnings,
    })
}

/// Warns about node references to nodes the file does not have (or of another type than the target); they are kept as they are.
fn dangling_references(graph: &Graph, template: &Template, warnings: &mut Vec<Warning>) {
    for (node, def, items) in super::command::reference_values(graph, template) {
        for id in items
            .iter()
            .filter_map(|i| i.as_str().and_then(|s| Uuid::parse_str(s).ok()))
        {
            let problem = match (graph.get(&id), &def.target_type) {
                (None, _) => format!("node {id}, which is not in the file"),
                (Some(target), Some(want)) if target.type_id != want.as_str() => {
                    format!("node {id}, a '{}' rather than a '{want}'", target.type_id)
                }
                _ => continue,
            };
            warnings.push(Warning {
                node_id: Some(node.id),
                message: format!(
                    "kept the value of '{}' as it is: it references {problem}",
                    def.id
                ),
            });
        }
    }
}

type ReadNodes<'f> = (Format, Vec<RawNode<'f>>, Option<Vec<NodeId>>);

/// Detects the format and reads every node's id and links, rejecting duplicate ids.
fn read_nodes(obj: &Map<String, Value>) -> Result<ReadNodes<'_>, DomainError> {
    let mut nodes = Vec::new();
    let format;
    let mut listed_roots = None;
    if let Some(map) = obj.get("nodes") {
        format = Format::V1;
        match obj.get("version") {
            None => {}
            Some(Value::String(v)) if v == FORMAT_VERSION => {}
            Some(other) => {
                return Err(bad(format!(
                    "project file version {other} is not supported; expected \"{FORMAT_VERSION}\""
                )))
            }
        }
        let map = map
            .as_object()
            .ok_or_else(|| bad("'nodes' of a 1.0 project file must be an object of id -> node"))?;
        for (key, value) in map {
            let id = parse_id(key, "node key")?;
            let node = value
                .as_object()
                .ok_or_else(|| bad(format!("node {key} must be an object")))?;
            if let Some(stated) = node.get("id") {
                if stated.as_str().and_then(|s| Uuid::parse_str(s).ok()) != Some(id) {
                    return Err(bad(format!("node {key} says its id is {stated}")));
                }
            }
            let parent_id = match node.get("parent_id") {
                None => None,
                Some(Value::Null) => Some(None),
                Some(Value::String(p)) => {
                    Some(Some(parse_id(p, &format!("parent_id of node {key}"))?))
                }
                Some(other) => {
                    return Err(bad(format!(
                        "parent_id of node {key} must be an id or null, not {other}"
                    )))
                }
            };
            nodes.push(RawNode {
                id,
                obj: node,
                children: children(node, key)?,
                parent_id,
            });
        }
        if let Some(roots) = obj.get("roots") {
            let roots = roots
                .as_array()
                .ok_or_else(|| bad("'roots' must be a list of node ids"))?;
            let ids = roots
                .iter()
                .map(|r| match r {
                    Value::String(s) => parse_id(s, "root"),
                    other => Err(bad(format!("root {other} must be a node id"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            listed_roots = Some(ids);
        }
    } else if let Some(graph) = obj.get("graph") {
        format = Format::Graph;
        let list = graph
            .get("nodes")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("'graph.nodes' of a project file must be a list of nodes"))?;
        let mut seen = HashSet::with_capacity(list.len());
        for (i, value) in list.iter().enumerate() {
            let node = value
                .as_object()
                .ok_or_else(|| bad(format!("node {i} of graph.nodes must be an object")))?;
            let key = match node.get("id") {
                Some(Value::String(s)) => s.as_str(),
                _ => return Err(bad(format!("node {i} of graph.nodes has no string id"))),
            };
            let id = parse_id(key, "node id")?;
            if !seen.insert(id) {
                return Err(bad(format!(
                    "node id {id} appears more than once in the file"
                )));
            }
            nodes.push(RawNode {
                id,
                obj: node,
                children: children(node, key)?,
                parent_id: None,
            });
        }
    } else {
        return Err(bad(
            "not a Talus Tally project file: expected a 1.0 file with a 'nodes' object \
             or a file with 'graph.nodes'",
        ));
    }
    Ok((format, nodes, listed_roots))
}

fn parse_id(text: &str, what: &str) -> Result<NodeId, DomainError> {
    Uuid::parse_str(text).map_err(|_| bad(format!("{what} '{text}' is not a UUID")))
}

fn children(node: &Map<String, Value>, key: &str) -> Result<Vec<NodeId>, DomainError> {
    match node.get("children") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|c| match c {
                Value::String(s) => parse_id(s, &format!("child of node {key}")),
                other => Err(bad(format!(
                    "child {other} of node {key} must be a node id"
                ))),
            })
            .collect(),
        Some(other) => Err(bad(format!(
            "children of node {key} must be a list of ids, not {other}"
        ))),
    }
}

/// Checks the links and returns, in pre-order, each node (by position in the
/// file) with its parent and its index among that parent's children.
fn place(
    raw: &[RawNode<'_>],
    listed_roots: Option<Vec<NodeId>>,
) -> Result<Vec<(usize, Option<NodeId>, usize)>, DomainError> {
    let by_id: HashMap<NodeId, usize> = raw.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut parent_of: HashMap<NodeId, NodeId> = HashMap::with_capacity(raw.len());
    for node in raw {
        for child in &node.children {
            if !by_id.contains_key(child) {
                return Err(bad(format!(
                    "node {} lists child {child}, which is not in the file",
                    node.id
                )));
            }
            if let Some(first) = parent_of.insert(*child, node.id) {
                return Err(bad(format!(
                    "node {child} is listed as a child twice (under {first} and {})",
                    node.id
                )));
            }
        }
    }
    for node in raw {
        if let Some(stated) = node.parent_id {
            let actual = parent_of.get(&node.id).copied();
            if stated != actual {
                let show = |p: Option<NodeId>| p.map_or("none".to_string(), |p| p.to_string());
                return Err(bad(format!(
                    "node {} says its parent is {} but is listed under {}",
                    node.id,
                    show(stated),
                    show(actual)
                )));
            }
        }
    }
    let parentless = raw
        .iter()
        .map(|n| n.id)
        .filter(|id| !parent_of.contains_key(id));
    let roots: Vec<NodeId> = match listed_roots {
        None => parentless.collect(),
        Some(listed) => {
            let mut seen = HashSet::with_capacity(listed.len());
            for id in &listed {
                if !by_id.contains_key(id) {
                    return Err(bad(format!("root {id} is not in the file")));
                }
                if let Some(p) = parent_of.get(id) {
                    return Err(bad(format!("root {id} is listed as a child of {p}")));
                }
                if !seen.insert(*id) {
                    return Err(bad(format!("root {id} is listed twice")));
                }
            }
            // Parentless nodes the list forgot still come along, after the listed ones.
            let rest: Vec<NodeId> = parentless.filter(|id| !seen.contains(id)).collect();
            listed.into_iter().chain(rest).collect()
        }
    };

    let mut order = Vec::with_capacity(raw.len());
    let mut stack: Vec<(NodeId, Option<NodeId>, usize)> = roots
        .iter()
        .enumerate()
        .rev()
        .map(|(i, r)| (*r, None, i))
        .collect();
    while let Some((id, parent, index)) = stack.pop() {
        let at = by_id[&id];
        order.push((at, parent, index));
        stack.extend(
            raw[at]
                .children
                .iter()
                .enumerate()
                .rev()
                .map(|(i, c)| (*c, Some(id), i)),
        );
    }
    if order.len() != raw.len() {
        // Every node has at most one parent, so what the roots cannot reach hangs in a cycle.
        let reached: HashSet<usize> = order.iter().map(|(at, _, _)| *at).collect();
        let stuck = raw
            .iter()
            .enumerate()
            .find(|(i, _)| !reached.contains(i))
            .map(|(_, n)| n.id)
            .expect("some node was not reached");
        return Err(bad(format!(
            "the children lists form a cycle: node {stuck} is its own ancestor"
        )));
    }
    Ok(order)
}

fn node_data(
    node: &RawNode<'_>,
    template: &Template,
    now: DateTime<Utc>,
    limits: &ImportLimits,
    orphaned: &mut Vec<Orphan>,
    warnings: &mut Vec<Warning>,
) -> Result<NodeData, DomainError> {
    let id = node.id;
    let check_value = |key: &str, value: &Value| {
        limits.check_name(key, || format!("a property id of node {id}"))?;
        if json_longer_than(value, limits.max_value_bytes) {
            return Err(err(
                ErrorCode::LimitExceeded,
                format!(
                    "the value of property '{key}' of node {id} is more than {max} bytes as JSON (the limit max-value-bytes is {max})",
                    max = limits.max_value_bytes
                ),
            ));
        }
        Ok(())
    };
    let type_key = match node.obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return Err(bad(format!("node {id} has no string 'type'"))),
    };
    let ty = template.resolve_node_type(type_key).ok_or_else(|| {
        err(
            ErrorCode::NodeTypeNotFound,
            format!(
                "node {id} has type '{type_key}', which template '{}' does not define",
                template.id
            ),
        )
    })?;

    let mut properties = Properties::new();
    match node.obj.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            for (key, raw) in given {
                let Some(def) = ty.resolve_property(key) else {
                    check_value(key, raw)?;
                    orphaned.push(Orphan {
                        node_id: id,
                        key: key.clone(),
                        value: raw.clone(),
                    });
                    properties.insert(key.as_str().into(), raw.clone());
                    continue;
                };
                let value = match def.parse_value(raw) {
                    Ok(Some(v)) => v,
                    // JSON null: the property has no value.
                    Ok(None) => continue,
                    Err(e) => {
                        warnings.push(Warning {
                            node_id: Some(id),
                            message: format!(
                                "kept the value of '{}' as it is: {}",
                                def.id, e.message
                            ),
                        });
                        raw.clone()
                    }
                };
                check_value(def.id.as_str(), &value)?;
                if properties.insert(def.id.as_str().into(), value).is_some() {
                    warnings.push(Warning {
                        node_id: Some(id),
                        message: format!(
                            "property '{}' is given twice; the later value is kept",
                            def.id
                        ),
                    });
                }
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "properties of node {id} must be an object, not {other}"
            )))
        }
    }

    let name = match node.obj.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
        _ => match properties.get("name") {
            Some(Value::String(n)) if ty.property("name").is_some() && !n.trim().is_empty() => {
                n.trim().to_string()
            }
            _ => ty.name.clone(),
        },
    };
    limits.check_name(&name, || format!("the name of node {id}"))?;

    let created_at = match node.obj.get("created_at") {
        None | Some(Value::Null) => now,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                warnings.push(Warning {
                    node_id: Some(id),
                    message: format!(
                        "created_at '{s}' is not an RFC 3339 timestamp; using the import time"
                    ),
                });
                now
            }
        },
        Some(other) => {
            warnings.push(Warning {
                node_id: Some(id),
                message: format!(
                    "created_at {other} is not an RFC 3339 timestamp; using the import time"
                ),
            });
            now
        }
    };

    Ok(NodeData {
        id,
        type_id: ty.id.as_str().into(),
        name,
        properties,
        created_at,
    })
}
