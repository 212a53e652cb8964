//! The legacy `graphql-ws` subprotocol (start / data / stop) next to graphql-transport-ws, and subprotocol negotiation.

mod common;

use common::{assert_consecutive, code_of, int_of, types, App, Protocol, Ws, RESULT_FIELDS};
use serde_json::json;

#[tokio::test]
async fn the_legacy_subprotocol_delivers_the_same_events_as_graphql_transport_ws() {
    let app = App::start().await;
    let (session, root) = app.create_project("restomod", "Land Rover").await;
    let mut modern = app.ws_as("modern", "Modern").await;
    modern.subscribe_events("m", &session, None).await;
    modern.wait_joined("m").await;
    let mut legacy = app
        .connect(
            Protocol::LegacyWs,
            json!({ "clientId": "legacy", "name": "Legacy" }),
        )
        .await;
    legacy.subscribe_events("l", &session, None).await;
    let joined = legacy.wait_joined("l").await;
    assert_eq!(
        joined["client"],
        json!({ "clientId": "legacy", "name": "Legacy" })
    );
    assert_eq!(modern.next_event("m").await, joined);

    // A mutation over the legacy connection carries its clientId.
    let created = legacy
        .operation(
            &format!("mutation($s: ID!, $r: ID!) {{ createNode(sessionId: $s, input: {{ parentId: $r, typeId: \"phase\" }}) {{ {RESULT_FIELDS} }} }}"),
            json!({ "s": session, "r": root }),
        )
        .await;
    assert_eq!(created["createNode"]["events"][0]["clientId"], "legacy");
    app.update_property(&session, &root, "vin", json!("SALLD"))
        .await;
    app.error(
        "mutation($s: ID!, $r: ID!) { updateProperty(sessionId: $s, nodeId: $r, propertyId: \"budget\", value: \"a lot\") { version } }",
        json!({ "s": session, "r": root }),
    )
    .await;
    app.undo(&session).await;
    let last = int_of(&app.redo(&session).await["events"][1]["seq"]);

    let from_legacy = legacy.events_through("l", last).await;
    let from_modern = modern.events_through("m", last).await;
    assert_eq!(from_legacy, from_modern);
    assert_consecutive(&from_legacy, int_of(&joined["seq"]) + 1);
    assert_eq!(
        types(&from_legacy),
        [
            "CommandExecuting",
            "NodeCreated",
            "CommandExecuted",
            "CommandExecuting",
            "PropertyChanged",
            "CommandExecuted",
            "CommandExecuting",
            "CommandFailed",
            "PropertyChanged",
            "CommandUndone",
            "PropertyChanged",
            "CommandRedone",
        ]
    );
    assert_eq!(from_legacy[0]["clientId"], "legacy");

    // `stop` ends the legacy subscription with `complete`, and the client leaves.
    legacy.unsubscribe("l").await;
    let left = modern.next_event("m").await;
    assert_eq!(left["__typename"], "ClientLeft");
    assert_eq!(left["client"]["clientId"], "legacy");
    assert_eq!(left["activeClients"], 1);
}

#[tokio::test]
async fn the_legacy_subprotocol_reports_a_refused_subscription_as_data_with_errors() {
    let app = App::start().await;
    let mut legacy = app.connect(Protocol::LegacyWs, json!({})).await;
    legacy
        .subscribe_events("x", &common::random_id(), None)
        .await;
    let error = legacy.next_error("x").await;
    assert_eq!(code_of(&error), "SESSION_NOT_FOUND");
    legacy.expect_complete("x").await;
}

#[tokio::test]
async fn a_client_offering_both_subprotocols_is_answered_in_the_one_the_server_names() {
    let app = App::start().await;
    let (session, _) = app.create_project("restomod", "Both").await;
    for offer in [
        "graphql-ws, graphql-transport-ws",
        "graphql-transport-ws, graphql-ws",
    ] {
        // `Ws::open` speaks whatever the handshake answer names.
        let mut ws = Ws::open(&app.ws_url(), offer).await;
        assert!(
            ws.negotiated.is_some(),
            "the server names a subprotocol for {offer}"
        );
        ws.client_id = Some(common::fresh_client_id("both"));
        let init = json!({ "clientId": ws.client_id });
        ws.init(init).await;
        ws.subscribe_events("e", &session, None).await;
        ws.wait_joined("e").await;
        ws.close().await;
    }
}

#[tokio::test]
async fn a_websocket_without_a_graphql_subprotocol_is_refused() {
    let app = App::start().await;
    for offer in ["", "chat"] {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                app.ws_url(),
            )
            .unwrap();
        if !offer.is_empty() {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", offer.parse().unwrap());
        }
        let refused = tokio_tungstenite::connect_async(request).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400)
            }
            Err(e) => panic!("expected an HTTP 400, got {e}"),
            Ok(_) => panic!("a websocket without a GraphQL subprotocol was accepted"),
        }
    }
}
