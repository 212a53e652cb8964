//! Given/when/then tests of every command, every domain error code, and the dispatcher's undo, redo, revert and replay.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};
use talus_tally::domain::history::Revert;
use talus_tally::domain::{
    Applied, Command, Ctx, Delta, Dispatcher, DomainError, ErrorCode, Graph, NodeId, Op, Template,
};
use uuid::Uuid;

fn restomod() -> Template {
    Template::from_yaml(
        "restomod",
        "restomod.yaml",
        include_str!("../templates/restomod.yaml"),
    )
    .expect("the built-in restomod template loads")
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 28, 15, 30, 0).unwrap()
}

/// A dispatcher over the restomod template with deterministic node ids, command ids and clock.
struct World {
    template: Template,
    dispatcher: Dispatcher,
    next_node: u128,
    next_command: u128,
    now: DateTime<Utc>,
    ops: Vec<Op>,
}

impl World {
    fn new() -> Self {
        World {
            template: restomod(),
            dispatcher: Dispatcher::new(Graph::new()),
            next_node: 0,
            next_command: 0,
            now: now(),
            ops: Vec::new(),
        }
    }

    fn graph(&self) -> &Graph {
        self.dispatcher.graph()
    }

    fn try_exec_at(
        &mut self,
        command: Command,
        expected_version: Option<u64>,
    ) -> Result<Applied, DomainError> {
        let World {
            template,
            dispatcher,
            next_node,
            next_command,
            now,
            ops,
        } = self;
        *next_command += 1;
        let command_id = Uuid::from_u128((1 << 100) | *next_command);
        let mut new_id = || {
            *next_node += 1;
            Uuid::from_u128(*next_node)
        };
        let mut ctx = Ctx::new(template, *now, &mut new_id);
        let applied = dispatcher.execute(&command, expected_version, command_id, &mut ctx)?;
        ops.push(applied.op.clone());
        Ok(applied)
    }

    fn try_exec(&mut self, command: Command) -> Result<Applied, DomainError> {
        self.try_exec_at(command, None)
    }

    fn exec(&mut self, command: Command) -> Applied {
        let what = format!("{command:?}");
        self.try_exec(command)
            .unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
    }

    /// Runs a command that must fail, checks it changed nothing, and returns the error.
    fn fails(&mut self, command: Command) -> DomainError {
        let before = self.dispatcher.clone();
        let what = format!("{command:?}");
        let error = match self.try_exec(command) {
            Ok(_) => panic!("{what} should have failed"),
            Err(e) => e,
        };
        assert_eq!(
            self.dispatcher, before,
            "a failed command changed the dispatcher"
        );
        error
    }

    fn undo(&mut self) -> Applied {
        let applied = self.dispatcher.undo().expect("undo");
        self.ops.push(applied.op.clone());
        applied
    }

    fn redo(&mut self) -> Applied {
        let applied = self.dispatcher.redo().expect("redo");
        self.ops.push(applied.op.clone());
        applied
    }

    fn create(&mut self, parent: Option<NodeId>, type_id: &str, name: &str) -> NodeId {
        self.exec(create(parent, type_id, Some(name)))
            .node_id
            .expect("createNode reports the new node")
    }

    /// project_root "Mustang" > phase "Body" > job "Paint" > task "Sand" > part "Paper".
    fn tree(&mut self) -> Tree {
        let project = self.create(None, "project_root", "Mustang");
        let phase = self.create(Some(project), "phase", "Body");
        let job = self.create(Some(phase), "job", "Paint");
        let task = self.create(Some(job), "task", "Sand");
        let part = self.create(Some(task), "part", "Paper");
        Tree {
            project,
            phase,
            job,
            task,
            part,
        }
    }

    fn children(&self, id: NodeId) -> Vec<NodeId> {
        self.graph().node(&id).unwrap().children.clone()
    }

    fn names(&self, ids: &[NodeId]) -> Vec<String> {
        ids.iter()
            .map(|id| self.graph().node(id).unwrap().name.clone())
            .collect()
    }

    fn prop(&self, id: NodeId, property: &str) -> Option<Value> {
        self.graph()
            .node(&id)
            .unwrap()
            .properties
            .get(property)
            .cloned()
    }

    fn check(&self) {
        self.graph().check_invariants().expect("invariants hold");
    }
}

struct Tree {
    project: NodeId,
    phase: NodeId,
    job: NodeId,
    task: NodeId,
    part: NodeId,
}

fn create(parent_id: Option<NodeId>, type_id: &str, name: Option<&str>) -> Command {
    Command::CreateNode {
        parent_id,
        type_id: type_id.into(),
        name: name.map(str::to_string),
        properties: None,
        index: None,
        id: None,
    }
}

fn create_at(parent_id: NodeId, type_id: &str, name: &str, index: usize) -> Command {
    Command::CreateNode {
        parent_id: Some(parent_id),
        type_id: type_id.into(),
        name: Some(name.into()),
        properties: None,
        index: Some(index),
        id: None,
    }
}

