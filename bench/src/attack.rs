//! Scenario 7, attack: issue 10's hostile requests sent nonstop while an ordinary client queries.
//!
//! `--attackers` connections each loop over the attacks (14 self-applying
//! kits in one batch, a 30-level fragment document, 1,000 `__schema`
//! aliases, an oversize name, an oversize value, an over-long batch, a
//! quadratic `nodes { parent { children } }` on a flat graph) for `--secs`
//! seconds. Meanwhile one ordinary client sends a small graph query one at a
//! time and a prober asks `/healthz` every 50 ms. Reported: the ordinary
//! query's latency, /healthz availability, how many attacks were refused
//! (LIMIT_EXCEEDED) and how fast, the server's peak RSS and CPU, and whether
//! the graph is unchanged afterwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::api;
use crate::http::{data, error_code, n, Http};
use crate::server::{self, Launch};
use crate::stats::{Case, Report, Run, Samples};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Seconds of attack per run.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Concurrent attacking connections.
    #[arg(long, default_value_t = 4)]
    pub attackers: usize,
    /// Tasks under the project's workstream (the flat graph the quadratic query walks).
    #[arg(long, default_value_t = 2000)]
    pub tasks: usize,
}

const ORDINARY: &str =
    "query($s: ID!) { graph(sessionId: $s) { version nodeCount roots { id name } } }";

/// `levels` fragments, each spreading the previous one twice.
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

/// Every attack as (name, query, variables).
fn attacks(session: &str, root: &str) -> Vec<(&'static str, String, Value)> {
    let batch = "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }";
    let kits: Vec<Value> = (0..14)
        .map(|_| json!({ "applyKit": { "targetId": root, "kitRootId": root } }))
        .collect();
    let renames: Vec<Value> = (0..1001)
        .map(|_| json!({ "renameNode": { "nodeId": root, "name": "x" } }))
        .collect();
    let mut aliases = String::from("{");
    for i in 0..1000 {
        aliases.push_str(&format!(
            " a{i}: __schema {{ types {{ name fields {{ name }} }} }}"
        ));
    }
    aliases.push('}');
    vec![
        ("apply_kit_x14", batch.to_string(), json!({ "s": session, "c": kits })),
        ("fragment_bomb_30", fragment_bomb(30), json!({})),
        ("schema_aliases_1000", aliases, json!({})),
        (
            "oversize_name",
            "mutation($s: ID!, $c: CommandInput!) { execute(sessionId: $s, command: $c) { version } }".to_string(),
            json!({ "s": session, "c": { "renameNode": { "nodeId": root, "name": "n".repeat(1 << 20) } } }),
        ),
        (
            "oversize_value",
            "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"summary\", value: $v) { version } }".to_string(),
            json!({ "s": session, "n": root, "v": "v".repeat(4 << 20) }),
        ),
        ("batch_1001", batch.to_string(), json!({ "s": session, "c": renames })),
        (
            "quadratic_children",
            "query($s: ID!) { graph(sessionId: $s) { nodes { parent { children { id name properties } } } } }".to_string(),
            json!({ "s": session }),
        ),
    ]
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "attack",
        json!({"secs": o.secs, "attackers": o.attackers, "tasks": o.tasks, "runs": ctx.runs}),
    );
    let mut case = Case {
        label: format!("{} attackers, {} s", o.attackers, o.secs),
        params: json!({"attackers": o.attackers, "secs": o.secs}),
        runs: Vec::new(),
    };
    for r in 0..ctx.runs {
        let run = once(ctx, o).await?;
        println!(
            "attack run {}: ordinary p50 {:.2} ms p99 {:.2} ms, healthz {:.1}% ok, {} of {} attacks refused",
            r + 1,
            run.get("ordinary_p50_ms").unwrap_or(f64::NAN),
            run.get("ordinary_p99_ms").unwrap_or(f64::NAN),
            run.get("healthz_ok_pct").unwrap_or(f64::NAN),
            run.get("attacks_refused").unwrap_or(f64::NAN),
            run.get("attacks_sent").unwrap_or(f64::NAN),
        );
        case.runs.push(run);
    }
    let label = case.label.clone();
    report.cases.push(case);
    report.target(
        "ordinary query under attack (p99)",
        &label,
        "ordinary_p99_ms",
        "<=",
        100.0,
    );
    report.target(
        "/healthz answered under attack",
        &label,
        "healthz_ok_pct",
        ">=",
        100.0,
    );
    report.target(
        "every attack refused",
        &label,
        "attacks_not_refused",
        "<=",
        0.0,
    );
    Ok(report)
}

/// What the ordinary client and the /healthz prober saw.
struct Measured {
    latency: Samples,
    ordinary_errors: u64,
    /// /healthz probes answered 200, and sent.
    ok: u64,
    total: u64,
    peak_kib: u64,
}

/// The ordinary client's queries until `deadline`, and a /healthz probe every 50 ms on a fresh connection until `stop`.
async fn measure(
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    session: String,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Measured> {
    let prober = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut total, mut peak_kib) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                total += 1;
                if server::healthz(addr).await {
                    ok += 1;
                }
                if let Some(kib) = pid.and_then(server::rss_kib) {
                    peak_kib = peak_kib.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, total, peak_kib)
        })
    };
    let mut ordinary = Http::connect(addr).await?;
    let mut latency = Samples::with_capacity(100_000);
    let mut ordinary_errors = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        match ordinary.gql(ORDINARY, json!({ "s": session })).await {
            Ok(_) => latency.push(t.elapsed().as_micros() as u64),
            Err(_) => ordinary_errors += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, total, peak_kib) = prober.await?;
    Ok(Measured {
        latency,
        ordinary_errors,
        ok,
        total,
        peak_kib,
    })
}

