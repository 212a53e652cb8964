//! View types: what queries return, resolved from templates, sessions and projects.

use std::sync::Arc;

use async_graphql::{Context, Enum, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::error::{int, uuid, OrGql, Result};
use super::events::SessionEventView;
use super::extension::charge;
use super::scalars::Timestamp;
use crate::domain::template::{NodeType, PropertyDef, PropertyType};
use crate::domain::{Key, Node, Properties, Role, Template};
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
        NodeTypeView::new(&self.0, self.0.root_type())
    }
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::NODE_TYPES).saturating_add(1)"
    )]
    async fn node_types(&self) -> Vec<NodeTypeView> {
        self.0
            .node_types
            .iter()
            .map(|t| NodeTypeView::new(&self.0, t))
            .collect()
    }
    /// One node type by its id inside this template (`NodeType.typeId`), or null.
    async fn node_type(&self, type_id: ID) -> Option<NodeTypeView> {
        self.0
            .node_type(&type_id)
            .map(|t| NodeTypeView::new(&self.0, t))
    }
}

/// A node type with the id of its template, which makes its `id` unique across the server.
pub struct NodeTypeView {
    pub template_id: String,
    pub ty: NodeType,
}

impl NodeTypeView {
    pub fn new(template: &Template, ty: &NodeType) -> Self {
        NodeTypeView {
            template_id: template.id.clone(),
            ty: ty.clone(),
        }
    }

    /// `<templateId>/<typeId>`: what the type's properties and options extend.
    fn global_id(&self) -> String {
        format!("{}/{}", self.template_id, self.ty.id)
    }
}

#[Object(name = "NodeType")]
impl NodeTypeView {
    /// Unique across templates: '<templateId>/<typeId>'.
    async fn id(&self) -> ID {
        ID(self.global_id())
    }
    /// The type's id inside its template: what Node.typeId, allowedChildren and CreateNodeInput.typeId use.
    async fn type_id(&self) -> ID {
        ID(self.ty.id.clone())
    }
    /// Stable UUID of the node type, as in Talus Tally project files.
    async fn uuid(&self) -> ID {
        ID(self.ty.uuid.to_string())
    }
    async fn name(&self) -> &str {
        &self.ty.name
    }
    /// typeIds of the types allowed as children.
    async fn allowed_children(&self) -> Vec<ID> {
        self.ty.allowed_children.iter().cloned().map(ID).collect()
    }
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::PROPERTIES).saturating_add(1)"
    )]
    async fn properties(&self) -> Vec<PropertyDefView> {
        let type_id = self.global_id();
        self.ty
            .properties
            .iter()
            .map(|def| PropertyDefView {
                id: format!("{type_id}/{}", def.id),
                def: def.clone(),
            })
            .collect()
    }
    /// Feature flags from the template, e.g. is_root.
    async fn features(&self) -> &[String] {
        &self.ty.features
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
    /// Rich text: a string that keeps its markup and newlines.
    Editor,
    /// A boolean shown as a checkbox.
    Checkbox,
    /// A list of ids of nodes of the same project (of the property's target type, if it has one).
    NodeReference,
    /// A JSON object.
    Object,
    /// A type this server does not know (from a newer template): any JSON value, kept as it is.
    Opaque,
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
            PropertyType::Editor => PropertyTypeView::Editor,
            PropertyType::Checkbox => PropertyTypeView::Checkbox,
            PropertyType::NodeReference => PropertyTypeView::NodeReference,
            PropertyType::Object => PropertyTypeView::Object,
            PropertyType::Opaque => PropertyTypeView::Opaque,
        }
    }
}

/// A property definition with its server-wide id (`<templateId>/<typeId>/<propertyId>`).
pub struct PropertyDefView {
    pub id: String,
    pub def: PropertyDef,
}

#[Object(name = "PropertyDef")]
impl PropertyDefView {
    /// Unique across templates: '<templateId>/<typeId>/<propertyId>'.
    async fn id(&self) -> ID {
        ID(self.id.clone())
    }
    /// The property's id inside its node type: the key in Node.properties and what updateProperty takes.
    async fn property_id(&self) -> ID {
        ID(self.def.id.clone())
    }
    async fn uuid(&self) -> ID {
        ID(self.def.uuid.to_string())
    }
    async fn name(&self) -> &str {
        &self.def.name
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> PropertyTypeView {
        self.def.kind.into()
    }
    async fn required(&self) -> bool {
        self.def.required
    }
    async fn default_value(&self) -> Option<Json<Value>> {
        self.def.default.clone().map(Json)
    }
    /// Only for SELECT.
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::OPTIONS).saturating_add(1)"
    )]
    async fn options(&self) -> Option<Vec<SelectOptionView>> {
        (self.def.kind == PropertyType::Select).then(|| {
            self.def
                .options
                .iter()
                .map(|o| SelectOptionView {
                    id: ID(format!("{}/{}", self.id, o.id)),
                    option_id: ID(o.id.clone()),
                    name: o.name.clone(),
                    indicator_id: o.indicator_id.clone(),
                    bullet: o.bullet.clone(),
                })
                .collect()
        })
    }
}

