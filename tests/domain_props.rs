//! Property tests: laws of the dispatcher over random trees and random command sequences, valid and invalid mixed.
//!
//! Each case builds a random restomod tree, then runs random steps (commands,
//! batches, stale-version commands, undo, redo) and checks after every step
//! that the invariants hold and that a failed step changed nothing. At the end
//! it checks that undo and redo walk the whole history exactly, that export
//! then import gives the same graph, that replaying the op log reproduces the
//! dispatcher, and that reverting every step restores the starting one.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};
use talus_tally::domain::history::Revert;
use talus_tally::domain::project_file;
use talus_tally::domain::template::{PropertyDef, PropertyType};
use talus_tally::domain::{
    Applied, Command, Ctx, Dispatcher, DomainError, ErrorCode, Graph, Node, NodeId, Op, Template,
};
use uuid::Uuid;

const TYPES: [&str; 6] = ["project_root", "phase", "job", "task", "part", "gadget"];
const PROPS: [&str; 13] = [
    "vehicle",
    "budget",
    "status",
    "start_date",
    "priority",
    "description",
    "cost",
    "impact",
    "notes",
    "sku",
    "quantity",
    "link",
    "bogus",
];
const NAMES: [&str; 4] = ["Alpha", "  Beta  ", "", "Ω"];

fn values() -> Vec<Value> {
    vec![
        json!(1),
        json!("12.50"),
        json!(-3.5),
        json!("2024-02-29"),
        json!("2025-02-30"),
        json!("In Progress"),
        json!("High"),
        json!("Done"),
        json!("text"),
        json!(true),
        Value::Null,
    ]
}

fn restomod() -> Template {
    Template::from_yaml(
        "restomod",
        "restomod.yaml",
        include_str!("../templates/restomod.yaml"),
    )
    .unwrap()
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 28, 15, 30, 0).unwrap()
}

/// The type a node of `parent_type` may hold (restomod is a chain).
fn child_type(parent_type: &str) -> &'static str {
    let at = TYPES.iter().position(|t| *t == parent_type).unwrap_or(4);
    TYPES[(at + 1).min(4)]
}

/// A command whose node references are indices into the graph's pre-order
/// (one past the end means a node that does not exist).
#[derive(Debug, Clone)]
enum Cmd {
    Create {
        parent: Option<usize>,
        type_index: Option<usize>,
        index: Option<usize>,
        property: Option<(usize, usize)>,
        reuse_id: Option<usize>,
    },
    Delete(usize),
    Rename(usize, usize),
    Update(usize, usize, usize),
    DeleteProperty(usize, usize),
    Link(usize, usize, Option<usize>),
    Unlink(usize, usize),
    Move(usize, usize, Option<usize>),
    Reorder(usize, usize),
    ApplyKit(usize, usize),
}

/// A command and whether to aim it: an aimed command picks nodes, types,
/// properties and values that fit, so most aimed commands succeed; an unaimed
/// one picks at random, so most fail.
#[derive(Debug, Clone)]
struct Aimed {
    cmd: Cmd,
    aim: bool,
}

#[derive(Debug, Clone)]
enum Step {
    Exec(Aimed),
    Batch(Vec<Aimed>),
    /// A command with an expected version, stale or current.
    ExecAt(Aimed, bool),
    Undo,
    Redo,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let sel = || any::<usize>();
    let index = || prop::option::of(0usize..4);
    prop_oneof![
        4 => (
            prop::option::weighted(0.9, sel()),
            prop::option::weighted(0.2, 0..TYPES.len()),
            index(),
            prop::option::of((0..PROPS.len(), 0..values().len())),
            prop::option::weighted(0.05, sel()),
        )
            .prop_map(|(parent, type_index, index, property, reuse_id)| Cmd::Create {
                parent,
                type_index,
                index,
                property,
                reuse_id,
            }),
        1 => sel().prop_map(Cmd::Delete),
        1 => (sel(), 0..NAMES.len()).prop_map(|(n, name)| Cmd::Rename(n, name)),
        3 => (sel(), 0..PROPS.len(), 0..values().len()).prop_map(|(n, p, v)| Cmd::Update(n, p, v)),
        1 => (sel(), 0..PROPS.len()).prop_map(|(n, p)| Cmd::DeleteProperty(n, p)),
        1 => (sel(), sel(), index()).prop_map(|(p, c, i)| Cmd::Link(p, c, i)),
        1 => (sel(), sel()).prop_map(|(p, c)| Cmd::Unlink(p, c)),
        2 => (sel(), sel(), index()).prop_map(|(n, p, i)| Cmd::Move(n, p, i)),
        1 => (sel(), 0usize..4).prop_map(|(n, i)| Cmd::Reorder(n, i)),
        1 => (sel(), sel()).prop_map(|(t, k)| Cmd::ApplyKit(t, k)),
    ]
}

