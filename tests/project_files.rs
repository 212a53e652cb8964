//! Project file import and export: the project's own fixtures in the 1.0, later and current Talus Tally formats, round trips, and files that must be refused.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use talus_tally::domain::project_file::{self, Format, Imported, Orphan};
use talus_tally::domain::{
    Command, Ctx, Dispatcher, DomainError, ErrorCode, Graph, NodeId, Template,
};
use uuid::Uuid;

const BUDGET_TEMPLATE: &str = include_str!("fixtures/templates/budget.yaml");
const BUDGET_PROJECT: &str = include_str!("fixtures/projects/budget_project.json");
const GARAGE_TEMPLATE: &str = include_str!("fixtures/templates/garage.yaml");
const GARAGE_PROJECT: &str = include_str!("fixtures/projects/garage_v1.json");
const STUDIO_TEMPLATE: &str = include_str!("fixtures/templates/studio.yaml");
const STUDIO_PROJECT: &str = include_str!("fixtures/projects/studio_project.json");

fn budget_template() -> Template {
    Template::from_yaml("budget", "budget.yaml", BUDGET_TEMPLATE).unwrap()
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

const ROOT: &str = "480ca7d5-2cb2-4814-87a5-b4b0c2bcb999";
const STAGE: &str = "5344d417-ac93-4cb9-a01c-1ac713b33d2f";
const CATERING: &str = "d57fbfcd-b14d-458c-a4d6-16c304663c56";
const INES: &str = "5d2c28a1-c3b4-4d95-b328-3aa3ec1420a3";
const TOMAS: &str = "9790b0c8-6058-4d74-928f-a3bb98a16e4b";
const BUILD: &str = "e5f7cb2d-bf52-4143-9fb7-aa444aafe561";
const SOUND: &str = "1f5e2b96-29f1-4dc9-aa05-bbd6e73fe980";
const LIGHTS: &str = "01d3dd5b-1a1c-49be-afba-2ec550ecdeab";
const TASTING: &str = "f0d0a18f-cbc5-4b4a-ada6-f8f53f2fd11c";
const STAFF: &str = "a9cbed40-0e64-4ef4-94e5-826f9afa960d";

// ---------------------------------------------------------------------------
// the budget project (later format, keyed by stable uuids)

#[test]
fn the_budget_project_imports_with_all_eleven_nodes_and_their_types() {
    let imported = import_budget(&budget_project());
    let g = &imported.graph;
    assert_eq!(imported.format, Format::Graph);
    assert_eq!(g.len(), 11);
    assert_eq!(g.roots(), &[id(ROOT)]);
    let type_of = |n: &str| g.node(&id(n)).unwrap().type_id.clone();
    assert_eq!(type_of(ROOT), "project_root");
    assert_eq!(type_of(STAGE), "team");
    assert_eq!(type_of(BUILD), "task");
    assert_eq!(type_of(INES), "person");
    let count = |t: &str| g.nodes().filter(|n| n.type_id == t).count();
    assert_eq!((count("team"), count("task"), count("person")), (2, 6, 2));
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
        ["Stage", "Catering", "Ines Duarte", "Tomas Berg"]
    );
    assert_eq!(
        names(STAGE),
        ["Build the Stage", "Sound Check", "Lighting Rig"]
    );
    assert_eq!(
        names(CATERING),
        ["Menu Tasting", "Order Supplies", "Hire Staff"]
    );
    assert_eq!(
        g.node(&id(ROOT)).unwrap().children,
        vec![id(STAGE), id(CATERING), id(INES), id(TOMAS)]
    );
    assert_eq!(g.node(&id(BUILD)).unwrap().parent, Some(id(STAGE)));
    assert_eq!(imported.name.as_deref(), Some("Harbour Festival"));
}

