//! Sessions and projects through the API: creating, opening, deleting, closing, cleaning up, importing and exporting, and a client that only speaks HTTP.

mod common;

use common::{int_of, str_of, App, Protocol, EVENTS};
use serde_json::{json, Value};

#[tokio::test]
async fn creating_a_project_opens_a_session_whose_graph_has_one_root_named_after_it() {
    let app = App::start().await;
    for (template, root_type) in [("restomod", "project_root"), ("project", "project")] {
        let data = app
            .query(
                "query($t: ID!) { template(id: $t) { rootType { id typeId } } }",
                json!({ "t": template }),
            )
            .await;
        assert_eq!(data["template"]["rootType"]["typeId"], root_type);
        assert_eq!(
            data["template"]["rootType"]["id"],
            format!("{template}/{root_type}"),
            "a node type's id is unique across templates"
        );

        let data = app
            .query(
                "mutation($t: ID!) { createProject(templateId: $t, name: \"Split-window Bus\") {
                    id hasProject activeClients version lastSeq nodeCount canUndo canRedo
                    project { id name templateId nodeCount }
                    graph { nodeCount roots { id name typeId type { id typeId } parentId children { id } } nodes { id } }
                } }",
                json!({ "t": template }),
            )
            .await;
        let session = &data["createProject"];
        assert_eq!(session["hasProject"], true);
        assert_eq!(session["activeClients"], 0);
        assert_eq!(session["version"], 0);
        assert_eq!(session["nodeCount"], 1);
        assert_eq!(session["canUndo"], false);
        assert_eq!(session["canRedo"], false);
        assert_eq!(session["project"]["name"], "Split-window Bus");
        assert_eq!(session["project"]["templateId"], template);
        assert_eq!(session["project"]["nodeCount"], 1);
        let roots = session["graph"]["roots"].as_array().unwrap();
        assert_eq!(roots.len(), 1, "one root: {session:#}");
        assert_eq!(roots[0]["name"], "Split-window Bus");
        assert_eq!(roots[0]["typeId"], root_type);
        assert_eq!(roots[0]["type"]["typeId"], root_type);
        assert_eq!(roots[0]["type"]["id"], format!("{template}/{root_type}"));
        assert_eq!(roots[0]["parentId"], Value::Null);
        assert_eq!(roots[0]["children"], json!([]));
        assert_eq!(session["graph"]["nodes"], json!([{ "id": roots[0]["id"] }]));

        let session_id = str_of(&session["id"]);
        let project_id = str_of(&session["project"]["id"]);
        assert!(
            app.projects()
                .await
                .contains(&(project_id.clone(), "Split-window Bus".to_string())),
            "projects lists the new project"
        );
        let found = app.session(&session_id).await;
        assert_eq!(found["id"], session_id.as_str());
        assert_eq!(found["project"]["id"], project_id.as_str());
        let data = app
            .query(
                "query($p: ID!) { project(id: $p) { name session { id } } }",
                json!({ "p": project_id }),
            )
            .await;
        assert_eq!(data["project"]["session"]["id"], session_id.as_str());
    }
}

