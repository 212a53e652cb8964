//! The `talus-tally` binary: parse the command line, set up logging, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use talus_tally::api::ApiLimits;
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
    Serve(Box<ServeArgs>),
    /// Print a HS256 token signed with the configured secret (for development and examples).
    Token {
        /// The HS256 secret the server is started with.
        #[arg(long, env = "TALUS_JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
        /// The userId (the token's `sub`).
        #[arg(long)]
        sub: String,
        /// The display name (the token's `name`).
        #[arg(long)]
        name: Option<String>,
        /// How long the token is valid: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = talus_tally::auth::parse_ttl)]
        ttl: Duration,
    },
    /// Give a user a role on a stored project, in the data dir of a stopped server
    /// (projects created before authentication was turned on have no owner).
    Grant {
        /// Where the SQLite store (talus.db) lives.
        #[arg(long, env = "TALUS_DATA_DIR", default_value = "talus-data")]
        data_dir: PathBuf,
        /// The project's id.
        #[arg(long)]
        project: uuid::Uuid,
        /// The userId (a token's `sub`).
        #[arg(long)]
        user: String,
        /// owner, editor or viewer.
        #[arg(long, value_parser = parse_role)]
        role: talus_tally::domain::Role,
    },
    /// Print the GraphQL schema (SDL).
    Schema {
        /// Instead of printing it, check the schema against this contract
        /// (an SDL file): list what is missing or of another type, exit 1 if anything is.
        #[arg(long, value_name = "CONTRACT")]
        check: Option<std::path::PathBuf>,
    },
}

/// A count flag's parser: an integer in `lo..=hi`, or clap's clear error (exit code 2).
fn count(lo: u64, hi: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(lo..=hi)
}

/// `--idle-hours`: a finite number of hours from 0 to a century (larger ones
/// overflowed the clock arithmetic: 1e20 panicked at start, 1e13 killed the reaper).
fn hours(s: &str) -> Result<f64, String> {
    const MAX_HOURS: f64 = 876_000.0;
    let h: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of hours"))?;
    if !(h.is_finite() && (0.0..=MAX_HOURS).contains(&h)) {
        return Err(format!(
            "{s} is out of range: give a number of hours from 0 to {MAX_HOURS} (a century)"
        ));
    }
    Ok(h)
}

