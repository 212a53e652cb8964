//! The schema's roots: thin resolvers that parse input, call the hub or a session, and wrap results in views.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, Json, Object, Schema, Subscription, ID};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::Value;

use super::access::{self, AccessPolicy};
use super::error::{code, count, gql, int, uuid, OrGql, Result};
use super::events::SessionEventView;
use super::expensive::ExpensiveLimiter;
use super::extension::{charge, Pipeline};
use super::inputs::{check_name, check_sizes, CommandInput, CreateNodeInput};
use super::types::{
    hub, search, CleanupResultView, CommandResultView, GraphView, NodeView, ProjectView, RoleView,
    SessionView, TemplateErrorView, TemplateView, ViewerView,
};
use super::{ConnClient, RenderOne};
use crate::domain::{project_file, Command, ErrorCode, Role};
use crate::session::{ClientInfo, Hub, Outcome, Session};

pub type AppSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// Limits that protect the server from expensive requests; each is a flag of
/// the same name (README's configuration table). A request over one is
/// refused with LIMIT_EXCEEDED before the work it asks for is done.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Deepest nesting of selections (fields, and spreads while expanding fragments).
    pub max_depth: usize,
    /// Most complex query; list fields multiply by their expected length.
    pub max_complexity: usize,
    pub max_subscriptions_per_connection: usize,
    /// Longest query text, in bytes.
    pub max_document_bytes: usize,
    /// Most fields in a document once its fragments are expanded.
    pub max_fields: usize,
    /// Most aliased fields in a document once its fragments are expanded.
    pub max_aliases: usize,
    /// Most fragment spreads in a document once its fragments are expanded.
    pub max_fragment_spreads: usize,
    /// Most `__schema`/`__type` fields in a document (each answers with much of the schema).
    pub max_introspection_fields: usize,
    /// Most nodes reached through links (`parent`, `children`), search results,
    /// projects and sessions one response may hold.
    pub max_result_items: usize,
    /// Longest node or project name, in bytes.
    pub max_name_bytes: usize,
    /// Longest property value (as JSON), in bytes.
    pub max_value_bytes: usize,
    /// Distinct operation names kept as metric labels (the rest count as `other`).
    pub max_metric_operation_names: usize,
    /// Documents the Automatic Persisted Queries cache keeps (least recently used go first).
    pub apq_cache_entries: usize,
    /// Longest query text the APQ cache keeps; longer ones run but are not remembered.
    pub apq_max_query_bytes: usize,
    /// Expensive requests (`api::expensive`) running at once.
    pub max_expensive_requests: usize,
    /// Expensive requests waiting for a permit; one more is refused.
    pub max_expensive_queue: usize,
}

/// `--max-expensive-requests` by default: one core fewer than the machine
/// has, so ordinary requests always find a free worker (at least one).
pub fn default_expensive_requests() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_depth: 32,
            max_complexity: 100_000,
            max_subscriptions_per_connection: 100,
            max_document_bytes: 128 * 1024,
            max_fields: 2_000,
            max_aliases: 100,
            max_fragment_spreads: 500,
            max_introspection_fields: 4,
            max_result_items: 20_000,
            max_name_bytes: 1024,
            max_value_bytes: 64 * 1024,
            max_metric_operation_names: 256,
            apq_cache_entries: 1000,
            apq_max_query_bytes: 16 * 1024,
            max_expensive_requests: default_expensive_requests(),
            max_expensive_queue: 64,
        }
    }
}

/// Expected lengths of list fields, for the complexity limit (`#[graphql(complexity)]`):
/// what a large but ordinary project has, not the worst case (that is what
/// `max_result_items` bounds when the list is built).
pub(crate) mod expected {
    pub const NODES: usize = 1_000;
    pub const CHILDREN: usize = 10;
    pub const ROOTS: usize = 10;
    pub const TEMPLATES: usize = 10;
    pub const NODE_TYPES: usize = 10;
    pub const PROPERTIES: usize = 10;
    pub const OPTIONS: usize = 5;
    pub const SESSIONS: usize = 100;
    pub const PROJECTS: usize = 100;
    pub const CLIENTS: usize = 10;
    pub const EVENTS: usize = 10;
}

/// Builds the schema around a hub, with authentication off.
pub fn build(hub: Arc<Hub>, limits: &ApiLimits) -> AppSchema {
    build_with_access(hub, limits, AccessPolicy::default())
}