#[tokio::test]
async fn a_client_that_only_speaks_http_can_build_edit_undo_and_read_a_project() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let rest = app.as_client("rest-only");
    let (session, root) = rest.create_project("restomod", "Land Cruiser").await;
    let phase = rest
        .create_node(&session, Some(&root), "phase", "Bodywork")
        .await;
    let job = rest
        .create_node(&session, Some(&phase), "job", "Rust repair")
        .await;

    let result = rest
        .update_property(&session, &root, "vehicle", json!("FJ40"))
        .await;
    assert_eq!(result["version"], 3);
    assert_eq!(result["canUndo"], true);
    assert_eq!(result["canRedo"], false);
    let kinds: Vec<&str> = result["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["__typename"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["CommandExecuting", "PropertyChanged", "CommandExecuted"]
    );
    assert!(result["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["clientId"] == "rest-only"));

    let undone = rest.undo(&session).await;
    assert_eq!(undone["version"], 4);
    assert_eq!(undone["canRedo"], true);
    let graph = rest.graph(&session).await;
    let root_node = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == root.as_str())
        .unwrap();
    assert_eq!(
        root_node["properties"].get("vehicle"),
        None,
        "undo cleared the value: {root_node}"
    );

    let redone = rest.redo(&session).await;
    assert_eq!(redone["version"], 5);
    assert_eq!(redone["canRedo"], false);

    // A query by GET, as a browser address bar or curl would send it.
    let query = format!(
        "{{ graph(sessionId: \"{session}\") {{ version nodeCount nodes {{ id name parentId properties }} }} }}"
    );
    let response = app.get_query(&query).await;
    assert_eq!(response.0, 200);
    let graph = &response.1["data"]["graph"];
    assert_eq!(graph["version"], 5);
    assert_eq!(graph["nodeCount"], 3);
    let nodes = graph["nodes"].as_array().unwrap();
    assert_eq!(
        nodes
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["Land Cruiser", "Bodywork", "Rust repair"],
        "parents before children"
    );
    assert_eq!(nodes[0]["properties"]["vehicle"], "FJ40");
    assert_eq!(nodes[2]["id"], job.as_str());
    assert_eq!(nodes[2]["parentId"], phase.as_str());

    // Mutations are not accepted over GET, however the document is written.
    for document in [
        format!("mutation {{ undo(sessionId: \"{session}\") {{ version }} }}"),
        format!("# undo it\nmutation {{ undo(sessionId: \"{session}\") {{ version }} }}"),
        format!("fragment V on CommandResult {{ version }} mutation {{ undo(sessionId: \"{session}\") {{ ...V }} }}"),
    ] {
        let (status, body) = app.get_query(&document).await;
        assert_eq!(status, 405, "{document}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    }
    assert_eq!(
        rest.graph(&session).await["version"],
        5,
        "the GET mutations changed nothing"
    );
}

#[tokio::test]
async fn opening_a_project_that_is_already_open_returns_the_same_session() {
    let app = App::start().await;
    let (session, _) = app.create_project("restomod", "Beetle").await;
    let project = str_of(&app.session(&session).await["project"]["id"]);
    let sessions_before = app.query("{ sessions { id } }", json!({})).await;

    let data = app
        .query(
            "mutation($p: ID!) { openProject(projectId: $p) { id } }",
            json!({ "p": project }),
        )
        .await;
    assert_eq!(data["openProject"]["id"], session.as_str());
    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await,
        sessions_before
    );
}

#[tokio::test]
async fn a_project_cannot_be_deleted_while_a_client_is_subscribed_but_can_once_it_left() {
    let app = App::start().await;
    let (session, _) = app.create_project("restomod", "Mini").await;
    let project = str_of(&app.session(&session).await["project"]["id"]);
    let mut ws = app.subscribe(&session).await;

    let delete = "mutation($p: ID!) { deleteProject(id: $p) }";
    let error = app.error(delete, json!({ "p": project })).await;
    assert_eq!(common::code_of(&error), "BAD_USER_INPUT");
    assert!(
        error["message"].as_str().unwrap().contains("active client"),
        "the message says why: {error}"
    );
    assert!(app.projects().await.iter().any(|(id, _)| *id == project));
    assert_eq!(app.session(&session).await["activeClients"], 1);

    ws.unsubscribe(EVENTS).await;
    let data = app.query(delete, json!({ "p": project })).await;
    assert_eq!(data["deleteProject"], true);
    assert!(!app.projects().await.iter().any(|(id, _)| *id == project));
    assert_eq!(
        app.session(&session).await,
        Value::Null,
        "its session is closed"
    );
    let error = app
        .error(
            "mutation($p: ID!) { openProject(projectId: $p) { id } }",
            json!({ "p": project }),
        )
        .await;
    assert_eq!(common::code_of(&error), "PROJECT_NOT_FOUND");
}

#[tokio::test]
async fn cleanup_closes_idle_sessions_without_clients_and_keeps_their_projects() {
    let app = App::start().await;
    let (idle, idle_root) = app.create_project("restomod", "Idle").await;
    app.update_property(&idle, &idle_root, "vin", json!("WVWZZZ"))
        .await;
    let idle_project = str_of(&app.session(&idle).await["project"]["id"]);
    let (busy, _) = app.create_project("restomod", "Busy").await;
    // Joining takes a websocket handshake, so the idle session's last activity is in the past by now.
    let mut ws = app.subscribe(&busy).await;

    let data = app
        .query(
            "mutation { cleanupSessions(maxInactiveHours: 0) { sessionsRemoved activeSessions } }",
            json!({}),
        )
        .await;
    assert_eq!(data["cleanupSessions"]["sessionsRemoved"], 1);
    assert_eq!(data["cleanupSessions"]["activeSessions"], 1);
    assert_eq!(app.session(&idle).await, Value::Null);
    assert_eq!(app.session(&busy).await["activeClients"], 1);
    assert!(app
        .projects()
        .await
        .contains(&(idle_project.clone(), "Idle".to_string())));

    // The default keeps sessions idle for less than a day.
    let data = app
        .query(
            "mutation { cleanupSessions { sessionsRemoved activeSessions } }",
            json!({}),
        )
        .await;
    assert_eq!(data["cleanupSessions"]["sessionsRemoved"], 0);

    // Nothing stored was lost: the project opens again with its change.
    let data = app
        .query(
            "mutation($p: ID!) { openProject(projectId: $p) { id version graph { roots { properties } } } }",
            json!({ "p": idle_project }),
        )
        .await;
    assert_ne!(data["openProject"]["id"], idle.as_str(), "a new session");
    assert_eq!(data["openProject"]["version"], 1);
    assert_eq!(
        data["openProject"]["graph"]["roots"][0]["properties"]["vin"],
        "WVWZZZ"
    );

    // The busy session's subscriber never noticed.
    let version = app
        .update_property(
            &busy,
            &str_of(&app.graph(&busy).await["roots"][0]["id"]),
            "vin",
            json!("X"),
        )
        .await;
    assert_eq!(version["version"], 1);
    assert_eq!(ws.event().await["__typename"], "CommandExecuting");
}

#[tokio::test]
async fn closing_a_session_completes_its_subscriptions_on_both_protocols_and_keeps_the_project() {
    let app = App::start().await;
    let (session, _) = app.create_project("restomod", "Defender").await;
    let project = str_of(&app.session(&session).await["project"]["id"]);
    let mut modern = app.subscribe(&session).await;
    let mut legacy = app
        .connect(
            Protocol::LegacyWs,
            json!({ "clientId": "legacy", "name": "Legacy" }),
        )
        .await;
    legacy.subscribe_events(EVENTS, &session, None).await;
    legacy.wait_joined(EVENTS).await;

    let data = app
        .query(
            "mutation($s: ID!) { closeSession(id: $s) }",
            json!({ "s": session }),
        )
        .await;
    assert_eq!(data["closeSession"], true);
    // Events already committed (the legacy client's join) may arrive first.
    modern.wait_complete(EVENTS).await;
    legacy.wait_complete(EVENTS).await;

    assert_eq!(app.session(&session).await, Value::Null);
    assert!(app.projects().await.iter().any(|(id, _)| *id == project));
    let error = app
        .error(
            "mutation($s: ID!) { closeSession(id: $s) }",
            json!({ "s": session }),
        )
        .await;
    assert_eq!(common::code_of(&error), "SESSION_NOT_FOUND");

    // The connections stay usable for other work.
    let data = modern.operation("{ projects { id } }", json!({})).await;
    assert!(data["projects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == project.as_str()));
}

/// The project's own test fixtures (tests/fixtures/README.md).
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A temp dir holding copies of the fixture templates (budget, studio, garage), and the named fixture project file.
fn fixture(project: &str) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    for name in ["budget.yaml", "studio.yaml", "garage.yaml"] {
        std::fs::copy(format!("{FIXTURES}/templates/{name}"), templates.join(name)).unwrap();
    }
    let text = std::fs::read_to_string(format!("{FIXTURES}/projects/{project}")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn budget_fixture() -> (tempfile::TempDir, Value) {
    fixture("budget_project.json")
}

#[tokio::test]
async fn the_budget_project_imports_with_its_eleven_nodes_and_its_export_imports_to_the_same_graph()
{
    let (fixture, file) = budget_fixture();
    let templates = fixture.path().join("templates");
    let app = App::start_with(|c| c.templates_dir = Some(templates)).await;
    let errors = app
        .query("{ templateErrors { file message } }", json!({}))
        .await;
    assert_eq!(errors["templateErrors"], json!([]));

    let import = "mutation($f: JSON!, $t: ID, $n: String) { importProject(file: $f, templateId: $t, name: $n) {
        id nodeCount project { name templateId nodeCount } } }";
    let data = app.query(import, json!({ "f": file })).await;
    let first = &data["importProject"];
    assert_eq!(first["nodeCount"], 11);
    assert_eq!(first["project"]["nodeCount"], 11);
    assert_eq!(first["project"]["templateId"], "budget");
    let session = str_of(&first["id"]);
    let graph = app.graph(&session).await;
    assert_eq!(graph["nodeCount"], 11);
    assert_eq!(graph["roots"].as_array().unwrap().len(), 1);

    let export = app
        .query(
            "query($s: ID!) { exportProject(sessionId: $s) }",
            json!({ "s": session }),
        )
        .await["exportProject"]
        .clone();
    assert_eq!(export["version"], "1.0");
    assert_eq!(export["templates"], json!(["budget"]));
    assert_eq!(export["nodes"].as_object().unwrap().len(), 11);

    let data = app
        .query(import, json!({ "f": export, "n": "Budget again" }))
        .await;
    let second = &data["importProject"];
    assert_eq!(second["project"]["name"], "Budget again");
    let again = str_of(&second["id"]);
    assert_ne!(again, session, "a new project in a new session");
    assert_eq!(
        app.graph(&again).await,
        graph,
        "the same nodes, ids, names, types, values and order"
    );
    assert_eq!(app.projects().await.len(), 2);
}

#[tokio::test]
async fn a_project_is_found_again_after_a_restart_on_the_same_data_dir() {
    let app = App::start().await;
    let (session, root) = app.create_project("project", "Roadmap").await;
    app.create_node(&session, Some(&root), "workstream", "Backend")
        .await;
    app.update_property(&session, &root, "owner", json!("Ada"))
        .await;
    let graph = app.graph(&session).await;
    let project = str_of(&app.session(&session).await["project"]["id"]);
    let last_seq = app.last_seq(&session).await;
    let dir = app.restart().await;

    let again = App::start_in(dir, |_| {}).await;
    let found = again.session(&session).await;
    assert_eq!(
        found["project"]["id"],
        project.as_str(),
        "the session comes back: {found:#}"
    );
    assert_eq!(int_of(&found["lastSeq"]), last_seq);
    assert_eq!(again.graph(&session).await, graph);
    assert_eq!(found["canUndo"], true);
    let undone = again.undo(&session).await;
    assert_eq!(undone["version"], 3);
}

#[tokio::test]
async fn the_reaper_closes_idle_sessions_without_clients_but_spares_watched_ones() {
    let app = App::start_with(|c| {
        c.session.reaper_interval = std::time::Duration::from_millis(50);
        c.session.idle_limit = std::time::Duration::from_millis(300);
    })
    .await;
    let (idle, _) = app.create_project("restomod", "Idle").await;
    let (watched, _) = app.create_project("restomod", "Watched").await;
    let _ws = app.subscribe(&watched).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // `sessions` lists without touching (asking for one session counts as activity).
        let all = app.query("{ sessions { id } }", json!({})).await;
        if !all["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == idle.as_str())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reaper never closed the idle session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let s = app
        .query(
            "query($s: ID!) { session(id: $s) { activeClients } }",
            json!({"s": watched}),
        )
        .await;
    assert_eq!(
        s["session"]["activeClients"], 1,
        "a session with a client is never reaped"
    );
    let names: Vec<String> = app.projects().await.into_iter().map(|p| p.1).collect();
    assert!(
        names.contains(&"Idle".to_string()),
        "the reaped session's project is kept: {names:?}"
    );
}

// The current-format fixture's node ids (tests/fixtures/projects/studio_project.json).
const FILM: &str = "42562d79-57cb-4c40-981a-897418b4e1e0";
const HARBOUR: &str = "2b1713c3-7929-4c4a-b626-5aca78ca4b42";
const DAWN: &str = "bde68d66-b5cc-4429-af66-c8751f749e30";
const WAVE: &str = "be675749-f3b8-4966-bdb9-4156858e3e34";
const CAPSIZE: &str = "f58058f5-4699-4595-b98a-c9bb89846220";
const RESCUE: &str = "abe0fe5a-7fb7-4fd2-baf8-a6d2e8b220e2";
const MIRA: &str = "eebbe5b6-773e-4a98-99eb-fb4c0e8f969a";
const JONAS: &str = "e8e0241a-583a-469a-858d-370b1012d33c";
const LEA: &str = "4eb05d04-660a-4115-a3f1-052bbc608335";

const IMPORT: &str =
    "mutation($f: JSON!, $t: ID, $n: String) { importProject(file: $f, templateId: $t, name: $n) {
    id nodeCount project { name templateId nodeCount } } }";

/// A server with the fixture templates and the studio project imported: (fixture dir, app, session id).
async fn studio_session() -> (tempfile::TempDir, App, String) {
    let (fixture, file) = fixture("studio_project.json");
    let templates = fixture.path().join("templates");
    let app = App::start_with(|c| c.templates_dir = Some(templates)).await;
    let data = app.query(IMPORT, json!({ "f": file })).await;
    let session = str_of(&data["importProject"]["id"]);
    (fixture, app, session)
}

/// The node of `graph` (as `App::graph` returns it) with this id.
fn node_of<'g>(graph: &'g Value, id: &str) -> &'g Value {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("node {id} in {graph:#}"))
}

