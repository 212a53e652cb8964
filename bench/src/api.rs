//! Typed helpers over the Talus Tally GraphQL API (built-in `project` template: project > workstream > task).

use anyhow::Context;
use bytes::Bytes;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::http::{data, n, s, Http};

/// The template every benchmark uses, and the text property updates write.
pub const TEMPLATE: &str = "project";
pub const WORKSTREAM: &str = "workstream";
pub const TASK: &str = "task";
pub const TEXT_PROP: &str = "notes";

/// A project open in a session, with one workstream to put tasks under.
#[derive(Debug, Clone)]
pub struct Project {
    pub session: String,
    pub root: String,
    pub workstream: String,
}

/// Creates a project (root node) with one workstream.
pub async fn create_project(http: &mut Http, name: &str) -> anyhow::Result<Project> {
    let v = http
        .gql(
            "mutation($t: ID!, $n: String!) { createProject(templateId: $t, name: $n) { id graph { roots { id } } } }",
            json!({"t": TEMPLATE, "n": name}),
        )
        .await
        .context("createProject failed")?;
    let session = s(&v, "/createProject/id")?;
    let root = s(&v, "/createProject/graph/roots/0/id")?;
    let workstream = create_node(http, &session, &root, WORKSTREAM).await?;
    Ok(Project {
        session,
        root,
        workstream,
    })
}

/// An empty session (no project).
pub async fn create_session(http: &mut Http) -> anyhow::Result<String> {
    let v = http
        .gql("mutation { createSession { id } }", json!({}))
        .await?;
    s(&v, "/createSession/id")
}

/// One createNode; returns the new node's id.
pub async fn create_node(
    http: &mut Http,
    session: &str,
    parent: &str,
    type_id: &str,
) -> anyhow::Result<String> {
    let v = http
        .gql(
            "mutation($s: ID!, $p: ID!, $t: ID!) { createNode(sessionId: $s, input: {parentId: $p, typeId: $t}) { nodeId } }",
            json!({"s": session, "p": parent, "t": type_id}),
        )
        .await
        .context("createNode failed")?;
    s(&v, "/createNode/nodeId")
}

/// The request body of one createNode, ready to send.
pub fn create_node_body(session: &str, parent: &str, type_id: &str) -> Bytes {
    let body = json!({
        "query": "mutation($s: ID!, $p: ID!, $t: ID!) { createNode(sessionId: $s, input: {parentId: $p, typeId: $t}) { version nodeId } }",
        "variables": {"s": session, "p": parent, "t": type_id},
    });
    Bytes::from(serde_json::to_vec(&body).expect("JSON"))
}

/// The request body of one updateProperty, ready to send.
pub fn update_body(session: &str, node: &str, property: &str, value: &Value) -> Bytes {
    let body = json!({
        "query": "mutation($s: ID!, $n: ID!, $p: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: $p, value: $v) { version } }",
        "variables": {"s": session, "n": node, "p": property, "v": value},
    });
    Bytes::from(serde_json::to_vec(&body).expect("JSON"))
}

/// Sends a prepared mutation body; Ok when the server answered without errors.
pub async fn send(http: &mut Http, body: Bytes) -> anyhow::Result<Value> {
    let bytes = http.post(body).await?;
    data(&bytes)
}

/// Creates `parents.len()` x ... nodes: one executeBatch of createNode commands, the i-th under
/// `parents[i % parents.len()]`, with client-chosen ids, which it returns.
pub async fn create_batch(
    http: &mut Http,
    session: &str,
    parents: &[String],
    type_id: &str,
    count: usize,
    properties: Option<&Value>,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    let commands: Vec<Value> = (0..count)
        .map(|i| {
            let id = Uuid::new_v4().to_string();
            ids.push(id.clone());
            let mut input =
                json!({"parentId": parents[i % parents.len()], "typeId": type_id, "id": id});
            if let Some(p) = properties {
                input["properties"] = p.clone();
            }
            json!({"createNode": input})
        })
        .collect();
    http.gql(
        "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }",
        json!({"s": session, "c": commands}),
    )
    .await
    .context("executeBatch of createNode failed")?;
    Ok(ids)
}

/// A project's graph of about `nodes` nodes, built with executeBatch.
pub struct Built {
    pub project: Project,
    pub workstreams: Vec<String>,
    pub tasks: Vec<String>,
}

/// Creates a project of `nodes` nodes: the root, one workstream per 1,000
/// nodes and tasks spread evenly over the workstreams, `batch` per request.
pub async fn build_graph(
    http: &mut Http,
    name: &str,
    nodes: usize,
    batch: usize,
) -> anyhow::Result<Built> {
    let project = create_project(http, name).await?;
    // Root and the first workstream exist; the rest: more workstreams, then tasks.
    let want_ws = nodes.div_ceil(1000).max(1);
    let mut workstreams = vec![project.workstream.clone()];
    if want_ws > 1 {
        workstreams.extend(
            create_batch(
                http,
                &project.session,
                std::slice::from_ref(&project.root),
                WORKSTREAM,
                want_ws - 1,
                None,
            )
            .await?,
        );
    }
    let mut tasks: Vec<String> = Vec::new();
    let mut remaining = nodes.saturating_sub(1 + workstreams.len());
    while remaining > 0 {
        let count = remaining.min(batch.max(1));
        // Rotate the parents so tasks spread evenly over the workstreams.
        let offset = tasks.len() % workstreams.len();
        let parents: Vec<String> = workstreams[offset..]
            .iter()
            .chain(&workstreams[..offset])
            .cloned()
            .collect();
        tasks.extend(create_batch(http, &project.session, &parents, TASK, count, None).await?);
        remaining -= count;
    }
    if tasks.is_empty() {
        tasks.push(create_node(http, &project.session, &project.workstream, TASK).await?);
    }
    Ok(Built {
        project,
        workstreams,
        tasks,
    })
}

/// The session's newest event seq.
pub async fn last_seq(http: &mut Http, session: &str) -> anyhow::Result<u64> {
    let v = http
        .gql(
            "query($s: ID!) { session(id: $s) { lastSeq } }",
            json!({"s": session}),
        )
        .await?;
    n(&v, "/session/lastSeq")
}

/// The session's node count.
pub async fn node_count(http: &mut Http, session: &str) -> anyhow::Result<u64> {
    let v = http
        .gql(
            "query($s: ID!) { graph(sessionId: $s) { nodeCount } }",
            json!({"s": session}),
        )
        .await?;
    n(&v, "/graph/nodeCount")
}
