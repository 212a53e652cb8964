//! Prometheus metrics: what the server counts (through the `metrics` facade)
//! and the recorder that renders it at `GET /metrics`.
//!
//! One recorder serves the whole process (the `metrics` facade has one global
//! recorder); every server started in it renders the same registry. Labels
//! are bounded: operation names are the client's choice, so at most
//! `--metrics-max-operation-names` distinct ones are kept and the rest are
//! counted as `other`.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

/// Metric names, in one place so code and documentation agree.
pub mod names {
    pub const OPERATIONS: &str = "talus_graphql_operations_total";
    pub const OPERATION_SECONDS: &str = "talus_graphql_operation_duration_seconds";
    pub const ERRORS: &str = "talus_graphql_errors_total";
    pub const WEBSOCKETS: &str = "talus_websocket_connections";
    pub const HTTP_STREAMS: &str = "talus_http_streams";
    pub const SUBSCRIPTIONS: &str = "talus_subscriptions";
    pub const SESSIONS: &str = "talus_sessions_live";
    pub const EVENTS_PUBLISHED: &str = "talus_events_published_total";
    pub const EVENTS_DELIVERED: &str = "talus_events_delivered_total";
    pub const SUBSCRIBER_CATCH_UPS: &str = "talus_subscriber_catch_ups_total";
    pub const RESYNCS: &str = "talus_resyncs_total";
    pub const COMMIT_SECONDS: &str = "talus_commit_duration_seconds";
    pub const COMMIT_GROUP_SIZE: &str = "talus_commit_group_size";
    pub const STORE_ERRORS: &str = "talus_store_errors_total";
}

/// Buckets for request and commit latencies, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Buckets for the number of jobs in one commit group.
const GROUP_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::COMMIT_GROUP_SIZE.into()),
                    &GROUP_BUCKETS,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // An embedding program installed its own: our counts go there.
            tracing::warn!("a metrics recorder is already installed; /metrics shows nothing");
        }
        describe();
        handle
    })
}

fn describe() {
    use names::*;
    describe_counter!(
        OPERATIONS,
        "GraphQL operations by type (query, mutation, subscription), name and outcome (ok, error)"
    );
    describe_histogram!(
        OPERATION_SECONDS,
        Unit::Seconds,
        "Time to answer a query or mutation, by type"
    );
    describe_counter!(
        ERRORS,
        "GraphQL errors by extensions.code (LIMIT_EXCEEDED counts limit refusals)"
    );
    describe_gauge!(WEBSOCKETS, "Open websocket connections");
    describe_gauge!(HTTP_STREAMS, "Open SSE and multipart HTTP streams");
    describe_gauge!(SUBSCRIPTIONS, "Active sessionEvents subscriptions");
    describe_gauge!(SESSIONS, "Live sessions (read when scraped)");
    describe_counter!(EVENTS_PUBLISHED, "Session events committed and published");
    describe_counter!(EVENTS_DELIVERED, "Session events handed to subscribers");
    describe_counter!(
        SUBSCRIBER_CATCH_UPS,
        "Times a subscriber fell behind the live broadcast and caught up from the log"
    );
    describe_counter!(
        RESYNCS,
        "ResyncRequired sent: a subscriber needed events the log no longer keeps"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time to commit one group of a session's jobs to the store"
    );
    describe_histogram!(COMMIT_GROUP_SIZE, "Jobs committed together in one group");
    describe_counter!(
        STORE_ERRORS,
        "Store commits that failed (the group was reverted)"
    );
}

/// Operation names seen so far, up to a bound, with the counter handles of each.
///
/// A labelled counter looked up through the macro builds its key, hashes and
/// compares it and allocates a copy on every call (~2.5 k instructions per
/// request, callgrind); the handles are looked up once per name instead.
/// Bounded like the labels: at most `max` names plus `other` and `anonymous`.
pub struct OperationNames {
    max: usize,
    by_label: Mutex<Labels>,
}

#[derive(Default)]
struct Labels {
    /// The operation names kept as labels.
    seen: HashSet<String, foldhash::fast::RandomState>,
    /// Label -> its counter per type and outcome, each made when first counted.
    counters: HashMap<String, [Option<metrics::Counter>; 8], foldhash::fast::RandomState>,
}

/// The operation types counted; anything else counts as the last.
const KINDS: [&str; 4] = ["query", "mutation", "subscription", "unknown"];

/// The place of an operation type in `KINDS`, for arrays of handles by type.
pub fn kind_index(kind: &str) -> usize {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS.len() - 1)
}

impl OperationNames {
    pub fn new(max: usize) -> Self {
        OperationNames {
            max,
            by_label: Mutex::default(),
        }
    }

    /// The label for `name`: itself while fewer than `max` names are known, else `other`.
    pub fn label(&self, name: Option<&str>) -> String {
        let mut labels = self.by_label.lock();
        self.label_in(&mut labels, name).to_string()
    }

    fn label_in<'a>(&self, labels: &mut Labels, name: Option<&'a str>) -> &'a str {
        let Some(name) = name.filter(|n| n.len() <= 64) else {
            return if name.is_some() { "other" } else { "anonymous" };
        };
        if labels.seen.contains(name) {
            return name;
        }
        if labels.seen.len() < self.max {
            labels.seen.insert(name.to_string());
            return name;
        }
        "other"
    }

    /// Counts one operation.
    pub fn count(&self, kind: &'static str, name: Option<&str>, ok: bool) {
        let slot = kind_index(kind) * 2 + usize::from(!ok);
        let mut labels = self.by_label.lock();
        let label = self.label_in(&mut labels, name);
        if !labels.counters.contains_key(label) {
            labels
                .counters
                .insert(label.to_string(), Default::default());
        }
        let Some(counters) = labels.counters.get_mut(label) else {
            return;
        };
        counters[slot]
            .get_or_insert_with(|| {
                let outcome = if ok { "ok" } else { "error" };
                metrics::counter!(names::OPERATIONS, "type" => kind, "name" => label.to_string(), "outcome" => outcome)
            })
            .increment(1);
    }
}

/// The handle of a metric without labels, registered once (after the
/// recorder is installed, so it is never the no-op recorder's).
pub fn cached<T>(cell: &'static OnceLock<T>, make: impl FnOnce() -> T) -> &'static T {
    cell.get_or_init(|| {
        handle();
        make()
    })
}

static NAMES: OnceLock<OperationNames> = OnceLock::new();

/// Sets how many operation names are kept as labels (the first call wins: one registry per process).
pub fn keep_operation_names(max: usize) {
    let _ = NAMES.set(OperationNames::new(max));
}

/// Counts one operation of `kind` (query, mutation, subscription) named `name`.
pub fn count_operation(kind: &'static str, name: Option<&str>, ok: bool) {
    NAMES
        .get_or_init(|| OperationNames::new(256))
        .count(kind, name, ok);
}

/// Counts a gauge up for as long as the guard lives.
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    pub fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_past_the_bound_are_other() {
        let names = OperationNames::new(2);
        assert_eq!(names.label(Some("A")), "A");
        assert_eq!(names.label(Some("B")), "B");
        assert_eq!(names.label(Some("C")), "other");
        assert_eq!(names.label(Some("A")), "A");
        assert_eq!(names.label(None), "anonymous");
        assert_eq!(names.label(Some(&"x".repeat(65))), "other");
    }
}
