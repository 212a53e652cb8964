//! Builds and runs the server: store, templates, hub, schema and router, until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiLimits, AppSchema};
use crate::auth::{AuthConfig, Verifier};
use crate::http::{self, AppState};
use crate::origin::{AllowedOrigin, OriginPolicy};
use crate::session::{Hub, SessionConfig};
use crate::store::{
    sqlite::SqliteOptions, MemoryStore, PostgresOptions, PostgresStore, SqliteStore, Store,
};
use crate::templates::TemplateCatalog;

/// How often histogram samples are folded into the metrics registry.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Everything the server can be told.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub templates_dir: Option<PathBuf>,
    pub in_memory: bool,
    pub session: SessionConfig,
    pub limits: ApiLimits,
    pub max_body_bytes: usize,
    /// Most operations in one HTTP batch (`--max-http-batch`).
    pub max_http_batch: usize,
    pub ws_ping_interval: Duration,
    pub ws_timeout: Duration,
    /// Websockets that send no `connection_init` within this are closed (4408).
    pub ws_init_timeout: Duration,
    /// Frames queued per websocket connection; a subscription that finds the
    /// queue full waits and then catches up from the event log.
    pub ws_queue: usize,
    /// Open TCP connections one IP address may hold (`conn_limit`).
    pub max_connections_per_ip: usize,
    /// Connections the kernel queues for `accept` (`--listen-backlog`; capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Origins allowed to call the API besides the server's own (`--cors-origins`).
    pub cors_origins: Vec<AllowedOrigin>,
    /// Token verification (`--jwt-*`); authentication is on when a key is given.
    pub auth: AuthConfig,
    /// Serve without authentication on a non-loopback address (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// Commands per second per user (`--rate-limit`); `None`: 200 with
    /// authentication on, none with it off; 0: none.
    pub rate_limit: Option<u32>,
    /// Commands a user may send in a burst (`--rate-burst`); `None`: twice the rate.
    pub rate_burst: Option<u32>,
    /// Open websockets one user may hold (`--max-connections-per-user`).
    pub max_connections_per_user: usize,
    /// `Host` names answered besides loopback names and IP literals (`--allowed-hosts`).
    pub allowed_hosts: Vec<String>,
    /// The shared PostgreSQL store (`--database-url`) instead of SQLite, with this instance's name and lease.
    pub cluster: Option<ClusterConfig>,
}

/// How an instance joins a cluster on PostgreSQL (`--database-url`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub database_url: String,
    /// Names the instance as a lease owner, in logs and in `pg_stat_activity`.
    pub instance_id: String,
    /// How long a session's lease lasts unless its owner renews it.
    pub lease: Duration,
    /// Database connections of this instance.
    pub pool_size: usize,
    /// Where the other instances reach this one (`--advertise-url`); default `http://` + the listen address.
    pub advertise_url: Option<String>,
    /// Authenticates forwarded commands (`--cluster-secret`); required off loopback.
    pub cluster_secret: Option<String>,
    /// How long a forwarded command may take (`--forward-timeout-secs`).
    pub forward_timeout: Duration,
    /// Idle connections kept per other instance (`--forward-idle-connections`).
    pub forward_idle_connections: usize,
    /// NOTIFY inside the commit's transaction (`--doorbell-in-commit`).
    pub doorbell_in_commit: bool,
    /// Sessions whose doorbells may wait for the ringer (`--doorbell-batch`; 0: each commit rings its own).
    pub doorbell_batch: usize,
}

impl ClusterConfig {
    /// A cluster config with the defaults of the command line.
    pub fn new(database_url: String, instance_id: String) -> ClusterConfig {
        ClusterConfig {
            database_url,
            instance_id,
            lease: Duration::from_secs(5),
            pool_size: 16,
            advertise_url: None,
            cluster_secret: None,
            forward_timeout: Duration::from_secs(10),
            forward_idle_connections: 32,
            doorbell_in_commit: false,
            doorbell_batch: 4_096,
        }
    }
}

