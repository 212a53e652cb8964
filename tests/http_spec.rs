//! GraphQL over HTTP through the real server: media types and status codes, POST-only mutations, JSON bodies only,
//! the Origin check and CORS, Automatic Persisted Queries (GET, POST, websocket), and introspection's schema description.

mod common;

use common::{App, Protocol, Ws};
use serde_json::{json, Value};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// sha256 of a query as lower-case hex, as Apollo's PersistedQueryLink sends it.
fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(common::TIMEOUT)
        .build()
        .unwrap()
}

/// POST /graphql with these headers (name, value) and body.
async fn post(app: &App, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut request = client().post(app.url("/graphql")).body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    answer(request.send().await.expect("POST succeeds")).await
}

/// GET /graphql with these URL parameters and headers.
async fn get(app: &App, params: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
    let mut request = client().get(app.url("/graphql")).query(params);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    answer(request.send().await.expect("GET succeeds")).await
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn the_response_media_type_follows_the_accept_header() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let body = r#"{"query":"{ __typename }"}"#;
    for (accept, want) in [
        (None, "application/json"),
        (Some("*/*"), "application/json"),
        (Some("application/json"), "application/json"),
        (Some(GRAPHQL_RESPONSE), GRAPHQL_RESPONSE),
        (
            Some("application/graphql-response+json, application/json;q=0.9"),
            GRAPHQL_RESPONSE,
        ),
        (
            Some("application/json, application/graphql-response+json;q=0.5"),
            "application/json",
        ),
    ] {
        let mut headers = vec![JSON];
        if let Some(a) = accept {
            headers.push(("accept", a));
        }
        let a = post(&app, &headers, body).await;
        assert_eq!(a.status, 200, "{accept:?}");
        assert_eq!(
            a.header("content-type"),
            format!("{want}; charset=utf-8"),
            "Accept {accept:?}"
        );
        assert_eq!(a.body["data"]["__typename"], "Query");
    }
    let a = post(&app, &[JSON, ("accept", "text/html")], body).await;
    assert_eq!(a.status, 406, "an Accept the server cannot meet");
}

#[tokio::test]
async fn request_errors_are_400_without_data_under_graphql_response_json_and_200_under_json() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let cases = [
        ("parse", json!({ "query": "{" })),
        (
            "validation",
            json!({ "query": "{ noSuchField8f31403dfe }" }),
        ),
        (
            "variable coercion",
            json!({ "query": "query Q($id: ID!) { __typename }", "variables": { "id": null } }),
        ),
        (
            "unknown operation",
            json!({ "query": "query A { __typename }", "operationName": "B" }),
        ),
    ];
    for (what, body) in cases {
        let body = body.to_string();
        let a = post(&app, &[JSON, ("accept", GRAPHQL_RESPONSE)], &body).await;
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert!(a.body.get("data").is_none(), "{what}: {}", a.body);
        assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
        let a = post(&app, &[JSON, ("accept", "application/json")], &body).await;
        assert_eq!(a.status, 200, "{what} under application/json: {}", a.body);
        assert!(a.body["errors"][0]["message"].is_string(), "{what}");
    }
    // A field error is not a request error: 200 with data under both types.
    let a = post(
        &app,
        &[JSON, ("accept", GRAPHQL_RESPONSE)],
        &json!({ "query": "{ session(id: \"not-a-uuid\") { id } }" }).to_string(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.get("data").is_some(), "{}", a.body);
    assert_eq!(a.body["errors"][0]["path"][0], "session");
}

