//! A subscriber's event stream: backlog from the log, then live events, with no gap and no duplicate.
//!
//! The stream subscribes to the broadcast first, then reads the backlog, then
//! drops anything already sent (by seq). A subscriber that lags behind the
//! broadcast buffer catches up from the in-memory tail or the store; one that
//! asks for events older than what is retained gets `ResyncRequired` and
//! continues with live events.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::Utc;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::gate::Gate;

use super::event::{Batch, EventKind, SessionEvent};
use super::live::Session;

/// Events fetched from the store per page while catching up.
const PAGE: usize = 1000;

/// Sends ClientLeft when the stream is dropped (unsubscribe, socket close, dead connection).
struct Presence {
    session: Arc<Session>,
    client_id: Option<String>,
    /// Dropped after the leave is queued: a shutdown waits for it.
    _stream: TaskTrackerToken,
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(id) = self.client_id.take() {
            self.session.leave(id);
        }
    }
}

enum CatchUp {
    Events(Vec<Arc<SessionEvent>>),
    Resync(String),
}

/// Pages of events read back from the store, newest last, shared by every
/// subscriber of the session that is catching up.
///
/// Subscribers that fall behind together (a burst of writes) read the same
/// range. Each reading and parsing it, and then rendering its own copies
/// (renderings are memoised per event object), made catching up cost a full
/// GraphQL execution per event and subscriber: enough, at 100 subscribers and
/// 128 writers, to keep them behind for good (talus-bench throughput,
/// BENCHMARKS.md). One reader at a time fills the cache; the others wait and
/// find the page there.
#[derive(Default)]
pub(super) struct StorePages(tokio::sync::Mutex<VecDeque<Page>>);

type Page = Arc<[Arc<SessionEvent>]>;

/// Pages kept per session (of `PAGE` events each).
const PAGES_KEPT: usize = 2;

/// The events after `last` in a page that holds `last + 1`.
fn from_pages(pages: &VecDeque<Page>, last: u64) -> Option<Vec<Arc<SessionEvent>>> {
    pages.iter().find_map(|page| {
        let start = page.binary_search_by_key(&(last + 1), |e| e.seq).ok()?;
        Some(page[start..].to_vec())
    })
}

/// Up to a page of committed events after `last`, from memory or the store.
async fn catch_up(session: &Session, last: u64) -> CatchUp {
    if let Some(events) = session.recent_after(last) {
        return CatchUp::Events(events);
    }
    let mut pages = session.pages.0.lock().await;
    if let Some(events) = from_pages(&pages, last) {
        return CatchUp::Events(events);
    }
    match session.store.events(session.id, last, PAGE).await {
        // The log keeps a contiguous tail, so the page starts at the oldest event kept.
        Ok(stored) if stored.first().is_some_and(|s| s.seq > last + 1) => CatchUp::Resync(format!(
            "events after seq {last} are no longer retained (the oldest kept is {})",
            stored[0].seq
        )),
        Ok(stored) => {
            let mut out = Vec::with_capacity(stored.len());
            for s in stored {
                match SessionEvent::from_json(&s.json) {
                    Ok(e) => out.push(Arc::new(e)),
                    Err(e) => {
                        return CatchUp::Resync(format!(
                            "event {} could not be read back: {e}",
                            s.seq
                        ))
                    }
                }
            }
            if !out.is_empty() {
                if pages.len() >= PAGES_KEPT {
                    pages.pop_front();
                }
                pages.push_back(Page::from(out.as_slice()));
            }
            CatchUp::Events(out)
        }
        Err(e) => CatchUp::Resync(format!("the event log could not be read: {}", e.message())),
    }
}

fn resync(session: &Session, reason: String) -> Arc<SessionEvent> {
    metrics::counter!(crate::metrics::names::RESYNCS).increment(1);
    let seq = session.read().last_seq;
    Arc::new(SessionEvent::new(
        seq,
        session.id,
        Utc::now(),
        None,
        None,
        EventKind::ResyncRequired { reason },
    ))
}

/// The session's events after `since` (or from now on), ending when the session closes or `stop` fires.
pub(super) fn stream(
    session: Arc<Session>,
    since: Option<u64>,
    client_id: Option<String>,
    mut rx: tokio::sync::broadcast::Receiver<Batch>,
    start: u64,
    mut stop: watch::Receiver<bool>,
    token: TaskTrackerToken,
) -> impl Stream<Item = Arc<SessionEvent>> {
    let presence = Presence {
        session: session.clone(),
        client_id,
        _stream: token,
    };
    async_stream::stream! {
        let _presence = presence;
        // One waiter each for the stream's whole life, rather than one per event.
        let closed = session.wait_closed();
        tokio::pin!(closed);
        let stopped = async move {
            let _ = stop.wait_for(|c| *c).await;
        };
        tokio::pin!(stopped);
        // Both are polled only once one of them woke: the stream wakes for the broadcast.
        let ending = Gate::new();
        // The newest seq this subscriber has (been told to skip to).
        let mut last = since.unwrap_or(start);
        // Catch up to what is committed before going live.
        let mut behind = since.is_some();
        loop {
            if behind {
                let target = session.read().last_seq;
                while last < target {
                    match catch_up(&session, last).await {
                        CatchUp::Events(events) if events.is_empty() => {
                            // Behind, yet the log has nothing after `last`:
                            // the events are gone, and silence would be a gap.
                            let event = resync(
                                &session,
                                format!("events after seq {last} are no longer in the log"),
                            );
                            last = event.seq;
                            yield event;
                            break;
                        }
                        CatchUp::Events(events) => {
                            for e in events {
                                if e.seq == last + 1 {
                                    last = e.seq;
                                    yield e;
                                }
                            }
                        }
                        CatchUp::Resync(reason) => {
                            let event = resync(&session, reason);
                            last = event.seq;
                            yield event;
                            break;
                        }
                    }
                }
                behind = false;
            }
            let received = tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| ending.poll(cx, |cx| {
                    if std::future::Future::poll(closed.as_mut(), cx).is_ready()
                        || std::future::Future::poll(stopped.as_mut(), cx).is_ready()
                    {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })) => break,
                r = rx.recv() => r,
            };
            match received {
                Ok(batch) => {
                    for e in batch.iter() {
                        if e.seq <= last {
                            continue;
                        }
                        if e.seq != last + 1 {
                            // A gap (missed while catching up): read the log.
                            behind = true;
                            break;
                        }
                        last = e.seq;
                        yield e.clone();
                    }
                }
                // Lagged: read the log.
                Err(RecvError::Lagged(_)) => {
                    metrics::counter!(crate::metrics::names::SUBSCRIBER_CATCH_UPS).increment(1);
                    behind = true;
                }
                Err(RecvError::Closed) => break,
            }
        }
    }
}
