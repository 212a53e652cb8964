//! Authentication and per-project access over HTTP: every query and mutation
//! against every kind of caller (no token, malformed, bad signature, expired,
//! wrong audience, non-member, viewer, editor, owner), with tokens minted here
//! with HS256 and with an ES256 key pair generated for the test.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::App;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use talus_tally::auth::AuthConfig;

const SECRET: &str = "a-shared-secret-for-the-tests";
const AUDIENCE: &str = "talus";

/// Signing keys of the test's identity provider.
struct Keys {
    es256: EncodingKey,
    /// Keeps the public key file alive while the server uses it.
    _dir: tempfile::TempDir,
    public_key: std::path::PathBuf,
}

fn keys() -> Keys {
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let private = secret.to_pkcs8_pem(LineEnding::LF).expect("a PKCS#8 key");
    let public = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("a public key PEM");
    let dir = tempfile::tempdir().unwrap();
    let public_key = dir.path().join("es256.pem");
    std::fs::write(&public_key, public).unwrap();
    Keys {
        es256: EncodingKey::from_ec_pem(private.as_bytes()).expect("an ES256 key"),
        _dir: dir,
        public_key,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, exp: u64, aud: &str) -> Value {
    json!({ "sub": sub, "name": sub.to_uppercase(), "exp": exp, "aud": aud })
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn es256(keys: &Keys, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &keys.es256).unwrap()
}

/// A server with authentication on: the HS256 secret and the ES256 public key, audience `talus`.
async fn server(keys: &Keys, tune: impl FnOnce(&mut talus_tally::server::Config)) -> App {
    let public_key = keys.public_key.clone();
    App::start_with(move |c| {
        c.in_memory = true;
        c.auth = AuthConfig {
            secret: Some(SECRET.into()),
            public_key: Some(public_key),
            audience: Some(AUDIENCE.into()),
            issuer: None,
            leeway_secs: 0,
            cache_entries: 10_000,
        };
        // The matrix sends many commands quickly; the rate limit has its own test.
        c.rate_limit = Some(0);
        tune(c);
    })
    .await
}

/// POSTs a GraphQL request with an optional `Authorization` value: (status, body).
async fn post(app: &App, auth: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(json!({ "query": query, "variables": variables }).to_string());
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("POST /graphql");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// `data` of a request that must succeed.
async fn ok(app: &App, auth: &str, query: &str, variables: Value) -> Value {
    let (status, body) = post(app, Some(auth), query, variables).await;
    assert!(
        status == 200 && body.get("errors").is_none(),
        "{query} failed ({status}): {body}"
    );
    body["data"].clone()
}

fn code(body: &Value) -> String {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// What one case starts from: a project of `owner` shared with an editor and a viewer.
struct Fixture {
    session: String,
    project: String,
    root: String,
    first: String,
    second: String,
}

/// The callers of the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    NoToken,
    Malformed,
    BadSignature,
    Expired,
    WrongAudience,
    NonMember,
    Viewer,
    Editor,
    Owner,
}

const EVERYONE: [Who; 9] = [
    Who::NoToken,
    Who::Malformed,
    Who::BadSignature,
    Who::Expired,
    Who::WrongAudience,
    Who::NonMember,
    Who::Viewer,
    Who::Editor,
    Who::Owner,
];

struct Tokens {
    owner: String,
    editor: String,
    viewer: String,
    stranger: String,
    bad_signature: String,
    expired: String,
    wrong_audience: String,
}

impl Tokens {
    /// HS256 for some users and ES256 for others, so both verify paths are in every run.
    fn new(keys: &Keys) -> Tokens {
        let later = now() + 3600;
        Tokens {
            owner: hs256(SECRET, &claims("olivia", later, AUDIENCE)),
            editor: es256(keys, &claims("eddie", later, AUDIENCE)),
            viewer: hs256(SECRET, &claims("vera", later, AUDIENCE)),
            stranger: es256(keys, &claims("nora", later, AUDIENCE)),
            bad_signature: hs256(
                "another-secret-entirely-here",
                &claims("olivia", later, AUDIENCE),
            ),
            expired: es256(keys, &claims("olivia", now() - 3600, AUDIENCE)),
            wrong_audience: hs256(SECRET, &claims("olivia", later, "someone-else")),
        }
    }

    fn header(&self, who: Who) -> Option<String> {
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        match who {
            Who::NoToken => None,
            Who::Malformed => Some("Bearer this.is-not.a-jwt".into()),
            Who::BadSignature => bearer(&self.bad_signature),
            Who::Expired => bearer(&self.expired),
            Who::WrongAudience => bearer(&self.wrong_audience),
            Who::NonMember => bearer(&self.stranger),
            Who::Viewer => bearer(&self.viewer),
            Who::Editor => bearer(&self.editor),
            Who::Owner => bearer(&self.owner),
        }
    }

    fn owner_header(&self) -> String {
        format!("Bearer {}", self.owner)
    }
}

async fn fixture(app: &App, tokens: &Tokens) -> Fixture {
    let owner = tokens.owner_header();
    let data = ok(
        app,
        &owner,
        "mutation { createProject(templateId: \"project\", name: \"Shared\") { id project { id } graph { roots { id } } } }",
        json!({}),
    )
    .await;
    let session = data["createProject"]["id"].as_str().unwrap().to_string();
    let project = data["createProject"]["project"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let root = data["createProject"]["graph"]["roots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for name in ["First", "Second"] {
        let data = ok(
            app,
            &owner,
            "mutation($s: ID!, $p: ID!, $n: String!) { createNode(sessionId: $s, input: { parentId: $p, typeId: \"workstream\", name: $n }) { nodeId } }",
            json!({ "s": session, "p": root, "n": name }),
        )
        .await;
        ids.push(data["createNode"]["nodeId"].as_str().unwrap().to_string());
    }
    for (user, role) in [("eddie", "EDITOR"), ("vera", "VIEWER")] {
        ok(
            app,
            &owner,
            "mutation($p: ID!, $u: ID!, $r: Role!) { grantAccess(projectId: $p, userId: $u, role: $r) { id } }",
            json!({ "p": project, "u": user, "r": role }),
        )
        .await;
    }
    Fixture {
        session,
        project,
        root,
        second: ids.pop().unwrap(),
        first: ids.pop().unwrap(),
    }
}

/// Everything a refusal must leave as it was, as the owner sees it.
async fn state(app: &App, tokens: &Tokens, f: &Fixture) -> Value {
    let (_, body) = post(
        app,
        Some(&tokens.owner_header()),
        "query($s: ID!, $p: ID!) {
            session(id: $s) { id version lastSeq canRedo }
            project(id: $p) { id nodeCount members { userId role } }
            projects { id } sessions { id }
            graph(sessionId: $s) { nodes { id name parent { id } properties } }
        }",
        json!({ "s": f.session, "p": f.project }),
    )
    .await;
    body
}

/// The least role an operation needs, or whether anyone authenticated may run it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    /// templates, template, templateErrors: no token needed.
    Nothing,
    /// Any authenticated user (creating their own things, `me`).
    AnyUser,
    /// A member with at least this role; others see "not found".
    Role(Rank),
}

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Rank {
    Viewer,
    Editor,
    Owner,
}

/// How a non-member's success looks for listing operations: absent, not an error.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hidden {
    /// Non-members get this error code.
    Code(&'static str),
    /// Non-members get data without the fixture (null or absent).
    Invisible,
}

struct Op {
    name: &'static str,
    query: &'static str,
    needs: Needs,
    hidden: Hidden,
    /// Changes state when it succeeds (so "unchanged" is only checked on refusals).
    writes: bool,
    /// Run by the owner before the case (e.g. an undo before a redo).
    prepare: Option<&'static str>,
}

fn ops() -> Vec<Op> {
    use Hidden::*;
    use Needs::*;
    let op = |name, query, needs, hidden, writes| Op {
        name,
        query,
        needs,
        hidden,
        writes,
        prepare: None,
    };
    vec![
        op("templates", "{ templates { id } }", Nothing, Invisible, false),
        op("template", "{ template(id: \"project\") { id } }", Nothing, Invisible, false),
        op("templateErrors", "{ templateErrors { file } }", Nothing, Invisible, false),
        op("me", "{ me { userId name } }", AnyUser, Invisible, false),
        op("sessions", "{ sessions { id } }", Role(Rank::Viewer), Invisible, false),
        op("session", "query($s: ID!) { session(id: $s) { id } }", Role(Rank::Viewer), Invisible, false),
        op("projects", "{ projects { id myRole } }", Role(Rank::Viewer), Invisible, false),
        op("project", "query($p: ID!) { project(id: $p) { id myRole members { userId role } } }", Role(Rank::Viewer), Invisible, false),
        op("graph", "query($s: ID!) { graph(sessionId: $s) { version } }", Role(Rank::Viewer), Code("SESSION_NOT_FOUND"), false),
        op("node", "query($s: ID!, $a: ID!) { node(sessionId: $s, id: $a) { id } }", Role(Rank::Viewer), Code("SESSION_NOT_FOUND"), false),
        op("searchNodes", "query($s: ID!) { searchNodes(sessionId: $s, text: \"i\") { id } }", Role(Rank::Viewer), Code("SESSION_NOT_FOUND"), false),
        op("exportProject", "query($s: ID!) { exportProject(sessionId: $s) }", Role(Rank::Viewer), Code("SESSION_NOT_FOUND"), false),
        op("createSession", "mutation { createSession { id } }", AnyUser, Invisible, true),
        op("createProject", "mutation { createProject(templateId: \"project\", name: \"Mine\") { id } }", AnyUser, Invisible, true),
        op("openProject", "mutation($p: ID!) { openProject(projectId: $p) { id } }", Role(Rank::Viewer), Code("PROJECT_NOT_FOUND"), false),
        op("importProject", "mutation($f: JSON!) { importProject(file: $f, templateId: \"project\") { id } }", AnyUser, Invisible, true),
        op("deleteProject", "mutation($p: ID!) { deleteProject(id: $p) }", Role(Rank::Owner), Code("PROJECT_NOT_FOUND"), true),
        op("grantAccess", "mutation($p: ID!) { grantAccess(projectId: $p, userId: \"zoe\", role: VIEWER) { id members { userId } } }", Role(Rank::Owner), Code("PROJECT_NOT_FOUND"), true),
        op("revokeAccess", "mutation($p: ID!) { revokeAccess(projectId: $p, userId: \"vera\") { id } }", Role(Rank::Owner), Code("PROJECT_NOT_FOUND"), true),
        op("closeSession", "mutation($s: ID!) { closeSession(id: $s) }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
        op("cleanupSessions", "mutation { cleanupSessions { sessionsRemoved } }", AnyUser, Invisible, false),
        op("execute", "mutation($s: ID!, $a: ID!) { execute(sessionId: $s, command: { renameNode: { nodeId: $a, name: \"Renamed\" } }) { version } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
        op("executeBatch", "mutation($s: ID!, $a: ID!) { executeBatch(sessionId: $s, commands: [{ renameNode: { nodeId: $a, name: \"B\" } }]) { version } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
        op("undo", "mutation($s: ID!) { undo(sessionId: $s) { version } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
        Op {
            prepare: Some("mutation($s: ID!) { undo(sessionId: $s) { version } }"),
            ..op("redo", "mutation($s: ID!) { redo(sessionId: $s) { version } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true)
        },
        op("createNode", "mutation($s: ID!, $r: ID!) { createNode(sessionId: $s, input: { parentId: $r, typeId: \"workstream\" }) { nodeId } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
        op("deleteNode", "mutation($s: ID!, $b: ID!) { deleteNode(sessionId: $s, nodeId: $b) { version } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
        op("updateProperty", "mutation($s: ID!, $a: ID!) { updateProperty(sessionId: $s, nodeId: $a, propertyId: \"lead\", value: \"Vic\") { version } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
        op("moveNode", "mutation($s: ID!, $a: ID!, $b: ID!) { moveNode(sessionId: $s, nodeId: $b, newParentId: $a) { version } }", Role(Rank::Editor), Code("SESSION_NOT_FOUND"), true),
    ]
}

fn variables(f: &Fixture) -> Value {
    json!({
        "s": f.session, "p": f.project, "r": f.root, "a": f.first, "b": f.second,
        "f": { "version": "1.0", "name": "Imported", "nodes": {} },
    })
}

/// Whether `data` shows the fixture's project or session.
fn shows_fixture(data: &Value, f: &Fixture) -> bool {
    let text = data.to_string();
    text.contains(&f.session) || text.contains(&f.project)
}

#[tokio::test]
async fn every_query_and_mutation_answers_each_kind_of_caller_as_its_role_allows_and_a_refusal_changes_nothing(
) {
    let keys = keys();
    let app = server(&keys, |_| {}).await;
    let tokens = Tokens::new(&keys);
    // Variables an operation does not declare are refused by the engine;
    // each query is sent only the variables it declares.
    for op in ops() {
        for who in EVERYONE {
            let f = fixture(&app, &tokens).await;
            if let Some(prepare) = op.prepare {
                ok(
                    &app,
                    &tokens.owner_header(),
                    prepare,
                    json!({ "s": f.session }),
                )
                .await;
            }
            let before = state(&app, &tokens, &f).await;
            let declared = variables(&f)
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| op.query.contains(&format!("${k}:")))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<serde_json::Map<_, _>>();
            let header = tokens.header(who);
            let (status, body) =
                post(&app, header.as_deref(), op.query, Value::Object(declared)).await;
            let case = format!("{} as {who:?}: {status} {body}", op.name);
            let bad_token = matches!(
                who,
                Who::Malformed | Who::BadSignature | Who::Expired | Who::WrongAudience
            );
            let refused = if bad_token {
                // A bad token is refused before anything runs, public fields included.
                assert_eq!(status, 401, "{case}");
                assert_eq!(code(&body), "UNAUTHENTICATED", "{case}");
                assert!(body.get("data").is_none_or(Value::is_null), "{case}");
                true
            } else if who == Who::NoToken {
                if op.needs == Needs::Nothing {
                    assert_eq!(status, 200, "{case}");
                    assert!(body.get("errors").is_none(), "{case}");
                    false
                } else {
                    assert_eq!(status, 401, "{case}");
                    assert_eq!(code(&body), "UNAUTHENTICATED", "{case}");
                    true
                }
            } else {
                let rank = match who {
                    Who::Viewer => Some(Rank::Viewer),
                    Who::Editor => Some(Rank::Editor),
                    Who::Owner => Some(Rank::Owner),
                    _ => None,
                };
                match (op.needs, rank) {
                    (Needs::Nothing | Needs::AnyUser, _) => {
                        assert!(body.get("errors").is_none(), "{case}");
                        false
                    }
                    (Needs::Role(_), None) => match op.hidden {
                        Hidden::Code(expected) => {
                            assert_eq!(code(&body), expected, "{case}");
                            true
                        }
                        Hidden::Invisible => {
                            assert!(body.get("errors").is_none(), "{case}");
                            assert!(
                                !shows_fixture(&body["data"], &f),
                                "a non-member must not see the fixture: {case}"
                            );
                            true
                        }
                    },
                    (Needs::Role(needed), Some(have)) if have < needed => {
                        assert_eq!(code(&body), "FORBIDDEN", "{case}");
                        let message = body["errors"][0]["message"].as_str().unwrap_or("");
                        let role = format!("{needed:?}").to_uppercase();
                        assert!(
                            message.contains(&role),
                            "FORBIDDEN names the role needed: {case}"
                        );
                        true
                    }
                    (Needs::Role(_), Some(_)) => {
                        assert_eq!(status, 200, "{case}");
                        assert!(body.get("errors").is_none(), "{case}");
                        if op.hidden == Hidden::Invisible {
                            assert!(
                                shows_fixture(&body["data"], &f),
                                "a member sees the fixture: {case}"
                            );
                        }
                        false
                    }
                }
            };
            if refused || !op.writes {
                assert_eq!(
                    state(&app, &tokens, &f).await,
                    before,
                    "nothing changed: {case}"
                );
            }
        }
    }
}

#[tokio::test]
async fn me_and_my_role_name_the_caller_and_members_list_every_role() {
    let keys = keys();
    let app = server(&keys, |_| {}).await;
    let tokens = Tokens::new(&keys);
    let f = fixture(&app, &tokens).await;
    let query =
        "query($p: ID!) { me { userId name } project(id: $p) { myRole members { userId role } } }";
    let data = ok(
        &app,
        &format!("Bearer {}", tokens.editor),
        query,
        json!({ "p": f.project }),
    )
    .await;
    assert_eq!(data["me"], json!({ "userId": "eddie", "name": "EDDIE" }));
    assert_eq!(data["project"]["myRole"], "EDITOR");
    assert_eq!(
        data["project"]["members"],
        json!([
            { "userId": "eddie", "role": "EDITOR" },
            { "userId": "olivia", "role": "OWNER" },
            { "userId": "vera", "role": "VIEWER" },
        ])
    );
}

#[tokio::test]
async fn the_last_owner_can_be_neither_removed_nor_demoted_but_a_second_owner_makes_it_possible() {
    let keys = keys();
    let app = server(&keys, |_| {}).await;
    let tokens = Tokens::new(&keys);
    let f = fixture(&app, &tokens).await;
    let owner = tokens.owner_header();
    let revoke = "mutation($p: ID!, $u: ID!) { revokeAccess(projectId: $p, userId: $u) { members { userId role } } }";
    let grant = "mutation($p: ID!, $u: ID!, $r: Role!) { grantAccess(projectId: $p, userId: $u, role: $r) { members { userId role } } }";
    let (_, body) = post(
        &app,
        Some(&owner),
        revoke,
        json!({ "p": f.project, "u": "olivia" }),
    )
    .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    let (_, body) = post(
        &app,
        Some(&owner),
        grant,
        json!({ "p": f.project, "u": "olivia", "r": "EDITOR" }),
    )
    .await;
    assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
    ok(
        &app,
        &owner,
        grant,
        json!({ "p": f.project, "u": "eddie", "r": "OWNER" }),
    )
    .await;
    let data = ok(
        &app,
        &owner,
        revoke,
        json!({ "p": f.project, "u": "olivia" }),
    )
    .await;
    assert_eq!(
        data["revokeAccess"]["members"],
        json!([{ "userId": "eddie", "role": "OWNER" }, { "userId": "vera", "role": "VIEWER" }])
    );
}

#[tokio::test]
async fn a_demoted_editors_next_command_is_forbidden_and_a_promoted_viewers_succeeds() {
    let keys = keys();
    let app = server(&keys, |_| {}).await;
    let tokens = Tokens::new(&keys);
    let f = fixture(&app, &tokens).await;
    let owner = tokens.owner_header();
    let rename = "mutation($s: ID!, $a: ID!) { execute(sessionId: $s, command: { renameNode: { nodeId: $a, name: \"X\" } }) { version } }";
    let vars = json!({ "s": f.session, "a": f.first });
    ok(
        &app,
        &format!("Bearer {}", tokens.editor),
        rename,
        vars.clone(),
    )
    .await;
    let grant = "mutation($p: ID!, $u: ID!, $r: Role!) { grantAccess(projectId: $p, userId: $u, role: $r) { id } }";
    ok(
        &app,
        &owner,
        grant,
        json!({ "p": f.project, "u": "eddie", "r": "VIEWER" }),
    )
    .await;
    ok(
        &app,
        &owner,
        grant,
        json!({ "p": f.project, "u": "vera", "r": "EDITOR" }),
    )
    .await;
    let (_, body) = post(
        &app,
        Some(&format!("Bearer {}", tokens.editor)),
        rename,
        vars.clone(),
    )
    .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    ok(&app, &format!("Bearer {}", tokens.viewer), rename, vars).await;
}

#[tokio::test]
async fn events_name_the_user_whose_command_caused_them() {
    let keys = keys();
    let app = server(&keys, |_| {}).await;
    let tokens = Tokens::new(&keys);
    let f = fixture(&app, &tokens).await;
    let data = ok(
        &app,
        &format!("Bearer {}", tokens.editor),
        "mutation($s: ID!, $a: ID!) { execute(sessionId: $s, command: { renameNode: { nodeId: $a, name: \"Y\" } }) { events { __typename userId } } }",
        json!({ "s": f.session, "a": f.first }),
    )
    .await;
    let events = data["execute"]["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["userId"] == "eddie"), "{events:?}");
}

#[tokio::test]
async fn commands_over_the_per_user_rate_are_refused_with_the_time_to_wait_and_other_users_go_on() {
    let keys = keys();
    let app = server(&keys, |c| {
        c.rate_limit = Some(1);
        c.rate_burst = Some(3);
    })
    .await;
    let tokens = Tokens::new(&keys);
    let f = fixture(&app, &tokens).await;
    let rename = "mutation($s: ID!, $a: ID!) { execute(sessionId: $s, command: { renameNode: { nodeId: $a, name: \"Z\" } }) { version } }";
    let vars = json!({ "s": f.session, "a": f.first });
    let editor = format!("Bearer {}", tokens.editor);
    let version = |body: &Value| body["data"]["execute"]["version"].as_i64();
    let mut refused = None;
    // The fixture's own commands were the owner's; the editor has a full burst of 3.
    for i in 0..4 {
        let (_, body) = post(&app, Some(&editor), rename, vars.clone()).await;
        if i < 3 {
            assert!(
                version(&body).is_some(),
                "command {i} is within the burst: {body}"
            );
        } else {
            refused = Some(body);
        }
    }
    let refused = refused.unwrap();
    assert_eq!(code(&refused), "LIMIT_EXCEEDED", "{refused}");
    let wait = refused["errors"][0]["extensions"]["retryAfterMs"]
        .as_u64()
        .unwrap();
    assert!(wait > 0 && wait <= 1000, "{refused}");
    let (_, body) = post(&app, Some(&tokens.owner_header()), rename, vars).await;
    assert!(
        version(&body).is_some(),
        "another user has its own allowance: {body}"
    );
}

#[tokio::test]
async fn a_subscription_over_sse_without_a_token_is_refused_with_401_before_the_stream_starts() {
    let keys = keys();
    let app = server(&keys, |_| {}).await;
    let tokens = Tokens::new(&keys);
    let f = fixture(&app, &tokens).await;
    let client = reqwest::Client::new();
    let body = json!({ "query": "subscription($s: ID!) { sessionEvents(sessionId: $s) { seq } }", "variables": { "s": f.session } }).to_string();
    let send = |auth: Option<String>| {
        let mut r = client
            .post(app.url("/graphql/stream"))
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .body(body.clone());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let refused = send(None).await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(code(&refused), "UNAUTHENTICATED");
    let expired = send(Some(format!("Bearer {}", tokens.expired)))
        .await
        .unwrap();
    assert_eq!(expired.status().as_u16(), 401);
    let viewer = send(Some(format!("Bearer {}", tokens.viewer)))
        .await
        .unwrap();
    assert_eq!(viewer.status().as_u16(), 200);
    let content_type = viewer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
}

#[tokio::test]
async fn a_jwks_file_verifies_tokens_by_kid() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let dir = tempfile::tempdir().unwrap();
    let mut signers = Vec::new();
    let mut jwks = Vec::new();
    for kid in ["one", "two"] {
        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        jwks.push(json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap()),
        }));
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        signers.push((kid, EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()));
    }
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({ "keys": jwks }).to_string()).unwrap();
    let app = App::start_with(|c| {
        c.in_memory = true;
        c.auth = AuthConfig {
            public_key: Some(path),
            ..AuthConfig::default()
        };
    })
    .await;
    let claims = json!({ "sub": "kim", "exp": now() + 600 });
    for (kid, key) in &signers {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(&header, &claims, key).unwrap();
        let data = ok(
            &app,
            &format!("Bearer {token}"),
            "{ me { userId } }",
            json!({}),
        )
        .await;
        assert_eq!(data["me"]["userId"], "kim", "kid {kid}");
    }
    // Key one's signature under key two's kid does not verify.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("two".into());
    let token = jsonwebtoken::encode(&header, &claims, &signers[0].1).unwrap();
    let (status, body) = post(
        &app,
        Some(&format!("Bearer {token}")),
        "{ me { userId } }",
        json!({}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn with_authentication_off_everyone_is_anonymous_and_sharing_is_refused() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let data = app
        .query(
            "mutation { createProject(templateId: \"project\", name: \"Open\") { id project { id myRole members { userId } } } }",
            json!({}),
        )
        .await;
    let project = &data["createProject"]["project"];
    assert_eq!(project["myRole"], Value::Null);
    assert_eq!(project["members"], json!([]));
    assert_eq!(
        app.query("{ me { userId } }", json!({})).await["me"],
        Value::Null
    );
    let error = app
        .error(
            "mutation($p: ID!) { grantAccess(projectId: $p, userId: \"a\", role: OWNER) { id } }",
            json!({ "p": project["id"] }),
        )
        .await;
    assert_eq!(common::code_of(&error), "BAD_USER_INPUT");
}