fn create_with(parent_id: NodeId, type_id: &str, properties: Value) -> Command {
    let Value::Object(properties) = properties else {
        panic!("properties must be an object")
    };
    Command::CreateNode {
        parent_id: Some(parent_id),
        type_id: type_id.into(),
        name: None,
        properties: Some(properties),
        index: None,
        id: None,
    }
}

fn update(node_id: NodeId, property_id: &str, value: Value) -> Command {
    Command::UpdateProperty {
        node_id,
        property_id: property_id.into(),
        value,
    }
}

fn rename(node_id: NodeId, name: &str) -> Command {
    Command::RenameNode {
        node_id,
        name: name.into(),
    }
}

fn move_to(node_id: NodeId, new_parent_id: NodeId, index: Option<usize>) -> Command {
    Command::MoveNode {
        node_id,
        new_parent_id,
        index,
    }
}

fn link(parent_id: NodeId, child_id: NodeId, index: Option<usize>) -> Command {
    Command::LinkNode {
        parent_id,
        child_id,
        index,
    }
}

fn unlink(parent_id: NodeId, child_id: NodeId) -> Command {
    Command::UnlinkNode {
        parent_id,
        child_id,
    }
}

fn missing() -> NodeId {
    Uuid::from_u128(0xdead)
}

fn assert_code(error: &DomainError, code: ErrorCode) {
    assert_eq!(error.code, code, "unexpected error: {}", error.message);
    assert!(!error.message.is_empty());
}

// ---------------------------------------------------------------------------
// createNode

#[test]
fn create_node_adds_a_root_named_after_its_type_with_initial_properties() {
    let mut w = World::new();
    let applied = w.exec(create(None, "project_root", None));
    let id = applied.node_id.unwrap();
    assert_eq!(id, Uuid::from_u128(1), "ids come from the context");
    assert_eq!(applied.version, 1);
    assert_eq!(applied.command_type, "createNode");
    assert_eq!(w.graph().roots(), &[id]);
    let node = w.graph().node(&id).unwrap();
    assert_eq!(node.name, "Project");
    assert_eq!(node.type_id, "project_root");
    assert_eq!(node.created_at, now());
    assert_eq!(node.parent, None);
    assert!(matches!(
        &applied.deltas[..],
        [Delta::NodeCreated {
            parent_id: None,
            index: 0,
            ..
        }]
    ));
    w.check();
}

#[test]
fn create_node_gives_a_select_its_first_option_and_a_number_its_default() {
    let mut w = World::new();
    let t = w.tree();
    let part_type = w.template.node_type("part").unwrap().clone();
    let first_option = &part_type.property("status").unwrap().options[0];
    assert_eq!(w.prop(t.part, "status"), Some(json!(first_option.id)));
    assert_eq!(w.prop(t.part, "quantity"), Some(json!(1)));
    assert_eq!(w.prop(t.part, "sku"), None);
}

#[test]
fn create_node_inserts_at_the_given_index_among_the_siblings() {
    let mut w = World::new();
    let t = w.tree();
    let last = w.create(Some(t.project), "phase", "Paint");
    let first = w
        .exec(create_at(t.project, "phase", "Teardown", 0))
        .node_id
        .unwrap();
    let middle = w
        .exec(create_at(t.project, "phase", "Engine", 2))
        .node_id
        .unwrap();
    assert_eq!(w.children(t.project), vec![first, t.phase, middle, last]);
    assert_eq!(w.graph().node(&middle).unwrap().parent, Some(t.project));
    w.check();
}

#[test]
fn create_node_with_a_client_chosen_id_uses_that_id() {
    let mut w = World::new();
    let chosen = Uuid::from_u128(0xabc);
    let applied = w.exec(Command::CreateNode {
        parent_id: None,
        type_id: "project_root".into(),
        name: Some("  Camaro  ".into()),
        properties: None,
        index: None,
        id: Some(chosen),
    });
    assert_eq!(applied.node_id, Some(chosen));
    assert_eq!(
        w.graph().node(&chosen).unwrap().name,
        "Camaro",
        "names are trimmed"
    );
}

#[test]
fn create_node_normalises_the_given_properties() {
    let mut w = World::new();
    let t = w.tree();
    let id = w
        .exec(create_with(
            t.job,
            "task",
            json!({"impact": "12", "cost": 12.5, "status": "Blocked", "notes": "rusty"}),
        ))
        .node_id
        .unwrap();
    assert_eq!(w.prop(id, "impact"), Some(json!(12)));
    assert_eq!(w.prop(id, "cost"), Some(json!("12.5")));
    let blocked = w
        .template
        .node_type("task")
        .unwrap()
        .property("status")
        .unwrap()
        .option("Blocked")
        .unwrap()
        .id
        .clone();
    assert_eq!(w.prop(id, "status"), Some(json!(blocked)));
    assert_eq!(w.prop(id, "notes"), Some(json!("rusty")));
}

