//! Resource limits, through the real server: each attack of issue 10 is refused with LIMIT_EXCEEDED
//! naming its limit, and nothing changes (graph, version, undo stack).

mod common;

use common::{code_of, first_error, int_of, str_of, App};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A refused request: its first error is LIMIT_EXCEEDED and names `flag`.
fn assert_limit(body: &Value, flag: &str) {
    let e = first_error(body);
    assert_eq!(code_of(&e), "LIMIT_EXCEEDED", "{body:#}");
    let message = str_of(&e["message"]);
    assert!(
        message.contains(flag),
        "the message names {flag}: {message}"
    );
}

/// The whole answer to `execute(command)`, which may fail.
async fn execute_raw(app: &App, session: &str, command: Value) -> Value {
    app.request(
        "mutation($s: ID!, $c: CommandInput!) { execute(sessionId: $s, command: $c) { version } }",
        json!({ "s": session, "c": command }),
    )
    .await
}

/// A project of the `project` template with one workstream under its root: (session, root).
async fn project_with_a_workstream(app: &App) -> (String, String) {
    let (session, root) = app.create_project("project", "Limits").await;
    app.create_node(&session, Some(&root), "workstream", "Kit part")
        .await;
    (session, root)
}

#[tokio::test]
async fn fourteen_self_applying_kits_in_one_batch_are_refused_and_change_nothing() {
    let app = App::start().await;
    let (session, root) = project_with_a_workstream(&app).await;
    let before = app.graph(&session).await;
    let state = app.session(&session).await;
    // Each applyKit of the root into itself doubles the root's subtree: 2^14 nodes.
    let commands: Vec<Value> = (0..14)
        .map(|_| json!({ "applyKit": { "targetId": root, "kitRootId": root } }))
        .collect();
    let body = app
        .request(
            "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }",
            json!({ "s": session, "c": commands }),
        )
        .await;
    assert_limit(&body, "max-nodes-per-request is 10000");
    assert_eq!(app.graph(&session).await, before);
    let after = app.session(&session).await;
    assert_eq!(after["version"], state["version"]);
    assert_eq!(after["canUndo"], state["canUndo"]);
    assert_eq!(after["canRedo"], state["canRedo"]);
    // The same kit applied a few times stays within the limit and works.
    let ok = app
        .request(
            "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }",
            json!({ "s": session, "c": commands[..3] }),
        )
        .await;
    assert!(ok.get("errors").is_none(), "{ok:#}");
    assert_eq!(app.graph(&session).await["nodeCount"], 9);
}

#[tokio::test]
async fn a_batch_longer_than_max_batch_commands_is_refused_before_it_reaches_the_session() {
    let app = App::start_with(|c| c.session.command_limits.max_batch_commands = 3).await;
    let (session, root) = app.create_project("project", "Limits").await;
    let seq = app.last_seq(&session).await;
    let rename = json!({ "renameNode": { "nodeId": root, "name": "Renamed" } });
    let body = app
        .request(
            "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }",
            json!({ "s": session, "c": [rename, rename, rename, rename] }),
        )
        .await;
    assert_limit(&body, "max-batch-commands is 3");
    // Refused at the edge: not even a CommandExecuting event was logged.
    assert_eq!(app.last_seq(&session).await, seq);
    assert_eq!(app.session(&session).await["version"], 0);
}

#[tokio::test]
async fn an_http_batch_longer_than_max_http_batch_is_refused_whole_and_none_of_it_runs() {
    let app = App::start_with(|c| c.max_http_batch = 3).await;
    let (session, root) = app.create_project("project", "Limits").await;
    let seq = app.last_seq(&session).await;
    let projects = app.projects().await.len();
    let rename = json!({
        "query": "mutation($s: ID!, $n: ID!) { execute(sessionId: $s, command: { renameNode: { nodeId: $n, name: \"Renamed\" } }) { version } }",
        "variables": { "s": session, "n": root },
    });
    let create = json!({
        "query": "mutation { createProject(templateId: \"project\", name: \"Batched\") { id } }",
    });
    // The refused batch's last operation would create a project; its first ones rename.
    let batch = json!([rename, rename, rename, create]);
    let (status, body) = app.post_body(batch.to_string()).await;
    assert_eq!(status, 400, "{body:#}");
    assert_limit(&body, "max-http-batch is 3");
    assert!(body.get("data").is_none(), "{body:#}");
    assert_eq!(app.last_seq(&session).await, seq, "no event was logged");
    assert_eq!(app.session(&session).await["version"], 0);
    assert_eq!(
        app.projects().await.len(),
        projects,
        "no project was created"
    );
    // A batch at the limit runs, every operation in order.
    let (status, body) = app
        .post_body(json!([rename, rename, rename]).to_string())
        .await;
    assert_eq!(status, 200, "{body:#}");
    let versions: Vec<i64> = body
        .as_array()
        .expect("one answer per operation")
        .iter()
        .map(|answer| int_of(&answer["data"]["execute"]["version"]))
        .collect();
    assert_eq!(versions, [1, 2, 3]);
}

