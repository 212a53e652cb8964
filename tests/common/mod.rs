//! The black-box test harness: the real server on 127.0.0.1:0 with a temp data dir, and typed HTTP and websocket clients.
//!
//! `App::start()` serves with the default SQLite store in a fresh temp dir;
//! `App::start_with(|config| ..)` tunes the config first (limits, in-memory
//! store, templates dir). `App` derefs to `Http`, the keep-alive GraphQL
//! client with typed helpers (`app.create_project(..)`, `app.undo(..)`), and
//! `app.subscribe(session)` opens a graphql-transport-ws connection that is a
//! joined client of the session. Every wait has a timeout that fails the test.
//!
//! With `TALUS_TEST_STORE=postgres` the same tests run against the
//! PostgreSQL store instead of SQLite: each `App` gets a fresh database of the
//! private cluster of `postgres.rs` (its URL kept in the temp dir, so a
//! restart on the same dir finds the same data). `.ci/run` runs the API
//! suites both ways.

#![allow(dead_code)]

pub mod postgres;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use talus_tally::server::{self, ClusterConfig, Config, Running};
use talus_tally::store::Store;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The subscription id `App::subscribe` uses.
pub const EVENTS: &str = "events";

/// Every event field a test looks at, for every event type.
pub const EVENT_FIELDS: &str = "__typename seq sessionId commandId clientId
    ... on NodeCreated { node { nodeId name typeId parentId properties } parentId index }
    ... on NodeDeleted { nodeId parentId deletedIds }
    ... on NodeRenamed { nodeId oldName newName }
    ... on NodeMoved { nodeId oldParentId newParentId index }
    ... on PropertyChanged { nodeId propertyId oldValue newValue }
    ... on CommandExecuting { commandType }
    ... on CommandExecuted { commandType version }
    ... on CommandFailed { commandType code message }
    ... on CommandUndone { commandType version }
    ... on CommandRedone { commandType version }
    ... on ClientJoined { client { clientId name } activeClients }
    ... on ClientLeft { client { clientId name } activeClients }
    ... on PresenceChanged { joined { clientId name } left { clientId name } joinedCount leftCount activeClients }
    ... on ResyncRequired { reason }";

/// The fields of a `CommandResult` the helpers return.
pub const RESULT_FIELDS: &str =
    "commandId version nodeId canUndo canRedo events { __typename seq clientId }";

/// The subscription document used by the event helpers.
pub fn events_subscription() -> String {
    format!("subscription Events($s: ID!, $since: Int) {{ sessionEvents(sessionId: $s, since: $since) {{ {EVENT_FIELDS} }} }}")
}

/// A server config for tests: port 0 on loopback, data under `dir`.
///
/// Presence is not coalesced (`presence_interval` zero): each join and leave
/// is its own ClientJoined/ClientLeft, so tests that follow clients one by one
/// see each. tests/presence.rs covers coalescing with its own settings.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.session.presence_interval = Duration::ZERO;
    config
}