#[test]
fn the_budget_project_keeps_every_value_under_property_ids() {
    let imported = import_budget(&budget_project());
    let g = &imported.graph;
    let props = |n: &str| g.node(&id(n)).unwrap().properties.clone();

    let root = props(ROOT);
    assert_eq!(root["name"], json!("Harbour Festival"));
    assert_eq!(root["planned"], json!("42000"));
    assert_eq!(root["spent"], json!("0"));
    assert_eq!(root.len(), 3);

    assert_eq!(props(STAGE)["state"], json!("busy"));
    assert_eq!(props(STAGE)["planned"], json!("26000"));
    assert_eq!(props(STAGE)["spent"], json!("1250.5"));

    let build = props(BUILD);
    assert_eq!(build["planned"], json!("15000"));
    assert_eq!(build["spent"], json!("1250.5"));
    assert_eq!(build["hours"], json!(160));
    assert_eq!(build["state"], json!("busy"));
    assert_eq!(build["begins"], json!("2026-05-04"));
    assert_eq!(build["ends"], json!("2026-05-29"));
    assert_eq!(build["lead"], json!(INES));
    assert_eq!(build.len(), 8);

    let lights = props(LIGHTS);
    assert_eq!(lights["state"], json!("open"));
    assert_eq!(lights["hours"], json!(40.5));
    assert!(!lights.contains_key("lead"), "no lead in the file");
    assert_eq!(props(SOUND)["lead"], json!(TOMAS));
    assert_eq!(props(TASTING)["state"], json!("closed"));
    assert_eq!(props(STAFF)["ends"], json!("2026-04-30"));

    let ines = props(INES);
    assert_eq!(ines["email"], json!("ines@example.org"));
    assert_eq!(ines["hours_per_day"], json!(7.5));
    assert_eq!(props(TOMAS)["hours_per_day"], json!(8));
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
        Some("budget")
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
                node_id: id(INES),
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
    // Node 3 is "Build the Stage"; its hours key is a5bf976e-... (stable uuid of property.task:hours).
    file["graph"]["nodes"][3]["properties"]["a5bf976e-7f0e-4fe3-0393-c9b8f2d215d3"] = json!("lots");
    let imported = import_budget(&file);
    let build = imported.graph.node(&id(BUILD)).unwrap();
    assert_eq!(build.properties["hours"], json!("lots"));
    assert_eq!(imported.warnings.len(), 1, "{:?}", imported.warnings);
    assert_eq!(imported.warnings[0].node_id, Some(id(BUILD)));
    assert!(
        imported.warnings[0].message.contains("hours"),
        "{:?}",
        imported.warnings
    );
    assert!(imported.orphaned.is_empty());
}

#[test]
fn an_explicit_name_wins_over_the_name_property_and_types_without_one_use_the_type_name() {
    let mut file = budget_project();
    file["graph"]["nodes"][1]["name"] = json!("Main Stage");
    let imported = import_budget(&file);
    assert_eq!(imported.graph.node(&id(STAGE)).unwrap().name, "Main Stage");

    let restomod_file = json!({
        "template_id": "restomod",
        "graph": {"nodes": [
            {"id": ROOT, "type": "project_root", "properties": {"vehicle": "Mustang"}, "children": [STAGE]},
            {"id": STAGE, "type": "phase", "properties": {"status": "Completed"}, "children": []}
        ]}
    });
    let imported = project_file::import(&restomod_file, &restomod(), now()).unwrap();
    let g = &imported.graph;
    assert_eq!(g.node(&id(ROOT)).unwrap().name, "Project");
    assert_eq!(g.node(&id(STAGE)).unwrap().name, "Phase");
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
        g.node(&id(STAGE)).unwrap().properties["status"],
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
    // Tomas (a person) listed under Stage, a team, which only allows tasks.
    let nodes = file["graph"]["nodes"].as_array_mut().unwrap();
    nodes[0]["children"] = json!([STAGE, CATERING, INES]);
    nodes[1]["children"]
        .as_array_mut()
        .unwrap()
        .push(json!(TOMAS));
    let imported = import_budget(&file);
    assert_eq!(
        imported.graph.node(&id(TOMAS)).unwrap().parent,
        Some(id(STAGE))
    );
    assert_eq!(imported.warnings.len(), 1);
    assert_eq!(imported.warnings[0].node_id, Some(id(TOMAS)));
}