/// A 1.0 project file of the `project` template: a root with `properties` and `workstreams` children.
fn project_file(name: &str, root_name: &str, properties: Value, workstreams: usize) -> Value {
    let root = common::random_id();
    let children: Vec<String> = (0..workstreams).map(|_| common::random_id()).collect();
    let mut nodes = serde_json::Map::new();
    nodes.insert(
        root.clone(),
        json!({ "id": root, "type": "project", "name": root_name, "properties": properties,
                "children": children, "parent_id": null }),
    );
    for child in &children {
        nodes.insert(
            child.clone(),
            json!({ "id": child, "type": "workstream", "name": "Part", "properties": {},
                    "children": [], "parent_id": root }),
        );
    }
    json!({ "version": "1.0", "templates": ["project"], "name": name, "nodes": nodes })
}

#[tokio::test]
async fn an_imported_file_over_a_size_limit_is_refused_naming_the_limit_and_creates_nothing() {
    let app = App::start_with(|c| {
        c.limits.max_name_bytes = 16;
        c.limits.max_value_bytes = 64;
        c.session.command_limits.max_nodes_per_project = 3;
    })
    .await;
    let import = "mutation($f: JSON!) { importProject(file: $f) { id } }";
    let sessions = "{ sessions { id } }";
    let before_sessions = app.query(sessions, json!({})).await;
    let long = "n".repeat(17);
    let cases = [
        (
            project_file("Fits", &long, json!({}), 1),
            "max-name-bytes is 16",
        ),
        (
            project_file(&long, "Fits", json!({}), 1),
            "max-name-bytes is 16",
        ),
        (
            project_file("Fits", "Fits", json!({ "summary": "v".repeat(63) }), 1),
            "max-value-bytes is 64",
        ),
        // A value the template does not define is kept, so it is held to the limit too.
        (
            project_file("Fits", "Fits", json!({ "notes": ["v".repeat(70)] }), 1),
            "max-value-bytes is 64",
        ),
        (
            project_file("Fits", "Fits", json!({ long.clone(): 1 }), 1),
            "max-name-bytes is 16",
        ),
        (
            project_file("Fits", "Fits", json!({}), 3),
            "max-nodes-per-project is 3",
        ),
    ];
    for (file, flag) in cases {
        let body = app.request(import, json!({ "f": file })).await;
        assert_limit(&body, flag);
    }
    assert!(app.projects().await.is_empty(), "no project was stored");
    assert_eq!(app.query(sessions, json!({})).await, before_sessions);
    // The same file within every limit imports.
    let fits = project_file("Fits", "Fits", json!({ "summary": "short" }), 2);
    let data = app.query(import, json!({ "f": fits })).await;
    let session = str_of(&data["importProject"]["id"]);
    assert_eq!(app.graph(&session).await["nodeCount"], 3);
    assert_eq!(app.projects().await.len(), 1);
}

#[tokio::test]
async fn a_project_cannot_grow_past_max_nodes_per_project() {
    let app = App::start_with(|c| c.session.command_limits.max_nodes_per_project = 4).await;
    let (session, root) = project_with_a_workstream(&app).await;
    app.create_node(&session, Some(&root), "workstream", "Third")
        .await;
    app.create_node(&session, Some(&root), "workstream", "Fourth")
        .await;
    let before = app.graph(&session).await;
    let body = app
        .request(
            "mutation($s: ID!, $i: CreateNodeInput!) { createNode(sessionId: $s, input: $i) { version } }",
            json!({ "s": session, "i": { "parentId": root, "typeId": "workstream" } }),
        )
        .await;
    assert_limit(&body, "max-nodes-per-project is 4");
    let kit = execute_raw(
        &app,
        &session,
        json!({ "applyKit": { "targetId": root, "kitRootId": root } }),
    )
    .await;
    assert_limit(&kit, "max-nodes-per-project is 4");
    assert_eq!(app.graph(&session).await, before);
}

