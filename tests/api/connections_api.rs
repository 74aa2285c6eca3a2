//! `/api/v1/connections`: paging, sorting, filtering, lookup and kick.

use std::collections::HashSet;

use serde_json::Value;

use crate::helpers::{spawn_app, Client, TestApp};

async fn connect_many(app: &TestApp, n: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(app.connect(&format!("c{i:02}")).await);
    }
    app.wait_for_active(n as u64).await;
    clients
}

fn client_ids(page: &Value) -> Vec<String> {
    page["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn walk(app: &TestApp, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/api/v1/connections?{query}"),
            Some(c) => format!("/api/v1/connections?{query}&cursor={c}"),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        pages.push(client_ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging terminates");
    }
}

#[tokio::test]
async fn pages_cover_every_connection_once_in_age_order() {
    let app = spawn_app().await;
    let _clients = connect_many(&app, 25).await;

    let pages = walk(&app, "limit=10").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let all: Vec<String> = pages.concat();
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();
    assert_eq!(all, expected);

    let newest: Vec<String> = walk(&app, "limit=7&sort=newest").await.concat();
    assert_eq!(newest, expected.iter().rev().cloned().collect::<Vec<_>>());
}

#[tokio::test]
async fn value_sorts_page_without_duplicates_and_filter_by_client_id() {
    let app = spawn_app().await;
    let mut clients = connect_many(&app, 12).await;
    // c05 sends 3 messages, c07 sends 1: they lead the `messages` ordering.
    for (i, n) in [(5usize, 3usize), (7, 1)] {
        for _ in 0..n {
            clients[i].send("m").await;
        }
    }
    app.wait_for_stats("4 messages", |s| {
        s["global_stats"]["messages_received"] == 4
    })
    .await;

    let pages = walk(&app, "limit=5&sort=messages").await;
    let all = pages.concat();
    assert_eq!(&all[..2], ["c05", "c07"]);
    assert_eq!(all.len(), 12);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        12,
        "no duplicates"
    );

    let idle = walk(&app, "limit=20&sort=idle").await.concat();
    assert_eq!(idle.len(), 12);
    assert!(
        idle.iter().position(|c| c == "c05").unwrap() >= 10,
        "{idle:?}"
    );

    let (_, page) = app.get_json("/api/v1/connections?client_id=c03").await;
    assert_eq!(client_ids(&page), ["c03"]);
    let (_, page) = app.get_json("/api/v1/connections?client_id=nobody").await;
    assert_eq!(client_ids(&page), Vec::<String>::new());
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn malformed_queries_get_a_json_400() {
    let app = spawn_app().await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "sort=sideways",
        "cursor=garbage",
        "sort=messages&cursor=s5",
        "bogus=1",
    ] {
        let (status, body) = app.get_json(&format!("/api/v1/connections?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
    }
}

#[tokio::test]
async fn one_connection_can_be_looked_up_by_id() {
    let app = spawn_app().await;
    let _c = app.connect("alice").await;
    let stats = app.wait_for_active(1).await;
    let id = stats["connections"][0]["connection_id"].as_str().unwrap();

    let (status, conn) = app.get_json(&format!("/api/v1/connections/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(conn["client_id"], "alice");

    let (status, body) = app
        .get_json("/api/v1/connections/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = app.get_json("/api/v1/connections/not-a-uuid").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn delete_kicks_the_connection_with_admin_kick() {
    let app = spawn_app().await;
    let mut victim = app.connect("victim").await;
    let mut bystander = app.connect("bystander").await;
    let stats = app.wait_for_active(2).await;
    let id = stats["connections"][0]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(stats["connections"][0]["client_id"], "victim");

    let url = app.url(&format!("/api/v1/connections/{id}"));
    let response = app.http.delete(&url).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["closing"], "admin_kick");

    assert_eq!(victim.expect_close().await, (4003, "admin_kick".into()));
    assert_eq!(bystander.recv_text().await, "Client #victim left the chat");
    let stats = app.wait_for_active(1).await;
    assert_eq!(stats["global_stats"]["disconnects"]["admin_kick"], 1);
    let again = app.http.delete(&url).send().await.unwrap();
    assert_eq!(again.status(), 404);
}
