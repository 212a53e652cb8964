//! Three real server processes on one private PostgreSQL: fan-out across
//! instances, commands forwarded to the owner, resume on another instance,
//! presence counted on every instance.
//!
//! Without PostgreSQL binaries each test says it was skipped and how to
//! install them; with `TALUS_REQUIRE_POSTGRES=1` it fails.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{eventually, int_of, str_of, try_create_node, Http, Protocol, Ws};
use serde_json::{json, Value};

/// The cluster, or an early return after the skip notice.
macro_rules! cluster_or_skip {
    () => {
        match common::postgres::cluster() {
            Some(c) => c,
            None => return,
        }
    };
}

/// An instance of the cluster on the database at `url`.
fn instance(url: &str, name: &str) -> binary::Server {
    binary::spawn_with(&[
        "--database-url".as_ref(),
        url.as_ref(),
        "--instance-id".as_ref(),
        name.as_ref(),
        "--lease-secs".as_ref(),
        "2".as_ref(),
    ])
}

/// A graphql-transport-ws connection to `server` as client `id`.
async fn ws(server: &binary::Server, id: &str) -> Ws {
    let url = format!("{}/graphql", server.url.replacen("http://", "ws://", 1));
    let mut ws = Ws::open(&url, Protocol::TransportWs.subprotocol()).await;
    ws.client_id = Some(id.to_string());
    ws.init(json!({ "clientId": id, "name": id })).await;
    ws
}

/// Events of subscription `id` until (and including) seq `upto`; their seqs.
async fn seqs_until(ws: &mut Ws, id: &str, upto: i64) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.last().copied().unwrap_or(-1) < upto {
        let event = ws.next_event(id).await;
        assert_ne!(event["__typename"], "ResyncRequired", "{event}");
        seqs.push(int_of(&event["seq"]));
    }
    seqs
}

fn consecutive(seqs: &[i64], from: i64, to: i64) {
    let want: Vec<i64> = (from..=to).collect();
    assert_eq!(seqs, want.as_slice(), "every event once, in order");
}

