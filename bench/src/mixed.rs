//! Scenario 3, mixed collaborative load: S sessions x P subscribers, W writers per session issuing a
//! realistic mix of create, update, move, delete, undo and redo for a fixed time.
//!
//! Each session starts with 5 workstreams and 50 tasks. A writer works on
//! the tasks it created plus the initial ones, waits `--think-ms` between
//! requests (people do not type at wire speed), and counts every error by
//! code: with five people undoing each other's work, NODE_NOT_FOUND or
//! NOTHING_TO_REDO are expected, as in real life. Subscribers select the
//! event `timestamp` and record the lag from it to their receipt (the same
//! clock: one machine), check that seqs are contiguous, and count resyncs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::api;
use crate::fleet::{self, Handler};
use crate::graph_size::Rng;
use crate::http::{error_code, Http};
use crate::server::Launch;
use crate::stats::{Case, Report, Run, Samples};
use crate::ws::Event;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    #[arg(long, default_value_t = 50)]
    pub sessions: usize,
    #[arg(long, default_value_t = 20)]
    pub subscribers_per_session: usize,
    #[arg(long, default_value_t = 5)]
    pub writers_per_session: usize,
    #[arg(long, default_value_t = 60.0)]
    pub duration_secs: f64,
    /// Pause of each writer between two requests, in milliseconds (0: as fast as answers come).
    #[arg(long, default_value_t = 100)]
    pub think_ms: u64,
    /// Use the in-memory store (default: the durable SQLite store).
    #[arg(long)]
    pub in_memory: bool,
}

/// The mix, in percent: create, update, move, delete, undo, redo.
const MIX: [(&str, u64); 6] = [
    ("create", 25),
    ("update", 40),
    ("move", 10),
    ("delete", 10),
    ("undo", 10),
    ("redo", 5),
];

struct Lag {
    lag: Samples,
}

impl Handler for Lag {
    type Out = Samples;

    fn on_event(&mut self, event: &Event, _: Instant) {
        let Some(ts) = event.timestamp.as_deref() else {
            return;
        };
        let Ok(at) = chrono::DateTime::parse_from_rfc3339(ts) else {
            return;
        };
        let now = chrono::DateTime::<chrono::Utc>::from(SystemTime::now());
        let micros = (now - at.with_timezone(&chrono::Utc))
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        self.lag.push(micros as u64);
    }

    fn finish(self) -> Samples {
        self.lag
    }
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let store = crate::fanout::store_name(ctx, o.in_memory);
    let mut report = Report::new(
        "mixed",
        json!({"sessions": o.sessions, "subscribers_per_session": o.subscribers_per_session,
               "writers_per_session": o.writers_per_session, "duration_secs": o.duration_secs,
               "think_ms": o.think_ms, "mix_percent": MIX.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
               "store": store, "runs": ctx.runs}),
    );
    let label = format!(
        "{}x{} subs, {} writers/session",
        o.sessions, o.subscribers_per_session, o.writers_per_session
    );
    let mut case = Case {
        label,
        params: json!({"store": store}),
        runs: Vec::new(),
    };
    for r in 0..ctx.runs {
        let run = once(ctx, o, r as u64).await?;
        println!(
            "mixed run {}: {:.0} requests/s ({:.0} ok/s), p50 {:.2} ms, p99 {:.2} ms, delivery lag p99 {:.2} ms, lost/out of order {}",
            r + 1,
            run.get("requests_per_s").unwrap_or(f64::NAN),
            run.get("ok_per_s").unwrap_or(f64::NAN),
            run.get("p50_ms").unwrap_or(f64::NAN),
            run.get("p99_ms").unwrap_or(f64::NAN),
            run.get("lag_p99_ms").unwrap_or(f64::NAN),
            run.get("lost_or_out_of_order").unwrap_or(f64::NAN),
        );
        case.runs.push(run);
    }
    report.cases.push(case);
    Ok(report)
}

struct WriterOut {
    by_kind: BTreeMap<&'static str, Samples>,
    errors: BTreeMap<String, u64>,
    ok: u64,
    total: u64,
}

