//! Domain errors: a stable machine code (the contract's `extensions.code`) plus a message a person can act on.

use serde::{Deserialize, Serialize};

/// The error codes of the public contract (`extensions.code`), shared by every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadUserInput,
    SessionNotFound,
    NoProject,
    ProjectNotFound,
    TemplateNotFound,
    NodeNotFound,
    NodeTypeNotFound,
    DuplicateId,
    ChildNotAllowed,
    Cycle,
    AlreadyHasParent,
    NotAChild,
    IndexOutOfRange,
    UnknownProperty,
    InvalidPropertyValue,
    NothingToUndo,
    NothingToRedo,
    VersionConflict,
    StoreUnavailable,
    LimitExceeded,
    Unauthenticated,
    Forbidden,
    Internal,
}

impl ErrorCode {
    /// The code exactly as the contract spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorCode::NoProject => "NO_PROJECT",
            ErrorCode::ProjectNotFound => "PROJECT_NOT_FOUND",
            ErrorCode::TemplateNotFound => "TEMPLATE_NOT_FOUND",
            ErrorCode::NodeNotFound => "NODE_NOT_FOUND",
            ErrorCode::NodeTypeNotFound => "NODE_TYPE_NOT_FOUND",
            ErrorCode::DuplicateId => "DUPLICATE_ID",
            ErrorCode::ChildNotAllowed => "CHILD_NOT_ALLOWED",
            ErrorCode::Cycle => "CYCLE",
            ErrorCode::AlreadyHasParent => "ALREADY_HAS_PARENT",
            ErrorCode::NotAChild => "NOT_A_CHILD",
            ErrorCode::IndexOutOfRange => "INDEX_OUT_OF_RANGE",
            ErrorCode::UnknownProperty => "UNKNOWN_PROPERTY",
            ErrorCode::InvalidPropertyValue => "INVALID_PROPERTY_VALUE",
            ErrorCode::NothingToUndo => "NOTHING_TO_UNDO",
            ErrorCode::NothingToRedo => "NOTHING_TO_REDO",
            ErrorCode::VersionConflict => "VERSION_CONFLICT",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected command or input: what went wrong, in a form both machines and people can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct DomainError {
    pub code: ErrorCode,
    pub message: String,
}

impl DomainError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DomainError {
            code,
            message: message.into(),
        }
    }
}

/// Shorthand constructor: `err(ErrorCode::Cycle, format!(..))`.
pub fn err(code: ErrorCode, message: impl Into<String>) -> DomainError {
    DomainError::new(code, message)
}