async fn once(ctx: &Ctx, o: &Opts) -> anyhow::Result<Run> {
    let server = ctx.target.start(Launch::default()).await?;
    let addr = server.addr;
    let mut setup = Http::connect(addr).await?;
    let project = api::create_project(&mut setup, "attack").await?;
    let parents = vec![project.workstream.clone()];
    let mut left = o.tasks;
    while left > 0 {
        let count = left.min(1000);
        api::create_batch(
            &mut setup,
            &project.session,
            &parents,
            api::TASK,
            count,
            None,
        )
        .await?;
        left -= count;
    }
    let before = setup.gql(ORDINARY, json!({ "s": project.session })).await?;
    let cpu_before = server.cpu_ms();

    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(o.secs);
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    // Each body is serialised once: building a 4 MiB body per request took
    // the bench's own workers, and with them the ordinary client's, for
    // milliseconds at a time.
    let bodies: Arc<Vec<(&'static str, Bytes)>> = Arc::new(
        attacks(&project.session, &project.root)
            .into_iter()
            .map(|(name, query, variables)| {
                let body = serde_json::to_vec(&json!({ "query": query, "variables": variables }))
                    .expect("a JSON body");
                (name, Bytes::from(body))
            })
            .collect(),
    );
    for a in 0..o.attackers {
        let list = bodies.clone();
        let (stop, sent, refused) = (stop.clone(), sent.clone(), refused.clone());
        attackers.push(tokio::spawn(async move {
            let mut http = Http::connect(addr).await?;
            let mut latency = Samples::with_capacity(1024);
            let mut not_refused: Vec<String> = Vec::new();
            let mut i = a;
            while !stop.load(Ordering::Relaxed) {
                let (name, body) = &list[i % list.len()];
                i += 1;
                let t = Instant::now();
                let result = match http.post(body.clone()).await {
                    Ok(bytes) => data(&bytes),
                    Err(e) => Err(e),
                };
                latency.push(t.elapsed().as_micros() as u64);
                sent.fetch_add(1, Ordering::Relaxed);
                match result {
                    Err(e) if error_code(&e) == "LIMIT_EXCEEDED" => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if error_code(&e) == "TRANSPORT" => {
                        not_refused.push(format!("{name}: {e}"));
                        http = Http::connect(addr).await?;
                    }
                    Err(e) => not_refused.push(format!("{name}: {e}")),
                    Ok(_) => not_refused.push(format!("{name}: answered")),
                }
            }
            anyhow::Ok((latency, not_refused))
        }));
    }

    // The ordinary client and the prober run on a runtime of their own, on
    // their own thread: on the attackers' runtime their latency would include
    // waiting for a bench worker busy receiving an attack's answer.
    let measured = {
        let stop = stop.clone();
        let pid = server.pid;
        let session = project.session.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(measure(addr, pid, session, deadline, stop))
        })
    };
    let measured = tokio::task::spawn_blocking(move || measured.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))??;
    let Measured {
        mut latency,
        ordinary_errors,
        ok,
        total,
        peak_kib,
    } = measured;

    let mut attack_latency = Samples::with_capacity(1024);
    let mut not_refused = Vec::new();
    for a in attackers {
        let (l, n) = a.await??;
        attack_latency.extend(&l);
        not_refused.extend(n);
    }
    let after = setup.gql(ORDINARY, json!({ "s": project.session })).await?;
    let cpu_after = server.cpu_ms();
    let unchanged = n(&before, "/graph/version")? == n(&after, "/graph/version")?
        && n(&before, "/graph/nodeCount")? == n(&after, "/graph/nodeCount")?;

    let mut run = Run::default();
    run.set("ordinary_p50_ms", latency.pct_ms(50.0));
    run.set("ordinary_p99_ms", latency.pct_ms(99.0));
    run.set("ordinary_max_ms", latency.max_ms());
    run.set("ordinary_queries", latency.len() as f64);
    run.set("ordinary_errors", ordinary_errors as f64);
    run.set("healthz_ok_pct", 100.0 * ok as f64 / total.max(1) as f64);
    run.set("healthz_probes", total as f64);
    run.set("attacks_sent", sent.load(Ordering::Relaxed) as f64);
    run.set("attacks_refused", refused.load(Ordering::Relaxed) as f64);
    run.set("attacks_not_refused", not_refused.len() as f64);
    run.set("attack_p50_ms", attack_latency.pct_ms(50.0));
    run.set("attack_p99_ms", attack_latency.pct_ms(99.0));
    run.set("graph_unchanged", if unchanged { 1.0 } else { 0.0 });
    if peak_kib > 0 {
        run.set("server_peak_rss_mib", peak_kib as f64 / 1024.0);
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        run.set("server_cpu_s", (b - a) / 1000.0);
    }
    not_refused.truncate(10);
    run.note("not_refused_examples", json!(not_refused));
    server.stop().await?;
    Ok(run)
}