#[test]
fn create_node_with_an_unknown_type_fails_with_node_type_not_found() {
    let mut w = World::new();
    let e = w.fails(create(None, "spaceship", None));
    assert_code(&e, ErrorCode::NodeTypeNotFound);
    assert!(e.message.contains("spaceship"), "{}", e.message);
}

#[test]
fn create_node_under_a_missing_parent_fails_with_node_not_found() {
    let mut w = World::new();
    w.tree();
    let e = w.fails(create(Some(missing()), "phase", None));
    assert_code(&e, ErrorCode::NodeNotFound);
}

#[test]
fn create_node_with_an_existing_id_fails_with_duplicate_id() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(Command::CreateNode {
        parent_id: Some(t.project),
        type_id: "phase".into(),
        name: None,
        properties: None,
        index: None,
        id: Some(t.phase),
    });
    assert_code(&e, ErrorCode::DuplicateId);
}

#[test]
fn create_node_of_a_type_the_parent_does_not_allow_fails_naming_the_allowed_types() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(create(Some(t.project), "part", None));
    assert_code(&e, ErrorCode::ChildNotAllowed);
    assert!(e.message.contains("allowed: phase"), "{}", e.message);
    let e = w.fails(create(Some(t.part), "part", None));
    assert_code(&e, ErrorCode::ChildNotAllowed);
    assert!(e.message.contains("allowed: none"), "{}", e.message);
}

#[test]
fn create_node_past_the_last_position_fails_with_index_out_of_range() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(create_at(t.project, "phase", "Late", 2));
    assert_code(&e, ErrorCode::IndexOutOfRange);
    let ok = w.exec(create_at(t.project, "phase", "Last", 1));
    assert_eq!(w.children(t.project)[1], ok.node_id.unwrap());
}

#[test]
fn create_node_with_an_unknown_property_fails_with_unknown_property() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(create_with(t.job, "task", json!({"colour": "red"})));
    assert_code(&e, ErrorCode::UnknownProperty);
    assert!(e.message.contains("colour"), "{}", e.message);
}

#[test]
fn create_node_with_an_invalid_property_value_fails_with_invalid_property_value() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(create_with(t.job, "task", json!({"impact": "lots"})));
    assert_code(&e, ErrorCode::InvalidPropertyValue);
}

#[test]
fn create_node_with_a_blank_name_fails_with_bad_user_input() {
    let mut w = World::new();
    let e = w.fails(create(None, "project_root", Some("   ")));
    assert_code(&e, ErrorCode::BadUserInput);
}

// ---------------------------------------------------------------------------
// deleteNode

#[test]
fn delete_node_removes_the_whole_subtree() {
    let mut w = World::new();
    let t = w.tree();
    let applied = w.exec(Command::DeleteNode { node_id: t.job });
    assert_eq!(
        applied.deltas,
        vec![Delta::NodeDeleted {
            node_id: t.job,
            parent_id: Some(t.phase),
            deleted_ids: vec![t.job, t.task, t.part],
        }]
    );
    for gone in [t.job, t.task, t.part] {
        assert!(!w.graph().contains(&gone));
    }
    assert!(w.children(t.phase).is_empty());
    assert_eq!(w.graph().len(), 2);
    w.check();
}

#[test]
fn delete_node_of_a_missing_node_fails_with_node_not_found() {
    let mut w = World::new();
    w.tree();
    let e = w.fails(Command::DeleteNode { node_id: missing() });
    assert_code(&e, ErrorCode::NodeNotFound);
}

#[test]
fn undo_after_delete_restores_the_subtree_at_the_same_index_exactly() {
    let mut w = World::new();
    let t = w.tree();
    let before_phase = w
        .exec(create_at(t.project, "phase", "Teardown", 0))
        .node_id
        .unwrap();
    let after_phase = w.create(Some(t.project), "phase", "Detail");
    let second_task = w.create(Some(t.job), "task", "Prime");
    let second_part = w.create(Some(t.task), "part", "Filler");
    w.exec(update(t.task, "notes", json!("wet sand only")));
    w.exec(update(second_part, "cost", json!("19.99")));
    // A later clock shows that undo restores the recorded created_at, not "now".
    w.now = now() + chrono::Duration::hours(5);
    let before = w.graph().clone();
    assert_eq!(
        w.children(t.project),
        vec![before_phase, t.phase, after_phase]
    );

    w.exec(Command::DeleteNode { node_id: t.phase });
    assert_eq!(w.children(t.project), vec![before_phase, after_phase]);
    w.undo();

    assert_eq!(w.graph(), &before);
    assert_eq!(
        w.children(t.project),
        vec![before_phase, t.phase, after_phase]
    );
    assert_eq!(w.children(t.job), vec![t.task, second_task]);
    assert_eq!(w.children(t.task), vec![t.part, second_part]);
    assert_eq!(w.names(&w.children(t.task)), ["Paper", "Filler"]);
    assert_eq!(w.prop(t.task, "notes"), Some(json!("wet sand only")));
    assert_eq!(w.prop(second_part, "cost"), Some(json!("19.99")));
    assert_eq!(w.graph().node(&t.part).unwrap().created_at, now());
    w.check();
}