/// id is unique across templates; optionId is what a select property stores as its value.
#[derive(SimpleObject)]
#[graphql(name = "SelectOption")]
pub struct SelectOptionView {
    /// Unique across templates: '<templateId>/<typeId>/<propertyId>/<optionId>'.
    pub id: ID,
    /// What a select property stores as its value.
    pub option_id: ID,
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

/// A client connected to one session (no id: the same clientId can be in several sessions).
#[Object(name = "Client")]
impl ClientView {
    /// The client's own name for itself (a browser tab, a device): `connection_init`'s clientId or `x-client-id`.
    async fn client_id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }
    /// The authenticated user behind the client (null when authentication is off).
    async fn user_id(&self) -> Option<ID> {
        self.0.user_id.clone().map(ID)
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
    async fn node_count(&self) -> Result<i32> {
        int(self.0.node_count)
    }
    /// Graph version: +1 for every applied command, undo or redo.
    async fn version(&self) -> Result<i32> {
        int(self.0.version)
    }
    /// The live session that has this project open, if any.
    async fn session(&self, ctx: &Context<'_>) -> Option<SessionView> {
        hub(ctx).session_of_project(self.0.id).map(SessionView)
    }
    /// The caller's role (null when authentication is off).
    async fn my_role(&self, ctx: &Context<'_>) -> Option<RoleView> {
        super::access::project_role(ctx, self.0.id).map(RoleView::from)
    }
    /// Who may see and change the project. Empty while authentication is off,
    /// since then nobody is a member and everyone may do everything.
    async fn members(&self, ctx: &Context<'_>) -> Vec<MemberView> {
        hub(ctx)
            .members(self.0.id)
            .into_iter()
            .map(|(user, role)| MemberView {
                user_id: ID(user),
                role: role.into(),
            })
            .collect()
    }
}

impl From<Role> for RoleView {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => RoleView::Owner,
            Role::Editor => RoleView::Editor,
            Role::Viewer => RoleView::Viewer,
        }
    }
}

impl From<RoleView> for Role {
    fn from(role: RoleView) -> Self {
        match role {
            RoleView::Owner => Role::Owner,
            RoleView::Editor => Role::Editor,
            RoleView::Viewer => Role::Viewer,
        }
    }
}

/// A user's role on one project.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "Role")]
pub enum RoleView {
    /// Everything, sharing and delete.
    Owner,
    /// Read, subscribe, commands, undo/redo.
    Editor,
    /// Read and subscribe only.
    Viewer,
}

#[derive(SimpleObject)]
#[graphql(name = "Member")]
pub struct MemberView {
    pub user_id: ID,
    pub role: RoleView,
}