/// Builds the schema around a hub with an access policy (authentication, rate limit).
pub fn build_with_access(hub: Arc<Hub>, limits: &ApiLimits, access: AccessPolicy) -> AppSchema {
    let expensive = Arc::new(ExpensiveLimiter::new(
        limits.max_expensive_requests,
        limits.max_expensive_queue,
    ));
    Schema::build(Query, Mutation, SubscriptionRoot)
        .data(hub)
        .data(access)
        .data(limits.clone())
        // The HTTP transport takes permits for big bodies from the same limiter.
        .data(expensive)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .extension(Pipeline::new(limits.clone()))
        .finish()
}

fn version(v: Option<i32>) -> Result<Option<u64>> {
    v.map(|v| count(v, "expectedVersion")).transpose()
}

fn result(outcome: Outcome, session: Arc<Session>) -> CommandResultView {
    CommandResultView { outcome, session }
}

pub struct Query;

#[Object]
impl Query {
    /// Every template the server can use: built-in ones and those in the templates directory.
    #[graphql(
        complexity = "child_complexity.saturating_mul(expected::TEMPLATES).saturating_add(1)"
    )]
    async fn templates(&self, ctx: &Context<'_>) -> Vec<TemplateView> {
        hub(ctx)
            .templates()
            .list()
            .into_iter()
            .map(TemplateView)
            .collect()
    }

    /// One template with its full schema, or null if unknown.
    async fn template(&self, ctx: &Context<'_>, id: ID) -> Option<TemplateView> {
        hub(ctx).templates().get(&id).map(TemplateView)
    }

    /// Templates that failed to load, with the reason (a broken file never stops the server).
    async fn template_errors(&self, ctx: &Context<'_>) -> Vec<TemplateErrorView> {
        hub(ctx)
            .templates()
            .errors()
            .iter()
            .map(|e| TemplateErrorView {
                file: e.file.clone(),
                message: e.message.clone(),
            })
            .collect()
    }

    #[graphql(complexity = "child_complexity.saturating_mul(expected::SESSIONS).saturating_add(1)")]
    async fn sessions(&self, ctx: &Context<'_>) -> Result<Vec<SessionView>> {
        let who = access::who(ctx)?;
        let hub = hub(ctx);
        // In a cluster, the sessions live on other instances too: those whose
        // project the caller is a member of, loaded here as on any first use.
        let (mut sessions, elsewhere) = hub
            .sessions_everywhere(|project| match (&who, project) {
                (access::Who::Anyone, _) => true,
                (access::Who::User(u), Some(p)) => hub.role(p, &u.id).is_some(),
                // An empty session's owner is known only where it lives.
                (access::Who::User(_), None) => false,
            })
            .await
            .map_err(gql)?;
        sessions.retain(|s| access::can_see_session(ctx, s));
        charge(ctx, sessions.len() + elsewhere.len(), "sessions").await?;
        for id in elsewhere {
            match hub.session_quietly(id).await {
                Ok(s) => sessions.push(s),
                // Closed since the list was read.
                Err(e) if e.code == ErrorCode::SessionNotFound => {}
                Err(e) => return Err(gql(e)),
            }
        }
        crate::session::oldest_first(&mut sessions);
        Ok(sessions.into_iter().map(SessionView).collect())
    }

    /// A session, or null if there is none with that id.
    async fn session(&self, ctx: &Context<'_>, id: ID) -> Result<Option<SessionView>> {
        access::who(ctx)?;
        let id = uuid(&id, "id")?;
        // In a shared store a session not live here is loaded on first use.
        let s = match hub(ctx).session(id).await {
            Ok(s) => s,
            Err(e) if e.code == ErrorCode::SessionNotFound => return Ok(None),
            Err(e) => return Err(gql(e)),
        };
        Ok(access::can_see_session(ctx, &s).then(|| SessionView(s)))
    }

    /// The authenticated caller (null when authentication is off).
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<ViewerView>> {
        Ok(access::user(ctx)?.map(|u| ViewerView {
            user_id: ID(u.id.clone()),
            name: u.name.clone(),
        }))
    }

    /// Projects kept by the server's store (with authentication on: those the caller is a member of).
    #[graphql(complexity = "child_complexity.saturating_mul(expected::PROJECTS).saturating_add(1)")]
    async fn projects(&self, ctx: &Context<'_>) -> Result<Vec<ProjectView>> {
        access::who(ctx)?;
        let mut projects = hub(ctx).projects();
        projects.retain(|p| access::can_see_project(ctx, p.id));
        charge(ctx, projects.len(), "projects").await?;
        Ok(projects.into_iter().map(ProjectView).collect())
    }

    async fn project(&self, ctx: &Context<'_>, id: ID) -> Result<Option<ProjectView>> {
        access::who(ctx)?;
        let id = uuid(&id, "id")?;
        Ok(hub(ctx)
            .project(id)
            .filter(|p| access::can_see_project(ctx, p.id))
            .map(ProjectView))
    }

    /// The live graph of a session. Errors with SESSION_NOT_FOUND or NO_PROJECT.
    async fn graph(&self, ctx: &Context<'_>, session_id: ID) -> Result<GraphView> {
        let s = access::session(ctx, &session_id, Role::Viewer).await?;
        s.read().project().gql()?;
        GraphView::admit(&s, ctx).await?;
        GraphView::capture(&s, &ctx.look_ahead()).ok_or_else(|| {
            code(
                ErrorCode::NoProject,
                "the session's project was closed while reading it",
            )
        })
    }

    async fn node(&self, ctx: &Context<'_>, session_id: ID, id: ID) -> Result<Option<NodeView>> {
        let s = access::session(ctx, &session_id, Role::Viewer).await?;
        let id = uuid(&id, "id")?;
        let state = s.read();
        let project = state.project().gql()?;
        Ok(project
            .dispatcher
            .graph()
            .get(&id)
            .map(|n| NodeView::live(n, &project.template, &s)))
    }

    /// Nodes whose name (case-insensitive substring) and/or type match; both filters optional.
    #[graphql(
        complexity = "child_complexity.saturating_mul(limit.unwrap_or(100).max(0) as usize).saturating_add(1)"
    )]
    async fn search_nodes(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        text: Option<String>,
        type_id: Option<ID>,
        #[graphql(default = 100)] limit: Option<i32>,
    ) -> Result<Vec<NodeView>> {
        let limit = limit.unwrap_or(100);
        let s = access::session(ctx, &session_id, Role::Viewer).await?;
        let nodes = s.read().project().gql()?.dispatcher.graph().len();
        let limit = count(limit, "limit")? as usize;
        charge(ctx, limit.min(nodes), "searchNodes").await?;
        Ok(search(
            &s,
            text.as_deref(),
            type_id.as_ref().map(|t| t.as_str()),
            limit,
        ))
    }

    /// The session's project as a Talus Tally project file (format version 1.0).
    async fn export_project(&self, ctx: &Context<'_>, session_id: ID) -> Result<Json<Value>> {
        let s = access::session(ctx, &session_id, Role::Viewer).await?;
        // A copy under the lock, the file built off it on a blocking thread:
        // the session's writer waits for the copy only.
        let (graph, template_id, name) = {
            let state = s.read();
            let project = state.project().gql()?;
            (
                project.dispatcher.graph().clone(),
                project.record.template_id.clone(),
                project.record.name.clone(),
            )
        };
        let file = tokio::task::spawn_blocking(move || {
            project_file::export_named(&graph, &template_id, Some(&name))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "exporting a project failed");
            code(ErrorCode::Internal, "the export failed; see the server log")
        })?;
        Ok(Json(file))
    }
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// An empty session (no project yet).
    async fn create_session(&self, ctx: &Context<'_>) -> Result<SessionView> {
        let owner = access::user(ctx)?.map(|u| u.id.as_str());
        Ok(SessionView(hub(ctx).create_session(owner).await.gql()?))
    }

    /// A new project from a template, opened in a new session with its root node.
    async fn create_project(
        &self,
        ctx: &Context<'_>,
        template_id: ID,
        name: String,
    ) -> Result<SessionView> {
        let owner = access::user(ctx)?.map(|u| u.id.as_str());
        check_name(&name, "the project name", ctx.data_unchecked::<ApiLimits>())?;
        Ok(SessionView(
            hub(ctx)
                .create_project(&template_id, &name, owner)
                .await
                .gql()?,
        ))
    }

    /// Open a stored project; if a live session already has it open, that session is returned.
    async fn open_project(&self, ctx: &Context<'_>, project_id: ID) -> Result<SessionView> {
        let id = uuid(&project_id, "projectId")?;
        // Anonymous callers (authentication off) may open any project, and the
        // store decides whether it exists: in a cluster it may have been
        // created on another instance, not yet in this one's index.
        if access::user(ctx)?.is_some() {
            access::project(ctx, id, Role::Viewer, "opening a project")?;
        }
        Ok(SessionView(hub(ctx).open_project(id).await.gql()?))
    }

    /// Import a Talus Tally project file (1.0 `nodes` map, or the later `graph.nodes` list) as a new project.
    async fn import_project(
        &self,
        ctx: &Context<'_>,
        file: Json<Value>,
        template_id: Option<ID>,
        name: Option<String>,
    ) -> Result<SessionView> {
        let api_limits = ctx.data_unchecked::<ApiLimits>();
        let owner = access::user(ctx)?.map(|u| u.id.as_str());
        if let Some(name) = &name {
            check_name(name, "the project name", api_limits)?;
        }
        // A file is held to the limits of the commands that could build it.
        let limits = project_file::ImportLimits {
            max_nodes: hub(ctx).config().command_limits.max_nodes_per_project,
            max_name_bytes: api_limits.max_name_bytes,
            max_value_bytes: api_limits.max_value_bytes,
        };
        let (session, imported) = hub(ctx)
            .import_project(
                &file.0,
                template_id.as_ref().map(|t| t.as_str()),
                name.as_deref(),
                &limits,
                owner,
            )
            .await
            .gql()?;
        if !imported.orphaned.is_empty() || !imported.warnings.is_empty() {
            tracing::info!(
                session = %session.id,
                orphaned = imported.orphaned.len(),
                warnings = imported.warnings.len(),
                "imported a project with values the template does not define"
            );
        }
        Ok(SessionView(session))
    }

    async fn delete_project(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let id = uuid(&id, "id")?;
        access::project(ctx, id, Role::Owner, "deleting a project")?;
        hub(ctx).delete_project(id).await.gql()
    }

    /// OWNER only. Gives userId that role on the project (replacing any role it had).
    async fn grant_access(
        &self,
        ctx: &Context<'_>,
        project_id: ID,
        user_id: ID,
        role: RoleView,
    ) -> Result<ProjectView> {
        let (id, _) = sharing(ctx, &project_id)?;
        let user_id = member_id(&user_id)?;
        hub(ctx).grant(id, &user_id, role.into()).await.gql()?;
        shared(ctx, id)
    }

    /// OWNER only. The last owner cannot be removed.
    async fn revoke_access(
        &self,
        ctx: &Context<'_>,
        project_id: ID,
        user_id: ID,
    ) -> Result<ProjectView> {
        let (id, _) = sharing(ctx, &project_id)?;
        let user_id = member_id(&user_id)?;
        hub(ctx).revoke(id, &user_id).await.gql()?;
        shared(ctx, id)
    }

    async fn close_session(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let id = uuid(&id, "id")?;
        let s = access::session_by_id(ctx, id, Role::Editor).await?;
        hub(ctx).close_session(s.id).await.gql()
    }

    /// Close sessions with no active client idle for longer than this. Nothing stored is lost.
    async fn cleanup_sessions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 24.0)] max_inactive_hours: Option<f64>,
    ) -> Result<CleanupResultView> {
        let max_inactive_hours = max_inactive_hours.unwrap_or(24.0);
        if !max_inactive_hours.is_finite() || max_inactive_hours < 0.0 {
            return Err(code(
                ErrorCode::BadUserInput,
                format!("maxInactiveHours must be a finite number of hours, 0 or more, got {max_inactive_hours}"),
            ));
        }
        let idle = Duration::from_secs_f64((max_inactive_hours * 3600.0).min(1e12));
        // With authentication on, a caller cleans up only sessions it owns.
        let r = match access::user(ctx)? {
            None => hub(ctx).cleanup(idle).await.gql()?,
            Some(u) => {
                let hub = hub(ctx);
                hub.cleanup_matching(idle, |s| hub.session_role(s, &u.id) == Some(Role::Owner))
                    .await
                    .gql()?
            }
        };
        Ok(CleanupResultView {
            sessions_removed: int(r.sessions_removed)?,
            active_sessions: int(r.active_sessions)?,
        })
    }

    /// Run one command through the session's dispatcher. With expectedVersion, fails with VERSION_CONFLICT if the graph moved on.
    async fn execute(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        command: CommandInput,
        expected_version: Option<i32>,
    ) -> Result<CommandResultView> {
        access::who(ctx)?;
        let command = command.into_command()?;
        run(ctx, &session_id, command, version(expected_version)?).await
    }

    /// Run several commands atomically: all apply or none; one undo step.
    async fn execute_batch(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        commands: Vec<CommandInput>,
        expected_version: Option<i32>,
    ) -> Result<CommandResultView> {
        access::who(ctx)?;
        // Also checked by the domain; refused here before the inputs are converted or queued.
        let max = hub(ctx).config().command_limits.max_batch_commands;
        if commands.len() > max {
            return Err(code(
                ErrorCode::LimitExceeded,
                format!(
                    "a batch of {} commands is too long (the limit max-batch-commands is {max})",
                    commands.len()
                ),
            ));
        }
        let commands = commands
            .into_iter()
            .map(CommandInput::into_command)
            .collect::<Result<Vec<_>>>()?;
        run(
            ctx,
            &session_id,
            Command::Batch { commands },
            version(expected_version)?,
        )
        .await
    }

    /// Errors with NOTHING_TO_UNDO when the undo stack is empty.
    async fn undo(&self, ctx: &Context<'_>, session_id: ID) -> Result<CommandResultView> {
        let s = access::session(ctx, &session_id, Role::Editor).await?;
        access::rate(ctx)?;
        let outcome = s.undo(access::actor(ctx)?).await.gql()?;
        Ok(result(outcome, s))
    }

    /// Errors with NOTHING_TO_REDO when the redo stack is empty.
    async fn redo(&self, ctx: &Context<'_>, session_id: ID) -> Result<CommandResultView> {
        let s = access::session(ctx, &session_id, Role::Editor).await?;
        access::rate(ctx)?;
        let outcome = s.redo(access::actor(ctx)?).await.gql()?;
        Ok(result(outcome, s))
    }

    /// Shorthand for execute(command: {createNode: ...}).
    async fn create_node(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        input: CreateNodeInput,
    ) -> Result<CommandResultView> {
        run(ctx, &session_id, input.into_command()?, None).await
    }

    /// Shorthand for execute(command: {deleteNode: ...}).
    async fn delete_node(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        node_id: ID,
    ) -> Result<CommandResultView> {
        let command = Command::DeleteNode {
            node_id: uuid(&node_id, "nodeId")?,
        };
        run(ctx, &session_id, command, None).await
    }

    /// Shorthand for execute(command: {updateProperty: ...}); value null clears the property.
    async fn update_property(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        node_id: ID,
        property_id: ID,
        value: Option<Json<Value>>,
    ) -> Result<CommandResultView> {
        let command = Command::UpdateProperty {
            node_id: uuid(&node_id, "nodeId")?,
            property_id: property_id.0,
            value: value.map_or(Value::Null, |j| j.0),
        };
        run(ctx, &session_id, command, None).await
    }

    /// Shorthand for execute(command: {moveNode: ...}).
    async fn move_node(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        node_id: ID,
        new_parent_id: ID,
        index: Option<i32>,
    ) -> Result<CommandResultView> {
        let command = Command::MoveNode {
            node_id: uuid(&node_id, "nodeId")?,
            new_parent_id: uuid(&new_parent_id, "newParentId")?,
            index: index.map(super::error::index).transpose()?,
        };
        run(ctx, &session_id, command, None).await
    }
}

