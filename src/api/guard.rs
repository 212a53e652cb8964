//! What only the engine can check, for the schema's one extension
//! (`extension::Pipeline`): Automatic Persisted Queries (bounded), no
//! mutations over a read-only transport (GET), and a null `__schema.description`.
//!
//! The read-only check sees every document, also one found in the parse
//! cache or one that the persisted-query extension (`ApolloPersistedQueries`)
//! found by its hash: a hash-only GET of a registered mutation is refused
//! like the mutation's text would be.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_graphql::extensions::apollo_persisted_queries::{
    ApolloPersistedQueries, LruCacheStorage,
};
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, ResolveInfo,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use async_graphql::{Request, ServerError, ServerResult, Value};

/// Request data marking a request that came over a read-only transport
/// (HTTP GET): a mutation is refused, and `refused` tells the transport, which
/// answers 405.
#[derive(Debug, Clone, Default)]
pub struct ReadOnly {
    operation_name: Option<String>,
    refused: Arc<AtomicBool>,
}

impl ReadOnly {
    /// The marker for a request that will run `operation_name` (if given).
    pub fn new(operation_name: Option<&str>) -> ReadOnly {
        ReadOnly {
            operation_name: operation_name.map(str::to_string),
            refused: Arc::default(),
        }
    }

    /// Whether the request was refused because it is a mutation.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The type of the operation that running `operation_name` of `doc` would
/// run, or None when the document does not determine one (the engine reports it).
pub fn selected_operation(
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<OperationType> {
    let op = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    };
    op.map(|op| op.node.ty)
}

/// Whether running `operation_name` of `doc` would run a mutation. An operation
/// that cannot be determined is left to the engine, which reports it.
pub fn selects_mutation(doc: &ExecutableDocument, operation_name: Option<&str>) -> bool {
    selected_operation(doc, operation_name) == Some(OperationType::Mutation)
}

/// The guard, with Automatic Persisted Queries inside it: async-graphql's
/// `ApolloPersistedQueries` over its `LruCacheStorage` of `apq_cache_entries`
/// documents, each from a query of at most `max_persisted_query_bytes`.
///
/// APQ runs from the schema's one extension's `prepare_request` rather than
/// as an extension of its own: every extension in the chain costs a boxed
/// future per hook and per resolved field, and APQ only needs the one hook.
pub struct Guard {
    max_persisted_query_bytes: usize,
    apq: Arc<dyn Extension>,
}

impl Guard {
    pub fn new(apq_cache_entries: usize, max_persisted_query_bytes: usize) -> Guard {
        let storage = LruCacheStorage::new(apq_cache_entries.max(1));
        Guard {
            max_persisted_query_bytes,
            // The APQ extension holds only a handle to the shared storage, so
            // one instance serves every request.
            apq: ApolloPersistedQueries::new(storage).create(),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ServerError {
    let mut e = ServerError::new(message, None);
    e.extensions
        .get_or_insert_with(Default::default)
        .set("code", Value::String("BAD_USER_INPUT".into()));
    e
}

impl Guard {
    /// Before the engine sees the request: bounds what the APQ cache keeps,
    /// then runs APQ, which goes on with `next`.
    pub(super) async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // The APQ cache holds parsed documents, up to its entry count; a
        // document larger than this is run but not remembered, so the cache's
        // memory stays bounded by entries x this size. The client keeps
        // working: its next hash-only request gets PersistedQueryNotFound and
        // it sends the text again.
        if request.query.len() > self.max_persisted_query_bytes
            && request.extensions.remove("persistedQuery").is_some()
        {
            tracing::debug!(
                bytes = request.query.len(),
                limit = self.max_persisted_query_bytes,
                "a persisted query too large to remember runs without being cached"
            );
        }
        // Looks a hash-only request's document up (PersistedQueryNotFound if
        // unknown), or checks a query against its hash and remembers it; then
        // runs `next`.
        self.apq.prepare_request(ctx, request, next).await
    }

    /// Refuses a mutation over a read-only transport, however its document
    /// was found (text, parse cache or persisted hash).
    pub(super) fn check_document(
        ctx: &ExtensionContext<'_>,
        doc: &ExecutableDocument,
    ) -> ServerResult<()> {
        if let Some(read_only) = ctx.data_opt::<ReadOnly>() {
            if selects_mutation(doc, read_only.operation_name.as_deref()) {
                read_only.refused.store(true, Ordering::Relaxed);
                return Err(bad_request(
                    "mutations must be sent with POST (GET is for queries only)",
                ));
            }
        }
        Ok(())
    }

    /// The answer for a field the engine would answer wrongly, if `info` is one.
    ///
    /// async-graphql answers `__schema { description }` with its own text
    /// about what a schema is; the schema has no description (schema.graphql
    /// carries none), so introspection must say null, or a client schema
    /// built from introspection differs from schema.graphql.
    pub(super) fn answer(info: &ResolveInfo<'_>) -> Option<Value> {
        (info.parent_type == "__Schema" && info.name == "description").then_some(Value::Null)
    }
}
