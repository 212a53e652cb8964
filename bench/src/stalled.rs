//! Scenario 7, a stalled subscriber: server memory while one websocket subscriber reads nothing
//! during 100,000 events, against the same run without it.
//!
//! Each run starts a fresh server, writes `--events` property changes (in
//! executeBatch requests of `--batch`) to one session, and reads the server's
//! `VmRSS` after it went quiet: once with no subscriber ("none"), once with a
//! subscriber whose socket has a 4 KiB receive buffer and which stops reading
//! right after its `ClientJoined` ("stalled"). The stalled subscriber must
//! still be connected at the end (the write timeout is raised for the run), and
//! when it reads again it must get every event in order or a `ResyncRequired`.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::api;
use crate::http::Http;
use crate::server::{Launch, Server};
use crate::stats::{Case, Report, Run};
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Property changes written during a run (one event each, plus two per batch).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Changes per executeBatch request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Bytes of each new value.
    #[arg(long, default_value_t = 200)]
    pub value_bytes: usize,
    /// Use the in-memory store (default: the durable SQLite store).
    #[arg(long)]
    pub in_memory: bool,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> anyhow::Result<Report> {
    let store = crate::fanout::store_name(ctx, o.in_memory);
    let mut report = Report::new(
        "stalled",
        json!({"events": o.events, "batch": o.batch, "value_bytes": o.value_bytes, "store": store, "runs": ctx.runs}),
    );
    for stalled in [false, true] {
        let label = if stalled { "stalled" } else { "none" };
        let mut case = Case {
            label: label.to_string(),
            params: json!({"subscriber": label, "events": o.events, "store": store}),
            runs: Vec::new(),
        };
        for r in 0..ctx.runs {
            let run = once(ctx, o, stalled).await?;
            println!(
                "stalled run {} ({label}): RSS {:.1} MiB after the writes (idle {:.1} MiB)",
                r + 1,
                run.get("rss_after_mib").unwrap_or(f64::NAN),
                run.get("rss_idle_mib").unwrap_or(f64::NAN),
            );
            case.runs.push(run);
        }
        report.cases.push(case);
    }
    if let (Some(none), Some(stalled)) = (
        report.case("none").and_then(|c| c.agg("rss_after_mib")),
        report.case("stalled").and_then(|c| c.agg("rss_after_mib")),
    ) {
        report.notes.push(format!(
            "a stalled subscriber cost {:.1} MiB of RSS over {} events (median of runs)",
            stalled.median - none.median,
            o.events
        ));
    }
    Ok(report)
}

/// Lets the server settle (allocator, lazy work), then reads its RSS in MiB.
async fn rss_mib(server: &Server) -> f64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0)
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn recv(ws: &mut Socket) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(c))) => bail!("the server closed the subscriber: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the server closed the subscriber"),
        }
    }
}

/// A subscriber with a tiny receive buffer, joined to the session.
async fn stalled_subscriber(server: &Server, session: &str) -> anyhow::Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(server.addr).await?;
    let mut request = server.ws_url().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
    let init = json!({"type": "connection_init", "payload": {"clientId": "stalled"}});
    ws.send(Message::text(init.to_string())).await?;
    let query = "subscription($s: ID!) { sessionEvents(sessionId: $s) { __typename seq ... on ClientJoined { clientId } ... on PropertyChanged { newValue } } }";
    let sub = json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"s": session}}});
    ws.send(Message::text(sub.to_string())).await?;
    loop {
        let m = recv(&mut ws).await?;
        if m["payload"]["data"]["sessionEvents"]["clientId"] == "stalled" {
            return Ok(ws);
        }
    }
}

async fn once(ctx: &Ctx, o: &Opts, stalled: bool) -> anyhow::Result<Run> {
    let server = ctx
        .target
        .start(Launch {
            in_memory: o.in_memory,
            // Keep the stalled subscriber connected for the whole run, so its cost is measured.
            args: vec!["--ws-timeout-secs".into(), "3600".into()],
            ..Launch::default()
        })
        .await?;
    let mut run = Run::default();
    let mut http = Http::connect(server.addr).await?;
    let p = api::create_project(&mut http, "stalled").await?;
    let task = api::create_node(&mut http, &p.session, &p.workstream, api::TASK).await?;
    run.set("rss_idle_mib", rss_mib(&server).await);
    let mut sub = match stalled {
        true => Some(stalled_subscriber(&server, &p.session).await?),
        false => None,
    };
    let filler = "v".repeat(o.value_bytes);
    let batch = "mutation($s: ID!, $c: [CommandInput!]!) { executeBatch(sessionId: $s, commands: $c) { version } }";
    let mut written = 0;
    while written < o.events {
        let n = o.batch.min(o.events - written);
        let commands: Vec<Value> = (0..n)
            .map(|i| json!({"updateProperty": {"nodeId": task, "propertyId": api::TEXT_PROP, "value": format!("{}-{filler}", written + i)}}))
            .collect();
        http.gql(batch, json!({"s": p.session, "c": commands}))
            .await
            .context("executeBatch failed")?;
        written += n;
    }
    run.set("rss_after_mib", rss_mib(&server).await);
    let state = http
        .gql(
            "query($s: ID!) { session(id: $s) { activeClients lastSeq } }",
            json!({"s": p.session}),
        )
        .await?;
    run.set(
        "active_clients",
        state["session"]["activeClients"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    if let Some(ws) = sub.as_mut() {
        if state["session"]["activeClients"] != 1 {
            bail!("the stalled subscriber was dropped during the run: {state}");
        }
        // Reading again: events in order up to the last, or a ResyncRequired.
        let last = state["session"]["lastSeq"].as_u64().unwrap_or(0);
        let (mut received, mut resyncs, mut previous) = (0u64, 0u64, 0u64);
        loop {
            let m = recv(ws).await?;
            let event = &m["payload"]["data"]["sessionEvents"];
            let seq = event["seq"].as_u64().unwrap_or(0);
            if event["__typename"] == "ResyncRequired" {
                resyncs += 1;
            } else if previous != 0 && seq != previous + 1 {
                bail!("the stalled subscriber got seq {seq} after {previous}");
            }
            previous = seq;
            received += 1;
            if seq >= last {
                break;
            }
        }
        run.set("received_after_resume", received as f64);
        run.set("resyncs", resyncs as f64);
    }
    drop(sub);
    server.stop().await?;
    Ok(run)
}
