//! Project file import and export: the real Talus Tally budget project, 1.0 round trips, and files that must be refused.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use talus_tally::domain::project_file::{self, Format, Imported, Orphan};
use talus_tally::domain::{
    Command, Ctx, Dispatcher, DomainError, ErrorCode, Graph, NodeId, Template,
};
use uuid::Uuid;

const BUDGET_TEMPLATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/templates/budget_smoke_test.yaml"
));
const BUDGET_PROJECT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/projects/budget_smoke_test_project.json"
));

fn budget_template() -> Template {
    Template::from_yaml(
        "budget_smoke_test",
        "budget_smoke_test.yaml",
        BUDGET_TEMPLATE,
    )
    .unwrap()
}

fn budget_project() -> Value {
    serde_json::from_str(BUDGET_PROJECT).unwrap()
}

fn restomod() -> Template {
    Template::from_yaml(
        "restomod",
        "restomod.yaml",
        include_str!("../templates/restomod.yaml"),
    )
    .unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 28, 15, 30, 0).unwrap()
}

fn id(text: &str) -> NodeId {
    Uuid::parse_str(text).unwrap()
}

fn import_budget(file: &Value) -> Imported {
    let imported = project_file::import(file, &budget_template(), now()).expect("the file imports");
    imported
        .graph
        .check_invariants()
        .expect("an imported graph is valid");
    imported
}

fn refused(file: &Value, template: &Template) -> DomainError {
    match project_file::import(file, template, now()) {
        Ok(imported) => panic!(
            "should have been refused, got {} nodes",
            imported.graph.len()
        ),
        Err(e) => e,
    }
}

const ROOT: &str = "c9aecf4d-4ca8-40d1-a67e-492b2e692dd2";
const ENGINEERING: &str = "11a11e89-6ff7-47a9-94ff-3f53b69d8702";
const MARKETING: &str = "a3df6ffa-e0a1-413f-8a18-63d61bff83e0";
const ALICE: &str = "4b7b7187-a20b-4468-a7fa-ef77f0b04770";
const BOB: &str = "89ab5140-9a48-4176-a375-646745c20511";
const BACKEND: &str = "fe7a0372-cb33-4a1f-993f-7fa4b9d0c939";
const FRONTEND: &str = "45a874b2-82f6-4e3e-87d2-8d38d5c6e315";
const TESTING: &str = "9e58245b-e69f-4814-9152-60ade4c87c58";
const TRADE_SHOW: &str = "76c04fae-8988-49ff-8039-29243594aa35";

// ---------------------------------------------------------------------------
// the real budget project (later format, keyed by stable uuids)

#[test]
fn the_budget_project_imports_with_all_eleven_nodes_and_their_types() {
    let imported = import_budget(&budget_project());
    let g = &imported.graph;
    assert_eq!(imported.format, Format::Graph);
    assert_eq!(g.len(), 11);
    assert_eq!(g.roots(), &[id(ROOT)]);
    let type_of = |n: &str| g.node(&id(n)).unwrap().type_id.clone();
    assert_eq!(type_of(ROOT), "project_root");
    assert_eq!(type_of(ENGINEERING), "department");
    assert_eq!(type_of(BACKEND), "task");
    assert_eq!(type_of(ALICE), "person");
    let count = |t: &str| g.nodes().filter(|n| n.type_id == t).count();
    assert_eq!(
        (count("department"), count("task"), count("person")),
        (2, 6, 2)
    );
    assert!(imported.orphaned.is_empty(), "{:?}", imported.orphaned);
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
}