fn aimed() -> impl Strategy<Value = Aimed> {
    (cmd(), prop::bool::weighted(0.75)).prop_map(|(cmd, aim)| Aimed { cmd, aim })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => aimed().prop_map(Step::Exec),
        1 => prop::collection::vec(aimed(), 0..4).prop_map(Step::Batch),
        1 => (aimed(), any::<bool>()).prop_map(|(c, stale)| Step::ExecAt(c, stale)),
        2 => Just(Step::Undo),
        1 => Just(Step::Redo),
    ]
}

/// A random restomod forest: each entry either starts a new root or hangs a
/// node of the allowed type under an earlier node that may have children.
fn tree() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 1..25)
}

fn missing() -> NodeId {
    Uuid::from_u128(u128::MAX)
}

/// Mostly one of `ids`; one time in ten (or when there are none) a node that does not exist.
fn pick(ids: &[NodeId], sel: usize) -> NodeId {
    if sel % 10 == 0 || ids.is_empty() {
        return missing();
    }
    ids[(sel / 10) % ids.len()]
}

/// One of `ids` that fits, if any does.
fn choose(ids: &[NodeId], sel: usize) -> Option<NodeId> {
    (!ids.is_empty()).then(|| ids[sel % ids.len()])
}

/// A value the property accepts, picked by `sel`.
fn good_value(def: &PropertyDef, sel: usize) -> Value {
    let choices = match def.kind {
        PropertyType::Text => vec![json!("text"), json!("Ω")],
        PropertyType::Number => vec![json!(1), json!(-3.5), json!("7.0")],
        PropertyType::Currency => vec![json!("12.50"), json!(3), json!(0.1)],
        PropertyType::Boolean => vec![json!(true), json!(false)],
        PropertyType::Date => vec![json!("2024-02-29"), json!("2026-12-31")],
        PropertyType::Select => def.options.iter().map(|o| json!(o.name)).collect(),
        PropertyType::Person => vec![json!(Uuid::from_u128(1).to_string())],
        // Not in restomod; values that need no particular graph, should a template here use them.
        PropertyType::Editor => vec![json!("<p>rich</p>\ntext")],
        PropertyType::Checkbox => vec![json!(true), json!(false)],
        PropertyType::NodeReference => vec![json!([])],
        PropertyType::Object => vec![json!({}), json!({"k": [1]})],
        PropertyType::Opaque => vec![json!([1, "two"])],
    };
    let mut choices = choices;
    choices.push(Value::Null);
    choices[sel % choices.len()].clone()
}

fn resolve(aimed: &Aimed, graph: &Graph, template: &Template) -> Command {
    if aimed.aim {
        if let Some(command) = aim(&aimed.cmd, graph, template) {
            return command;
        }
    }
    resolve_at_random(&aimed.cmd, graph)
}

/// Nodes (in pre-order) that satisfy `keep`.
fn nodes_where(graph: &Graph, keep: impl Fn(&Node) -> bool) -> Vec<NodeId> {
    graph.preorder().filter(|n| keep(n)).map(|n| n.id).collect()
}

/// Nodes whose type allows a child of `child_type`.
fn hosts_of(graph: &Graph, template: &Template, child_type: &str) -> Vec<NodeId> {
    nodes_where(graph, |n| {
        template
            .node_type(&n.type_id)
            .is_some_and(|t| t.allows_child(child_type))
    })
}

