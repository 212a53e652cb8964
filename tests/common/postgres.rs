//! A private PostgreSQL cluster for the tests of one test binary: `initdb` in
//! a temp dir, `postgres` on a free loopback port, a fresh database per test.
//!
//! The cluster starts on first use and is shared by the binary's tests. It
//! runs as an unprivileged user when the tests run as root (PostgreSQL
//! refuses root), with its unix socket in its own temp dir. It is stopped and
//! its directory removed when the test process exits (an `atexit` hook, since
//! statics are never dropped), and it dies with the process even when that is
//! killed (`setpriv --pdeathsig`, from a thread that lives as long as the process).
//!
//! When no PostgreSQL binaries are found, `cluster()` prints how to install
//! them and returns `None`, and the test returns early; with
//! `TALUS_REQUIRE_POSTGRES=1` (as CI sets) it fails instead.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use talus_tally::store::{PostgresOptions, PostgresStore};

/// The running cluster of this test process.
pub struct Cluster {
    pub port: u16,
    /// The superuser's connection string to the `postgres` database.
    admin_url: String,
    dir: PathBuf,
}

/// The pid of the postmaster and its directory, for the exit hook.
static RUNNING: OnceLock<(u32, PathBuf)> = OnceLock::new();
static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(1);

const USER: &str = "talus";

/// The shared cluster, started on first use; `None` (after saying so) when
/// PostgreSQL is not installed and not required.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| match find_bindir() {
            Some(bindir) => Some(start(&bindir)),
            None => {
                let required = std::env::var("TALUS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "TALUS_REQUIRE_POSTGRES=1 but no PostgreSQL binaries (initdb, postgres) were found \
                     via pg_config, PATH or /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql`"
                );
                eprintln!(
                    "SKIPPED: the PostgreSQL tests need the PostgreSQL server binaries (initdb, postgres), \
                     which are not installed; install them with `apt-get install postgresql` \
                     (or set TALUS_REQUIRE_POSTGRES=1 to make their absence a failure)"
                );
                None
            }
        })
        .as_ref()
}

/// Where `initdb` and `postgres` are: `pg_config --bindir`, PATH, or the
/// newest /usr/lib/postgresql/*/bin (Debian keeps them off PATH).
fn find_bindir() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Some(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| usable(d)) {
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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` with `args`, as the unprivileged user when we are root.
fn as_postgres_user(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    if is_root() {
        command.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--reset-env",
        ]);
    }
    // The server dies with the test process, even when that is killed.
    command.arg("--pdeathsig=KILL").arg(program);
    command
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn start(bindir: &Path) -> Cluster {
    let dir = tempfile::Builder::new()
        .prefix("talus-pg-")
        .tempdir()
        .expect("a temp dir")
        .keep();
    let data = dir.join("data");
    if is_root() {
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown the cluster dir");
    }
    let status = as_postgres_user(&bindir.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("initdb runs");
    assert!(
        status.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let port = free_port();
    let log = std::fs::File::create(dir.join("postgres.log")).expect("the server log");
    if is_root() {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(65534), Some(65534)).ok();
    }
    let mut command = as_postgres_user(&bindir.join("postgres"));
    command
        .arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&dir)
        // Test data need not survive a crash of the machine: no fsync. What a
        // test kills is a Talus Tally process, never the database.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    // Spawned from a thread that never ends: the death signal is sent when the
    // spawning thread ends, so it must live as long as the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = command.spawn();
        let _ = tx.send(child.map(|c| c.id()));
        loop {
            std::thread::park();
        }
    });
    let pid = rx
        .recv()
        .expect("the spawner answers")
        .expect("postgres starts");
    RUNNING.set((pid, dir.clone())).ok();
    // SAFETY: registering an extern "C" fn with no captured state.
    unsafe {
        libc::atexit(stop_at_exit);
    }
    let admin_url = format!("postgres://{USER}@127.0.0.1:{port}/postgres");
    let started = Instant::now();
    loop {
        let ready = Command::new(bindir.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "postgres did not accept connections within 30 s; see {}",
            dir.join("postgres.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Cluster {
        port,
        admin_url,
        dir,
    }
}

extern "C" fn stop_at_exit() {
    if let Some((pid, dir)) = RUNNING.get() {
        // SIGQUIT: immediate shutdown, the backends exit with the postmaster.
        // SAFETY: signalling our own child process by pid.
        unsafe {
            libc::kill(*pid as i32, libc::SIGQUIT);
            let mut status = 0;
            libc::waitpid(*pid as i32, &mut status, 0);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Cluster {
    /// A new empty database; its connection string.
    pub async fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls)
            .await
            .expect("connects to the test cluster");
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("creates a test database");
        drop(client);
        let _ = task.await;
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// A store on a new empty database.
    pub async fn store(&self) -> (String, PostgresStore) {
        let url = self.database().await;
        let store = PostgresStore::connect(&url, options("test"))
            .await
            .expect("the store connects");
        (url, store)
    }
}

/// Test options: a small pool, a short lease.
pub fn options(instance: &str) -> PostgresOptions {
    PostgresOptions {
        pool_size: 8,
        instance_id: instance.to_string(),
        lease: Duration::from_secs(2),
        ..PostgresOptions::default()
    }
}