#[test]
fn the_budget_project_keeps_child_order_and_takes_names_from_the_name_property() {
    let imported = import_budget(&budget_project());
    let g = &imported.graph;
    let names = |parent: &str| -> Vec<String> {
        g.node(&id(parent))
            .unwrap()
            .children
            .iter()
            .map(|c| g.node(c).unwrap().name.clone())
            .collect()
    };
    assert_eq!(
        names(ROOT),
        ["Engineering", "Marketing", "Alice Chen", "Bob Martinez"]
    );
    assert_eq!(
        names(ENGINEERING),
        [
            "Backend API Development",
            "Frontend UI Build",
            "Testing & QA"
        ]
    );
    assert_eq!(
        names(MARKETING),
        ["Campaign Design", "Social Media Launch", "Trade Show Prep"]
    );
    assert_eq!(
        g.node(&id(ROOT)).unwrap().children,
        vec![id(ENGINEERING), id(MARKETING), id(ALICE), id(BOB)]
    );
    assert_eq!(g.node(&id(BACKEND)).unwrap().parent, Some(id(ENGINEERING)));
    assert_eq!(imported.name.as_deref(), Some("Budget Smoke Test Project"));
}

#[test]
fn the_budget_project_keeps_every_value_under_property_ids() {
    let imported = import_budget(&budget_project());
    let g = &imported.graph;
    let props = |n: &str| g.node(&id(n)).unwrap().properties.clone();

    let root = props(ROOT);
    assert_eq!(root["name"], json!("Budget Smoke Test Project"));
    assert_eq!(root["estimated_cost"], json!("50000"));
    assert_eq!(root["actual_cost"], json!("0"));
    assert_eq!(root.len(), 3);

    assert_eq!(props(ENGINEERING)["status"], json!("in_progress"));
    assert_eq!(props(ENGINEERING)["estimated_cost"], json!("30000"));

    let backend = props(BACKEND);
    assert_eq!(backend["estimated_cost"], json!("12000"));
    assert_eq!(backend["actual_cost"], json!("8500"));
    assert_eq!(backend["estimated_hours"], json!(120));
    assert_eq!(backend["status"], json!("in_progress"));
    assert_eq!(backend["start_date"], json!("2025-01-20"));
    assert_eq!(backend["end_date"], json!("2025-03-15"));
    assert_eq!(backend["assigned_to"], json!(ALICE));
    assert_eq!(backend.len(), 8);

    let testing = props(TESTING);
    assert_eq!(testing["status"], json!("to_do"));
    assert!(
        !testing.contains_key("assigned_to"),
        "not assigned in the file"
    );
    assert_eq!(props(FRONTEND)["status"], json!("done"));
    assert_eq!(props(TRADE_SHOW)["end_date"], json!("2025-05-31"));

    let alice = props(ALICE);
    assert_eq!(alice["email"], json!("alice@example.com"));
    assert_eq!(alice["daily_capacity"], json!(8));
    // Every value of the file arrives: 3 + 4 + 4 + 8 + 8 + 7 + 8 + 8 + 7 + 3 + 3.
    let total: usize = g.nodes().map(|n| n.properties.len()).sum();
    assert_eq!(total, 63);
}

#[test]
fn nodes_of_the_later_format_get_the_import_time_as_created_at() {
    let imported = import_budget(&budget_project());
    assert!(imported.graph.nodes().all(|n| n.created_at == now()));
}

#[test]
fn the_template_hint_names_the_file_template() {
    assert_eq!(
        project_file::template_hint(&budget_project()).as_deref(),
        Some("budget_smoke_test")
    );
    assert_eq!(
        project_file::template_hint(
            &json!({"version": "1.0", "templates": ["restomod"], "nodes": {}})
        )
        .as_deref(),
        Some("restomod")
    );
    assert_eq!(project_file::template_hint(&json!({"nodes": {}})), None);
    assert_eq!(project_file::template_hint(&json!("nope")), None);
}

#[test]
fn values_the_template_does_not_define_are_kept_and_reported_as_orphaned() {
    let mut file = budget_project();
    file["graph"]["nodes"][0]["properties"]["legacy_code"] = json!("X-1");
    file["graph"]["nodes"][9]["properties"]["0a0b0c0d-0000-0000-0000-000000000000"] = json!(42);
    let imported = import_budget(&file);
    assert_eq!(
        imported.orphaned,
        vec![
            Orphan {
                node_id: id(ROOT),
                key: "legacy_code".into(),
                value: json!("X-1"),
            },
            Orphan {
                node_id: id(ALICE),
                key: "0a0b0c0d-0000-0000-0000-000000000000".into(),
                value: json!(42),
            },
        ]
    );
    let root = imported.graph.node(&id(ROOT)).unwrap();
    assert_eq!(root.properties["legacy_code"], json!("X-1"));
    assert_eq!(root.properties.len(), 4);
}