const MIB: u64 = 1024 * 1024;

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
    /// Presence coalescing window in milliseconds (0 to 10,000; 0 = every join and leave is its own event): the first change after a quiet interval is sent at once, later ones within it are folded into one PresenceChanged.
    #[arg(long, env = "TALUS_PRESENCE_INTERVAL_MS", default_value_t = talus_tally::session::config::DEFAULT_PRESENCE_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    presence_interval_ms: u64,
    /// Clients named in each list of a PresenceChanged (0 to 10,000); its counts are always exact.
    #[arg(long, env = "TALUS_PRESENCE_LIST_LIMIT", default_value_t = talus_tally::session::config::DEFAULT_PRESENCE_LIST_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    presence_list_limit: u64,
    /// Close sessions without clients idle longer than this many hours (0 to 876000).
    #[arg(long, env = "TALUS_IDLE_HOURS", default_value_t = 24.0, value_parser = hours)]
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
    /// Frames queued per websocket connection by its operations; a subscription that finds it full catches up from the log later (sessionEvents subscriptions are polled by the connection and queue nothing).
    #[arg(long, env = "TALUS_WS_QUEUE", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    ws_queue: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "TALUS_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024, value_parser = count(1024, 1024 * MIB))]
    max_body_bytes: usize,
    /// Most operations in one HTTP batch (a JSON list of requests in one POST).
    #[arg(long, env = "TALUS_MAX_HTTP_BATCH", default_value_t = 32, value_parser = count(1, 10_000))]
    max_http_batch: usize,
    /// Deepest query allowed (fields, and fragment spreads while expanding them).
    #[arg(long, env = "TALUS_MAX_DEPTH", default_value_t = 32, value_parser = count(1, 128))]
    max_depth: usize,
    /// Most complex query allowed; list fields multiply by their expected length.
    #[arg(long, env = "TALUS_MAX_COMPLEXITY", default_value_t = 100_000, value_parser = count(1, 100_000_000))]
    max_complexity: usize,
    /// Most subscriptions one websocket connection may hold.
    #[arg(long, env = "TALUS_MAX_SUBSCRIPTIONS", default_value_t = 100, value_parser = count(1, 100_000))]
    max_subscriptions: usize,
    /// Longest query text, in bytes.
    #[arg(long, env = "TALUS_MAX_DOCUMENT_BYTES", default_value_t = 128 * 1024, value_parser = count(256, 16 * MIB))]
    max_document_bytes: usize,
    /// Most fields in a query once its fragments are expanded.
    #[arg(long, env = "TALUS_MAX_FIELDS", default_value_t = 2_000, value_parser = count(1, 1_000_000))]
    max_fields: usize,
    /// Most aliased fields in a query once its fragments are expanded.
    #[arg(long, env = "TALUS_MAX_ALIASES", default_value_t = 100, value_parser = count(0, 1_000_000))]
    max_aliases: usize,
    /// Most fragment spreads in a query once its fragments are expanded.
    #[arg(long, env = "TALUS_MAX_FRAGMENT_SPREADS", default_value_t = 500, value_parser = count(0, 1_000_000))]
    max_fragment_spreads: usize,
    /// Most __schema/__type fields in a query.
    #[arg(long, env = "TALUS_MAX_INTROSPECTION_FIELDS", default_value_t = 4, value_parser = count(0, 1_000))]
    max_introspection_fields: usize,
    /// Most nodes reached through parent/children links, search results, projects and sessions in one response.
    #[arg(long, env = "TALUS_MAX_RESULT_ITEMS", default_value_t = 20_000, value_parser = count(1, 100_000_000))]
    max_result_items: usize,
    /// Longest node or project name, in bytes.
    #[arg(long, env = "TALUS_MAX_NAME_BYTES", default_value_t = 1024, value_parser = count(1, MIB))]
    max_name_bytes: usize,
    /// Longest property value (as JSON), in bytes.
    #[arg(long, env = "TALUS_MAX_VALUE_BYTES", default_value_t = 64 * 1024, value_parser = count(1, 16 * MIB))]
    max_value_bytes: usize,
    /// Most commands in one executeBatch.
    #[arg(long, env = "TALUS_MAX_BATCH_COMMANDS", default_value_t = 1_000, value_parser = count(1, 1_000_000))]
    max_batch_commands: usize,
    /// Most nodes one command or batch may create (applyKit counts every copy).
    #[arg(long, env = "TALUS_MAX_NODES_PER_REQUEST", default_value_t = 10_000, value_parser = count(1, 10_000_000))]
    max_nodes_per_request: usize,
    /// Most nodes a project may hold.
    #[arg(long, env = "TALUS_MAX_NODES_PER_PROJECT", default_value_t = 100_000, value_parser = count(1, 100_000_000))]
    max_nodes_per_project: usize,
    /// Expensive requests (bodies over 16 KiB, requests listing over 1,000 items) running at once
    /// [default: CPU cores - 1, at least 1].
    #[arg(long, env = "TALUS_MAX_EXPENSIVE_REQUESTS", value_parser = count(1, 10_000))]
    max_expensive_requests: Option<usize>,
    /// Expensive requests waiting for their turn; one more is refused with LIMIT_EXCEEDED.
    #[arg(long, env = "TALUS_MAX_EXPENSIVE_QUEUE", default_value_t = 64, value_parser = count(0, 100_000))]
    max_expensive_queue: usize,
    /// Most open TCP connections from one IP address.
    #[arg(long, env = "TALUS_MAX_CONNECTIONS_PER_IP", default_value_t = 1024, value_parser = count(1, 10_000_000))]
    max_connections_per_ip: usize,
    /// Connections queued by the kernel before they are accepted (1 to 65,535; capped by net.core.somaxconn): room for a reconnect storm.
    #[arg(long, env = "TALUS_LISTEN_BACKLOG", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    listen_backlog: u32,
    /// Distinct GraphQL operation names /metrics labels; further names count as `other`.
    #[arg(long, env = "TALUS_METRICS_MAX_OPERATION_NAMES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    metrics_max_operation_names: u32,
    /// Web origins allowed to call the API besides the server's own, comma-separated:
    /// scheme://host[:port], or scheme://host:* for any port. While the server listens on
    /// loopback, http://localhost:* and http://127.0.0.1:* are allowed too.
    #[arg(long, env = "TALUS_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    cors_origins: Vec<AllowedOrigin>,
    /// Host names (without port) requests may be addressed to, comma-separated. While the
    /// server listens on loopback only loopback names and IP literals are answered otherwise
    /// (DNS-rebinding protection); given, the check applies on every address.
    #[arg(long, env = "TALUS_ALLOWED_HOSTS", value_delimiter = ',', value_parser = parse_host)]
    allowed_hosts: Vec<String>,
    /// Documents the Automatic Persisted Queries cache keeps (least recently used go first).
    #[arg(long, env = "TALUS_APQ_CACHE_ENTRIES", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    apq_cache_entries: u32,
    /// Longest query (bytes) the persisted-query cache keeps; longer ones run uncached.
    #[arg(long, env = "TALUS_APQ_MAX_QUERY_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(1..=16 * 1024 * 1024))]
    apq_max_query_bytes: u32,
    /// Use this PostgreSQL database (postgres://USER:PASS@HOST:PORT/DB) instead of SQLite in
    /// --data-dir; instances started with the same URL form one cluster.
    #[arg(long, env = "TALUS_DATABASE_URL")]
    database_url: Option<String>,
    /// This instance's name in a cluster: owner of its session leases, in logs (default: generated).
    #[arg(long, env = "TALUS_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Seconds a session's lease lasts unless its owner renews it; another instance takes the
    /// session over after it expires (1 to 5).
    #[arg(long, env = "TALUS_LEASE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=5))]
    lease_secs: u64,
    /// Database connections per instance, with --database-url (1 to 1,000).
    #[arg(long, env = "TALUS_DATABASE_POOL", default_value_t = 16, value_parser = count(1, 1_000))]
    database_pool: usize,
    /// The URL other instances reach this one at (http://HOST:PORT), to forward commands for
    /// the sessions it owns; with --database-url (default: http:// and the listen address).
    #[arg(long, env = "TALUS_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Shared secret that authenticates forwarded commands between the instances of a cluster;
    /// required with --database-url unless listening on loopback.
    #[arg(long, env = "TALUS_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Seconds a command forwarded to the session's owner may take before the caller is told
    /// STORE_UNAVAILABLE (1 to 300).
    #[arg(long, env = "TALUS_FORWARD_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    forward_timeout_secs: u64,
    /// Idle connections kept open to each other instance for forwarded commands (0 to 1,024).
    #[arg(long, env = "TALUS_FORWARD_IDLE_CONNECTIONS", default_value_t = 32, value_parser = count(0, 1_024))]
    forward_idle_connections: usize,
    /// Send the doorbell (NOTIFY) inside each commit's transaction instead of right after it:
    /// every commit of the cluster then waits for the others' WAL flushes (for measurements).
    #[arg(long, env = "TALUS_DOORBELL_IN_COMMIT")]
    doorbell_in_commit: bool,
    /// Sessions whose doorbells may wait for the one ringer task, which rings all that wait in one
    /// transaction (0 to 1,000,000; a commit that finds the limit reached rings its own; 0: every
    /// commit rings its own doorbell at the end of its pipeline).
    #[arg(long, env = "TALUS_DOORBELL_BATCH", default_value_t = 4_096, value_parser = count(0, 1_000_000))]
    doorbell_batch: usize,
    #[command(flatten)]
    auth: AuthArgs,
}

