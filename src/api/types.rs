//! View types: what queries return, resolved from templates, sessions and projects.

use std::sync::Arc;

use async_graphql::{Context, Enum, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::error::{uuid, OrGql, Result};
use super::events::SessionEventView;
use super::extension::charge;
use super::scalars::Timestamp;
use crate::domain::template::{NodeType, PropertyDef, PropertyType};
use crate::domain::{Key, Node, Properties, Template};
use crate::session::{ClientInfo, Hub, Outcome, Session};
use crate::store::ProjectRecord;

/// Shorthand for the hub in resolvers.
pub fn hub<'a>(ctx: &Context<'a>) -> &'a Arc<Hub> {
    ctx.data_unchecked::<Arc<Hub>>()
}

pub struct TemplateView(pub Arc<Template>);

/// A template: the node types a project may contain and their properties.
#[Object(name = "Template")]
impl TemplateView {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn version(&self) -> &str {
        &self.0.version
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    /// The node type a new project's root gets (feature is_root, else the first).
    async fn root_type(&self) -> NodeTypeView {
        NodeTypeView(self.0.root_type().clone())
    }
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::NODE_TYPES).saturating_add(1)"
    )]
    async fn node_types(&self) -> Vec<NodeTypeView> {
        self.0
            .node_types
            .iter()
            .cloned()
            .map(NodeTypeView)
            .collect()
    }
    async fn node_type(&self, id: ID) -> Option<NodeTypeView> {
        self.0.node_type(&id).cloned().map(NodeTypeView)
    }
}

pub struct NodeTypeView(pub NodeType);

#[Object(name = "NodeType")]
impl NodeTypeView {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Stable UUID of the node type, as in Talus Tally project files.
    async fn uuid(&self) -> ID {
        ID(self.0.uuid.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn allowed_children(&self) -> Vec<ID> {
        self.0.allowed_children.iter().cloned().map(ID).collect()
    }
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::PROPERTIES).saturating_add(1)"
    )]
    async fn properties(&self) -> Vec<PropertyDefView> {
        self.0
            .properties
            .iter()
            .cloned()
            .map(PropertyDefView)
            .collect()
    }
    /// Feature flags from the template, e.g. is_root.
    async fn features(&self) -> &[String] {
        &self.0.features
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "PropertyType")]
pub enum PropertyTypeView {
    Text,
    Number,
    Currency,
    Boolean,
    Date,
    Select,
    /// The id of a node (usually a person); from later Talus Tally templates.
    Person,
}

impl From<PropertyType> for PropertyTypeView {
    fn from(t: PropertyType) -> Self {
        match t {
            PropertyType::Text => PropertyTypeView::Text,
            PropertyType::Number => PropertyTypeView::Number,
            PropertyType::Currency => PropertyTypeView::Currency,
            PropertyType::Boolean => PropertyTypeView::Boolean,
            PropertyType::Date => PropertyTypeView::Date,
            PropertyType::Select => PropertyTypeView::Select,
            PropertyType::Person => PropertyTypeView::Person,
        }
    }
}

pub struct PropertyDefView(pub PropertyDef);

#[Object(name = "PropertyDef")]
impl PropertyDefView {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn uuid(&self) -> ID {
        ID(self.0.uuid.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> PropertyTypeView {
        self.0.kind.into()
    }
    async fn required(&self) -> bool {
        self.0.required
    }
    async fn default_value(&self) -> Option<Json<Value>> {
        self.0.default.clone().map(Json)
    }
    /// Only for SELECT.
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::OPTIONS).saturating_add(1)"
    )]
    async fn options(&self) -> Option<Vec<SelectOptionView>> {
        (self.0.kind == PropertyType::Select).then(|| {
            self.0
                .options
                .iter()
                .map(|o| SelectOptionView {
                    id: ID(o.id.clone()),
                    name: o.name.clone(),
                    indicator_id: o.indicator_id.clone(),
                    bullet: o.bullet.clone(),
                })
                .collect()
        })
    }
}

#[derive(SimpleObject)]
#[graphql(name = "SelectOption")]
pub struct SelectOptionView {
    pub id: ID,
    pub name: String,
    pub indicator_id: Option<String>,
    pub bullet: Option<String>,
}

#[derive(SimpleObject)]
#[graphql(name = "TemplateError")]
pub struct TemplateErrorView {
    pub file: String,
    pub message: String,
}

pub struct ClientView(pub ClientInfo);

#[Object(name = "Client")]
impl ClientView {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }
    async fn connected_at(&self) -> Timestamp {
        Timestamp(self.0.connected_at)
    }
}

pub struct ProjectView(pub ProjectRecord);