#[test]
fn values_that_do_not_parse_are_kept_as_they_are_with_a_warning() {
    let mut file = budget_project();
    // Node 3 is "Backend API Development"; its estimated_hours key is 8cb6d24b-...
    file["graph"]["nodes"][3]["properties"]["8cb6d24b-34bf-d30e-3ec5-2df02aec825d"] = json!("lots");
    let imported = import_budget(&file);
    let backend = imported.graph.node(&id(BACKEND)).unwrap();
    assert_eq!(backend.properties["estimated_hours"], json!("lots"));
    assert_eq!(imported.warnings.len(), 1, "{:?}", imported.warnings);
    assert_eq!(imported.warnings[0].node_id, Some(id(BACKEND)));
    assert!(
        imported.warnings[0].message.contains("estimated_hours"),
        "{:?}",
        imported.warnings
    );
    assert!(imported.orphaned.is_empty());
}

#[test]
fn an_explicit_name_wins_over_the_name_property_and_types_without_one_use_the_type_name() {
    let mut file = budget_project();
    file["graph"]["nodes"][1]["name"] = json!("R&D");
    let imported = import_budget(&file);
    assert_eq!(imported.graph.node(&id(ENGINEERING)).unwrap().name, "R&D");

    let restomod_file = json!({
        "template_id": "restomod",
        "graph": {"nodes": [
            {"id": ROOT, "type": "project_root", "properties": {"vehicle": "Mustang"}, "children": [ENGINEERING]},
            {"id": ENGINEERING, "type": "phase", "properties": {"status": "Completed"}, "children": []}
        ]}
    });
    let imported = project_file::import(&restomod_file, &restomod(), now()).unwrap();
    let g = &imported.graph;
    assert_eq!(g.node(&id(ROOT)).unwrap().name, "Project");
    assert_eq!(g.node(&id(ENGINEERING)).unwrap().name, "Phase");
    let completed = restomod()
        .node_type("phase")
        .unwrap()
        .property("status")
        .unwrap()
        .option("Completed")
        .unwrap()
        .id
        .clone();
    assert_eq!(
        g.node(&id(ENGINEERING)).unwrap().properties["status"],
        json!(completed)
    );
}

#[test]
fn a_file_made_for_another_template_imports_with_a_warning() {
    let mut file = budget_project();
    file["template_id"] = json!("budget_v2");
    let imported = import_budget(&file);
    assert_eq!(imported.warnings.len(), 1);
    assert!(imported.warnings[0].message.contains("budget_v2"));
}

#[test]
fn a_child_the_template_does_not_allow_is_kept_with_a_warning() {
    let mut file = budget_project();
    // Bob (a person) listed under Engineering, which only allows tasks.
    let nodes = file["graph"]["nodes"].as_array_mut().unwrap();
    nodes[0]["children"] = json!([ENGINEERING, MARKETING, ALICE]);
    nodes[1]["children"]
        .as_array_mut()
        .unwrap()
        .push(json!(BOB));
    let imported = import_budget(&file);
    assert_eq!(
        imported.graph.node(&id(BOB)).unwrap().parent,
        Some(id(ENGINEERING))
    );
    assert_eq!(imported.warnings.len(), 1);
    assert_eq!(imported.warnings[0].node_id, Some(id(BOB)));
}

#[test]
fn the_budget_project_survives_export_and_import() {
    let imported = import_budget(&budget_project());
    let exported = project_file::export_named(
        &imported.graph,
        "budget_smoke_test",
        imported.name.as_deref(),
    );
    let text = serde_json::to_string(&exported).unwrap();
    let again = import_budget(&serde_json::from_str(&text).unwrap());
    assert_eq!(again.format, Format::V1);
    assert_eq!(again.graph, imported.graph);
    assert_eq!(again.name, imported.name);
}

// ---------------------------------------------------------------------------
// format 1.0

