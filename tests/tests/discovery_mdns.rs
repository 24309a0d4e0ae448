//! mDNS discovery with real multicast, confined to two network namespaces
//! joined by a veth pair (`cluster_tests::netns`): the browsing side
//! (`MdnsSource` + `ClusterDiscovery` with HTTP validation) in namespace
//! `a`, nodes and responders in namespace `b`.
//!
//! - interoperability with python-zeroconf, a responder nobody here wrote:
//!   published → Discovered within 5 s, TXT change → Updated, goodbye →
//!   Lost within 3 s, killed without goodbye → Lost after its TTL;
//! - our `MdnsAnnouncer`: announced once the node answers, withdrawn when
//!   it stops answering, announced again when it is back, withdrawn on
//!   stop.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_discovery::{
    AnnounceConfig, AnnouncerState, ClusterDiscovery, DiscoveryEvent, HttpNodeValidator,
    MdnsAnnouncer, MdnsSource, MdnsSourceConfig,
};
use cluster_sim::{SimNode, SimNodeConfig};
use cluster_tests::netns::{Netns, NetnsPair};
use cluster_tests::zeroconf::{ZeroconfResponder, ZeroconfService};
use tokio::runtime::Runtime;
use tokio::sync::broadcast;

const TY: &str = "_mlx-lm._tcp.local.";

/// The two namespaces with a runtime in each.
struct Lan {
    pair: NetnsPair,
    a: Runtime,
    b: Runtime,
}

impl Lan {
    fn new() -> Self {
        let pair = NetnsPair::create().unwrap();
        let a = pair.a.runtime().unwrap();
        let b = pair.b.runtime().unwrap();
        Self { pair, a, b }
    }

    /// Runs `test` on a worker of namespace `a`'s runtime (never on the
    /// calling thread, which is in the root namespace).
    fn run<F: std::future::Future<Output = ()> + Send + 'static>(&self, test: F) {
        let handle = self.a.spawn(test);
        if let Err(e) = self.a.block_on(handle) {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// A simulated node listening on every address of namespace `b`.
async fn node_in(b: &tokio::runtime::Handle, id: &str) -> Arc<SimNode> {
    let config = SimNodeConfig {
        id: id.to_owned(),
        model_id: "tiny-sim".to_owned(),
        bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        ..SimNodeConfig::default()
    };
    Arc::new(b.spawn(SimNode::start(config)).await.unwrap().unwrap())
}

/// Browsing discovery in namespace `a` (call on its runtime).
async fn browse() -> (ClusterDiscovery, broadcast::Receiver<DiscoveryEvent>) {
    let source = MdnsSource::new(MdnsSourceConfig::default()).unwrap();
    let discovery = ClusterDiscovery::builder(Arc::new(source))
        .validator(HttpNodeValidator::new(Duration::from_secs(3)).unwrap())
        .validation_timeout(Duration::from_secs(3))
        .build();
    let events = discovery.subscribe();
    discovery.start().await.unwrap();
    (discovery, events)
}

/// The first event about `id` matching `want` within `within` of `since`,
/// and how long after `since` it came.
async fn wait_for(
    events: &mut broadcast::Receiver<DiscoveryEvent>,
    id: &str,
    since: Instant,
    within: Duration,
    what: &str,
    want: impl Fn(&DiscoveryEvent) -> bool,
) -> (DiscoveryEvent, Duration) {
    let started = since;
    let deadline = tokio::time::Instant::from_std(since) + within;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} event for {id} within {within:?}"))
            .unwrap();
        if event.node_id().is_some_and(|n| n.as_str() == id) && want(&event) {
            return (event, started.elapsed());
        }
        if let DiscoveryEvent::Error(e) = &event {
            eprintln!("discovery error while waiting for {what} of {id}: {e}");
        }
    }
}

