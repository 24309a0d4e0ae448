//! The Prometheus exposition: format validity, values, and docs/metrics.md
//! staying in sync with what is emitted.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cluster_metrics::{
    LATENCY_BUCKETS, METRIC_NAMES, ManualClock, MetricsRegistry, NodeCounters,
    OPENMETRICS_CONTENT_TYPE, PREDICTION_ERROR_BUCKETS, RequestOutcome,
};
use cluster_types::{NodeId, NodeStatus};

const DOCS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/metrics.md"
));

/// A parsed sample line.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed metric family.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: String,
    unit: Option<String>,
    samples: Vec<Sample>,
}

/// Parses `key="value",...` with OpenMetrics escapes; panics on bad syntax.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty()
                && key.chars().next().unwrap().is_ascii_alphabetic()
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {key:?} in {s:?}"
        );
        assert_eq!(chars.next(), Some('"'), "label value must be quoted: {s:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?} in {s:?}"),
                },
                Some('"') => break,
                Some('\n') | None => panic!("unterminated label value in {s:?}"),
                Some(c) => value.push(c),
            }
        }
        assert!(
            labels.insert(key.clone(), value).is_none(),
            "duplicate label {key} in {s:?}"
        );
        match chars.next() {
            Some(',') | None => {}
            other => panic!("expected ',' after label, got {other:?} in {s:?}"),
        }
    }
    labels
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses an OpenMetrics text exposition, checking its grammar; returns
/// families by name, in order of appearance.
fn parse(text: &str) -> Vec<(String, Family)> {
    assert!(text.ends_with("# EOF\n"), "exposition must end with # EOF");
    let mut families: Vec<(String, Family)> = Vec::new();
    let mut seen = BTreeSet::new();
    let body = &text[..text.len() - "# EOF\n".len()];
    for line in body.lines() {
        assert!(!line.is_empty(), "empty line in exposition");
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest.split_once(' ').unwrap();
            let (name, arg) = rest.split_once(' ').unwrap();
            assert!(valid_metric_name(name), "bad metric name {name:?}");
            match keyword {
                "HELP" => {
                    assert!(seen.insert(name.to_owned()), "family {name} declared twice");
                    families.push((
                        name.to_owned(),
                        Family {
                            help: Some(arg.to_owned()),
                            ..Family::default()
                        },
                    ));
                }
                "TYPE" | "UNIT" => {
                    let (last, fam) = families.last_mut().expect("TYPE/UNIT before HELP");
                    assert_eq!(last, name, "TYPE/UNIT for another family than HELP");
                    if keyword == "TYPE" {
                        assert!(
                            ["counter", "gauge", "histogram", "info", "unknown"].contains(&arg),
                            "unknown type {arg}"
                        );
                        fam.kind = arg.to_owned();
                    } else {
                        assert!(name.ends_with(&format!("_{arg}")), "unit must suffix name");
                        fam.unit = Some(arg.to_owned());
                    }
                }
                other => panic!("unknown comment keyword {other}"),
            }
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match name_labels.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
            None => (name_labels, BTreeMap::new()),
        };
        assert!(valid_metric_name(name), "bad sample name {name:?}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
        };
        let (family, fam) = families.last_mut().expect("sample before any family");
        assert!(!fam.kind.is_empty(), "sample before TYPE");
        let allowed: &[&str] = match fam.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        assert!(
            allowed
                .iter()
                .any(|suffix| name == format!("{family}{suffix}")),
            "sample {name} does not belong to family {family} ({})",
            fam.kind
        );
        fam.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    families
}

/// The documented name of a family: counters with `_total`.
fn documented_name(family: &str, f: &Family) -> String {
    if f.kind == "counter" {
        format!("{family}_total")
    } else {
        family.to_owned()
    }
}