async fn once(ctx: &Ctx, o: &Opts, seed: u64) -> anyhow::Result<Run> {
    let server = ctx
        .target
        .start(Launch {
            in_memory: o.in_memory,
            ..Launch::default()
        })
        .await?;
    let mut http = Http::connect(server.addr).await?;
    let mut sessions = Vec::new();
    let mut layouts = Vec::new();
    for i in 0..o.sessions {
        let p = api::create_project(&mut http, &format!("mixed {i}")).await?;
        let mut ws = vec![p.workstream.clone()];
        ws.extend(
            api::create_batch(
                &mut http,
                &p.session,
                std::slice::from_ref(&p.root),
                api::WORKSTREAM,
                4,
                None,
            )
            .await?,
        );
        let tasks = api::create_batch(&mut http, &p.session, &ws, api::TASK, 50, None).await?;
        sessions.push(p.session.clone());
        layouts.push((p.session, ws, tasks));
    }
    let subs: Vec<(usize, Lag)> = (0..o.sessions * o.subscribers_per_session)
        .map(|i| {
            (
                i % o.sessions,
                Lag {
                    lag: Samples::with_capacity(4096),
                },
            )
        })
        .collect();
    let fleet = fleet::connect(server.addr, &sessions, subs, "timestamp", 64, "mixed").await?;
    let mut targets = Vec::new();
    for s in &sessions {
        targets.push(api::last_seq(&mut http, s).await?);
    }
    fleet
        .wait_caught_up(&targets, Duration::from_secs(300))
        .await?;
    let mut run = Run::default();
    run.note("load_before", json!(crate::stats::loadavg()));
    run.set("connect_all_s", fleet.connect_total.as_secs_f64());

    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(o.duration_secs);
    let mut tasks = Vec::new();
    for (si, (session, workstreams, initial)) in layouts.iter().enumerate() {
        for w in 0..o.writers_per_session {
            let addr = server.addr;
            let session = session.clone();
            let workstreams = workstreams.clone();
            let mut nodes = initial.clone();
            let think = Duration::from_millis(o.think_ms);
            let mut rng = Rng::new((seed + 1) * 1_000_003 + (si * 31 + w) as u64);
            tasks.push(tokio::spawn(async move {
                let mut http = Http::connect(addr).await?.with_client_id(format!("writer-{si}-{w}"));
                let mut out = WriterOut {
                    by_kind: BTreeMap::new(),
                    errors: BTreeMap::new(),
                    ok: 0,
                    total: 0,
                };
                // Start staggered so the writers do not march in lockstep.
                tokio::time::sleep_until((start + Duration::from_millis(rng.below(100) as u64)).into()).await;
                let mut n = 0u64;
                while Instant::now() < end {
                    let roll = rng.below(100) as u64;
                    let mut acc = 0;
                    let kind = MIX
                        .iter()
                        .find(|(_, p)| {
                            acc += p;
                            roll < acc
                        })
                        .map_or("update", |(k, _)| *k);
                    let (query, vars): (&str, Value) = match kind {
                        "create" => (
                            "mutation($s: ID!, $p: ID!) { createNode(sessionId: $s, input: {parentId: $p, typeId: \"task\"}) { version nodeId } }",
                            json!({"s": session, "p": workstreams[rng.below(workstreams.len())]}),
                        ),
                        "update" if !nodes.is_empty() => (
                            "mutation($s: ID!, $n: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: \"notes\", value: $v) { version } }",
                            json!({"s": session, "n": nodes[rng.below(nodes.len())], "v": format!("note {n}")}),
                        ),
                        "move" if !nodes.is_empty() => (
                            "mutation($s: ID!, $n: ID!, $p: ID!) { moveNode(sessionId: $s, nodeId: $n, newParentId: $p) { version } }",
                            json!({"s": session, "n": nodes[rng.below(nodes.len())], "p": workstreams[rng.below(workstreams.len())]}),
                        ),
                        "delete" if !nodes.is_empty() => {
                            let i = rng.below(nodes.len());
                            let id = nodes.swap_remove(i);
                            (
                                "mutation($s: ID!, $n: ID!) { deleteNode(sessionId: $s, nodeId: $n) { version } }",
                                json!({"s": session, "n": id}),
                            )
                        }
                        "undo" => ("mutation($s: ID!) { undo(sessionId: $s) { version } }", json!({"s": session})),
                        "redo" => ("mutation($s: ID!) { redo(sessionId: $s) { version } }", json!({"s": session})),
                        _ => continue,
                    };
                    n += 1;
                    let t0 = Instant::now();
                    let r = http.gql(query, vars).await;
                    let micros = t0.elapsed().as_micros() as u64;
                    out.total += 1;
                    match r {
                        Ok(v) => {
                            out.ok += 1;
                            out.by_kind.entry(kind).or_default().push(micros);
                            if let Some(id) = v.pointer("/createNode/nodeId").and_then(|x| x.as_str()) {
                                nodes.push(id.to_string());
                            }
                        }
                        Err(e) => {
                            let code = error_code(&e);
                            if code == "TRANSPORT" {
                                return Err(e);
                            }
                            *out.errors.entry(code).or_default() += 1;
                        }
                    }
                    if !think.is_zero() {
                        tokio::time::sleep(think).await;
                    }
                }
                anyhow::Ok(out)
            }));
        }
    }
    let mut all = Samples::with_capacity(1 << 16);
    let mut by_kind: BTreeMap<&'static str, Samples> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut total) = (0, 0);
    for t in tasks {
        let out = t.await??;
        ok += out.ok;
        total += out.total;
        for (k, s) in out.by_kind {
            all.extend(&s);
            by_kind.entry(k).or_default().extend(&s);
        }
        for (c, n) in out.errors {
            *errors.entry(c).or_default() += n;
        }
    }
    let elapsed = o.duration_secs;
    run.set("requests_per_s", total as f64 / elapsed);
    run.set("ok_per_s", ok as f64 / elapsed);
    run.set("p50_ms", all.pct_ms(50.0));
    run.set("p99_ms", all.pct_ms(99.0));
    for (k, mut s) in by_kind {
        run.set(&format!("{k}_p99_ms"), s.pct_ms(99.0));
        run.note(&format!("{k}_ok"), json!(s.len()));
        run.note(&format!("{k}_p50_ms"), json!(s.pct_ms(50.0)));
    }
    run.note("errors_by_code", json!(errors));
    let mut targets = Vec::new();
    for s in &sessions {
        targets.push(api::last_seq(&mut http, s).await?);
    }
    let caught = fleet
        .wait_caught_up(&targets, Duration::from_secs(120))
        .await;
    let outcomes = fleet.stop().await;
    let (received, seq_errors, resyncs, failed) = fleet::totals(&outcomes);
    let mut lag = Samples::with_capacity(received as usize);
    for o in &outcomes {
        lag.extend(&o.out);
    }
    run.set("lag_p50_ms", lag.pct_ms(50.0));
    run.set("lag_p99_ms", lag.pct_ms(99.0));
    run.set("lag_max_ms", lag.max_ms());
    run.set(
        "lost_or_out_of_order",
        (seq_errors + failed + caught.is_err() as u64) as f64,
    );
    run.set("resyncs", resyncs as f64);
    run.note("events_delivered", json!(received));
    run.note("rss_kib_end", json!(server.rss_kib()));
    drop(http);
    server.stop().await?;
    Ok(run)
}
