//! Subscriptions over plain HTTP: GraphQL over Server-Sent Events (the
//! graphql-sse protocol, distinct connections mode) and Apollo's multipart
//! HTTP subscriptions (`multipart/mixed;subscriptionSpec=1.0`).
//!
//! Both run the operation through the same schema as websockets
//! (`execute_stream`), so a `sessionEvents` stream has the same events, order,
//! presence and limits. Each response is produced by a task that writes frames
//! into a small bounded channel the response body reads from: a client that
//! stops reading fills the channel, the task stops polling the subscription,
//! and the subscription catches up from the log when the client reads again
//! (the same backpressure as on websockets). A frame that cannot be handed
//! over within the websocket timeout ends the stream, which ends the
//! subscription and its presence. Heartbeats (an SSE comment, an empty
//! multipart part) keep proxies from closing a quiet stream and notice a
//! client that went away.
//!
//! SSE events carry `id: <seq>`: a reconnecting `EventSource` sends it back as
//! `Last-Event-ID`, and the stream resumes after that seq, gap-free.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::Request;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::api::{AppSchema, ConnClient, HttpClient, ResumeFrom, SeqProbe};

/// Frames buffered between a stream's task and its response body.
const FRAMES_IN_FLIGHT: usize = 16;

/// The boundary of multipart responses; Apollo's clients expect `graphql`.
const BOUNDARY: &str = "graphql";

/// Which streaming protocol a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// `Accept: text/event-stream`: graphql-sse, distinct connections mode.
    Sse,
    /// `Accept: multipart/mixed;subscriptionSpec=1.0`: Apollo's multipart subscriptions.
    Multipart,
}

impl Streaming {
    /// The streaming protocol the `Accept` header allows, if any, wherever it
    /// stands in the list. Whether a request is answered with it is decided
    /// with its operation (`http::answer_streaming`): a subscription streams,
    /// a query streams only for a client that accepts no JSON.
    pub fn requested(headers: &HeaderMap) -> Option<Streaming> {
        let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
        accept.split(',').find_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next()?.to_ascii_lowercase();
            match media.as_str() {
                "text/event-stream" => Some(Streaming::Sse),
                "multipart/mixed" => parts
                    .any(|p| {
                        p.replace(' ', "")
                            .strip_prefix("subscriptionSpec=")
                            .is_some_and(|v| v.trim_matches('"') == "1.0")
                    })
                    .then_some(Streaming::Multipart),
                _ => None,
            }
        })
    }
}

/// How streams behave; the same timeouts as websockets.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// How often a heartbeat is written to a quiet stream.
    pub heartbeat: Duration,
    /// How long a frame may wait for the client to read before the stream ends.
    pub write_timeout: Duration,
    /// Set to true when the server stops: streams complete.
    pub shutdown: watch::Receiver<bool>,
}

/// The client behind a stream: `x-client-id` / `x-client-name` headers, else
/// `clientId` / `clientName` in the request's extensions (an `EventSource`
/// cannot set headers), else a generated id.
fn stream_client(headers: &HeaderMap, request: &Request) -> ConnClient {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let extension = |name: &str| match request.extensions.get(name) {
        Some(async_graphql::Value::String(s)) => Some(s.trim().to_string()),
        _ => None,
    };
    let valid = |v: Option<String>| v.filter(|v| !v.is_empty() && v.len() <= 200);
    ConnClient {
        id: valid(header("x-client-id").or_else(|| extension("clientId")))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        name: valid(header("x-client-name").or_else(|| extension("clientName"))),
        connected_at: Utc::now(),
        subscriptions: Arc::new(AtomicUsize::new(0)),
    }
}