fn zeroconf_service(ns: &Netns, name: &str, port: u16, ttl: u32) -> ZeroconfService {
    ZeroconfService {
        name: name.to_owned(),
        service_type: TY.to_owned(),
        host: format!("{name}.local."),
        address: ns.addr(),
        port,
        txt: BTreeMap::from([
            ("weight".to_owned(), "2".to_owned()),
            ("kind".to_owned(), "mlx-lm".to_owned()),
            ("tag.rack".to_owned(), "desk".to_owned()),
        ]),
        ttl,
    }
}

#[test]
fn zeroconf_service_is_discovered_updated_and_lost_on_goodbye() {
    let lan = Lan::new();
    let b = lan.b.handle().clone();
    let ns_b = lan.pair.b.clone();
    lan.run(async move {
        let node = node_in(&b, "zc-node").await;
        let (discovery, mut events) = browse().await;
        let mut responder = ZeroconfResponder::start(&ns_b).await.unwrap();
        let mut service = zeroconf_service(&ns_b, "zc-node", node.addr().port(), 120);

        let published = Instant::now();
        responder.register(&service).await.unwrap();
        let (event, after) = wait_for(
            &mut events,
            "zc-node",
            published,
            Duration::from_secs(5),
            "Discovered",
            |e| matches!(e, DiscoveryEvent::Discovered(_)),
        )
        .await;
        eprintln!("zeroconf: published -> Discovered in {after:?}");
        let DiscoveryEvent::Discovered(found) = event else {
            unreachable!()
        };
        assert_eq!(
            found.url(),
            format!("http://{}:{}", ns_b.addr(), node.addr().port())
        );
        assert_eq!(found.spec().weight, 2);
        assert_eq!(found.spec().tags["kind"], "mlx-lm");
        assert_eq!(found.spec().tags["rack"], "desk");
        assert_eq!(found.spec().tags["mdns.service"], TY);
        assert_eq!(found.models, ["tiny-sim"], "validated over HTTP");

        // New TXT records: the node is updated in place.
        service.txt.insert("weight".to_owned(), "5".to_owned());
        let changed = Instant::now();
        responder.update(&service).await.unwrap();
        let (event, after) = wait_for(
            &mut events,
            "zc-node",
            changed,
            Duration::from_secs(5),
            "Updated",
            |e| matches!(e, DiscoveryEvent::Updated { .. }),
        )
        .await;
        eprintln!("zeroconf: TXT change -> Updated in {after:?}");
        let DiscoveryEvent::Updated { current, .. } = event else {
            unreachable!()
        };
        assert_eq!(current.spec().weight, 5);

        // Goodbye packets: lost within 3 s.
        responder.unregister("zc-node").await.unwrap();
        let goodbye = Instant::now();
        let (_, after) = wait_for(
            &mut events,
            "zc-node",
            goodbye,
            Duration::from_secs(3),
            "Lost",
            |e| matches!(e, DiscoveryEvent::Lost(_)),
        )
        .await;
        eprintln!("zeroconf: goodbye -> Lost in {after:?}");
        assert!(discovery.nodes().is_empty());
        discovery.stop().await;
        responder.kill().await;
    });
}

#[test]
fn zeroconf_responder_killed_without_goodbye_is_lost_after_its_ttl() {
    const TTL: u32 = 8;
    let lan = Lan::new();
    let b = lan.b.handle().clone();
    let ns_b = lan.pair.b.clone();
    lan.run(async move {
        let node = node_in(&b, "zc-ttl").await;
        let (discovery, mut events) = browse().await;
        let mut responder = ZeroconfResponder::start(&ns_b).await.unwrap();
        let service = zeroconf_service(&ns_b, "zc-ttl", node.addr().port(), TTL);
        let published = Instant::now();
        responder.register(&service).await.unwrap();
        wait_for(
            &mut events,
            "zc-ttl",
            published,
            Duration::from_secs(5),
            "Discovered",
            |e| matches!(e, DiscoveryEvent::Discovered(_)),
        )
        .await;

        responder.kill().await;
        let killed = Instant::now();
        // Nothing says goodbye: the records stay until their TTL runs out
        // (at least the last 20 % of it: refreshes start at 80 %).
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            discovery.node("zc-ttl").is_some(),
            "lost before its TTL could have run out"
        );
        let deadline = Duration::from_secs(u64::from(TTL) + 4);
        wait_for(&mut events, "zc-ttl", killed, deadline, "Lost", |e| {
            matches!(e, DiscoveryEvent::Lost(_))
        })
        .await;
        eprintln!(
            "zeroconf: killed (TTL {TTL}s) -> Lost after {:?}",
            killed.elapsed()
        );
        discovery.stop().await;
    });
}

