//! `Gate`: polls one branch of a task's loop only once that branch's own waker has fired.
//!
//! A websocket connection's task waits on many things at once (its socket,
//! its queue, its subscriptions, a ping timer, shutdown) and `select!` polls
//! every branch each time the task wakes. During a fan-out the task wakes
//! once per delivery, for its subscription only, and polling the other
//! branches (a read attempt on the socket, the queue, the timer, the
//! shutdown flag) was about a tenth of the server's CPU per delivery (perf,
//! 1,000 subscribers). Behind a gate, a branch that returned `Pending` is
//! polled again only after the waker it registered was woken; a branch that
//! returned `Ready` is polled again at once (it may have more at hand, and
//! would not wake anyone for it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// One branch's wake-up flag and the task to wake.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// See the module documentation. One gate per branch.
pub struct Gate {
    flag: Arc<Flag>,
    /// The waker handed to the branch: sets the flag, then wakes the task.
    waker: Waker,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    /// A gate that lets the first poll through.
    pub fn new() -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gate {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Polls `branch` if it was woken since it last returned `Pending` (or
    /// has not been polled yet); else `Pending` without polling it.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        branch: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered first, so a wake between the check and the return is not lost.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = branch(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            // Whatever it has next, it would not wake us for.
            self.flag.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn a_gated_branch_is_polled_again_only_after_its_own_wake() {
        let gate = Gate::new();
        let polls = std::cell::Cell::new(0);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        let mut branch = |cx: &mut Context<'_>| {
            polls.set(polls.get() + 1);
            rx.poll_recv(cx)
        };
        // First poll goes through and finds nothing.
        let first = poll_fn(|cx| Poll::Ready(gate.poll(cx, &mut branch))).await;
        assert!(first.is_pending());
        assert_eq!(polls.get(), 1);
        // Not woken: skipped.
        let skipped = poll_fn(|cx| Poll::Ready(gate.poll(cx, &mut branch))).await;
        assert!(skipped.is_pending());
        assert_eq!(polls.get(), 1);
        // A send wakes the branch's waker: polled, and ready.
        tx.send(7).await.unwrap();
        tx.send(8).await.unwrap();
        let got = poll_fn(|cx| Poll::Ready(gate.poll(cx, &mut branch))).await;
        assert_eq!(got, Poll::Ready(Some(7)));
        // After Ready it is polled again without a wake, and has the next one.
        let next = poll_fn(|cx| Poll::Ready(gate.poll(cx, &mut branch))).await;
        assert_eq!(next, Poll::Ready(Some(8)));
        assert_eq!(polls.get(), 3);
    }

    #[tokio::test]
    async fn a_task_waiting_on_a_gated_branch_is_woken_by_it() {
        let gate = Gate::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let waiter =
            tokio::spawn(async move { poll_fn(|cx| gate.poll(cx, |cx| rx.poll_recv(cx))).await });
        tokio::task::yield_now().await;
        tx.send(3).await.unwrap();
        assert_eq!(waiter.await.unwrap(), Some(3));
    }
}
