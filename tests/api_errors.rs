//! Every error code the API layer can produce, each with its `extensions.code`, a useful message, and proof that nothing changed.

mod common;

use common::{code_of, first_error, random_id, str_of, App, Http};
use serde_json::{json, Value};
use talus_tally::store::faulty::FaultyStore;
use talus_tally::store::{SqliteOptions, SqliteStore};

/// A restomod project with one node of each type along one path.
struct Tree {
    session: String,
    root: String,
    phase: String,
    job: String,
    task: String,
    part: String,
}

async fn restomod_tree(http: &Http) -> Tree {
    let (session, root) = http.create_project("restomod", "Chevelle").await;
    let phase = http
        .create_node(&session, Some(&root), "phase", "Body")
        .await;
    let job = http
        .create_node(&session, Some(&phase), "job", "Paint")
        .await;
    let task = http.create_node(&session, Some(&job), "task", "Sand").await;
    let part = http
        .create_node(&session, Some(&task), "part", "Sandpaper")
        .await;
    Tree {
        session,
        root,
        phase,
        job,
        task,
        part,
    }
}

/// Everything a failed request must leave as it was: the graph, undo/redo and the projects.
async fn state(http: &Http, session: &str) -> Value {
    let s = http.session(session).await;
    json!({
        "graph": http.graph(session).await,
        "canUndo": s["canUndo"],
        "canRedo": s["canRedo"],
        "projects": http.projects().await.len(),
    })
}

/// Runs `query`, asserts it fails with `code` and changes nothing in `session`; the error.
async fn refused(app: &App, session: &str, code: &str, query: &str, variables: Value) -> Value {
    let before = state(app, session).await;
    let error = app.error(query, variables).await;
    assert_eq!(code_of(&error), code, "{error:#}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.len() > 10),
        "a message a person can act on: {error}"
    );
    assert_eq!(
        state(app, session).await,
        before,
        "nothing changed after {code}"
    );
    error
}

const CREATE: &str =
    "mutation($s: ID!, $i: CreateNodeInput!) { createNode(sessionId: $s, input: $i) { version } }";
const EXECUTE: &str =
    "mutation($s: ID!, $c: CommandInput!, $v: Int) { execute(sessionId: $s, command: $c, expectedVersion: $v) { version } }";
const UPDATE: &str = "mutation($s: ID!, $n: ID!, $p: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: $p, value: $v) { version } }";

#[tokio::test]
async fn a_malformed_uuid_is_bad_user_input_naming_the_argument() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let error = refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        UPDATE,
        json!({ "s": t.session, "n": "not-a-uuid", "p": "vin", "v": "X" }),
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("nodeId"),
        "{error}"
    );
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        "{ session(id: \"42\") { id } }",
        json!({}),
    )
    .await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": t.root, "typeId": "phase", "id": "my-own-id" } }),
    )
    .await;
}

#[tokio::test]
async fn properties_that_are_not_a_json_object_are_bad_user_input() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    for properties in [json!([1, 2]), json!("vin=1"), json!(7)] {
        refused(
            &app,
            &t.session,
            "BAD_USER_INPUT",
            CREATE,
            json!({ "s": t.session, "i": { "parentId": t.root, "typeId": "phase", "properties": properties } }),
        )
        .await;
    }
}

#[tokio::test]
async fn a_command_input_with_two_fields_or_none_is_bad_user_input() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let two = json!({ "deleteNode": { "nodeId": t.part }, "renameNode": { "nodeId": t.task, "name": "Both" } });
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        EXECUTE,
        json!({ "s": t.session, "c": two }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        EXECUTE,
        json!({ "s": t.session, "c": {} }),
    )
    .await;
    // The same, written inline in the document.
    let inline = format!(
        "mutation {{ execute(sessionId: \"{}\", command: {{ deleteNode: {{ nodeId: \"{}\" }}, renameNode: {{ nodeId: \"{}\", name: \"x\" }} }}) {{ version }} }}",
        t.session, t.part, t.task
    );
    refused(&app, &t.session, "BAD_USER_INPUT", &inline, json!({})).await;
}

