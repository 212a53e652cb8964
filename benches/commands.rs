//! Microbenchmark: updateProperty and createNode through `Dispatcher::execute` on a 100-node and a 100,000-node graph.
//!
//! A command's cost should not grow with the graph: both commands touch one
//! node and its parent. The big graph is a restomod project 10 phases wide,
//! each with 10 jobs of 10 tasks of 99 parts (100,111 nodes); the small one is
//! 3 x 3 x 3 with 2 parts per task (94 nodes).
//!
//! updateProperty runs in steady state: the history is full (1000 entries),
//! so every execute also evicts the oldest entry, as on a long-lived session.
//! createNode runs in chunks of 100 that are reverted (untimed) after each
//! chunk, so the graph stays at its nominal size while it is measured.
//!
//! Neither command does work that grows with the graph, but the big graph
//! (about 100 MB of heap) does not fit in cache: each command picks a random
//! node, so its hash-table slot, its properties and the allocator's free
//! lists are cold, and the 100k cases pay for cache and TLB misses that the
//! 94-node graph, all in L1/L2, never does. Picking from a small hot set of
//! nodes in the big graph brings updateProperty back to the small-graph time.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use talus_tally::domain::{Command, Ctx, Delta, Dispatcher, Graph, NodeData, NodeId, Template};
use uuid::Uuid;

// The server's allocator, so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// A project graph and the ids of its tasks and parts.
struct Project {
    graph: Graph,
    tasks: Vec<NodeId>,
    parts: Vec<NodeId>,
}

/// Builds `phases x jobs x tasks x parts` under one root, straight through `Graph::apply`.
fn project(template: &Template, shape: [usize; 4]) -> Project {
    let mut graph = Graph::new();
    let mut next = 0u128;
    let mut tasks = Vec::new();
    let mut parts = Vec::new();
    let mut add = |graph: &mut Graph, parent: Option<NodeId>, type_id: &str, index: usize| {
        next += 1;
        let id = Uuid::from_u128(next);
        let ty = template.node_type(type_id).expect("restomod type");
        graph
            .apply(&Delta::NodeCreated {
                node: NodeData {
                    id,
                    type_id: type_id.into(),
                    name: format!("{} {next}", ty.name),
                    properties: ty.initial_properties(),
                    created_at: now(),
                },
                parent_id: parent,
                index,
            })
            .expect("a fresh node applies");
        id
    };
    let root = add(&mut graph, None, "project_root", 0);
    for p in 0..shape[0] {
        let phase = add(&mut graph, Some(root), "phase", p);
        for j in 0..shape[1] {
            let job = add(&mut graph, Some(phase), "job", j);
            for t in 0..shape[2] {
                let task = add(&mut graph, Some(job), "task", t);
                tasks.push(task);
                for i in 0..shape[3] {
                    parts.push(add(&mut graph, Some(task), "part", i));
                }
            }
        }
    }
    Project {
        graph,
        tasks,
        parts,
    }
}

fn sizes(template: &Template) -> Vec<(&'static str, Project)> {
    let small = project(template, [3, 3, 3, 2]);
    let big = project(template, [10, 10, 10, 99]);
    assert_eq!(small.graph.len(), 94);
    assert_eq!(big.graph.len(), 100_111);
    vec![("100 nodes", small), ("100k nodes", big)]
}

fn bench_commands(c: &mut Criterion) {
    let template = restomod();
    let projects = sizes(&template);
    let mut next_id = 1u128 << 64;
    let mut new_id = move || {
        next_id += 1;
        Uuid::from_u128(next_id)
    };
    let mut ctx = Ctx::new(&template, now(), &mut new_id);

    let mut group = c.benchmark_group("updateProperty");
    for (label, project) in &projects {
        let mut dispatcher = Dispatcher::new(project.graph.clone());
        // Fill the history so every measured execute also evicts, as in a long-lived session.
        let mut i = 0usize;
        let mut step = |dispatcher: &mut Dispatcher, ctx: &mut Ctx<'_>| {
            i += 1;
            let command = Command::UpdateProperty {
                node_id: project.parts[i.wrapping_mul(7919) % project.parts.len()],
                property_id: "quantity".into(),
                value: json!(i % 1000),
            };
            dispatcher
                .execute(&command, None, Uuid::from_u128(i as u128), ctx)
                .expect("updateProperty applies")
        };
        for _ in 0..1000 {
            step(&mut dispatcher, &mut ctx);
        }
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| step(&mut dispatcher, &mut ctx))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("createNode");
    for (label, project) in &projects {
        let mut dispatcher = Dispatcher::new(project.graph.clone());
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| {
                const CHUNK: u64 = 100;
                let mut measured = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let mut reverts = Vec::with_capacity(n as usize);
                    let start = Instant::now();
                    for _ in 0..n {
                        i += 1;
                        let command = Command::CreateNode {
                            parent_id: Some(
                                project.tasks[i.wrapping_mul(7919) % project.tasks.len()],
                            ),
                            type_id: "part".into(),
                            name: Some("Bolt".into()),
                            properties: None,
                            index: None,
                            id: None,
                        };
                        let applied = dispatcher
                            .execute(&command, None, Uuid::from_u128(i as u128), &mut ctx)
                            .expect("createNode applies");
                        reverts.push(applied.revert);
                    }
                    measured += start.elapsed();
                    // Put the graph back to its nominal size, untimed.
                    while let Some(revert) = reverts.pop() {
                        dispatcher.revert(revert);
                    }
                    left -= n;
                }
                measured
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_commands);
criterion_main!(benches);
