//! The one place where domain and session errors become GraphQL errors with `extensions.code`.

use async_graphql::{Error, ErrorExtensions, ID};
use uuid::Uuid;

use crate::domain::error::err;
use crate::domain::{DomainError, ErrorCode};

/// A GraphQL error carrying the contract's code.
pub fn gql(e: DomainError) -> Error {
    if e.code == ErrorCode::Internal {
        tracing::error!(message = %e.message, "internal error");
    }
    Error::new(e.message).extend_with(|_, ext| ext.set("code", e.code.as_str()))
}

/// A GraphQL error from a code and message.
pub fn code(code: ErrorCode, message: impl Into<String>) -> Error {
    gql(err(code, message))
}

pub type Result<T> = std::result::Result<T, Error>;

/// Extension for `Result<T, DomainError>`.
pub trait OrGql<T> {
    fn gql(self) -> Result<T>;
}

impl<T> OrGql<T> for std::result::Result<T, DomainError> {
    fn gql(self) -> Result<T> {
        self.map_err(gql)
    }
}

/// Parses an `ID` argument as a UUID, or BAD_USER_INPUT naming the argument.
pub fn uuid(id: &ID, what: &str) -> Result<Uuid> {
    Uuid::parse_str(id.as_str()).map_err(|_| {
        code(
            ErrorCode::BadUserInput,
            format!(
                "{what} must be a UUID like 292b9e11-45c7-94f4-20db-7f6085266a4f, got \"{}\"",
                id.as_str()
            ),
        )
    })
}

/// A non-negative index argument, or INDEX_OUT_OF_RANGE.
pub fn index(i: i32) -> Result<usize> {
    usize::try_from(i).map_err(|_| {
        code(
            ErrorCode::IndexOutOfRange,
            format!("index {i} is out of range: it must be 0 or more"),
        )
    })
}

/// A non-negative count argument (versions, seqs), or BAD_USER_INPUT.
pub fn count(i: i32, what: &str) -> Result<u64> {
    u64::try_from(i).map_err(|_| {
        code(
            ErrorCode::BadUserInput,
            format!("{what} must be 0 or more, got {i}"),
        )
    })
}

/// A count, seq or version as the API's `Int`, or INTERNAL if it does not fit:
/// a number past 2^31 is never wrapped into a wrong (negative) one.
pub fn int<T>(value: T) -> Result<i32>
where
    T: TryInto<i32> + Copy + std::fmt::Display,
{
    value.try_into().map_err(|_| {
        code(
            ErrorCode::Internal,
            format!("{value} does not fit in a GraphQL Int; the server cannot report it"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_past_the_graphql_int_range_is_internal_not_wrapped() {
        assert_eq!(int(5u64).unwrap(), 5);
        assert_eq!(int(i32::MAX as u64).unwrap(), i32::MAX);
        let error = int(1u64 << 31).unwrap_err();
        assert_eq!(
            error.extensions.as_ref().and_then(|e| e.get("code")),
            Some(&async_graphql::Value::from("INTERNAL"))
        );
        assert!(int(usize::MAX).is_err());
    }
}