/// A restomod project built through the dispatcher: two roots (out of id order), nesting, values.
fn restomod_graph() -> (Template, Graph) {
    let template = restomod();
    let mut dispatcher = Dispatcher::new(Graph::new());
    let ids = [9u128, 3, 7, 1, 5, 2, 8];
    let mut next = ids.iter().map(|i| Uuid::from_u128(*i));
    let mut new_id = move || next.next().unwrap();
    let mut t = 0i64;
    let mut run = |dispatcher: &mut Dispatcher, command: Command| {
        t += 1;
        // Sub-second times show that created_at survives to the nanosecond.
        let when = now() + chrono::Duration::nanoseconds(t * 1_000_000_123);
        let mut ctx = Ctx::new(&template, when, &mut new_id);
        dispatcher
            .execute(&command, None, Uuid::from_u128(1000 + t as u128), &mut ctx)
            .unwrap()
            .node_id
    };
    let create = |parent: Option<NodeId>, type_id: &str, name: &str, properties: Value| {
        Command::CreateNode {
            parent_id: parent,
            type_id: type_id.into(),
            name: Some(name.into()),
            properties: properties.as_object().cloned(),
            index: None,
            id: None,
        }
    };
    let mustang = run(
        &mut dispatcher,
        create(
            None,
            "project_root",
            "Mustang",
            json!({"vehicle": "1967 Mustang", "budget": "25000.00"}),
        ),
    )
    .unwrap();
    let camaro = run(
        &mut dispatcher,
        create(None, "project_root", "Camaro", json!({})),
    )
    .unwrap();
    let body = run(
        &mut dispatcher,
        create(
            Some(mustang),
            "phase",
            "Body",
            json!({"start_date": "2026-03-01"}),
        ),
    )
    .unwrap();
    let paint = run(
        &mut dispatcher,
        create(Some(body), "job", "Paint", json!({"priority": "High"})),
    )
    .unwrap();
    let sand = run(
        &mut dispatcher,
        create(
            Some(paint),
            "task",
            "Sand",
            json!({"cost": 12.5, "impact": 3}),
        ),
    )
    .unwrap();
    run(
        &mut dispatcher,
        create(
            Some(sand),
            "part",
            "Paper",
            json!({"quantity": 10, "sku": "3M-400"}),
        ),
    );
    run(
        &mut dispatcher,
        create(Some(camaro), "phase", "Engine", json!({})),
    );
    (template, dispatcher.graph().clone())
}

#[test]
fn export_writes_the_1_0_format_with_roots_in_order() {
    let (_, graph) = restomod_graph();
    let file = project_file::export_named(&graph, "restomod", Some("Garage"));
    assert_eq!(file["version"], "1.0");
    assert_eq!(file["templates"], json!(["restomod"]));
    assert_eq!(file["name"], "Garage");
    let mustang = Uuid::from_u128(9).to_string();
    let body = Uuid::from_u128(7).to_string();
    assert_eq!(
        file["roots"],
        json!([mustang, Uuid::from_u128(3).to_string()])
    );
    let nodes = file["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 7);
    let node = &nodes[&mustang];
    let mut keys: Vec<&str> = node
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "children",
            "created_at",
            "id",
            "name",
            "parent_id",
            "properties",
            "type"
        ]
    );
    assert_eq!(node["type"], "project_root");
    assert_eq!(node["name"], "Mustang");
    assert_eq!(node["parent_id"], Value::Null);
    assert_eq!(node["children"], json!([body]));
    assert_eq!(
        node["properties"],
        json!({"vehicle": "1967 Mustang", "budget": "25000.00"})
    );
    assert_eq!(node["created_at"], "2026-01-28T15:30:01.000000123Z");
    assert_eq!(nodes[&body]["parent_id"], json!(mustang));
    assert!(project_file::export(&graph, "restomod")
        .get("name")
        .is_none());
}

