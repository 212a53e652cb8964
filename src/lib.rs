//! Talus Tally: a real-time, template-driven project graph server.
pub mod domain;
pub mod playground;
pub mod store;
pub mod templates;
pub mod session;