#[tokio::test]
async fn malformed_requests_are_400_under_both_media_types() {
    let app = App::start_with(|c| c.in_memory = true).await;
    for accept in ["application/json", GRAPHQL_RESPONSE] {
        for body in [
            "",
            "{ \"not a JSON",
            r#"{"qeury":"{ __typename }"}"#,
            r#"{"query":{"obj":"ect"}}"#,
            r#"{"query":0}"#,
            r#"{"query":"{ __typename }","operationName":false}"#,
            r#"{"query":"{ __typename }","variables":"string"}"#,
            r#"{"query":"{ __typename }","variables":[7]}"#,
            r#"{"query":"{ __typename }","extensions":"string"}"#,
            // A member given twice: the last one counts, as in any JSON map.
            r#"{"query":"{ __typename }","query":7}"#,
            r#""just a string""#,
            "[]",
        ] {
            let a = post(&app, &[JSON, ("accept", accept)], body).await;
            assert_eq!(a.status, 400, "{accept} {body}: {}", a.body);
            assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
            assert!(
                a.header("content-type").starts_with(accept),
                "{accept} {body}"
            );
        }
        // The error names the member and what it should be.
        let a = post(
            &app,
            &[JSON, ("accept", accept)],
            r#"{"query":"{ __typename }","variables":[7]}"#,
        )
        .await;
        let message = a.body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("variables must be a map, got a list"),
            "{message}"
        );
        // A list is a batch, answered with a list, even of one request.
        let a = post(
            &app,
            &[JSON, ("accept", accept)],
            r#" [{"query":"{ __typename }"}]"#,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body[0]["data"]["__typename"], "Query", "{}", a.body);
        // null is the same as absent.
        let a = post(
            &app,
            &[JSON, ("accept", accept)],
            r#"{"query":"{ __typename }","variables":null,"operationName":null,"extensions":null}"#,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.get("errors").is_none(), "{}", a.body);
    }
}

#[tokio::test]
async fn a_post_body_must_be_json_or_it_is_refused_with_415_and_runs_nothing() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let mutation = r#"{"query":"mutation { createSession { id } }"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/graphql"),
        Some("application/json; charset=latin1"),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| vec![("content-type", c)])
            .unwrap_or_default();
        let a = post(&app, &headers, mutation).await;
        assert_eq!(a.status, 415, "{content_type:?}: {}", a.body);
        assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    }
    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await["sessions"],
        json!([]),
        "no refused POST created a session"
    );
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=\"UTF-8\"",
        "application/graphql-response+json",
    ] {
        let a = post(
            &app,
            &[("content-type", content_type)],
            r#"{"query":"{ __typename }"}"#,
        )
        .await;
        assert_eq!(a.status, 200, "{content_type}: {}", a.body);
    }
}

#[tokio::test]
async fn mutations_over_get_and_head_get_405_with_allow_post_and_run_nothing() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let mutation = "mutation { createSession { id } }";
    for accept in ["application/json", GRAPHQL_RESPONSE] {
        let a = get(&app, &[("query", mutation)], &[("accept", accept)]).await;
        assert_eq!(a.status, 405, "{}", a.body);
        assert_eq!(a.header("allow"), "POST");
        assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    }
    // The operation chosen decides: the query of a mixed document runs, its mutation does not.
    let mixed = "query Q { __typename } mutation M { createSession { id } }";
    let a = get(&app, &[("query", mixed), ("operationName", "Q")], &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = get(&app, &[("query", mixed), ("operationName", "M")], &[]).await;
    assert_eq!(a.status, 405, "{}", a.body);

    let head = |params: Vec<(&'static str, &'static str)>| {
        let url = app.url("/graphql");
        async move {
            client()
                .head(url)
                .query(&params)
                .send()
                .await
                .expect("HEAD succeeds")
        }
    };
    let r = head(vec![("query", mutation)]).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = head(vec![("query", "{ __typename }")]).await;
    assert_eq!(r.status(), 405, "HEAD runs nothing, queries neither");
    assert_eq!(r.headers()["allow"], "GET, POST");

    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await["sessions"],
        json!([]),
        "neither GET nor HEAD created a session"
    );
    let a = post(&app, &[JSON], &json!({ "query": mutation }).to_string()).await;
    assert_eq!(a.status, 200);
    assert!(a.body["data"]["createSession"]["id"].is_string());
    // Once the server has parsed (and cached) the mutation, a GET of it is still refused.
    let a = get(&app, &[("query", mutation)], &[]).await;
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the POST created a session"
    );
}

