//! Node references through the dispatcher: checked on write, released by deletes as deltas of the delete, restored exactly by undo.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use talus_tally::domain::{
    Applied, Command, Ctx, Delta, Dispatcher, DomainError, ErrorCode, Graph, NodeId, Template,
};
use uuid::Uuid;

/// Shots nest; a shot references people (`artists`, target type person) and any nodes (`after`).
const CREW: &str = "name: Crew
node_types:
  - id: project_root
    features: [is_root]
    allowed_children: [shot, person]
  - id: shot
    allowed_children: [shot]
    properties:
      - {id: artists, type: node_reference, target_type: person}
      - {id: after, type: node_reference}
      - {id: notes, type: editor}
  - id: person
";

fn crew() -> Template {
    Template::from_yaml("crew", "crew.yaml", CREW).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 9, 0, 0).unwrap()
}

/// A dispatcher over the crew template with deterministic ids.
struct World {
    template: Template,
    dispatcher: Dispatcher,
    next: u128,
}

impl World {
    fn new() -> World {
        World {
            template: crew(),
            dispatcher: Dispatcher::new(Graph::new()),
            next: 0,
        }
    }

    fn try_exec(&mut self, command: Command) -> Result<Applied, DomainError> {
        let World {
            template,
            dispatcher,
            next,
        } = self;
        *next += 1;
        let command_id = Uuid::from_u128((1 << 100) | *next);
        let mut new_id = || {
            *next += 1;
            Uuid::from_u128(*next)
        };
        let mut ctx = Ctx::new(template, now(), &mut new_id);
        dispatcher.execute(&command, None, command_id, &mut ctx)
    }

    fn exec(&mut self, command: Command) -> Applied {
        let what = format!("{command:?}");
        self.try_exec(command)
            .unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
    }

    fn fails(&mut self, command: Command) -> DomainError {
        let before = self.dispatcher.clone();
        let error = self.try_exec(command).expect_err("the command must fail");
        assert_eq!(self.dispatcher, before, "a failed command changed nothing");
        error
    }

    fn create(&mut self, parent: Option<NodeId>, type_id: &str, properties: Value) -> NodeId {
        self.exec(create(parent, type_id, properties))
            .node_id
            .unwrap()
    }

    fn value(&self, node: NodeId, property: &str) -> Option<Value> {
        self.dispatcher
            .graph()
            .node(&node)
            .unwrap()
            .properties
            .get(property)
            .cloned()
    }
}

