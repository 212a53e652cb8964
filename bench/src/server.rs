//! The server under test: a child `talus-tally serve` with a temp data dir, or a server at a given URL.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// How to reach (or start) the server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Serve from this URL instead of starting a server.
    pub url: Option<String>,
    /// Its PID, to read its RSS (only with `url`).
    pub pid: Option<u32>,
    /// The `talus-tally` binary to start.
    pub bin: PathBuf,
    /// Extra arguments for every started server.
    pub extra_args: Vec<String>,
}

/// A server the benchmark talks to.
pub struct Server {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    data_dir: Option<PathBuf>,
    keep_data: bool,
    /// Where a started server's log goes (removed with the server unless TALUS_BENCH_KEEP_LOGS is set).
    log_dir: Option<PathBuf>,
}

/// Options for one started server.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub in_memory: bool,
    /// Use this data dir (kept afterwards) instead of a fresh temp dir.
    pub data_dir: Option<PathBuf>,
    /// Listen here (a restart on the address its clients know) instead of on a free port.
    pub addr: Option<SocketAddr>,
    pub args: Vec<String>,
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir.
pub fn temp_dir(what: &str) -> anyhow::Result<PathBuf> {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("talus-bench-{}-{what}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Target {
    /// Whether this run starts its own servers.
    pub fn external(&self) -> bool {
        self.url.is_some()
    }

    /// Starts a server as `launch` says, or connects to the given URL.
    pub async fn start(&self, launch: Launch) -> anyhow::Result<Server> {
        if let Some(url) = &self.url {
            let addr = parse_http_url(url)?;
            let server = Server {
                addr,
                pid: self.pid,
                child: None,
                data_dir: None,
                keep_data: true,
                log_dir: None,
            };
            server.wait_healthy(Duration::from_secs(5)).await?;
            return Ok(server);
        }
        let bin = self.bin.clone();
        let extra = self.extra_args.clone();
        tokio::task::spawn_blocking(move || spawn(&bin, &extra, launch))
            .await
            .context("starting the server panicked")?
    }
}

/// `http://host:port[/...]` to a socket address.
pub fn parse_http_url(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must start with http:// (got {url})"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    hostport
        .to_socket_addrs()
        .with_context(|| format!("could not resolve {hostport}"))?
        .next()
        .ok_or_else(|| anyhow!("{hostport} resolves to no address"))
}

/// Starts `bin serve` and waits for its `listening on http://ADDR` line.
fn spawn(bin: &Path, extra: &[String], launch: Launch) -> anyhow::Result<Server> {
    if !bin.exists() {
        bail!(
            "the server binary {} does not exist; build it with `cargo build --release` (or pass --server-bin)",
            bin.display()
        );
    }
    let (data_dir, keep_data) = match launch.data_dir {
        Some(d) => (d, true),
        None => (temp_dir("data")?, false),
    };
    // A free port picked here, so the server's log level does not matter.
    let addr = match launch.addr {
        Some(addr) => addr,
        None => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?,
    };
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        // Every simulated client connects from 127.0.0.1.
        .arg("--max-connections-per-ip")
        .arg("1000000");
    if launch.in_memory {
        cmd.arg("--in-memory");
    }
    cmd.args(&launch.args).args(extra);
    // The server's own default log filter applies unless RUST_LOG says otherwise.
    // Its log goes to a file: a pipe read by this process would cost the
    // load generator CPU for every line the server logs.
    let log_dir = temp_dir("log")?;
    let log_path = log_dir.join("server.log");
    let log_file = std::fs::File::create(&log_path)?;
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file));
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", bin.display()))?;
    let pid = child.id();
    let mut server = Server {
        addr,
        pid: Some(pid),
        child: Some(child),
        data_dir: Some(data_dir),
        keep_data,
        log_dir: Some(log_dir),
    };
    // Ready once it answers /healthz.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if healthz_blocking(addr) {
            return Ok(server);
        }
        if let Some(child) = server.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the server exited ({status}) before serving; its log:\n{}",
                    tail(&log_path)
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the server did not start serving within 600 s; its log:\n{}",
                tail(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Server {
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/graphql", self.addr)
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// The server's resident set size in KiB (`VmRSS` of /proc/PID/status), if its PID is known.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid?;
        rss_kib(pid)
    }

    /// Waits until `GET /healthz` answers 200.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if healthz(self.addr).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not answer /healthz within {:?}", self.addr, within);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops a started server with SIGTERM (SIGKILL after 20 s) and removes its temp data dir.
    pub async fn stop(self) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || drop(self)).await?;
        Ok(())
    }

    /// Kills a started server with SIGKILL (no shutdown at all) and waits for it to be gone.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            tokio::task::spawn_blocking(move || {
                let _ = child.kill();
                let _ = child.wait();
            })
            .await?;
        }
        self.stop().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        if let (Some(d), false) = (self.data_dir.take(), self.keep_data) {
            let _ = std::fs::remove_dir_all(d);
        }
        if let Some(d) = self.log_dir.take() {
            if std::env::var_os("TALUS_BENCH_KEEP_LOGS").is_none() {
                let _ = std::fs::remove_dir_all(d);
            } else {
                eprintln!("server log kept in {}", d.display());
            }
        }
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's PID has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `GET /healthz` from a plain thread; true on 200.
fn healthz_blocking(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

/// One `GET /healthz` on a fresh connection; true on 200.
pub async fn healthz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Raises this process's open-file limit to its hard limit (children inherit it); returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 here but not on every platform.
    let current = lim.rlim_cur as u64;
    current
}

/// CPU time (user + system) a process has used so far, in milliseconds (10 ms resolution).
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) * 1000.0 / ticks)
}

impl Server {
    /// CPU time the server has used so far, in milliseconds.
    pub fn cpu_ms(&self) -> Option<f64> {
        cpu_ms(self.pid?)
    }
}
