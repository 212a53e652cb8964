//! The schema's one async-graphql extension: request-shape limits before
//! validation, contract codes for engine errors (parse, validation, limits),
//! a per-request budget of list items, one log line per failed operation,
//! and, from `guard` and `metrics`, persisted queries, the read-only check
//! and operation metrics.
//!
//! One extension rather than one per concern: async-graphql runs every hook
//! of every extension in the chain as a boxed future, on every request and
//! for every resolved field; three extensions cost a small mutation 5% more
//! instructions than one (callgrind, BENCHMARKS.md row 25).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextRequest, NextResolve, NextSubscribe, NextValidation, ResolveInfo,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{
    Context, Request, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::error::code;
use super::expensive::PermitSlot;
use super::guard::Guard;
use super::metrics::Counting;
use super::ApiLimits;
use crate::domain::ErrorCode;

/// Request data that learns whether the request's document passed validation:
/// the websocket transport answers errors from before execution (parse,
/// validation, limits) with an `error` message instead of a result.
pub struct Validated(pub Arc<AtomicBool>);

/// Enforces the request-shape limits, adds codes to errors that carry none,
/// logs failed operations, remembers parsed documents, and runs the guard and
/// the metrics.
pub struct Pipeline {
    parsed: Arc<ParseCache>,
    limits: Arc<ApiLimits>,
    guard: Arc<Guard>,
}

impl Pipeline {
    /// The extension for a schema with these limits; installs the metrics recorder.
    pub fn new(limits: ApiLimits) -> Self {
        super::metrics::install(limits.max_metric_operation_names);
        Pipeline {
            parsed: Arc::default(),
            guard: Arc::new(Guard::new(
                limits.apq_cache_entries,
                limits.apq_max_query_bytes,
            )),
            limits: Arc::new(limits),
        }
    }
}

impl ExtensionFactory for Pipeline {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PipelineExtension {
            parsed: self.parsed.clone(),
            limits: self.limits.clone(),
            guard: self.guard.clone(),
            counting: Counting::default(),
            subscription: AtomicBool::new(false),
            document: Mutex::new(None),
        })
    }
}

/// How many list items (nodes reached through `parent`/`children`, search
/// results, projects, sessions) one request may still resolve. The complexity
/// limit is static and cannot know that `nodes { parent { children } }` is
/// quadratic in a flat graph (4 million nodes for 2,000 tasks under one
/// workstream); resolvers charge a list's length here before building it, so
/// a request that would pass `--max-result-items` is refused before the list
/// is built. `Graph.nodes` itself is not charged: it is built once per
/// request and bounded by `--max-nodes-per-project`.
pub struct ItemBudget {
    left: AtomicUsize,
    limit: usize,
    /// Set by the first refused charge: the whole response is then refused
    /// (see `PipelineExtension::execute`), not sent with the lists that fitted.
    exceeded: AtomicBool,
}

impl ItemBudget {
    pub fn new(limit: usize) -> Self {
        ItemBudget {
            left: AtomicUsize::new(limit),
            limit,
            exceeded: AtomicBool::new(false),
        }
    }

    /// Takes `n` items, or LIMIT_EXCEEDED if fewer are left.
    pub fn take(&self, n: usize, what: &str) -> super::error::Result<()> {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .map(|_| ())
            .map_err(|_| {
                self.exceeded.store(true, Ordering::Relaxed);
                code(
                    ErrorCode::LimitExceeded,
                    format!(
                        "the response would hold more than {} list items (at {what}; the limit max-result-items is {})",
                        self.limit, self.limit
                    ),
                )
            })
    }
}

/// Charges `n` items of a list to the request's budget (none outside a
/// request, as in unit tests); once the request has listed more than
/// `EXPENSIVE_ITEMS` in all, it waits for an expensive permit before it goes on.
pub async fn charge(ctx: &Context<'_>, n: usize, what: &str) -> super::error::Result<()> {
    let Some(budget) = ctx.data_opt::<ItemBudget>() else {
        return Ok(());
    };
    budget.take(n, what)?;
    super::expensive::admit_for(ctx, n)
        .await
        .map_err(super::error::gql)
}

