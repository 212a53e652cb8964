//! Talus Tally: a real-time, template-driven project graph server.
pub mod domain;
