//! Scenario 2, throughput: C concurrent HTTP clients sending updateProperty as fast as answers come back.
//!
//! Each client has its own keep-alive connection and its own task node, and
//! sends its next request as soon as the previous one is answered (closed
//! loop). Counted are the requests completed inside the measuring window
//! after a warm-up. The matrix: store (durable SQLite / in-memory) x one
//! shared session or one session per client x 0 or 100 subscribers attached
//! (spread over the sessions) x C.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::api;
use crate::fleet::{self, Drain};
use crate::http::Http;
use crate::server::Launch;
use crate::stats::{Case, Report, Run, Samples};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Concurrent HTTP clients (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub clients: Vec<usize>,
    /// Stores: durable, memory.
    #[arg(long, value_delimiter = ',', default_value = "memory,durable")]
    pub stores: Vec<String>,
    /// Session layouts: one (all clients on one session), many (one session per client).
    #[arg(long, value_delimiter = ',', default_value = "one,many")]
    pub sessions: Vec<String>,
    /// Subscribers attached during the run (comma-separated), spread over the sessions.
    #[arg(long, value_delimiter = ',', default_value = "0,100")]
    pub subscribers: Vec<usize>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 3.0)]
    pub duration_secs: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "throughput",
        json!({"clients": o.clients, "stores": o.stores, "sessions": o.sessions, "subscribers": o.subscribers,
               "duration_secs": o.duration_secs, "warmup_secs": o.warmup_secs, "runs": ctx.runs}),
    );
    for store in &o.stores {
        let in_memory = match store.as_str() {
            "memory" => true,
            "durable" => false,
            other => anyhow::bail!("unknown store '{other}' (durable or memory)"),
        };
        let store_label = crate::fanout::store_name(ctx, in_memory);
        for layout in &o.sessions {
            let many = match layout.as_str() {
                "one" => false,
                "many" => true,
                other => anyhow::bail!("unknown session layout '{other}' (one or many)"),
            };
            for &subs in &o.subscribers {
                for &c in &o.clients {
                    let label = format!("{store_label} {layout} subs={subs} C={c}");
                    let mut case = Case {
                        label: label.clone(),
                        params: json!({"store": store_label, "sessions": if many { c } else { 1 }, "subscribers": subs, "clients": c}),
                        runs: Vec::new(),
                    };
                    for r in 0..ctx.runs {
                        let run = once(ctx, o, in_memory, many, subs, c).await?;
                        println!(
                            "throughput {label} run {}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
                            r + 1,
                            run.get("mutations_per_s").unwrap_or(f64::NAN),
                            run.get("p50_ms").unwrap_or(f64::NAN),
                            run.get("p99_ms").unwrap_or(f64::NAN),
                            run.get("errors").unwrap_or(f64::NAN),
                        );
                        case.runs.push(run);
                    }
                    report.cases.push(case);
                }
            }
        }
    }
    report.target(
        "32 clients in-memory (one session)",
        "memory one subs=0 C=32",
        "mutations_per_s",
        ">=",
        15_000.0,
    );
    report.target(
        "32 clients durable (one session)",
        "durable one subs=0 C=32",
        "mutations_per_s",
        ">=",
        5_000.0,
    );
    Ok(report)
}

/// A prepared updateProperty body with a counter in the value: prefix + n + suffix.
struct Body {
    prefix: String,
    suffix: &'static str,
}

impl Body {
    fn new(session: &str, node: &str) -> Body {
        let query = "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \\\"notes\\\", value: $v) { version } }";
        Body {
            prefix: format!(
                r#"{{"query":"{query}","variables":{{"s":"{session}","n":"{node}","v":"v"#
            ),
            suffix: r#""}}"#,
        }
    }

    fn get(&self, n: u64) -> Bytes {
        let mut s = String::with_capacity(self.prefix.len() + 24);
        s.push_str(&self.prefix);
        s.push_str(&n.to_string());
        s.push_str(self.suffix);
        Bytes::from(s)
    }
}

