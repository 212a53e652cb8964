//! Authentication on websockets: the token in `connection_init`, 4403 for a
//! bad one and at the token's expiry, the subscription row of the access
//! matrix, revocation ending an open stream with FORBIDDEN, userId on events.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{App, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use talus_tally::auth::AuthConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-shared-secret-for-the-ws-tests";
const AUDIENCE: &str = "talus";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn token_with(secret: &str, sub: &str, exp: u64, aud: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "name": format!("{sub} (token)"), "exp": exp, "aud": aud }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(sub: &str) -> String {
    token_with(SECRET, sub, now() as u64 + 3600, AUDIENCE)
}

async fn server(tune: impl FnOnce(&mut talus_tally::server::Config)) -> App {
    App::start_with(|c| {
        c.in_memory = true;
        c.auth = AuthConfig {
            secret: Some(SECRET.into()),
            audience: Some(AUDIENCE.into()),
            ..AuthConfig::default()
        };
        tune(c);
    })
    .await
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws socket that has sent `connection_init` with `payload`.
async fn open(app: &App, payload: Value) -> Socket {
    let mut request = app.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init = json!({ "type": "connection_init", "payload": payload });
    socket
        .send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    socket
}

/// The next message, `Err(close code)` once the server closes.
async fn next(socket: &mut Socket) -> Result<Value, u16> {
    loop {
        let frame = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .expect("timed out waiting for the server");
        match frame {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| f.code.into())),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return Err(1006),
        }
    }
}

async fn acked(app: &App, payload: Value) -> Socket {
    let mut socket = open(app, payload).await;
    let ack = next(&mut socket).await.expect("acknowledged");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket
}

