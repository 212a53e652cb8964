//! Talus Tally: a real-time, template-driven project graph server.
pub mod api;
pub mod auth;
pub mod conn_limit;
pub mod domain;
pub mod gate;
pub mod http;
pub mod metrics;
pub mod origin;
pub mod playground;
pub mod server;
pub mod session;
pub mod sse;
pub mod store;
pub mod templates;
pub mod ws;

/// The GraphQL schema (SDL) this server offers, as `schema.graphql` holds it.
pub fn sdl() -> String {
    use async_graphql::Schema;
    Schema::build(
        api::schema::Query,
        api::schema::Mutation,
        api::schema::SubscriptionRoot,
    )
    .finish()
    .sdl()
}