/// The link to the other instances of a cluster: this instance's advertised
/// URL recorded with its leases, and the client that forwards to the others.
fn cluster_link(
    config: &Config,
    addr: SocketAddr,
    store: &dyn Store,
) -> anyhow::Result<Option<crate::session::cluster::ClusterLink>> {
    if !store.is_shared() {
        return Ok(None);
    }
    let cluster = config.cluster.as_ref();
    let secret = cluster.and_then(|c| c.cluster_secret.clone());
    anyhow::ensure!(
        secret.is_some() || is_loopback(addr),
        "refusing to serve {addr} in a cluster without --cluster-secret (TALUS_CLUSTER_SECRET): \
         the instances forward commands to each other, and anyone who can reach {addr} could forward them as any user"
    );
    let url = match cluster.and_then(|c| c.advertise_url.clone()) {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            anyhow::ensure!(
                !addr.ip().is_unspecified(),
                "listening on {addr}, this instance cannot tell the others where to reach it: pass --advertise-url http://HOST:PORT"
            );
            format!("http://{addr}")
        }
    };
    store.set_advertise_url(url);
    let link = crate::session::cluster::ClusterLink::new(
        secret,
        cluster.map_or(Duration::from_secs(10), |c| c.forward_timeout),
        cluster.map_or(32, |c| c.forward_idle_connections),
    )?;
    Ok(Some(link))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("talus-data"),
            templates_dir: None,
            in_memory: false,
            session: SessionConfig::default(),
            limits: ApiLimits::default(),
            max_body_bytes: 32 * 1024 * 1024,
            max_http_batch: 32,
            ws_ping_interval: Duration::from_secs(10),
            ws_timeout: Duration::from_secs(30),
            ws_init_timeout: Duration::from_secs(3),
            ws_queue: 256,
            max_connections_per_ip: 1024,
            listen_backlog: 4096,
            cors_origins: Vec::new(),
            auth: AuthConfig::default(),
            insecure_no_auth: false,
            rate_limit: None,
            rate_burst: None,
            max_connections_per_user: 64,
            allowed_hosts: Vec::new(),
            cluster: None,
        }
    }
}

/// The command rate with authentication on, unless `--rate-limit` says otherwise.
const DEFAULT_RATE_LIMIT: u32 = 200;

/// Whether `addr` is reachable from this machine only (127.0.0.0/8, ::1, or ::ffff:127.x.y.z).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Refuses to serve a non-loopback address without authentication (unless `--insecure-no-auth`).
fn refuse_exposed(config: &Config, addr: SocketAddr) -> anyhow::Result<()> {
    if config.auth.is_on() || is_loopback(addr) || config.insecure_no_auth {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {addr} without authentication: anyone who can reach it could read, change and delete every project. \
         Configure a key with --jwt-secret SECRET (TALUS_JWT_SECRET, HS256) or --jwt-public-key PATH (TALUS_JWT_PUBLIC_KEY, a PEM RS256/ES256 key or a JWKS file), \
         listen on 127.0.0.1, or pass --insecure-no-auth if a proxy in front authenticates"
    )
}

/// The token verifier a config asks for (`None`: authentication off), after `refuse_exposed`.
fn verifier(config: &Config, addr: SocketAddr) -> anyhow::Result<Option<Arc<Verifier>>> {
    refuse_exposed(config, addr)?;
    let verifier = Verifier::from_config(&config.auth)?.map(Arc::new);
    if verifier.is_none() && !is_loopback(addr) {
        tracing::warn!(%addr, "authentication is off on a non-loopback address (--insecure-no-auth): anyone who can reach it may do everything");
    }
    Ok(verifier)
}

/// The store a config asks for: SQLite in the data dir, or memory.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    open_store_for(config, None)
}

/// `open_store` for a server listening on `addr`, which a second process on
/// the same data dir is told (the data dir is locked while the store is open).
pub fn open_store_for(config: &Config, addr: Option<SocketAddr>) -> anyhow::Result<Arc<dyn Store>> {
    if config.in_memory {
        return Ok(Arc::new(MemoryStore::new()));
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "could not create the data dir {}",
            config.data_dir.display()
        )
    })?;
    let path = config.data_dir.join("talus.db");
    let mut options = SqliteOptions::default();
    if let Some(addr) = addr {
        options.holder = format!(
            "talus-tally pid {}, listening on {addr}",
            std::process::id()
        );
    }
    let store = SqliteStore::open(&path, options).map_err(|e| {
        anyhow::anyhow!(
            "could not open the data dir {}: {e:#}",
            config.data_dir.display()
        )
    })?;
    Ok(Arc::new(store))
}

