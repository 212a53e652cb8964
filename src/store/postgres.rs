//! The PostgreSQL store (`--database-url`): the system of record of a cluster of instances.
//!
//! Layout of the work:
//!
//! - A pool of connections (deadpool-postgres over tokio-postgres). Each
//!   `commit` is one transaction on one pooled connection: the session actor
//!   already groups a session's jobs into one call, and PostgreSQL groups the
//!   WAL flushes of concurrent commits by itself, so there is no writer thread
//!   as in the SQLite store. A reply is sent only after `COMMIT` returned.
//! - Ops and events are written with plain INSERT: a version or seq stored
//!   twice is a `Conflict` (unique violation), never an overwrite.
//! - Sessions are owned through leases (`session_leases`: owner instance,
//!   epoch, expiry). `take_lease` claims a free or expired lease, or one this
//!   instance holds already, and bumps the epoch; a fenced commit locks the
//!   lease row and the session row (`SELECT ... FOR UPDATE`) and refuses with
//!   `Conflict` unless the epoch and the session's last seq are what the
//!   committer expects. A stale owner therefore cannot write, and two commits
//!   of one session are serialised on its rows, so seq order is commit order.
//! - The schema is an ordered list of migrations (`MIGRATIONS`), applied at
//!   start in one transaction under an advisory lock (instances starting
//!   together take turns) and counted in `talus_schema`. A database with a
//!   newer schema than this binary knows is refused untouched.
//!
//! Timestamps are stored as RFC 3339 text with nine fractional digits, as in
//! the SQLite store: `timestamptz` keeps microseconds only, and a record must
//! read back exactly as it was written. Lease expiry is the database's own
//! clock (`now()`), so instances need not agree on the time.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls, Row};
use uuid::Uuid;

use super::{
    Doorbell, DoorbellFn, Fence, LeaseClaim, LoadedProject, Membership, ProjectRecord,
    SessionRecord, Store, StoreError, StoredEvent, Write,
};
use crate::domain::Role;

/// The schema, one migration per version: `MIGRATIONS[i]` takes a database
/// from version i to i + 1. Append new versions; never edit old ones.
const MIGRATIONS: &[&str] = &[
    // 1: the same tables as the SQLite store's schema 2, plus the leases.
    "CREATE TABLE projects (
        id uuid PRIMARY KEY,
        name text NOT NULL,
        template_id text NOT NULL,
        created_at text NOT NULL,
        updated_at text NOT NULL,
        version bigint NOT NULL,
        node_count bigint NOT NULL
    );
    CREATE TABLE project_snapshots (
        project_id uuid PRIMARY KEY,
        version bigint NOT NULL,
        state text NOT NULL
    );
    CREATE TABLE project_ops (
        project_id uuid NOT NULL,
        version bigint NOT NULL,
        op text NOT NULL,
        PRIMARY KEY (project_id, version)
    );
    CREATE TABLE sessions (
        id uuid PRIMARY KEY,
        project_id uuid,
        created_at text NOT NULL,
        last_activity text NOT NULL,
        last_seq bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE session_events (
        session_id uuid NOT NULL,
        seq bigint NOT NULL,
        json text NOT NULL,
        PRIMARY KEY (session_id, seq)
    );
    CREATE TABLE session_leases (
        session_id uuid PRIMARY KEY,
        owner text NOT NULL,
        epoch bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );",
    // 2: who may do what in a project (authentication), as the SQLite store's schema 3.
    "CREATE TABLE project_members (
        project_id uuid NOT NULL,
        user_id text NOT NULL,
        role text NOT NULL,
        PRIMARY KEY (project_id, user_id)
    );",
    // 3: where a lease's owner takes forwarded commands (its --advertise-url).
    "ALTER TABLE session_leases ADD COLUMN owner_url text;",
    // 4: the fence of a commit as one statement, so that the whole commit can
    // be sent in one pipeline (see `commit_inner`): it locks the lease row and
    // the session row until the transaction ends and fails the transaction
    // (SQLSTATE `FENCE_MISS`) unless the epoch and the last seq are the
    // committer's, so the COMMIT sent after it becomes a rollback.
    "CREATE OR REPLACE FUNCTION talus_fence(sid uuid, held_epoch bigint, expected_seq bigint)
     RETURNS void LANGUAGE plpgsql AS $$
     DECLARE
       lease_epoch bigint;
       stored_seq bigint;
     BEGIN
       SELECT epoch INTO lease_epoch FROM session_leases WHERE session_id = sid FOR UPDATE;
       IF lease_epoch IS DISTINCT FROM held_epoch THEN
         RAISE EXCEPTION USING ERRCODE = 'TT001', MESSAGE = format(
           'session %s is owned by another instance now (lease epoch %s instead of %s)',
           sid, coalesce(lease_epoch::text, 'none'), held_epoch);
       END IF;
       SELECT last_seq INTO stored_seq FROM sessions WHERE id = sid FOR UPDATE;
       IF coalesce(stored_seq, 0) <> expected_seq THEN
         RAISE EXCEPTION USING ERRCODE = 'TT001', MESSAGE = format(
           'session %s has events up to seq %s, not %s', sid, coalesce(stored_seq, 0), expected_seq);
       END IF;
     END $$;",
];

