//! Scenario `cluster`: N instances (default 3) on one PostgreSQL.
//!
//! The scenario starts its own private PostgreSQL (`initdb` in a temp dir,
//! run as `nobody` when the bench runs as root, on a free loopback port,
//! with its default durability: fsync on) unless `--database-url` names one;
//! every run gets a fresh database and fresh instances. Cases:
//!
//! - `fanout`: the writer on instance 1, `--subscribers` spread evenly over
//!   the instances (so two thirds are fed through the doorbell and a
//!   follower); latency from sending an update to each subscriber receiving it.
//! - `throughput-32-sessions`: `--clients` HTTP clients sending updateProperty
//!   back to back for `--secs`, over `--sessions` sessions each created on (and
//!   so owned by) instance i mod N, every client on its session's owner.
//! - `throughput-32-sessions-forwarded`: the same, every client on the next
//!   instance, so every command is forwarded to the owner.
//! - `throughput-1-session`: every client on one session, spread over the instances.
//! - `failover`: a writer on instance 2 updating a session instance 1 owns,
//!   one command at a time; instance 1 is SIGKILLed; the time from the kill
//!   to the writer's first committed command (the lease must expire first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::api;
use crate::fanout;
use crate::http::Http;
use crate::server::{Launch, Server};
use crate::stats::{Case, Report, Run, Samples};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Instances on the one database.
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// Subscribers of the fan-out case, spread over the instances.
    #[arg(long, default_value_t = 300)]
    pub subscribers: usize,
    /// Updates the fan-out writer sends per run.
    #[arg(long, default_value_t = 100)]
    pub updates: usize,
    /// Sessions of the throughput case.
    #[arg(long, default_value_t = 32)]
    pub sessions: usize,
    /// Concurrent HTTP clients of the throughput cases.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds each throughput case measures (after a 1 s warm-up).
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
    /// --lease-secs of the instances (failover waits for it).
    #[arg(long, default_value_t = 2)]
    pub lease_secs: u64,
    /// Use this PostgreSQL (a database the bench may create databases next to) instead of a private one.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Cases to run (comma-separated): fanout, throughput, failover.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fanout,throughput,failover"
    )]
    pub cases: Vec<String>,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    if ctx.target.external() {
        bail!("the cluster scenario starts its own instances; --url is not supported");
    }
    let pg = match &o.database_url {
        Some(url) => Pg::External(url.clone()),
        None => Pg::start()?,
    };
    let mut report = Report::new(
        "cluster",
        json!({"instances": o.instances, "subscribers": o.subscribers, "updates": o.updates,
               "sessions": o.sessions, "clients": o.clients, "secs": o.secs, "lease_secs": o.lease_secs,
               "postgres": if o.database_url.is_some() { "external" } else { "private, fsync on" },
               "runs": ctx.runs}),
    );
    let wants = |c: &str| o.cases.iter().any(|w| w == c);
    let mut cases: Vec<Case> = Vec::new();
    for r in 0..ctx.runs {
        if wants("fanout") {
            let servers = start(ctx, o, &pg).await?;
            let refs: Vec<&Server> = servers.iter().collect();
            let fo = fanout::Opts {
                subscribers: vec![o.subscribers],
                updates: o.updates,
                in_memory: false,
                connect_concurrency: 64,
                timeout_secs: 30,
            };
            let run = fanout::measure(&refs, o.subscribers, &fo).await?;
            println!(
                "cluster fanout run {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, lost {}, out of order {}",
                r + 1,
                run.get("p50_ms").unwrap_or(f64::NAN),
                run.get("p99_ms").unwrap_or(f64::NAN),
                run.get("max_ms").unwrap_or(f64::NAN),
                run.get("lost").unwrap_or(f64::NAN),
                run.get("out_of_order").unwrap_or(f64::NAN),
            );
            add(&mut cases, "fanout", run);
            stop(servers).await?;
        }
        if wants("throughput") {
            for (label, layout) in [
                ("throughput-32-sessions", Layout::Owners),
                ("throughput-32-sessions-forwarded", Layout::Forwarded),
                ("throughput-1-session", Layout::OneSession),
            ] {
                let servers = start(ctx, o, &pg).await?;
                let run = throughput(&servers, o, layout).await?;
                println!(
                    "cluster {label} run {}: {:.0} updates/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
                    r + 1,
                    run.get("per_s").unwrap_or(f64::NAN),
                    run.get("p50_ms").unwrap_or(f64::NAN),
                    run.get("p99_ms").unwrap_or(f64::NAN),
                    run.get("errors").unwrap_or(f64::NAN),
                );
                add(&mut cases, label, run);
                stop(servers).await?;
            }
        }
        if wants("failover") {
            let servers = start(ctx, o, &pg).await?;
            let run = failover(servers, o).await?;
            println!(
                "cluster failover run {}: {:.2} s from SIGKILL to the first committed command on another instance (lease {} s), {} retryable refusals",
                r + 1,
                run.get("failover_s").unwrap_or(f64::NAN),
                o.lease_secs,
                run.get("refusals").unwrap_or(f64::NAN),
            );
            add(&mut cases, "failover", run);
        }
    }
    report.cases = cases;
    report.target(
        "cross-instance fan-out p99 <= 50 ms",
        "fanout",
        "p99_ms",
        "<=",
        50.0,
    );
    report.target("nothing lost", "fanout", "lost", "<=", 0.0);
    report.target(
        "updateProperty over 32 sessions >= 3,000/s",
        "throughput-32-sessions",
        "per_s",
        ">=",
        3000.0,
    );
    report.target(
        "failover <= lease + 1 s",
        "failover",
        "failover_s",
        "<=",
        o.lease_secs as f64 + 1.0,
    );
    Ok(report)
}

