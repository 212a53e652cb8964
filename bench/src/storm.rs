//! Scenario 9, reconnect storm: many subscribers over many sessions with writers running, then
//! the server restarts (SIGTERM, or SIGKILL) on the same address and data dir, and every client
//! reconnects with `since`.
//!
//! It reports how long until every client has caught up and is live again
//! (from the signal), how long the server was away, events lost (gaps in a
//! client's seqs) and seen twice (must both be 0), and the restarted server's
//! peak RSS. Clients reconnect as graphql-ws clients do, with exponential
//! backoff and jitter (here 50 ms doubling to 1 s, plus up to 50 ms); writers
//! retry each write until the server is back.
//!
//! A client is live once it has subscribed again after the restart and
//! received every event up to the session's last seq as the restarted server
//! first reported it; the run then stops the writers and waits for every
//! client to reach each session's final seq, so a lost event cannot hide.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::api;
use crate::http::Http;
use crate::server::{self, Launch, Server};
use crate::stats::{Case, Report, Run, Samples};
use crate::ws;
use crate::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// SIGTERM: the server shuts down in order (presence left, sessions closed).
    Term,
    /// SIGKILL: the process is gone at once; only what was committed survives.
    Kill,
    /// Both variants, one case each.
    Both,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Websocket subscribers, spread evenly over the sessions.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Sessions (each with a project) the subscribers and writers use.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// HTTP writers running through the restart.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// updateProperty requests per second, all writers together.
    #[arg(long, default_value_t = 400)]
    pub write_rate: u64,
    /// Seconds of writing with every client live before the restart.
    #[arg(long, default_value_t = 3)]
    pub before_secs: u64,
    /// Which restarts to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub restart: Restart,
    /// Websocket handshakes in flight at once for the first connect.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Give up waiting for the clients after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub deadline_secs: u64,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    if ctx.target.external() {
        bail!("storm restarts the server itself: it cannot run against --url");
    }
    if o.sessions == 0 || o.clients < o.sessions {
        bail!("storm needs at least one session and one client per session");
    }
    let mut report = Report::new(
        "storm",
        json!({"clients": o.clients, "sessions": o.sessions, "writers": o.writers, "write_rate": o.write_rate,
               "before_secs": o.before_secs, "runs": ctx.runs, "store": "durable",
               "reconnect": "50 ms doubling to 1 s, plus up to 50 ms jitter"}),
    );
    let variants: &[Restart] = match o.restart {
        Restart::Both => &[Restart::Term, Restart::Kill],
        Restart::Term => &[Restart::Term],
        Restart::Kill => &[Restart::Kill],
    };
    for &restart in variants {
        let signal = if restart == Restart::Term {
            "SIGTERM"
        } else {
            "SIGKILL"
        };
        let label = format!("{} clients / {} sessions, {signal}", o.clients, o.sessions);
        let mut case = Case {
            label: label.clone(),
            params: json!({"clients": o.clients, "sessions": o.sessions, "restart": signal}),
            runs: Vec::new(),
        };
        for r in 0..ctx.runs {
            let run = once(ctx, o, restart).await?;
            println!(
                "storm {signal} run {}: first connect {:.1} s; server away {:.2} s; all live {:.2} s after the signal; lost {}, duplicated {}, peak RSS {:.0} MiB",
                r + 1,
                run.get("connect_all_s").unwrap_or(f64::NAN),
                run.get("down_s").unwrap_or(f64::NAN),
                run.get("all_live_s").unwrap_or(f64::NAN),
                run.get("lost").unwrap_or(f64::NAN),
                run.get("duplicated").unwrap_or(f64::NAN),
                run.get("peak_rss_mib").unwrap_or(f64::NAN),
            );
            case.runs.push(run);
        }
        report.cases.push(case);
        report.target(
            &format!("every client live again after {signal}"),
            &label,
            "all_live_s",
            "<=",
            15.0,
        );
        report.target(
            &format!("events lost after {signal}"),
            &label,
            "lost",
            "<=",
            0.0,
        );
        report.target(
            &format!("events duplicated after {signal}"),
            &label,
            "duplicated",
            "<=",
            0.0,
        );
    }
    Ok(report)
}

/// What the clients and the conductor share.
struct Shared {
    /// Newest seq each client has seen.
    last: Vec<AtomicU64>,
    /// Successful subscribes of each client.
    subscribed: Vec<AtomicU32>,
    /// Each client's session index.
    session_of: Vec<usize>,
    /// Failed connection attempts, all clients together.
    failed_attempts: AtomicU64,
    stop: AtomicBool,
}

/// How one client ended.
#[derive(Default)]
struct Tally {
    gaps: u64,
    duplicates: u64,
    resyncs: u64,
    received: u64,
}