/// Documents that parsed (and passed the parser's limits), by query text,
/// with the result of validating them once they have passed validation.
///
/// Clients send the same few operations over and over with different
/// variables; parsing one with pest took about a fifth of the server's CPU for
/// a small mutation, a clone of the parsed document a fraction of that
/// (talus-bench, BENCHMARKS.md). Validating it again took another seventh.
///
/// Validation is a property of the document and the schema: the GraphQL
/// spec validates documents without their variables, and coerces variable
/// values when it executes, which async-graphql also does (a variable of the
/// wrong type fails the field with BAD_USER_INPUT before its resolver runs).
/// async-graphql's validator additionally checks variable values against
/// argument types, which is why a document is only remembered as valid when it
/// has a single operation (no operation selection to depend on) and is reused
/// for later requests whatever their variables. Bounded: emptied when full.
#[derive(Default)]
struct ParseCache {
    docs: Mutex<HashMap<String, Cached, foldhash::fast::RandomState>>,
}

#[derive(Clone)]
struct Cached {
    doc: ExecutableDocument,
    valid: Option<ValidationResult>,
}

/// Queries longer than this are parsed every time (big one-off documents).
const PARSE_CACHE_MAX_QUERY_BYTES: usize = 4 * 1024;
/// Documents kept before the cache starts over.
const PARSE_CACHE_ENTRIES: usize = 256;

impl ParseCache {
    fn get(&self, query: &str) -> Option<Cached> {
        self.docs.lock().get(query).cloned()
    }

    fn put(&self, query: &str, doc: &ExecutableDocument) {
        if query.len() > PARSE_CACHE_MAX_QUERY_BYTES {
            return;
        }
        let mut docs = self.docs.lock();
        if docs.len() >= PARSE_CACHE_ENTRIES {
            docs.clear();
        }
        docs.insert(
            query.to_string(),
            Cached {
                doc: doc.clone(),
                valid: None,
            },
        );
    }

    /// Records that the cached document for `query` passed validation.
    fn validated(&self, query: &str, result: ValidationResult) {
        if let Some(cached) = self.docs.lock().get_mut(query) {
            if single_operation(&cached.doc) {
                cached.valid = Some(result);
            }
        }
    }
}

fn single_operation(doc: &ExecutableDocument) -> bool {
    doc.operations.iter().count() == 1
}

/// What this request's document is, as far as the caches are concerned.
enum Document {
    /// Known to have passed validation: skip validating it again.
    Valid(ValidationResult),
    /// Parsed (or found parsed) but not yet validated: remember if it passes.
    Unvalidated(String),
}

/// One per request (or per subscription stream).
struct PipelineExtension {
    parsed: Arc<ParseCache>,
    limits: Arc<ApiLimits>,
    guard: Arc<Guard>,
    counting: Counting,
    /// Set when the document is a subscription: async-graphql runs the `execute`
    /// hook once per delivered event, and a log line per event and subscriber
    /// cost about 40% of the server's CPU when fanning out (talus-bench).
    subscription: AtomicBool,
    document: Mutex<Option<Document>>,
}

impl PipelineExtension {
    /// Parses the query (or finds it in the parse cache) and checks its shape.
    async fn parse(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let max = self.limits.max_document_bytes;
        if query.len() > max {
            return Err(limit(format!(
                "the query text is {} bytes long (the limit max-document-bytes is {max})",
                query.len()
            )));
        }
        // A persisted query (APQ) arrives already parsed and without its text;
        // the text is this cache's key, so it must not be cached (under "").
        // `prepare_request` has checked that document's shape already.
        if query.is_empty() {
            let doc = next.run(ctx, query, variables).await.map_err(|e| {
                let code = engine_code(&e);
                with_code(e, code)
            })?;
            self.note_subscription(ctx, &doc);
            return Ok(doc);
        }
        let (doc, document) = match self.parsed.get(query) {
            Some(Cached {
                doc,
                valid: Some(result),
            }) => (doc, Document::Valid(result)),
            Some(Cached { doc, valid: None }) => (doc, Document::Unvalidated(query.to_string())),
            None => {
                // Parsed here rather than by the engine (`next`), whose
                // recursion-depth check walks every fragment spread as often
                // as it is reached: exponential for a document of fragments
                // spreading each other. `shape::check` measures the document
                // in linear time, with the same depth rule, before anything
                // else walks it.
                let doc = async_graphql::parser::parse_query(query).map_err(|e| {
                    let e = ServerError::from(e);
                    let code = engine_code(&e);
                    with_code(e, code)
                })?;
                super::shape::check(&doc, &self.limits)?;
                self.parsed.put(query, &doc);
                (doc, Document::Unvalidated(query.to_string()))
            }
        };
        *self.document.lock() = Some(document);
        self.note_subscription(ctx, &doc);
        Ok(doc)
    }