/// The PostgreSQL store of a cluster config, migrated and connected.
pub async fn open_postgres(cluster: &ClusterConfig) -> anyhow::Result<Arc<dyn Store>> {
    let options = PostgresOptions {
        pool_size: cluster.pool_size,
        instance_id: cluster.instance_id.clone(),
        lease: cluster.lease,
        doorbell_in_commit: cluster.doorbell_in_commit,
        doorbell_batch: cluster.doorbell_batch,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect(&cluster.database_url, options)
        .await
        .context("could not open the PostgreSQL store (--database-url)")?;
    Ok(Arc::new(store))
}

/// Gives `user` `role` on a stored project in `data_dir` (`talus-tally grant`),
/// for an operator: e.g. the owner of a project created before authentication
/// was turned on. The server must be stopped (it holds the data dir's lock).
pub async fn grant(
    data_dir: &std::path::Path,
    project: uuid::Uuid,
    user: &str,
    role: crate::domain::Role,
) -> anyhow::Result<()> {
    let path = data_dir.join("talus.db");
    anyhow::ensure!(
        path.exists(),
        "there is no store at {} (wrong --data-dir?)",
        path.display()
    );
    anyhow::ensure!(
        !user.trim().is_empty() && user.len() <= 200,
        "the user id must be 1 to 200 bytes"
    );
    let store = SqliteStore::open(&path, SqliteOptions::default()).map_err(|e| {
        anyhow::anyhow!("could not open the data dir {}: {e:#}", data_dir.display())
    })?;
    let result = async {
        let projects = store.projects().await?;
        anyhow::ensure!(
            projects.iter().any(|p| p.id == project),
            "there is no project {project} in {}",
            data_dir.display()
        );
        store
            .commit(vec![crate::store::Write::PutMember(
                crate::store::Membership {
                    project_id: project,
                    user_id: user.trim().to_string(),
                    role,
                },
            )])
            .await?;
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// The templates a config asks for, with load errors and warnings logged.
pub fn load_templates(config: &Config) -> TemplateCatalog {
    let catalog = match &config.templates_dir {
        Some(dir) => TemplateCatalog::load_dir(dir),
        None => TemplateCatalog::builtin(),
    };
    for e in catalog.errors() {
        tracing::warn!(file = %e.file, "template not loaded: {}", e.message);
    }
    for w in catalog.warnings() {
        tracing::warn!(file = %w.file, "template loaded with a warning: {}", w.message);
    }
    catalog
}

/// A server that is serving.
pub struct Running {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub schema: AppSchema,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops gracefully (see `start`) and waits for it, at most 10 s.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(joined) => joined.context("the server task failed")?,
            Err(_) => anyhow::bail!("the server did not stop within 10 s"),
        }
    }
}

/// Starts serving on `listener` with `store`; returns once it accepts connections.
///
/// A shutdown is a sequence, each step waiting for the one before: stop
/// accepting and tell websockets to close; wait for every in-flight HTTP
/// request and every websocket connection to finish; end every subscription
/// and wait for each stream to end (queueing its ClientLeft); close every
/// session and wait for its last commit; close the store.
pub async fn start(
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let verifier = verifier(&config, addr)?;
    let templates = Arc::new(load_templates(&config));
    let mut session_config = config.session.clone();
    if let Some(cluster) = &config.cluster {
        session_config.lease = cluster.lease;
    }
    session_config.cluster = cluster_link(&config, addr, store.as_ref())?;
    let link = session_config.cluster.clone();
    let hub = Hub::start(session_config, store, templates).await?;
    let rate = config.rate_limit.unwrap_or(if verifier.is_some() {
        DEFAULT_RATE_LIMIT
    } else {
        0
    });
    let access = api::AccessPolicy {
        auth: verifier.is_some(),
        rate: api::RateLimit::new(rate, config.rate_burst.unwrap_or(rate.saturating_mul(2))),
    };
    let schema = api::build_with_access(hub.clone(), &config.limits, access);
    let stop = CancellationToken::new();
    let (ws_stop, ws_stop_rx) = watch::channel(false);
    let connections = TaskTracker::new();
    let state = AppState {
        verifier,
        user_connections: Arc::new(crate::ws::UserConnections::new(
            config.max_connections_per_user,
        )),
        origins: Arc::new(
            OriginPolicy::new(&config.cors_origins, addr).with_hosts(&config.allowed_hosts),
        ),
        schema: schema.clone(),
        max_body_bytes: config.max_body_bytes,
        max_http_batch: config.max_http_batch,
        ws_ping_interval: config.ws_ping_interval,
        ws_timeout: config.ws_timeout,
        ws_init_timeout: config.ws_init_timeout,
        ws_queue: config.ws_queue,
        shutdown: ws_stop_rx.clone(),
        connections: connections.clone(),
    };
    let mut app = http::router(state);
    if let Some(link) = link {
        app = app.merge(http::cluster_router(
            hub.clone(),
            link,
            config.max_body_bytes,
        ));
    }
    let app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    // Counts connections per address, and sets TCP_NODELAY on each accepted one.
    let listener = crate::conn_limit::PerAddressLimit::new(listener, config.max_connections_per_ip);
    // Histogram samples wait in the recorder until upkeep folds them in; without
    // a scrape they would pile up, so fold them in on a timer too.
    let metrics = crate::metrics::handle().clone();
    let mut upkeep_stop = ws_stop_rx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tokio::select! {
                _ = every.tick() => metrics.run_upkeep(),
                _ = upkeep_stop.wait_for(|s| *s) => return,
            }
        }
    });
    let task_hub = hub.clone();
    let stopping = stop.clone();
    let signal_hub = hub.clone();
    let task = tokio::spawn(async move {
        // Routes made into services once: serving the `Router` itself clones
        // its route table for every connection (`Router::with_state` per
        // accepted stream, 7% of the instructions of a websocket connect).
        let app = app.with_state(()).into_make_service();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            stopping.cancelled().await;
            // Subscriptions are not requests in flight: they end now, so
            // websockets can send their last frames. Websockets are not
            // drained by axum: they are told to close.
            signal_hub.end_subscriptions();
            ws_stop.send_replace(true);
        });
        let served = serve.await.context("serving failed");
        connections.close();
        connections.wait().await;
        task_hub.shutdown().await;
        served
    });
    Ok(Running {
        addr,
        hub,
        schema,
        stop,
        task,
    })
}

