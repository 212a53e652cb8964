//! The pure core: templates, property values, the graph, commands and undo.
//!
//! Nothing here knows about GraphQL, HTTP, tokio or SQLite; everything is
//! synchronous and deterministic given its inputs.
pub mod error;

pub use error::{DomainError, ErrorCode};
pub mod template;
