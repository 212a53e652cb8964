//! Many subscribers at once: connect them with bounded concurrency, run a handler per event, stop and collect.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::stats::Samples;
use crate::ws::{self, Event};

/// What a subscriber does with each event; `finish` hands back what it gathered.
pub trait Handler: Send + 'static {
    type Out: Send + 'static;
    fn on_event(&mut self, event: &Event, received: Instant);
    fn finish(self) -> Self::Out;
}

/// A handler that only drains (the subscriber still checks seq continuity).
pub struct Drain;

impl Handler for Drain {
    type Out = ();
    fn on_event(&mut self, _: &Event, _: Instant) {}
    fn finish(self) {}
}

/// How one subscriber ended.
pub struct Outcome<T> {
    pub received: u64,
    pub seq_errors: u64,
    pub resyncs: u64,
    /// Set when the subscriber failed or the server ended its stream before the stop.
    pub error: Option<String>,
    pub out: T,
}

/// Subscribers, each in its own task on its own websocket.
pub struct Fleet<T> {
    /// Newest seq each subscriber has seen.
    pub last_seq: Arc<Vec<AtomicU64>>,
    /// The index of each subscriber's session in the list given to `connect`.
    pub session_of: Vec<usize>,
    /// Per subscriber: connect + handshake + subscribe until its own ClientJoined arrived.
    pub connect: Samples,
    /// Time until every subscriber was ready (or failed).
    pub connect_total: Duration,
    pub connect_errors: Vec<String>,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<Outcome<T>>>,
}

/// Connects one subscriber per `(session index, handler)`, at most `concurrency` handshakes at a time.
pub async fn connect<H: Handler>(
    addr: SocketAddr,
    sessions: &[String],
    subscribers: Vec<(usize, H)>,
    extra_fields: &str,
    concurrency: usize,
    tag: &str,
) -> anyhow::Result<Fleet<H::Out>> {
    let k = subscribers.len();
    let last_seq: Arc<Vec<AtomicU64>> = Arc::new((0..k).map(|_| AtomicU64::new(0)).collect());
    let (stop, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(k);
    let mut session_of = Vec::with_capacity(k);
    let fields: Arc<str> = Arc::from(extra_fields);
    for (i, (si, mut handler)) in subscribers.into_iter().enumerate() {
        session_of.push(si);
        let session = sessions[si].clone();
        let sem = sem.clone();
        let ready = ready_tx.clone();
        let mut stop = stop_rx.clone();
        let last = last_seq.clone();
        let fields = fields.clone();
        let client_id = format!("{tag}-{i}");
        handles.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.expect("never closed");
            let t = Instant::now();
            // The permit covers the handshake (connect, upgrade, init,
            // subscribe sent); waiting for the join announcement is not one.
            let sub = tokio::time::timeout(Duration::from_secs(120), async {
                let opened = ws::open(addr, &session, client_id, &fields, None).await;
                drop(permit);
                let mut sub = opened?;
                sub.wait_joined().await?;
                anyhow::Ok(sub)
            })
            .await;
            let mut sub = match sub {
                Ok(Ok(sub)) => {
                    let _ = ready.send(Ok(t.elapsed()));
                    sub
                }
                Ok(Err(e)) => return failed(format!("{e:#}"), i, &last, &ready, handler),
                Err(_) => return failed("connect timed out".into(), i, &last, &ready, handler),
            };
            last[i].store(sub.last_seq, Ordering::Release);
            let mut error = None;
            // One stop future for the whole loop: no re-registration per event.
            let stopped = stop.wait_for(|s| *s);
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    e = sub.next() => match e {
                        Ok(Some(event)) => {
                            let now = Instant::now();
                            handler.on_event(&event, now);
                            last[i].store(event.seq, Ordering::Release);
                        }
                        Ok(None) => { error = Some("the server ended the subscription".to_string()); break; }
                        Err(e) => { error = Some(format!("{e:#}")); break; }
                    }
                }
            }
            if error.is_some() {
                // Nobody should wait for a subscriber that is gone; the error is reported.
                last[i].store(u64::MAX, Ordering::Release);
            }
            let outcome = Outcome {
                received: sub.received,
                seq_errors: sub.seq_errors,
                resyncs: sub.resyncs,
                error,
                out: handler.finish(),
            };
            sub.close().await;
            outcome
        }));
    }
    drop(ready_tx);
    let mut connect = Samples::with_capacity(k);
    let mut connect_errors = Vec::new();
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(d) => connect.push(d.as_micros() as u64),
            Err(e) => connect_errors.push(e),
        }
        if connect.len() + connect_errors.len() == k {
            break;
        }
    }
    Ok(Fleet {
        last_seq,
        session_of,
        connect,
        connect_total: started.elapsed(),
        connect_errors,
        stop,
        handles,
    })
}

/// How a subscriber that never got ready ends: reported, and never waited for.
fn failed<H: Handler>(
    error: String,
    i: usize,
    last: &[AtomicU64],
    ready: &mpsc::UnboundedSender<Result<Duration, String>>,
    handler: H,
) -> Outcome<H::Out> {
    last[i].store(u64::MAX, Ordering::Release);
    let _ = ready.send(Err(error.clone()));
    Outcome {
        received: 0,
        seq_errors: 0,
        resyncs: 0,
        error: Some(error),
        out: handler.finish(),
    }
}

impl<T> Fleet<T> {
    /// Waits until every subscriber of session `i` has seen `targets[i]`; returns how long it took.
    pub async fn wait_caught_up(
        &self,
        targets: &[u64],
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let t = Instant::now();
        loop {
            let behind = self
                .session_of
                .iter()
                .enumerate()
                .filter(|(i, s)| self.last_seq[*i].load(Ordering::Acquire) < targets[**s])
                .count();
            if behind == 0 {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                bail!("{behind} subscribers had not caught up after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every subscriber (closing its websocket) and returns how each ended.
    pub async fn stop(self) -> Vec<Outcome<T>> {
        self.stop.send_replace(true);
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(o) = h.await {
                out.push(o);
            }
        }
        out
    }
}

/// Totals over subscribers: (received, seq errors, resyncs, failed or ended early).
pub fn totals<T>(outcomes: &[Outcome<T>]) -> (u64, u64, u64, u64) {
    let mut t = (0, 0, 0, 0);
    for o in outcomes {
        t.0 += o.received;
        t.1 += o.seq_errors;
        t.2 += o.resyncs;
        t.3 += o.error.is_some() as u64;
    }
    t
}
