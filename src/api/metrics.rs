//! Operation metrics, for the schema's one extension (`extension::Pipeline`):
//! counts operations (by type, name and outcome), times queries and
//! mutations, counts errors by code, and runs each request inside a `graphql`
//! tracing span (at debug).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_graphql::extensions::ExtensionContext;
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::Response;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tracing::Instrument;

use super::RenderOne;
use crate::metrics::names;

/// Installs the metrics recorder and keeps at most `max_names` operation
/// names as labels (once per process: the first schema built sets it).
pub(super) fn install(max_names: usize) {
    crate::metrics::handle();
    crate::metrics::keep_operation_names(max_names);
}

/// What the request's document turned out to run.
#[derive(Default, Clone)]
struct Operation {
    kind: Option<&'static str>,
    name: Option<String>,
    /// The document's operations, to find the type of the one executed by name.
    all: Vec<(Option<String>, &'static str)>,
    /// A rendering of a recorded event for the websocket fast path, not a client's operation.
    render: bool,
}

fn kind(ty: OperationType) -> &'static str {
    match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

/// One per request (or per subscription stream), run by the schema's one
/// extension (`extension::Pipeline`) around the others' hooks.
#[derive(Default)]
pub(super) struct Counting {
    /// Shared with the stream `subscribe` returns, which outlives the hook.
    operation: Arc<Mutex<Operation>>,
}

/// Records one finished operation (or a subscription's first result).
fn record(op: &Mutex<Operation>, response: &Response, started: Option<Instant>) {
    {
        let op = op.lock();
        let kind = op.kind.unwrap_or("unknown");
        crate::metrics::count_operation(kind, op.name.as_deref(), response.errors.is_empty());
        if let Some(started) = started {
            static SECONDS: [OnceLock<metrics::Histogram>; 4] = [const { OnceLock::new() }; 4];
            crate::metrics::cached(
                &SECONDS[crate::metrics::kind_index(kind)],
                || metrics::histogram!(names::OPERATION_SECONDS, "type" => kind),
            )
            .record(started.elapsed().as_secs_f64());
        }
    }
    for e in &response.errors {
        let code = e
            .extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .and_then(|c| match c {
                async_graphql::Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "NONE".to_string());
        metrics::counter!(names::ERRORS, "code" => code).increment(1);
    }
}

impl Counting {
    /// Runs a request (`run` is the rest of the pipeline), timed and counted.
    pub(super) async fn request(
        &self,
        run: impl std::future::Future<Output = Response>,
    ) -> Response {
        let started = Instant::now();
        // At debug: an enabled span costs every poll an enter and an exit.
        let span = tracing::debug_span!("graphql");
        let response = run.instrument(span).await;
        record(&self.operation, &response, Some(started));
        response
    }

    /// Counts a stream's operation once, at its first result.
    pub(super) fn subscribe<'s>(
        &self,
        stream: impl futures_util::Stream<Item = Response> + Send + 's,
    ) -> BoxStream<'s, Response> {
        // Websocket and HTTP streams run every operation this way: count each
        // once, at its first result (a subscription's is its first event).
        let started = Instant::now();
        let operation = self.operation.clone();
        let mut first = true;
        stream
            .map(move |response| {
                if first && !operation.lock().render {
                    first = false;
                    // The document is known by now: parse_query ran before the first result.
                    let timed = operation.lock().kind != Some("subscription");
                    record(&operation, &response, timed.then_some(started));
                }
                response
            })
            .boxed()
    }

    /// Learns the operations of the request's document once it is parsed.
    pub(super) fn parsed(&self, ctx: &ExtensionContext<'_>, doc: &ExecutableDocument) {
        let all: Vec<_> = doc
            .operations
            .iter()
            .map(|(name, op)| (name.map(|n| n.to_string()), kind(op.node.ty)))
            .collect();
        let mut op = self.operation.lock();
        // Request data is attached by now (it is not yet when `subscribe` runs).
        op.render = ctx.data_opt::<RenderOne>().is_some();
        if let [(name, kind)] = all.as_slice() {
            op.kind = Some(kind);
            op.name = name.clone();
        }
        op.all = all;
    }

    /// Learns which operation runs, when the request names it.
    pub(super) fn executing(&self, operation_name: Option<&str>) {
        if let Some(name) = operation_name {
            let mut op = self.operation.lock();
            if op.kind.is_none() {
                op.kind = op
                    .all
                    .iter()
                    .find(|(n, _)| n.as_deref() == Some(name))
                    .map(|(_, k)| *k);
                op.name = Some(name.to_string());
            }
        }
    }
}
