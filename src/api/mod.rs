//! The GraphQL API: the only layer that knows GraphQL.
//!
//! Layout: `schema.rs` (Query, Mutation, Subscription roots and `build`),
//! `types.rs` (view types), `events.rs` (the SessionEvent interface),
//! `inputs.rs` (command inputs), `error.rs` (errors with `extensions.code`),
//! `extension.rs` (codes for engine errors, request logging), `expensive.rs` (the
//! expensive-request limiter), `guard.rs` (no
//! mutations over GET, persisted-query admission, `__schema.description`), `scalars.rs`,
//! `contract.rs` (checks the SDL against a contract file).

pub mod access;
pub mod contract;
pub mod error;
pub mod events;
pub mod expensive;
pub mod extension;
pub mod guard;
pub mod inputs;
pub mod metrics;
pub mod scalars;
pub mod schema;
pub mod shape;
pub mod types;

pub use access::{AccessPolicy, Caller, RateLimit};
pub use schema::{build, build_with_access, ApiLimits, AppSchema};

use std::sync::atomic::AtomicUsize;

/// The client behind an HTTP request (`x-client-id` header).
#[derive(Debug, Clone)]
pub struct HttpClient(pub String);

/// The client behind a websocket connection, from its `connection_init` payload or generated.
/// Each operation of the connection carries a clone (sharing the subscription count).
#[derive(Debug, Clone)]
pub struct ConnClient {
    pub id: String,
    pub name: Option<String>,
    pub connected_at: chrono::DateTime<chrono::Utc>,
    /// Open subscriptions on this connection, for the per-connection limit.
    pub subscriptions: std::sync::Arc<AtomicUsize>,
}

/// Request data that turns `sessionEvents` into a one-event stream of `event`:
/// the websocket transport renders each event once per selection this way and
/// shares the result among subscribers. `probe` receives the parsed
/// (session id, since) arguments.
pub struct RenderOne {
    pub event: std::sync::Arc<crate::session::SessionEvent>,
    pub probe: Option<Probe>,
}

/// Where a render learns the (session id, since) arguments of the subscription.
pub type Probe = std::sync::Arc<parking_lot::Mutex<Option<(uuid::Uuid, Option<u64>)>>>;

/// Request data of a stream that resumes: `sessionEvents` starts after this
/// seq (an `EventSource`'s `Last-Event-ID`), whatever its `since` says.
#[derive(Debug, Clone, Copy)]
pub struct ResumeFrom(pub u64);

/// Request data through which `sessionEvents` tells a streaming transport the
/// seq of each event it yields (the SSE `id:` field).
#[derive(Debug, Clone)]
pub struct SeqProbe(pub std::sync::Arc<std::sync::atomic::AtomicU64>);
