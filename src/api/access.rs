//! Who may do what: the caller a transport authenticated, roles on projects, and the per-user command rate.
//!
//! Transports verify tokens (`crate::auth`) and put the `Caller` into each
//! request; resolvers ask here before they touch a session or project. To a
//! caller who is not a member, a project or session looks as if it did not
//! exist (so ids do not leak); a member whose role is too low gets FORBIDDEN
//! naming the role needed. With authentication off everyone may do
//! everything, as before authentication existed.

use std::num::NonZeroU32;
use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions as _, ID};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use super::error::{code, uuid, OrGql, Result};
use super::types::hub;
use super::{ConnClient, HttpClient};
use crate::auth::User;
use crate::domain::{ErrorCode, Role};
use crate::session::{Actor, Session};
use crate::store::ProjectRecord;

/// Users tracked by the rate limiter before idle ones are forgotten.
const RATE_USERS_KEPT: usize = 10_000;

/// Request data set by the transport: the authenticated user behind the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<User>);

/// How the schema treats callers; one per server (schema data).
#[derive(Default)]
pub struct AccessPolicy {
    /// Authentication is on: every non-public field needs a `Caller`.
    pub auth: bool,
    /// Commands per second per user, with a burst; `None` is no limit.
    pub rate: Option<RateLimit>,
}

/// The per-user command rate (`--rate-limit`, `--rate-burst`), GCRA from `governor`.
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    per_second: u32,
}

impl RateLimit {
    /// `per_second` commands a second with bursts of `burst`; `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<RateLimit> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(1))?;
        Some(RateLimit {
            limiter: governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            per_second,
        })
    }

    /// Takes one command from `user`'s allowance, or LIMIT_EXCEEDED saying how long to wait.
    fn take(&self, user: &str) -> Result<()> {
        if self.limiter.len() > RATE_USERS_KEPT {
            // Users whose allowance is full again are the same as new ones.
            self.limiter.retain_recent();
        }
        let key = user.to_string();
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            code(
                ErrorCode::LimitExceeded,
                format!(
                    "too many commands: the limit rate-limit is {} a second per user; retry in {} ms",
                    self.per_second,
                    wait.as_millis().max(1)
                ),
            )
            .extend_with(|_, e| e.set("retryAfterMs", wait.as_millis().max(1) as u64))
        })
    }
}

/// Who is asking: anyone (authentication off) or an authenticated user.
pub enum Who<'a> {
    Anyone,
    User(&'a User),
}

impl Who<'_> {
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Who::Anyone => None,
            Who::User(u) => Some(&u.id),
        }
    }
}

fn policy<'a>(ctx: &Context<'a>) -> Option<&'a AccessPolicy> {
    ctx.data_opt::<AccessPolicy>()
}

/// The caller, or UNAUTHENTICATED when authentication is on and the request carries no valid token.
pub fn who<'a>(ctx: &Context<'a>) -> Result<Who<'a>> {
    if let Some(caller) = ctx.data_opt::<Caller>() {
        return Ok(Who::User(&caller.0));
    }
    if policy(ctx).is_some_and(|p| p.auth) {
        return Err(code(
            ErrorCode::Unauthenticated,
            "authentication is required: send Authorization: Bearer <token> (on websockets, in connection_init's payload)",
        ));
    }
    Ok(Who::Anyone)
}

/// The authenticated caller when authentication is on, else `None`; errors as `who`.
pub fn user<'a>(ctx: &Context<'a>) -> Result<Option<&'a User>> {
    Ok(match who(ctx)? {
        Who::Anyone => None,
        Who::User(u) => Some(u),
    })
}

/// Who causes a change: the websocket connection's client (else the HTTP
/// `x-client-id`) and the authenticated user, never taken from the payload.
pub fn actor(ctx: &Context<'_>) -> Result<Actor> {
    let client_id = match ctx.data_opt::<ConnClient>() {
        Some(c) => Some(c.id.clone()),
        None => ctx.data_opt::<HttpClient>().map(|c| c.0.clone()),
    };
    Ok(Actor {
        client_id,
        user_id: user(ctx)?.map(|u| u.id.clone()),
    })
}

