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

/// A temp dir holding a copy of the reference budget template, and a copy of the reference project file.
fn budget_fixture() -> (tempfile::TempDir, Value) {
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::copy(
        format!("{shared}/templates/budget_smoke_test.yaml"),
        templates.join("budget_smoke_test.yaml"),
    )
    .unwrap();
    let file = dir.path().join("budget_smoke_test_project.json");
    std::fs::copy(
        format!("{shared}/projects/budget_smoke_test_project.json"),
        &file,
    )
    .unwrap();
    let project = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    (dir, project)
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
    assert_eq!(first["project"]["templateId"], "budget_smoke_test");
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
    assert_eq!(export["templates"], json!(["budget_smoke_test"]));
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