#[tokio::test]
async fn an_oversize_name_or_property_value_is_refused_and_changes_nothing() {
    let app = App::start().await;
    let (session, root) = app.create_project("project", "Limits").await;
    let before = app.graph(&session).await;
    let seq = app.last_seq(&session).await;
    let long_name = "n".repeat(1025);
    let body = execute_raw(
        &app,
        &session,
        json!({ "renameNode": { "nodeId": root, "name": long_name } }),
    )
    .await;
    assert_limit(&body, "max-name-bytes is 1024");
    let body = app
        .request(
            "mutation($n: String!) { createProject(templateId: \"project\", name: $n) { id } }",
            json!({ "n": long_name }),
        )
        .await;
    assert_limit(&body, "max-name-bytes is 1024");
    let big_value = "v".repeat(64 * 1024 + 1);
    let body = app
        .request(
            "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"summary\", value: $v) { version } }",
            json!({ "s": session, "n": root, "v": big_value }),
        )
        .await;
    assert_limit(&body, "max-value-bytes is 65536");
    let body = app
        .request(
            "mutation($s: ID!, $i: CreateNodeInput!) { createNode(sessionId: $s, input: $i) { version } }",
            json!({ "s": session, "i": { "parentId": root, "typeId": "workstream", "name": long_name } }),
        )
        .await;
    assert_limit(&body, "max-name-bytes is 1024");
    assert_eq!(app.graph(&session).await, before);
    assert_eq!(app.last_seq(&session).await, seq);
    assert_eq!(app.projects().await.len(), 1);
    // A value just within the limit is taken.
    let fits = "v".repeat(64 * 1024 - 2);
    app.update_property(&session, &root, "summary", json!(fits))
        .await;
}

/// `levels` fragments, each spreading the previous one twice: 2^levels fields once expanded.
fn fragment_bomb(levels: usize) -> String {
    let mut q = format!("query {{ ...F{levels} }}\nfragment F0 on Query {{ __typename }}\n");
    for i in 1..=levels {
        q.push_str(&format!(
            "fragment F{i} on Query {{ ...F{p} ...F{p} }}\n",
            p = i - 1
        ));
    }
    q
}

#[tokio::test]
async fn a_thirty_level_fragment_document_is_refused_before_validation() {
    let app = App::start().await;
    let bomb = fragment_bomb(30);
    assert!(bomb.len() < 1300, "a small document: {} bytes", bomb.len());
    // Two at once: before, two of these stopped the whole server answering.
    let (a, b) = tokio::join!(app.request(&bomb, json!({})), app.request(&bomb, json!({})));
    assert_limit(&a, "max-fields is 2000");
    assert_limit(&b, "max-fields is 2000");
    let health = app.get("/healthz").await;
    assert_eq!(health.status().as_u16(), 200);
    // Depth through spreads is bounded too: a chain of 40 single spreads.
    let mut chain = String::from("query { ...C40 }\nfragment C0 on Query { __typename }\n");
    for i in 1..=40 {
        chain.push_str(&format!("fragment C{i} on Query {{ ...C{} }}\n", i - 1));
    }
    let body = app.request(&chain, json!({})).await;
    assert_limit(&body, "max-depth is 32");
}

#[tokio::test]
async fn a_fragment_cycle_is_refused_as_bad_input_before_the_engine_recurses_on_it() {
    let app = App::start().await;
    let body = app
        .request(
            "query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
            json!({}),
        )
        .await;
    let e = first_error(&body);
    assert_eq!(code_of(&e), "BAD_USER_INPUT", "{body:#}");
}

#[tokio::test]
async fn a_thousand_schema_aliases_are_refused() {
    let app = App::start().await;
    let mut q = String::from("{");
    for i in 0..1000 {
        q.push_str(&format!(" a{i}: __schema {{ types {{ name }} }}"));
    }
    q.push('}');
    let body = app.request(&q, json!({})).await;
    let e = first_error(&body);
    assert_eq!(code_of(&e), "LIMIT_EXCEEDED", "{body:#}");
    // A playground's single introspection query still works.
    let ok = app
        .request("{ __schema { types { name fields { name } } } }", json!({}))
        .await;
    assert!(ok.get("errors").is_none(), "{ok:#}");
}