/// The SQLSTATE `talus_fence` fails a commit with: the fence did not hold.
const FENCE_MISS: &str = "TT001";

/// The channel of the doorbell: each commit that adds events to a session
/// notifies `<session uuid>:<newest seq>` on it (about 40 bytes, far below
/// PostgreSQL's 8,000-byte payload limit). Listeners read the events from the table.
pub const DOORBELL_CHANNEL: &str = "talus_events";

/// The advisory lock key under which migrations run ("talus" in ASCII).
const MIGRATION_LOCK: i64 = 0x74_61_6c_75_73;
/// First key of the advisory lock taken while a project is opened into a
/// session (the second is the project's hash); two-key locks are a key space
/// of their own, apart from `MIGRATION_LOCK`'s.
const PROJECT_OPEN_LOCK: i32 = 0x7461_6c75;

/// Tuning of a `PostgresStore`.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections in the pool: how many commits and reads run at the same time.
    pub pool_size: usize,
    /// How long connecting, or waiting for a free connection, may take before the call fails.
    pub connect_timeout: Duration,
    /// This instance's name, as the owner of its leases (and in `pg_stat_activity`).
    pub instance_id: String,
    /// How long a lease lasts unless renewed.
    pub lease: Duration,
    /// Ring the doorbell inside the commit's own transaction rather than in
    /// one of its own right after it (`--doorbell-in-commit`; for measuring
    /// what NOTIFY's lock costs the commit path).
    pub doorbell_in_commit: bool,
    /// Sessions whose doorbells may wait for the ringer (`--doorbell-batch`):
    /// with N > 0 a commit hands its doorbells to one ringer task, which rings
    /// everything waiting in one transaction while commits go on, and a commit
    /// that finds N sessions waiting rings its own; 0 rings each commit's
    /// doorbell in the commit's own pipeline.
    pub doorbell_batch: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            instance_id: format!("pid-{}", std::process::id()),
            lease: Duration::from_secs(5),
            doorbell_in_commit: false,
            doorbell_batch: 0,
        }
    }
}

/// Doorbells of committed events waiting for the ringer: the newest seq per
/// session (so they coalesce), at most `PostgresOptions::doorbell_batch` sessions.
struct Bells {
    waiting: parking_lot::Mutex<HashMap<Uuid, u64>>,
    wake: tokio::sync::Notify,
    limit: usize,
}

impl Bells {
    /// Queues the doorbells of a commit that succeeded; returns those that did
    /// not fit, for the caller to ring itself.
    fn queue(&self, bells: Vec<(Uuid, u64)>) -> Vec<(Uuid, u64)> {
        let mut overflow = Vec::new();
        {
            let mut waiting = self.waiting.lock();
            for (session, seq) in bells {
                if let Some(newest) = waiting.get_mut(&session) {
                    *newest = (*newest).max(seq);
                } else if waiting.len() < self.limit {
                    waiting.insert(session, seq);
                } else {
                    overflow.push((session, seq));
                }
            }
        }
        self.wake.notify_one();
        overflow
    }
}

/// The ringer (`doorbell_batch` > 0): rings every doorbell waiting in one
/// transaction, then the ones that arrived meanwhile, until the store closes.
/// A failed ring is logged and dropped: followers read the log once per
/// lease period anyway, so it costs latency, never an event.
async fn ringer(
    pool: Pool,
    bells: std::sync::Arc<Bells>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = bells.wake.notified() => {}
        }
        let batch: Vec<(Uuid, u64)> = std::mem::take(&mut *bells.waiting.lock())
            .into_iter()
            .collect();
        if batch.is_empty() {
            continue;
        }
        let rung = match pool.get().await {
            Ok(client) => client
                .batch_execute(&ring_sql(&batch))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = rung {
            tracing::warn!(error = %e, sessions = batch.len(), "could not ring the doorbells of committed events");
        }
    }
}

