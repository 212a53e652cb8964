//! The expensive-request limiter: at most `--max-expensive-requests` requests that may cost a lot of CPU run at once.
//!
//! A tokio worker runs a request's parsing, validation and execution without
//! yielding, so on a 2-core machine two requests that each take 100 ms of CPU
//! (a 4 MiB body to parse, a project's whole `nodes` list, a link budget spent
//! to its end) occupy both workers, and every other request, `/healthz`
//! included, waits for them (talus-bench `attack`: p99 of a small query 338 ms).
//! Requests that may be expensive take a permit first, so the workers beyond
//! the permits stay free for the small requests that make up ordinary use.
//!
//! What counts as expensive is known before the expensive part: an HTTP body
//! longer than `EXPENSIVE_BODY_BYTES` (checked in `http.rs` after the body is
//! read, before it is parsed), or a document whose complexity passes
//! `EXPENSIVE_COMPLEXITY` (checked by the `Codes` extension after validation,
//! before execution). A request waits for its permit without holding a
//! worker; at most `--max-expensive-queue` wait, and one more is refused with
//! LIMIT_EXCEEDED at once rather than piling up behind them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::error::err;
use crate::domain::{DomainError, ErrorCode};

/// HTTP bodies longer than this are expensive: ordinary queries and
/// mutations are a few hundred bytes; imports, long batches and big values
/// are what is larger (a 4 MiB value took about 30 ms of CPU to parse and refuse).
pub const EXPENSIVE_BODY_BYTES: usize = 16 * 1024;

/// Documents more complex than this are expensive: every list of a project's
/// nodes counts 1,000 (`schema::expected::NODES`), so this is what can grow
/// with a project's size (100,000 nodes listed took about 0.8 s).
pub const EXPENSIVE_COMPLEXITY: usize = super::schema::expected::NODES;

/// Request data saying the request holds an expensive permit already (taken
/// by the transport), so the extension does not wait for a second one.
#[derive(Debug, Clone, Copy)]
pub struct Admitted;

/// Permits for expensive requests, and a bounded count of those waiting.
#[derive(Debug)]
pub struct ExpensiveLimiter {
    permits: Arc<Semaphore>,
    running: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Gives its place in the queue back when dropped (also when the waiting request is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ExpensiveLimiter {
    /// `running` requests at once (at least one), `max_waiting` more waiting.
    pub fn new(running: usize, max_waiting: usize) -> Self {
        let running = running.max(1);
        ExpensiveLimiter {
            permits: Arc::new(Semaphore::new(running)),
            running,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A permit, at once when one is free, else after waiting for one; or
    /// LIMIT_EXCEEDED when `max_waiting` requests are waiting already.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, DomainError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _place = Waiting(&self.waiting);
        if before >= self.max_waiting {
            return Err(err(
                ErrorCode::LimitExceeded,
                format!(
                    "the server is busy with expensive requests: {} running (the limit max-expensive-requests is {}) \
                     and {} waiting (the limit max-expensive-queue is {}); retry later",
                    self.running, self.running, self.max_waiting, self.max_waiting
                ),
            ));
        }
        // The semaphore is never closed, so acquiring cannot fail.
        self.permits.clone().acquire_owned().await.map_err(|_| {
            err(
                ErrorCode::Internal,
                "the expensive-request limiter is closed",
            )
        })
    }

    /// Requests waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_past_the_running_and_waiting_limits_is_refused_and_a_waiting_one_runs_when_a_permit_is_freed(
    ) {
        let limiter = Arc::new(ExpensiveLimiter::new(1, 1));
        let first = limiter.admit().await.expect("a free permit");
        let waiter = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.admit().await.map(drop) })
        };
        while limiter.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let refused = limiter.admit().await.expect_err("the queue is full");
        assert_eq!(refused.code, ErrorCode::LimitExceeded);
        assert!(
            refused.message.contains("max-expensive-queue is 1"),
            "{}",
            refused.message
        );
        assert!(!waiter.is_finished());
        drop(first);
        waiter
            .await
            .unwrap()
            .expect("admitted once the permit is free");
        assert_eq!(limiter.waiting(), 0);
        drop(limiter.admit().await.expect("free again"));
    }
}