/// The command with nodes, types, properties and values chosen to fit; `None` when nothing fits.
fn aim(cmd: &Cmd, graph: &Graph, template: &Template) -> Option<Command> {
    let all = nodes_where(graph, |_| true);
    let node_type = |id: NodeId| template.node_type(&graph.get(&id)?.type_id);
    Some(match cmd {
        Cmd::Create {
            parent,
            index,
            property,
            ..
        } => {
            let hosts = nodes_where(graph, |n| n.type_id != "part");
            let parent_id = parent.and_then(|p| choose(&hosts, p));
            let type_id = parent_id.map_or("project_root", |p| {
                child_type(&graph.get(&p).unwrap().type_id)
            });
            let ty = template.node_type(type_id)?;
            let properties = property.and_then(|(p, v)| {
                let def = ty.properties.get(p % ty.properties.len().max(1))?;
                Some(Map::from_iter([(def.id.clone(), good_value(def, v))]))
            });
            let siblings = graph.siblings(parent_id.as_ref()).len();
            Command::CreateNode {
                parent_id,
                type_id: type_id.into(),
                name: None,
                properties,
                index: index.map(|i| i % (siblings + 1)),
                id: None,
            }
        }
        Cmd::Delete(n) => Command::DeleteNode {
            node_id: choose(&all, *n)?,
        },
        Cmd::Rename(n, name) => Command::RenameNode {
            node_id: choose(&all, *n)?,
            name: NAMES[name % 2].into(),
        },
        Cmd::Update(n, p, v) => {
            let node_id = choose(&all, *n)?;
            let ty = node_type(node_id)?;
            let def = ty.properties.get(p % ty.properties.len().max(1))?;
            Command::UpdateProperty {
                node_id,
                property_id: def.id.clone(),
                value: good_value(def, *v),
            }
        }
        Cmd::DeleteProperty(n, p) => {
            let node_id = choose(&all, *n)?;
            let ty = node_type(node_id)?;
            let def = ty.properties.get(p % ty.properties.len().max(1))?;
            Command::DeleteProperty {
                node_id,
                property_id: def.id.clone(),
            }
        }
        Cmd::Link(p, c, i) => {
            let child_id = choose(graph.roots(), *c)?;
            let hosts = hosts_of(graph, template, &graph.get(&child_id)?.type_id);
            let parent_id = choose(&hosts, *p)?;
            let len = graph.get(&parent_id)?.children.len();
            Command::LinkNode {
                parent_id,
                child_id,
                index: i.map(|i| i % (len + 1)),
            }
        }
        Cmd::Unlink(_, c) => {
            let child_id = choose(&nodes_where(graph, |n| n.parent.is_some()), *c)?;
            Command::UnlinkNode {
                parent_id: graph.get(&child_id)?.parent?,
                child_id,
            }
        }
        Cmd::Move(n, p, i) => {
            let node_id = choose(&all, *n)?;
            let hosts = hosts_of(graph, template, &graph.get(&node_id)?.type_id);
            let new_parent_id = choose(&hosts, *p)?;
            let len = graph.get(&new_parent_id)?.children.len();
            Command::MoveNode {
                node_id,
                new_parent_id,
                index: i.map(|i| i % (len + 1)),
            }
        }
        Cmd::Reorder(n, i) => {
            let node_id = choose(&all, *n)?;
            let len = graph.siblings(graph.get(&node_id)?.parent.as_ref()).len();
            Command::ReorderNode {
                node_id,
                index: i % len,
            }
        }
        Cmd::ApplyKit(t, k) => {
            let kit_root_id = choose(&nodes_where(graph, |n| !n.children.is_empty()), *k)?;
            let first_child = graph.get(&kit_root_id)?.children[0];
            let hosts = hosts_of(graph, template, &graph.get(&first_child)?.type_id);
            Command::ApplyKit {
                target_id: choose(&hosts, *t)?,
                kit_root_id,
            }
        }
    })
}

