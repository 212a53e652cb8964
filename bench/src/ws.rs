//! A graphql-transport-ws subscriber of `sessionEvents` (tokio-tungstenite), checking seq continuity.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One event as the subscriber selected it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "__typename")]
    pub typename: String,
    pub seq: u64,
    #[serde(default)]
    pub new_value: Option<Value>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    /// PresenceChanged: the clients named as joined (at most the server's list limit).
    #[serde(default)]
    pub joined: Option<Vec<Joined>>,
    /// PresenceChanged: how many joined (exact).
    #[serde(default)]
    pub joined_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub client_id: String,
}

impl Event {
    /// Whether this event tells of `client`'s join: its own ClientJoined, or
    /// a PresenceChanged that lists it. A PresenceChanged whose list was cut
    /// short (more joined than it names) counts too: the client cannot tell,
    /// and its join is in it or in the next one, one presence interval later.
    pub fn announces_join_of(&self, client: &str) -> bool {
        match self.typename.as_str() {
            "ClientJoined" => self.client_id.as_deref() == Some(client),
            "PresenceChanged" => {
                let joined = self.joined.as_deref().unwrap_or_default();
                joined.iter().any(|j| j.client_id == client)
                    || self.joined_count.unwrap_or(0) > joined.len() as u64
            }
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "sessionEvents")]
    event: Event,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    errors: Option<Value>,
}

#[derive(Deserialize)]
struct Msg {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    payload: Option<Payload>,
}

/// Set by `--legacy-presence`: select no PresenceChanged (a server from before it existed).
pub static LEGACY_PRESENCE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// BASE for a server without PresenceChanged (every join its own ClientJoined).
const LEGACY_BASE: &str = "__typename seq ... on ClientJoined { clientId }";

/// What every subscription selects besides `extra`: enough to check order and see its own join.
const BASE: &str =
    "__typename seq ... on ClientJoined { clientId } ... on PresenceChanged { joinedCount joined { clientId } }";

/// A live subscription on its own websocket.
pub struct Sub {
    ws: WebSocketStream<TcpStream>,
    pub client_id: String,
    /// Seq of the newest event received.
    pub last_seq: u64,
    /// Events whose seq was not the previous one + 1 (lost or out of order).
    pub seq_errors: u64,
    /// Events skipped: the sum of every gap between consecutive seqs.
    pub gaps: u64,
    /// Events whose seq was not above the previous one (seen twice or out of order).
    pub duplicates: u64,
    /// Whether the first event must follow `last_seq` (a subscription resumed with `since`).
    resumed: bool,
    pub resyncs: u64,
    pub received: u64,
}

/// Client-side websocket buffers: small, so 10,000 clients stay cheap for the load generator.
fn config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = 4 * 1024;
    c.write_buffer_size = 0;
    c
}

/// Opens a websocket (graphql-transport-ws), initialises it as `client_id`
/// (`connection_ack`) and sends the subscription to the session's events,
/// resuming after seq `since` when given: the server first replays every
/// event after it, and the subscriber checks that the first one is
/// `since + 1`. The join is not waited for: [`Sub::wait_joined`] returns once
/// the subscriber has seen it (`ClientJoined`, or a `PresenceChanged` naming
/// it), i.e. once the server holds the subscription.
pub async fn open(
    addr: SocketAddr,
    session_id: &str,
    client_id: String,
    extra: &str,
    since: Option<u64>,
) -> anyhow::Result<Sub> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("could not connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let mut request = format!("ws://{addr}/graphql").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config()))
        .await
        .context("websocket handshake failed")?;
    let mut init = json!({"type": "connection_init", "payload": {"clientId": client_id, "name": "talus-bench"}});
    if let Some(bearer) = crate::http::BEARER.get() {
        init["payload"]["authorization"] = json!(bearer);
    }
    ws.send(Message::text(init.to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                match v.get("type").and_then(|t| t.as_str()) {
                    Some("connection_ack") => break,
                    Some("ping") => ws.send(Message::text(r#"{"type":"pong"}"#)).await?,
                    _ => bail!("unexpected message before connection_ack: {v}"),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the server closed the websocket before connection_ack"),
        }
    }
    let base = if LEGACY_PRESENCE.load(std::sync::atomic::Ordering::Relaxed) {
        LEGACY_BASE
    } else {
        BASE
    };
    let query = format!(
        "subscription($s: ID!, $since: Int) {{ sessionEvents(sessionId: $s, since: $since) {{ {base} {extra} }} }}"
    );
    let sub = json!({"id": "1", "type": "subscribe",
                     "payload": {"query": query, "variables": {"s": session_id, "since": since}}});
    ws.send(Message::text(sub.to_string())).await?;
    Ok(Sub {
        ws,
        client_id,
        last_seq: since.unwrap_or(0),
        seq_errors: 0,
        gaps: 0,
        duplicates: 0,
        resumed: since.is_some(),
        resyncs: 0,
        received: 0,
    })
}

impl Sub {
    /// Reads events until the one announcing this subscriber's own join.
    pub async fn wait_joined(&mut self) -> anyhow::Result<()> {
        loop {
            match self.next().await? {
                Some(e) if e.announces_join_of(&self.client_id) => return Ok(()),
                Some(_) => {}
                None => bail!("the subscription ended before it started"),
            }
        }
    }

    /// The next event (None once the server completes or closes); answers protocol pings on the way.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            let text = match self.ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            };
            let msg: Msg = match serde_json::from_str(text.as_str()) {
                Ok(m) => m,
                Err(_) => bail!("server said: {}", text.as_str()),
            };
            match msg.ty.as_str() {
                "next" => {
                    let payload = msg.payload.ok_or_else(|| anyhow!("next without payload"))?;
                    if let Some(errors) = payload.errors {
                        bail!("subscription error: {errors}");
                    }
                    let event = payload
                        .data
                        .ok_or_else(|| anyhow!("next without data"))?
                        .event;
                    if (self.received > 0 || self.resumed) && event.seq != self.last_seq + 1 {
                        self.seq_errors += 1;
                        if event.seq > self.last_seq {
                            self.gaps += event.seq - self.last_seq - 1;
                        } else {
                            self.duplicates += 1;
                        }
                    }
                    if event.typename == "ResyncRequired" {
                        self.resyncs += 1;
                    }
                    self.received += 1;
                    self.last_seq = event.seq;
                    return Ok(Some(event));
                }
                "ping" => self.ws.send(Message::text(r#"{"type":"pong"}"#)).await?,
                "complete" => return Ok(None),
                "pong" => {}
                _ => bail!("server said: {}", text.as_str()),
            }
        }
    }

    /// Closes the websocket politely (best effort, bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}