#[tokio::test]
async fn unknown_fields_parse_errors_wrong_variable_types_and_bodies_that_are_not_graphql_are_bad_user_input(
) {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        "{ sessions { id colour } }",
        json!({}),
    )
    .await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        "{ sessions { id ",
        json!({}),
    )
    .await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        "mutation($s: ID!) { undo(sessionId: $s, force: true) { version } }",
        json!({ "s": t.session }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        "mutation($s: ID!, $i: Int) { moveNode(sessionId: $s, nodeId: $s, newParentId: $s, index: $i) { version } }",
        json!({ "s": t.session, "i": "first" }),
    )
    .await;

    let (status, body) = app.post_body("this is not json").await;
    assert_eq!(status, 400);
    assert_eq!(code_of(&first_error(&body)), "BAD_USER_INPUT");
    let (_, body) = app.post_body(r#"{"variables": {}}"#).await;
    assert_eq!(code_of(&first_error(&body)), "BAD_USER_INPUT");
}

/// The server validates a document once and reuses the result; a document that
/// ran before must still refuse variables of the wrong type, changing nothing.
#[tokio::test]
async fn a_document_that_ran_before_still_refuses_variables_of_the_wrong_type() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let move_node = "mutation($s: ID!, $n: ID!, $p: ID!, $i: Int) { moveNode(sessionId: $s, nodeId: $n, newParentId: $p, index: $i) { version } }";
    for _ in 0..2 {
        app.query(
            move_node,
            json!({ "s": t.session, "n": t.part, "p": t.task, "i": 0 }),
        )
        .await;
        app.query(
            UPDATE,
            json!({ "s": t.session, "n": t.part, "p": "quantity", "v": 2 }),
        )
        .await;
    }
    let wrong = [
        json!({ "s": t.session, "n": t.part, "p": t.task, "i": "first" }),
        json!({ "s": t.session, "n": t.part, "p": t.task, "i": 1.5 }),
        json!({ "s": t.session, "n": null, "p": t.task, "i": 0 }),
        json!({ "s": t.session, "p": t.task, "i": 0 }),
        json!({ "s": t.session, "n": "not-a-uuid", "p": t.task }),
        json!({ "s": [t.session], "n": t.part, "p": t.task }),
    ];
    for variables in wrong {
        refused(&app, &t.session, "BAD_USER_INPUT", move_node, variables).await;
    }
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        UPDATE,
        json!({ "s": t.session, "n": t.part, "p": { "id": "quantity" }, "v": 3 }),
    )
    .await;
    // And the document still works with good variables.
    app.query(
        UPDATE,
        json!({ "s": t.session, "n": t.part, "p": "quantity", "v": 4 }),
    )
    .await;
    let graph = app.graph(&t.session).await;
    assert!(graph.to_string().contains("\"quantity\":4"), "{graph}");
}

#[tokio::test]
async fn an_unknown_session_is_session_not_found_and_session_returns_null_for_it() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let unknown = random_id();
    let data = app
        .query(
            "query($s: ID!) { session(id: $s) { id } }",
            json!({ "s": unknown }),
        )
        .await;
    assert_eq!(data["session"], Value::Null);
    for (query, variables) in [
        (
            "query($s: ID!) { graph(sessionId: $s) { version } }",
            json!({ "s": unknown }),
        ),
        (
            "query($s: ID!) { exportProject(sessionId: $s) }",
            json!({ "s": unknown }),
        ),
        (
            "mutation($s: ID!) { undo(sessionId: $s) { version } }",
            json!({ "s": unknown }),
        ),
        (
            UPDATE,
            json!({ "s": unknown, "n": t.root, "p": "vin", "v": "X" }),
        ),
        (
            EXECUTE,
            json!({ "s": unknown, "c": { "deleteNode": { "nodeId": t.part } } }),
        ),
        (
            "mutation($s: ID!) { closeSession(id: $s) }",
            json!({ "s": unknown }),
        ),
    ] {
        let error = refused(&app, &t.session, "SESSION_NOT_FOUND", query, variables).await;
        assert!(
            error["message"].as_str().unwrap().contains(&unknown),
            "{error}"
        );
    }
}

