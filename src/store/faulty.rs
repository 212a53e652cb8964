//! Fault injection for tests: a store wrapper that runs a hook before every commit; `FaultyStore` fails commits on demand, as on a full disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    Immediate, LoadedProject, Membership, ProjectRecord, SessionRecord, Store, StoreError,
    StoredEvent, Write,
};

/// What a `HookedStore` does before each commit.
#[async_trait]
pub trait CommitHook: Send + Sync + 'static {
    /// Runs before the inner store sees `writes` (and may wait); an error fails
    /// the commit without touching the inner store.
    async fn before_commit(&self, writes: &[Write]) -> Result<(), StoreError>;

    /// Runs before the inner store's `commit_now`. `None` (the default) makes
    /// the hooked store hand every commit to `commit`, as a durable store
    /// does; `Some(Err)` refuses the commit at once.
    fn before_commit_now(&self, writes: &[Write]) -> Option<Result<(), StoreError>> {
        let _ = writes;
        None
    }
}

/// Wraps any store: commits go through the hook first, reads always pass through.
pub struct HookedStore<S, H> {
    inner: S,
    hook: H,
}

impl<S: Store, H: CommitHook> HookedStore<S, H> {
    pub fn with_hook(inner: S, hook: H) -> Self {
        HookedStore { inner, hook }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn hook(&self) -> &H {
        &self.hook
    }
}

#[async_trait]
impl<S: Store, H: CommitHook> Store for HookedStore<S, H> {
    async fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.hook.before_commit(&writes).await?;
        self.inner.commit(writes).await
    }

    fn commit_now(&self, writes: Vec<Write>) -> Immediate {
        match self.hook.before_commit_now(&writes) {
            None => Immediate::Later(writes),
            Some(Err(e)) => Immediate::Done(Err(e)),
            Some(Ok(())) => self.inner.commit_now(writes),
        }
    }

    async fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        self.inner.projects().await
    }

    async fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.sessions().await
    }

    async fn memberships(&self) -> Result<Vec<Membership>, StoreError> {
        self.inner.memberships().await
    }

    async fn load_project(&self, id: Uuid) -> Result<Option<LoadedProject>, StoreError> {
        self.inner.load_project(id).await
    }

    async fn events(
        &self,
        session_id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.events(session_id, after, limit).await
    }

    async fn event_range(&self, session_id: Uuid) -> Result<Option<(u64, u64)>, StoreError> {
        self.inner.event_range(session_id).await
    }

    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// The switch of a `FaultyStore`; clones share it, so a test keeps one
/// after handing the store to the server.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl FaultSwitch {
    /// While `true`, every commit fails and the inner store is not touched.
    pub fn fail_writes(&self, fail: bool) {
        self.0.store(fail, Ordering::SeqCst);
    }

    pub fn failing(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl CommitHook for FaultSwitch {
    async fn before_commit(&self, _: &[Write]) -> Result<(), StoreError> {
        if self.failing() {
            return Err(StoreError::Full("injected: disk full".into()));
        }
        Ok(())
    }
}

/// Commits fail with `StoreError::Full` ("injected: disk full") while the switch is on.
pub type FaultyStore<S> = HookedStore<S, FaultSwitch>;

impl<S: Store> HookedStore<S, FaultSwitch> {
    /// The wrapper and the switch that controls it (initially off).
    pub fn new(inner: S) -> (Self, FaultSwitch) {
        let switch = FaultSwitch::default();
        (Self::with_hook(inner, switch.clone()), switch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn event(session_id: Uuid, seq: u64) -> Write {
        Write::AppendEvents {
            session_id,
            events: vec![StoredEvent {
                seq,
                json: "{}".into(),
            }],
        }
    }

    #[tokio::test]
    async fn commits_fail_while_the_switch_is_on_and_leave_the_inner_store_alone() {
        let (store, switch) = FaultyStore::new(MemoryStore::new());
        let session = Uuid::new_v4();
        store.commit(vec![event(session, 1)]).await.unwrap();

        switch.fail_writes(true);
        let error = store.commit(vec![event(session, 2)]).await.unwrap_err();
        assert_eq!(error.to_string(), "store full: injected: disk full");
        assert_eq!(store.event_range(session).await.unwrap(), Some((1, 1)));

        switch.fail_writes(false);
        store.commit(vec![event(session, 2)]).await.unwrap();
        assert_eq!(store.event_range(session).await.unwrap(), Some((1, 2)));
    }
}