// ---------------------------------------------------------------------------
// renameNode

#[test]
fn rename_node_changes_the_name_and_undo_restores_it() {
    let mut w = World::new();
    let t = w.tree();
    let applied = w.exec(rename(t.job, " Respray "));
    assert_eq!(
        applied.deltas,
        vec![Delta::NodeRenamed {
            node_id: t.job,
            old_name: "Paint".into(),
            new_name: "Respray".into(),
        }]
    );
    assert_eq!(w.names(&[t.job]), ["Respray"]);
    w.undo();
    assert_eq!(w.names(&[t.job]), ["Paint"]);
}

#[test]
fn rename_node_to_a_blank_name_fails_with_bad_user_input() {
    let mut w = World::new();
    let t = w.tree();
    assert_code(&w.fails(rename(t.job, "")), ErrorCode::BadUserInput);
}

#[test]
fn rename_node_of_a_missing_node_fails_with_node_not_found() {
    let mut w = World::new();
    assert_code(&w.fails(rename(missing(), "x")), ErrorCode::NodeNotFound);
}

// ---------------------------------------------------------------------------
// updateProperty and deleteProperty

#[test]
fn update_property_stores_the_normalised_value_and_records_the_old_one() {
    let mut w = World::new();
    let t = w.tree();
    let applied = w.exec(update(t.task, "estimated_hours", json!("7.0")));
    assert_eq!(
        applied.deltas,
        vec![Delta::PropertyChanged {
            node_id: t.task,
            property_id: "estimated_hours".into(),
            old_value: None,
            new_value: Some(json!(7)),
        }]
    );
    w.exec(update(t.phase, "start_date", json!("2024-02-29")));
    assert_eq!(w.prop(t.phase, "start_date"), Some(json!("2024-02-29")));
    w.exec(update(t.project, "budget", json!("50000.00")));
    assert_eq!(w.prop(t.project, "budget"), Some(json!("50000.00")));
}

#[test]
fn update_property_with_null_clears_the_value() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(update(t.task, "notes", json!("x")));
    w.exec(update(t.task, "notes", Value::Null));
    assert_eq!(w.prop(t.task, "notes"), None);
}

#[test]
fn update_property_of_an_undefined_property_fails_with_unknown_property_listing_the_known_ones() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(update(t.part, "weight", json!(3)));
    assert_code(&e, ErrorCode::UnknownProperty);
    assert!(e.message.contains("sku"), "{}", e.message);
}

#[test]
fn update_property_with_a_value_of_the_wrong_kind_fails_with_invalid_property_value() {
    let mut w = World::new();
    let t = w.tree();
    for (property, value) in [
        ("start_date", json!("2025-02-30")),
        ("start_date", json!("tomorrow")),
        ("status", json!("Exploded")),
    ] {
        let e = w.fails(update(t.phase, property, value));
        assert_code(&e, ErrorCode::InvalidPropertyValue);
    }
    let e = w.fails(update(t.task, "cost", json!("12,50")));
    assert_code(&e, ErrorCode::InvalidPropertyValue);
}

#[test]
fn update_property_of_a_missing_node_fails_with_node_not_found() {
    let mut w = World::new();
    assert_code(
        &w.fails(update(missing(), "notes", json!("x"))),
        ErrorCode::NodeNotFound,
    );
}

#[test]
fn delete_property_clears_a_value_and_undo_brings_it_back() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(update(t.part, "sku", json!("3M-400")));
    w.exec(Command::DeleteProperty {
        node_id: t.part,
        property_id: "sku".into(),
    });
    assert_eq!(w.prop(t.part, "sku"), None);
    w.undo();
    assert_eq!(w.prop(t.part, "sku"), Some(json!("3M-400")));
}

#[test]
fn delete_property_of_an_undefined_property_fails_with_unknown_property() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(Command::DeleteProperty {
        node_id: t.part,
        property_id: "weight".into(),
    });
    assert_code(&e, ErrorCode::UnknownProperty);
}

// ---------------------------------------------------------------------------
// linkNode and unlinkNode

#[test]
fn unlink_node_makes_the_child_the_last_root_and_link_node_puts_it_back() {
    let mut w = World::new();
    let t = w.tree();
    let other = w.create(Some(t.project), "phase", "Engine");
    let applied = w.exec(unlink(t.project, t.phase));
    assert!(matches!(
        applied.deltas[..],
        [Delta::NodeUnlinked { root_index: 1, .. }]
    ));
    assert_eq!(w.graph().roots(), &[t.project, t.phase]);
    assert_eq!(w.graph().node(&t.phase).unwrap().parent, None);
    w.check();

    w.exec(link(t.project, t.phase, Some(1)));
    assert_eq!(w.children(t.project), vec![other, t.phase]);
    assert_eq!(w.graph().roots(), &[t.project]);
    w.check();
}

