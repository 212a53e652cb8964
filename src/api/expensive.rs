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
//! read, before it is parsed), or a request about to list more than
//! `EXPENSIVE_ITEMS` items: a graph's `nodes` of a project that large
//! (checked by the resolver before it builds the list), or list items and
//! links past that count in all (checked as `charge` counts them). The
//! decision is by what the request will really do, not by the document's
//! complexity estimate: `graph { nodes { ... } }` of a 50-node project is
//! cheap, and classing it as expensive, as a static estimate must, made
//! every client that loads a graph wait behind one permit (and past 64 waiting,
//! be refused). A request waits for its permit without holding a worker or a
//! lock, holds it until its execution ends (`PermitSlot`); at most
//! `--max-expensive-queue` wait, and one more is refused with LIMIT_EXCEEDED
//! at once rather than piling up behind them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::error::err;
use crate::domain::{DomainError, ErrorCode};

/// HTTP bodies longer than this are expensive: ordinary queries and
/// mutations are a few hundred bytes; imports, long batches and big values
/// are what is larger (a 4 MiB value took about 30 ms of CPU to parse and refuse).
pub const EXPENSIVE_BODY_BYTES: usize = 16 * 1024;

/// Requests listing more items than this (nodes, links, sessions, projects)
/// are expensive: 100,000 nodes listed took about 0.8 s, so 1,000 take about
/// 8 ms, what an ordinary request may cost.
pub const EXPENSIVE_ITEMS: usize = 1_000;

/// A request's expensive permit, taken the first time the request turns out
/// to be expensive and held until its execution ends (the slot is request data).
/// An async mutex: two resolvers of one request that find it expensive at
/// once must not both wait for a permit (with one permit, the second would
/// wait for the request's own).
#[derive(Default)]
pub struct PermitSlot {
    permit: tokio::sync::Mutex<Option<OwnedSemaphorePermit>>,
    /// Items the request has listed so far, every list and alias counted.
    items: AtomicUsize,
}

/// Counts `items` more listed by the request; once it has listed more than
/// `EXPENSIVE_ITEMS` in all, waits for an expensive permit unless it holds
/// one (or one the transport took for a big body).
pub async fn admit_for(ctx: &async_graphql::Context<'_>, items: usize) -> Result<(), DomainError> {
    let Some(slot) = ctx.data_opt::<PermitSlot>() else {
        return Ok(());
    };
    let listed = slot
        .items
        .fetch_add(items, Ordering::Relaxed)
        .saturating_add(items);
    if listed <= EXPENSIVE_ITEMS || ctx.data_opt::<Admitted>().is_some() {
        return Ok(());
    }
    let Some(limiter) = ctx.data_opt::<Arc<ExpensiveLimiter>>() else {
        return Ok(());
    };
    let mut held = slot.permit.lock().await;
    if held.is_none() {
        *held = Some(limiter.admit().await?);
    }
    Ok(())
}

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