#[tokio::test]
async fn get_takes_variables_and_extensions_as_json_and_refuses_malformed_parameters() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let query = "query T($name: String!) { __type(name: $name) { name } }";
    let a = get(
        &app,
        &[("query", query), ("variables", r#"{"name":"Query"}"#)],
        &[("accept", GRAPHQL_RESPONSE)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"]["__type"]["name"], "Query");
    for params in [
        vec![("query", query), ("variables", "{not json")],
        vec![("query", query), ("variables", "[1]")],
        vec![("variables", r#"{"name":"Query"}"#)],
        vec![("query", "{ __typename }"), ("query", "{ __typename }")],
    ] {
        let a = get(&app, &params, &[]).await;
        assert_eq!(a.status, 400, "{params:?}: {}", a.body);
    }
}

async fn with_origin(app: &App, origin: &str) -> Answer {
    post(
        app,
        &[JSON, ("origin", origin)],
        r#"{"query":"mutation { createSession { id } }"}"#,
    )
    .await
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403_and_runs_nothing() {
    let app = App::start_with(|c| c.in_memory = true).await;
    for origin in [
        "https://evil.example",
        "null",
        "http://localhost.evil.example",
    ] {
        let a = with_origin(&app, origin).await;
        assert_eq!(a.status, 403, "{origin}: {}", a.body);
        assert_eq!(a.body["errors"][0]["extensions"]["code"], "FORBIDDEN");
        assert!(a.headers.get("access-control-allow-origin").is_none());
    }
    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await["sessions"],
        json!([])
    );
    // A GET and a websocket upgrade from a foreign page are refused too.
    let a = get(
        &app,
        &[("query", "{ sessions { id } }")],
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(a.status, 403);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            app.ws_url(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("the upgrade must be refused with 403, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_addressed_to_a_rebound_host_name_is_refused_on_loopback_and_runs_nothing() {
    let app = App::start_with(|c| {
        c.in_memory = true;
        c.allowed_hosts = vec!["talus.internal".to_string()];
    })
    .await;
    let port = app.addr.port();
    // DNS rebinding: the page's own name now points at 127.0.0.1, so its
    // requests are same-origin; only the Host names the page.
    let rebound = format!("evil.example:{port}");
    let origin = format!("http://{rebound}");
    let mutation = r#"{"query":"mutation { createSession { id } }"}"#;
    let a = post(
        &app,
        &[JSON, ("host", &rebound), ("origin", &origin)],
        mutation,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.body["errors"][0]["extensions"]["code"], "FORBIDDEN");
    assert!(
        a.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("--allowed-hosts"),
        "{}",
        a.body
    );
    let a = get(
        &app,
        &[("query", "{ sessions { id } }")],
        &[("host", &rebound)],
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await["sessions"],
        json!([]),
        "nothing ran"
    );
    // Loopback names, IP literals and --allowed-hosts are answered.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("talus.internal:{port}"),
    ] {
        let a = post(&app, &[JSON, ("host", &host)], mutation).await;
        assert_eq!(a.status, 200, "{host}: {}", a.body);
    }
}

#[tokio::test]
async fn the_servers_own_origin_local_dev_servers_and_configured_origins_are_allowed() {
    let app = App::start_with(|c| {
        c.in_memory = true;
        c.cors_origins = vec!["https://app.example.com".parse().unwrap()];
    })
    .await;
    let own = format!("http://{}", app.addr);
    for origin in [
        own.as_str(),
        "http://localhost:5173",
        "http://127.0.0.1:3000",
        "https://app.example.com",
    ] {
        let a = with_origin(&app, origin).await;
        assert_eq!(a.status, 200, "{origin}: {}", a.body);
        assert_eq!(a.header("access-control-allow-origin"), origin);
    }
    let a = with_origin(&app, "https://other.example.com").await;
    assert_eq!(a.status, 403);
}

#[tokio::test]
async fn a_cors_preflight_is_answered_for_allowed_origins_and_refused_for_others() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let preflight = |origin: &'static str| {
        let url = app.url("/graphql");
        async move {
            client()
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type, x-client-id",
                )
                .send()
                .await
                .expect("OPTIONS succeeds")
        }
    };
    let r = preflight("http://localhost:5173").await;
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        allowed.contains("content-type") && allowed.contains("x-client-id"),
        "{allowed}"
    );
    assert!(h.get("access-control-max-age").is_some());

    let r = preflight("https://evil.example").await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn introspection_gives_the_schema_no_description() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let data = app
        .query("{ __schema { description queryType { name } } }", json!({}))
        .await;
    assert_eq!(data["__schema"]["description"], Value::Null);
    assert_eq!(data["__schema"]["queryType"]["name"], "Query");
    assert!(
        !talus_tally::sdl().contains("\"\"\"\nschema {"),
        "schema.graphql carries no schema description either"
    );
}

const APQ_QUERY: &str = "query Apq { templates { id } }";

fn persisted(hash: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } })
}

