//! An async-graphql extension: gives engine errors (parse, validation, limits) a contract code and logs each operation.

use std::sync::Arc;
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextRequest,
    NextSubscribe, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Value, Variables};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

/// Adds codes to errors that carry none and logs one line per operation.
pub struct Codes;

impl ExtensionFactory for Codes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(CodesExtension)
    }
}

struct CodesExtension;

fn with_code(mut e: ServerError, code: &str) -> ServerError {
    let has = e
        .extensions
        .as_ref()
        .is_some_and(|x| x.get("code").is_some());
    if !has {
        e.extensions
            .get_or_insert_with(Default::default)
            .set("code", Value::String(code.to_string()));
    }
    e
}

/// The messages async-graphql uses when a configured limit is hit (depth,
/// complexity, parser recursion, directives per field, recursion depth).
/// They are matched as phrases: a validation error that merely mentions an
/// argument named `limit` is still a BAD_USER_INPUT.
const LIMIT_MESSAGES: [&str; 4] = [
    "query is nested too deep",
    "query is too complex",
    "recursion limit exceeded",
    "cannot be greater than",
];

/// The code for an error the engine produced before any resolver ran.
fn engine_code(e: &ServerError) -> &'static str {
    let m = e.message.to_lowercase();
    if LIMIT_MESSAGES.iter().any(|l| m.contains(l)) {
        "LIMIT_EXCEEDED"
    } else {
        "BAD_USER_INPUT"
    }
}

fn fix(mut resp: Response) -> Response {
    resp.errors = resp
        .errors
        .into_iter()
        .map(|e| {
            let code = engine_code(&e);
            with_code(e, code)
        })
        .collect();
    resp
}

#[async_trait::async_trait]
impl Extension for CodesExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        fix(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(fix).boxed()
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables).await.map_err(|e| {
            let code = engine_code(&e);
            with_code(e, code)
        })
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| {
                    let code = engine_code(&e);
                    with_code(e, code)
                })
                .collect()
        })
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let started = Instant::now();
        let resp = next.run(ctx, operation_name).await;
        tracing::info!(
            operation = operation_name.unwrap_or("-"),
            duration_us = started.elapsed().as_micros() as u64,
            errors = resp.errors.len(),
            "graphql"
        );
        resp
    }
}