async fn once(ctx: &Ctx, o: &Opts, restart: Restart) -> anyhow::Result<Run> {
    let data_dir = server::temp_dir("storm")?;
    let launch = Launch {
        data_dir: Some(data_dir.clone()),
        ..Launch::default()
    };
    let server = ctx.target.start(launch.clone()).await?;
    let addr = server.addr;
    let launch = Launch {
        addr: Some(addr),
        ..launch
    };
    let result = storm(ctx, o, restart, server, launch).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn storm(
    ctx: &Ctx,
    o: &Opts,
    restart: Restart,
    server: Server,
    launch: Launch,
) -> anyhow::Result<Run> {
    let addr = server.addr;
    let mut run = Run::default();
    let mut http = Http::connect(addr).await?;
    let mut projects = Vec::with_capacity(o.sessions);
    let mut tasks = Vec::with_capacity(o.sessions);
    for i in 0..o.sessions {
        let p = api::create_project(&mut http, &format!("storm {i}")).await?;
        tasks.push(api::create_node(&mut http, &p.session, &p.workstream, api::TASK).await?);
        projects.push(p);
    }
    let sessions: Arc<Vec<String>> = Arc::new(projects.iter().map(|p| p.session.clone()).collect());

    // The subscribers, connected with bounded concurrency.
    let shared = Arc::new(Shared {
        last: (0..o.clients).map(|_| AtomicU64::new(0)).collect(),
        subscribed: (0..o.clients).map(|_| AtomicU32::new(0)).collect(),
        session_of: (0..o.clients).map(|i| i % o.sessions).collect(),
        failed_attempts: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let first_connect = Arc::new(Semaphore::new(o.connect_concurrency.max(1)));
    let started = Instant::now();
    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            let shared = shared.clone();
            let sessions = sessions.clone();
            let gate = first_connect.clone();
            tokio::spawn(client(addr, i, sessions, shared, gate))
        })
        .collect();
    let deadline = Duration::from_secs(o.deadline_secs);
    if !wait_until(deadline, || {
        shared
            .subscribed
            .iter()
            .all(|s| s.load(Ordering::Acquire) > 0)
    })
    .await
    {
        bail!("not every client subscribed within {} s", o.deadline_secs);
    }
    run.set("connect_all_s", started.elapsed().as_secs_f64());

    // Writers, through the restart.
    let writes_ok = Arc::new(AtomicU64::new(0));
    let writes_failed = Arc::new(AtomicU64::new(0));
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..o.writers.max(1))
        .map(|w| {
            let targets: Vec<(String, String)> = projects
                .iter()
                .zip(&tasks)
                .map(|(p, t)| (p.session.clone(), t.clone()))
                .collect();
            let ok = writes_ok.clone();
            let failed = writes_failed.clone();
            let writing = writing.clone();
            let every =
                Duration::from_secs_f64(o.writers.max(1) as f64 / o.write_rate.max(1) as f64);
            tokio::spawn(writer(
                addr,
                w,
                o.writers.max(1),
                targets,
                every,
                ok,
                failed,
                writing,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(o.before_secs)).await;

    // The restart.
    let subscribed_before: Vec<u32> = shared
        .subscribed
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .collect();
    let signalled = Instant::now();
    match restart {
        Restart::Term => server.stop().await?,
        _ => server.kill().await?,
    }
    let stopped_s = signalled.elapsed().as_secs_f64();
    let server = ctx.target.start(launch).await?;
    let down_s = signalled.elapsed().as_secs_f64();
    let peak_rss = Arc::new(AtomicU64::new(server.rss_kib().unwrap_or(0)));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let pid = server.pid;
        let peak = peak_rss.clone();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = pid.and_then(server::rss_kib) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // What each session had when the server came back: a live client has all of it.
    let mut http = Http::connect(addr).await?;
    let mut target = Vec::with_capacity(sessions.len());
    for s in sessions.iter() {
        target.push(api::last_seq(&mut http, s).await?);
    }
    let mut live = Samples::with_capacity(o.clients);
    let mut is_live = vec![false; o.clients];
    let give_up = signalled + deadline;
    while live.len() < o.clients && Instant::now() < give_up {
        for i in 0..o.clients {
            if !is_live[i]
                && shared.subscribed[i].load(Ordering::Acquire) > subscribed_before[i]
                && shared.last[i].load(Ordering::Acquire) >= target[shared.session_of[i]]
            {
                is_live[i] = true;
                live.push(signalled.elapsed().as_micros() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_live = live.len() == o.clients;
    run.set("stopped_s", stopped_s);
    run.set("down_s", down_s);
    run.set(
        "all_live_s",
        if all_live {
            live.max_ms() / 1000.0
        } else {
            f64::NAN
        },
    );
    run.set("live_p50_s", live.pct_ms(50.0) / 1000.0);
    run.set("live_p99_s", live.pct_ms(99.0) / 1000.0);
    run.set("not_live", (o.clients - live.len()) as f64);

    // Stop writing; every client must reach each session's final seq.
    writing.store(false, Ordering::Release);
    for w in writers {
        let _ = w.await;
    }
    let mut final_seq = Vec::with_capacity(sessions.len());
    for s in sessions.iter() {
        final_seq.push(api::last_seq(&mut http, s).await?);
    }
    let caught_up = wait_until(Duration::from_secs(30), || {
        (0..o.clients)
            .all(|i| shared.last[i].load(Ordering::Acquire) >= final_seq[shared.session_of[i]])
    })
    .await;
    let behind = (0..o.clients)
        .filter(|&i| shared.last[i].load(Ordering::Acquire) < final_seq[shared.session_of[i]])
        .count();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    shared.stop.store(true, Ordering::Release);
    let mut tally = Tally::default();
    for c in clients {
        if let Ok(t) = c.await {
            tally.gaps += t.gaps;
            tally.duplicates += t.duplicates;
            tally.resyncs += t.resyncs;
            tally.received += t.received;
        }
    }
    run.set("lost", tally.gaps as f64);
    run.set("duplicated", tally.duplicates as f64);
    run.set("resyncs", tally.resyncs as f64);
    run.set("behind_at_end", behind as f64);
    run.set(
        "failed_attempts",
        shared.failed_attempts.load(Ordering::Relaxed) as f64,
    );
    run.set("writes_ok", writes_ok.load(Ordering::Relaxed) as f64);
    run.set(
        "writes_retried",
        writes_failed.load(Ordering::Relaxed) as f64,
    );
    run.set(
        "peak_rss_mib",
        peak_rss.load(Ordering::Relaxed) as f64 / 1024.0,
    );
    run.note("events_received", json!(tally.received));
    run.note("caught_up_at_end", json!(caught_up));
    server.stop().await?;
    Ok(run)
}

/// Polls `done` every 10 ms for at most `within`; whether it came true.
async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// One subscriber: subscribes, follows events, and on any disconnect resubscribes with `since`.
async fn client(
    addr: std::net::SocketAddr,
    i: usize,
    sessions: Arc<Vec<String>>,
    shared: Arc<Shared>,
    first_connect: Arc<Semaphore>,
) -> Tally {
    let session = &sessions[shared.session_of[i]];
    let mut tally = Tally::default();
    let mut since = None;
    let mut failures = 0u32;
    // Jitter from the client's index: no shared RNG on the hot path.
    let jitter = Duration::from_micros((i as u64).wrapping_mul(7919) % 50_000);
    let mut gate = Some(first_connect);
    while !shared.stop.load(Ordering::Acquire) {
        let permit = match &gate {
            Some(g) => g.clone().acquire_owned().await.ok(),
            None => None,
        };
        // The first connect's permit covers the handshake, not the wait for the join.
        let attempt = tokio::time::timeout(Duration::from_secs(30), async {
            let opened = ws::open(addr, session, format!("storm-{i}"), "", since).await;
            drop(permit);
            let mut sub = opened?;
            sub.wait_joined().await?;
            anyhow::Ok(sub)
        })
        .await;
        let mut sub = match attempt {
            Ok(Ok(sub)) => sub,
            _ => {
                shared.failed_attempts.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                let backoff =
                    Duration::from_millis(50u64 << failures.min(5)).min(Duration::from_secs(1));
                tokio::time::sleep(backoff + jitter).await;
                continue;
            }
        };
        gate = None;
        failures = 0;
        shared.last[i].store(sub.last_seq, Ordering::Release);
        shared.subscribed[i].fetch_add(1, Ordering::AcqRel);
        loop {
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Err(_) => continue,
                Ok(Ok(Some(event))) => shared.last[i].store(event.seq, Ordering::Release),
                Ok(_) => break,
            }
        }
        tally.gaps += sub.gaps;
        tally.duplicates += sub.duplicates;
        tally.resyncs += sub.resyncs;
        tally.received += sub.received;
        since = Some(sub.last_seq);
        if shared.stop.load(Ordering::Acquire) {
            sub.close().await;
            break;
        }
        tokio::time::sleep(jitter).await;
    }
    tally
}

/// One writer: updateProperty on its share of the sessions at its pace, retrying each write until
/// the server takes it (so writes continue across the restart).
#[allow(clippy::too_many_arguments)]
async fn writer(
    addr: std::net::SocketAddr,
    w: usize,
    writers: usize,
    targets: Vec<(String, String)>,
    every: Duration,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    writing: Arc<AtomicBool>,
) {
    let mut http: Option<Http> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    // (session, task) pairs of this writer's share of the sessions.
    let mine: Vec<&(String, String)> = targets.iter().skip(w).step_by(writers).collect();
    if mine.is_empty() {
        return;
    }
    while writing.load(Ordering::Acquire) {
        tick.tick().await;
        let (session, task) = mine[(n as usize) % mine.len()];
        n += 1;
        let body = api::update_body(session, task, api::TEXT_PROP, &json!(format!("w{w}-{n}")));
        loop {
            if !writing.load(Ordering::Acquire) {
                return;
            }
            if http.is_none() {
                http = Http::connect(addr).await.ok();
            }
            let Some(h) = http.as_mut() else {
                failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            match api::send(h, body.clone()).await {
                Ok(_) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    // A closed connection or a refusal while the server is away: retry on a new one.
                    failed.fetch_add(1, Ordering::Relaxed);
                    http = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}