#[test]
fn a_1_0_export_imports_back_to_an_equal_graph() {
    let (template, graph) = restomod_graph();
    let file = project_file::export_named(&graph, "restomod", Some("Garage"));
    let text = serde_json::to_string_pretty(&file).unwrap();
    let imported =
        project_file::import(&serde_json::from_str(&text).unwrap(), &template, now()).unwrap();
    assert_eq!(imported.format, Format::V1);
    assert_eq!(imported.graph, graph);
    assert_eq!(imported.name.as_deref(), Some("Garage"));
    assert!(imported.orphaned.is_empty() && imported.warnings.is_empty());
}

#[test]
fn a_1_0_file_without_roots_takes_the_parentless_nodes_and_without_a_name_the_first_root_name() {
    let (template, graph) = restomod_graph();
    let mut file = project_file::export(&graph, "restomod");
    file.as_object_mut().unwrap().remove("roots");
    let imported = project_file::import(&file, &template, now()).unwrap();
    imported.graph.check_invariants().unwrap();
    let mut roots = imported.graph.roots().to_vec();
    roots.sort();
    assert_eq!(roots, [Uuid::from_u128(3), Uuid::from_u128(9)]);
    assert_eq!(imported.graph.len(), graph.len());
    let first = imported
        .graph
        .node(&imported.graph.roots()[0])
        .unwrap()
        .name
        .clone();
    assert_eq!(imported.name, Some(first));
}

#[test]
fn a_1_0_file_keeps_orphaned_and_unparsable_values_through_a_round_trip() {
    let (template, graph) = restomod_graph();
    let mut file = project_file::export(&graph, "restomod");
    let sand = Uuid::from_u128(5).to_string();
    file["nodes"][&sand]["properties"]["hours_logged"] = json!(4.5);
    file["nodes"][&sand]["properties"]["effort"] = json!("a lot");
    let first = project_file::import(&file, &template, now()).unwrap();
    assert_eq!(first.orphaned.len(), 1);
    assert_eq!(first.orphaned[0].key, "hours_logged");
    assert_eq!(first.warnings.len(), 1);
    let props = &first.graph.node(&Uuid::from_u128(5)).unwrap().properties;
    assert_eq!(props["hours_logged"], json!(4.5));
    assert_eq!(props["effort"], json!("a lot"));

    let second = project_file::import(
        &project_file::export(&first.graph, "restomod"),
        &template,
        now(),
    )
    .unwrap();
    assert_eq!(second.graph, first.graph);
    assert_eq!(second.orphaned, first.orphaned);
}

#[test]
fn an_empty_1_0_file_imports_as_an_empty_graph() {
    let imported = project_file::import(
        &json!({"version": "1.0", "templates": ["restomod"], "nodes": {}}),
        &restomod(),
        now(),
    )
    .unwrap();
    assert!(imported.graph.is_empty());
    assert_eq!(imported.name, None);
}

// ---------------------------------------------------------------------------
// files that are refused

fn v1(nodes: Value) -> Value {
    json!({"version": "1.0", "templates": ["restomod"], "nodes": nodes})
}

fn v1_node(id: &str, type_id: &str, children: &[&str], parent: Option<&str>) -> Value {
    json!({"id": id, "type": type_id, "name": type_id, "created_at": "2026-01-01T00:00:00Z",
           "properties": {}, "children": children, "parent_id": parent})
}

const A: &str = "00000000-0000-0000-0000-00000000000a";
const B: &str = "00000000-0000-0000-0000-00000000000b";
const C: &str = "00000000-0000-0000-0000-00000000000c";

