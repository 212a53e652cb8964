//! Scenario 1, fan-out: K subscribers on one session, one writer sending M updateProperty one at a time.
//!
//! Every update writes a unique value (`f<i>`) so each delivery of a
//! `PropertyChanged` is matched to the instant its mutation was sent. The
//! writer sends update i+1 only once every subscriber has update i (or a
//! timeout passed), so each number is the latency of one fan-out, not of a
//! queue. A subscriber counts as ready when its own join (`ClientJoined`, or a `PresenceChanged` naming it) arrives;
//! the writer starts once every subscriber has seen the session's last seq.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;

use crate::api;
use crate::fleet::{self, Handler};
use crate::http::Http;
use crate::server::Launch;
use crate::stats::{Case, Report, Run, Samples};
use crate::ws::Event;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Subscriber counts to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    pub subscribers: Vec<usize>,
    /// Updates the writer sends per run.
    #[arg(long, default_value_t = 100)]
    pub updates: usize,
    /// Use the in-memory store (default: the durable SQLite store).
    #[arg(long)]
    pub in_memory: bool,
    /// Websocket handshakes in flight at once while connecting subscribers.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Give up waiting for one update's deliveries after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Shared between the writer and every subscriber.
struct Shared {
    base: Instant,
    k: u32,
    /// Nanoseconds after `base` when update i was sent (u64::MAX: not yet).
    sent: Vec<AtomicU64>,
    delivered: Vec<AtomicU32>,
    /// Per update, the latest delivery in microseconds after sending.
    slowest: Vec<AtomicU64>,
    done: Notify,
}

struct Sub {
    shared: Arc<Shared>,
    latencies: Samples,
    last_update: Option<usize>,
    out_of_order: u64,
    unmatched: u64,
}

struct SubOut {
    latencies: Samples,
    out_of_order: u64,
    unmatched: u64,
}

impl Handler for Sub {
    type Out = SubOut;

    fn on_event(&mut self, event: &Event, received: Instant) {
        if event.typename != "PropertyChanged" {
            return;
        }
        let Some(i) = event
            .new_value
            .as_ref()
            .and_then(|v| v.as_str())
            .and_then(|s| s.strip_prefix('f'))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|i| *i < self.shared.sent.len())
        else {
            self.unmatched += 1;
            return;
        };
        let sent = self.shared.sent[i].load(Ordering::Acquire);
        if sent == u64::MAX {
            self.unmatched += 1;
            return;
        }
        let micros = (received.duration_since(self.shared.base).as_nanos() as u64)
            .saturating_sub(sent)
            / 1000;
        self.latencies.push(micros);
        if self.last_update.is_some_and(|last| i <= last) {
            self.out_of_order += 1;
        }
        self.last_update = Some(i);
        self.shared.slowest[i].fetch_max(micros, Ordering::AcqRel);
        if self.shared.delivered[i].fetch_add(1, Ordering::AcqRel) + 1 == self.shared.k {
            self.shared.done.notify_waiters();
        }
    }

    fn finish(self) -> SubOut {
        SubOut {
            latencies: self.latencies,
            out_of_order: self.out_of_order,
            unmatched: self.unmatched,
        }
    }
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "fanout",
        json!({"subscribers": o.subscribers, "updates": o.updates, "store": store_name(ctx, o.in_memory),
               "runs": ctx.runs, "connect_concurrency": o.connect_concurrency}),
    );
    for &k in &o.subscribers {
        let mut case = Case {
            label: format!("K={k}"),
            params: json!({"subscribers": k, "updates": o.updates}),
            runs: Vec::new(),
        };
        for r in 0..ctx.runs {
            let run = once(ctx, o, k).await?;
            println!(
                "fanout K={k} run {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, last-subscriber p50 {:.2} ms, lost {}, out of order {}",
                r + 1,
                run.get("p50_ms").unwrap_or(f64::NAN),
                run.get("p99_ms").unwrap_or(f64::NAN),
                run.get("max_ms").unwrap_or(f64::NAN),
                run.get("last_sub_p50_ms").unwrap_or(f64::NAN),
                run.get("lost").unwrap_or(f64::NAN),
                run.get("out_of_order").unwrap_or(f64::NAN),
            );
            case.runs.push(run);
        }
        report.cases.push(case);
    }
    report.target(
        "fan-out to 1,000 subscribers",
        "K=1000",
        "p99_ms",
        "<=",
        20.0,
    );
    report.target(
        "fan-out to 10,000 subscribers",
        "K=10000",
        "p99_ms",
        "<=",
        250.0,
    );
    report.target("nothing lost at 10,000", "K=10000", "lost", "<=", 0.0);
    report.target(
        "nothing out of order at 10,000",
        "K=10000",
        "out_of_order",
        "<=",
        0.0,
    );
    Ok(report)
}