/// A registry with nodes in several states and some traffic.
fn populated() -> (ManualClock, MetricsRegistry) {
    let clock = ManualClock::new();
    let registry = MetricsRegistry::with_clock(clock.shared());
    let a = NodeId::from("mac-1");
    let b = NodeId::from("weird \"node\"\\\nid");
    let c = NodeId::from("mac-3");
    let ca = registry.node(&a);
    registry.set_status(&a, NodeStatus::Healthy);
    let cb = Arc::new(NodeCounters::with_clock(clock.shared()));
    assert!(
        registry
            .insert_node(b.clone(), Arc::clone(&cb), NodeStatus::Degraded)
            .is_none()
    );
    registry.node(&c);
    registry.set_status(&c, NodeStatus::Offline);

    for i in 0..10u64 {
        let mut g = ca.begin();
        clock.advance(Duration::from_millis(40 + i));
        g.mark_first_token();
        clock.advance(Duration::from_secs(2));
        g.finish(
            RequestOutcome::success()
                .with_tokens(1000, 900)
                .with_completion_tokens(20),
        );
    }
    ca.record_decision(cluster_types::RoutingReason::CacheHit, Some(0.8));
    ca.record_decision(cluster_types::RoutingReason::Retry, None);
    cb.begin().finish(RequestOutcome::failure());
    cb.begin()
        .finish(RequestOutcome::success().with_latency(Duration::from_secs(700)));
    drop(cb.begin());
    std::mem::forget(ca.begin()); // stays in flight
    (clock, registry)
}

#[test]
fn exposition_is_well_formed_openmetrics() {
    let (_clock, registry) = populated();
    let text = registry.encode().unwrap();
    let families = parse(&text);
    assert!(!families.is_empty());
    for (name, f) in &families {
        assert!(name.starts_with("mlx_cluster_"), "{name} lacks the prefix");
        assert!(f.help.as_deref().is_some_and(|h| !h.is_empty()));
        if name.ends_with("_seconds") {
            assert_eq!(f.unit.as_deref(), Some("seconds"), "{name}");
        }
        if f.kind == "histogram" {
            check_histogram(name, f);
        }
    }
    assert!(OPENMETRICS_CONTENT_TYPE.starts_with("application/openmetrics-text"));
}

/// Buckets ascend, counts are cumulative, `+Inf` equals `_count`.
fn check_histogram(name: &str, f: &Family) {
    let nodes: BTreeSet<&str> = f
        .samples
        .iter()
        .map(|s| s.labels["node"].as_str())
        .collect();
    for node in nodes {
        let of_node = |suffix: &'static str| {
            let full = format!("{name}{suffix}");
            f.samples
                .iter()
                .filter(move |s| s.labels["node"] == node && s.name == full)
        };
        let count = of_node("_count").next().unwrap().value;
        assert!(of_node("_sum").next().unwrap().value >= 0.0);
        let buckets: Vec<(f64, f64)> = of_node("_bucket")
            .map(|s| {
                let le = &s.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, s.value)
            })
            .collect();
        let expected = if name.ends_with("_blocks") {
            PREDICTION_ERROR_BUCKETS.len()
        } else if name.ends_with("_ratio") {
            cluster_metrics::PREFIX_MATCH_BUCKETS.len()
        } else {
            LATENCY_BUCKETS.len()
        };
        assert_eq!(buckets.len(), expected + 1);
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
    }
}

#[test]
fn every_emitted_metric_is_documented_and_vice_versa() {
    let (_clock, registry) = populated();
    let families = parse(&registry.encode().unwrap());
    let emitted: BTreeSet<String> = families
        .iter()
        .map(|(name, f)| documented_name(name, f))
        .collect();

    // Names in the first column of docs/metrics.md's reference table.
    let documented: BTreeSet<String> = DOCS
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|n| n.starts_with("mlx_cluster_"))
        .collect();
    let missing: Vec<_> = emitted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "emitted but not in docs/metrics.md: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        stale.is_empty(),
        "in docs/metrics.md but not emitted: {stale:?}"
    );

    let constant: BTreeSet<String> = METRIC_NAMES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(constant, emitted, "METRIC_NAMES is out of date");

    // Label names used per family are the documented ones.
    for (name, f) in &families {
        let row = DOCS
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", documented_name(name, f))))
            .unwrap();
        let labels_cell = row.split('|').nth(3).unwrap();
        for s in &f.samples {
            for key in s.labels.keys().filter(|k| *k != "le") {
                assert!(
                    labels_cell.contains(&format!("`{key}`")),
                    "label {key} of {name} not documented"
                );
            }
        }
    }
}

