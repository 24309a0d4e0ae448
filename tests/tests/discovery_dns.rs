//! DNS SRV discovery against a real dnsmasq on 127.0.0.1, with nodes that
//! are real HTTP servers answering `GET /v1/models`.
#![allow(clippy::unwrap_used)]

mod discovery_support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use cluster_discovery::{
    ClusterDiscovery, DiscoveryError, DiscoveryEvent, DiscoverySource, DnsSource, DnsSourceConfig,
    NodeOrigin, SrvPriorities,
};
use cluster_tests::dns::{DnsZone, Dnsmasq};
use discovery_support::{Answer, ModelsStub, drain, next_event};

const SRV: &str = "_mlx._tcp.cluster.test";
const WAIT: Duration = Duration::from_secs(30);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn target(name: &str) -> String {
    format!("{name}.cluster.test")
}

/// A zone with one SRV record per `(name, port, priority, weight)`, every
/// target at 127.0.0.1.
fn zone(nodes: &[(&str, u16, u16, u16)]) -> DnsZone {
    let mut zone = DnsZone::new("cluster.test");
    for (name, port, priority, weight) in nodes {
        zone = zone
            .srv(SRV, &target(name), *port, *priority, *weight)
            .host(&target(name), LOCALHOST);
    }
    zone
}

fn config(dns: &Dnsmasq) -> DnsSourceConfig {
    let mut config = DnsSourceConfig::new(SRV).nameserver(dns.addr());
    config.query_timeout = Duration::from_millis(500);
    config.attempts = 1;
    config.min_refresh = Duration::from_secs(1);
    config.max_refresh = Duration::from_secs(60);
    config
}

fn discovery(dns: &Dnsmasq) -> ClusterDiscovery {
    let source = DnsSource::new(config(dns)).unwrap();
    ClusterDiscovery::builder(Arc::new(source))
        .validation_timeout(Duration::from_secs(5))
        .build()
}

#[tokio::test]
async fn srv_records_become_validated_nodes() {
    let a = ModelsStub::start(Answer::model("model-a")).await;
    let b = ModelsStub::start(Answer::Models(vec!["model-b".into(), "model-b2".into()])).await;
    let backup = ModelsStub::start(Answer::model("backup")).await;
    let dns = Dnsmasq::start(zone(&[
        ("node-a", a.port(), 10, 5),
        ("node-b", b.port(), 10, 0),
        ("node-c", backup.port(), 20, 1),
    ]))
    .await
    .unwrap();

    let discovery = discovery(&dns);
    let mut rx = discovery.subscribe();
    let report = discovery.start().await.unwrap();
    let id_a = format!("node-a.cluster.test:{}", a.port());
    let id_b = format!("node-b.cluster.test:{}", b.port());
    assert!(report.error.is_none(), "{:?}\n{}", report.error, dns.log());
    assert_eq!(
        report
            .discovered
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        [id_a.clone(), id_b.clone()]
    );
    // The records' TTL (30 s) sets the next refresh.
    assert_eq!(report.next_refresh, Duration::from_secs(30));

    let node_a = discovery.node(&id_a).unwrap();
    assert_eq!(node_a.url(), a.url());
    assert_eq!(node_a.models, ["model-a"]);
    assert_eq!(node_a.spec().weight, 5);
    assert_eq!(node_a.spec().tags["srv.priority"], "10");
    assert_eq!(
        node_a.node.origin,
        NodeOrigin::Dns {
            service: format!("{SRV}."),
            target: format!("{}.", target("node-a")),
            port: a.port(),
            priority: 10,
            weight: 5,
        }
    );
    let node_b = discovery.node(&id_b).unwrap();
    assert_eq!(node_b.spec().weight, 1, "SRV weight 0 becomes 1");
    assert_eq!(node_b.models, ["model-b", "model-b2"]);
    // The priority-20 record is a backup: not used, not even validated.
    assert_eq!(discovery.nodes().len(), 2);
    assert_eq!(backup.requests(), 0);
    assert_eq!(drain(&mut rx), [format!("+{id_a}"), format!("+{id_b}")]);

    // The targets' addresses came from the additional section: dnsmasq saw
    // the SRV query and no A/AAAA query.
    let queries = dns.queries();
    assert!(
        queries.iter().any(|q| q.starts_with("query[SRV]")),
        "{queries:?}"
    );
    assert!(
        !queries
            .iter()
            .any(|q| q.starts_with("query[A]") || q.starts_with("query[AAAA]")),
        "{queries:?}"
    );
    discovery.stop().await;
}

