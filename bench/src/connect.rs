//! Scenario 11, connecting: N websocket subscribers arrive at once (a deploy, a
//! failover, a network blip) on one session or spread over many; the time until
//! every one is ready (subscribed, its own join seen, and caught up with every
//! event committed meanwhile) and the server CPU this cost.
//!
//! Joining is what a connect storm costs the server besides the sockets: each
//! join is presence every subscriber already there is told of. A subscriber is
//! ready once it saw its own join (see `ws::subscribe`); the run ends once all
//! are ready and every subscriber has received the session's newest event.

use std::time::Duration;

use serde_json::json;

use crate::api;
use crate::fleet::{self, Drain};
use crate::http::Http;
use crate::server::Launch;
use crate::stats::{Case, Report, Run};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Cases as CLIENTSxSESSIONS, comma separated (clients spread evenly over the sessions).
    #[arg(long, default_value = "10000x1,10000x100")]
    pub cases: String,
    /// Websocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Use the in-memory store (default: the durable SQLite store).
    #[arg(long)]
    pub in_memory: bool,
}

fn parse_cases(text: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    text.split(',')
        .map(|c| {
            let (n, s) = c
                .trim()
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("a case is CLIENTSxSESSIONS, not {c:?}"))?;
            Ok((n.parse()?, s.parse::<usize>()?.max(1)))
        })
        .collect()
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let store = crate::fanout::store_name(ctx, o.in_memory);
    let cases = parse_cases(&o.cases)?;
    let mut report = Report::new(
        "connect",
        json!({"cases": o.cases, "store": store, "runs": ctx.runs,
               "connect_concurrency": o.connect_concurrency}),
    );
    for (clients, sessions) in cases {
        let label = format!("{clients} clients / {sessions} sessions");
        let mut case = Case {
            label: label.clone(),
            params: json!({"clients": clients, "sessions": sessions, "store": store}),
            runs: Vec::new(),
        };
        for r in 0..ctx.runs {
            let run = once(ctx, o, clients, sessions).await?;
            println!(
                "connect {label} run {}: all ready in {:.2} s (connected {:.2} s), server CPU {:.2} s ({:.0} us per client), {} errors",
                r + 1,
                run.get("ready_s").unwrap_or(f64::NAN),
                run.get("connect_all_s").unwrap_or(f64::NAN),
                run.get("server_cpu_s").unwrap_or(f64::NAN),
                run.get("server_cpu_us_per_client").unwrap_or(f64::NAN),
                run.get("connect_errors").unwrap_or(f64::NAN),
            );
            case.runs.push(run);
        }
        report.cases.push(case);
        let bound = if sessions == 1 { 10.0 } else { 5.0 };
        report.target(
            "every subscriber connected and ready",
            &label,
            "ready_s",
            "<=",
            bound,
        );
    }
    Ok(report)
}

async fn once(ctx: &Ctx, o: &Opts, clients: usize, sessions: usize) -> anyhow::Result<Run> {
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
    let mut ids = Vec::with_capacity(sessions);
    for i in 0..sessions {
        ids.push(
            api::create_project(&mut http, &format!("c{i}"))
                .await?
                .session,
        );
    }
    let cpu_before = server.cpu_ms();
    let fleet = fleet::connect(
        server.addr,
        &ids,
        (0..clients).map(|i| (i % sessions, Drain)).collect(),
        "",
        o.connect_concurrency,
        "connect",
    )
    .await?;
    let mut connect = fleet.connect.clone();
    let mut targets = Vec::with_capacity(sessions);
    for s in &ids {
        targets.push(api::last_seq(&mut http, s).await?);
    }
    let settle = fleet
        .wait_caught_up(&targets, Duration::from_secs(600))
        .await?;
    let cpu_after = server.cpu_ms();
    let ready = fleet.connect_total + settle;
    run.set("ready_s", ready.as_secs_f64());
    run.set("connect_all_s", fleet.connect_total.as_secs_f64());
    run.set("settle_s", settle.as_secs_f64());
    run.set("connect_p50_ms", connect.pct_ms(50.0));
    run.set("connect_p99_ms", connect.pct_ms(99.0));
    run.set("connect_errors", fleet.connect_errors.len() as f64);
    if let Some(e) = fleet.connect_errors.first() {
        run.note("first_connect_error", json!(e));
    }
    if let (Some(a), Some(b)) = (cpu_after, cpu_before) {
        run.set("server_cpu_s", (a - b) / 1000.0);
        run.set(
            "server_cpu_us_per_client",
            (a - b) * 1000.0 / clients.max(1) as f64,
        );
    }
    run.set(
        "server_rss_mib",
        server.rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0),
    );
    run.note("load_after", json!(crate::stats::loadavg()));
    let outcomes = fleet.stop().await;
    let (received, seq_errors, _resyncs, failed) = fleet::totals(&outcomes);
    run.set("events_received", received as f64);
    run.set("lost_or_out_of_order", seq_errors as f64);
    run.note("subscribers_failed", json!(failed));
    drop(http);
    server.stop().await?;
    Ok(run)
}
