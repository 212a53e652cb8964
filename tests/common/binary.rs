//! The real `talus-tally` binary as a child process on a data dir, for the
//! tests of signals, restarts and process-level behaviour.
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// A running server process, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://ADDR` of the server.
    pub url: String,
    /// Every line it has logged to stdout so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Resolves when stdout closes (the process is exiting).
    closed: Option<std::sync::mpsc::Receiver<()>>,
}

/// Starts `talus-tally serve` on 127.0.0.1:0 with `data_dir`; returns once it logs its address.
pub fn spawn(data_dir: &std::path::Path) -> Server {
    spawn_with(&["--data-dir".as_ref(), data_dir.as_os_str()])
}

/// Starts `talus-tally serve` on 127.0.0.1:0 with these further arguments; returns once it logs its address.
pub fn spawn_with(args: &[&std::ffi::OsStr]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_talus-tally"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the server binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let seen = lines.clone();
    std::thread::spawn(move || {
        // Read to the end even after the address: a full pipe would block the server.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                let _ = addr_tx.send(addr);
            }
            seen.lock().push(line);
        }
        let _ = closed_tx.send(());
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server logs its address within 30 s");
    Server {
        child,
        url: format!("http://{addr}"),
        lines,
        closed: Some(closed_rx),
    }
}

impl Server {
    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status once the process has ended.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        // Blocking waits, each bounded: stdout closes as the process exits.
        self.closed
            .take()
            .expect("terminated once")
            .recv_timeout(Duration::from_secs(15))
            .expect("the server exits within 15 s of SIGTERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