#[test]
fn unlink_node_of_a_node_that_is_not_the_child_fails_with_not_a_child() {
    let mut w = World::new();
    let t = w.tree();
    assert_code(&w.fails(unlink(t.project, t.job)), ErrorCode::NotAChild);
    assert_code(
        &w.fails(unlink(t.project, missing())),
        ErrorCode::NodeNotFound,
    );
}

#[test]
fn link_node_of_a_node_with_a_parent_fails_with_already_has_parent() {
    let mut w = World::new();
    let t = w.tree();
    let other = w.create(Some(t.project), "phase", "Engine");
    let e = w.fails(link(other, t.job, None));
    assert_code(&e, ErrorCode::AlreadyHasParent);
}

#[test]
fn link_node_under_its_own_descendant_fails_with_cycle() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(link(t.task, t.project, None));
    assert_code(&e, ErrorCode::Cycle);
    let e = w.fails(link(t.project, t.project, None));
    assert_code(&e, ErrorCode::Cycle);
}

#[test]
fn link_node_past_the_last_position_fails_with_index_out_of_range() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(unlink(t.phase, t.job));
    let e = w.fails(link(t.phase, t.job, Some(1)));
    assert_code(&e, ErrorCode::IndexOutOfRange);
}

#[test]
fn link_node_of_a_type_the_parent_does_not_allow_fails_with_child_not_allowed() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(unlink(t.job, t.task));
    let e = w.fails(link(t.phase, t.task, None));
    assert_code(&e, ErrorCode::ChildNotAllowed);
    assert!(e.message.contains("allowed: job"), "{}", e.message);
}

#[test]
fn link_node_of_a_missing_node_fails_with_node_not_found() {
    let mut w = World::new();
    let t = w.tree();
    assert_code(
        &w.fails(link(t.phase, missing(), None)),
        ErrorCode::NodeNotFound,
    );
    assert_code(
        &w.fails(link(missing(), t.project, None)),
        ErrorCode::NodeNotFound,
    );
}

// ---------------------------------------------------------------------------
// moveNode and reorderNode

#[test]
fn move_node_moves_the_subtree_under_the_new_parent_at_the_index() {
    let mut w = World::new();
    let t = w.tree();
    let engine = w.create(Some(t.project), "phase", "Engine");
    let rebuild = w.create(Some(engine), "job", "Rebuild");
    let applied = w.exec(move_to(t.job, engine, Some(0)));
    assert_eq!(
        applied.deltas,
        vec![Delta::NodeMoved {
            node_id: t.job,
            old_parent_id: Some(t.phase),
            new_parent_id: Some(engine),
            index: 0,
        }]
    );
    assert_eq!(w.children(engine), vec![t.job, rebuild]);
    assert!(w.children(t.phase).is_empty());
    assert_eq!(w.children(t.job), vec![t.task], "the subtree moves along");
    w.check();
    w.undo();
    assert_eq!(w.children(t.phase), vec![t.job]);
    assert_eq!(w.children(engine), vec![rebuild]);
}

#[test]
fn move_node_of_a_root_attaches_it() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(unlink(t.phase, t.job));
    w.exec(move_to(t.job, t.phase, None));
    assert_eq!(w.graph().roots(), &[t.project]);
    assert_eq!(w.children(t.phase), vec![t.job]);
}

#[test]
fn move_node_under_itself_fails_with_cycle() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(move_to(t.job, t.job, None));
    assert_code(&e, ErrorCode::Cycle);
    assert!(e.message.contains("itself"), "{}", e.message);
}

#[test]
fn move_node_under_its_descendant_fails_with_cycle() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(move_to(t.phase, t.task, None));
    assert_code(&e, ErrorCode::Cycle);
    assert!(e.message.contains("descendant"), "{}", e.message);
}

#[test]
fn move_node_within_the_same_parent_counts_positions_without_the_node() {
    let mut w = World::new();
    let t = w.tree();
    let b = w.create(Some(t.project), "phase", "B");
    let c = w.create(Some(t.project), "phase", "C");
    w.exec(move_to(t.phase, t.project, Some(2)));
    assert_eq!(w.children(t.project), vec![b, c, t.phase]);
    let e = w.fails(move_to(t.phase, t.project, Some(3)));
    assert_code(&e, ErrorCode::IndexOutOfRange);
}

#[test]
fn move_node_past_the_last_position_fails_with_index_out_of_range() {
    let mut w = World::new();
    let t = w.tree();
    let engine = w.create(Some(t.project), "phase", "Engine");
    let e = w.fails(move_to(t.job, engine, Some(1)));
    assert_code(&e, ErrorCode::IndexOutOfRange);
}

#[test]
fn move_node_under_a_parent_that_does_not_allow_it_fails_with_child_not_allowed() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(move_to(t.part, t.job, None));
    assert_code(&e, ErrorCode::ChildNotAllowed);
    assert!(e.message.contains("allowed: task"), "{}", e.message);
}

