//! A GraphQL-over-HTTP client on one keep-alive HTTP/1.1 connection (hyper, no pool, no retries).

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// A GraphQL error the server answered with; `code` is `extensions.code`.
#[derive(Debug, Clone)]
pub struct GqlError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for GqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for GqlError {}

/// One client: one TCP connection, requests one after another.
pub struct Http {
    host: String,
    send: SendRequest<Full<Bytes>>,
    client_id: Option<String>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("could not connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http {
            host: addr.to_string(),
            send,
            client_id: None,
        })
    }

    /// Sends `x-client-id` with every request (the server attributes events to it).
    pub fn with_client_id(mut self, id: String) -> Self {
        self.client_id = Some(id);
        self
    }

    /// POSTs a ready JSON body to /graphql and returns the response body.
    pub async fn post(&mut self, body: Bytes) -> anyhow::Result<Bytes> {
        self.send.ready().await.context("the connection closed")?;
        let mut req = Request::post("/graphql")
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json");
        if let Some(id) = &self.client_id {
            req = req.header("x-client-id", id);
        }
        if let Some(bearer) = BEARER.get() {
            req = req.header("authorization", bearer);
        }
        let resp = self.send.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            // A GraphQL error answered with an HTTP error status (a request
            // refused before it ran) is still that error, with its code.
            if let Err(e) = data(&bytes) {
                if e.downcast_ref::<GqlError>().is_some() {
                    return Err(e);
                }
            }
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }

    /// Runs a GraphQL operation; `Err` holds a `GqlError` (downcast it) when the server reported one.
    pub async fn gql(&mut self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(&json!({"query": query, "variables": variables}))?;
        let bytes = self.post(Bytes::from(body)).await?;
        data(&bytes)
    }
}

/// The `data` of a GraphQL response, or its first error.
pub fn data(bytes: &[u8]) -> anyhow::Result<Value> {
    let mut v: Value = serde_json::from_slice(bytes)
        .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(bytes)))?;
    if let Some(e) = v.get("errors").and_then(|e| e.get(0)) {
        let code = e
            .pointer("/extensions/code")
            .and_then(|c| c.as_str())
            .unwrap_or("UNKNOWN")
            .to_string();
        let message = e
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string();
        return Err(GqlError { code, message }.into());
    }
    v.get_mut("data")
        .map(Value::take)
        .ok_or_else(|| anyhow!("no data in {}", String::from_utf8_lossy(bytes)))
}

/// The error code of a failed request: the GraphQL code, else `TRANSPORT`.
pub fn error_code(e: &anyhow::Error) -> String {
    match e.downcast_ref::<GqlError>() {
        Some(g) => g.code.clone(),
        None => "TRANSPORT".to_string(),
    }
}

/// A string field of a JSON value by pointer, as an owned String.
pub fn s(v: &Value, pointer: &str) -> anyhow::Result<String> {
    v.pointer(pointer)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no string at {pointer} in {v}"))
}

/// An integer field of a JSON value by pointer.
pub fn n(v: &Value, pointer: &str) -> anyhow::Result<u64> {
    v.pointer(pointer)
        .and_then(|x| x.as_u64())
        .ok_or_else(|| anyhow!("no integer at {pointer} in {v}"))
}

/// `Bearer <token>` sent with every request and in every `connection_init`
/// (`--token`), for a server with authentication on.
pub static BEARER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
