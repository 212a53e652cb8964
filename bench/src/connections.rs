//! Scenario 4, connections and memory: how fast 10,000 graphql-ws clients connect and subscribe,
//! and the server's RSS idle, per session (empty, with a project, with a 10,000-node graph) and per
//! idle subscriber.
//!
//! Memory is the growth of the server's `VmRSS` (/proc/PID/status) over a
//! step, divided by how many things the step added, read after the server
//! went quiet. One server per run goes through every step in order.

use std::time::Duration;

use serde_json::json;

use crate::api;
use crate::fleet::{self, Drain};
use crate::http::Http;
use crate::server::{Launch, Server};
use crate::stats::{Case, Report, Run};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Websocket clients to connect; each subscribes to one session's events.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Sessions the clients are spread over (1 = all on one session).
    #[arg(long, default_value_t = 100)]
    pub client_sessions: usize,
    /// Empty sessions (createSession) created to measure their memory.
    #[arg(long, default_value_t = 10_000)]
    pub empty_sessions: usize,
    /// Sessions with a fresh project (root node only) created to measure their memory.
    #[arg(long, default_value_t = 1_000)]
    pub project_sessions: usize,
    /// Sessions with a big graph created to measure their memory.
    #[arg(long, default_value_t = 3)]
    pub big_sessions: usize,
    /// Nodes in each big graph.
    #[arg(long, default_value_t = 10_000)]
    pub big_nodes: usize,
    /// Websocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Use the in-memory store (default: the durable SQLite store).
    #[arg(long)]
    pub in_memory: bool,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let store = crate::fanout::store_name(ctx, o.in_memory);
    let mut report = Report::new(
        "connections",
        json!({"clients": o.clients, "client_sessions": o.client_sessions, "empty_sessions": o.empty_sessions,
               "project_sessions": o.project_sessions, "big_sessions": o.big_sessions, "big_nodes": o.big_nodes,
               "store": store, "runs": ctx.runs, "connect_concurrency": o.connect_concurrency}),
    );
    let label = format!("{} clients / {} sessions", o.clients, o.client_sessions);
    let mut case = Case {
        label: label.clone(),
        params: json!({"clients": o.clients, "sessions": o.client_sessions, "store": store}),
        runs: Vec::new(),
    };
    for r in 0..ctx.runs {
        let run = once(ctx, o).await?;
        println!(
            "connections run {}: {:.0} clients/s ({:.1} s for all), idle RSS {:.1} MiB, {:.2} KiB/empty session, {:.1} KiB/big session node, {:.1} KiB/subscriber",
            r + 1,
            run.get("connect_per_s").unwrap_or(f64::NAN),
            run.get("connect_all_s").unwrap_or(f64::NAN),
            run.get("rss_idle_mib").unwrap_or(f64::NAN),
            run.get("kib_per_empty_session").unwrap_or(f64::NAN),
            run.get("kib_per_big_session").unwrap_or(f64::NAN) / o.big_nodes as f64,
            run.get("kib_per_subscriber").unwrap_or(f64::NAN),
        );
        case.runs.push(run);
    }
    report.cases.push(case);
    report.target(
        "RSS per idle subscriber connection",
        &label,
        "kib_per_subscriber",
        "<=",
        64.0,
    );
    report.target(
        "RSS per empty session",
        &label,
        "kib_per_empty_session",
        "<=",
        4.0,
    );
    if ctx.target.external() && ctx.target.pid.is_none() {
        report
            .notes
            .push("no --server-pid: memory could not be read".to_string());
    }
    Ok(report)
}

/// Lets the server settle (allocator, lazy work), then reads its RSS in KiB.
async fn rss_settled(server: &Server) -> Option<u64> {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.rss_kib()
}

fn per(after: Option<u64>, before: Option<u64>, n: usize) -> f64 {
    match (after, before) {
        (Some(a), Some(b)) if n > 0 => (a as f64 - b as f64) / n as f64,
        _ => f64::NAN,
    }
}