#[Object(name = "Project")]
impl ProjectView {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn template_id(&self) -> ID {
        ID(self.0.template_id.clone())
    }
    async fn template(&self, ctx: &Context<'_>) -> Option<TemplateView> {
        hub(ctx)
            .templates()
            .get(&self.0.template_id)
            .map(TemplateView)
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.created_at)
    }
    async fn updated_at(&self) -> Timestamp {
        Timestamp(self.0.updated_at)
    }
    async fn node_count(&self) -> i32 {
        self.0.node_count as i32
    }
    /// Graph version: +1 for every applied command, undo or redo.
    async fn version(&self) -> i32 {
        self.0.version as i32
    }
    /// The live session that has this project open, if any.
    async fn session(&self, ctx: &Context<'_>) -> Option<SessionView> {
        hub(ctx).session_of_project(self.0.id).map(SessionView)
    }
}

pub struct SessionView(pub Arc<Session>);

#[Object(name = "Session")]
impl SessionView {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.created_at)
    }
    async fn last_activity(&self) -> Timestamp {
        Timestamp(self.0.last_activity())
    }
    async fn active_clients(&self) -> i32 {
        self.0.read().active_clients() as i32
    }
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::CLIENTS).saturating_add(1)"
    )]
    async fn clients(&self) -> Vec<ClientView> {
        self.0.read().clients().cloned().map(ClientView).collect()
    }
    async fn has_project(&self) -> bool {
        self.0.read().project.is_some()
    }
    async fn project(&self) -> Option<ProjectView> {
        self.0
            .read()
            .project
            .as_ref()
            .map(|p| ProjectView(p.record.clone()))
    }
    /// Graph version: +1 for every applied command, undo or redo.
    async fn version(&self) -> i32 {
        self.0
            .read()
            .project
            .as_ref()
            .map_or(0, |p| p.dispatcher.version() as i32)
    }
    /// Seq of the newest event of this session (0 if none).
    async fn last_seq(&self) -> i32 {
        self.0.read().last_seq as i32
    }
    async fn can_undo(&self) -> bool {
        self.0
            .read()
            .project
            .as_ref()
            .is_some_and(|p| p.dispatcher.can_undo())
    }
    async fn can_redo(&self) -> bool {
        self.0
            .read()
            .project
            .as_ref()
            .is_some_and(|p| p.dispatcher.can_redo())
    }
    async fn node_count(&self) -> i32 {
        self.0
            .read()
            .project
            .as_ref()
            .map_or(0, |p| p.dispatcher.graph().len() as i32)
    }
    async fn graph(&self) -> Option<GraphView> {
        self.0
            .read()
            .project
            .is_some()
            .then(|| GraphView(self.0.clone()))
    }
}

pub struct GraphView(pub Arc<Session>);

impl GraphView {
    /// How many roots (or nodes) the graph has: what listing them costs.
    pub fn len(&self, roots_only: bool) -> usize {
        let state = self.0.read();
        state.project.as_ref().map_or(0, |p| {
            let graph = p.dispatcher.graph();
            if roots_only {
                graph.roots().len()
            } else {
                graph.len()
            }
        })
    }

    fn nodes_where(
        &self,
        keep: impl Fn(&Node) -> bool,
        limit: usize,
        roots_only: bool,
    ) -> Vec<NodeView> {
        let state = self.0.read();
        let Some(project) = state.project.as_ref() else {
            return Vec::new();
        };
        let graph = project.dispatcher.graph();
        let make = |n: &Node| NodeView::live(n, &project.template, &self.0);
        if roots_only {
            return graph
                .roots()
                .iter()
                .filter_map(|id| graph.get(id))
                .map(make)
                .collect();
        }
        graph
            .preorder()
            .filter(|n| keep(n))
            .take(limit)
            .map(make)
            .collect()
    }
}

#[Object(name = "Graph")]
impl GraphView {
    async fn version(&self) -> i32 {
        self.0
            .read()
            .project
            .as_ref()
            .map_or(0, |p| p.dispatcher.version() as i32)
    }
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::ROOTS).saturating_add(1)"
    )]
    async fn roots(&self, ctx: &Context<'_>) -> Result<Vec<NodeView>> {
        charge(ctx, self.len(true), "Graph.roots")?;
        Ok(self.nodes_where(|_| true, usize::MAX, true))
    }
    /// All nodes, parents before children.
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::NODES).saturating_add(1)"
    )]
    async fn nodes(&self, ctx: &Context<'_>) -> Result<Vec<NodeView>> {
        charge(ctx, self.len(false), "Graph.nodes")?;
        Ok(self.nodes_where(|_| true, usize::MAX, false))
    }
    async fn node_count(&self) -> i32 {
        self.0
            .read()
            .project
            .as_ref()
            .map_or(0, |p| p.dispatcher.graph().len() as i32)
    }
}

impl GraphView {
    /// Nodes whose name contains `text` (case-insensitive) and/or whose type is `type_id`.
    pub fn search(&self, text: Option<&str>, type_id: Option<&str>, limit: usize) -> Vec<NodeView> {
        let needle = text.map(str::to_lowercase);
        self.nodes_where(
            |n| {
                needle
                    .as_ref()
                    .is_none_or(|t| n.name.to_lowercase().contains(t))
                    && type_id.is_none_or(|ty| n.type_id == ty)
            },
            limit,
            false,
        )
    }
}