#[tokio::test]
async fn persisted_queries_over_post_are_not_found_then_registered_then_run_by_hash() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let hash = sha256_hex(APQ_QUERY);
    let hash_only = json!({ "extensions": persisted(&hash) }).to_string();

    let a = post(&app, &[JSON], &hash_only).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["errors"][0]["message"], "PersistedQueryNotFound");
    let a = post(&app, &[JSON, ("accept", GRAPHQL_RESPONSE)], &hash_only).await;
    assert_eq!(a.status, 400, "a request error under the new media type");
    assert_eq!(a.body["errors"][0]["message"], "PersistedQueryNotFound");

    // A hash that is not the query's is refused, and registers nothing.
    let wrong = sha256_hex("query Other { templates { name } }");
    let a = post(
        &app,
        &[JSON],
        &json!({ "query": APQ_QUERY, "extensions": persisted(&wrong) }).to_string(),
    )
    .await;
    assert!(
        a.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{}",
        a.body
    );
    let a = post(
        &app,
        &[JSON],
        &json!({ "extensions": persisted(&wrong) }).to_string(),
    )
    .await;
    assert_eq!(a.body["errors"][0]["message"], "PersistedQueryNotFound");

    let a = post(
        &app,
        &[JSON],
        &json!({ "query": APQ_QUERY, "extensions": persisted(&hash) }).to_string(),
    )
    .await;
    assert!(a.body.get("errors").is_none(), "{}", a.body);
    let registered = a.body["data"].clone();
    assert!(registered["templates"].as_array().unwrap().len() >= 2);

    let a = post(&app, &[JSON], &hash_only).await;
    assert!(a.body.get("errors").is_none(), "{}", a.body);
    assert_eq!(a.body["data"], registered);

    // Two persisted queries stay apart (the parse cache keys by text, and a
    // persisted query has none).
    let other = "query Apq2 { templateErrors { file } }";
    let other_hash = sha256_hex(other);
    post(
        &app,
        &[JSON],
        &json!({ "query": other, "extensions": persisted(&other_hash) }).to_string(),
    )
    .await;
    let a = post(
        &app,
        &[JSON],
        &json!({ "extensions": persisted(&other_hash) }).to_string(),
    )
    .await;
    assert_eq!(
        a.body["data"],
        json!({ "templateErrors": [] }),
        "{}",
        a.body
    );
    let a = post(&app, &[JSON], &hash_only).await;
    assert_eq!(a.body["data"], registered);
}