#[test]
fn move_node_of_a_missing_node_fails_with_node_not_found() {
    let mut w = World::new();
    let t = w.tree();
    assert_code(
        &w.fails(move_to(missing(), t.phase, None)),
        ErrorCode::NodeNotFound,
    );
    assert_code(
        &w.fails(move_to(t.job, missing(), None)),
        ErrorCode::NodeNotFound,
    );
}

#[test]
fn reorder_node_moves_a_node_among_its_siblings() {
    let mut w = World::new();
    let t = w.tree();
    let b = w.create(Some(t.project), "phase", "B");
    let c = w.create(Some(t.project), "phase", "C");
    w.exec(Command::ReorderNode {
        node_id: c,
        index: 0,
    });
    assert_eq!(w.children(t.project), vec![c, t.phase, b]);
    w.exec(Command::ReorderNode {
        node_id: c,
        index: 2,
    });
    assert_eq!(w.children(t.project), vec![t.phase, b, c]);
}

#[test]
fn reorder_node_works_among_the_roots() {
    let mut w = World::new();
    let a = w.create(None, "project_root", "A");
    let b = w.create(None, "project_root", "B");
    w.exec(Command::ReorderNode {
        node_id: b,
        index: 0,
    });
    assert_eq!(w.graph().roots(), &[b, a]);
}

#[test]
fn reorder_node_to_a_position_past_the_siblings_fails_with_index_out_of_range() {
    let mut w = World::new();
    let t = w.tree();
    w.create(Some(t.project), "phase", "B");
    let e = w.fails(Command::ReorderNode {
        node_id: t.phase,
        index: 2,
    });
    assert_code(&e, ErrorCode::IndexOutOfRange);
    assert_code(
        &w.fails(Command::ReorderNode {
            node_id: missing(),
            index: 0,
        }),
        ErrorCode::NodeNotFound,
    );
}

// ---------------------------------------------------------------------------
// applyKit

#[test]
fn apply_kit_deep_copies_the_kit_children_with_new_ids() {
    let mut w = World::new();
    let t = w.tree();
    let second_part = w.create(Some(t.task), "part", "Tack cloth");
    w.exec(update(t.part, "cost", json!("4.50")));
    let kit_task = w.create(Some(t.job), "task", "Mask");
    let target = w.create(Some(t.phase), "job", "Respray");
    let size_before = w.graph().len();

    let applied = w.exec(Command::ApplyKit {
        target_id: target,
        kit_root_id: t.job,
    });
    assert_eq!(w.graph().len(), size_before + 4);
    let copies = w.children(target);
    assert_eq!(w.names(&copies), ["Sand", "Mask"]);
    assert_eq!(applied.node_id, Some(copies[0]));
    assert!(!copies.contains(&t.task) && !copies.contains(&kit_task));
    let copied_parts = w.children(copies[0]);
    assert_eq!(w.names(&copied_parts), ["Paper", "Tack cloth"]);
    assert!(!copied_parts.contains(&t.part) && !copied_parts.contains(&second_part));
    assert_eq!(w.prop(copied_parts[0], "cost"), Some(json!("4.50")));
    assert_eq!(
        w.children(t.job),
        vec![t.task, kit_task],
        "the kit is untouched"
    );
    w.check();

    w.undo();
    assert!(w.children(target).is_empty());
    assert_eq!(w.graph().len(), size_before);
}

#[test]
fn apply_kit_into_its_own_subtree_copies_the_kit_once() {
    let mut w = World::new();
    let t = w.tree();
    let before = w.graph().len();
    // The job is both the kit and the target: its task (with its part) is copied into itself once.
    w.exec(Command::ApplyKit {
        target_id: t.job,
        kit_root_id: t.job,
    });
    assert_eq!(w.graph().len(), before + 2, "task and part copied once");
    let tasks = w.children(t.job);
    assert_eq!(tasks[0], t.task);
    assert_ne!(tasks[1], t.task);
    assert_eq!(w.names(&tasks), ["Sand", "Sand"]);
    let copied_part = w.children(tasks[1]);
    assert_eq!(w.names(&copied_part), ["Paper"]);
    assert_ne!(copied_part[0], t.part);
    w.check();

    // A kit whose children the target (inside the kit) does not allow is refused whole.
    let e = w.fails(Command::ApplyKit {
        target_id: t.job,
        kit_root_id: t.phase,
    });
    assert_code(&e, ErrorCode::ChildNotAllowed);
}

#[test]
fn apply_kit_without_children_fails_with_bad_user_input() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(Command::ApplyKit {
        target_id: t.task,
        kit_root_id: t.part,
    });
    assert_code(&e, ErrorCode::BadUserInput);
}

#[test]
fn apply_kit_of_children_the_target_does_not_allow_fails_with_child_not_allowed() {
    let mut w = World::new();
    let t = w.tree();
    let e = w.fails(Command::ApplyKit {
        target_id: t.project,
        kit_root_id: t.task,
    });
    assert_code(&e, ErrorCode::ChildNotAllowed);
    assert_code(
        &w.fails(Command::ApplyKit {
            target_id: missing(),
            kit_root_id: t.task,
        }),
        ErrorCode::NodeNotFound,
    );
}

