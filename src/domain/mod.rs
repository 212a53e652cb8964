//! The pure core: templates, property values, the graph, commands and undo.
//!
//! Nothing here knows about GraphQL, HTTP, tokio or SQLite; everything is
//! synchronous and deterministic given its inputs.
pub mod access;
pub mod command;
pub mod error;
pub mod graph;
pub mod history;
mod node_table;
pub mod project_file;
pub mod properties;
pub mod template;
pub mod value;

pub use access::Role;
pub use command::{Command, Ctx};
pub use error::{DomainError, ErrorCode};
pub use graph::{Delta, Graph, Key, Node, NodeData, NodeId, Properties};
pub use history::{Applied, Dispatcher, Op};
pub use template::Template;
