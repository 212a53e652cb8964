//! Presence: who is in a session, and the coalescing of joins and leaves
//! into one event per `--presence-interval-ms` (`PresenceWindow`).

use super::*;

/// Presence coalescing (`SessionConfig::presence_interval`): the first change
/// after a quiet interval is sent at once as ClientJoined/ClientLeft and opens
/// a window; changes within the window are folded here and sent as one event
/// when it ends (a timer queues `Work::PresenceFlush`). A join storm of N
/// clients therefore costs about one event per interval, not N events each
/// delivered to up to N subscribers.
#[derive(Default)]
pub(super) struct PresenceWindow {
    /// Changes before this instant are folded; `None` or past: quiet.
    until: Option<tokio::time::Instant>,
    /// The first `presence_list_limit` clients that joined / left in the window, in order.
    joined: Vec<ClientInfo>,
    left: Vec<ClientInfo>,
    /// Exact counts of the folded changes.
    joined_count: u32,
    left_count: u32,
    /// A flush is on its way (a timer task exists).
    scheduled: bool,
}

impl PresenceWindow {
    fn folded(&self) -> bool {
        self.joined_count > 0 || self.left_count > 0
    }
}
/// A client became present (`joined`) or absent: its own event now if the
/// session's presence is quiet, else folded into the window.
pub(super) fn presence_change(
    state: &mut State,
    group: &mut Group<'_>,
    client: ClientInfo,
    joined: bool,
) {
    let session = group.session;
    let config = &session.config;
    let held = session.presence_held.load(Ordering::SeqCst);
    let now = tokio::time::Instant::now();
    let window = &mut state.presence;
    let quiet = !held && !window.folded() && window.until.is_none_or(|until| now >= until);
    if quiet || (!held && config.presence_interval.is_zero()) {
        window.until = now.checked_add(config.presence_interval);
        let active = u32::try_from(group.clients.active(state)).unwrap_or(u32::MAX);
        presence_event(group, client, joined, active);
        return;
    }
    let (list, count) = if joined {
        (&mut window.joined, &mut window.joined_count)
    } else {
        (&mut window.left, &mut window.left_count)
    };
    *count = count.saturating_add(1);
    if list.len() < config.presence_list_limit {
        list.push(client);
    }
}

/// A ClientJoined or ClientLeft, named for the client.
pub(super) fn presence_event(
    group: &mut Group<'_>,
    client: ClientInfo,
    joined: bool,
    active_clients: u32,
) {
    let by = Actor {
        client_id: Some(client.id.clone()),
        user_id: client.user_id.clone(),
    };
    let kind = if joined {
        EventKind::ClientJoined {
            client,
            active_clients,
        }
    } else {
        EventKind::ClientLeft {
            client,
            active_clients,
        }
    };
    group.event(None, &by, kind);
}

/// The window's end: the folded changes as one event (a single one as its
/// own ClientJoined/ClientLeft); the next window starts now, so changes keep
/// being folded until an interval passes without any.
pub(super) fn send_folded(state: &mut State, group: &mut Group<'_>) {
    state.presence.scheduled = false;
    if !state.presence.folded() {
        return;
    }
    let window = std::mem::take(&mut state.presence);
    state.presence.until =
        tokio::time::Instant::now().checked_add(group.session.config.presence_interval);
    let active = u32::try_from(group.clients.active(state)).unwrap_or(u32::MAX);
    let PresenceWindow {
        mut joined,
        mut left,
        joined_count,
        left_count,
        ..
    } = window;
    match (joined_count, left_count) {
        (1, 0) if joined.len() == 1 => presence_event(group, joined.remove(0), true, active),
        (0, 1) if left.len() == 1 => presence_event(group, left.remove(0), false, active),
        _ => {
            group.event(
                None,
                &Actor::default(),
                EventKind::PresenceChanged {
                    joined,
                    left,
                    joined_count,
                    left_count,
                    active_clients: active,
                },
            );
        }
    }
}

/// Starts the timer that ends the presence window, if changes were folded
/// and none is running (a held session is flushed by the shutdown instead).
pub(super) fn schedule_presence_flush(session: &Arc<Session>, state: &mut State) {
    let window = &mut state.presence;
    if !window.folded() || window.scheduled || session.presence_held.load(Ordering::SeqCst) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    window.scheduled = true;
    let at = window.until.unwrap_or_else(tokio::time::Instant::now);
    #[cfg(any(test, feature = "test-support"))]
    let gate = session.config.presence_gate.clone();
    #[cfg(not(any(test, feature = "test-support")))]
    let gate: Option<Arc<tokio::sync::Semaphore>> = None;
    let session = session.clone();
    runtime.spawn(async move {
        match gate {
            Some(gate) => {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            None => tokio::time::sleep_until(at).await,
        }
        session.flush_presence();
    });
}