/// The shared store: one PostgreSQL database (see the module docs).
pub struct PostgresStore {
    pool: Pool,
    options: PostgresOptions,
    closed: AtomicBool,
    /// For the listener's own connection (outside the pool).
    config: tokio_postgres::Config,
    /// Recorded with every lease taken (`set_advertise_url`).
    advertise_url: parking_lot::RwLock<Option<String>>,
    /// Stops the listener and the ringer at `close`.
    stop: tokio_util::sync::CancellationToken,
    /// Doorbells waiting for the ringer, when `doorbell_batch` > 0.
    bells: Option<std::sync::Arc<Bells>>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER:PASS@HOST:PORT/DB`), migrates the
    /// schema, and keeps a pool of connections.
    pub async fn connect(url: &str, options: PostgresOptions) -> anyhow::Result<PostgresStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .context("the database URL is not a PostgreSQL connection string")?;
        config.connect_timeout(options.connect_timeout);
        config.application_name(format!("talus-tally {}", options.instance_id));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .context("could not set up the connection pool")?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("could not connect to the database: {e}"))?;
        migrate(&mut client).await?;
        drop(client);
        let stop = tokio_util::sync::CancellationToken::new();
        let bells = (options.doorbell_batch > 0 && !options.doorbell_in_commit).then(|| {
            let bells = std::sync::Arc::new(Bells {
                waiting: parking_lot::Mutex::new(HashMap::new()),
                wake: tokio::sync::Notify::new(),
                limit: options.doorbell_batch,
            });
            tokio::spawn(ringer(pool.clone(), bells.clone(), stop.clone()));
            bells
        });
        Ok(PostgresStore {
            pool,
            options,
            closed: AtomicBool::new(false),
            config,
            advertise_url: parking_lot::RwLock::new(None),
            stop,
            bells,
        })
    }

    /// The name this instance holds leases under.
    pub fn instance_id(&self) -> &str {
        &self.options.instance_id
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                StoreError::Busy("every database connection is in use".into())
            }
            PoolError::Backend(e) => pg_error(&e),
            PoolError::Closed => StoreError::Unavailable("the store is closed".into()),
            other => {
                tracing::warn!(error = %other, "could not get a database connection");
                StoreError::Unavailable("cannot connect to the database".into())
            }
        })
    }

    fn lease_secs(&self) -> f64 {
        self.options.lease.as_secs_f64()
    }
}

/// Applies the migrations this database has not seen yet, or refuses a newer one.
async fn migrate(client: &mut deadpool_postgres::Client) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('talus_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    let version: i64 = if exists {
        tx.query_one("SELECT version FROM talus_schema", &[])
            .await
            .context("the schema table talus_schema has no version row")?
            .get(0)
    } else {
        0
    };
    let known = MIGRATIONS.len();
    let version = match usize::try_from(version) {
        Ok(v) if v <= known => v,
        _ => bail!(
            "the database was written by a newer Talus Tally (schema {version}, this binary knows up to {known}); refusing to use it"
        ),
    };
    if version == known {
        tx.rollback().await?;
        return Ok(());
    }
    if !exists {
        tx.batch_execute(
            "CREATE TABLE talus_schema (version bigint NOT NULL); INSERT INTO talus_schema VALUES (0);",
        )
        .await?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("Failed to migrate the schema to version {}", i + 1))?;
    }
    tx.execute("UPDATE talus_schema SET version = $1", &[&(known as i64)])
        .await?;
    tx.commit().await?;
    tracing::info!(from = version, to = known, "migrated the database schema");
    Ok(())
}

/// A `u64` as a PostgreSQL bigint; larger values fail the commit.
fn int(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Unavailable(format!("{v} is too large to store")))
}

/// A bigint read back as a `u64`; a negative one means the row was not written by us.
fn uint(row: &Row, idx: usize) -> Result<u64, StoreError> {
    let v: i64 = column(row, idx)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("a stored count is negative ({v})")))
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| StoreError::Corrupt(format!("a stored value cannot be read back: {e}")))
}

/// RFC 3339 with nine fractional digits: exact, and ordered as text.
fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn time_column(row: &Row, idx: usize) -> Result<DateTime<Utc>, StoreError> {
    let text: String = column(row, idx)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("a stored time cannot be read back: {e}")))
}

fn project_row(row: &Row) -> Result<ProjectRecord, StoreError> {
    Ok(ProjectRecord {
        id: column(row, 0)?,
        name: column(row, 1)?,
        template_id: column(row, 2)?,
        created_at: time_column(row, 3)?,
        updated_at: time_column(row, 4)?,
        version: uint(row, 5)?,
        node_count: uint(row, 6)?,
    })
}

fn session_row(row: &Row) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: column(row, 0)?,
        project_id: column(row, 1)?,
        created_at: time_column(row, 2)?,
        last_activity: time_column(row, 3)?,
        last_seq: uint(row, 4)?,
    })
}

const PROJECT_COLUMNS: &str = "id, name, template_id, created_at, updated_at, version, node_count";
const SESSION_COLUMNS: &str = "id, project_id, created_at, last_activity, last_seq";

/// The kind of a driver error and a short message for people; the full error goes to the log.
fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection broke, or a value did not convert.
        if e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
            return StoreError::Unavailable("the database connection was lost".into());
        }
        return StoreError::Unavailable(format!("the database call failed: {e}"));
    };
    let message = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string());
    if code.code() == FENCE_MISS {
        return StoreError::Conflict(message);
    }
    if *code == SqlState::UNIQUE_VIOLATION {
        return StoreError::Conflict(
            "a seq or version that is already stored was written again".into(),
        );
    }
    if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::OUT_OF_MEMORY,
    ]
    .contains(code)
    {
        return StoreError::Busy(message);
    }
    if *code == SqlState::DISK_FULL {
        return StoreError::Full("the database's disk is full".into());
    }
    if [SqlState::DATA_CORRUPTED, SqlState::INDEX_CORRUPTED].contains(code) {
        return StoreError::Corrupt(message);
    }
    // Read-only standby, shutdown, connection failures and everything else:
    // the database cannot take writes now.
    StoreError::Unavailable(message)
}

/// Logs the full error and returns its typed kind.
fn failed(what: &str) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
    move |e| {
        let kind = pg_error(&e);
        tracing::warn!(error = %e, kind = kind.kind(), "store {what} failed");
        kind
    }
}

/// One statement of a commit with its parameters.
struct Step<'a> {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send + 'a>>,
}

fn step<'a>(sql: &'static str, params: Vec<Box<dyn ToSql + Sync + Send + 'a>>) -> Step<'a> {
    Step { sql, params }
}

impl Step<'_> {
    /// The parameters as tokio-postgres takes them.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The statements of a commit, in order: the fence (if any), then each write's.
fn plan<'a>(fence: Option<&Fence>, writes: &'a [Write]) -> Result<Vec<Step<'a>>, StoreError> {
    let mut steps = Vec::with_capacity(writes.len() + 1);
    if let Some(fence) = fence {
        steps.push(step(
            "SELECT talus_fence($1, $2, $3)",
            vec![
                Box::new(fence.session_id),
                Box::new(int(fence.epoch)?),
                Box::new(int(fence.last_seq)?),
            ],
        ));
    }
    for write in writes {
        plan_write(&mut steps, write)?;
    }
    Ok(steps)
}

/// The statements of one write.
fn plan_write<'a>(steps: &mut Vec<Step<'a>>, write: &'a Write) -> Result<(), StoreError> {
    match write {
        Write::UpsertProject(p) => steps.push(step(
            "INSERT INTO projects (id, name, template_id, created_at, updated_at, version, node_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, template_id = excluded.template_id,
               created_at = excluded.created_at, updated_at = excluded.updated_at,
               version = excluded.version, node_count = excluded.node_count",
            vec![
                Box::new(p.id),
                Box::new(p.name.as_str()),
                Box::new(p.template_id.as_str()),
                Box::new(timestamp(&p.created_at)),
                Box::new(timestamp(&p.updated_at)),
                Box::new(int(p.version)?),
                Box::new(int(p.node_count)?),
            ],
        )),
        Write::Snapshot {
            project_id,
            version,
            state,
        } => {
            let version = int(*version)?;
            // A snapshot serialised in the background may arrive after a
            // newer one: the newer one stays.
            steps.push(step(
                "INSERT INTO project_snapshots (project_id, version, state) VALUES ($1, $2, $3)
                 ON CONFLICT (project_id) DO UPDATE SET version = excluded.version, state = excluded.state
                 WHERE excluded.version >= project_snapshots.version",
                vec![
                    Box::new(*project_id),
                    Box::new(version),
                    Box::new(state.as_str()),
                ],
            ));
            steps.push(step(
                "DELETE FROM project_ops WHERE project_id = $1 AND version <= $2",
                vec![Box::new(*project_id), Box::new(version)],
            ));
        }
        Write::AppendOp {
            project_id,
            version,
            op,
        } => steps.push(step(
            "INSERT INTO project_ops (project_id, version, op) VALUES ($1, $2, $3)",
            vec![
                Box::new(*project_id),
                Box::new(int(*version)?),
                Box::new(op.as_str()),
            ],
        )),
        Write::DeleteProject(id) => {
            for sql in [
                "DELETE FROM projects WHERE id = $1",
                "DELETE FROM project_snapshots WHERE project_id = $1",
                "DELETE FROM project_ops WHERE project_id = $1",
                "DELETE FROM project_members WHERE project_id = $1",
            ] {
                steps.push(step(sql, vec![Box::new(*id)]));
            }
        }
        Write::PutMember(m) => steps.push(step(
            "INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            vec![
                Box::new(m.project_id),
                Box::new(m.user_id.as_str()),
                Box::new(m.role.as_str()),
            ],
        )),
        Write::RemoveMember {
            project_id,
            user_id,
        } => steps.push(step(
            "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2",
            vec![Box::new(*project_id), Box::new(user_id.as_str())],
        )),
        Write::UpsertSession(s) => steps.push(step(
            "INSERT INTO sessions (id, project_id, created_at, last_activity, last_seq)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET project_id = excluded.project_id,
               created_at = excluded.created_at, last_activity = excluded.last_activity,
               last_seq = excluded.last_seq",
            vec![
                Box::new(s.id),
                Box::new(s.project_id),
                Box::new(timestamp(&s.created_at)),
                Box::new(timestamp(&s.last_activity)),
                Box::new(int(s.last_seq)?),
            ],
        )),
        Write::DeleteSession(id) => {
            for sql in [
                "DELETE FROM sessions WHERE id = $1",
                "DELETE FROM session_events WHERE session_id = $1",
                "DELETE FROM session_leases WHERE session_id = $1",
            ] {
                steps.push(step(sql, vec![Box::new(*id)]));
            }
        }
        Write::AppendEvents { session_id, events } => {
            if events.is_empty() {
                return Ok(());
            }
            // One statement for the whole list (arrays unnested), plain INSERT:
            // a seq already stored is a collision, never an overwrite.
            let seqs = events
                .iter()
                .map(|e| int(e.seq))
                .collect::<Result<Vec<i64>, _>>()?;
            let jsons: Vec<&str> = events.iter().map(|e| e.json.as_str()).collect();
            steps.push(step(
                "INSERT INTO session_events (session_id, seq, json)
                 SELECT $1, seq, json FROM unnest($2::bigint[], $3::text[]) AS e(seq, json)",
                vec![Box::new(*session_id), Box::new(seqs), Box::new(jsons)],
            ));
        }
        Write::PruneEvents {
            session_id,
            below_seq,
        } => {
            // Above i64::MAX every stored seq is below it.
            let below = i64::try_from(*below_seq).unwrap_or(i64::MAX);
            steps.push(step(
                "DELETE FROM session_events WHERE session_id = $1 AND seq < $2",
                vec![Box::new(*session_id), Box::new(below)],
            ));
        }
    }
    Ok(())
}

/// A request of a pipeline, boxed so that statements and simple queries mix.
type Request<'a> = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>>;

/// Sends every request before awaiting any (tokio-postgres sends a request
/// when its future is first polled, and the server answers in order), then
/// awaits their answers in order: one round trip for the lot.
async fn pipeline(requests: Vec<Request<'_>>) -> Vec<Result<(), tokio_postgres::Error>> {
    let mut slots: Vec<(Request<'_>, Option<Result<(), tokio_postgres::Error>>)> =
        requests.into_iter().map(|r| (r, None)).collect();
    for (request, answer) in &mut slots {
        // Polled once, in order: this sends the request.
        if let std::task::Poll::Ready(done) = futures_util::poll!(request.as_mut()) {
            *answer = Some(done);
        }
    }
    let mut answers = Vec::with_capacity(slots.len());
    for (request, answer) in slots {
        answers.push(match answer {
            Some(done) => done,
            None => request.await,
        });
    }
    answers
}

#[async_trait]
impl Store for PostgresStore {
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.commit_inner(None, writes).await
    }

    async fn commit_fenced(&self, fence: &Fence, writes: Vec<Write>) -> Result<(), StoreError> {
        self.commit_inner(Some(fence), writes).await
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY created_at, id");
        let rows = client.query(&sql, &[]).await.map_err(failed("read"))?;
        rows.iter().map(project_row).collect()
    }

    async fn memberships(&self) -> Result<Vec<Membership>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT project_id, user_id, role FROM project_members ORDER BY project_id, user_id",
                &[],
            )
            .await
            .map_err(failed("read"))?;
        rows.iter()
            .map(|row| {
                let role: &str = column(row, 2)?;
                Ok(Membership {
                    project_id: column(row, 0)?,
                    user_id: column(row, 1)?,
                    role: Role::parse(role)
                        .ok_or_else(|| StoreError::Corrupt(format!("'{role}' is not a role")))?,
                })
            })
            .collect()
    }

    async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_at, id");
        let rows = client.query(&sql, &[]).await.map_err(failed("read"))?;
        rows.iter().map(session_row).collect()
    }

    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let stmt = client.prepare_cached(&sql).await.map_err(failed("read"))?;
        let row = client
            .query_opt(&stmt, &[&id])
            .await
            .map_err(failed("read"))?;
        row.as_ref().map(session_row).transpose()
    }

    async fn load_project(&self, id: Uuid) -> Result<Option<LoadedProject>, StoreError> {
        let mut client = self.client().await?;
        // One snapshot of the database, so the snapshot and the ops after it
        // come from the same commit even while another commit replaces the snapshot.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(failed("read"))?;
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1");
        let Some(row) = tx.query_opt(&sql, &[&id]).await.map_err(failed("read"))? else {
            return Ok(None);
        };
        let record = project_row(&row)?;
        let snapshot = tx
            .query_opt(
                "SELECT version, state FROM project_snapshots WHERE project_id = $1",
                &[&id],
            )
            .await
            .map_err(failed("read"))?
            .map(|row| Ok::<_, StoreError>((uint(&row, 0)?, column::<String>(&row, 1)?)))
            .transpose()?;
        let after = int(snapshot.as_ref().map_or(0, |s| s.0))?;
        let tail = tx
            .query(
                "SELECT version, op FROM project_ops WHERE project_id = $1 AND version > $2 ORDER BY version",
                &[&id, &after],
            )
            .await
            .map_err(failed("read"))?
            .iter()
            .map(|row| Ok((uint(row, 0)?, column::<String>(row, 1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await.map_err(failed("read"))?;
        Ok(Some(LoadedProject {
            record,
            snapshot,
            tail,
        }))
    }

    async fn events(
        &self,
        session_id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // Seqs are bigints, so none is above i64::MAX.
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT seq, json FROM session_events
                 WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await
            .map_err(failed("read"))?;
        let rows = client
            .query(&stmt, &[&session_id, &after, &limit])
            .await
            .map_err(failed("read"))?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    seq: uint(row, 0)?,
                    json: column::<String>(row, 1)?.into(),
                })
            })
            .collect()
    }

    async fn event_range(&self, session_id: Uuid) -> Result<Option<(u64, u64)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT min(seq), max(seq) FROM session_events WHERE session_id = $1")
            .await
            .map_err(failed("read"))?;
        let row = client
            .query_one(&stmt, &[&session_id])
            .await
            .map_err(failed("read"))?;
        let first: Option<i64> = column(&row, 0)?;
        let last: Option<i64> = column(&row, 1)?;
        match (first, last) {
            (Some(first), Some(last)) => Ok(Some((
                u64::try_from(first).map_err(|_| StoreError::Corrupt("a negative seq".into()))?,
                u64::try_from(last).map_err(|_| StoreError::Corrupt("a negative seq".into()))?,
            ))),
            _ => Ok(None),
        }
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn take_lease(&self, session_id: Uuid) -> Result<LeaseClaim, StoreError> {
        let client = self.client().await?;
        // Claimed when free, expired, or already ours; the epoch grows with
        // every claim, so a commit fenced with an older one is refused.
        let stmt = client
            .prepare_cached(
                "INSERT INTO session_leases (session_id, owner, epoch, expires_at, owner_url)
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3), $4)
                 ON CONFLICT (session_id) DO UPDATE
                   SET owner = excluded.owner, epoch = session_leases.epoch + 1,
                       expires_at = excluded.expires_at, owner_url = excluded.owner_url
                   WHERE session_leases.owner = excluded.owner OR session_leases.expires_at < now()
                 RETURNING epoch",
            )
            .await
            .map_err(failed("lease"))?;
        let me = &self.options.instance_id;
        let url = self.advertise_url.read().clone();
        let row = client
            .query_opt(&stmt, &[&session_id, me, &self.lease_secs(), &url])
            .await
            .map_err(failed("lease"))?;
        if let Some(row) = row {
            return Ok(LeaseClaim::Held(Fence {
                session_id,
                epoch: uint(&row, 0)?,
                last_seq: 0,
            }));
        }
        let row = client
            .query_opt(
                "SELECT owner, greatest(extract(epoch FROM expires_at - now()), 0)::float8, owner_url
                 FROM session_leases WHERE session_id = $1",
                &[&session_id],
            )
            .await
            .map_err(failed("lease"))?;
        match row {
            Some(row) => Ok(LeaseClaim::HeldBy {
                owner: column(&row, 0)?,
                owner_url: column(&row, 2)?,
                expires_in: Duration::from_secs_f64(column::<f64>(&row, 1)?.max(0.0)),
            }),
            // Released between the two statements: whoever asks again gets it.
            None => Err(StoreError::Busy(format!(
                "the lease on session {session_id} changed hands; retry"
            ))),
        }
    }

    async fn renew_leases(&self, held: &[(Uuid, u64)]) -> Result<Vec<Uuid>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let ids: Vec<Uuid> = held.iter().map(|h| h.0).collect();
        let epochs = held
            .iter()
            .map(|h| int(h.1))
            .collect::<Result<Vec<i64>, _>>()?;
        let stmt = client
            .prepare_cached(
                "UPDATE session_leases l SET expires_at = now() + make_interval(secs => $2)
                 FROM unnest($3::uuid[], $4::bigint[]) AS h(id, epoch)
                 WHERE l.session_id = h.id AND l.epoch = h.epoch AND l.owner = $1
                 RETURNING l.session_id",
            )
            .await
            .map_err(failed("lease"))?;
        let rows = client
            .query(
                &stmt,
                &[&self.options.instance_id, &self.lease_secs(), &ids, &epochs],
            )
            .await
            .map_err(failed("lease"))?;
        let renewed: std::collections::HashSet<Uuid> = rows
            .iter()
            .map(|r| column(r, 0))
            .collect::<Result<_, _>>()?;
        Ok(ids.into_iter().filter(|id| !renewed.contains(id)).collect())
    }

    async fn open_project_session(
        &self,
        record: &SessionRecord,
    ) -> Result<Option<Uuid>, StoreError> {
        let Some(project_id) = record.project_id else {
            self.commit(vec![Write::UpsertSession(record.clone())])
                .await?;
            return Ok(None);
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(failed("commit"))?;
        // One opener of this project at a time across the cluster, until the
        // transaction ends: the second sees the first one's session.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(($2::uuid)::text))",
            &[&PROJECT_OPEN_LOCK, &project_id],
        )
        .await
        .map_err(failed("commit"))?;
        let existing = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id FROM sessions WHERE project_id = $1 ORDER BY created_at, id LIMIT 1",
                )
                .await
                .map_err(failed("read"))?,
                &[&project_id],
            )
            .await
            .map_err(failed("read"))?;
        if let Some(row) = existing {
            let id: Uuid = column(&row, 0)?;
            tx.commit().await.map_err(failed("commit"))?;
            return Ok(Some(id));
        }
        let write = Write::UpsertSession(record.clone());
        for step in plan(None, std::slice::from_ref(&write))? {
            tx.execute(step.sql, &step.params())
                .await
                .map_err(failed("commit"))?;
        }
        tx.commit().await.map_err(failed("commit"))?;
        Ok(None)
    }

    async fn live_leases(&self, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT session_id FROM session_leases
                 WHERE session_id = ANY($1) AND expires_at > now()",
            )
            .await
            .map_err(failed("lease"))?;
        let ids = ids.to_vec();
        client
            .query(&stmt, &[&ids])
            .await
            .map_err(failed("lease"))?
            .iter()
            .map(|r| column(r, 0))
            .collect()
    }

    async fn release_lease(&self, session_id: Uuid, epoch: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM session_leases WHERE session_id = $1 AND epoch = $2 AND owner = $3",
                &[&session_id, &int(epoch)?, &self.options.instance_id],
            )
            .await
            .map_err(failed("lease"))?;
        Ok(())
    }

    fn set_advertise_url(&self, url: String) {
        *self.advertise_url.write() = Some(url);
    }

    fn listen(&self, ring: DoorbellFn) -> bool {
        let mut config = self.config.clone();
        config.application_name(format!("talus-tally {} listener", self.options.instance_id));
        // A broken connection is noticed within a minute even without traffic.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        tokio::spawn(listener(config, ring, self.stop.clone()));
        true
    }

    async fn ops_between(
        &self,
        project_id: Uuid,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT version, op FROM project_ops
                 WHERE project_id = $1 AND version > $2 AND version <= $3 ORDER BY version",
            )
            .await
            .map_err(failed("read"))?;
        client
            .query(&stmt, &[&project_id, &int(after)?, &int(upto)?])
            .await
            .map_err(failed("read"))?
            .iter()
            .map(|row| Ok((uint(row, 0)?, column::<String>(row, 1)?)))
            .collect()
    }

    /// Refuses new calls; a commit in flight finishes on its connection.
    async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stop.cancel();
        self.pool.close();
    }
}

impl PostgresStore {
    /// One transaction in one pipeline: `BEGIN`, the fence (if any), every
    /// write's statements, `COMMIT`, and the doorbell's transaction, all sent
    /// before the first answer is read, so a commit costs one round trip (plus
    /// one per statement text this connection has not prepared yet).
    ///
    /// Why this is safe: the server runs the requests one after the other. A
    /// statement that fails (a fence miss, a seq stored twice) aborts the
    /// transaction, every statement after it fails too, and the `COMMIT`
    /// then rolls back; the commit counts as done only if every statement
    /// before `COMMIT` and `COMMIT` itself succeeded, and is reported with
    /// the first error otherwise. The doorbell's transaction starts after the
    /// `COMMIT` finished and rings only for events that are stored (see
    /// `pipelined_ring_sql`), so a refused commit rings nothing and a bell never
    /// comes before its events.
    async fn commit_inner(
        &self,
        fence: Option<&Fence>,
        writes: Vec<Write>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let steps = plan(fence, &writes)?;
        let mut statements = Vec::with_capacity(steps.len());
        for step in &steps {
            // Prepared once per connection; cached afterwards (no round trip).
            statements.push(
                client
                    .prepare_cached(step.sql)
                    .await
                    .map_err(failed("commit"))?,
            );
        }
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = steps.iter().map(Step::params).collect();
        let bells = bells_of(&writes);
        let commit = if self.options.doorbell_in_commit {
            format!("{}COMMIT", notify_sql(&bells))
        } else {
            "COMMIT".to_string()
        };
        // Rung behind the COMMIT in this pipeline, unless the ringer takes them.
        let after = (!self.options.doorbell_in_commit && self.bells.is_none() && !bells.is_empty())
            .then(|| pipelined_ring_sql(&bells));
        let client: &tokio_postgres::Client = &client;
        let mut requests: Vec<Request<'_>> = Vec::with_capacity(steps.len() + 3);
        requests.push(Box::pin(client.batch_execute("BEGIN")));
        for (statement, params) in statements.iter().zip(&params) {
            requests.push(Box::pin(async move {
                client.execute(statement, params).await.map(|_| ())
            }));
        }
        requests.push(Box::pin(client.batch_execute(&commit)));
        if let Some(after) = &after {
            requests.push(Box::pin(client.batch_execute(after)));
        }
        let mut answers = pipeline(requests).await;
        let bell = if after.is_some() { answers.pop() } else { None };
        // An error at COMMIT leaves the outcome unknown (the connection may
        // have died after the server committed); the caller is told it failed
        // and a later commit on top of it is refused by the fence or by the plain INSERTs.
        if let Some(error) = answers.into_iter().find_map(Result::err) {
            if error.code().is_some_and(|c| c.code() == FENCE_MISS) {
                // Expected after a takeover: the caller steps down.
                return Err(pg_error(&error));
            }
            return Err(failed("commit")(error));
        }
        if let Some(Err(e)) = bell {
            // Committed all the same: followers find the events on their next read.
            tracing::warn!(error = %e, "could not ring the doorbell after a commit");
        }
        if let Some(ringer) = &self.bells {
            // Committed: the ringer may ring them now, after the commit.
            let overflow = ringer.queue(bells);
            if !overflow.is_empty() {
                if let Err(e) = client.batch_execute(&ring_sql(&overflow)).await {
                    tracing::warn!(error = %e, "could not ring the doorbell after a commit");
                }
            }
        }
        Ok(())
    }
}

/// The doorbells of a commit: each session that gained events, with its newest seq.
fn bells_of(writes: &[Write]) -> Vec<(Uuid, u64)> {
    writes
        .iter()
        .filter_map(|write| match write {
            Write::AppendEvents { session_id, events } => {
                events.last().map(|e| (*session_id, e.seq))
            }
            _ => None,
        })
        .collect()
}

/// One `pg_notify` per doorbell, as SQL text (a uuid and a number: nothing to quote).
fn notify_sql(bells: &[(Uuid, u64)]) -> String {
    bells
        .iter()
        .map(|(session, seq)| format!("SELECT pg_notify('{DOORBELL_CHANNEL}', '{session}:{seq}');"))
        .collect()
}

/// Doorbells in a transaction of their own, for events already committed.
/// It waits for no WAL flush (`synchronous_commit = off`: a doorbell lost in
/// a crash costs latency, not an event). NOTIFY takes a database-wide lock
/// from its commit until the commit is durable, so inside the data's own
/// transaction it would hold every commit of the cluster behind one fsync at
/// a time (BENCHMARKS.md, cluster); here it is held for a transaction that
/// writes nothing. A listener that hears a doorbell finds the events
/// committed, since it rings after them.
fn ring_sql(bells: &[(Uuid, u64)]) -> String {
    format!(
        "BEGIN; SET LOCAL synchronous_commit TO off; {} COMMIT;",
        notify_sql(bells)
    )
}

/// `ring_sql` for the end of a commit's own pipeline, which is sent before
/// the commit's outcome is known: each doorbell rings only if its event is
/// stored, so a commit that was refused rings nothing.
fn pipelined_ring_sql(bells: &[(Uuid, u64)]) -> String {
    let mut sql = String::from("BEGIN; SET LOCAL synchronous_commit TO off; ");
    for (session, seq) in bells {
        sql.push_str(&format!(
            "SELECT pg_notify('{DOORBELL_CHANNEL}', '{session}:{seq}') FROM session_events
             WHERE session_id = '{session}' AND seq = {seq};"
        ));
    }
    sql.push_str(" COMMIT;");
    sql
}

/// The doorbell listener: one dedicated connection (outside the pool) that
/// `LISTEN`s on `DOORBELL_CHANNEL` and calls `ring` for every notification.
/// A lost connection is reconnected with backoff (100 ms doubling to 5 s);
/// after each reconnect `ring(Reconnected)`, since notifications sent while
/// it was away are lost (their events are not: followers read the table).
async fn listener(
    config: tokio_postgres::Config,
    ring: DoorbellFn,
    stop: tokio_util::sync::CancellationToken,
) {
    use futures_util::StreamExt as _;
    use tokio_postgres::AsyncMessage;
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        let session = async {
            let (client, mut connection) = config.connect(NoTls).await?;
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            // The client lives as long as this block: dropping it closes the connection.
            let listen = client.batch_execute("LISTEN talus_events");
            tokio::pin!(listen);
            // The connection is driven by polling its messages, also while LISTEN runs.
            loop {
                tokio::select! {
                    done = &mut listen => { done?; break; }
                    message = messages.next() => match message {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    },
                }
            }
            tracing::info!("listening for doorbells");
            if connected_before {
                ring(Doorbell::Reconnected);
            }
            connected_before = true;
            backoff = Duration::from_millis(100);
            while let Some(message) = messages.next().await {
                match message? {
                    AsyncMessage::Notification(n) if n.channel() == DOORBELL_CHANNEL => {
                        if let Some(bell) = parse_doorbell(n.payload()) {
                            ring(bell);
                        }
                    }
                    _ => {}
                }
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            ended = session => match ended {
                Ok(()) => tracing::warn!("the doorbell connection closed; reconnecting"),
                Err(e) => tracing::warn!(error = %e, "the doorbell connection failed; reconnecting"),
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        // Whatever rang meanwhile is read from the table once the listener is back.
        connected_before = true;
    }
}

/// `<session uuid>:<seq>`, as the commit path sends it.
fn parse_doorbell(payload: &str) -> Option<Doorbell> {
    let (session, seq) = payload.split_once(':')?;
    Some(Doorbell::Rang {
        session_id: Uuid::parse_str(session).ok()?,
        seq: seq.parse().ok()?,
    })
}