/// The project to share, if the caller is its OWNER. Sharing needs users:
/// with authentication off, every caller is anonymous and may already do
/// everything, so there is no one to grant a role to.
fn sharing(ctx: &Context<'_>, project_id: &ID) -> Result<(uuid::Uuid, ProjectView)> {
    let id = uuid(project_id, "projectId")?;
    let record = access::project(ctx, id, Role::Owner, "sharing a project")?;
    if access::user(ctx)?.is_none() {
        return Err(code(
            ErrorCode::BadUserInput,
            "sharing needs authentication, which is off on this server: everyone may already do everything",
        ));
    }
    Ok((id, ProjectView(record)))
}

/// A userId argument: the `sub` of someone's token, 1 to 200 bytes.
fn member_id(id: &ID) -> Result<String> {
    let id = id.trim();
    if id.is_empty() || id.len() > 200 {
        return Err(code(
            ErrorCode::BadUserInput,
            "userId must be a user id (a token's sub) of 1 to 200 bytes",
        ));
    }
    Ok(id.to_string())
}

/// The project after a sharing change, as its owner sees it.
fn shared(ctx: &Context<'_>, id: uuid::Uuid) -> Result<ProjectView> {
    hub(ctx).project(id).map(ProjectView).ok_or_else(|| {
        code(
            ErrorCode::ProjectNotFound,
            format!("there is no project {id}"),
        )
    })
}