#[tokio::test]
async fn persisted_queries_work_over_get_and_a_persisted_mutation_is_still_refused_over_get() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let hash = sha256_hex(APQ_QUERY);
    let ext = persisted(&hash).to_string();
    let a = get(&app, &[("extensions", &ext)], &[]).await;
    assert_eq!(
        a.body["errors"][0]["message"], "PersistedQueryNotFound",
        "{}",
        a.body
    );
    let a = get(&app, &[("query", APQ_QUERY), ("extensions", &ext)], &[]).await;
    assert!(a.body.get("errors").is_none(), "{}", a.body);
    let a = get(&app, &[("extensions", &ext)], &[]).await;
    assert_eq!(a.status, 200);
    assert!(a.body["data"]["templates"].is_array(), "{}", a.body);

    // A mutation registered over POST cannot be run by its hash over GET.
    let mutation = "mutation M { createSession { id } }";
    let m_hash = sha256_hex(mutation);
    let a = post(
        &app,
        &[JSON],
        &json!({ "query": mutation, "extensions": persisted(&m_hash) }).to_string(),
    )
    .await;
    assert!(
        a.body["data"]["createSession"]["id"].is_string(),
        "{}",
        a.body
    );
    let a = get(
        &app,
        &[("extensions", &persisted(&m_hash).to_string())],
        &[],
    )
    .await;
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(a.header("allow"), "POST");
    assert_eq!(
        app.query("{ sessions { id } }", json!({})).await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the POST created a session"
    );
}

#[tokio::test]
async fn a_query_longer_than_the_apq_limit_runs_but_is_not_remembered() {
    let app = App::start_with(|c| {
        c.in_memory = true;
        c.limits.apq_max_query_bytes = 40;
    })
    .await;
    let long = "query LongEnoughToPassTheLimit { templates { id name } }";
    let hash = sha256_hex(long);
    let a = post(
        &app,
        &[JSON],
        &json!({ "query": long, "extensions": persisted(&hash) }).to_string(),
    )
    .await;
    assert!(a.body["data"]["templates"].is_array(), "{}", a.body);
    let a = post(
        &app,
        &[JSON],
        &json!({ "extensions": persisted(&hash) }).to_string(),
    )
    .await;
    assert_eq!(a.body["errors"][0]["message"], "PersistedQueryNotFound");
}

async fn ws_message(ws: &mut Ws, id: &str) -> Value {
    ws.message(id).await
}

#[tokio::test]
async fn persisted_queries_work_on_websockets_for_queries_and_subscriptions() {
    let app = App::start_with(|c| c.in_memory = true).await;
    let mut ws = app
        .connect(
            Protocol::TransportWs,
            json!({ "clientId": "apq", "name": "apq" }),
        )
        .await;
    let hash = sha256_hex(APQ_QUERY);
    ws.send(
        json!({ "id": "1", "type": "subscribe", "payload": { "extensions": persisted(&hash) } }),
    )
    .await;
    let m = ws_message(&mut ws, "1").await;
    let errors = if m["type"] == "error" {
        &m["payload"]
    } else {
        &m["payload"]["errors"]
    };
    assert_eq!(errors[0]["message"], "PersistedQueryNotFound", "{m}");

    ws.send(json!({ "id": "2", "type": "subscribe", "payload": { "query": APQ_QUERY, "extensions": persisted(&hash) } }))
        .await;
    let m = ws_message(&mut ws, "2").await;
    assert!(m["payload"]["data"]["templates"].is_array(), "{m}");
    ws.send(
        json!({ "id": "3", "type": "subscribe", "payload": { "extensions": persisted(&hash) } }),
    )
    .await;
    let m = ws_message(&mut ws, "3").await;
    assert!(m["payload"]["data"]["templates"].is_array(), "{m}");

    // A session-events subscription registered and then run by its hash.
    let (session, _root) = app.create_project("restomod", "APQ").await;
    let subscription =
        "subscription E($s: ID!) { sessionEvents(sessionId: $s, since: 0) { __typename seq } }";
    let s_hash = sha256_hex(subscription);
    ws.send(json!({ "id": "4", "type": "subscribe", "payload": {
        "query": subscription, "variables": { "s": session }, "extensions": persisted(&s_hash) } }))
        .await;
    let first = ws.next_event("4").await;
    assert_eq!(first["seq"], 1, "{first}");
    ws.send(json!({ "id": "5", "type": "subscribe", "payload": {
        "variables": { "s": session }, "extensions": persisted(&s_hash) } }))
        .await;
    let replayed = ws.next_event("5").await;
    assert_eq!(replayed, first, "the hash runs the same subscription");
}