fn parse_origin(s: &str) -> Result<AllowedOrigin, String> {
    s.parse()
}

fn parse_role(s: &str) -> Result<talus_tally::domain::Role, String> {
    talus_tally::domain::Role::parse(s)
        .ok_or_else(|| format!("'{s}' is not a role: owner, editor or viewer"))
}

/// Authentication and per-user limits (README: "Authentication").
#[derive(Args, Clone)]
struct AuthArgs {
    /// HS256 shared secret; turns authentication on.
    #[arg(long, env = "TALUS_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A PEM public key (RS256 or ES256) or a JWKS file (keys chosen by kid); turns authentication on.
    #[arg(long, env = "TALUS_JWT_PUBLIC_KEY", value_name = "PATH")]
    jwt_public_key: Option<PathBuf>,
    /// Required token issuer (iss), if given.
    #[arg(long, env = "TALUS_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required token audience (aud), if given.
    #[arg(long, env = "TALUS_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Clock skew allowed on a token's exp, in seconds (0 to 300).
    #[arg(long, env = "TALUS_JWT_LEEWAY_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    jwt_leeway_secs: u64,
    /// Verified tokens remembered so a client's repeated token is not verified again until its
    /// exp (0 to 1,000,000; 0: verify every time).
    #[arg(long, env = "TALUS_JWT_CACHE_ENTRIES", default_value_t = 10_000, value_parser = count(0, 1_000_000))]
    jwt_cache_entries: usize,
    /// Serve without authentication on a non-loopback address (a proxy in front must authenticate).
    #[arg(long, env = "TALUS_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Commands (mutations that change a graph) per second per user; 0 turns the limit off
    /// (default: 200 with authentication on, off with it off).
    #[arg(long, env = "TALUS_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    rate_limit: Option<u32>,
    /// Commands a user may send at once before the rate applies (default: twice the rate).
    #[arg(long, env = "TALUS_RATE_BURST", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    rate_burst: Option<u32>,
    /// Open websocket connections one authenticated user may hold.
    #[arg(long, env = "TALUS_MAX_CONNECTIONS_PER_USER", default_value_t = 64, value_parser = count(1, 1_000_000))]
    max_connections_per_user: usize,
}