#[tokio::test]
async fn commands_in_a_session_without_a_project_are_no_project() {
    let app = App::start().await;
    let data = app
        .query(
            "mutation { createSession { id hasProject graph { version } } }",
            json!({}),
        )
        .await;
    let session = str_of(&data["createSession"]["id"]);
    assert_eq!(data["createSession"]["hasProject"], false);
    assert_eq!(data["createSession"]["graph"], Value::Null);
    let before = app.session(&session).await;
    for (query, variables) in [
        (CREATE, json!({ "s": session, "i": { "typeId": "phase" } })),
        (
            EXECUTE,
            json!({ "s": session, "c": { "deleteNode": { "nodeId": random_id() } } }),
        ),
        (
            "mutation($s: ID!) { undo(sessionId: $s) { version } }",
            json!({ "s": session }),
        ),
        (
            "mutation($s: ID!) { redo(sessionId: $s) { version } }",
            json!({ "s": session }),
        ),
        (
            "query($s: ID!) { graph(sessionId: $s) { version } }",
            json!({ "s": session }),
        ),
        (
            "query($s: ID!) { exportProject(sessionId: $s) }",
            json!({ "s": session }),
        ),
    ] {
        let error = app.error(query, variables).await;
        assert_eq!(code_of(&error), "NO_PROJECT", "{query}: {error:#}");
    }
    let after = app.session(&session).await;
    assert_eq!(after, before, "nothing changed, no events");
    assert_eq!(after["lastSeq"], 0);
}

#[tokio::test]
async fn an_unknown_project_is_project_not_found() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let unknown = random_id();
    refused(
        &app,
        &t.session,
        "PROJECT_NOT_FOUND",
        "mutation($p: ID!) { openProject(projectId: $p) { id } }",
        json!({ "p": unknown }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "PROJECT_NOT_FOUND",
        "mutation($p: ID!) { deleteProject(id: $p) }",
        json!({ "p": unknown }),
    )
    .await;
    let data = app
        .query(
            "query($p: ID!) { project(id: $p) { id } }",
            json!({ "p": unknown }),
        )
        .await;
    assert_eq!(data["project"], Value::Null);
}

#[tokio::test]
async fn an_unknown_template_is_template_not_found_listing_the_available_ones() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let sessions = app.query("{ sessions { id } }", json!({})).await;
    let error = refused(
        &app,
        &t.session,
        "TEMPLATE_NOT_FOUND",
        "mutation { createProject(templateId: \"spaceship\", name: \"Apollo\") { id } }",
        json!({}),
    )
    .await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("restomod") && message.contains("project"),
        "{message}"
    );
    let file = json!({ "version": "1.0", "templates": ["spaceship"], "nodes": {} });
    refused(
        &app,
        &t.session,
        "TEMPLATE_NOT_FOUND",
        "mutation($f: JSON!) { importProject(file: $f) { id } }",
        json!({ "f": file }),
    )
    .await;
    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await,
        sessions,
        "no session was opened"
    );
}

#[tokio::test]
async fn a_missing_node_is_node_not_found() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let missing = random_id();
    refused(
        &app,
        &t.session,
        "NODE_NOT_FOUND",
        UPDATE,
        json!({ "s": t.session, "n": missing, "p": "vin", "v": "X" }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "NODE_NOT_FOUND",
        "mutation($s: ID!, $n: ID!) { deleteNode(sessionId: $s, nodeId: $n) { version } }",
        json!({ "s": t.session, "n": missing }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "NODE_NOT_FOUND",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": missing, "typeId": "phase" } }),
    )
    .await;
    let data = app
        .query(
            "query($s: ID!, $n: ID!) { node(sessionId: $s, id: $n) { id } }",
            json!({ "s": t.session, "n": missing }),
        )
        .await;
    assert_eq!(data["node"], Value::Null);
}

#[tokio::test]
async fn a_type_the_template_lacks_is_node_type_not_found() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    refused(
        &app,
        &t.session,
        "NODE_TYPE_NOT_FOUND",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": t.root, "typeId": "spaceship" } }),
    )
    .await;
}

#[tokio::test]
async fn creating_a_node_with_an_id_in_use_is_duplicate_id() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    refused(
        &app,
        &t.session,
        "DUPLICATE_ID",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": t.root, "typeId": "phase", "id": t.phase } }),
    )
    .await;
}

#[tokio::test]
async fn a_child_type_the_parent_does_not_allow_is_child_not_allowed_naming_the_allowed_types() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let error = refused(
        &app,
        &t.session,
        "CHILD_NOT_ALLOWED",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": t.root, "typeId": "part" } }),
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("phase"),
        "{error}"
    );
    refused(
        &app,
        &t.session,
        "CHILD_NOT_ALLOWED",
        "mutation($s: ID!, $n: ID!, $p: ID!) { moveNode(sessionId: $s, nodeId: $n, newParentId: $p) { version } }",
        json!({ "s": t.session, "n": t.part, "p": t.job }),
    )
    .await;
}