async fn once(ctx: &Ctx, o: &Opts) -> anyhow::Result<Run> {
    let server = ctx
        .target
        .start(Launch {
            in_memory: o.in_memory,
            ..Launch::default()
        })
        .await?;
    let mut run = Run::default();
    run.note("load_before", json!(crate::stats::loadavg()));
    let mut http = Http::connect(server.addr).await?;
    // Idle: after one trivial request, so the HTTP stack and schema are warm.
    http.gql("{ templates { id } }", json!({})).await?;
    let idle = rss_settled(&server).await;
    run.set("rss_idle_mib", idle.map_or(f64::NAN, |k| k as f64 / 1024.0));

    // Empty sessions, created by 8 clients at once.
    let before = idle;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let addr = server.addr;
        let count = o.empty_sessions / 8 + usize::from(w < o.empty_sessions % 8);
        tasks.push(tokio::spawn(async move {
            let mut h = Http::connect(addr).await?;
            for _ in 0..count {
                api::create_session(&mut h).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let after = rss_settled(&server).await;
    run.set(
        "kib_per_empty_session",
        per(after, before, o.empty_sessions),
    );

    // Sessions with a new project (root node, one workstream).
    let before = after;
    let mut client_sessions = Vec::new();
    for i in 0..o.project_sessions {
        let p = api::create_project(&mut http, &format!("p{i}")).await?;
        client_sessions.push(p.session);
    }
    let after = rss_settled(&server).await;
    run.set(
        "kib_per_project_session",
        per(after, before, o.project_sessions),
    );

    // Sessions with a big graph, built 1000 nodes per executeBatch.
    let before = after;
    for b in 0..o.big_sessions {
        let p = api::create_project(&mut http, &format!("big{b}")).await?;
        let ws = api::create_batch(
            &mut http,
            &p.session,
            std::slice::from_ref(&p.root),
            api::WORKSTREAM,
            9,
            None,
        )
        .await?;
        let mut parents = vec![p.workstream.clone()];
        parents.extend(ws);
        let mut remaining = o.big_nodes.saturating_sub(1 + parents.len());
        while remaining > 0 {
            let count = remaining.min(1000);
            api::create_batch(&mut http, &p.session, &parents, api::TASK, count, None).await?;
            remaining -= count;
        }
    }
    let after = rss_settled(&server).await;
    run.set("kib_per_big_session", per(after, before, o.big_sessions));

    // Subscribers, spread over the first `client_sessions` project sessions.
    let sessions: Vec<String> = if o.client_sessions <= client_sessions.len() {
        client_sessions[..o.client_sessions.max(1)].to_vec()
    } else {
        let mut s = client_sessions.clone();
        while s.len() < o.client_sessions {
            s.push(api::create_project(&mut http, "subs").await?.session);
        }
        s
    };
    let before = rss_settled(&server).await;
    let fleet = fleet::connect(
        server.addr,
        &sessions,
        (0..o.clients)
            .map(|i| (i % sessions.len(), Drain))
            .collect(),
        "",
        o.connect_concurrency,
        "conn",
    )
    .await?;
    let connected = fleet.connect.len();
    let mut connect = fleet.connect.clone();
    run.set("connect_all_s", fleet.connect_total.as_secs_f64());
    run.set(
        "connect_per_s",
        connected as f64 / fleet.connect_total.as_secs_f64(),
    );
    run.set("connect_p50_ms", connect.pct_ms(50.0));
    run.set("connect_p99_ms", connect.pct_ms(99.0));
    run.set("connect_errors", fleet.connect_errors.len() as f64);
    if let Some(e) = fleet.connect_errors.first() {
        run.note("first_connect_error", json!(e));
    }
    let mut targets = Vec::new();
    for s in &sessions {
        targets.push(api::last_seq(&mut http, s).await?);
    }
    let settle = fleet
        .wait_caught_up(&targets, Duration::from_secs(600))
        .await?;
    run.set("settle_s", settle.as_secs_f64());
    let after = rss_settled(&server).await;
    run.set("kib_per_subscriber", per(after, before, connected));
    run.set(
        "rss_with_subscribers_mib",
        after.map_or(f64::NAN, |k| k as f64 / 1024.0),
    );
    let outcomes = fleet.stop().await;
    let (received, seq_errors, resyncs, failed) = fleet::totals(&outcomes);
    run.set("lost_or_out_of_order", seq_errors as f64);
    run.set("resyncs", resyncs as f64);
    run.note("subscribers_failed", json!(failed));
    run.note("events_received", json!(received));
    let gone = rss_settled(&server).await;
    run.note("rss_kib_after_disconnect", json!(gone));
    drop(http);
    server.stop().await?;
    Ok(run)
}