/// Adds a run to the case `label`.
fn add(cases: &mut Vec<Case>, label: &str, run: Run) {
    match cases.iter_mut().find(|c| c.label == label) {
        Some(case) => case.runs.push(run),
        None => cases.push(Case {
            label: label.to_string(),
            params: json!({}),
            runs: vec![run],
        }),
    }
}

/// Starts the instances on a fresh database.
async fn start(ctx: &Ctx, o: &Opts, pg: &Pg) -> anyhow::Result<Vec<Server>> {
    let url = pg.database()?;
    let mut servers = Vec::new();
    for i in 0..o.instances.max(1) {
        servers.push(
            ctx.target
                .start(Launch {
                    args: vec![
                        "--database-url".into(),
                        url.clone(),
                        "--instance-id".into(),
                        format!("i{i}"),
                        "--lease-secs".into(),
                        o.lease_secs.to_string(),
                    ],
                    ..Launch::default()
                })
                .await?,
        );
    }
    Ok(servers)
}

async fn stop(servers: Vec<Server>) -> anyhow::Result<()> {
    for s in servers {
        s.stop().await?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Layout {
    /// Session j created on instance j mod N; each client on its session's owner.
    Owners,
    /// As `Owners`, each client on the next instance (every command forwarded).
    Forwarded,
    /// One session; client i on instance i mod N.
    OneSession,
}

async fn throughput(servers: &[Server], o: &Opts, layout: Layout) -> anyhow::Result<Run> {
    let n = servers.len();
    let sessions = match layout {
        Layout::OneSession => 1,
        _ => o.sessions.max(1),
    };
    let mut targets = Vec::new();
    for j in 0..sessions {
        let mut http = Http::connect(servers[j % n].addr).await?;
        let project = api::create_project(&mut http, &format!("c{j}")).await?;
        let node =
            api::create_node(&mut http, &project.session, &project.workstream, api::TASK).await?;
        targets.push((project.session, node));
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let warm = t0 + Duration::from_secs(1);
    let end = warm + Duration::from_secs(o.secs.max(1));
    let mut tasks = Vec::new();
    for i in 0..o.clients.max(1) {
        let (session, node) = targets[i % sessions].clone();
        let on = match layout {
            Layout::Owners => (i % sessions) % n,
            Layout::Forwarded => ((i % sessions) + 1) % n,
            Layout::OneSession => i % n,
        };
        let addr = servers[on].addr;
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(addr).await?;
            let mut samples = Samples::with_capacity(4096);
            let mut k = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let body =
                    api::update_body(&session, &node, api::TEXT_PROP, &json!(format!("v{i}-{k}")));
                k += 1;
                let ok = api::send(&mut http, body).await.is_ok();
                if now >= warm {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                        samples.push(now.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Samples::with_capacity(65536);
    for t in tasks {
        all.extend(&t.await??);
    }
    let mut run = Run::default();
    run.note("load_before", json!(crate::stats::loadavg()));
    run.set(
        "per_s",
        done.load(Ordering::Relaxed) as f64 / o.secs.max(1) as f64,
    );
    run.set("p50_ms", all.pct_ms(50.0));
    run.set("p99_ms", all.pct_ms(99.0));
    run.set("errors", errors.load(Ordering::Relaxed) as f64);
    Ok(run)
}

async fn failover(mut servers: Vec<Server>, o: &Opts) -> anyhow::Result<Run> {
    anyhow::ensure!(servers.len() >= 2, "failover needs two instances");
    let mut owner_http = Http::connect(servers[0].addr).await?;
    let project = api::create_project(&mut owner_http, "failover").await?;
    let node = api::create_node(
        &mut owner_http,
        &project.session,
        &project.workstream,
        api::TASK,
    )
    .await?;
    drop(owner_http);
    let mut http = Http::connect(servers[1].addr).await?;
    // Instance 2 follows the session (its commands go to instance 1).
    for k in 0..20 {
        api::send(
            &mut http,
            api::update_body(
                &project.session,
                &node,
                api::TEXT_PROP,
                &json!(format!("warm{k}")),
            ),
        )
        .await?;
    }
    let owner = servers.remove(0);
    let killed = Instant::now();
    owner.kill().await?;
    let mut refusals = 0u64;
    let deadline = killed + Duration::from_secs(o.lease_secs + 30);
    let failover = loop {
        if Instant::now() > deadline {
            bail!(
                "no command committed within {} s of the SIGKILL",
                o.lease_secs + 30
            );
        }
        let body = api::update_body(&project.session, &node, api::TEXT_PROP, &json!("after"));
        match api::send(&mut http, body).await {
            Ok(_) => break killed.elapsed(),
            Err(e) => {
                let code = crate::http::error_code(&e);
                if code != "STORE_UNAVAILABLE" {
                    bail!("a command during the takeover failed with {code}: {e:#}");
                }
                refusals += 1;
                // A retrying client: a short pause between attempts.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut run = Run::default();
    run.note("load_before", json!(crate::stats::loadavg()));
    run.set("failover_s", failover.as_secs_f64());
    run.set("refusals", refusals as f64);
    drop(http);
    stop(servers).await?;
    Ok(run)
}

/// The PostgreSQL the instances share.
enum Pg {
    External(String),
    Private {
        child: Child,
        dir: PathBuf,
        bindir: PathBuf,
        port: u16,
        databases: AtomicU64,
    },
}

const PG_USER: &str = "talus";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` run as `nobody` when we are root (PostgreSQL refuses root).
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--reset-env",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn find_bindir() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Pg {
    fn start() -> anyhow::Result<Pg> {
        let bindir = find_bindir().context(
            "no PostgreSQL server binaries (initdb, postgres) found; install them with `apt-get install postgresql` or pass --database-url",
        )?;
        let dir = crate::server::temp_dir("pg")?;
        if is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
        }
        let data = dir.join("data");
        let out = as_pg_user(&bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .stdout(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        if is_root() {
            std::os::unix::fs::chown(dir.join("postgres.log"), Some(65534), Some(65534))?;
        }
        let child = as_pg_user(&bindir.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "max_connections=300"])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        let started = Instant::now();
        loop {
            let ready = Command::new(bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", PG_USER])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "postgres did not start within 30 s; see {}",
                    dir.join("postgres.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("cluster: private PostgreSQL on 127.0.0.1:{port} (fsync on)");
        Ok(Pg::Private {
            child,
            dir,
            bindir,
            port,
            databases: AtomicU64::new(0),
        })
    }

    /// A fresh database's URL.
    fn database(&self) -> anyhow::Result<String> {
        match self {
            Pg::External(url) => Ok(url.clone()),
            Pg::Private {
                bindir,
                port,
                databases,
                ..
            } => {
                let name = format!("bench{}", databases.fetch_add(1, Ordering::Relaxed));
                let status = Command::new(bindir.join("createdb"))
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "-U",
                        PG_USER,
                        &name,
                    ])
                    .status()?;
                anyhow::ensure!(status.success(), "createdb {name} failed");
                Ok(format!("postgres://{PG_USER}@127.0.0.1:{port}/{name}"))
            }
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Pg::Private { child, dir, .. } = self {
            // SIGQUIT: immediate shutdown.
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