#[tokio::test]
async fn records_added_and_removed_at_run_time() {
    let a = ModelsStub::start(Answer::model("m")).await;
    let b = ModelsStub::start(Answer::model("m")).await;
    let c = ModelsStub::start(Answer::model("m")).await;
    let mut dns = Dnsmasq::start(zone(&[
        ("node-a", a.port(), 10, 1),
        ("node-b", b.port(), 10, 1),
    ]))
    .await
    .unwrap();
    let discovery = discovery(&dns);
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx).len(), 2);

    // node-a leaves, node-c joins, node-b's weight changes.
    dns.replace_zone(zone(&[
        ("node-b", b.port(), 10, 7),
        ("node-c", c.port(), 10, 1),
    ]))
    .await
    .unwrap();
    let report = discovery.refresh_now().await;
    assert!(report.error.is_none(), "{:?}", report.error);
    let lost = next_event(&mut rx, WAIT).await;
    assert!(
        matches!(&lost, DiscoveryEvent::Lost(n) if n.id().as_str() == format!("node-a.cluster.test:{}", a.port())),
        "{lost:?}"
    );
    match next_event(&mut rx, WAIT).await {
        DiscoveryEvent::Updated { previous, current } => {
            assert_eq!((previous.spec().weight, current.spec().weight), (1, 7));
        }
        other => panic!("expected Updated, got {other:?}"),
    }
    let found = next_event(&mut rx, WAIT).await;
    assert!(
        matches!(&found, DiscoveryEvent::Discovered(n) if n.url() == c.url()),
        "{found:?}"
    );
    assert_eq!(discovery.nodes().len(), 2);

    // Everything removed: the name is gone (NXDOMAIN) — an error, not an
    // empty cluster.
    dns.replace_zone(DnsZone::new("cluster.test"))
        .await
        .unwrap();
    let report = discovery.refresh_now().await;
    assert_eq!(
        report.error.as_ref().map(|e| e.code()),
        Some("dns_nxdomain")
    );
    assert_eq!(discovery.nodes().len(), 2);
    discovery.stop().await;
}

#[tokio::test]
async fn a_stopped_server_keeps_the_last_snapshot_and_reports_an_error() {
    let a = ModelsStub::start(Answer::model("m")).await;
    let mut dns = Dnsmasq::start(zone(&[("node-a", a.port(), 10, 1)]))
        .await
        .unwrap();
    let discovery = discovery(&dns);
    let mut rx = discovery.subscribe();
    discovery.start().await.unwrap();
    assert_eq!(drain(&mut rx).len(), 1);

    dns.stop().await.unwrap();
    let report = discovery.refresh_now().await;
    let error = report.error.expect("a DNS error");
    assert_eq!(error.code(), "dns_lookup", "{error}");
    assert!(error.to_string().contains(SRV), "{error}");
    assert_eq!(discovery.nodes().len(), 1, "the last good snapshot is kept");
    assert_eq!(report.next_refresh, discovery.options().refresh_interval);
    match next_event(&mut rx, WAIT).await {
        DiscoveryEvent::Error(e) => assert_eq!(e.code(), "dns_lookup"),
        other => panic!("expected an error event, got {other:?}"),
    }

    // Back on the same port: no change, no error.
    dns.restart().await.unwrap();
    let report = discovery.refresh_now().await;
    assert!(report.error.is_none(), "{:?}", report.error);
    assert!(!report.changed());
    assert!(drain(&mut rx).is_empty());
    discovery.stop().await;
}

