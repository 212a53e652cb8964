//! `talus-bench`: benchmarks of a Talus Tally server, driven only through its public protocols.
//!
//! It starts `target/release/talus-tally` itself (one fresh server with a
//! temp data dir per run) or targets `--url`, talks GraphQL over keep-alive
//! HTTP/1.1 and graphql-transport-ws, prints a table (median of `--runs`,
//! with min-max) and writes JSON to `target/bench/<scenario>.json`.
//! BENCHMARKS.md says how to run each scenario and what was measured.
//!
//! Layout (files in `bench/src/`):
//! - `server.rs`: start/stop the server under test, its RSS, fd limits.
//! - `http.rs`, `ws.rs`: the HTTP GraphQL client and the websocket subscriber.
//! - `fleet.rs`: many subscribers at once.
//! - `api.rs`: typed helpers for the mutations the scenarios use.
//! - `stats.rs`: percentiles, runs, the table, targets and the JSON report.
//! - one file per scenario: `fanout`, `throughput`, `mixed`, `connections`, `graph_size`, `startup`, `stalled`, `attack`, `storm`, `snapshot`, `connect`, `cluster`.
mod api;
mod attack;
mod cluster;
mod connect;
mod connections;
mod fanout;
mod fleet;
mod graph_size;
mod http;
mod mixed;
mod server;
mod snapshot;
mod stalled;
mod startup;
mod stats;
mod storm;
mod throughput;
mod ws;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "talus-bench",
    about = "Benchmarks of a Talus Tally server through its public protocols (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Benchmark the server at this URL (http://HOST:PORT) instead of starting one per run.
    #[arg(long, global = true)]
    url: Option<String>,
    /// PID of the server at --url, to read its RSS from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// The server binary to start (default: talus-tally next to this binary).
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Extra argument for every started server (repeat for several).
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Runs per case; the table shows their median with min-max.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Where to write the JSON report (default: target/bench/<scenario>.json).
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Before starting, wait up to this many seconds for the 1-minute load average to drop below --quiet-load.
    #[arg(long, global = true, default_value_t = 0)]
    wait_quiet_secs: u64,
    #[arg(long, global = true, default_value_t = 0.7)]
    quiet_load: f64,
    /// Subscribe without selecting PresenceChanged (for a server from before presence coalescing).
    #[arg(long, global = true)]
    legacy_presence: bool,
    /// A token (e.g. from `talus-tally token`) sent as `Authorization: Bearer` and in connection_init.
    #[arg(long, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Scenario {
    /// 1. K subscribers on one session; latency from sending an update to each subscriber receiving it.
    Fanout(fanout::Opts),
    /// 11. Three instances on one PostgreSQL: cross-instance fan-out, throughput (owned, forwarded, one session), failover.
    Cluster(cluster::Opts),
    /// 2. updateProperty throughput of C concurrent HTTP clients (one or C sessions, durable or memory, 0 or 100 subscribers).
    Throughput(throughput::Opts),
    /// 3. Mixed collaborative load: many sessions, subscribers and writers issuing a realistic command mix.
    Mixed(mixed::Opts),
    /// 4. Connecting 10,000 websocket subscribers, and server memory per session and per idle subscriber.
    Connections(connections::Opts),
    /// 5. Cost of updateProperty and createNode at 100 vs 100,000 nodes.
    GraphSize(graph_size::Opts),
    /// 6. Server start with a 1,000,000-event, 100,000-node session until /healthz and a graph query answer.
    Startup(startup::Opts),
    /// 7. Server memory with one subscriber that stops reading during 100,000 events, against none.
    Stalled(stalled::Opts),
    /// 8. Issue 10's hostile requests nonstop while an ordinary client queries: its latency, /healthz, refusals.
    Attack(attack::Opts),
    /// 9. Reconnect storm: subscribers on many sessions, writers running, the server restarted (SIGTERM, SIGKILL); time until all are live, events lost or duplicated.
    Storm(storm::Opts),
    /// 10. updateProperty latency on a 100,000-node project while it is snapshotted, against no snapshot.
    Snapshot(snapshot::Opts),
    /// 11. Connect storm: N subscribers arrive at once on one session or many; time until all are ready, server CPU.
    Connect(connect::Opts),
}

/// What every scenario needs.
pub struct Ctx {
    pub target: server::Target,
    pub runs: usize,
}

fn default_server_bin() -> PathBuf {
    let name = format!("talus-tally{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(&name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/release")
                .join(name)
        })
}

fn default_json(scenario: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench")
        .join(format!("{scenario}.json"))
}

async fn wait_quiet(secs: u64, below: f64) {
    if secs == 0 {
        return;
    }
    let t = Instant::now();
    loop {
        let load = stats::load1();
        if load < below {
            println!("load average {load:.2} < {below}: starting");
            return;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            println!("load average still {load:.2} after {secs} s: measuring anyway (the numbers will be noisier)");
            return;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(token) = &cli.token {
        let _ = http::BEARER.set(format!("Bearer {token}"));
    }
    ws::LEGACY_PRESENCE.store(cli.legacy_presence, std::sync::atomic::Ordering::Relaxed);
    let fds = server::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let ctx = Ctx {
            target: server::Target {
                url: cli.url.clone(),
                pid: cli.server_pid,
                bin: cli.server_bin.clone().unwrap_or_else(default_server_bin),
                extra_args: cli.server_args.clone(),
            },
            runs: cli.runs.max(1),
        };
        if fds < 11_000 {
            println!("note: open-file limit is {fds}; 10,000 websocket clients need about 10,100 here and as many in the server");
        }
        wait_quiet(cli.wait_quiet_secs, cli.quiet_load).await;
        let (name, report, columns): (&str, stats::Report, Option<&[&str]>) = match &cli.scenario {
            Scenario::Fanout(o) => ("fanout", fanout::run(&ctx, o).await?, Some(fanout_columns())),
            Scenario::Throughput(o) => ("throughput", throughput::run(&ctx, o).await?, None),
            Scenario::Mixed(o) => ("mixed", mixed::run(&ctx, o).await?, None),
            Scenario::Connections(o) => ("connections", connections::run(&ctx, o).await?, None),
            Scenario::GraphSize(o) => ("graph-size", graph_size::run(&ctx, o).await?, None),
            Scenario::Startup(o) => ("startup", startup::run(&ctx, o).await?, None),
            Scenario::Stalled(o) => ("stalled", stalled::run(&ctx, o).await?, None),
            Scenario::Attack(o) => ("attack", attack::run(&ctx, o).await?, None),
            Scenario::Storm(o) => ("storm", storm::run(&ctx, o).await?, None),
            Scenario::Snapshot(o) => ("snapshot", snapshot::run(&ctx, o).await?, None),
            Scenario::Connect(o) => ("connect", connect::run(&ctx, o).await?, None),
            Scenario::Cluster(o) => ("cluster", cluster::run(&ctx, o).await?, None),
        };
        let path = cli.json.clone().unwrap_or_else(|| default_json(name));
        report.finish(columns, &path)
    })
}

fn fanout_columns() -> &'static [&'static str] {
    &[
        "p50_ms",
        "p99_ms",
        "max_ms",
        "last_sub_p50_ms",
        "last_sub_max_ms",
        "mutation_p50_ms",
        "lost",
        "out_of_order",
        "connect_all_s",
        "settle_s",
    ]
}