fn resolve_at_random(cmd: &Cmd, graph: &Graph) -> Command {
    let ids: Vec<NodeId> = graph.preorder().map(|n| n.id).collect();
    let all_values = values();
    let pick = |sel: usize| pick(&ids, sel);
    match cmd {
        Cmd::Create {
            parent,
            type_index,
            index,
            property,
            reuse_id,
        } => {
            let parent_id = parent.map(pick);
            let type_id = match (type_index, parent_id.and_then(|p| graph.get(&p))) {
                (Some(t), _) => TYPES[*t],
                (None, Some(p)) => child_type(&p.type_id),
                (None, None) => "project_root",
            };
            let properties = property
                .map(|(p, v)| Map::from_iter([(PROPS[p].to_string(), all_values[v].clone())]));
            Command::CreateNode {
                parent_id,
                type_id: type_id.into(),
                name: None,
                properties,
                index: *index,
                id: reuse_id.map(pick).filter(|id| graph.contains(id)),
            }
        }
        Cmd::Delete(n) => Command::DeleteNode { node_id: pick(*n) },
        Cmd::Rename(n, name) => Command::RenameNode {
            node_id: pick(*n),
            name: NAMES[*name].into(),
        },
        Cmd::Update(n, p, v) => Command::UpdateProperty {
            node_id: pick(*n),
            property_id: PROPS[*p].into(),
            value: all_values[*v].clone(),
        },
        Cmd::DeleteProperty(n, p) => Command::DeleteProperty {
            node_id: pick(*n),
            property_id: PROPS[*p].into(),
        },
        Cmd::Link(p, c, i) => Command::LinkNode {
            parent_id: pick(*p),
            child_id: pick(*c),
            index: *i,
        },
        Cmd::Unlink(p, c) => Command::UnlinkNode {
            parent_id: pick(*p),
            child_id: pick(*c),
        },
        Cmd::Move(n, p, i) => Command::MoveNode {
            node_id: pick(*n),
            new_parent_id: pick(*p),
            index: *i,
        },
        Cmd::Reorder(n, i) => Command::ReorderNode {
            node_id: pick(*n),
            index: *i,
        },
        Cmd::ApplyKit(t, k) => Command::ApplyKit {
            target_id: pick(*t),
            kit_root_id: pick(*k),
        },
    }
}

/// Deterministic ids and clock for every command of a case.
struct Harness {
    template: Template,
    next_id: u128,
}

impl Harness {
    fn execute(
        &mut self,
        dispatcher: &mut Dispatcher,
        command: &Command,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Applied, DomainError> {
        let Harness { template, next_id } = self;
        *next_id += 1;
        let command_id = Uuid::from_u128((1 << 120) | *next_id);
        let mut new_id = || {
            *next_id += 1;
            Uuid::from_u128(*next_id)
        };
        let mut ctx = Ctx::new(template, now, &mut new_id);
        dispatcher.execute(command, expected_version, command_id, &mut ctx)
    }
}

fn build_tree(harness: &mut Harness, spec: &[usize]) -> Graph {
    let mut dispatcher = Dispatcher::new(Graph::new());
    for (i, choice) in spec.iter().enumerate() {
        let hosts: Vec<&Node> = dispatcher
            .graph()
            .preorder()
            .filter(|n| n.type_id != "part")
            .collect();
        let command = if hosts.is_empty() || choice % 7 == 0 {
            Command::CreateNode {
                parent_id: None,
                type_id: "project_root".into(),
                name: Some(format!("Project {i}")),
                properties: None,
                index: None,
                id: None,
            }
        } else {
            let host = hosts[choice % hosts.len()];
            Command::CreateNode {
                parent_id: Some(host.id),
                type_id: child_type(&host.type_id).into(),
                name: Some(format!("Node {i}")),
                properties: None,
                index: Some((choice / 7) % (host.children.len() + 1)),
                id: None,
            }
        };
        let now = base_time() - Duration::seconds(i as i64);
        harness
            .execute(&mut dispatcher, &command, None, now)
            .expect("tree building commands are valid");
    }
    dispatcher.graph().clone()
}

/// Above this size applyKit steps are skipped: copying a kit into itself doubles it.
const KIT_SIZE_CAP: usize = 150;

fn is_kit(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::ApplyKit(..))
}