/// Whether `TALUS_TEST_STORE=postgres` asks for the PostgreSQL store.
pub fn on_postgres() -> bool {
    std::env::var("TALUS_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The cluster config of the database that belongs to `dir`: created on
/// first use, the same one after a restart on `dir`.
async fn postgres_config(dir: &std::path::Path) -> ClusterConfig {
    let file = dir.join("postgres-url");
    let database_url = match std::fs::read_to_string(&file) {
        Ok(url) => url,
        Err(_) => {
            let cluster = postgres::cluster().unwrap_or_else(|| {
                panic!("TALUS_TEST_STORE=postgres needs the PostgreSQL server binaries (apt-get install postgresql)")
            });
            let url = cluster.database().await;
            std::fs::write(&file, &url).expect("the temp dir is writable");
            url
        }
    };
    ClusterConfig {
        pool_size: 8,
        ..ClusterConfig::new(database_url, "test".into())
    }
}

/// A running server and the temp dir it keeps its data in.
pub struct App {
    pub addr: SocketAddr,
    pub http: Http,
    pub dir: TempDir,
    running: Option<Running>,
}

impl Deref for App {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

static CLIENTS: AtomicUsize = AtomicUsize::new(1);

/// A client id no other connection of this test process uses.
pub fn fresh_client_id(prefix: &str) -> String {
    format!("{prefix}-{}", CLIENTS.fetch_add(1, Ordering::Relaxed))
}

impl App {
    /// The server with the default config and the SQLite store in a temp dir.
    pub async fn start() -> App {
        App::start_with(|_| {}).await
    }

    /// The server with a config tuned by `tune` (store chosen by `server::open_store`).
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> App {
        App::start_in(tempfile::tempdir().expect("a temp dir"), tune).await
    }

    /// The server on SQLite whatever `TALUS_TEST_STORE` says, for tests
    /// that look into the SQLite file; restarts on its dir stay on SQLite.
    pub async fn start_sqlite() -> App {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = test_config(dir.path());
        let store = server::open_store(&config).expect("the store opens");
        App::start_on(dir, config, store).await
    }

    /// The server on the data already in `dir` (see `restart`).
    pub async fn start_in(dir: TempDir, tune: impl FnOnce(&mut Config)) -> App {
        let mut config = test_config(dir.path());
        tune(&mut config);
        // A dir that holds SQLite data stays on SQLite (see `start_sqlite`).
        let sqlite_data = config.data_dir.join("talus.db").exists();
        let store = if !config.in_memory && on_postgres() && !sqlite_data {
            let cluster = postgres_config(dir.path()).await;
            let store = server::open_postgres(&cluster)
                .await
                .expect("the PostgreSQL store opens");
            config.cluster = Some(cluster);
            store
        } else {
            server::open_store(&config).expect("the store opens")
        };
        App::start_on(dir, config, store).await
    }

    /// The server with an explicit store (e.g. a `FaultyStore`).
    pub async fn start_on(dir: TempDir, config: Config, store: Arc<dyn Store>) -> App {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .expect("binds 127.0.0.1:0");
        let running = server::start(config, listener, store)
            .await
            .expect("the server starts");
        let addr = running.addr;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(8)
            .timeout(TIMEOUT)
            .build()
            .expect("an HTTP client");
        App {
            addr,
            http: Http {
                client,
                base: format!("http://{addr}"),
                client_id: None,
            },
            dir,
            running: Some(running),
        }
    }

    /// Stops the server gracefully (subscriptions end, the store flushes).
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running
                .shutdown()
                .await
                .expect("the server shuts down cleanly");
        }
    }

    /// Shuts down gracefully and hands back the data dir, to start another server on it.
    pub async fn restart(mut self) -> TempDir {
        if let Some(running) = self.running.take() {
            running
                .shutdown()
                .await
                .expect("the server shuts down cleanly");
        }
        self.dir
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/graphql", self.addr)
    }

    /// A graphql-transport-ws connection that has been acknowledged, with this clientId and name.
    pub async fn ws_as(&self, client_id: &str, name: &str) -> Ws {
        self.connect(
            Protocol::TransportWs,
            json!({ "clientId": client_id, "name": name }),
        )
        .await
    }

    /// A graphql-transport-ws connection with a fresh clientId.
    pub async fn ws(&self) -> Ws {
        let id = fresh_client_id("ws");
        self.ws_as(&id, &id).await
    }

    /// A websocket speaking `protocol`, initialised with `init` as the `connection_init` payload.
    pub async fn connect(&self, protocol: Protocol, init: Value) -> Ws {
        let mut ws = Ws::open(&self.ws_url(), protocol.subprotocol()).await;
        assert_eq!(
            ws.negotiated.as_deref(),
            Some(protocol.subprotocol()),
            "the server must answer with the subprotocol it was asked for"
        );
        ws.protocol = protocol;
        ws.client_id = init
            .get("clientId")
            .and_then(Value::as_str)
            .map(str::to_string);
        ws.init(init).await;
        ws
    }

    /// A new connection subscribed (as `EVENTS`) to the session's events from now on, once its ClientJoined has arrived.
    pub async fn subscribe(&self, session: &str) -> Ws {
        let mut ws = self.ws().await;
        ws.subscribe_events(EVENTS, session, None).await;
        ws.wait_joined(EVENTS).await;
        ws
    }
}

/// A GraphQL-over-HTTP client, optionally sending `x-client-id`.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    pub base: String,
    client_id: Option<String>,
}

impl Http {
    /// A client of the server at `base` (`http://ADDR`), e.g. a real binary's.
    pub fn new(base: &str) -> Http {
        Http {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .expect("an HTTP client"),
            base: base.to_string(),
            client_id: None,
        }
    }