/// A listening socket with room for `backlog` connections not yet accepted.
///
/// `TcpListener::bind` queues 1,024: when thousands of clients reconnect at
/// once (a restart) the kernel drops the handshakes beyond it, and each such
/// client retries only after its SYN timeout (1, 3, 7, 15, 31 s), which made
/// the slowest of 10,000 reconnecting clients wait 15-30 s (talus-bench storm).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted server binds the address its clients know at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog.max(1))
}

/// Runs until `shutdown` completes, then stops gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Refused before listening: an exposed server without authentication never accepts anything.
    refuse_exposed(&config, config.addr)?;
    let listener = listen(config.addr, config.listen_backlog)
        .with_context(|| format!("could not listen on {}", config.addr))?;
    let (store, kind) = match &config.cluster {
        Some(cluster) => (open_postgres(cluster).await?, "postgres"),
        None if config.in_memory => (open_store_for(&config, None)?, "memory"),
        None => (
            open_store_for(&config, Some(listener.local_addr()?))?,
            "sqlite",
        ),
    };
    let instance = config.cluster.as_ref().map(|c| c.instance_id.clone());
    let running = start(config.clone(), listener, store).await?;
    tracing::info!(
        store = kind,
        data_dir = %config.data_dir.display(),
        instance = instance.as_deref().unwrap_or("-"),
        "Talus Tally listening on http://{}",
        running.addr
    );
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await
}