fn run_case(
    spec: &[usize],
    steps: &[Step],
    history_limit: Option<usize>,
) -> Result<(), TestCaseError> {
    let mut harness = Harness {
        template: restomod(),
        next_id: 0,
    };
    let initial_graph = build_tree(&mut harness, spec);
    let mut dispatcher = Dispatcher::new(initial_graph.clone());
    if let Some(limit) = history_limit {
        dispatcher.set_history_limit(limit);
    }
    let start = dispatcher.clone();
    let mut ops: Vec<Op> = Vec::new();
    let mut reverts: Vec<Revert> = Vec::new();

    for (i, step) in steps.iter().enumerate() {
        let before = dispatcher.clone();
        // Sub-second times so created_at must survive export and import to the nanosecond.
        let now = base_time() + Duration::nanoseconds(i as i64 * 1_000_000_007);
        let big = dispatcher.graph().len() > KIT_SIZE_CAP;
        let result = match step {
            Step::Undo => dispatcher.undo(),
            Step::Redo => dispatcher.redo(),
            Step::Exec(c) | Step::ExecAt(c, _) if big && is_kit(&c.cmd) => continue,
            Step::Batch(cs) if big && cs.iter().any(|c| is_kit(&c.cmd)) => continue,
            Step::Exec(c) => {
                let command = resolve(c, dispatcher.graph(), &harness.template);
                harness.execute(&mut dispatcher, &command, None, now)
            }
            Step::ExecAt(c, stale) => {
                let command = resolve(c, dispatcher.graph(), &harness.template);
                let expected = dispatcher.version() + u64::from(*stale);
                let result = harness.execute(&mut dispatcher, &command, Some(expected), now);
                if *stale {
                    prop_assert_eq!(
                        result.as_ref().err().map(|e| e.code),
                        Some(ErrorCode::VersionConflict)
                    );
                }
                result
            }
            Step::Batch(cs) => {
                let commands = cs
                    .iter()
                    .map(|c| resolve(c, dispatcher.graph(), &harness.template))
                    .collect();
                harness.execute(&mut dispatcher, &Command::Batch { commands }, None, now)
            }
        };
        match result {
            Ok(applied) => {
                prop_assert_eq!(applied.version, before.version() + 1);
                prop_assert_eq!(dispatcher.version(), applied.version);
                ops.push(applied.op);
                reverts.push(applied.revert);
            }
            Err(e) => {
                prop_assert!(
                    e.code != ErrorCode::Internal,
                    "step {} hit a bug: {}",
                    i,
                    e.message
                );
                prop_assert!(
                    dispatcher == before,
                    "failed step {} ({:?}: {}) changed the dispatcher",
                    i,
                    e.code,
                    e.message
                );
            }
        }
        if let Err(broken) = dispatcher.graph().check_invariants() {
            return Err(TestCaseError::fail(format!(
                "after step {i} ({step:?}): {broken}"
            )));
        }
    }
    let end = dispatcher.clone();

    // Undoing everything in the history restores the graph it started from
    // (with no history limit, that is the initial graph), and redoing all of
    // it restores the final graph.
    let mut walk = end.clone();
    let depth = walk.undo_depth();
    let mut rewound = 0;
    while walk.undo().is_ok() {
        walk.graph()
            .check_invariants()
            .map_err(TestCaseError::fail)?;
        rewound += 1;
    }
    prop_assert_eq!(rewound, depth);
    if history_limit.is_none() {
        prop_assert!(
            walk.graph() == &initial_graph,
            "undoing everything did not restore the initial graph"
        );
    }
    for _ in 0..depth {
        walk.redo().expect("every undone step redoes");
    }
    prop_assert!(
        walk.graph() == end.graph(),
        "redoing everything did not restore the final graph"
    );
    prop_assert_eq!(walk.version(), end.version() + 2 * depth as u64);

    // Export then import gives the same graph.
    let file = project_file::export(end.graph(), "restomod");
    let imported = project_file::import(&file, &harness.template, base_time())
        .map_err(|e| TestCaseError::fail(e.message))?;
    prop_assert!(
        &imported.graph == end.graph(),
        "export then import changed the graph"
    );
    prop_assert!(imported.orphaned.is_empty() && imported.warnings.is_empty());

    // Replaying the op log, after a serde round trip of the log and the start, reproduces the dispatcher.
    let log: Vec<Op> = serde_json::from_str(&serde_json::to_string(&ops).unwrap()).unwrap();
    let mut replayed: Dispatcher =
        serde_json::from_str(&serde_json::to_string(&start).unwrap()).unwrap();
    if let Some(limit) = history_limit {
        // The limit is configuration, not state: serde leaves it out.
        replayed.set_history_limit(limit);
    }
    for op in log {
        replayed
            .replay(op)
            .map_err(|e| TestCaseError::fail(e.message))?;
    }
    prop_assert!(
        replayed == end,
        "replaying the op log gave a different dispatcher"
    );

    // Reverting every step, newest first, restores the starting dispatcher.
    while let Some(revert) = reverts.pop() {
        dispatcher.revert(revert);
        dispatcher
            .graph()
            .check_invariants()
            .map_err(TestCaseError::fail)?;
    }
    prop_assert!(
        dispatcher == start,
        "reverting every step did not restore the start"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_command_sequences_keep_every_law(spec in tree(), steps in prop::collection::vec(step(), 0..60)) {
        run_case(&spec, &steps, None)?;
    }

    #[test]
    fn with_a_small_history_limit_replay_and_revert_stay_exact(
        spec in tree(),
        steps in prop::collection::vec(step(), 0..30),
        limit in 1usize..5,
    ) {
        run_case(&spec, &steps, Some(limit))?;
    }
}
