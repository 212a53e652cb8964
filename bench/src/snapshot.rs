//! Scenario 10, snapshots under writes: updateProperty latency on a 100,000-node project while
//! the server snapshots it, against a run in which no snapshot falls.
//!
//! A project's snapshot is due every `max(--snapshot-interval, nodes / 8)`
//! ops: 12,500 for 100,000 nodes. One client sends updateProperty requests
//! one at a time on random tasks for `--ops` requests (by default enough for
//! two snapshots), and each answer's `version` says where the snapshots fell.
//! The case "no snapshot" runs the server with `--snapshot-interval
//! 10000000`, so none is due. If snapshots blocked writers, the updates just
//! after each due version would show it: their worst latency is reported
//! beside the run's p99 and maximum.

use std::time::Instant;

use serde_json::json;

use crate::api;
use crate::graph_size::Rng;
use crate::http::{n, Http};
use crate::server::Launch;
use crate::stats::{Case, Report, Run, Samples};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Nodes in the project.
    #[arg(long, default_value_t = 100_000)]
    pub nodes: usize,
    /// updateProperty requests measured per run.
    #[arg(long, default_value_t = 26_000)]
    pub ops: usize,
    /// Updates after each due version counted as "during the snapshot".
    #[arg(long, default_value_t = 500)]
    pub window: u64,
    /// Use the in-memory store (default: the durable SQLite store).
    #[arg(long)]
    pub in_memory: bool,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let store = crate::fanout::store_name(ctx, o.in_memory);
    let due = (o.nodes as u64 / 8).max(1000);
    let mut report = Report::new(
        "snapshot",
        json!({"nodes": o.nodes, "ops": o.ops, "window": o.window, "store": store, "runs": ctx.runs,
               "snapshot_due_every_ops": due}),
    );
    for (label, args) in [
        (format!("snapshots every {due} ops"), Vec::new()),
        (
            "no snapshot".to_string(),
            vec!["--snapshot-interval".to_string(), "10000000".to_string()],
        ),
    ] {
        let mut case = Case {
            label: label.clone(),
            params: json!({"nodes": o.nodes, "store": store, "args": args}),
            runs: Vec::new(),
        };
        for r in 0..ctx.runs {
            let run = once(ctx, o, &args, due).await?;
            println!(
                "snapshot [{label}] run {}: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; after due versions: max {:.1} ms ({} due)",
                r + 1,
                run.get("p50_ms").unwrap_or(f64::NAN),
                run.get("p99_ms").unwrap_or(f64::NAN),
                run.get("max_ms").unwrap_or(f64::NAN),
                run.get("after_due_max_ms").unwrap_or(f64::NAN),
                run.get("due_versions").unwrap_or(f64::NAN),
            );
            case.runs.push(run);
        }
        report.cases.push(case);
    }
    Ok(report)
}

async fn once(ctx: &Ctx, o: &Opts, args: &[String], due: u64) -> anyhow::Result<Run> {
    let server = ctx
        .target
        .start(Launch {
            in_memory: o.in_memory,
            args: args.to_vec(),
            ..Launch::default()
        })
        .await?;
    let mut http = Http::connect(server.addr).await?;
    let built = api::build_graph(&mut http, "snapshot", o.nodes, 1000).await?;
    let session = built.project.session.clone();
    let mut rng = Rng::new(7);
    let mut all = Samples::with_capacity(o.ops);
    let mut after_due = Samples::with_capacity(1024);
    let mut due_versions = 0u64;
    let started = Instant::now();
    for i in 0..o.ops {
        let task = &built.tasks[rng.below(built.tasks.len())];
        let body = api::update_body(&session, task, api::TEXT_PROP, &json!(format!("s{i}")));
        let t = Instant::now();
        let v = api::send(&mut http, body).await?;
        let micros = t.elapsed().as_micros() as u64;
        let version = n(&v, "/updateProperty/version")?;
        all.push(micros);
        // The snapshot starts after the commit that makes it due.
        let since_due = version % due;
        if since_due == 0 {
            due_versions += 1;
        }
        if version >= due && since_due < o.window {
            after_due.push(micros);
        }
    }
    let mut run = Run::default();
    run.set("p50_ms", all.pct_ms(50.0));
    run.set("p99_ms", all.pct_ms(99.0));
    run.set("p999_ms", all.pct_ms(99.9));
    run.set("max_ms", all.max_ms());
    run.set("after_due_p99_ms", after_due.pct_ms(99.0));
    run.set("after_due_max_ms", after_due.max_ms());
    run.set("due_versions", due_versions as f64);
    run.set(
        "updates_per_s",
        o.ops as f64 / started.elapsed().as_secs_f64(),
    );
    run.set("rss_mib", server.rss_kib().unwrap_or(0) as f64 / 1024.0);
    server.stop().await?;
    Ok(run)
}
