//! Scenario 6, startup: time from starting the server on a data dir holding a 1,000,000-event,
//! 100,000-node session until /healthz answers and a `graph` query returns.
//!
//! The data dir is built through the API: executeBatch of 1000 createNode
//! commands until the graph has `--nodes` nodes, then executeBatch of 1000
//! updateProperty commands until the session has `--events` events (each
//! batch adds 1002 events: CommandExecuting, the changes, CommandExecuted).
//! With `--data-dir` the built dir is kept and reused by later invocations.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api;
use crate::http::{n, Http};
use crate::server::{temp_dir, Launch};
use crate::stats::{Case, Report, Run};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Events the session must hold.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Nodes the session's graph must hold.
    #[arg(long, default_value_t = 100_000)]
    pub nodes: usize,
    /// Build into (or reuse) this data dir instead of a temp dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const META: &str = "talus-bench-startup.json";

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    if ctx.target.external() {
        anyhow::bail!("the startup scenario starts its own server; it cannot use --url");
    }
    let mut report = Report::new(
        "startup",
        json!({"events": o.events, "nodes": o.nodes, "runs": ctx.runs}),
    );
    let (dir, temp) = match &o.data_dir {
        Some(d) => (d.clone(), false),
        None => (temp_dir("startup")?, true),
    };
    let meta_path = dir.join(META);
    let meta: Value = match std::fs::read_to_string(&meta_path)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .filter(|m| {
            m["events"].as_u64() >= Some(o.events) && m["nodes"].as_u64() >= Some(o.nodes as u64)
        }) {
        Some(m) => {
            println!("startup: reusing the data dir {} ({m})", dir.display());
            m
        }
        None => {
            let m = build(ctx, o, &dir).await?;
            std::fs::write(&meta_path, m.to_string())?;
            m
        }
    };
    let session = meta["session"].as_str().unwrap_or_default().to_string();
    let mut case = Case {
        label: format!("{} events, {} nodes", meta["events"], meta["nodes"]),
        params: meta.clone(),
        runs: Vec::new(),
    };
    for r in 0..ctx.runs {
        let t0 = Instant::now();
        let server = ctx
            .target
            .start(Launch {
                data_dir: Some(dir.clone()),
                ..Launch::default()
            })
            .await?;
        server.wait_healthy(Duration::from_secs(120)).await?;
        let healthy = t0.elapsed();
        let mut http = Http::connect(server.addr).await?;
        let v = http
            .gql(
                "query($s: ID!) { graph(sessionId: $s) { version nodeCount } }",
                json!({"s": session}),
            )
            .await?;
        let graph = t0.elapsed();
        let nodes = n(&v, "/graph/nodeCount")?;
        let t1 = Instant::now();
        let full = http
            .gql(
                "query($s: ID!) { graph(sessionId: $s) { nodes { id name } } }",
                json!({"s": session}),
            )
            .await?;
        let full_graph = t1.elapsed();
        let full_nodes = full
            .pointer("/graph/nodes")
            .and_then(|x| x.as_array())
            .map_or(0, |a| a.len());
        let rss = server.rss_kib();
        let mut run = Run::default();
        run.set("healthz_s", healthy.as_secs_f64());
        run.set("graph_query_s", graph.as_secs_f64());
        run.set("full_graph_query_s", full_graph.as_secs_f64());
        run.set("nodes", nodes as f64);
        run.note("full_graph_nodes", json!(full_nodes));
        run.note("rss_kib", json!(rss));
        println!(
            "startup run {}: /healthz after {:.2} s, graph query {:.2} s ({nodes} nodes); all nodes fetched in {:.2} s more",
            r + 1,
            healthy.as_secs_f64(),
            graph.as_secs_f64(),
            full_graph.as_secs_f64()
        );
        case.runs.push(run);
        drop(http);
        server.stop().await?;
    }
    let label = case.label.clone();
    report.cases.push(case);
    report.target(
        "serving after start (graph query answered)",
        &label,
        "graph_query_s",
        "<=",
        5.0,
    );
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        report
            .notes
            .push(format!("data dir kept at {}", dir.display()));
    }
    Ok(report)
}

/// Builds the data dir through the API; returns what it holds.
async fn build(ctx: &Ctx, o: &Opts, dir: &std::path::Path) -> anyhow::Result<Value> {
    println!(
        "startup: building {} nodes and {} events in {} ...",
        o.nodes,
        o.events,
        dir.display()
    );
    let t = Instant::now();
    let server = ctx
        .target
        .start(Launch {
            data_dir: Some(dir.to_path_buf()),
            ..Launch::default()
        })
        .await?;
    let mut http = Http::connect(server.addr).await?;
    let api::Built {
        project: p, tasks, ..
    } = api::build_graph(&mut http, "startup", o.nodes, 1000).await?;
    // Updates, 1000 per batch, two clients at a time, until the log is long enough.
    let mut events = api::last_seq(&mut http, &p.session).await?;
    let mut round = 0u64;
    while events < o.events {
        let mut handles = Vec::new();
        for c in 0..2u64 {
            let addr = server.addr;
            let session = p.session.clone();
            let commands: Vec<Value> = (0..1000usize)
                .map(|i| {
                    let node = &tasks[(round as usize * 2000 + c as usize * 1000 + i) % tasks.len()];
                    json!({"updateProperty": {"nodeId": node, "propertyId": api::TEXT_PROP, "value": format!("r{round}c{c}i{i}")}})
                })
                .collect();
            handles.push(tokio::spawn(async move {
                let mut h = Http::connect(addr).await?;
                h.gql(
                    "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }",
                    json!({"s": session, "c": commands}),
                )
                .await
            }));
        }
        for h in handles {
            h.await??;
        }
        round += 1;
        events = api::last_seq(&mut http, &p.session).await?;
        if round % 100 == 0 {
            println!(
                "startup: {events} events after {:.0} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    let nodes = api::node_count(&mut http, &p.session).await?;
    drop(http);
    server.stop().await?;
    let db_bytes: u64 = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "startup: built {nodes} nodes, {events} events in {:.0} s; data dir {:.0} MiB",
        t.elapsed().as_secs_f64(),
        db_bytes as f64 / 1048576.0
    );
    Ok(
        json!({"session": p.session, "events": events, "nodes": nodes, "build_s": t.elapsed().as_secs_f64(),
              "data_dir_mib": (db_bytes as f64 / 1048576.0).round()}),
    )
}