fn forbidden(needed: Role, had: Role, what: &str) -> async_graphql::Error {
    code(
        ErrorCode::Forbidden,
        format!("{what} needs the role {needed} (or higher); you are {had}"),
    )
}

/// Refuses `had` if it is below `needed`.
fn check(needed: Role, had: Role, what: &str) -> Result<()> {
    if had.allows(needed) {
        Ok(())
    } else {
        Err(forbidden(needed, had, what))
    }
}

/// Whether the caller may see the session at all (any role).
pub fn can_see_session(ctx: &Context<'_>, session: &Session) -> bool {
    match who(ctx) {
        Ok(Who::Anyone) => true,
        Ok(Who::User(u)) => hub(ctx).session_role(session, &u.id).is_some(),
        Err(_) => false,
    }
}

/// The session, if the caller may do what needs `needed` in it: SESSION_NOT_FOUND
/// to a non-member, FORBIDDEN to a member below `needed`. Counts as activity.
pub async fn session(ctx: &Context<'_>, id: &ID, needed: Role) -> Result<Arc<Session>> {
    who(ctx)?;
    session_by_id(ctx, uuid(id, "sessionId")?, needed).await
}

/// `session` for an id already parsed. In a shared store a session that is
/// not live on this instance is loaded (and its lease taken) first.
pub async fn session_by_id(ctx: &Context<'_>, id: Uuid, needed: Role) -> Result<Arc<Session>> {
    let who = who(ctx)?;
    let hub = hub(ctx);
    let Who::User(user) = who else {
        return hub.session(id).await.gql();
    };
    let not_found = || {
        code(
            ErrorCode::SessionNotFound,
            format!("there is no session {id}; it may have been closed"),
        )
    };
    let s = match hub.session(id).await {
        Ok(s) => s,
        Err(e) if e.code == ErrorCode::SessionNotFound => return Err(not_found()),
        Err(e) => return Err(e).gql(),
    };
    let role = hub.session_role(&s, &user.id).ok_or_else(not_found)?;
    check(needed, role, "this")?;
    s.touch();
    Ok(s)
}

/// The caller's role on a project (None with authentication off).
pub fn project_role(ctx: &Context<'_>, project_id: Uuid) -> Option<Role> {
    match who(ctx) {
        Ok(Who::User(u)) => hub(ctx).role(project_id, &u.id),
        _ => None,
    }
}

/// Whether the caller may see the project (any role, or authentication off).
pub fn can_see_project(ctx: &Context<'_>, project_id: Uuid) -> bool {
    match who(ctx) {
        Ok(Who::Anyone) => true,
        Ok(Who::User(u)) => hub(ctx).role(project_id, &u.id).is_some(),
        Err(_) => false,
    }
}

/// The stored project, if the caller may do what needs `needed` with it:
/// PROJECT_NOT_FOUND to a non-member, FORBIDDEN to a member below `needed`.
pub fn project(ctx: &Context<'_>, id: Uuid, needed: Role, what: &str) -> Result<ProjectRecord> {
    let who = who(ctx)?;
    let hub = hub(ctx);
    let not_found = || {
        code(
            ErrorCode::ProjectNotFound,
            format!("there is no project {id}"),
        )
    };
    let record = hub.project(id).ok_or_else(not_found)?;
    if let Who::User(user) = who {
        let role = hub.role(id, &user.id).ok_or_else(not_found)?;
        check(needed, role, what)?;
    }
    Ok(record)
}

/// Takes one command from the caller's rate allowance (anonymous callers share one).
pub fn rate(ctx: &Context<'_>) -> Result<()> {
    let Some(rate) = policy(ctx).and_then(|p| p.rate.as_ref()) else {
        return Ok(());
    };
    let who = who(ctx)?;
    rate.take(who.user_id().unwrap_or(""))
}

/// The error that ends a subscription whose user lost access to the project.
pub fn revoked() -> async_graphql::Error {
    code(
        ErrorCode::Forbidden,
        "your access to this session's project was revoked (or the project was deleted); reading it needs the role VIEWER (or higher)",
    )
}