/// The seq an `EventSource` resumes after (`Last-Event-ID`), if it sent one.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `request` and streams its results in the protocol `kind` asks for.
pub fn respond(
    schema: AppSchema,
    settings: StreamSettings,
    headers: &HeaderMap,
    request: Request,
    kind: Streaming,
) -> Response {
    let client = stream_client(headers, &request);
    let probe = SeqProbe::default();
    let mut request = request
        .data(HttpClient(client.id.clone()))
        .data(client)
        .data(probe.clone());
    if kind == Streaming::Sse {
        if let Some(seq) = last_event_id(headers) {
            request = request.data(ResumeFrom(seq));
        }
    }
    let (tx, rx) = mpsc::channel::<Bytes>(FRAMES_IN_FLIGHT);
    tokio::spawn(pump(schema, settings, request, kind, probe, tx));
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let content_type = match kind {
        Streaming::Sse => HeaderValue::from_static("text/event-stream; charset=utf-8"),
        Streaming::Multipart => {
            HeaderValue::from_static("multipart/mixed; boundary=\"graphql\"; subscriptionSpec=1.0")
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies such as nginx buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Executes the operation and hands its frames to the response body until it
/// ends, the client stops reading or leaves, or the server stops.
async fn pump(
    schema: AppSchema,
    settings: StreamSettings,
    request: Request,
    kind: Streaming,
    probe: SeqProbe,
    tx: mpsc::Sender<Bytes>,
) {
    let _open = crate::metrics::GaugeGuard::new(crate::metrics::names::HTTP_STREAMS);
    let mut results = schema.execute_stream(request);
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut shutdown = settings.shutdown.clone();
    let send = |frame: Bytes| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(settings.write_timeout, tx.send(frame)).await,
                Ok(Ok(()))
            )
        }
    };
    // The opening delimiter, then a heartbeat: the client sees the stream is live.
    if kind == Streaming::Multipart
        && !(send(Bytes::from(format!("\r\n--{BOUNDARY}"))).await
            && send(multipart_part(&json!({}))).await)
    {
        return;
    }
    let mut last_seq = 0;
    loop {
        tokio::select! {
            next = results.next() => {
                let Some(response) = next else { break };
                let value = serde_json::to_value(&response).unwrap_or(Value::Null);
                let seq = probe.seq();
                let id = (seq != last_seq).then_some(seq);
                last_seq = seq;
                let frame = match kind {
                    Streaming::Sse => sse_event("next", id, &value.to_string()),
                    Streaming::Multipart => multipart_part(&multipart_payload(value)),
                };
                if !send(frame).await {
                    tracing::debug!("a streaming client stopped reading; its stream ends");
                    return;
                }
            }
            _ = heartbeat.tick() => {
                let frame = match kind {
                    Streaming::Sse => Bytes::from_static(b":\n\n"),
                    Streaming::Multipart => multipart_part(&json!({})),
                };
                if !send(frame).await {
                    return;
                }
            }
            _ = stopped(&mut shutdown) => break,
            // The client went away: hyper dropped the response body.
            _ = tx.closed() => return,
        }
    }
    let end = match kind {
        Streaming::Sse => sse_event("complete", None, ""),
        // The last part ended with a delimiter: this makes it the closing one.
        Streaming::Multipart => Bytes::from_static(b"--\r\n"),
    };
    let _ = send(end).await;
}

/// Resolves once the server stops (or the stop signal is gone).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stopping| *stopping).await.map(|_| ());
}

/// One SSE event; `data` is one line of JSON (serde_json never writes newlines).
fn sse_event(event: &str, id: Option<u64>, data: &str) -> Bytes {
    let id = id.map(|seq| format!("id: {seq}\n")).unwrap_or_default();
    Bytes::from(format!("{id}event: {event}\ndata: {data}\n\n"))
}

/// A GraphQL response as Apollo's multipart subscription protocol carries it:
/// results under `payload`; errors that end the operation beside a null payload.
fn multipart_payload(response: Value) -> Value {
    let transport_error =
        response.get("data").is_none_or(Value::is_null) && response.get("errors").is_some();
    if transport_error {
        json!({ "payload": null, "errors": response["errors"] })
    } else {
        json!({ "payload": response })
    }
}

/// One part, ended by the delimiter of the next: clients (Apollo's included)
/// take a part once they see the delimiter after it, so ending each part with
/// one delivers it at once rather than at the next heartbeat.
fn multipart_part(body: &Value) -> Bytes {
    Bytes::from(format!(
        "\r\ncontent-type: application/json; charset=utf-8\r\n\r\n{body}\r\n--{BOUNDARY}"
    ))
}

impl SeqProbe {
    /// The seq of the newest event the stream yielded (0 before the first).
    pub fn seq(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

impl Default for SeqProbe {
    fn default() -> Self {
        SeqProbe(Arc::new(AtomicU64::new(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn the_accept_header_picks_the_streaming_protocol() {
        assert_eq!(
            Streaming::requested(&accept("text/event-stream")),
            Some(Streaming::Sse)
        );
        assert_eq!(
            Streaming::requested(&accept(
                "multipart/mixed;boundary=\"graphql\";subscriptionSpec=1.0,application/json"
            )),
            Some(Streaming::Multipart)
        );
        assert_eq!(
            Streaming::requested(&accept("multipart/mixed; subscriptionSpec=\"1.0\"")),
            Some(Streaming::Multipart)
        );
        assert_eq!(Streaming::requested(&accept("multipart/mixed")), None);
        assert_eq!(
            Streaming::requested(&accept("application/graphql-response+json")),
            None
        );
        assert_eq!(Streaming::requested(&HeaderMap::new()), None);
    }

    #[test]
    fn multipart_results_go_under_payload_and_fatal_errors_beside_it() {
        assert_eq!(
            multipart_payload(json!({ "data": { "a": 1 } })),
            json!({ "payload": { "data": { "a": 1 } } })
        );
        assert_eq!(
            multipart_payload(json!({ "data": null, "errors": [{ "message": "no" }] })),
            json!({ "payload": null, "errors": [{ "message": "no" }] })
        );
    }
}