#[tokio::test]
async fn moving_a_node_under_its_own_descendant_is_cycle() {
    let app = App::start().await;
    let (session, root) = app.create_project("project", "Platform").await;
    let outer = app
        .create_node(&session, Some(&root), "workstream", "Outer")
        .await;
    let inner = app
        .create_node(&session, Some(&outer), "workstream", "Inner")
        .await;
    let move_node = "mutation($s: ID!, $n: ID!, $p: ID!) { moveNode(sessionId: $s, nodeId: $n, newParentId: $p) { version } }";
    refused(
        &app,
        &session,
        "CYCLE",
        move_node,
        json!({ "s": session, "n": outer, "p": inner }),
    )
    .await;
    refused(
        &app,
        &session,
        "CYCLE",
        move_node,
        json!({ "s": session, "n": outer, "p": outer }),
    )
    .await;
}

#[tokio::test]
async fn linking_a_node_that_has_a_parent_is_already_has_parent() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let second = app
        .create_node(&t.session, Some(&t.root), "phase", "Second")
        .await;
    refused(
        &app,
        &t.session,
        "ALREADY_HAS_PARENT",
        EXECUTE,
        json!({ "s": t.session, "c": { "linkNode": { "parentId": second, "childId": t.job } } }),
    )
    .await;
}

#[tokio::test]
async fn unlinking_from_a_node_that_is_not_the_parent_is_not_a_child() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    refused(
        &app,
        &t.session,
        "NOT_A_CHILD",
        EXECUTE,
        json!({ "s": t.session, "c": { "unlinkNode": { "parentId": t.phase, "childId": t.task } } }),
    )
    .await;
}

#[tokio::test]
async fn a_position_past_the_siblings_or_below_zero_is_index_out_of_range() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    refused(
        &app,
        &t.session,
        "INDEX_OUT_OF_RANGE",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": t.root, "typeId": "phase", "index": 5 } }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "INDEX_OUT_OF_RANGE",
        EXECUTE,
        json!({ "s": t.session, "c": { "reorderNode": { "nodeId": t.phase, "index": -1 } } }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "INDEX_OUT_OF_RANGE",
        EXECUTE,
        json!({ "s": t.session, "c": { "reorderNode": { "nodeId": t.phase, "index": 1 } } }),
    )
    .await;
}

#[tokio::test]
async fn a_property_the_type_does_not_define_is_unknown_property() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let error = refused(
        &app,
        &t.session,
        "UNKNOWN_PROPERTY",
        UPDATE,
        json!({ "s": t.session, "n": t.part, "p": "colour", "v": "red" }),
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("sku"),
        "lists the known ones: {error}"
    );
    refused(
        &app,
        &t.session,
        "UNKNOWN_PROPERTY",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": t.task, "typeId": "part", "properties": { "colour": "red" } } }),
    )
    .await;
}

#[tokio::test]
async fn a_value_of_the_wrong_kind_is_invalid_property_value() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    for (node, property, value) in [
        (&t.root, "budget", json!("lots")),
        (&t.part, "quantity", json!({ "n": 2 })),
        (&t.task, "status", json!("Procrastinating")),
    ] {
        refused(
            &app,
            &t.session,
            "INVALID_PROPERTY_VALUE",
            UPDATE,
            json!({ "s": t.session, "n": node, "p": property, "v": value }),
        )
        .await;
    }
}

#[tokio::test]
async fn undo_and_redo_with_empty_stacks_are_nothing_to_undo_and_nothing_to_redo() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Fresh").await;
    let undo = "mutation($s: ID!) { undo(sessionId: $s) { version } }";
    let redo = "mutation($s: ID!) { redo(sessionId: $s) { version } }";
    refused(
        &app,
        &session,
        "NOTHING_TO_UNDO",
        undo,
        json!({ "s": session }),
    )
    .await;
    refused(
        &app,
        &session,
        "NOTHING_TO_REDO",
        redo,
        json!({ "s": session }),
    )
    .await;
    app.update_property(&session, &root, "vin", json!("1"))
        .await;
    refused(
        &app,
        &session,
        "NOTHING_TO_REDO",
        redo,
        json!({ "s": session }),
    )
    .await;
    app.undo(&session).await;
    refused(
        &app,
        &session,
        "NOTHING_TO_UNDO",
        undo,
        json!({ "s": session }),
    )
    .await;
}