fn parse_host(s: &str) -> Result<String, String> {
    let host = s.trim().to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if valid {
        Ok(host)
    } else {
        Err(format!(
            "'{s}' is not a host name: write it without scheme or port, e.g. talus.example.com"
        ))
    }
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = Config {
            addr: self.addr,
            data_dir: self.data_dir.clone(),
            templates_dir: self.templates.clone(),
            in_memory: self.in_memory,
            max_body_bytes: self.max_body_bytes,
            max_http_batch: self.max_http_batch,
            max_connections_per_ip: self.max_connections_per_ip,
            listen_backlog: self.listen_backlog,
            ..Config::default()
        };
        // Every value is within its flag's range (clap refused the rest), so none of this can overflow.
        c.session.history_limit = usize::try_from(self.history_limit)?;
        c.session.snapshot_interval = self.snapshot_interval;
        // 0 would delete every event; the newest one is always kept.
        c.session.event_retention = self.event_retention.map(|keep| keep.max(1));
        c.session.broadcast_capacity = self.broadcast_capacity as usize;
        c.session.presence_interval = Duration::from_millis(self.presence_interval_ms);
        c.session.presence_list_limit = usize::try_from(self.presence_list_limit)?;
        c.session.idle_limit = Duration::try_from_secs_f64(self.idle_hours * 3600.0)?;
        c.session.reaper_interval = Duration::from_secs(self.reaper_secs);
        c.session.command_limits = talus_tally::domain::command::Limits {
            max_batch_commands: self.max_batch_commands,
            max_nodes_created: self.max_nodes_per_request,
            max_nodes_per_project: self.max_nodes_per_project,
        };
        c.ws_timeout = Duration::from_secs(self.ws_timeout_secs);
        c.ws_ping_interval = c.ws_timeout / 3;
        c.ws_init_timeout = Duration::from_secs(self.ws_init_timeout_secs);
        c.ws_queue = self.ws_queue as usize;
        c.limits = ApiLimits {
            max_depth: self.max_depth,
            max_complexity: self.max_complexity,
            max_subscriptions_per_connection: self.max_subscriptions,
            max_document_bytes: self.max_document_bytes,
            max_fields: self.max_fields,
            max_aliases: self.max_aliases,
            max_fragment_spreads: self.max_fragment_spreads,
            max_introspection_fields: self.max_introspection_fields,
            max_result_items: self.max_result_items,
            max_name_bytes: self.max_name_bytes,
            max_value_bytes: self.max_value_bytes,
            max_metric_operation_names: self.metrics_max_operation_names as usize,
            apq_cache_entries: self.apq_cache_entries as usize,
            apq_max_query_bytes: self.apq_max_query_bytes as usize,
            max_expensive_requests: self
                .max_expensive_requests
                .unwrap_or_else(talus_tally::api::schema::default_expensive_requests),
            max_expensive_queue: self.max_expensive_queue,
        };
        c.cors_origins = self.cors_origins.clone();
        c.auth = talus_tally::auth::AuthConfig {
            secret: self.auth.jwt_secret.clone(),
            public_key: self.auth.jwt_public_key.clone(),
            issuer: self.auth.jwt_issuer.clone(),
            audience: self.auth.jwt_audience.clone(),
            leeway_secs: self.auth.jwt_leeway_secs,
            cache_entries: self.auth.jwt_cache_entries,
        };
        c.insecure_no_auth = self.auth.insecure_no_auth;
        c.rate_limit = self.auth.rate_limit;
        c.rate_burst = self.auth.rate_burst;
        c.max_connections_per_user = self.auth.max_connections_per_user;
        c.allowed_hosts = self.allowed_hosts.clone();
        c.cluster =
            self.database_url
                .clone()
                .map(|database_url| talus_tally::server::ClusterConfig {
                    database_url,
                    instance_id: self.instance_id.clone().unwrap_or_else(|| {
                        format!(
                            "{}-{}",
                            std::process::id(),
                            &uuid::Uuid::new_v4().simple().to_string()[..8]
                        )
                    }),
                    lease: Duration::from_secs(self.lease_secs),
                    pool_size: self.database_pool,
                    advertise_url: self.advertise_url.clone(),
                    cluster_secret: self.cluster_secret.clone(),
                    forward_timeout: Duration::from_secs(self.forward_timeout_secs),
                    forward_idle_connections: self.forward_idle_connections,
                    doorbell_in_commit: self.doorbell_in_commit,
                    doorbell_batch: self.doorbell_batch,
                });
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
        Some(Cmd::Token {
            jwt_secret,
            sub,
            name,
            ttl,
        }) => {
            println!(
                "{}",
                talus_tally::auth::mint_hs256(&jwt_secret, &sub, name.as_deref(), ttl)?
            );
            return Ok(());
        }
        Some(Cmd::Grant {
            data_dir,
            project,
            user,
            role,
        }) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(server::grant(&data_dir, project, &user, role))?;
            println!("{user} is now {role} of project {project}");
            return Ok(());
        }
        Some(Cmd::Serve(args)) => *args,
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
