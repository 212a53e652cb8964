//! Talus Tally: a real-time, template-driven project graph server.
pub mod domain;
pub mod playground;
pub mod store;
pub mod templates;
pub mod session;
pub mod api;
pub mod http;
pub mod server;

/// The GraphQL schema (SDL) this server offers, as `schema.graphql` holds it.
pub fn sdl() -> String {
    use async_graphql::Schema;
    Schema::build(api::schema::Query, api::schema::Mutation, api::schema::SubscriptionRoot)
        .finish()
        .sdl()
}
