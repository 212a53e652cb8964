//! Tunables of the session layer, with safe defaults.

use std::time::Duration;

use crate::domain::command::Limits;
use crate::domain::history::DEFAULT_HISTORY_LIMIT;

/// Default of `--presence-interval-ms`.
pub const DEFAULT_PRESENCE_INTERVAL_MS: u64 = 250;
/// Default of `--presence-list-limit`.
pub const DEFAULT_PRESENCE_LIST_LIMIT: usize = 10;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Undo steps kept per project.
    pub history_limit: usize,
    /// Ops between snapshots of a project's state (raised for big graphs so a snapshot stays amortised).
    pub snapshot_interval: u64,
    /// Keep only this many newest events per session; `None` keeps everything.
    pub event_retention: Option<u64>,
    /// Committed groups (each a batch of events) buffered per session for live
    /// subscribers before one counts as lagging. A subscriber that stops
    /// reading pins this many groups in memory until it reads again or they
    /// are overwritten, so it is small: one further behind catches up from the
    /// in-memory tail or the store (talus-bench `stalled`, BENCHMARKS.md).
    pub broadcast_capacity: usize,
    /// Newest events kept in memory per session for fast catch-up.
    pub recent_events: usize,
    /// Most jobs one session commits together.
    pub max_group: usize,
    /// Sessions without active clients idle longer than this are closed by the reaper.
    pub idle_limit: Duration,
    /// How often the reaper runs.
    pub reaper_interval: Duration,
    /// What one command may do (batch length, nodes created, nodes per project).
    pub command_limits: Limits,
    /// How long a session's lease lasts in a shared store; renewed every third of it.
    pub lease: Duration,
    /// Presence coalescing: the first join or leave after a quiet interval
    /// is its own ClientJoined/ClientLeft at once; later ones within this
    /// interval are folded into one PresenceChanged at its end. Zero sends
    /// every change on its own (N joins then cost N^2 deliveries).
    pub presence_interval: Duration,
    /// Clients named per PresenceChanged list (`joined`, `left`); the counts are always exact.
    pub presence_list_limit: usize,
    /// Test gate: a folded PresenceChanged is sent when the test adds a
    /// permit, instead of at the end of the interval.
    #[cfg(any(test, feature = "test-support"))]
    pub presence_gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// How this instance forwards work to the owners of sessions it follows
    /// (a shared store only).
    pub cluster: Option<super::cluster::ClusterLink>,
    /// Test fault: which commands panic or fail to serialise while applied.
    #[cfg(any(test, feature = "test-support"))]
    pub apply_fault: Option<ApplyFault>,
}

/// What an injected fault does to a command being applied.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The actor panics while applying it.
    Panic,
    /// Its op fails to serialise.
    Unserialisable,
}

/// Decides, per command, whether applying it fails (tests only).
#[cfg(any(test, feature = "test-support"))]
#[derive(Clone)]
pub struct ApplyFault(pub std::sync::Arc<FaultFn>);

/// The decision of an `ApplyFault`.
#[cfg(any(test, feature = "test-support"))]
pub type FaultFn = dyn Fn(&crate::domain::Command) -> Option<FaultKind> + Send + Sync;

#[cfg(any(test, feature = "test-support"))]
impl ApplyFault {
    pub fn check(&self, command: &crate::domain::Command) -> Option<FaultKind> {
        (self.0)(command)
    }
}

#[cfg(any(test, feature = "test-support"))]
impl std::fmt::Debug for ApplyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplyFault")
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            history_limit: DEFAULT_HISTORY_LIMIT,
            snapshot_interval: 1000,
            event_retention: None,
            broadcast_capacity: 32,
            recent_events: 1024,
            max_group: 512,
            idle_limit: Duration::from_secs(24 * 3600),
            reaper_interval: Duration::from_secs(600),
            command_limits: Limits::default(),
            lease: Duration::from_secs(5),
            presence_interval: Duration::from_millis(DEFAULT_PRESENCE_INTERVAL_MS),
            presence_list_limit: DEFAULT_PRESENCE_LIST_LIMIT,
            #[cfg(any(test, feature = "test-support"))]
            presence_gate: None,
            cluster: None,
            #[cfg(any(test, feature = "test-support"))]
            apply_fault: None,
        }
    }
}