pub fn store_name(ctx: &Ctx, in_memory: bool) -> &'static str {
    if ctx.target.external() {
        "external"
    } else if in_memory {
        "memory"
    } else {
        "durable"
    }
}

async fn once(ctx: &Ctx, o: &Opts, k: usize) -> anyhow::Result<Run> {
    let server = ctx
        .target
        .start(Launch {
            in_memory: o.in_memory,
            ..Launch::default()
        })
        .await?;
    let run = measure(&[&server], k, o).await?;
    server.stop().await?;
    Ok(run)
}

/// One fan-out run: the writer on `servers[0]`, the `k` subscribers spread
/// evenly over `servers` (in a cluster, each instance serves its own).
pub async fn measure(
    servers: &[&crate::server::Server],
    k: usize,
    o: &Opts,
) -> anyhow::Result<Run> {
    let server = servers[0];
    let mut http = Http::connect(server.addr).await?;
    let project = api::create_project(&mut http, "fanout").await?;
    let node =
        api::create_node(&mut http, &project.session, &project.workstream, api::TASK).await?;
    let m = o.updates;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        k: k as u32,
        sent: (0..m).map(|_| AtomicU64::new(u64::MAX)).collect(),
        delivered: (0..m).map(|_| AtomicU32::new(0)).collect(),
        slowest: (0..m).map(|_| AtomicU64::new(0)).collect(),
        done: Notify::new(),
    });
    let rss_before = server.rss_kib();
    let mut fleets = Vec::new();
    let started = Instant::now();
    for (n, on) in servers.iter().enumerate() {
        let here = k / servers.len() + usize::from(n < k % servers.len());
        let subs = (0..here)
            .map(|_| {
                (
                    0,
                    Sub {
                        shared: shared.clone(),
                        latencies: Samples::with_capacity(m),
                        last_update: None,
                        out_of_order: 0,
                        unmatched: 0,
                    },
                )
            })
            .collect();
        fleets.push(
            fleet::connect(
                on.addr,
                std::slice::from_ref(&project.session),
                subs,
                "... on PropertyChanged { newValue }",
                o.connect_concurrency,
                // Distinct client ids per instance: one id is one client of the session.
                &format!("fan{n}"),
            )
            .await?,
        );
    }
    let mut run = Run::default();
    run.note("load_before", json!(crate::stats::loadavg()));
    let mut connect = Samples::with_capacity(k);
    let mut connect_errors = Vec::new();
    for fleet in &fleets {
        connect.extend(&fleet.connect);
        connect_errors.extend(fleet.connect_errors.iter().cloned());
    }
    run.set("connect_all_s", started.elapsed().as_secs_f64());
    run.set("connect_p50_ms", connect.pct_ms(50.0));
    run.set("connect_errors", connect_errors.len() as f64);
    if !connect_errors.is_empty() {
        eprintln!(
            "fanout K={k}: {} subscribers failed to connect, e.g. {}",
            connect_errors.len(),
            connect_errors[0]
        );
    }
    let target = api::last_seq(&mut http, &project.session).await?;
    let t = Instant::now();
    for fleet in &fleets {
        fleet
            .wait_caught_up(&[target], Duration::from_secs(600))
            .await?;
    }
    let settle = t.elapsed();
    run.set("settle_s", settle.as_secs_f64());
    eprintln!(
        "fanout K={k}: {} subscribers on {} instance(s) ready in {:.1} s (+{:.1} s until all saw seq {target}); writing {m} updates",
        connect.len(),
        servers.len(),
        started.elapsed().as_secs_f64() - settle.as_secs_f64(),
        settle.as_secs_f64()
    );
    if let (Some(a), Some(b)) = (rss_before, server.rss_kib()) {
        run.note("server_rss_kib_before_subscribers", json!(a));
        run.note("server_rss_kib_with_subscribers", json!(b));
    }

    let cpu_before = (server.cpu_ms(), crate::server::cpu_ms(std::process::id()));
    let mut mutation = Samples::with_capacity(m);
    let timeout = Duration::from_secs(o.timeout_secs);
    let mut timeouts = 0u64;
    for i in 0..m {
        let body = api::update_body(
            &project.session,
            &node,
            api::TEXT_PROP,
            &json!(format!("f{i}")),
        );
        let t0 = Instant::now();
        shared.sent[i].store(
            t0.duration_since(shared.base).as_nanos() as u64,
            Ordering::Release,
        );
        api::send(&mut http, body).await?;
        mutation.push(t0.elapsed().as_micros() as u64);
        let deadline = tokio::time::Instant::from_std(t0 + timeout);
        loop {
            let notified = shared.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.delivered[i].load(Ordering::Acquire) >= k as u32 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                timeouts += 1;
                break;
            }
        }
    }
    if let (Some(a), Some(b)) = (cpu_before.0, server.cpu_ms()) {
        run.set("server_cpu_ms_per_update", (b - a) / m as f64);
    }
    if let (Some(a), Some(b)) = (cpu_before.1, crate::server::cpu_ms(std::process::id())) {
        run.set("bench_cpu_ms_per_update", (b - a) / m as f64);
    }
    // Late deliveries of timed-out updates still count as delivered, not lost.
    if timeouts > 0 {
        let last = api::last_seq(&mut http, &project.session).await?;
        for fleet in &fleets {
            let _ = fleet.wait_caught_up(&[last], timeout).await;
        }
    }
    let mut outcomes = Vec::new();
    for fleet in fleets {
        outcomes.extend(fleet.stop().await);
    }
    let (received, seq_errors, resyncs, failed) = fleet::totals(&outcomes);
    let mut all = Samples::with_capacity(k * m);
    let (mut out_of_order, mut unmatched) = (0, 0);
    for o in &outcomes {
        all.extend(&o.out.latencies);
        out_of_order += o.out.out_of_order;
        unmatched += o.out.unmatched;
    }
    let delivered: u64 = shared
        .delivered
        .iter()
        .map(|d| d.load(Ordering::Acquire) as u64)
        .sum();
    let mut slowest = Samples::with_capacity(m);
    for s in &shared.slowest {
        slowest.push(s.load(Ordering::Acquire));
    }
    run.set("p50_ms", all.pct_ms(50.0));
    run.set("p99_ms", all.pct_ms(99.0));
    run.set("max_ms", all.max_ms());
    run.set("last_sub_p50_ms", slowest.pct_ms(50.0));
    run.set("last_sub_max_ms", slowest.max_ms());
    run.set("mutation_p50_ms", mutation.pct_ms(50.0));
    run.set("lost", ((k * m) as u64).saturating_sub(delivered) as f64);
    run.set("out_of_order", (out_of_order + seq_errors) as f64);
    run.set("resyncs", resyncs as f64);
    run.note("events_received", json!(received));
    run.note("subscribers_failed", json!(failed));
    run.note("unmatched_property_changes", json!(unmatched));
    run.note("update_timeouts", json!(timeouts));
    if let Some(e) = outcomes.iter().find_map(|o| o.error.clone()) {
        run.note("first_subscriber_error", json!(e));
    }
    drop(http);
    Ok(run)
}