#[tokio::test]
async fn a_current_format_project_imports_through_the_api_with_every_node_type_order_and_value() {
    let (fixture, file) = fixture("studio_project.json");
    let templates = fixture.path().join("templates");
    let app = App::start_with(|c| c.templates_dir = Some(templates)).await;
    let errors = app
        .query("{ templateErrors { file message } }", json!({}))
        .await;
    assert_eq!(errors["templateErrors"], json!([]));
    let studio = app
        .query(
            "{ template(id: \"studio\") { nodeTypes { name properties { name type required defaultValue } } } }",
            json!({}),
        )
        .await;
    let shot = &studio["template"]["nodeTypes"][2];
    assert_eq!(shot["name"], "Shot");
    let types: Vec<&str> = shot["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "TEXT",
            "TEXT",
            "NUMBER",
            "CURRENCY",
            "SELECT",
            "CHECKBOX",
            "DATE",
            "EDITOR",
            "PERSON",
            "NODE_REFERENCE",
            "NODE_REFERENCE",
            "OBJECT"
        ]
    );
    assert_eq!(shot["properties"][11]["defaultValue"], json!({}));

    let data = app.query(IMPORT, json!({ "f": file })).await;
    let first = &data["importProject"];
    assert_eq!(first["nodeCount"], 11);
    assert_eq!(first["project"]["templateId"], "studio");
    assert_eq!(first["project"]["name"], "Paper Boats");
    let session = str_of(&first["id"]);
    let graph = app.graph(&session).await;
    assert_eq!(graph["nodeCount"], 11);
    assert_eq!(graph["roots"], json!([{ "id": FILM }]));
    assert_eq!(
        node_of(&graph, FILM)["childIds"],
        json!([
            HARBOUR,
            "21e0d858-bb85-4778-a03b-d16c2c60e4e3",
            MIRA,
            JONAS,
            LEA
        ])
    );
    let rescue = node_of(&graph, RESCUE);
    assert_eq!(rescue["typeId"], "shot");
    assert_eq!(rescue["name"], "Rescue");
    assert_eq!(
        rescue["properties"],
        json!({"name": "Rescue", "code": "ST-030", "frames": 420, "cost": "8800.25", "status": "todo",
               "approved": false, "brief": "<h2>Rescue</h2>\n<p>The lighthouse keeper's rowing boat.</p>",
               "supervisor": LEA, "artists": [LEA, JONAS, MIRA],
               "after": [CAPSIZE, WAVE], "allocation": {"2026-07-20": {JONAS: 3}}})
    );
    // Every node and value is what the file says, read with the same template by the domain.
    let template = talus_tally::domain::Template::from_yaml(
        "studio",
        "studio.yaml",
        &std::fs::read_to_string(format!("{FIXTURES}/templates/studio.yaml")).unwrap(),
    )
    .unwrap();
    let expected = talus_tally::domain::project_file::import(&file, &template, chrono::Utc::now())
        .unwrap()
        .graph;
    let served = graph["nodes"].as_array().unwrap();
    assert_eq!(served.len(), expected.len());
    for node in expected.preorder() {
        let at = node_of(&graph, &node.id.to_string());
        assert_eq!(at["typeId"], node.type_id.as_str());
        assert_eq!(at["name"], node.name.as_str());
        assert_eq!(
            at["properties"],
            serde_json::to_value(&node.properties).unwrap()
        );
        let children: Vec<String> = node.children.iter().map(|c| c.to_string()).collect();
        assert_eq!(at["childIds"], json!(children));
    }

    let export = app
        .query(
            "query($s: ID!) { exportProject(sessionId: $s) }",
            json!({ "s": session }),
        )
        .await["exportProject"]
        .clone();
    assert_eq!(export["templates"], json!(["studio"]));
    assert_eq!(export["nodes"].as_object().unwrap().len(), 11);
    let data = app.query(IMPORT, json!({ "f": export })).await;
    let again = str_of(&data["importProject"]["id"]);
    assert_eq!(app.graph(&again).await, graph);
}