struct ClientOut {
    latencies: Samples,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn once(
    ctx: &Ctx,
    o: &Opts,
    in_memory: bool,
    many: bool,
    subs: usize,
    c: usize,
) -> anyhow::Result<Run> {
    let server = ctx
        .target
        .start(Launch {
            in_memory,
            ..Launch::default()
        })
        .await?;
    let mut http = Http::connect(server.addr).await?;
    let mut sessions = Vec::new();
    let mut nodes = Vec::new();
    if many {
        for i in 0..c {
            let p = api::create_project(&mut http, &format!("throughput {i}")).await?;
            nodes.push(api::create_node(&mut http, &p.session, &p.workstream, api::TASK).await?);
            sessions.push(p.session);
        }
    } else {
        let p = api::create_project(&mut http, "throughput").await?;
        nodes = api::create_batch(
            &mut http,
            &p.session,
            std::slice::from_ref(&p.workstream),
            api::TASK,
            c,
            None,
        )
        .await?;
        sessions.push(p.session);
    }
    let fleet = fleet::connect(
        server.addr,
        &sessions,
        (0..subs).map(|i| (i % sessions.len(), Drain)).collect(),
        "",
        64,
        "tp",
    )
    .await?;
    let mut targets = Vec::new();
    for s in &sessions {
        targets.push(api::last_seq(&mut http, s).await?);
    }
    fleet
        .wait_caught_up(&targets, Duration::from_secs(120))
        .await?;

    let start = Instant::now() + Duration::from_millis(200);
    let warm_end = start + Duration::from_secs_f64(o.warmup_secs);
    let end = warm_end + Duration::from_secs_f64(o.duration_secs);
    let mut tasks = Vec::with_capacity(c);
    for j in 0..c {
        let body = Body::new(&sessions[j % sessions.len()], &nodes[j]);
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut out = ClientOut {
                latencies: Samples::with_capacity(1 << 14),
                ok: 0,
                errors: 0,
                first_error: None,
            };
            let mut http = match Http::connect(addr).await {
                Ok(h) => h,
                Err(e) => {
                    out.errors += 1;
                    out.first_error = Some(format!("{e:#}"));
                    return out;
                }
            };
            tokio::time::sleep_until(start.into()).await;
            let mut n = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = api::send(&mut http, body.get(n)).await;
                n += 1;
                let t1 = Instant::now();
                if t1 < warm_end || t1 > end {
                    if let Err(e) = r {
                        out.first_error.get_or_insert(format!("{e:#}"));
                    }
                    continue;
                }
                match r {
                    Ok(_) => {
                        out.ok += 1;
                        out.latencies.push((t1 - t0).as_micros() as u64);
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            out
        }));
    }
    // CPU of the server and of this load generator over the measuring window.
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu0 = (server.cpu_ms(), crate::server::cpu_ms(std::process::id()));
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = (server.cpu_ms(), crate::server::cpu_ms(std::process::id()));
    let mut all = Samples::with_capacity(1 << 16);
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for t in tasks {
        let out = t.await?;
        all.extend(&out.latencies);
        ok += out.ok;
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    let mut run = Run::default();
    run.set("mutations_per_s", ok as f64 / o.duration_secs);
    run.set("p50_ms", all.pct_ms(50.0));
    run.set("p99_ms", all.pct_ms(99.0));
    run.set("max_ms", all.max_ms());
    run.set("errors", errors as f64);
    if let (Some(a), Some(b)) = (cpu0.0, cpu1.0) {
        run.set(
            "server_cpu_us_per_mutation",
            (b - a) * 1000.0 / ok.max(1) as f64,
        );
    }
    if let (Some(a), Some(b)) = (cpu0.1, cpu1.1) {
        run.set(
            "bench_cpu_us_per_mutation",
            (b - a) * 1000.0 / ok.max(1) as f64,
        );
    }
    if let Some(e) = first_error {
        run.note("first_error", json!(e));
    }
    if subs > 0 {
        let mut targets = Vec::new();
        for s in &sessions {
            targets.push(api::last_seq(&mut http, s).await?);
        }
        let behind = fleet
            .wait_caught_up(&targets, Duration::from_secs(60))
            .await;
        let outcomes = fleet.stop().await;
        let (received, seq_errors, resyncs, failed) = fleet::totals(&outcomes);
        run.set(
            "sub_lost_or_out_of_order",
            seq_errors as f64 + failed as f64 + behind.is_err() as u64 as f64,
        );
        run.set("sub_resyncs", resyncs as f64);
        run.note("events_received_by_subscribers", json!(received));
        if let Some(e) = outcomes.iter().find_map(|o| o.error.clone()) {
            run.note("first_subscriber_error", json!(e));
        }
    } else {
        fleet.stop().await;
    }
    run.note("rss_kib_end", json!(server.rss_kib()));
    drop(http);
    server.stop().await?;
    Ok(run)
}