#[tokio::test]
async fn a_stale_expected_version_is_version_conflict() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    let rename = json!({ "renameNode": { "nodeId": t.part, "name": "Wet sandpaper" } });
    refused(
        &app,
        &t.session,
        "VERSION_CONFLICT",
        EXECUTE,
        json!({ "s": t.session, "c": rename, "v": 2 }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "VERSION_CONFLICT",
        "mutation($s: ID!, $c: [CommandInput!]!, $v: Int) { executeBatch(sessionId: $s, commands: $c, expectedVersion: $v) { version } }",
        json!({ "s": t.session, "c": [rename], "v": 0 }),
    )
    .await;
    let data = app
        .query(EXECUTE, json!({ "s": t.session, "c": rename, "v": 4 }))
        .await;
    assert_eq!(
        data["execute"]["version"], 5,
        "the current version is accepted"
    );
}

#[tokio::test]
async fn a_query_deeper_or_more_complex_than_the_limits_is_limit_exceeded() {
    let app = App::start_with(|c| {
        c.limits.max_depth = 5;
        // List fields count their expected length (a CommandResult's events 10, children 10),
        // so the helpers' own mutations need a little more than a flat count.
        c.limits.max_complexity = 200;
    })
    .await;
    let t = restomod_tree(&app).await;
    let deep = format!(
        "{{ graph(sessionId: \"{}\") {{ roots {{ children {{ children {{ children {{ children {{ name }} }} }} }} }} }} }}",
        t.session
    );
    let error = app.error(&deep, json!({})).await;
    assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{error:#}");
    let wide = "{ templates { id name version description nodeTypes { id uuid name allowedChildren properties { id uuid name type required defaultValue options { id name indicatorId bullet } } } } }";
    let error = app.error(wide, json!({})).await;
    assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{error:#}");
    // Far deeper than any limit: refused before it is even parsed to the end.
    let abyss = format!(
        "{{ graph(sessionId: \"{}\") {{ roots {} name {} }} }}",
        t.session,
        "{ children ".repeat(200),
        "}".repeat(200)
    );
    let error = app.error(&abyss, json!({})).await;
    assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{error:#}");
    let ok = format!(
        "{{ graph(sessionId: \"{}\") {{ roots {{ children {{ name }} }} }} }}",
        t.session
    );
    let data = app.query(&ok, json!({})).await;
    assert_eq!(data["graph"]["roots"][0]["children"][0]["name"], "Body");
}

#[tokio::test]
async fn a_body_larger_than_the_limit_is_limit_exceeded_and_not_executed() {
    let app = App::start_with(|c| c.max_body_bytes = 4096).await;
    let padding = " ".repeat(8192);
    let body = json!({ "query": format!("mutation {{ createProject(templateId: \"restomod\", name: \"Too big\") {{ id }} {padding} }}") });
    let (status, answer) = app.post_body(body.to_string()).await;
    assert_eq!(status, 413);
    assert_eq!(code_of(&first_error(&answer)), "LIMIT_EXCEEDED");
    assert!(app.projects().await.is_empty(), "the mutation did not run");
    let (session, _) = app.create_project("restomod", "Small enough").await;
    assert!(!session.is_empty());
}

#[tokio::test]
async fn more_subscriptions_on_one_connection_than_allowed_is_limit_exceeded() {
    let app = App::start_with(|c| c.limits.max_subscriptions_per_connection = 2).await;
    let (session, root) = app.create_project("restomod", "Busy socket").await;
    let mut ws = app.ws().await;
    ws.subscribe_events("one", &session, None).await;
    ws.wait_joined("one").await;
    ws.subscribe_events("two", &session, Some(app.last_seq(&session).await))
        .await;
    ws.subscribe_events("three", &session, None).await;
    let error = ws.next_error("three").await;
    assert_eq!(code_of(&error), "LIMIT_EXCEEDED", "{error:#}");
    ws.expect_complete("three").await;

    // The first two still work.
    app.update_property(&session, &root, "vin", json!("A"))
        .await;
    let one = ws.next_event("one").await;
    assert_eq!(one, ws.next_event("two").await);
    assert_eq!(one["__typename"], "CommandExecuting");

    // Ending one frees its slot.
    ws.unsubscribe("one").await;
    ws.subscribe_events("four", &session, Some(app.last_seq(&session).await))
        .await;
    app.update_property(&session, &root, "vin", json!("B"))
        .await;
    let four = ws.next_event("four").await;
    assert_eq!(four["__typename"], "CommandExecuting");
}

#[tokio::test]
async fn subscribing_to_an_unknown_session_fails_with_session_not_found_and_completes() {
    let app = App::start().await;
    let (session, _) = app.create_project("restomod", "Real").await;
    let mut ws = app.ws().await;
    ws.subscribe_events("ghost", &random_id(), None).await;
    let error = ws.next_error("ghost").await;
    assert_eq!(code_of(&error), "SESSION_NOT_FOUND", "{error:#}");
    ws.expect_complete("ghost").await;

    ws.subscribe_events("bad", "not-a-uuid", None).await;
    assert_eq!(code_of(&ws.next_error("bad").await), "BAD_USER_INPUT");
    ws.expect_complete("bad").await;

    let ahead = app.last_seq(&session).await + 100;
    ws.subscribe_events("ahead", &session, Some(ahead)).await;
    assert_eq!(code_of(&ws.next_error("ahead").await), "BAD_USER_INPUT");
    ws.expect_complete("ahead").await;

    let state = app.session(&session).await;
    assert_eq!(
        state["activeClients"], 0,
        "a refused subscription does not join"
    );
    assert_eq!(state["lastSeq"], 0);
    // The connection is still good for a real subscription.
    ws.subscribe_events("real", &session, None).await;
    ws.wait_joined("real").await;
}

#[tokio::test]
async fn a_store_that_cannot_commit_is_store_unavailable_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let sqlite =
        SqliteStore::open(&config.data_dir.join("talus.db"), SqliteOptions::default()).unwrap();
    let (store, switch) = FaultyStore::new(sqlite);
    let app = App::start_on(dir, config, std::sync::Arc::new(store)).await;
    let (session, root) = app.create_project("restomod", "Fragile").await;
    let mut ws = app.subscribe(&session).await;
    let joined = common::int_of(&ws.joined.as_ref().unwrap()["seq"]);

    switch.fail_writes(true);
    let before = state(&app, &session).await;
    let error = app
        .error(
            UPDATE,
            json!({ "s": session, "n": root, "p": "vin", "v": "lost" }),
        )
        .await;
    assert_eq!(code_of(&error), "STORE_UNAVAILABLE", "{error:#}");
    let error = app
        .error(
            "mutation { createProject(templateId: \"restomod\", name: \"Never\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code_of(&error), "STORE_UNAVAILABLE", "{error:#}");
    assert_eq!(state(&app, &session).await, before, "nothing changed");

    switch.fail_writes(false);
    let result = app
        .update_property(&session, &root, "vin", json!("kept"))
        .await;
    assert_eq!(result["version"], 1);
    let event = ws.event().await;
    assert_eq!(
        event["seq"],
        joined + 1,
        "no event of the failed commit was published"
    );
    assert_eq!(event["__typename"], "CommandExecuting");
}

#[tokio::test]
async fn a_bad_value_for_an_argument_named_limit_is_bad_user_input_not_limit_exceeded() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        "query($s: ID!) { searchNodes(sessionId: $s, limit: \"ten\") { id } }",
        json!({ "s": t.session }),
    )
    .await;
    refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        "query($s: ID!, $l: Int) { searchNodes(sessionId: $s, limit: $l) { id } }",
        json!({ "s": t.session, "l": "ten" }),
    )
    .await;
}

#[tokio::test]
async fn a_nul_character_in_a_name_is_bad_user_input_and_creates_nothing() {
    let app = App::start().await;
    let t = restomod_tree(&app).await;
    // No store keeps a NUL as text (PostgreSQL refuses it), so it is refused
    // before anything is stored, on every store alike.
    let error = refused(
        &app,
        &t.session,
        "BAD_USER_INPUT",
        CREATE,
        json!({ "s": t.session, "i": { "parentId": t.root, "typeId": "phase", "name": "Paint\u{0}shop" } }),
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("NUL"),
        "{error}"
    );
    let before = app.request("{ projects { name } }", json!({})).await;
    let body = app
        .request(
            "mutation($n: String!) { createProject(templateId: \"restomod\", name: $n) { id } }",
            json!({ "n": "Bus\u{0}" }),
        )
        .await;
    assert_eq!(code_of(&first_error(&body)), "BAD_USER_INPUT", "{body}");
    let after = app.request("{ projects { name } }", json!({})).await;
    assert_eq!(after, before, "no project was created");
}