#[test]
fn values_reflect_the_counters() {
    let (_clock, registry) = populated();
    let families = parse(&registry.encode().unwrap());
    let get = |family: &str, labels: &[(&str, &str)]| -> f64 {
        let (_, f) = families.iter().find(|(n, _)| n == family).unwrap();
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        f.samples
            .iter()
            .find(|s| s.labels == want && !s.name.ends_with("_sum"))
            .unwrap_or_else(|| panic!("{family} {labels:?} missing"))
            .value
    };
    let weird = "weird \"node\"\\\nid";
    assert_eq!(get("mlx_cluster_nodes", &[("status", "healthy")]), 1.0);
    assert_eq!(get("mlx_cluster_nodes", &[("status", "degraded")]), 1.0);
    assert_eq!(get("mlx_cluster_nodes", &[("status", "offline")]), 1.0);
    assert_eq!(get("mlx_cluster_nodes", &[("status", "unhealthy")]), 0.0);
    // 2 of 3 routable, not all healthy: degraded.
    assert_eq!(get("mlx_cluster_status", &[("status", "degraded")]), 1.0);
    assert_eq!(get("mlx_cluster_status", &[("status", "healthy")]), 0.0);
    assert_eq!(get("mlx_cluster_in_flight_requests", &[]), 1.0);
    assert!((get("mlx_cluster_cache_hit_ratio", &[]) - 0.9).abs() < 1e-12);
    assert_eq!(
        get(
            "mlx_cluster_node_status",
            &[("node", weird), ("status", "degraded")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "mlx_cluster_node_status",
            &[("node", "mac-1"), ("status", "degraded")]
        ),
        0.0
    );
    assert_eq!(
        get("mlx_cluster_node_in_flight_requests", &[("node", "mac-1")]),
        1.0
    );
    assert_eq!(get("mlx_cluster_node_requests", &[("node", "mac-1")]), 11.0);
    assert_eq!(get("mlx_cluster_node_requests", &[("node", weird)]), 3.0);
    for (outcome, n) in [("success", 1.0), ("failure", 1.0), ("cancelled", 1.0)] {
        assert_eq!(
            get(
                "mlx_cluster_node_responses",
                &[("node", weird), ("outcome", outcome)]
            ),
            n
        );
    }
    assert_eq!(
        get("mlx_cluster_node_prompt_tokens", &[("node", "mac-1")]),
        10_000.0
    );
    assert_eq!(
        get("mlx_cluster_node_cached_tokens", &[("node", "mac-1")]),
        9_000.0
    );
    assert_eq!(
        get("mlx_cluster_node_completion_tokens", &[("node", "mac-1")]),
        200.0
    );
    assert_eq!(get("mlx_cluster_node_requests", &[("node", "mac-3")]), 0.0);
    let decisions = |node: &str, reason: &str| {
        get(
            "mlx_cluster_routing_decisions",
            &[("node", node), ("reason", reason)],
        )
    };
    assert_eq!(decisions("mac-1", "cache-hit"), 1.0);
    assert_eq!(decisions("mac-1", "retry"), 1.0);
    assert_eq!(decisions("mac-3", "rendezvous"), 0.0);
    let (_, ratio) = families
        .iter()
        .find(|(n, _)| n == "mlx_cluster_routing_prefix_match_ratio")
        .unwrap();
    let le = |bound: &str| {
        ratio
            .samples
            .iter()
            .find(|s| {
                s.name.ends_with("_bucket")
                    && s.labels["node"] == "mac-1"
                    && s.labels["le"] == bound
            })
            .unwrap()
            .value
    };
    assert_eq!((le("0.75"), le("0.9"), le("+Inf")), (0.0, 1.0, 1.0));

    let (_, ttft) = families
        .iter()
        .find(|(n, _)| n == "mlx_cluster_node_time_to_first_token_seconds")
        .unwrap();
    let bucket = |node: &str, le: &str| {
        ttft.samples
            .iter()
            .find(|s| {
                s.name.ends_with("_bucket") && s.labels["node"] == node && s.labels["le"] == le
            })
            .unwrap()
            .value
    };
    // TTFTs were 40..=49 ms.
    assert_eq!(bucket("mac-1", "0.025"), 0.0);
    assert_eq!(bucket("mac-1", "0.05"), 10.0);
    let (_, dur) = families
        .iter()
        .find(|(n, _)| n == "mlx_cluster_node_request_duration_seconds")
        .unwrap();
    // The 700 s success lands only in +Inf.
    let weird_dur = |le: &str| {
        dur.samples
            .iter()
            .find(|s| {
                s.name.ends_with("_bucket") && s.labels["node"] == weird && s.labels["le"] == le
            })
            .unwrap()
            .value
    };
    assert_eq!(weird_dur("600.0"), 0.0);
    assert_eq!(weird_dur("+Inf"), 1.0);
    let sum = dur
        .samples
        .iter()
        .find(|s| s.name.ends_with("_sum") && s.labels["node"] == weird)
        .unwrap()
        .value;
    assert_eq!(sum, 700.0);

    let estimate = get(
        "mlx_cluster_node_latency_estimate_seconds",
        &[("node", "mac-1")],
    );
    assert!(estimate > 0.0 && estimate <= 0.049 + 1e-9, "{estimate}");
}

#[test]
fn removed_nodes_disappear_and_empty_registry_is_valid() {
    let registry = MetricsRegistry::default();
    assert!(registry.is_empty());
    let families = parse(&registry.encode().unwrap());
    // Cluster-level families are always there; per-node ones have no samples.
    let offline = families
        .iter()
        .find(|(n, _)| n == "mlx_cluster_status")
        .unwrap()
        .1
        .samples
        .iter()
        .find(|s| s.labels["status"] == "offline")
        .unwrap()
        .value;
    assert_eq!(offline, 1.0);

    let id = NodeId::from("gone");
    registry.node(&id);
    assert_eq!(registry.status(&id), Some(NodeStatus::Initializing));
    assert!(registry.encode().unwrap().contains("node=\"gone\""));
    assert!(registry.remove_node(&id).is_some());
    assert!(!registry.set_status(&id, NodeStatus::Healthy));
    assert!(!registry.encode().unwrap().contains("node=\"gone\""));
}

#[test]
fn same_counters_are_returned_for_the_same_node() {
    let registry = MetricsRegistry::new();
    let id = NodeId::from("n");
    let a = registry.node(&id);
    let b = registry.node(&id);
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(registry.len(), 1);
    a.begin()
        .finish(RequestOutcome::success().with_tokens(4, 1));
    let m = registry.cluster_metrics();
    assert_eq!(m.total_nodes, 1);
    assert_eq!(m.initializing_nodes, 1);
    assert_eq!(m.successes_total, 1);
    assert_eq!(m.cache_hit_ratio, 0.25);
    let snap = registry.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].0, id);
}

#[test]
fn extra_metrics_share_the_exposition() {
    use prometheus_client::metrics::counter::Counter;
    let mut registry = MetricsRegistry::new();
    let c: Counter = Counter::default();
    registry
        .registry_mut()
        .register("mlx_cluster_gateway_test", "A test counter.", c.clone());
    c.inc();
    let text = registry.encode().unwrap();
    assert!(text.contains("mlx_cluster_gateway_test_total 1"));
    parse(&text);
}