    /// Marks this extension as serving a subscription (see `subscription`).
    fn note_subscription(&self, ctx: &ExtensionContext<'_>, doc: &ExecutableDocument) {
        let subscription = doc
            .operations
            .iter()
            .all(|(_, op)| op.node.ty == OperationType::Subscription);
        if subscription {
            self.subscription.store(true, Ordering::Relaxed);
            // The websocket transport executes a subscription's selection once
            // per event to render it (`RenderOne`): that is not a subscription starting.
            if ctx.data_opt::<super::RenderOne>().is_none() {
                tracing::info!("graphql subscription started");
            }
        }
    }
}

fn limit(message: String) -> ServerError {
    with_code(ServerError::new(message, None), "LIMIT_EXCEEDED")
}

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

/// The engine's depth and complexity errors, told which limit they hit.
fn name_limit(mut e: ServerError, limits: &ApiLimits) -> ServerError {
    let m = e.message.to_lowercase();
    if m.contains("query is too complex") {
        e.message = format!(
            "{} (the limit max-complexity is {}; list fields count their expected length)",
            e.message.trim_end_matches('.'),
            limits.max_complexity
        );
    } else if m.contains("query is nested too deep") {
        e.message = format!(
            "{} (the limit max-depth is {})",
            e.message.trim_end_matches('.'),
            limits.max_depth
        );
    }
    e
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
impl Extension for PipelineExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // A persisted query's document (found by its hash) is handed over
        // parsed; the engine's own checks would walk it before `parse_query`
        // sees it, so its shape is checked here.
        // APQ first (inside the guard): the rest of the chain (`next`) runs
        // within it, and what comes back is the request the engine will run.
        let mut request = self.guard.prepare_request(ctx, request, next).await?;
        if request.query.is_empty() {
            // Without a parsed document this parses "" and fails; the engine reports that.
            if let Ok(doc) = request.parsed_query() {
                super::shape::check(doc, &self.limits)?;
            }
        }
        Ok(request
            .data(ItemBudget::new(self.limits.max_result_items))
            .data(PermitSlot::default()))
    }

    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        // Counted after the codes are added, so errors are counted by code.
        self.counting
            .request(async { fix(next.run(ctx).await) })
            .await
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        self.counting.subscribe(next.run(ctx, stream).map(fix))
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = self.parse(ctx, query, variables, next).await?;
        Guard::check_document(ctx, &doc)?;
        self.counting.parsed(ctx, &doc);
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let document = self.document.lock().take();
        let passed = || {
            if let Some(flag) = ctx.data_opt::<Validated>() {
                flag.0.store(true, Ordering::Relaxed);
            }
        };
        if let Some(Document::Valid(result)) = document {
            passed();
            return Ok(result);
        }
        let result = next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| {
                    let code = engine_code(&e);
                    with_code(name_limit(e, &self.limits), code)
                })
                .collect::<Vec<_>>()
        })?;
        if let Some(Document::Unvalidated(query)) = document {
            self.parsed.validated(&query, result);
        }
        passed();
        Ok(result)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        self.counting.executing(operation_name);
        if self.subscription.load(Ordering::Relaxed) {
            return next.run(ctx, operation_name).await;
        }
        let started = Instant::now();
        let mut resp = next.run(ctx, operation_name).await;
        if let Some(budget) = ctx.data_opt::<ItemBudget>() {
            if budget.exceeded.load(Ordering::Relaxed) {
                // Only the refusal is sent: a response with the lists that fitted
                // was 40 MB for `nodes { parent { children } }` of a flat graph.
                let refusal = resp
                    .errors
                    .iter()
                    .find(|e| e.message.contains("max-result-items"))
                    .cloned();
                resp = Response::from_errors(refusal.into_iter().collect());
            }
        }
        // One line per operation that failed; those that succeeded at debug
        // (`RUST_LOG=talus_tally::api=debug`): at the default filter a line
        // per request was a tenth of a small mutation's CPU (formatting and
        // one write(2)), and `/metrics` counts and times every operation.
        let duration_us = started.elapsed().as_micros() as u64;
        let operation = operation_name.unwrap_or("-");
        if resp.errors.is_empty() {
            tracing::debug!(operation, duration_us, errors = 0, "graphql");
        } else {
            tracing::info!(
                operation,
                duration_us,
                errors = resp.errors.len(),
                "graphql"
            );
        }
        resp
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if let Some(answer) = Guard::answer(&info) {
            return Ok(Some(answer));
        }
        next.run(ctx, info).await
    }
}
