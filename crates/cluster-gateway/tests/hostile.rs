//! Hostile clients: each attack runs against a gateway while a well-behaved
//! client keeps sending requests, which must all succeed. Figures (the
//! well-behaved client's p99 against its baseline) come from
//! `cargo xtask chaos`; these tests check the behaviour: every bad client
//! gets a clear answer or a closed connection, and nothing leaks.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_sim::hostile::{
    WellBehavedClient, disconnect_mid_stream, idle_connections, post_head, raw_request, slow_loris,
};
use support::{EndlessNode, gateway, wait_until};

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

fn good_client(base: &str) -> WellBehavedClient {
    WellBehavedClient::start(
        format!("{base}/v1/chat/completions"),
        CHAT.to_owned(),
        None,
        Duration::from_millis(5),
    )
}

async fn assert_unharmed(client: WellBehavedClient) {
    let report = client.stop().await;
    assert!(report.requests > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_heads_and_bodies_are_cut_at_their_timeouts() {
    let node = EndlessNode::start().await;
    let (base, gw) = gateway(&node.url, |s| {
        s.header_read_timeout = Duration::from_millis(500);
        s.body_read_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = addr_of(&base);
    let good = good_client(&base);
    // Heads: a header line one byte at a time, never finished.
    let heads = slow_loris(
        addr,
        100,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ".to_vec(),
        b"abcdefgh",
        Duration::from_millis(50),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(heads.connections, 100);
    assert_eq!(heads.closed_by_server, 100, "{heads:?}");
    // Bodies: a complete head, then a body one byte at a time: 408.
    let mut prefix = post_head("/v1/chat/completions", 1000, "");
    prefix.extend_from_slice(b"{\"messages\": [");
    let bodies = slow_loris(
        addr,
        100,
        prefix,
        b" ",
        Duration::from_millis(50),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(bodies.closed_by_server, 100, "{bodies:?}");
    assert!(bodies.statuses.iter().all(|&s| s == 408), "{bodies:?}");
    // A connection that sends nothing at all is closed too.
    let flood = idle_connections(addr, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(flood.refused.is_empty());
    let idle = flood.open;
    wait_until("idle connections closed", Duration::from_secs(20), || {
        gw.connections().open() <= 1
    })
    .await;
    drop(idle);
    assert_unharmed(good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_and_a_connection_limit() {
    let node = EndlessNode::start().await;
    let (base, gw) = gateway(&node.url, |_| {}).await;
    let addr = addr_of(&base);
    let good = good_client(&base);
    // Under the default limit (8192) every idle connection is held.
    let flood = idle_connections(addr, 5000, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!((flood.open.len(), flood.refused.len()), (5000, 0));
    let idle = flood.open;
    wait_until("5000 connections open", Duration::from_secs(20), || {
        gw.connections().open() >= 5000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(idle);
    wait_until("idle connections gone", Duration::from_secs(20), || {
        gw.connections().open() <= 1
    })
    .await;
    assert_unharmed(good).await;

    // With a limit of 20, connections beyond it get a clear 503; the
    // well-behaved client's kept-alive connection is unaffected.
    let (base, gw) = gateway(&node.url, |s| s.max_connections = 20).await;
    let good = good_client(&base);
    wait_until("good client connected", Duration::from_secs(10), || {
        gw.connections().open() == 1
    })
    .await;
    let flood = idle_connections(addr_of(&base), 50, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!((flood.open.len(), flood.refused.len()), (19, 31));
    let idle = flood.open;
    for answer in &flood.refused {
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(
            answer.body_text().contains("connection_limit"),
            "{answer:?}"
        );
    }
    assert_eq!(gw.connections().refused(), 31);
    drop(idle);
    assert_unharmed(good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_huge_requests_get_clear_4xx() {
    let node = EndlessNode::start().await;
    let (base, _gw) = gateway(&node.url, |_| {}).await;
    let addr = addr_of(&base);
    let good = good_client(&base);
    let wait = Duration::from_secs(20);

    // 100 KB of headers: 431.
    let big_header = format!("x-big: {}\r\n", "a".repeat(100 * 1024));
    let a = raw_request(
        addr,
        &post_head("/v1/chat/completions", CHAT.len(), &big_header),
        CHAT.as_bytes(),
        wait,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 431, "{a:?}");

    // 33 MB, declared: 413 before the body is read.
    let body = vec![b' '; 33 * 1024 * 1024];
    let a = raw_request(
        addr,
        &post_head("/v1/chat/completions", body.len(), ""),
        &[],
        wait,
    )
    .await
    .unwrap();
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.body_text().contains("body_too_large"));
    // 33 MB, chunked (no length): 413 once the limit is crossed.
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut chunked = Vec::with_capacity(body.len() + 1024);
    for piece in body.chunks(1 << 20) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let a = raw_request(addr, head, &chunked, wait).await.unwrap();
    assert_eq!(a.status, 413, "{a:?}");

    // Invalid UTF-8 and JSON nested 100,000 deep: 400, and the gateway lives.
    for body in [
        b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\xfd\"}]}"
            .to_vec(),
        [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
        format!(
            "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":{}1{}}}]}}",
            "[".repeat(50_000),
            "]".repeat(50_000)
        )
        .into_bytes(),
    ] {
        let a = raw_request(
            addr,
            &post_head("/v1/chat/completions", body.len(), ""),
            &body,
            wait,
        )
        .await
        .unwrap();
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.bytes));
        assert!(a.body_text().contains("invalid_body"));
    }
    assert_unharmed(good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_stream_cancel_upstream_and_leak_nothing() {
    let node = EndlessNode::start().await;
    let (base, gw) = gateway(&node.url, |_| {}).await;
    let addr = addr_of(&base);
    let good = good_client(&base);
    let runtime = tokio::runtime::Handle::current();
    // Warm up (pooled connections, the good client's connection), then
    // take the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_before = cluster_gateway::open_fds().unwrap();
    let tasks_before = runtime.metrics().num_alive_tasks();
    for round in 1..=3 {
        let started = disconnect_mid_stream(
            addr,
            50,
            post_head("/v1/chat/completions", STREAM.len(), ""),
            STREAM.as_bytes().to_vec(),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(started, 50);
        // Every upstream stream is cancelled: the node sees its client go.
        wait_until(
            "upstream streams cancelled",
            Duration::from_secs(20),
            || node.streams_ended.load(Ordering::SeqCst) == 50 * round,
        )
        .await;
    }
    assert_eq!(node.streams_started.load(Ordering::SeqCst), 150);
    wait_until("client connections closed", Duration::from_secs(20), || {
        gw.connections().open() <= 1
    })
    .await;
    // File descriptors and tasks return to the baseline. Slack: this
    // process holds both ends of every connection, and the node client may
    // keep a few more pooled connections to the node than before (two fds
    // and a task or two each); a leak of the 150 streams would be far more.
    let fds = || cluster_gateway::open_fds().unwrap();
    let tasks = || runtime.metrics().num_alive_tasks();
    let settled = tokio::time::timeout(Duration::from_secs(30), async {
        while fds() > fds_before + 8 || tasks() > tasks_before + 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "fds {} (before {fds_before}), tasks {} (before {tasks_before})",
        fds(),
        tasks()
    );
    assert_unharmed(good).await;
}