fn node_ids(graph: &Value) -> HashSet<String> {
    graph["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| str_of(&n["id"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_three_instances_and_subscribers_on_each_see_one_gap_free_order() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let servers = [
        instance(&url, "a"),
        instance(&url, "b"),
        instance(&url, "c"),
    ];
    let http: Vec<Http> = servers.iter().map(|s| Http::new(&s.url)).collect();
    let (session, root) = http[0].create_project("restomod", "Bus").await;
    let start = http[0].last_seq(&session).await;

    // A subscriber on each instance, from `start` on.
    let mut subscribers = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let mut ws = ws(server, &format!("sub-{i}")).await;
        ws.subscribe_events("e", &session, Some(start)).await;
        subscribers.push(ws);
    }
    // A subscriber from now on (no `since`) on a follower sees its own join.
    for (i, server) in servers.iter().enumerate().skip(1) {
        let mut live = ws(server, &format!("live-{i}")).await;
        live.subscribe_events("l", &session, None).await;
        live.wait_joined("l").await;
    }
    // Presence is cluster-wide: the owner counts the clients of b and c.
    eventually("three active clients on every instance", async || {
        let mut all = true;
        for h in &http {
            all &= int_of(&h.session(&session).await["activeClients"]) == 3;
        }
        all
    })
    .await;

    // Concurrent writers, one on each instance; b and c forward to a.
    let writers: Vec<_> = http
        .iter()
        .enumerate()
        .map(|(w, h)| {
            let (h, session, root) = (h.clone(), session.clone(), root.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..12 {
                    ids.push(
                        h.create_node(&session, Some(&root), "phase", &format!("w{w}-{i}"))
                            .await,
                    );
                }
                ids
            })
        })
        .collect();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let last = http[0].last_seq(&session).await;
    for (i, ws) in subscribers.iter_mut().enumerate() {
        let seqs = seqs_until(ws, "e", last).await;
        consecutive(&seqs, start + 1, last);
        println!(
            "subscriber on instance {i}: {} events, once each, in order",
            seqs.len()
        );
    }

    // One graph everywhere, holding every acknowledged node, equal to what a
    // fresh instance replays from the store.
    let graph = http[0].graph(&session).await;
    let ids = node_ids(&graph);
    for id in &acked {
        assert!(ids.contains(id), "acknowledged node {id} is in the graph");
    }
    assert_eq!(int_of(&graph["nodeCount"]), 1 + 36);
    for h in &http[1..] {
        assert_eq!(
            h.graph(&session).await,
            graph,
            "a follower reads committed state"
        );
        assert_eq!(h.last_seq(&session).await, last);
    }
    let fresh = instance(&url, "d");
    let replayed = Http::new(&fresh.url).graph(&session).await;
    assert_eq!(replayed, graph, "equal to a replay of the log");

    // Undo on a follower undoes the newest step, once.
    let undone = http[2].undo(&session).await;
    assert_eq!(undone["canRedo"], true);
    assert_eq!(int_of(&http[0].graph(&session).await["nodeCount"]), 36);
    http[1].redo(&session).await;
    assert_eq!(
        int_of(&http[1].graph(&session).await["nodeCount"]),
        37,
        "b reads its own write"
    );
    // Another follower has it once its doorbell rang.
    eventually("c follows the redo", async || {
        int_of(&http[2].graph(&session).await["nodeCount"]) == 37
    })
    .await;

    // Resume on b after dropping from a: exactly the missed events, then live ones.
    let mut on_a = subscribers.remove(0);
    let seen = http[0].last_seq(&session).await;
    let _ = seqs_until(&mut on_a, "e", seen).await;
    drop(on_a);
    for i in 0..5 {
        http[0]
            .create_node(&session, Some(&root), "phase", &format!("late-{i}"))
            .await;
    }
    let mut resumed = ws(&servers[1], "sub-0").await;
    resumed.subscribe_events("r", &session, Some(seen)).await;
    http[2]
        .create_node(&session, Some(&root), "phase", "live")
        .await;
    let now = http[0].last_seq(&session).await;
    let seqs = seqs_until(&mut resumed, "r", now).await;
    consecutive(&seqs, seen + 1, now);
    drop(resumed);
    drop(subscribers);
    eventually("every client's leave reaches the owner", async || {
        int_of(&http[0].session(&session).await["activeClients"]) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_of_the_owner_a_follower_takes_over_in_place_and_its_subscribers_miss_nothing(
) {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let a = instance(&url, "a");
    let followers = [instance(&url, "b"), instance(&url, "c")];
    let a_url = a.url.clone();
    let urls: Vec<String> = followers.iter().map(|s| s.url.clone()).collect();
    let (session, root) = Http::new(&a_url).create_project("restomod", "Bus").await;
    let start = Http::new(&a_url).last_seq(&session).await;
    let mut subscribers = Vec::new();
    for (i, server) in followers.iter().enumerate() {
        let mut ws = ws(server, &format!("f-{i}")).await;
        ws.subscribe_events("e", &session, Some(start)).await;
        subscribers.push(ws);
    }

    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let a_dead = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_after = std::sync::Arc::new(parking_lot::Mutex::new(None::<Instant>));
    let deadline = Instant::now() + Duration::from_secs(40);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (acked, a_dead, first_after) = (acked.clone(), a_dead.clone(), first_after.clone());
            let (session, root, a_url, urls) =
                (session.clone(), root.clone(), a_url.clone(), urls.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for i in 0..5 {
                    let name = format!("w{w}-{i}");
                    loop {
                        assert!(
                            Instant::now() < deadline,
                            "{name} is acknowledged within 40 s"
                        );
                        let dead = a_dead.load(std::sync::atomic::Ordering::SeqCst);
                        // A third of the writers on a while it lives, the others on b and c.
                        let base = if !dead && w % 3 == 0 {
                            &a_url
                        } else {
                            &urls[w % 2]
                        };
                        match try_create_node(&client, base, &session, &root, &name).await {
                            Ok(Some(id)) => {
                                if dead {
                                    first_after.lock().get_or_insert_with(Instant::now);
                                }
                                acked.lock().push(id);
                                break;
                            }
                            Ok(None) | Err(_) => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                        }
                    }
                }
            })
        })
        .collect();
    while acked.lock().len() < 24 {
        assert!(Instant::now() < deadline, "the writes are acknowledged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    a.kill();
    a_dead.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let takeover = first_after
        .lock()
        .expect("a command committed after the kill")
        - killed_at;
    println!("failover: {takeover:.2?} from SIGKILL of the owner to the first commit on a follower (lease 2 s)");
    assert!(
        takeover < Duration::from_secs(8),
        "taken over within a few seconds: {takeover:?}"
    );

    let hb = Http::new(&urls[0]);
    let graph = hb.graph(&session).await;
    let ids = node_ids(&graph);
    let acked = acked.lock().clone();
    assert_eq!(acked.len(), 80);
    for id in &acked {
        assert!(ids.contains(id), "acknowledged node {id} is in the graph");
    }
    // Both followers' subscribers stayed subscribed through the takeover and
    // got every event once, in order.
    let last = hb.last_seq(&session).await;
    for ws in subscribers.iter_mut() {
        let seqs = seqs_until(ws, "e", last).await;
        consecutive(&seqs, start + 1, last);
    }
    let hc = Http::new(&urls[1]);
    eventually("c reads what b committed", async || {
        hc.graph(&session).await == graph
    })
    .await;
    let undone = hc.undo(&session).await;
    assert_eq!(undone["canRedo"], true);
    let redone = hb.redo(&session).await;
    assert_eq!(redone["canRedo"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_of_an_instance_killed_with_sigkill_stop_being_counted_by_the_owner() {
    let pg = cluster_or_skip!();
    let url = pg.database().await;
    let a = instance(&url, "a");
    let b = instance(&url, "b");
    let c = instance(&url, "c");
    let owner = Http::new(&a.url);
    let (session, root) = owner.create_project("restomod", "Bus").await;
    let mut on_b = Vec::new();
    for i in 0..2 {
        let mut ws = ws(&b, &format!("b-{i}")).await;
        ws.subscribe_events("e", &session, None).await;
        on_b.push(ws);
    }
    let mut on_c = ws(&c, "c-0").await;
    on_c.subscribe_events("e", &session, None).await;
    let active = async || int_of(&owner.session(&session).await["activeClients"]);
    eventually("the owner counts the clients of b and c", async || {
        active().await == 3
    })
    .await;

    // b dies: nothing forwards its clients' leaves; its presence lease
    // expires (2 s) and the owner lets them go. c's client stays.
    b.kill();
    eventually("the owner no longer counts b's clients", async || {
        active().await == 1
    })
    .await;
    // c's subscriber sees the leaves and is still served.
    owner
        .create_node(&session, Some(&root), "phase", "after b")
        .await;
    let last = owner.last_seq(&session).await;
    let mut left = 0;
    let mut seq = 0;
    // The second leave may be folded into a PresenceChanged at the end of the
    // presence interval, after the node's events.
    while seq < last || left < 2 {
        let event = on_c.next_event("e").await;
        seq = int_of(&event["seq"]);
        match event["__typename"].as_str() {
            Some("ClientLeft") => left += 1,
            Some("PresenceChanged") => left += int_of(&event["leftCount"]),
            _ => {}
        }
    }
    assert_eq!(left, 2, "c's subscriber saw b's two clients leave");
    assert_eq!(
        int_of(&Http::new(&c.url).session(&session).await["activeClients"]),
        1,
        "c counts as the owner does"
    );
    drop(a);
}
