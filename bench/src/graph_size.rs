//! Scenario 5, graph size: the cost of one updateProperty and one createNode at 100 vs 100,000 nodes.
//!
//! The graph is built with executeBatch (1000 createNode commands per batch):
//! the root, `ceil(N / 1000)` workstreams and tasks spread evenly under them.
//! Then one client sends `--ops` updateProperty requests on random tasks and
//! `--ops` createNode requests under random workstreams, one at a time, and
//! the latency of each is recorded.

use std::time::Instant;

use serde_json::json;

use crate::api;
use crate::http::Http;
use crate::server::Launch;
use crate::stats::{Case, Report, Run, Samples};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Graph sizes in nodes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,100000")]
    pub sizes: Vec<usize>,
    /// Requests of each kind measured per run.
    #[arg(long, default_value_t = 2000)]
    pub ops: usize,
    /// createNode commands per executeBatch while building.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Use the in-memory store (default: the durable SQLite store).
    #[arg(long)]
    pub in_memory: bool,
    /// updateProperty requests sent before measuring. The default pushes the
    /// build's big batches out of the undo history (1000 steps by default), so
    /// their eviction is not measured as the cost of an update.
    #[arg(long, default_value_t = 1100)]
    pub warmup_ops: usize,
}

/// A small deterministic PRNG (xorshift64*), so runs pick the same kind of nodes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let store = crate::fanout::store_name(ctx, o.in_memory);
    let mut report = Report::new(
        "graph-size",
        json!({"sizes": o.sizes, "ops": o.ops, "batch": o.batch, "warmup_ops": o.warmup_ops, "store": store, "runs": ctx.runs}),
    );
    for &n in &o.sizes {
        let mut case = Case {
            label: format!("N={n}"),
            params: json!({"nodes": n, "store": store}),
            runs: Vec::new(),
        };
        for r in 0..ctx.runs {
            let run = once(ctx, o, n, r as u64).await?;
            println!(
                "graph-size N={n} run {}: update p50 {:.3} ms mean {:.3} ms, create p50 {:.3} ms mean {:.3} ms (build {:.1} s)",
                r + 1,
                run.get("update_p50_ms").unwrap_or(f64::NAN),
                run.get("update_mean_ms").unwrap_or(f64::NAN),
                run.get("create_p50_ms").unwrap_or(f64::NAN),
                run.get("create_mean_ms").unwrap_or(f64::NAN),
                run.get("build_s").unwrap_or(f64::NAN),
            );
            case.runs.push(run);
        }
        report.cases.push(case);
    }
    // The ratio of the medians, largest graph over smallest, as its own row.
    if let (Some(small), Some(big)) = (o.sizes.iter().min(), o.sizes.iter().max()) {
        if small != big {
            let s = report.case(&format!("N={small}")).cloned();
            let b = report.case(&format!("N={big}")).cloned();
            if let (Some(s), Some(b)) = (s, b) {
                let mut ratio = Run::default();
                for m in [
                    "update_p50_ms",
                    "update_mean_ms",
                    "create_p50_ms",
                    "create_mean_ms",
                ] {
                    if let (Some(x), Some(y)) = (s.agg(m), b.agg(m)) {
                        ratio.set(m, y.median / x.median);
                    }
                }
                let label = format!("ratio N={big}/N={small}");
                report.cases.push(Case {
                    label: label.clone(),
                    params: json!({"ratio_of_medians": [big, small]}),
                    runs: vec![ratio],
                });
                report.target(
                    "updateProperty cost independent of size (p50)",
                    &label,
                    "update_p50_ms",
                    "<=",
                    1.2,
                );
                report.target(
                    "createNode cost independent of size (p50)",
                    &label,
                    "create_p50_ms",
                    "<=",
                    1.2,
                );
                report.target(
                    "updateProperty cost independent of size (mean)",
                    &label,
                    "update_mean_ms",
                    "<=",
                    1.2,
                );
                report.target(
                    "createNode cost independent of size (mean)",
                    &label,
                    "create_mean_ms",
                    "<=",
                    1.2,
                );
            }
        }
    }
    Ok(report)
}

async fn once(ctx: &Ctx, o: &Opts, n: usize, seed: u64) -> anyhow::Result<Run> {
    let server = ctx
        .target
        .start(Launch {
            in_memory: o.in_memory,
            ..Launch::default()
        })
        .await?;
    let mut http = Http::connect(server.addr).await?;
    let t = Instant::now();
    let api::Built {
        project: p,
        workstreams,
        tasks,
    } = api::build_graph(&mut http, "graph-size", n, o.batch).await?;
    let build = t.elapsed();
    let nodes = api::node_count(&mut http, &p.session).await?;
    let mut run = Run::default();
    run.set("nodes", nodes as f64);
    run.set("build_s", build.as_secs_f64());
    run.note("load_before", json!(crate::stats::loadavg()));

    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (seed + 1) ^ n as u64);
    let mut update = Samples::with_capacity(o.ops);
    for i in 0..o.warmup_ops {
        let node = &tasks[rng.below(tasks.len())];
        api::send(
            &mut http,
            api::update_body(&p.session, node, api::TEXT_PROP, &json!(format!("w{i}"))),
        )
        .await?;
    }
    for i in 0..o.ops {
        let node = &tasks[rng.below(tasks.len())];
        let body = api::update_body(&p.session, node, api::TEXT_PROP, &json!(format!("u{i}")));
        let t0 = Instant::now();
        api::send(&mut http, body).await?;
        update.push(t0.elapsed().as_micros() as u64);
    }
    let mut create = Samples::with_capacity(o.ops);
    for _ in 0..o.ops {
        let parent = &workstreams[rng.below(workstreams.len())];
        let body = api::create_node_body(&p.session, parent, api::TASK);
        let t0 = Instant::now();
        api::send(&mut http, body).await?;
        create.push(t0.elapsed().as_micros() as u64);
    }
    run.set("update_p50_ms", update.pct_ms(50.0));
    run.set("update_p99_ms", update.pct_ms(99.0));
    run.set("update_mean_ms", update.mean_ms());
    run.set("update_max_ms", update.max_ms());
    run.set("create_p50_ms", create.pct_ms(50.0));
    run.set("create_p99_ms", create.pct_ms(99.0));
    run.set("create_mean_ms", create.mean_ms());
    run.set("create_max_ms", create.max_ms());
    if let Some(rss) = server.rss_kib() {
        run.set("server_rss_mib", rss as f64 / 1024.0);
    }
    drop(http);
    server.stop().await?;
    Ok(run)
}