async fn run(
    ctx: &Context<'_>,
    session_id: &ID,
    command: Command,
    expected: Option<u64>,
) -> Result<CommandResultView> {
    access::who(ctx)?;
    check_sizes(&command, ctx.data_unchecked::<ApiLimits>())?;
    let s = access::session(ctx, session_id, Role::Editor).await?;
    access::rate(ctx)?;
    let outcome = s
        .execute(command, expected, access::actor(ctx)?)
        .await
        .map_err(gql)?;
    Ok(result(outcome, s))
}

/// Releases a connection's subscription slot when the stream ends.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Every event of one session, in order. With `since`, first every stored event
    /// with seq > since (oldest first), then live ones: no gap, no duplicate.
    /// Subscribing makes the connection an active client of the session.
    async fn session_events(
        &self,
        ctx: &Context<'_>,
        session_id: ID,
        since: Option<i32>,
    ) -> Result<BoxStream<'static, Result<SessionEventView>>> {
        let id = uuid(&session_id, "sessionId")?;
        let mut since = since.map(|s| count(s, "since")).transpose()?;
        if let Some(resume) = ctx.data_opt::<super::ResumeFrom>() {
            since = Some(resume.0);
        }
        let hub = hub(ctx).clone();
        if let Some(one) = ctx.data_opt::<RenderOne>() {
            // Rendering one recorded event for the websocket transport: no subscription, no presence.
            // The transport's first (probing) render checks access; the
            // subscription it then opens watches for a revocation itself.
            let s = if one.probe.is_some() {
                access::session_by_id(ctx, id, Role::Viewer).await?
            } else {
                hub.find_session(id).ok_or_else(|| {
                    code(
                        ErrorCode::SessionNotFound,
                        format!("there is no session {id}; it may have been closed"),
                    )
                })?
            };
            if let Some(probe) = &one.probe {
                *probe.lock() = Some((id, since));
            }
            let template = s.read().project.as_ref().map(|p| p.template.clone());
            let view = SessionEventView::from_event(one.event.clone(), template);
            return Ok(futures_util::stream::once(async move { Ok(view) }).boxed());
        }
        let user = access::user(ctx)?;
        let s = access::session_by_id(ctx, id, Role::Viewer).await?;
        let (client, slot) = match ctx.data_opt::<ConnClient>() {
            Some(c) => {
                let limit = ctx
                    .data_unchecked::<super::ApiLimits>()
                    .max_subscriptions_per_connection;
                let open = c.subscriptions.fetch_add(1, Ordering::Relaxed);
                let slot = Slot(c.subscriptions.clone());
                if open >= limit {
                    return Err(code(
                        ErrorCode::LimitExceeded,
                        format!("this connection already has {open} subscriptions (the limit is {limit})"),
                    ));
                }
                let info = ClientInfo {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    connected_at: c.connected_at,
                    user_id: user.map(|u| u.id.clone()),
                };
                (Some(info), Some(slot))
            }
            None => (None, None),
        };
        let template = s.read().project.as_ref().map(|p| p.template.clone());
        let events = hub.subscribe(id, since, client).await.gql()?;
        let probe = ctx.data_opt::<super::SeqProbe>().map(|p| p.0.clone());
        let active = crate::metrics::GaugeGuard::new(crate::metrics::names::SUBSCRIPTIONS);
        // Looked up once per subscription, not once per delivered event.
        let delivered = metrics::counter!(crate::metrics::names::EVENTS_DELIVERED);
        let events = events.map(move |e| {
            let _slot = &slot;
            let _active = &active;
            delivered.increment(1);
            if let Some(probe) = &probe {
                probe.store(e.seq, Ordering::Release);
            }
            SessionEventView::from_event(e, template.clone())
        });
        let Some(user) = user else {
            return Ok(events.map(Ok).boxed());
        };
        // A member removed from the project (or the project deleted) stops
        // receiving at once: the stream ends with FORBIDDEN.
        let lost = hub.access_lost(&s, user.id.clone());
        Ok(async_stream::stream! {
            let mut events = std::pin::pin!(events);
            let mut lost = std::pin::pin!(lost);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut lost => {
                        yield Err(access::revoked());
                        break;
                    }
                    event = events.next() => match event {
                        Some(view) => yield Ok(view),
                        None => break,
                    },
                }
            }
        }
        .boxed())
    }
}