async fn subscribe(socket: &mut Socket, id: &str, session: &str) {
    let message = json!({
        "id": id, "type": "subscribe",
        "payload": {
            "query": "subscription($s: ID!) { sessionEvents(sessionId: $s) { __typename seq userId clientId ... on ClientJoined { client { clientId name userId } } } }",
            "variables": { "s": session },
        },
    });
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// A project of olivia's, shared with eddie (EDITOR) and vera (VIEWER): (session, project, root).
async fn shared_project(app: &App) -> (String, String, String) {
    let owner = app.as_bearer(&token("olivia"));
    let data = owner
        .query(
            "mutation { createProject(templateId: \"project\", name: \"Shared\") { id project { id } graph { roots { id } } } }",
            json!({}),
        )
        .await;
    let session = common::str_of(&data["createProject"]["id"]);
    let project = common::str_of(&data["createProject"]["project"]["id"]);
    let root = common::str_of(&data["createProject"]["graph"]["roots"][0]["id"]);
    for (user, role) in [("eddie", "EDITOR"), ("vera", "VIEWER")] {
        owner
            .query(
                "mutation($p: ID!, $u: ID!, $r: Role!) { grantAccess(projectId: $p, userId: $u, role: $r) { id } }",
                json!({ "p": project, "u": user, "r": role }),
            )
            .await;
    }
    (session, project, root)
}

/// HTTP requests with a bearer token, through the harness's client.
trait Bearer {
    fn as_bearer(&self, token: &str) -> BearerHttp;
}

impl Bearer for App {
    fn as_bearer(&self, token: &str) -> BearerHttp {
        BearerHttp {
            url: self.url("/graphql"),
            auth: format!("Bearer {token}"),
        }
    }
}

struct BearerHttp {
    url: String,
    auth: String,
}

impl BearerHttp {
    async fn query(&self, query: &str, variables: Value) -> Value {
        let body: Value = reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/json")
            .header("authorization", &self.auth)
            .body(json!({ "query": query, "variables": variables }).to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(body.get("errors").is_none(), "{query}: {body}");
        body["data"].clone()
    }
}

#[tokio::test]
async fn a_missing_malformed_badly_signed_expired_or_wrong_audience_token_closes_the_connection_with_4403(
) {
    let app = server(|_| {}).await;
    let later = now() as u64 + 3600;
    let cases = [
        ("no token", json!({})),
        ("malformed", json!({ "authorization": "Bearer not-a-jwt" })),
        (
            "not bearer",
            json!({ "authorization": format!("Basic {}", token("olivia")) }),
        ),
        (
            "bad signature",
            json!({ "authorization": format!("Bearer {}", token_with("some-other-secret-value", "olivia", later, AUDIENCE)) }),
        ),
        (
            "expired",
            json!({ "authorization": format!("Bearer {}", token_with(SECRET, "olivia", later - 7200, AUDIENCE)) }),
        ),
        (
            "wrong audience",
            json!({ "authorization": format!("Bearer {}", token_with(SECRET, "olivia", later, "elsewhere")) }),
        ),
    ];
    for (case, payload) in cases {
        let mut socket = open(&app, payload).await;
        assert_eq!(next(&mut socket).await, Err(4403), "{case}");
    }
}

#[tokio::test]
async fn the_token_is_read_from_authorization_or_from_headers_authorization() {
    let app = server(|_| {}).await;
    let bearer = format!("Bearer {}", token("olivia"));
    acked(&app, json!({ "authorization": bearer })).await;
    acked(&app, json!({ "headers": { "Authorization": bearer } })).await;
}

#[tokio::test]
async fn an_open_connection_closes_with_4403_when_its_token_expires() {
    let app = server(|c| c.auth.leeway_secs = 0).await;
    let exp = now().ceil() as u64 + 2;
    let bearer = format!("Bearer {}", token_with(SECRET, "olivia", exp, AUDIENCE));
    let mut socket = acked(&app, json!({ "authorization": bearer })).await;
    // The connection stays open (answering pings) until the token's exp, then closes.
    let closed = next(&mut socket).await;
    let at = now();
    assert_eq!(closed, Err(4403));
    assert!(at >= exp as f64 - 0.05, "closed at {at}, before exp {exp}");
    assert!(
        at < exp as f64 + 5.0,
        "closed at {at}, long after exp {exp}"
    );
}

#[tokio::test]
async fn subscribing_answers_each_kind_of_member_as_its_role_allows() {
    let app = server(|_| {}).await;
    let (session, _, _) = shared_project(&app).await;
    // A non-member is told the session does not exist.
    let mut stranger = acked(
        &app,
        json!({ "authorization": format!("Bearer {}", token("nora")) }),
    )
    .await;
    subscribe(&mut stranger, "e", &session).await;
    let refused = next(&mut stranger).await.unwrap();
    let errors = if refused["type"] == "error" {
        refused["payload"].clone()
    } else {
        refused["payload"]["errors"].clone()
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "SESSION_NOT_FOUND",
        "{refused}"
    );
    // Viewers, editors and owners receive the events, starting with their own ClientJoined.
    for user in ["vera", "eddie", "olivia"] {
        let mut socket = acked(&app, json!({ "authorization": format!("Bearer {}", token(user)), "clientId": format!("{user}-tab") })).await;
        subscribe(&mut socket, "e", &session).await;
        let joined = next(&mut socket).await.unwrap();
        let event = &joined["payload"]["data"]["sessionEvents"];
        assert_eq!(event["__typename"], "ClientJoined", "{user}: {joined}");
        assert_eq!(event["userId"], user, "{joined}");
    }
}

#[tokio::test]
async fn user_id_and_name_come_from_the_token_and_cannot_be_spoofed_through_the_payload() {
    let app = server(|_| {}).await;
    let (session, _, root) = shared_project(&app).await;
    let payload = json!({
        "authorization": format!("Bearer {}", token("vera")),
        "clientId": "vera-laptop", "name": "Mallory", "userId": "mallory",
    });
    let mut socket = acked(&app, payload).await;
    subscribe(&mut socket, "e", &session).await;
    let joined = next(&mut socket).await.unwrap();
    let client = &joined["payload"]["data"]["sessionEvents"]["client"];
    assert_eq!(
        *client,
        json!({ "clientId": "vera-laptop", "name": "vera (token)", "userId": "vera" })
    );
    // An editor's command: every event it causes names the editor.
    app.as_bearer(&token("eddie"))
        .query(
            "mutation($s: ID!, $r: ID!) { createNode(sessionId: $s, input: { parentId: $r, typeId: \"workstream\" }) { nodeId } }",
            json!({ "s": session, "r": root }),
        )
        .await;
    let mut seen = 0;
    while seen < 3 {
        let message = next(&mut socket).await.unwrap();
        let event = &message["payload"]["data"]["sessionEvents"];
        assert_eq!(event["userId"], "eddie", "{message}");
        seen += 1;
    }
}

#[tokio::test]
async fn revoking_a_member_ends_its_open_subscription_with_forbidden_within_a_second() {
    let app = server(|_| {}).await;
    let (session, project, _) = shared_project(&app).await;
    let mut socket = acked(
        &app,
        json!({ "authorization": format!("Bearer {}", token("vera")) }),
    )
    .await;
    subscribe(&mut socket, "e", &session).await;
    let joined = next(&mut socket).await.unwrap();
    assert_eq!(
        joined["payload"]["data"]["sessionEvents"]["__typename"],
        "ClientJoined"
    );
    app.as_bearer(&token("olivia"))
        .query(
            "mutation($p: ID!) { revokeAccess(projectId: $p, userId: \"vera\") { id } }",
            json!({ "p": project }),
        )
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let message = next(&mut socket).await.unwrap();
            if message["payload"]["errors"].is_array() {
                return message;
            }
        }
    })
    .await
    .expect("the stream ends within a second of the revocation");
    assert_eq!(
        ended["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{ended}"
    );
    let complete = next(&mut socket).await.unwrap();
    assert_eq!(complete, json!({ "id": "e", "type": "complete" }));
}

#[tokio::test]
async fn connections_beyond_the_per_user_cap_are_closed_with_4429_and_other_users_connect() {
    let app = server(|c| c.max_connections_per_user = 2).await;
    let bearer = json!({ "authorization": format!("Bearer {}", token("olivia")) });
    let _one = acked(&app, bearer.clone()).await;
    let two = acked(&app, bearer.clone()).await;
    let mut three = open(&app, bearer.clone()).await;
    assert_eq!(next(&mut three).await, Err(4429));
    acked(
        &app,
        json!({ "authorization": format!("Bearer {}", token("eddie")) }),
    )
    .await;
    // A slot is given back when a connection ends.
    drop(two);
    let again = tokio::time::timeout(TIMEOUT, async {
        loop {
            let mut socket = open(&app, bearer.clone()).await;
            if next(&mut socket).await.is_ok() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(again.is_ok(), "a freed slot can be used again");
}