#[test]
fn announcer_follows_its_node_and_says_goodbye_on_stop() {
    let lan = Lan::new();
    let b = lan.b.handle().clone();
    lan.run(async move {
        let node = node_in(&b, "announced").await;
        let (discovery, mut events) = browse().await;
        let started = Instant::now();

        let mut config = AnnounceConfig::new(node.addr().port());
        config.instance_name = "announced".to_owned();
        config.host_name = "announced-host.local.".to_owned();
        config.txt.insert("weight".to_owned(), "3".to_owned());
        config.check_interval = Duration::from_millis(300);
        config.failures_to_withdraw = 2;
        let validator = HttpNodeValidator::new(Duration::from_secs(1)).unwrap();
        let announcer = Arc::new(MdnsAnnouncer::new(config, Arc::new(validator)).unwrap());
        let mut state = announcer.subscribe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = {
            let announcer = Arc::clone(&announcer);
            b.spawn(async move {
                announcer
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            })
        };

        let (event, after) = wait_for(
            &mut events,
            "announced",
            started,
            Duration::from_secs(5),
            "Discovered",
            |e| matches!(e, DiscoveryEvent::Discovered(_)),
        )
        .await;
        eprintln!("announcer: started -> Discovered in {after:?}");
        let DiscoveryEvent::Discovered(found) = event else {
            unreachable!()
        };
        assert_eq!(found.spec().weight, 3);
        assert_eq!(
            found.spec().tags["model"],
            "tiny-sim",
            "model from /v1/models"
        );
        assert_eq!(
            found.url(),
            format!("http://{}:{}", NetnsPair::ADDR_B, node.addr().port())
        );

        // The node dies: the announcer withdraws it.
        {
            let node = Arc::clone(&node);
            b.spawn(async move { node.crash().await }).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                state.changed().await.unwrap();
                if matches!(*state.borrow_and_update(), AnnouncerState::Withdrawn { .. }) {
                    break;
                }
            }
        })
        .await
        .expect("withdrawn within 10 s of the crash");
        let withdrawn = Instant::now();
        let (_, after) = wait_for(
            &mut events,
            "announced",
            withdrawn,
            Duration::from_secs(3),
            "Lost",
            |e| matches!(e, DiscoveryEvent::Lost(_)),
        )
        .await;
        eprintln!("announcer: node down, withdrawn -> Lost in {after:?}");

        // Back on the same port: announced again.
        {
            let node = Arc::clone(&node);
            b.spawn(async move { node.restart().await })
                .await
                .unwrap()
                .unwrap();
        }
        let back = Instant::now();
        wait_for(
            &mut events,
            "announced",
            back,
            Duration::from_secs(8),
            "Discovered",
            |e| matches!(e, DiscoveryEvent::Discovered(_)),
        )
        .await;

        // Stopping the announcer says goodbye.
        let stopping = Instant::now();
        stop.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert_eq!(*state.borrow(), AnnouncerState::Stopped);
        let (_, after) = wait_for(
            &mut events,
            "announced",
            stopping,
            Duration::from_secs(3),
            "Lost",
            |e| matches!(e, DiscoveryEvent::Lost(_)),
        )
        .await;
        eprintln!("announcer: stopped -> Lost in {after:?}");
        discovery.stop().await;
    });
}