const DELETE: &str = "mutation($s: ID!, $n: ID!) { deleteNode(sessionId: $s, nodeId: $n) { version events { __typename
    ... on PropertyChanged { nodeId propertyId oldValue newValue } ... on NodeDeleted { nodeId deletedIds } } } }";

#[tokio::test]
async fn node_references_must_name_existing_nodes_of_the_target_type_and_change_nothing_otherwise()
{
    let (_fixture, app, session) = studio_session().await;
    let before = app.graph(&session).await;
    let set = "mutation($s: ID!, $n: ID!, $p: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: $p, value: $v) { version } }";
    let missing = "00000000-0000-0000-0000-00000000beef";
    let cases = [
        (
            json!([MIRA, missing]),
            format!("references node {missing}, which does not exist"),
        ),
        (
            json!([HARBOUR]),
            format!("references node {HARBOUR}, a 'sequence'; it must be a 'person'"),
        ),
        (
            json!([MIRA, MIRA]),
            format!("each node once; {MIRA} is listed twice"),
        ),
        (
            json!(["Mira"]),
            "expects a list of ids of 'person' nodes".to_owned(),
        ),
    ];
    for (value, message) in cases {
        let error = app
            .error(
                set,
                json!({ "s": session, "n": CAPSIZE, "p": "artists", "v": value }),
            )
            .await;
        assert_eq!(common::code_of(&error), "INVALID_PROPERTY_VALUE", "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(&message),
            "{error}"
        );
    }
    assert_eq!(
        app.graph(&session).await,
        before,
        "a refused write changes nothing"
    );

    // Without a target type any node of the project will do; a single id is a list of one.
    let data = app
        .query(
            set,
            json!({ "s": session, "n": CAPSIZE, "p": "after", "v": HARBOUR }),
        )
        .await;
    assert_eq!(data["updateProperty"]["version"], 1);
    let graph = app.graph(&session).await;
    assert_eq!(
        node_of(&graph, CAPSIZE)["properties"]["after"],
        json!([HARBOUR])
    );
}