#[tokio::test]
async fn each_document_shape_limit_names_itself() {
    let app = App::start_with(|c| {
        c.limits.max_introspection_fields = 2;
        c.limits.max_aliases = 5;
        c.limits.max_fragment_spreads = 3;
    })
    .await;
    let introspection = "{ a: __schema { queryType { name } } b: __schema { queryType { name } } c: __type(name: \"Node\") { name } }";
    assert_limit(
        &app.request(introspection, json!({})).await,
        "max-introspection-fields is 2",
    );
    let aliases: String = (0..6).map(|i| format!(" t{i}: __typename")).collect();
    assert_limit(
        &app.request(&format!("{{{aliases} }}"), json!({})).await,
        "max-aliases is 5",
    );
    let spreads = "{ ...F ...F ...F ...F } fragment F on Query { __typename }";
    assert_limit(
        &app.request(spreads, json!({})).await,
        "max-fragment-spreads is 3",
    );
    let long = format!("{{ __typename }} # {}", "x".repeat(128 * 1024));
    assert_limit(
        &app.request(&long, json!({})).await,
        "max-document-bytes is 131072",
    );
}

#[tokio::test]
async fn list_fields_multiply_the_complexity_by_their_expected_length() {
    let app = App::start_with(|c| c.limits.max_complexity = 500).await;
    let (session, _root) = app.create_project("project", "Limits").await;
    // Three fields, but `nodes` counts as a thousand of them.
    let body = app
        .request(
            "query($s: ID!) { graph(sessionId: $s) { nodes { id } } }",
            json!({ "s": session }),
        )
        .await;
    assert_limit(&body, "max-complexity is 500");
    let ok = app
        .request(
            "query($s: ID!) { graph(sessionId: $s) { nodeCount roots { id } } }",
            json!({ "s": session }),
        )
        .await;
    assert!(ok.get("errors").is_none(), "{ok:#}");
}

#[tokio::test]
async fn a_response_with_more_list_items_than_max_result_items_is_refused() {
    let app = App::start_with(|c| c.limits.max_result_items = 10).await;
    let (session, root) = project_with_a_workstream(&app).await;
    for i in 0..3 {
        app.create_node(&session, Some(&root), "workstream", &format!("W{i}"))
            .await;
    }
    // Five nodes, each asking for its parent's children: quadratic in a flat graph.
    let body = app
        .request(
            "query($s: ID!) { graph(sessionId: $s) { nodes { parent { children { id } } } } }",
            json!({ "s": session }),
        )
        .await;
    assert_limit(&body, "max-result-items is 10");
    // Refused whole: none of the lists that fitted is sent.
    assert!(body["data"].is_null(), "{body:#}");
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(1), "{body:#}");
    let ok = app
        .request(
            "query($s: ID!) { graph(sessionId: $s) { nodes { id } } }",
            json!({ "s": session }),
        )
        .await;
    assert!(ok.get("errors").is_none(), "{ok:#}");
}

/// Sends GET /healthz on a raw connection; true if it was answered, false if the server closed it.
async fn healthz_on(stream: &mut tokio::net::TcpStream) -> bool {
    let request = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    match tokio::time::timeout(common::TIMEOUT, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

#[tokio::test]
async fn connections_past_max_connections_per_ip_are_closed_at_accept() {
    let app = App::start_with(|c| c.max_connections_per_ip = 2).await;
    let connect = || tokio::net::TcpStream::connect(app.addr);
    let mut first = connect().await.unwrap();
    let mut second = connect().await.unwrap();
    assert!(healthz_on(&mut first).await);
    assert!(healthz_on(&mut second).await);
    let mut third = connect().await.unwrap();
    assert!(
        !healthz_on(&mut third).await,
        "the third connection is closed"
    );
    // The first two keep being served; closing one frees its slot.
    assert!(healthz_on(&mut first).await);
    drop(second);
    let mut served = false;
    for _ in 0..100 {
        let mut again = connect().await.unwrap();
        if healthz_on(&mut again).await {
            served = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(served, "a slot is given back when a connection closes");
}

#[test]
fn a_flag_out_of_range_is_refused_by_the_binary_with_a_clear_message_and_exit_code_2() {
    let cases = [
        ("--idle-hours", "1e20"),
        ("--idle-hours", "1e13"),
        ("--idle-hours", "NaN"),
        ("--reaper-secs", "0"),
        ("--ws-timeout-secs", "99999999999"),
        ("--max-depth", "100000"),
        ("--max-batch-commands", "0"),
        ("--max-connections-per-ip", "0"),
        ("--max-http-batch", "0"),
        ("--max-http-batch", "10001"),
    ];
    for (flag, value) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_talus-tally"))
            .args(["serve", "--in-memory", "--addr", "127.0.0.1:0", flag, value])
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{flag}")),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