#[test]
fn the_budget_project_survives_export_and_import() {
    let imported = import_budget(&budget_project());
    let exported = project_file::export_named(&imported.graph, "budget", imported.name.as_deref());
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
    assert!(e.message.contains(SOUND), "{}", e.message);
    // The budget project read with the restomod template: its root type matches, its team type does not.
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
        .push(json!(BUILD));
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
        e.message.contains(TOMAS) && e.message.contains("more than once"),
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

// ---------------------------------------------------------------------------
// a 1.0 project file written by hand (not by this server's export)

const EASTSIDE: &str = "0fd8aade-f16d-4167-8149-d389561e503f";
const VESPA: &str = "2e1ea779-088d-4721-8fab-53522f825bd3";
const VOLVO: &str = "14bf2c03-efa4-4e2d-b735-f0ab04f063a1";
const CARB: &str = "f9472e1d-84f5-4ed9-b752-3815a134b2b0";
const BRAKES: &str = "457f62ba-01d5-4d07-9dd0-3eb6dfdee211";
const NEEDLE: &str = "feefd15b-e143-4c09-9ebc-58cf21488541";
const GASKET: &str = "b803d446-23a6-44e8-aa61-eec68e4c12ae";
const BELT: &str = "226b6ffe-c65f-4b53-9c2e-184eb2b9a0b5";

fn garage() -> Template {
    Template::from_yaml("garage", "garage.yaml", GARAGE_TEMPLATE).unwrap()
}

fn option_id(template: &Template, type_id: &str, property: &str, name: &str) -> Value {
    let def = template
        .node_type(type_id)
        .unwrap()
        .property(property)
        .unwrap();
    json!(def.option(name).unwrap().id)
}

#[test]
fn the_1_0_garage_file_imports_with_every_node_in_order_and_its_created_at_times() {
    let template = garage();
    assert_eq!(template.alias.as_deref(), Some("garage_v1"));
    let file: Value = serde_json::from_str(GARAGE_PROJECT).unwrap();
    let imported = project_file::import(&file, &template, now()).unwrap();
    imported.graph.check_invariants().unwrap();
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
    assert!(imported.orphaned.is_empty(), "{:?}", imported.orphaned);
    let g = &imported.graph;
    assert_eq!(imported.format, Format::V1);
    assert_eq!(imported.name.as_deref(), Some("Eastside Garage, January"));
    assert_eq!(g.len(), 8);
    assert_eq!(g.roots(), &[id(EASTSIDE)]);
    let preorder: Vec<(String, String)> = g
        .preorder()
        .map(|n| (n.type_id.to_string(), n.name.clone()))
        .collect();
    let expected = [
        ("workshop", "Eastside Garage"),
        ("vehicle", "Vespa 1978"),
        ("repair", "Carburettor Rebuild"),
        ("part", "Float Needle"),
        ("part", "Gasket Set"),
        ("repair", "Brake Cables"),
        ("vehicle", "Volvo 240"),
        ("repair", "Timing Belt"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(t, n)| (t.to_string(), n.to_string()))
        .collect();
    assert_eq!(preorder, expected);
    assert_eq!(
        g.node(&id(VESPA)).unwrap().children,
        vec![id(CARB), id(BRAKES)]
    );
    assert_eq!(
        g.node(&id(CARB)).unwrap().children,
        vec![id(NEEDLE), id(GASKET)]
    );
    assert_eq!(g.node(&id(BELT)).unwrap().parent, Some(id(VOLVO)));
    let created = |n: &str| g.node(&id(n)).unwrap().created_at;
    assert_eq!(
        created(VESPA),
        Utc.with_ymd_and_hms(2026, 1, 5, 9, 10, 0).unwrap() + chrono::Duration::milliseconds(250)
    );
    // An offset is read and kept as the same instant in UTC.
    assert_eq!(
        created(BRAKES),
        Utc.with_ymd_and_hms(2026, 1, 6, 9, 0, 0).unwrap()
    );
}

#[test]
fn the_1_0_garage_file_keeps_every_value_normalised_and_select_names_become_option_ids() {
    let template = garage();
    let file: Value = serde_json::from_str(GARAGE_PROJECT).unwrap();
    let g = project_file::import(&file, &template, now()).unwrap().graph;
    let props = |n: &str| {
        let node = g.node(&id(n)).unwrap();
        let map: serde_json::Map<String, Value> = node
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Value::Object(map)
    };
    assert_eq!(
        props(EASTSIDE),
        json!({"owner": "Ruth Okafor", "opened": "2019-04-01"})
    );
    assert_eq!(
        props(VESPA),
        json!({"plate": "VS-1978", "year": 1978, "insured": true, "quote": "480.00",
               "stage": option_id(&template, "vehicle", "stage", "On the Lift")})
    );
    assert_eq!(
        props(CARB),
        json!({"urgency": option_id(&template, "repair", "urgency", "Today"), "hours": 3.5,
               "labour": "157.50", "due": "2026-02-02", "warranty": false,
               "notes": "Idles rough\nwhen cold"})
    );
    assert_eq!(
        props(NEEDLE),
        json!({"part_no": "DELL-12", "price": "8.90", "count": 2, "arrived": true})
    );
    assert_eq!(
        props(GASKET),
        json!({"part_no": "GS-44", "price": "14", "count": 1, "arrived": false})
    );
    assert_eq!(
        props(BRAKES),
        json!({"urgency": option_id(&template, "repair", "urgency", "Soon"), "hours": 1, "labour": "45"})
    );
    assert_eq!(
        props(VOLVO),
        json!({"plate": "V-240", "year": 1988, "insured": false, "quote": "1200",
               "stage": option_id(&template, "vehicle", "stage", "Waiting")})
    );
    assert_eq!(
        props(BELT),
        json!({"urgency": option_id(&template, "repair", "urgency", "Whenever"), "due": "2026-03-15"})
    );
    let total: usize = g.nodes().map(|n| n.properties.len()).sum();
    assert_eq!(total, 31);
}

#[test]
fn the_1_0_garage_file_survives_export_and_import() {
    let template = garage();
    let file: Value = serde_json::from_str(GARAGE_PROJECT).unwrap();
    let first = project_file::import(&file, &template, now()).unwrap();
    let exported = project_file::export_named(&first.graph, "garage", first.name.as_deref());
    let text = serde_json::to_string(&exported).unwrap();
    let again =
        project_file::import(&serde_json::from_str(&text).unwrap(), &template, now()).unwrap();
    assert_eq!(again.graph, first.graph);
    assert_eq!(again.name, first.name);
}

// ---------------------------------------------------------------------------
// the current format: every property type, view state beside the graph

const FILM: &str = "42562d79-57cb-4c40-981a-897418b4e1e0";
const HARBOUR: &str = "2b1713c3-7929-4c4a-b626-5aca78ca4b42";
const STORM: &str = "21e0d858-bb85-4778-a03b-d16c2c60e4e3";
const DAWN: &str = "bde68d66-b5cc-4429-af66-c8751f749e30";
const LAUNCH: &str = "e1cd637f-0fd5-4f9c-9d75-070a0b214a8a";
const WAVE: &str = "be675749-f3b8-4966-bdb9-4156858e3e34";
const CAPSIZE: &str = "f58058f5-4699-4595-b98a-c9bb89846220";
const RESCUE: &str = "abe0fe5a-7fb7-4fd2-baf8-a6d2e8b220e2";
const MIRA: &str = "eebbe5b6-773e-4a98-99eb-fb4c0e8f969a";
const JONAS: &str = "e8e0241a-583a-469a-858d-370b1012d33c";
const LEA: &str = "4eb05d04-660a-4115-a3f1-052bbc608335";
/// The stable uuid of `property.shot:artists`, the key of that property in the file.
const ARTISTS_KEY: &str = "d8b294e2-862d-d9f8-1feb-9a71e76b9e37";

fn studio() -> Template {
    Template::from_yaml("studio", "studio.yaml", STUDIO_TEMPLATE).unwrap()
}

fn studio_project() -> Value {
    serde_json::from_str(STUDIO_PROJECT).unwrap()
}

fn import_studio(file: &Value) -> Imported {
    let imported = project_file::import(file, &studio(), now()).expect("the file imports");
    imported.graph.check_invariants().unwrap();
    imported
}

#[test]
fn the_current_format_project_imports_with_every_node_type_and_order() {
    let file = studio_project();
    assert!(file.get("expanded_map").is_some() && file.get("filter_sets").is_some());
    let imported = import_studio(&file);
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
    assert!(imported.orphaned.is_empty(), "{:?}", imported.orphaned);
    assert_eq!(imported.format, Format::Graph);
    assert_eq!(imported.name.as_deref(), Some("Paper Boats"));
    let g = &imported.graph;
    assert_eq!(g.len(), 11);
    let preorder: Vec<(NodeId, String, String)> = g
        .preorder()
        .map(|n| (n.id, n.type_id.to_string(), n.name.clone()))
        .collect();
    let expected = [
        (FILM, "project_root", "Paper Boats"),
        (HARBOUR, "sequence", "Harbour"),
        (DAWN, "shot", "Dawn Pan"),
        (LAUNCH, "shot", "Boat Launch"),
        (STORM, "sequence", "Storm"),
        (WAVE, "shot", "First Wave"),
        (CAPSIZE, "shot", "Capsize"),
        (RESCUE, "shot", "Rescue"),
        (MIRA, "person", "Mira Sato"),
        (JONAS, "person", "Jonas Weber"),
        (LEA, "person", "Lea Marin"),
    ];
    let expected: Vec<(NodeId, String, String)> = expected
        .iter()
        .map(|(i, t, n)| (id(i), t.to_string(), n.to_string()))
        .collect();
    assert_eq!(preorder, expected);
}

#[test]
fn the_current_format_project_keeps_every_value_of_every_property_type() {
    let template = studio();
    let imported = import_studio(&studio_project());
    let g = &imported.graph;
    let props = |n: &str| {
        let map: serde_json::Map<String, Value> = g
            .node(&id(n))
            .unwrap()
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Value::Object(map)
    };
    assert_eq!(
        props(FILM),
        json!({"name": "Paper Boats",
               "logline": "<p>Two kids race <em>paper boats</em> across a harbour.</p>\n<p>Then the storm comes.</p>",
               "budget": "125000.00", "greenlit": true})
    );
    assert_eq!(
        props(HARBOUR),
        json!({"name": "Harbour", "mood": option_id(&template, "sequence", "mood", "Calm")})
    );
    assert_eq!(
        props(STORM),
        json!({"name": "Storm", "mood": option_id(&template, "sequence", "mood", "Tense")})
    );
    assert_eq!(
        props(DAWN),
        json!({"name": "Dawn Pan", "code": "HB-010", "frames": 240, "cost": "3200", "status": "final",
               "approved": true, "due": "2026-06-05",
               "brief": "# Dawn\n\nWide pan over the **harbour**, fog lifting.\n\n- gulls\n- one lit window",
               "supervisor": MIRA, "artists": [MIRA, JONAS], "after": [],
               "allocation": {"2026-06-01": {MIRA: 6, JONAS: 2}, "2026-06-02": {MIRA: 8}}})
    );
    assert_eq!(
        props(LAUNCH),
        json!({"name": "Boat Launch", "code": "HB-020", "frames": 180, "cost": "2750.50", "status": "wip",
               "approved": false, "due": "2026-06-12", "brief": "<p>Close on hands &amp; the boat.</p>",
               "artists": [JONAS], "after": [DAWN], "allocation": {}})
    );
    assert_eq!(
        props(WAVE),
        json!({"name": "First Wave", "code": "ST-010", "frames": 96, "cost": "5100", "status": "wip",
               "approved": false, "due": "2026-07-01", "brief": "",
               "supervisor": LEA, "artists": [LEA, MIRA], "after": [LAUNCH],
               "allocation": {"2026-06-15": {LEA: 8, MIRA: 4}}})
    );
    assert_eq!(
        props(CAPSIZE),
        json!({"name": "Capsize", "code": "ST-020", "frames": 300, "status": "todo",
               "due": "2026-07-10", "artists": [], "after": [WAVE]})
    );
    assert_eq!(
        props(RESCUE),
        json!({"name": "Rescue", "code": "ST-030", "frames": 420, "cost": "8800.25", "status": "todo",
               "approved": false, "brief": "<h2>Rescue</h2>\n<p>The lighthouse keeper's rowing boat.</p>",
               "supervisor": LEA, "artists": [LEA, JONAS, MIRA], "after": [CAPSIZE, WAVE],
               "allocation": {"2026-07-20": {JONAS: 3}}})
    );
    assert_eq!(
        props(MIRA),
        json!({"name": "Mira Sato", "email": "mira@example.org", "daily_hours": 8, "on_leave": false})
    );
    assert_eq!(
        props(JONAS),
        json!({"name": "Jonas Weber", "email": "jonas@example.org", "daily_hours": 6, "on_leave": false})
    );
    assert_eq!(
        props(LEA),
        json!({"name": "Lea Marin", "email": "lea@example.org", "daily_hours": 7.5, "on_leave": true})
    );
    let total: usize = g.nodes().map(|n| n.properties.len()).sum();
    assert_eq!(total, 73);
}

#[test]
fn the_current_format_project_survives_export_and_import() {
    let imported = import_studio(&studio_project());
    let exported = project_file::export_named(&imported.graph, "studio", imported.name.as_deref());
    let text = serde_json::to_string(&exported).unwrap();
    let again = import_studio(&serde_json::from_str(&text).unwrap());
    assert_eq!(again.format, Format::V1);
    assert_eq!(again.graph, imported.graph);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

#[test]
fn references_to_nodes_the_file_lacks_or_of_the_wrong_type_are_kept_with_a_warning() {
    let mut file = studio_project();
    // Node 3 is the shot "Dawn Pan".
    file["graph"]["nodes"][3]["properties"][ARTISTS_KEY] = json!([MIRA, A, HARBOUR]);
    let imported = import_studio(&file);
    let dawn = imported.graph.node(&id(DAWN)).unwrap();
    assert_eq!(dawn.properties["artists"], json!([MIRA, A, HARBOUR]));
    let messages: Vec<&str> = imported
        .warnings
        .iter()
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        messages,
        [
            format!("kept the value of 'artists' as it is: it references node {A}, which is not in the file"),
            format!("kept the value of 'artists' as it is: it references node {HARBOUR}, a 'sequence' rather than a 'person'"),
        ]
    );
    assert!(imported
        .warnings
        .iter()
        .all(|w| w.node_id == Some(id(DAWN))));
}