// ---------------------------------------------------------------------------
// batches

#[test]
fn a_batch_whose_second_command_fails_changes_nothing() {
    let mut w = World::new();
    let t = w.tree();
    let before = w.dispatcher.clone();
    let e = w
        .try_exec(Command::Batch {
            commands: vec![
                rename(t.job, "Respray"),
                create(Some(t.project), "part", None),
                update(t.task, "notes", json!("never")),
            ],
        })
        .unwrap_err();
    assert_code(&e, ErrorCode::ChildNotAllowed);
    assert!(
        e.message.contains("command 1 (createNode)"),
        "{}",
        e.message
    );
    assert_eq!(w.dispatcher, before);
    assert_eq!(w.dispatcher.version(), 5);
    assert_eq!(w.names(&[t.job]), ["Paint"]);
}

#[test]
fn a_batch_applies_in_order_and_is_undone_as_one_step() {
    let mut w = World::new();
    let t = w.tree();
    let before = w.graph().clone();
    let applied = w.exec(Command::Batch {
        commands: vec![
            create(Some(t.project), "phase", Some("Engine")),
            rename(t.job, "Respray"),
            update(t.task, "notes", json!("done")),
            Command::DeleteNode { node_id: t.part },
        ],
    });
    assert_eq!(applied.command_type, "batch");
    assert_eq!(applied.deltas.len(), 4);
    assert_eq!(applied.version, 6, "a batch is one version step");
    assert_eq!(applied.node_id, w.children(t.project).get(1).copied());
    assert_eq!(w.dispatcher.undo_depth(), 6);

    w.undo();
    assert_eq!(w.graph(), &before);
    assert_eq!(w.dispatcher.undo_depth(), 5);
    w.redo();
    assert_eq!(w.names(&[t.job]), ["Respray"]);
    assert!(!w.graph().contains(&t.part));
}

#[test]
fn an_empty_batch_fails_with_bad_user_input() {
    let mut w = World::new();
    let e = w.fails(Command::Batch { commands: vec![] });
    assert_code(&e, ErrorCode::BadUserInput);
}

// ---------------------------------------------------------------------------
// the dispatcher: versions, undo, redo, history

#[test]
fn undo_with_nothing_done_fails_with_nothing_to_undo() {
    let mut w = World::new();
    let e = w.dispatcher.undo().unwrap_err();
    assert_code(&e, ErrorCode::NothingToUndo);
    assert_eq!(w.dispatcher.version(), 0);
}

#[test]
fn redo_with_nothing_undone_fails_with_nothing_to_redo() {
    let mut w = World::new();
    w.tree();
    let e = w.dispatcher.redo().unwrap_err();
    assert_code(&e, ErrorCode::NothingToRedo);
    assert_eq!(w.dispatcher.version(), 5);
}

#[test]
fn a_stale_expected_version_fails_with_version_conflict() {
    let mut w = World::new();
    let t = w.tree();
    let before = w.dispatcher.clone();
    let e = w
        .try_exec_at(rename(t.job, "Respray"), Some(4))
        .unwrap_err();
    assert_code(&e, ErrorCode::VersionConflict);
    assert_eq!(w.dispatcher, before);
    let applied = w.try_exec_at(rename(t.job, "Respray"), Some(5)).unwrap();
    assert_eq!(applied.version, 6);
}

#[test]
fn redo_after_undo_reapplies_the_change_and_every_step_bumps_the_version() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(update(t.task, "impact", json!(3)));
    let after = w.graph().clone();
    let undone = w.undo();
    assert_eq!(undone.version, 7);
    assert_eq!(w.prop(t.task, "impact"), None);
    assert!(w.dispatcher.can_redo());
    let redone = w.redo();
    assert_eq!(redone.version, 8);
    assert_eq!(w.graph(), &after);
    assert!(!w.dispatcher.can_redo());
}

#[test]
fn redo_of_a_create_reports_the_created_node() {
    let mut w = World::new();
    let id = w.create(None, "project_root", "A");
    w.undo();
    assert!(w.graph().is_empty());
    assert_eq!(w.redo().node_id, Some(id));
}

#[test]
fn a_new_command_after_undo_clears_the_redo_stack() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(rename(t.job, "One"));
    w.undo();
    assert_eq!(w.dispatcher.redo_depth(), 1);
    w.exec(rename(t.job, "Two"));
    assert!(!w.dispatcher.can_redo());
    assert_code(&w.dispatcher.redo().unwrap_err(), ErrorCode::NothingToRedo);
}

#[test]
fn the_history_limit_bounds_how_far_undo_goes() {
    let mut w = World::new();
    let t = w.tree();
    w.dispatcher.set_history_limit(3);
    assert_eq!(w.dispatcher.undo_depth(), 3);
    for i in 0..5 {
        w.exec(update(t.task, "impact", json!(i)));
    }
    assert_eq!(w.dispatcher.undo_depth(), 3);
    w.undo();
    w.undo();
    w.undo();
    assert_eq!(w.prop(t.task, "impact"), Some(json!(1)));
    assert_code(&w.dispatcher.undo().unwrap_err(), ErrorCode::NothingToUndo);
    assert_eq!(w.dispatcher.version(), 13);
}