#[test]
fn a_file_that_is_not_an_object_is_refused() {
    let e = refused(&json!([1, 2]), &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(e.message.contains("JSON object"), "{}", e.message);
}

#[test]
fn a_file_of_an_unknown_shape_or_version_is_refused() {
    let e = refused(&json!({"project": {}}), &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(
        e.message.contains("not a Talus Tally project file"),
        "{}",
        e.message
    );
    let e = refused(&json!({"version": "2.0", "nodes": {}}), &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(e.message.contains("2.0"), "{}", e.message);
    let e = refused(&json!({"version": "1.0", "nodes": []}), &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    let e = refused(&json!({"graph": {"nodes": {}}}), &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
}

#[test]
fn a_node_of_a_type_the_template_lacks_is_refused_with_node_type_not_found() {
    let mut file = budget_project();
    file["graph"]["nodes"][4]["type"] = json!("00000000-0000-0000-0000-000000000001");
    let e = refused(&file, &budget_template());
    assert_eq!(e.code, ErrorCode::NodeTypeNotFound);
    assert!(e.message.contains(FRONTEND), "{}", e.message);
    // The budget project read with the restomod template: no type matches.
    let e = refused(&budget_project(), &restomod());
    assert_eq!(e.code, ErrorCode::NodeTypeNotFound);
}

#[test]
fn a_dangling_child_id_is_refused() {
    let mut file = budget_project();
    file["graph"]["nodes"][1]["children"]
        .as_array_mut()
        .unwrap()
        .push(json!(A));
    let e = refused(&file, &budget_template());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(
        e.message.contains(A) && e.message.contains("not in the file"),
        "{}",
        e.message
    );
}

#[test]
fn a_child_listed_twice_is_refused() {
    let mut file = budget_project();
    file["graph"]["nodes"][2]["children"]
        .as_array_mut()
        .unwrap()
        .push(json!(BACKEND));
    let e = refused(&file, &budget_template());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(e.message.contains("twice"), "{}", e.message);

    let e = refused(
        &v1(json!({A: v1_node(A, "phase", &[B, B], None), B: v1_node(B, "job", &[], Some(A))})),
        &restomod(),
    );
    assert!(e.message.contains("twice"), "{}", e.message);
}

#[test]
fn children_lists_that_form_a_cycle_are_refused() {
    let file = json!({"graph": {"nodes": [
        {"id": C, "type": "project_root", "children": []},
        {"id": A, "type": "job", "children": [B]},
        {"id": B, "type": "task", "children": [A]}
    ]}});
    let e = refused(&file, &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(e.message.contains("cycle"), "{}", e.message);
    let own_child = json!({"graph": {"nodes": [{"id": A, "type": "job", "children": [A]}]}});
    assert!(refused(&own_child, &restomod()).message.contains("cycle"));
}

#[test]
fn duplicate_node_ids_are_refused() {
    let mut file = budget_project();
    let copy = file["graph"]["nodes"][10].clone();
    file["graph"]["nodes"].as_array_mut().unwrap().push(copy);
    let e = refused(&file, &budget_template());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(
        e.message.contains(BOB) && e.message.contains("more than once"),
        "{}",
        e.message
    );

    let e = refused(
        &v1(json!({A: v1_node(B, "phase", &[], None), B: v1_node(B, "phase", &[], None)})),
        &restomod(),
    );
    assert_eq!(e.code, ErrorCode::BadUserInput);
}

#[test]
fn ids_that_are_not_uuids_are_refused() {
    let file =
        json!({"graph": {"nodes": [{"id": "root-1", "type": "project_root", "children": []}]}});
    let e = refused(&file, &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(e.message.contains("root-1"), "{}", e.message);
}

#[test]
fn a_parent_id_that_disagrees_with_the_children_lists_is_refused() {
    let file = v1(
        json!({A: v1_node(A, "phase", &[B], None), B: v1_node(B, "job", &[], Some(C)), C: v1_node(C, "phase", &[], None)}),
    );
    let e = refused(&file, &restomod());
    assert_eq!(e.code, ErrorCode::BadUserInput);
    assert!(e.message.contains("says its parent is"), "{}", e.message);
}

#[test]
fn roots_that_name_a_child_or_an_unknown_node_are_refused() {
    let mut file =
        v1(json!({A: v1_node(A, "phase", &[B], None), B: v1_node(B, "job", &[], Some(A))}));
    file["roots"] = json!([A, B]);
    assert_eq!(refused(&file, &restomod()).code, ErrorCode::BadUserInput);
    file["roots"] = json!([A, C]);
    assert_eq!(refused(&file, &restomod()).code, ErrorCode::BadUserInput);
    file["roots"] = json!([A]);
    assert!(project_file::import(&file, &restomod(), now()).is_ok());
}
