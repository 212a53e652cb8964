//! The plain HTTP routes: health, the playground page and the SDL.

mod common;

use common::App;

#[tokio::test]
async fn healthz_answers_200() {
    let app = App::start().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_root_serves_the_playground_page() {
    let app = App::start().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    assert!(
        page.to_lowercase().contains("<!doctype html"),
        "an HTML page"
    );
    assert!(page.contains("<script"), "with the playground's script");
}

#[tokio::test]
async fn schema_graphql_serves_the_sdl_of_the_running_schema() {
    let app = App::start().await;
    let response = app.get("/schema.graphql").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let sdl = response.text().await.unwrap();
    assert_eq!(sdl, talus_tally::sdl());
    assert!(sdl.contains("sessionEvents(sessionId: ID!, since: Int): SessionEvent!"));
}

#[tokio::test]
async fn an_unknown_path_is_404() {
    let app = App::start().await;
    assert_eq!(app.get("/nope").await.status(), 404);
}