/// A node: from the live graph (links resolve against it) or as recorded in an event.
pub struct NodeView {
    pub id: Uuid,
    pub type_id: Key,
    pub name: String,
    pub properties: Properties,
    pub parent: Option<Uuid>,
    pub children: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub template: Option<Arc<Template>>,
    /// Set for live nodes; event nodes are immutable records and resolve no links.
    pub session: Option<Arc<Session>>,
}

impl NodeView {
    pub fn live(n: &Node, template: &Arc<Template>, session: &Arc<Session>) -> NodeView {
        NodeView {
            id: n.id,
            type_id: n.type_id.clone(),
            name: n.name.clone(),
            properties: n.properties.clone(),
            parent: n.parent,
            children: n.children.clone(),
            created_at: n.created_at,
            template: Some(template.clone()),
            session: Some(session.clone()),
        }
    }

    fn lookup(&self, ids: &[Uuid]) -> Vec<NodeView> {
        let Some(session) = &self.session else {
            return Vec::new();
        };
        let state = session.read();
        let Some(project) = state.project.as_ref() else {
            return Vec::new();
        };
        let graph = project.dispatcher.graph();
        ids.iter()
            .filter_map(|id| graph.get(id))
            .map(|n| NodeView::live(n, &project.template, session))
            .collect()
    }
}

#[Object(name = "Node")]
impl NodeView {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn type_id(&self) -> ID {
        ID(self.type_id.to_string())
    }
    #[graphql(name = "type")]
    async fn node_type(&self) -> Option<NodeTypeView> {
        self.template
            .as_ref()?
            .node_type(&self.type_id)
            .cloned()
            .map(NodeTypeView)
    }
    async fn name(&self) -> &str {
        &self.name
    }
    /// Property id -> value.
    async fn properties(&self) -> Json<&Properties> {
        Json(&self.properties)
    }
    async fn property(&self, id: ID) -> Option<Json<Value>> {
        self.properties.get(id.as_str()).cloned().map(Json)
    }
    /// Required properties of the type that have no value.
    async fn missing_required(&self) -> Vec<ID> {
        self.template
            .as_ref()
            .and_then(|t| t.node_type(&self.type_id))
            .map(|t| {
                t.missing_required(&self.properties)
                    .into_iter()
                    .map(ID)
                    .collect()
            })
            .unwrap_or_default()
    }
    async fn parent_id(&self) -> Option<ID> {
        self.parent.map(|p| ID(p.to_string()))
    }
    /// The parent in the live graph (null for event records).
    async fn parent(&self, ctx: &Context<'_>) -> Result<Option<NodeView>> {
        charge(ctx, 1, "Node.parent")?;
        Ok(self
            .lookup(&self.parent.into_iter().collect::<Vec<_>>())
            .pop())
    }
    /// Children in order (empty for event records, whose children arrive as their own events).
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::CHILDREN).saturating_add(1)"
    )]
    async fn children(&self, ctx: &Context<'_>) -> Result<Vec<NodeView>> {
        charge(ctx, self.children.len(), "Node.children")?;
        Ok(self.lookup(&self.children))
    }
    async fn child_ids(&self) -> Vec<ID> {
        self.children.iter().map(|c| ID(c.to_string())).collect()
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.created_at)
    }
}

pub struct CommandResultView {
    pub outcome: Outcome,
    pub session: Arc<Session>,
}

#[Object(name = "CommandResult")]
impl CommandResultView {
    async fn command_id(&self) -> ID {
        ID(self.outcome.command_id.to_string())
    }
    /// Session graph version after the command.
    async fn version(&self) -> i32 {
        self.outcome.version as i32
    }
    /// The node created by a createNode (first created node of a batch or kit), else null.
    async fn node_id(&self) -> Option<ID> {
        self.outcome.node_id.map(|n| ID(n.to_string()))
    }
    /// The events this command produced, as delivered to subscribers.
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::EVENTS).saturating_add(1)"
    )]
    async fn events(&self) -> Vec<SessionEventView> {
        let template = self
            .session
            .read()
            .project
            .as_ref()
            .map(|p| p.template.clone());
        self.outcome
            .events
            .iter()
            .map(|e| SessionEventView::from_event(e.clone(), template.clone()))
            .collect()
    }
    async fn can_undo(&self) -> bool {
        self.outcome.can_undo
    }
    async fn can_redo(&self) -> bool {
        self.outcome.can_redo
    }
    async fn session(&self) -> SessionView {
        SessionView(self.session.clone())
    }
}

#[derive(SimpleObject)]
#[graphql(name = "CleanupResult")]
pub struct CleanupResultView {
    pub sessions_removed: i32,
    pub active_sessions: i32,
}

/// A session by `ID`, or SESSION_NOT_FOUND / BAD_USER_INPUT.
pub fn session(ctx: &Context<'_>, id: &ID) -> Result<Arc<Session>> {
    hub(ctx).session(uuid(id, "sessionId")?).gql()
}