#[tokio::test]
async fn deleting_a_referenced_node_removes_it_from_every_reference_and_undo_restores_them() {
    let (_fixture, app, session) = studio_session().await;
    let before = app.graph(&session).await;
    let data = app.query(DELETE, json!({ "s": session, "n": MIRA })).await;
    let events: Vec<Value> = data["deleteNode"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["__typename"] != "CommandExecuting" && e["__typename"] != "CommandExecuted")
        .cloned()
        .collect();
    let changed = |node: &str, old: Value, new: Value| json!({"__typename": "PropertyChanged", "nodeId": node, "propertyId": "artists", "oldValue": old, "newValue": new});
    assert_eq!(
        events,
        [
            changed(DAWN, json!([MIRA, JONAS]), json!([JONAS])),
            changed(WAVE, json!([LEA, MIRA]), json!([LEA])),
            changed(RESCUE, json!([LEA, JONAS, MIRA]), json!([LEA, JONAS])),
            json!({"__typename": "NodeDeleted", "nodeId": MIRA, "deletedIds": [MIRA]}),
        ]
    );
    let after = app.graph(&session).await;
    assert_eq!(after["nodeCount"], 10);
    let dawn = node_of(&after, DAWN);
    assert_eq!(dawn["properties"]["artists"], json!([JONAS]));
    // A person property is a plain id (syntax only) and an object is opaque to the server: both stay.
    assert_eq!(dawn["properties"]["supervisor"], json!(MIRA));
    assert_eq!(
        dawn["properties"]["allocation"]["2026-06-01"][MIRA],
        json!(6)
    );

    let undone = app.undo(&session).await;
    assert_eq!(undone["version"], 2);
    let mut restored = app.graph(&session).await;
    assert_eq!(restored["version"], 2);
    restored["version"] = before["version"].clone();
    assert_eq!(
        restored, before,
        "undo puts the node and every reference back"
    );

    app.redo(&session).await;
    let mut redone = app.graph(&session).await;
    redone["version"] = after["version"].clone();
    assert_eq!(redone, after);
}