    /// The same client, sending `x-client-id: id` with every request.
    pub fn as_client(&self, id: &str) -> Http {
        Http {
            client_id: Some(id.to_string()),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET succeeds")
    }

    /// GET /graphql?query=...; the status and the JSON answer.
    pub async fn get_query(&self, query: &str) -> (u16, Value) {
        let mut request = self
            .client
            .get(self.url("/graphql"))
            .query(&[("query", query)]);
        if let Some(id) = &self.client_id {
            request = request.header("x-client-id", id);
        }
        let response = request.send().await.expect("GET /graphql succeeds");
        let status = response.status().as_u16();
        let body = response.json().await.expect("a JSON answer");
        (status, body)
    }

    /// POSTs a raw body to /graphql; the status and the JSON answer.
    pub async fn post_body(&self, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(id) = &self.client_id {
            request = request.header("x-client-id", id);
        }
        let response = request.send().await.expect("POST /graphql succeeds");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {text}"));
        (status, body)
    }

    /// The whole JSON answer to a GraphQL request.
    pub async fn request(&self, query: &str, variables: Value) -> Value {
        let body = json!({ "query": query, "variables": variables }).to_string();
        self.post_body(body).await.1
    }

    /// `data` of a request that must succeed.
    pub async fn query(&self, query: &str, variables: Value) -> Value {
        let body = self.request(query, variables).await;
        assert!(
            body.get("errors").is_none(),
            "unexpected errors for {query}: {body:#}"
        );
        body["data"].clone()
    }

    /// The first error of a request that must fail.
    pub async fn error(&self, query: &str, variables: Value) -> Value {
        let body = self.request(query, variables).await;
        first_error(&body)
    }

    /// A new project from `template`: (session id, root id).
    pub async fn create_project(&self, template: &str, name: &str) -> (String, String) {
        let data = self
            .query(
                "mutation($t: ID!, $n: String!) { createProject(templateId: $t, name: $n) { id graph { roots { id } } } }",
                json!({ "t": template, "n": name }),
            )
            .await;
        let session = &data["createProject"];
        (
            str_of(&session["id"]),
            str_of(&session["graph"]["roots"][0]["id"]),
        )
    }

    /// Creates a node under `parent` (or a root); its id.
    pub async fn create_node(
        &self,
        session: &str,
        parent: Option<&str>,
        type_id: &str,
        name: &str,
    ) -> String {
        let result = self
            .command(
                "mutation($s: ID!, $i: CreateNodeInput!) { createNode(sessionId: $s, input: $i) { RESULT } }",
                json!({ "s": session, "i": { "parentId": parent, "typeId": type_id, "name": name } }),
            )
            .await;
        str_of(&result["nodeId"])
    }

    /// Sets a property; the command result.
    pub async fn update_property(
        &self,
        session: &str,
        node: &str,
        property: &str,
        value: Value,
    ) -> Value {
        self.command(
            "mutation($s: ID!, $n: ID!, $p: ID!, $v: JSON) { updateProperty(sessionId: $s, nodeId: $n, propertyId: $p, value: $v) { RESULT } }",
            json!({ "s": session, "n": node, "p": property, "v": value }),
        )
        .await
    }

    /// Runs one `CommandInput` through `execute`; the command result.
    pub async fn execute(&self, session: &str, command: Value) -> Value {
        self.command(
            "mutation($s: ID!, $c: CommandInput!) { execute(sessionId: $s, command: $c) { RESULT } }",
            json!({ "s": session, "c": command }),
        )
        .await
    }

    pub async fn undo(&self, session: &str) -> Value {
        self.command(
            "mutation($s: ID!) { undo(sessionId: $s) { RESULT } }",
            json!({ "s": session }),
        )
        .await
    }

    pub async fn redo(&self, session: &str) -> Value {
        self.command(
            "mutation($s: ID!) { redo(sessionId: $s) { RESULT } }",
            json!({ "s": session }),
        )
        .await
    }

    /// A mutation whose single root field returns a `CommandResult` (`RESULT` in the query stands for its fields).
    async fn command(&self, query: &str, variables: Value) -> Value {
        let query = query.replace("RESULT", RESULT_FIELDS);
        let data = self.query(&query, variables).await;
        let (_, result) = data
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("one root field");
        result.clone()
    }

    /// What a test compares to prove that "nothing changed": the version and every node.
    pub async fn graph(&self, session: &str) -> Value {
        self.query(
            "query($s: ID!) { graph(sessionId: $s) { version nodeCount roots { id } nodes { id typeId name properties parentId childIds } } }",
            json!({ "s": session }),
        )
        .await["graph"]
            .clone()
    }

    /// The session's state as `Session` reports it, or null.
    pub async fn session(&self, session: &str) -> Value {
        self.query(
            "query($s: ID!) { session(id: $s) { id activeClients clients { clientId name } hasProject version lastSeq canUndo canRedo nodeCount project { id name } } }",
            json!({ "s": session }),
        )
        .await["session"]
            .clone()
    }

    pub async fn last_seq(&self, session: &str) -> i64 {
        int_of(&self.session(session).await["lastSeq"])
    }

    /// Every project the server keeps: (id, name).
    pub async fn projects(&self) -> Vec<(String, String)> {
        let data = self.query("{ projects { id name } }", json!({})).await;
        data["projects"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| (str_of(&p["id"]), str_of(&p["name"])))
            .collect()
    }
}

/// The first error of a GraphQL answer; fails the test if there is none.
pub fn first_error(body: &Value) -> Value {
    body["errors"]
        .get(0)
        .cloned()
        .unwrap_or_else(|| panic!("expected an error, got {body:#}"))
}

/// `extensions.code` of an error.
pub fn code_of(error: &Value) -> &str {
    error["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("the error has no extensions.code: {error:#}"))
}

pub fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_string()
}

pub fn int_of(v: &Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("expected an integer, got {v}"))
}

/// A new random id, as clients would send for something that does not exist.
pub fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The two GraphQL websocket subprotocols the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws` (graphql-ws library): subscribe / next / complete.
    TransportWs,
    /// The legacy `graphql-ws` (subscriptions-transport-ws): start / data / stop.
    LegacyWs,
}

impl Protocol {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::LegacyWs => "graphql-ws",
        }
    }

    fn subscribe_type(self) -> &'static str {
        match self {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        }
    }

    fn next_type(self) -> &'static str {
        match self {
            Protocol::TransportWs => "next",
            Protocol::LegacyWs => "data",
        }
    }

    fn complete_type(self) -> &'static str {
        match self {
            Protocol::TransportWs => "complete",
            Protocol::LegacyWs => "stop",
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One GraphQL websocket connection.
pub struct Ws {
    socket: Socket,
    pub protocol: Protocol,
    /// The subprotocol the server's handshake answer named.
    pub negotiated: Option<String>,
    /// The clientId sent in `connection_init`, if any.
    pub client_id: Option<String>,
    /// Messages read while waiting for another subscription id.
    buffered: VecDeque<Value>,
    /// The ClientJoined that `App::subscribe` waited for.
    pub joined: Option<Value>,
    next_op: usize,
}

impl Ws {
    /// Opens the socket asking for `subprotocols` (a `Sec-WebSocket-Protocol` value), without any GraphQL message.
    pub async fn open(url: &str, subprotocols: &str) -> Ws {
        let mut request = url.into_client_request().expect("a websocket request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(subprotocols).unwrap(),
        );
        let (socket, response) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
                .await
                .expect("the websocket handshake timed out")
                .expect("the websocket handshake succeeds");
        let negotiated = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let protocol = match negotiated.as_deref() {
            Some("graphql-ws") => Protocol::LegacyWs,
            _ => Protocol::TransportWs,
        };
        Ws {
            socket,
            protocol,
            negotiated,
            client_id: None,
            buffered: VecDeque::new(),
            joined: None,
            next_op: 0,
        }
    }

    /// Sends `connection_init` and waits for `connection_ack`.
    pub async fn init(&mut self, payload: Value) {
        self.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let ack = self
            .recv()
            .await
            .expect("the server acknowledges the connection");
        assert_eq!(
            ack["type"], "connection_ack",
            "expected connection_ack, got {ack}"
        );
    }

    pub async fn send(&mut self, message: Value) {
        tokio::time::timeout(
            TIMEOUT,
            self.socket.send(Message::Text(message.to_string().into())),
        )
        .await
        .expect("sending on the websocket timed out")
        .expect("the websocket accepts a message");
    }

    /// The next GraphQL message of any id (answering protocol pings), or None once the connection is closed.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("timed out waiting for a websocket message");
            match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!("the server sent a message that is not JSON ({e}): {text}")
                    });
                    match message["type"].as_str() {
                        Some("ping") => self.send(json!({ "type": "pong" })).await,
                        Some("ka") => {}
                        _ => return Some(message),
                    }
                }
                // Websocket-level pings are answered by tungstenite while we read.
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next message for subscription `id`; fails the test if the connection closes first.
    pub async fn message(&mut self, id: &str) -> Value {
        if let Some(i) = self.buffered.iter().position(|m| m["id"] == id) {
            return self.buffered.remove(i).expect("present");
        }
        loop {
            let message = self.recv().await.unwrap_or_else(|| {
                panic!("the connection closed while waiting for a message of '{id}'")
            });
            if message["id"] == id {
                return message;
            }
            self.buffered.push_back(message);
        }
    }

    /// Starts an operation (subscription, query or mutation) under `id`.
    pub async fn start(&mut self, id: &str, query: &str, variables: Value) {
        let kind = self.protocol.subscribe_type();
        self.send(json!({ "id": id, "type": kind, "payload": { "query": query, "variables": variables } }))
            .await;
    }

    /// Subscribes to a session's events under `id`, from now on or after `since`.
    pub async fn subscribe_events(&mut self, id: &str, session: &str, since: Option<i64>) {
        self.start(
            id,
            &events_subscription(),
            json!({ "s": session, "since": since }),
        )
        .await;
    }

    /// The payload of the next result of `id`; fails the test on `complete`, `error` or a timeout.
    pub async fn next(&mut self, id: &str) -> Value {
        let message = self.message(id).await;
        assert_eq!(
            message["type"],
            self.protocol.next_type(),
            "expected a result of '{id}', got {message}"
        );
        message["payload"].clone()
    }

    /// The next event of subscription `id`.
    pub async fn next_event(&mut self, id: &str) -> Value {
        let payload = self.next(id).await;
        assert!(
            payload.get("errors").is_none(),
            "the subscription '{id}' failed: {payload:#}"
        );
        payload["data"]["sessionEvents"].clone()
    }

    /// The next event of `App::subscribe`'s subscription.
    pub async fn event(&mut self) -> Value {
        self.next_event(EVENTS).await
    }

    /// The next `n` events of `App::subscribe`'s subscription.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.event().await);
        }
        out
    }

    /// Events of `id` up to and including the one with seq `last`.
    pub async fn events_through(&mut self, id: &str, last: i64) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let event = self.next_event(id).await;
            let seq = int_of(&event["seq"]);
            out.push(event);
            if seq >= last {
                return out;
            }
        }
    }

    /// The first error of the next result of `id` (a failed subscription or operation).
    pub async fn next_error(&mut self, id: &str) -> Value {
        let payload = self.next(id).await;
        first_error(&payload)
    }

    /// Waits for the server's `complete` of `id`.
    pub async fn expect_complete(&mut self, id: &str) {
        let message = self.message(id).await;
        assert_eq!(
            message["type"], "complete",
            "expected complete of '{id}', got {message}"
        );
    }

    /// Reads events of `id` until the one announcing this connection's own
    /// join (its ClientJoined, or a PresenceChanged listing it); returns it.
    pub async fn wait_joined(&mut self, id: &str) -> Value {
        let me = self
            .client_id
            .clone()
            .expect("a connection with a clientId");
        loop {
            let event = self.next_event(id).await;
            let own =
                event["__typename"] == "ClientJoined" && event["client"]["clientId"] == me.as_str();
            let listed = event["__typename"] == "PresenceChanged"
                && event["joined"]
                    .as_array()
                    .is_some_and(|j| j.iter().any(|c| c["clientId"] == me.as_str()));
            if own || listed {
                self.joined = Some(event.clone());
                return event;
            }
        }
    }

    /// Waits for the server to end `id` on its own (events still on their way are skipped).
    pub async fn wait_complete(&mut self, id: &str) {
        loop {
            let message = self.message(id).await;
            if message["type"] == "complete" {
                return;
            }
            assert_eq!(
                message["type"],
                self.protocol.next_type(),
                "unexpected {message}"
            );
        }
    }

    /// Unsubscribes `id` (`complete`, or `stop` in the legacy protocol) and waits for the server's `complete`.
    pub async fn unsubscribe(&mut self, id: &str) {
        let kind = self.protocol.complete_type();
        self.send(json!({ "id": id, "type": kind })).await;
        // Events already on their way may come first.
        loop {
            let message = self.message(id).await;
            if message["type"] == "complete" {
                return;
            }
            assert_eq!(
                message["type"],
                self.protocol.next_type(),
                "unexpected {message}"
            );
        }
    }

    /// Runs a query or mutation over this connection; its `data` (fails the test on errors).
    pub async fn operation(&mut self, query: &str, variables: Value) -> Value {
        self.next_op += 1;
        let id = format!("op-{}", self.next_op);
        self.start(&id, query, variables).await;
        let payload = self.next(&id).await;
        self.expect_complete(&id).await;
        assert!(
            payload.get("errors").is_none(),
            "the operation failed: {payload:#}"
        );
        payload["data"].clone()
    }

    /// Closes with a close frame and waits for the server to close too.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        while self.recv().await.is_some() {}
    }

    /// Drops the TCP connection without a close frame (a reset, as when a laptop lid closes).
    pub fn drop_abruptly(self) {
        if let MaybeTlsStream::Plain(tcp) = self.socket.get_ref() {
            tcp.set_zero_linger().expect("SO_LINGER 0");
        }
        drop(self);
    }
}

/// The seqs of a list of events.
pub fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| int_of(&e["seq"])).collect()
}

/// The `__typename`s of a list of events.
pub fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| str_of(&e["__typename"])).collect()
}

/// Asserts that seqs go up by exactly one from `first`.
pub fn assert_consecutive(events: &[Value], first: i64) {
    let got = seqs(events);
    let want: Vec<i64> = (first..first + got.len() as i64).collect();
    assert_eq!(got, want, "seqs must be consecutive from {first}");
}

/// Receive buffer of a `slow_reader` socket: the kernel then holds only a few KiB for it.
pub const SLOW_READER_BUFFER_BYTES: u32 = 4 * 1024;

impl App {
    /// A graphql-transport-ws connection (acknowledged, as `client_id`) whose
    /// socket has a tiny receive buffer: once the test stops reading it, the
    /// server's writes to it back up after a few KiB, as with a stalled peer.
    pub async fn slow_reader(&self, client_id: &str) -> Ws {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .set_recv_buffer_size(SLOW_READER_BUFFER_BYTES)
            .expect("SO_RCVBUF");
        let tcp = socket.connect(self.addr).await.expect("connects");
        let mut request = self.ws_url().into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (socket, response) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("the websocket handshake timed out")
        .expect("the websocket handshake succeeds");
        let negotiated = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut ws = Ws {
            socket,
            protocol: Protocol::TransportWs,
            negotiated,
            client_id: Some(client_id.to_string()),
            buffered: VecDeque::new(),
            joined: None,
            next_op: 0,
        };
        ws.init(json!({ "clientId": client_id, "name": client_id }))
            .await;
        ws
    }
}

/// Polls `probe` on a cross-process observable (another instance, a
/// database) until it holds, up to 20 s; what it waits for is said on failure.
pub async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !probe().await {
        assert!(std::time::Instant::now() < deadline, "{what} within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a phase named `name` under `parent` through the server at `base`:
/// its id, `None` for a retryable refusal (STORE_UNAVAILABLE, as during a
/// takeover), `Err` when the server could not be reached; any other error
/// fails the test.
pub async fn try_create_node(
    client: &reqwest::Client,
    base: &str,
    session: &str,
    parent: &str,
    name: &str,
) -> Result<Option<String>, String> {
    let body = json!({
        "query": "mutation($s: ID!, $p: ID!, $n: String!) { createNode(sessionId: $s, input: { parentId: $p, typeId: \"phase\", name: $n }) { nodeId } }",
        "variables": { "s": session, "p": parent, "n": name },
    });
    let response = client
        .post(format!("{base}/graphql"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let answer: Value = response.json().await.map_err(|e| e.to_string())?;
    if let Some(error) = answer["errors"].get(0) {
        assert_eq!(
            error["extensions"]["code"], "STORE_UNAVAILABLE",
            "only retryable refusals: {answer}"
        );
        return Ok(None);
    }
    Ok(Some(str_of(&answer["data"]["createNode"]["nodeId"])))
}