// ---------------------------------------------------------------------------
// revert and replay

#[test]
fn revert_takes_back_execute_undo_and_redo_exactly() {
    let mut w = World::new();
    let t = w.tree();
    w.exec(rename(t.job, "One"));
    w.exec(rename(t.job, "Two"));
    w.undo();
    // A full undo stack and a non-empty redo stack: the next execute evicts and clears.
    w.dispatcher.set_history_limit(w.dispatcher.undo_depth());

    let before = w.dispatcher.clone();
    let applied = w.exec(Command::DeleteNode { node_id: t.phase });
    assert!(
        matches!(&applied.revert, Revert::Executed { evicted: Some(_), cleared_redo } if cleared_redo.len() == 1)
    );
    w.dispatcher.revert(applied.revert);
    assert_eq!(w.dispatcher, before);

    let undone = w.undo();
    w.dispatcher.revert(undone.revert);
    assert_eq!(w.dispatcher, before);

    let redone = w.redo();
    w.dispatcher.revert(redone.revert);
    assert_eq!(w.dispatcher, before);
}

#[test]
fn reverting_several_steps_newest_first_restores_the_starting_dispatcher() {
    let mut w = World::new();
    let t = w.tree();
    let start = w.dispatcher.clone();
    let mut reverts = vec![
        w.exec(rename(t.job, "One")).revert,
        w.exec(Command::DeleteNode { node_id: t.task }).revert,
        w.undo().revert,
        w.undo().revert,
        w.redo().revert,
        w.exec(move_to(t.job, t.phase, Some(0))).revert,
    ];
    while let Some(r) = reverts.pop() {
        w.dispatcher.revert(r);
    }
    assert_eq!(w.dispatcher, start);
}

/// A history with every kind of op: executes (a batch, a kit), undos and redos.
fn busy_world() -> (Dispatcher, World) {
    let mut w = World::new();
    let start = w.dispatcher.clone();
    let t = w.tree();
    w.exec(Command::Batch {
        commands: vec![
            update(t.task, "cost", json!("10.00")),
            create(Some(t.project), "phase", Some("Engine")),
        ],
    });
    let engine = w.children(t.project)[1];
    w.exec(create(Some(engine), "job", Some("Rebuild")));
    w.undo();
    w.redo();
    w.exec(Command::ApplyKit {
        target_id: w.children(engine)[0],
        kit_root_id: t.job,
    });
    w.undo();
    w.undo();
    w.redo();
    w.exec(Command::DeleteNode { node_id: t.job });
    w.undo();
    (start, w)
}

#[test]
fn replaying_the_op_log_on_the_starting_state_reproduces_the_dispatcher() {
    let (start, w) = busy_world();
    let mut replayed = start.clone();
    for op in w.ops.clone() {
        replayed.replay(op).expect("a logged op replays");
    }
    assert_eq!(replayed, w.dispatcher);
}

#[test]
fn replaying_after_a_serde_round_trip_reproduces_the_dispatcher() {
    let (start, w) = busy_world();
    let ops: Vec<Op> = serde_json::from_str(&serde_json::to_string(&w.ops).unwrap()).unwrap();
    let mut replayed: Dispatcher =
        serde_json::from_str(&serde_json::to_string(&start).unwrap()).unwrap();
    for op in ops {
        replayed.replay(op).expect("a logged op replays");
    }
    let saved: Dispatcher =
        serde_json::from_str(&serde_json::to_string(&w.dispatcher).unwrap()).unwrap();
    assert_eq!(saved, w.dispatcher, "a dispatcher survives serde exactly");
    assert_eq!(replayed, w.dispatcher);

    // Replaying from a snapshot taken midway also lands on the same state.
    let mut w2 = World::new();
    w2.tree();
    let midway: Dispatcher =
        serde_json::from_str(&serde_json::to_string(&w2.dispatcher).unwrap()).unwrap();
    let mut replayed = midway;
    for op in w.ops.iter().skip(5).cloned() {
        replayed.replay(op).unwrap();
    }
    assert_eq!(replayed, w.dispatcher);
}

#[test]
fn commands_round_trip_through_their_json_form() {
    let command = Command::Batch {
        commands: vec![
            Command::CreateNode {
                parent_id: None,
                type_id: "project_root".into(),
                name: Some("A".into()),
                properties: Some(Map::from_iter([("budget".to_string(), json!("1"))])),
                index: Some(0),
                id: Some(Uuid::from_u128(9)),
            },
            move_to(Uuid::from_u128(1), Uuid::from_u128(2), None),
        ],
    };
    let text = serde_json::to_value(&command).unwrap();
    assert_eq!(text["type"], "batch");
    assert_eq!(text["commands"][0]["typeId"], "project_root");
    assert_eq!(serde_json::from_value::<Command>(text).unwrap(), command);
}