fn create(parent_id: Option<NodeId>, type_id: &str, properties: Value) -> Command {
    Command::CreateNode {
        parent_id,
        type_id: type_id.into(),
        name: None,
        properties: properties.as_object().cloned(),
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

fn delete(node_id: NodeId) -> Command {
    Command::DeleteNode { node_id }
}

fn ids(nodes: &[NodeId]) -> Value {
    json!(nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>())
}

/// Root > [shot A > [shot B], person P, person Q]; A.artists = [P, Q], B.after = [A, Q], B.artists = [Q].
struct Crew {
    world: World,
    root: NodeId,
    a: NodeId,
    b: NodeId,
    p: NodeId,
    q: NodeId,
}

fn crew_world() -> Crew {
    let mut world = World::new();
    let root = world.create(None, "project_root", json!({}));
    let p = world.create(Some(root), "person", json!({}));
    let q = world.create(Some(root), "person", json!({}));
    let a = world.create(Some(root), "shot", json!({"artists": ids(&[p, q])}));
    let b = world.create(
        Some(a),
        "shot",
        json!({"after": ids(&[a, q]), "artists": ids(&[q])}),
    );
    Crew {
        world,
        root,
        a,
        b,
        p,
        q,
    }
}

/// Every node reference value of the graph names a node of the graph: the invariant commands keep.
fn dangling(graph: &Graph) -> Vec<(NodeId, Uuid)> {
    let mut found = Vec::new();
    for node in graph.nodes() {
        for (_, value) in node.properties.iter() {
            if let Value::Array(items) = value {
                for item in items {
                    let id = Uuid::parse_str(item.as_str().unwrap()).unwrap();
                    if !graph.contains(&id) {
                        found.push((node.id, id));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn references_to_existing_nodes_of_the_target_type_are_stored_in_order() {
    let c = crew_world();
    assert_eq!(c.world.value(c.a, "artists"), Some(ids(&[c.p, c.q])));
    assert_eq!(c.world.value(c.b, "after"), Some(ids(&[c.a, c.q])));
}

#[test]
fn a_reference_to_a_missing_node_or_one_of_another_type_fails_with_invalid_property_value() {
    let mut c = crew_world();
    let missing = Uuid::from_u128(u128::MAX);
    let error = c.world.fails(update(c.a, "artists", ids(&[c.p, missing])));
    assert_eq!(error.code, ErrorCode::InvalidPropertyValue);
    assert_eq!(
        error.message,
        format!(
            "property 'artists' references node {missing}, which does not exist in this project"
        )
    );
    let error = c.world.fails(update(c.a, "artists", ids(&[c.b])));
    assert_eq!(error.code, ErrorCode::InvalidPropertyValue);
    assert_eq!(
        error.message,
        format!(
            "property 'artists' references node {}, a 'shot'; it must be a 'person'",
            c.b
        )
    );
    let error = c.world.fails(create(
        Some(c.root),
        "shot",
        json!({"after": ids(&[missing])}),
    ));
    assert_eq!(error.code, ErrorCode::InvalidPropertyValue);
    // A node that is being created does not exist yet, so it cannot reference itself...
    let own = Uuid::from_u128(7777);
    let error = c.world.fails(Command::CreateNode {
        parent_id: Some(c.root),
        type_id: "shot".into(),
        name: None,
        properties: json!({"after": [own.to_string()]}).as_object().cloned(),
        index: None,
        id: Some(own),
    });
    assert_eq!(error.code, ErrorCode::InvalidPropertyValue);
    // ...but once it exists it may; any node will do without a target type.
    c.world.exec(update(c.a, "after", ids(&[c.a, c.root])));
    assert_eq!(c.world.value(c.a, "after"), Some(ids(&[c.a, c.root])));
}

#[test]
fn deleting_a_node_removes_it_from_references_outside_its_subtree_before_deleting_it() {
    let mut c = crew_world();
    let applied = c.world.exec(delete(c.q));
    assert_eq!(
        applied.deltas,
        [
            Delta::PropertyChanged {
                node_id: c.a,
                property_id: "artists".into(),
                old_value: Some(ids(&[c.p, c.q])),
                new_value: Some(ids(&[c.p])),
            },
            Delta::PropertyChanged {
                node_id: c.b,
                property_id: "artists".into(),
                old_value: Some(ids(&[c.q])),
                new_value: Some(ids(&[])),
            },
            Delta::PropertyChanged {
                node_id: c.b,
                property_id: "after".into(),
                old_value: Some(ids(&[c.a, c.q])),
                new_value: Some(ids(&[c.a])),
            },
            Delta::NodeDeleted {
                node_id: c.q,
                parent_id: Some(c.root),
                deleted_ids: vec![c.q],
            },
        ]
    );
    assert_eq!(dangling(c.world.dispatcher.graph()), []);
}

#[test]
fn references_held_inside_the_deleted_subtree_are_deleted_with_it_unchanged() {
    let mut c = crew_world();
    // Deleting A takes B with it: B's reference to A is not rewritten, only A's and B's nodes go.
    let applied = c.world.exec(delete(c.a));
    assert_eq!(
        applied.deltas,
        [Delta::NodeDeleted {
            node_id: c.a,
            parent_id: Some(c.root),
            deleted_ids: vec![c.a, c.b],
        }]
    );
}

#[test]
fn undo_of_a_delete_restores_the_node_and_every_reference_and_redo_removes_them_again() {
    let mut c = crew_world();
    let before = c.world.dispatcher.graph().clone();
    c.world.exec(delete(c.q));
    let after = c.world.dispatcher.graph().clone();
    let undone = c.world.dispatcher.undo().unwrap();
    assert_eq!(c.world.dispatcher.graph(), &before);
    // The undo's deltas are the exact inverse, newest first: the node comes back, then the references.
    assert!(matches!(undone.deltas[0], Delta::NodeCreated { .. }));
    assert_eq!(undone.deltas.len(), 4);
    c.world.dispatcher.redo().unwrap();
    assert_eq!(c.world.dispatcher.graph(), &after);
}

#[test]
fn a_reverted_delete_leaves_the_dispatcher_as_it_was() {
    let mut c = crew_world();
    let before = c.world.dispatcher.clone();
    let applied = c.world.exec(delete(c.p));
    c.world.dispatcher.revert(applied.revert);
    assert_eq!(c.world.dispatcher, before);
}

#[test]
fn in_a_batch_a_reference_set_before_a_delete_is_released_and_one_set_after_it_fails_the_batch() {
    let mut c = crew_world();
    let p = c.p;
    c.world.exec(Command::Batch {
        commands: vec![update(c.b, "artists", ids(&[p, c.q])), delete(p)],
    });
    assert_eq!(c.world.value(c.b, "artists"), Some(ids(&[c.q])));
    assert_eq!(c.world.value(c.a, "artists"), Some(ids(&[c.q])));

    let q = c.q;
    let error = c.world.fails(Command::Batch {
        commands: vec![delete(q), update(c.b, "artists", ids(&[q]))],
    });
    assert_eq!(error.code, ErrorCode::InvalidPropertyValue);
    assert!(error
        .message
        .starts_with("command 1 (updateProperty) of the batch failed"));
}

#[test]
fn a_template_without_node_references_deletes_with_the_node_deleted_delta_only() {
    let template = Template::from_yaml(
        "plain",
        "plain.yaml",
        "node_types:\n  - id: a\n    allowed_children: [a]\n    properties: [{id: t, type: text}]\n",
    )
    .unwrap();
    assert!(!template.has_node_references());
    let mut dispatcher = Dispatcher::new(Graph::new());
    let mut n = 0u128;
    let mut new_id = || {
        n += 1;
        Uuid::from_u128(n)
    };
    let mut ctx = Ctx::new(&template, now(), &mut new_id);
    let root = dispatcher
        .execute(
            &create(None, "a", json!({"t": "x"})),
            None,
            Uuid::nil(),
            &mut ctx,
        )
        .unwrap()
        .node_id
        .unwrap();
    let applied = dispatcher
        .execute(&delete(root), None, Uuid::nil(), &mut ctx)
        .unwrap();
    assert_eq!(applied.deltas.len(), 1);
}

/// One random step over the crew world.
#[derive(Debug, Clone)]
enum Step {
    Create {
        parent: usize,
        person: bool,
    },
    Refer {
        from: usize,
        to: Vec<usize>,
        artists: bool,
    },
    Delete(usize),
    Undo,
    Redo,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<usize>(), any::<bool>()).prop_map(|(parent, person)| Step::Create { parent, person }),
        3 => (any::<usize>(), prop::collection::vec(any::<usize>(), 0..4), any::<bool>())
            .prop_map(|(from, to, artists)| Step::Refer { from, to, artists }),
        2 => any::<usize>().prop_map(Step::Delete),
        1 => Just(Step::Undo),
        1 => Just(Step::Redo),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// After any sequence of creates, reference writes, deletes, undos and redos no reference
    /// dangles, undoing everything restores the empty-but-root graph, and redoing everything
    /// restores the final one.
    #[test]
    fn no_command_undo_or_redo_leaves_a_reference_dangling_and_undo_is_exact(steps in prop::collection::vec(step(), 1..40)) {
        let mut world = World::new();
        let root = world.create(None, "project_root", json!({}));
        let start = world.dispatcher.graph().clone();
        let start_depth = world.dispatcher.undo_depth();
        for step in steps {
            let nodes: Vec<NodeId> = world.dispatcher.graph().preorder().map(|n| n.id).collect();
            let shots: Vec<NodeId> = world
                .dispatcher
                .graph()
                .preorder()
                .filter(|n| n.type_id == "shot")
                .map(|n| n.id)
                .collect();
            let pick = |list: &[NodeId], i: usize| list[i % list.len()];
            match step {
                Step::Create { parent, person } => {
                    let (parent, type_id) = if person || shots.is_empty() {
                        (root, if person { "person" } else { "shot" })
                    } else {
                        (pick(&shots, parent), "shot")
                    };
                    world.exec(create(Some(parent), type_id, json!({})));
                }
                Step::Refer { from, to, artists } if !shots.is_empty() => {
                    let mut targets: Vec<NodeId> = to.iter().map(|i| pick(&nodes, *i)).collect();
                    targets.dedup();
                    let property = if artists { "artists" } else { "after" };
                    // Refused values (wrong type, a node twice) must change nothing.
                    let before = world.dispatcher.clone();
                    if world.try_exec(update(pick(&shots, from), property, ids(&targets))).is_err() {
                        prop_assert_eq!(&world.dispatcher, &before);
                    }
                }
                Step::Refer { .. } => {}
                Step::Delete(i) => {
                    let victim = pick(&nodes, i);
                    if victim != root {
                        world.exec(delete(victim));
                    }
                }
                Step::Undo => {
                    if world.dispatcher.undo_depth() > start_depth {
                        world.dispatcher.undo().unwrap();
                    }
                }
                Step::Redo => {
                    if world.dispatcher.redo_depth() > 0 {
                        world.dispatcher.redo().unwrap();
                    }
                }
            }
            let graph = world.dispatcher.graph();
            prop_assert_eq!(graph.check_invariants(), Ok(()));
            prop_assert_eq!(dangling(graph), vec![]);
        }
        let end = world.dispatcher.graph().clone();
        let mut undone = 0;
        while world.dispatcher.undo_depth() > start_depth {
            world.dispatcher.undo().unwrap();
            prop_assert_eq!(dangling(world.dispatcher.graph()), vec![]);
            undone += 1;
        }
        prop_assert_eq!(world.dispatcher.graph(), &start);
        for _ in 0..undone {
            world.dispatcher.redo().unwrap();
        }
        prop_assert_eq!(world.dispatcher.graph(), &end);
    }
}

#[test]
fn a_single_id_is_stored_as_a_list_of_one() {
    let mut c = crew_world();
    c.world
        .exec(update(c.b, "after", Value::String(c.root.to_string())));
    assert_eq!(c.world.value(c.b, "after"), Some(ids(&[c.root])));
}

#[test]
fn a_kit_copy_references_its_own_copies_and_keeps_references_to_nodes_outside_the_kit() {
    let mut w = World::new();
    let root = w.create(None, "project_root", json!({}));
    let p = w.create(Some(root), "person", json!({}));
    let kit = w.create(Some(root), "shot", json!({}));
    let b = w.create(Some(kit), "shot", json!({"artists": ids(&[p])}));
    let c = w.create(
        Some(kit),
        "shot",
        json!({"after": ids(&[b, kit]), "artists": ids(&[p])}),
    );
    let target = w.create(Some(root), "shot", json!({}));
    let before = w.dispatcher.graph().clone();
    w.exec(Command::ApplyKit {
        target_id: target,
        kit_root_id: kit,
    });
    let graph = w.dispatcher.graph();
    let copies = &graph.node(&target).unwrap().children;
    assert_eq!(copies.len(), 2);
    let (b2, c2) = (copies[0], copies[1]);
    assert!(b2 != b && c2 != c);
    // C's copy comes after B's copy; the kit root itself is not copied, so that reference stays.
    assert_eq!(w.value(c2, "after"), Some(ids(&[b2, kit])));
    assert_eq!(w.value(c2, "artists"), Some(ids(&[p])));
    assert_eq!(w.value(b2, "artists"), Some(ids(&[p])));
    // The originals are untouched.
    assert_eq!(w.value(c, "after"), Some(ids(&[b, kit])));
    assert_eq!(dangling(w.dispatcher.graph()), []);
    w.dispatcher.undo().unwrap();
    assert_eq!(w.dispatcher.graph(), &before);
}