#[tokio::test]
async fn nxdomain_is_a_clear_error() {
    let dns = Dnsmasq::start(zone(&[("node-a", 8081, 10, 1)]))
        .await
        .unwrap();
    let mut config = config(&dns);
    config.srv_name = "_nope._tcp.cluster.test".into();
    let source = DnsSource::new(config).unwrap();
    let error = source.discover().await.unwrap_err();
    match &error {
        DiscoveryError::DnsNameNotFound { name, code } => {
            assert_eq!(name, "_nope._tcp.cluster.test.");
            assert_eq!(code, "NXDOMAIN");
        }
        other => panic!("expected DnsNameNotFound, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "DNS name _nope._tcp.cluster.test. does not exist (NXDOMAIN)"
    );

    // A name that exists without SRV records: NOERROR, no records.
    let mut config = self::config(&dns);
    config.srv_name = target("node-a");
    let error = DnsSource::new(config)
        .unwrap()
        .discover()
        .await
        .unwrap_err();
    assert_eq!(error.code(), "dns_no_records", "{error}");

    // Through ClusterDiscovery: an error event, nothing announced.
    let mut config = self::config(&dns);
    config.srv_name = "_nope._tcp.cluster.test".into();
    let discovery = ClusterDiscovery::builder(Arc::new(DnsSource::new(config).unwrap())).build();
    let mut rx = discovery.subscribe();
    let report = discovery.start().await.unwrap();
    assert_eq!(report.error.map(|e| e.code()), Some("dns_nxdomain"));
    assert_eq!(drain(&mut rx), ["!dns_nxdomain"]);
    assert!(discovery.nodes().is_empty());
    assert!(discovery.is_running(), "the loop keeps trying");
    discovery.stop().await;
}

#[tokio::test]
async fn ttl_is_clamped_to_floor_and_ceiling() {
    let mut dns = Dnsmasq::start(zone(&[("node-a", 8081, 10, 1)]).ttl(1))
        .await
        .unwrap();
    let mut config = config(&dns);
    config.min_refresh = Duration::from_secs(3);
    config.max_refresh = Duration::from_secs(60);
    let source = DnsSource::new(config).unwrap();
    assert_eq!(
        source.discover().await.unwrap().valid_for,
        Some(Duration::from_secs(3))
    );

    dns.replace_zone(zone(&[("node-a", 8081, 10, 1)]).ttl(45))
        .await
        .unwrap();
    assert_eq!(
        source.discover().await.unwrap().valid_for,
        Some(Duration::from_secs(45))
    );

    dns.replace_zone(zone(&[("node-a", 8081, 10, 1)]).ttl(3600))
        .await
        .unwrap();
    assert_eq!(
        source.discover().await.unwrap().valid_for,
        Some(Duration::from_secs(60))
    );
}

#[tokio::test]
async fn all_priorities_port_override_and_targets_without_address() {
    let zone = zone(&[("node-a", 8081, 10, 1), ("node-b", 8082, 20, 1)])
        // A target with no address record: left out, the others stay.
        .srv(SRV, &target("ghost"), 8083, 10, 1);
    let dns = Dnsmasq::start(zone).await.unwrap();

    let mut config = config(&dns);
    config.priorities = SrvPriorities::All;
    let snapshot = DnsSource::new(config.clone())
        .unwrap()
        .discover()
        .await
        .unwrap();
    let ids: Vec<_> = snapshot.nodes.iter().map(|n| n.id().to_string()).collect();
    assert_eq!(
        ids,
        ["node-a.cluster.test:8081", "node-b.cluster.test:8082"]
    );
    // The ghost's address was asked for (not in the additional section).
    assert!(
        dns.queries()
            .iter()
            .any(|q| q.contains("ghost.cluster.test")),
        "{:?}",
        dns.queries()
    );

    config.port_override = Some(9999);
    config.priorities = SrvPriorities::LowestOnly;
    let snapshot = DnsSource::new(config).unwrap().discover().await.unwrap();
    assert_eq!(snapshot.nodes.len(), 1);
    assert_eq!(snapshot.nodes[0].url(), "http://127.0.0.1:9999");
    assert_eq!(snapshot.nodes[0].id().as_str(), "node-a.cluster.test:9999");
}

#[tokio::test]
async fn a_target_that_is_not_an_inference_server_is_not_announced() {
    let good = ModelsStub::start(Answer::model("m")).await;
    let bad = ModelsStub::start(Answer::Body("text/html", "<html>hello</html>".into())).await;
    let dns = Dnsmasq::start(zone(&[
        ("good", good.port(), 10, 1),
        ("bad", bad.port(), 10, 1),
    ]))
    .await
    .unwrap();
    let discovery = discovery(&dns);
    let mut rx = discovery.subscribe();
    let report = discovery.start().await.unwrap();
    let bad_id = format!("bad.cluster.test:{}", bad.port());
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].as_str(), bad_id);
    assert_eq!(discovery.nodes().len(), 1);
    let events = drain(&mut rx);
    assert_eq!(
        events,
        [
            format!("+good.cluster.test:{}", good.port()),
            "!validation_failed".into()
        ]
    );

    // Once it answers a model list, the next refresh announces it.
    bad.set_answer(Answer::model("m2"));
    let report = discovery.refresh_now().await;
    assert_eq!(
        report
            .discovered
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        [bad_id]
    );
    discovery.stop().await;
}

#[tokio::test]
async fn an_srv_record_can_point_at_a_real_mlx_server() {
    let fixture = cluster_tests::mlx::MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let mlx = cluster_tests::mlx::MlxServer::start(&fixture)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dns = Dnsmasq::start(zone(&[("studio", mlx.port(), 0, 0)]))
        .await
        .unwrap();
    let discovery = discovery(&dns);
    let report = discovery.start().await.unwrap();
    let id = format!("studio.cluster.test:{}", mlx.port());
    assert_eq!(
        report.discovered.len(),
        1,
        "{report:?}\nlog:\n{}",
        mlx.log_tail()
    );
    let node = discovery.node(&id).unwrap();
    assert_eq!(node.url(), mlx.base_url());
    assert_eq!(node.models, [fixture.model_id()]);
    discovery.stop().await;
}