/// The authenticated caller.
#[derive(SimpleObject)]
#[graphql(name = "Viewer")]
pub struct ViewerView {
    pub user_id: ID,
    pub name: Option<String>,
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
    async fn active_clients(&self) -> Result<i32> {
        int(self.0.read().active_clients())
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
    async fn version(&self) -> Result<i32> {
        self.0
            .read()
            .project
            .as_ref()
            .map_or(Ok(0), |p| int(p.dispatcher.version()))
    }
    /// Seq of the newest event of this session (0 if none).
    async fn last_seq(&self) -> Result<i32> {
        int(self.0.read().last_seq)
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
    async fn node_count(&self) -> Result<i32> {
        self.0
            .read()
            .project
            .as_ref()
            .map_or(Ok(0), |p| int(p.dispatcher.graph().len()))
    }
    async fn graph(&self, ctx: &Context<'_>) -> Result<Option<GraphView>> {
        GraphView::admit(&self.0, ctx).await?;
        Ok(GraphView::capture(&self.0, &ctx.look_ahead()))
    }
}

/// A session's graph as one read of committed state: the version, the seq of
/// the last event it reflects and the nodes the selection asks for are taken
/// under one read guard, so `graph { seq nodes }` followed by
/// `sessionEvents(since: seq)` continues it exactly. Links of a node
/// (`parent`, `children`) resolve against the live graph.
pub struct GraphView {
    version: u64,
    seq: u64,
    node_count: usize,
    roots: Vec<NodeView>,
    nodes: Vec<NodeView>,
}

impl GraphView {
    /// Waits for an expensive permit first if the selection lists more than
    /// `EXPENSIVE_ITEMS` nodes (`nodes`, and `roots`).
    pub async fn admit(session: &Arc<Session>, ctx: &Context<'_>) -> Result<()> {
        let selection = ctx.look_ahead();
        let (nodes, roots) = (
            selection.field("nodes").exists(),
            selection.field("roots").exists(),
        );
        if !nodes && !roots {
            return Ok(());
        }
        let items = session.read().project.as_ref().map_or(0, |p| {
            let graph = p.dispatcher.graph();
            (if nodes { graph.len() } else { 0 }) + (if roots { graph.roots().len() } else { 0 })
        });
        super::expensive::admit_for(ctx, items)
            .await
            .map_err(super::error::gql)
    }

    /// The graph of `session` with what `selection` (the Graph field's) selects, or None without a project.
    ///
    /// Not charged to the `ItemBudget`: one listing is bounded by
    /// `--max-nodes-per-project`, and it is built once however often it is aliased.
    pub fn capture(
        session: &Arc<Session>,
        selection: &async_graphql::Lookahead<'_>,
    ) -> Option<GraphView> {
        let want_roots = selection.field("roots").exists();
        let want_nodes = selection.field("nodes").exists();
        let state = session.read();
        let project = state.project.as_ref()?;
        let graph = project.dispatcher.graph();
        let make = |n: &Node| NodeView::live(n, &project.template, session);
        let roots = if want_roots {
            graph
                .roots()
                .iter()
                .filter_map(|id| graph.get(id))
                .map(make)
                .collect()
        } else {
            Vec::new()
        };
        let nodes = if want_nodes {
            graph.preorder().map(make).collect()
        } else {
            Vec::new()
        };
        Some(GraphView {
            version: project.dispatcher.version(),
            seq: state.last_seq,
            node_count: graph.len(),
            roots,
            nodes,
        })
    }
}

#[Object(name = "Graph")]
impl GraphView {
    async fn version(&self) -> Result<i32> {
        int(self.version)
    }
    /// Seq of the last event this graph reflects; read with the nodes from committed state, so subscribing with since = seq continues it exactly.
    async fn seq(&self) -> Result<i32> {
        int(self.seq)
    }
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::ROOTS).saturating_add(1)"
    )]
    async fn roots(&self) -> &[NodeView] {
        &self.roots
    }
    /// All nodes, parents before children.
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::NODES).saturating_add(1)"
    )]
    async fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }
    async fn node_count(&self) -> Result<i32> {
        int(self.node_count)
    }
}

/// Nodes of `session` whose name contains `text` (case-insensitive) and/or whose type is `type_id`.
pub fn search(
    session: &Arc<Session>,
    text: Option<&str>,
    type_id: Option<&str>,
    limit: usize,
) -> Vec<NodeView> {
    let needle = text.map(str::to_lowercase);
    let state = session.read();
    let Some(project) = state.project.as_ref() else {
        return Vec::new();
    };
    project
        .dispatcher
        .graph()
        .preorder()
        .filter(|n| {
            needle
                .as_ref()
                .is_none_or(|t| n.name.to_lowercase().contains(t))
                && type_id.is_none_or(|ty| n.type_id == ty)
        })
        .take(limit)
        .map(|n| NodeView::live(n, &project.template, session))
        .collect()
}

/// A node of the live graph (links resolve against it).
pub struct NodeView {
    pub id: Uuid,
    pub type_id: Key,
    pub name: String,
    pub properties: Properties,
    pub parent: Option<Uuid>,
    pub children: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub template: Arc<Template>,
    pub session: Arc<Session>,
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
            template: template.clone(),
            session: session.clone(),
        }
    }

    fn lookup(&self, ids: &[Uuid]) -> Vec<NodeView> {
        let state = self.session.read();
        let Some(project) = state.project.as_ref() else {
            return Vec::new();
        };
        let graph = project.dispatcher.graph();
        ids.iter()
            .filter_map(|id| graph.get(id))
            .map(|n| NodeView::live(n, &project.template, &self.session))
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
            .node_type(&self.type_id)
            .map(|t| NodeTypeView::new(&self.template, t))
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
            .node_type(&self.type_id)
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
    async fn parent(&self, ctx: &Context<'_>) -> Result<Option<NodeView>> {
        charge(ctx, 1, "Node.parent").await?;
        Ok(self
            .lookup(&self.parent.into_iter().collect::<Vec<_>>())
            .pop())
    }
    /// Children in order.
    #[graphql(
        complexity = "child_complexity.saturating_mul(super::schema::expected::CHILDREN).saturating_add(1)"
    )]
    async fn children(&self, ctx: &Context<'_>) -> Result<Vec<NodeView>> {
        charge(ctx, self.children.len(), "Node.children").await?;
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
    async fn version(&self) -> Result<i32> {
        int(self.outcome.version)
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
pub async fn session(ctx: &Context<'_>, id: &ID) -> Result<Arc<Session>> {
    hub(ctx).session(uuid(id, "sessionId")?).await.gql()
}
