//! The `talus-tally` binary: parse the command line, set up logging, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use talus_tally::origin::AllowedOrigin;
use talus_tally::server::{self, Config};

/// glibc's malloc spent about a third of the server's CPU time under load; mimalloc is several times cheaper here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "talus-tally",
    version,
    about = "Real-time, template-driven project graph server (GraphQL)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

// Parsed once at startup: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Serve the GraphQL API, playground and subscriptions (the default).
    Serve(ServeArgs),
    /// Print the GraphQL schema (SDL).
    Schema {
        /// Instead of printing it, check the schema against this contract
        /// (an SDL file): list what is missing or of another type, exit 1 if anything is.
        #[arg(long, value_name = "CONTRACT")]
        check: Option<std::path::PathBuf>,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TALUS_ADDR", default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Where the SQLite store (talus.db) lives.
    #[arg(long, env = "TALUS_DATA_DIR", default_value = "talus-data")]
    data_dir: PathBuf,
    /// A directory of extra *.yaml templates (same id as a built-in overrides it).
    #[arg(long, env = "TALUS_TEMPLATES_DIR")]
    templates: Option<PathBuf>,
    /// Keep everything in memory (nothing survives a restart).
    #[arg(long, env = "TALUS_IN_MEMORY")]
    in_memory: bool,
    /// Undo steps kept per project (1 to 1,000,000).
    #[arg(long, env = "TALUS_HISTORY_LIMIT", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    history_limit: u64,
    /// Ops between snapshots of a project's state (1 to 10,000,000).
    #[arg(long, env = "TALUS_SNAPSHOT_INTERVAL", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    snapshot_interval: u64,
    /// Keep only this many newest events per session (default: all; at least the newest is always kept).
    #[arg(long, env = "TALUS_EVENT_RETENTION")]
    event_retention: Option<u64>,
    /// Committed groups buffered per session for live subscribers; one further behind catches up from the log.
    #[arg(long, env = "TALUS_BROADCAST_CAPACITY", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    broadcast_capacity: u64,
    /// Close sessions without clients idle longer than this many hours.
    #[arg(long, env = "TALUS_IDLE_HOURS", default_value_t = 24.0)]
    idle_hours: f64,
    /// How often the idle-session reaper runs, in seconds (1 to 31,536,000, a year).
    #[arg(long, env = "TALUS_REAPER_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    reaper_secs: u64,
    /// Drop websockets that do not answer pings or drain their writes within this many seconds (2 to 86,400).
    #[arg(long, env = "TALUS_WS_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(2..=86_400))]
    ws_timeout_secs: u64,
    /// Close websockets that send no connection_init within this many seconds (4408).
    #[arg(long, env = "TALUS_WS_INIT_TIMEOUT_SECS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    ws_init_timeout_secs: u64,
    /// Frames queued per websocket connection; a subscription that finds it full catches up from the log later.
    #[arg(long, env = "TALUS_WS_QUEUE", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    ws_queue: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "TALUS_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Deepest query allowed.
    #[arg(long, env = "TALUS_MAX_DEPTH", default_value_t = 32)]
    max_depth: usize,
    /// Most complex query allowed.
    #[arg(long, env = "TALUS_MAX_COMPLEXITY", default_value_t = 100_000)]
    max_complexity: usize,
    /// Most subscriptions one websocket connection may hold.
    #[arg(long, env = "TALUS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    max_subscriptions: usize,
    /// Distinct GraphQL operation names /metrics labels; further names count as `other`.
    #[arg(long, env = "TALUS_METRICS_MAX_OPERATION_NAMES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    metrics_max_operation_names: u32,
    /// Web origins allowed to call the API besides the server's own, comma-separated:
    /// scheme://host[:port], or scheme://host:* for any port. While the server listens on
    /// loopback, http://localhost:* and http://127.0.0.1:* are allowed too.
    #[arg(long, env = "TALUS_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    cors_origins: Vec<AllowedOrigin>,
    /// Documents the Automatic Persisted Queries cache keeps (least recently used go first).
    #[arg(long, env = "TALUS_APQ_CACHE_ENTRIES", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    apq_cache_entries: u32,
    /// Longest query (bytes) the persisted-query cache keeps; longer ones run uncached.
    #[arg(long, env = "TALUS_APQ_MAX_QUERY_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(1..=16 * 1024 * 1024))]
    apq_max_query_bytes: u32,
}

fn parse_origin(s: &str) -> Result<AllowedOrigin, String> {
    s.parse()
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = Config {
            addr: self.addr,
            data_dir: self.data_dir.clone(),
            templates_dir: self.templates.clone(),
            in_memory: self.in_memory,
            max_body_bytes: self.max_body_bytes,
            ..Config::default()
        };
        // A century: far beyond any use, and well inside what a `Duration` and an `Instant` hold.
        const MAX_IDLE_HOURS: f64 = 876_000.0;
        if !(self.idle_hours.is_finite() && (0.0..=MAX_IDLE_HOURS).contains(&self.idle_hours)) {
            anyhow::bail!("--idle-hours must be a number of hours from 0 to {MAX_IDLE_HOURS}");
        }
        c.session.history_limit = usize::try_from(self.history_limit)?;
        c.session.snapshot_interval = self.snapshot_interval;
        // 0 would delete every event; the newest one is always kept.
        c.session.event_retention = self.event_retention.map(|keep| keep.max(1));
        c.session.broadcast_capacity = self.broadcast_capacity as usize;
        c.session.idle_limit = Duration::try_from_secs_f64(self.idle_hours * 3600.0)?;
        c.session.reaper_interval = Duration::from_secs(self.reaper_secs);
        c.ws_timeout = Duration::from_secs(self.ws_timeout_secs);
        c.ws_ping_interval = c.ws_timeout / 3;
        c.ws_init_timeout = Duration::from_secs(self.ws_init_timeout_secs);
        c.ws_queue = self.ws_queue as usize;
        c.limits.max_depth = self.max_depth;
        c.limits.max_complexity = self.max_complexity;
        c.limits.max_subscriptions_per_connection = self.max_subscriptions;
        c.limits.max_metric_operation_names = self.metrics_max_operation_names as usize;
        c.limits.apq_cache_entries = self.apq_cache_entries as usize;
        c.limits.apq_max_query_bytes = self.apq_max_query_bytes as usize;
        c.cors_origins = self.cors_origins.clone();
        Ok(c)
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let serve = match cli.command {
        Some(Cmd::Schema { check: None }) => {
            print!("{}", talus_tally::sdl());
            return Ok(());
        }
        Some(Cmd::Schema { check: Some(path) }) => {
            let contract = std::fs::read_to_string(&path)
                .with_context(|| format!("could not read {}", path.display()))?;
            let problems = talus_tally::api::contract::check(&contract, &talus_tally::sdl())
                .map_err(anyhow::Error::msg)?;
            if problems.is_empty() {
                println!("the schema keeps {}", path.display());
                return Ok(());
            }
            println!("the schema breaks {}:", path.display());
            for p in &problems {
                println!("  {p}");
            }
            std::process::exit(1);
        }
        Some(Cmd::Serve(args)) => args,
        None => cli.serve,
    };
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    let config = serve.config()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(server::run(config, shutdown_signal()))
}
