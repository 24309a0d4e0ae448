//! The browsing task with a scripted [`Browser`]: events fold into
//! snapshots, a browse that ends keeps the last snapshot and is restarted,
//! and a resync drops what was not seen again. (Real multicast is tested in
//! network namespaces by the `cluster-tests` package.)
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::channel::mpsc;

use super::instance::Instance;
use super::*;

const TY: &str = "_mlx-lm._tcp.local.";

fn instance(name: &str, last_octet: u8) -> Instance {
    Instance {
        service_type: TY.to_owned(),
        fullname: format!("{name}.{TY}"),
        host: format!("{name}.local."),
        port: 8080,
        addresses: vec![std::net::IpAddr::from([192, 0, 2, last_octet])],
        txt: std::collections::BTreeMap::new(),
    }
}

/// Each `browse` hands the test a new sender; `fail_next` makes the next
/// `browse` fail.
#[derive(Default)]
struct ScriptedBrowser {
    senders: Mutex<VecDeque<mpsc::UnboundedSender<BrowseEvent>>>,
    fail_next: Mutex<u32>,
    restarts: AtomicUsize,
}

impl Browser for ScriptedBrowser {
    fn browse(
        &self,
        service_type: &str,
    ) -> Result<futures::stream::BoxStream<'static, BrowseEvent>, DiscoveryError> {
        let mut fail = self.fail_next.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(DiscoveryError::Mdns {
                operation: "browse",
                service_type: service_type.to_owned(),
                message: "daemon is gone".to_owned(),
            });
        }
        let (tx, rx) = mpsc::unbounded();
        self.senders.lock().unwrap().push_back(tx);
        Ok(rx.boxed())
    }

    fn restart(&self) {
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }
}

impl ScriptedBrowser {
    fn sender(&self) -> mpsc::UnboundedSender<BrowseEvent> {
        self.senders.lock().unwrap().back().cloned().unwrap()
    }

    fn close_all(&self) {
        self.senders.lock().unwrap().clear();
    }
}

async fn next(rx: &mut watch::Receiver<Published>) -> Published {
    tokio::time::timeout(Duration::from_secs(60), rx.changed())
        .await
        .expect("a publication within a minute")
        .unwrap();
    rx.borrow_and_update().clone()
}

fn ids(p: &Published) -> Vec<String> {
    p.snapshot
        .nodes
        .iter()
        .map(|n| n.id().to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn events_become_snapshots_and_a_failed_browse_keeps_the_last_one() {
    let browser = Arc::new(ScriptedBrowser::default());
    let (tx, mut rx) = watch::channel(Published::default());
    let task = tokio::spawn(run(
        Arc::clone(&browser) as Arc<dyn Browser>,
        vec![TY.to_owned()],
        MdnsSourceConfig::default(),
        tx,
    ));
    tokio::task::yield_now().await;
    let events = browser.sender();
    events
        .unbounded_send(BrowseEvent::Resolved(instance("a", 1)))
        .unwrap();
    assert_eq!(ids(&next(&mut rx).await), ["a"]);
    events
        .unbounded_send(BrowseEvent::Resolved(instance("b", 2)))
        .unwrap();
    assert_eq!(ids(&next(&mut rx).await), ["a", "b"]);

    // The daemon dies: an error is published, the snapshot stays.
    browser.close_all();
    drop(events);
    let failed = next(&mut rx).await;
    assert!(failed.error.is_some());
    assert_eq!(ids(&failed), ["a", "b"]);
    assert_eq!(failed.item().unwrap_err().code(), "mdns");

    // Restarted after the backoff: "a" is resolved again, "b" is not and is
    // dropped once the resync window is over.
    let recovered = next(&mut rx).await;
    assert!(recovered.error.is_none());
    assert_eq!(ids(&recovered), ["a", "b"]);
    assert_eq!(browser.restarts.load(Ordering::SeqCst), 1);
    browser
        .sender()
        .unbounded_send(BrowseEvent::Resolved(instance("a", 1)))
        .unwrap();
    let resynced = next(&mut rx).await;
    assert_eq!(ids(&resynced), ["a"]);

    browser
        .sender()
        .unbounded_send(BrowseEvent::Removed {
            service_type: TY.to_owned(),
            fullname: format!("a.{TY}"),
        })
        .unwrap();
    assert!(ids(&next(&mut rx).await).is_empty());
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_browse_that_cannot_start_is_retried_with_backoff() {
    let browser = Arc::new(ScriptedBrowser::default());
    *browser.fail_next.lock().unwrap() = 2;
    let (tx, mut rx) = watch::channel(Published::default());
    let started = Instant::now();
    let task = tokio::spawn(run(
        Arc::clone(&browser) as Arc<dyn Browser>,
        vec![TY.to_owned()],
        MdnsSourceConfig::default(),
        tx,
    ));
    let first = next(&mut rx).await;
    assert!(first.error.is_some());
    // Two failures: retried after 1 s, then 2 s.
    loop {
        let p = next(&mut rx).await;
        if p.error.is_none() {
            break;
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(browser.restarts.load(Ordering::SeqCst), 2);
    browser
        .sender()
        .unbounded_send(BrowseEvent::Resolved(instance("a", 1)))
        .unwrap();
    assert_eq!(ids(&next(&mut rx).await), ["a"]);
    task.abort();
}

#[test]
fn configs() {
    let c = MdnsSourceConfig::default();
    assert_eq!(
        c.service_types,
        ["_mlx-lm._tcp.local.", "_openai._tcp.local."]
    );
    assert_eq!(c.port, 5353);
    assert_eq!(normalize_service_type(" _X._tcp.local"), "_x._tcp.local.");
    let from = MdnsSourceConfig::from_discovery(&cluster_types::MdnsDiscovery {
        interfaces: vec!["en0".into()],
        port: 5454,
        ..cluster_types::MdnsDiscovery::default()
    });
    assert_eq!(from.interfaces, ["en0"]);
    assert_eq!(from.port, 5454);
}

#[tokio::test]
async fn bad_configs_are_refused() {
    for (config, path) in [
        (
            MdnsSourceConfig {
                service_types: vec![],
                ..MdnsSourceConfig::default()
            },
            "discovery.service_types",
        ),
        (
            MdnsSourceConfig {
                service_types: vec!["_x._udp.local.".into()],
                ..MdnsSourceConfig::default()
            },
            "discovery.service_types",
        ),
        (
            MdnsSourceConfig {
                port: 0,
                ..MdnsSourceConfig::default()
            },
            "discovery.port",
        ),
    ] {
        match MdnsSource::new(config) {
            Err(DiscoveryError::InvalidConfig { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected InvalidConfig at {path}, got {other:?}"),
        }
    }
}
