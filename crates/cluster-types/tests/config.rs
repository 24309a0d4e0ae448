//! Config parsing, validation, environment overrides and the generated
//! reference, end to end.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use cluster_types::config::{ReferenceEntry, config_reference};
use cluster_types::{
    ApiKey, ClusterConfig, ConfigFormat, DiscoveryConfig, DnsDiscovery, KubernetesDiscovery,
    LoadBalanceStrategy, LogFormat, MdnsDiscovery, NodeSpec, Scheme, StaticDiscovery,
    config_reference_markdown,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn docs_dir() -> PathBuf {
    let manifest = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
    manifest.join("../../docs")
}

fn problems(text: &str, format: ConfigFormat) -> Vec<String> {
    match ClusterConfig::parse(text, format) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn empty_text_is_the_default_config() {
    for format in [ConfigFormat::Toml, ConfigFormat::Json, ConfigFormat::Yaml] {
        assert_eq!(
            ClusterConfig::parse("  \n", format).unwrap(),
            ClusterConfig::default()
        );
    }
    assert_eq!(
        ClusterConfig::parse("null", ConfigFormat::Json).unwrap(),
        ClusterConfig::default()
    );
    let d = ClusterConfig::default();
    d.validate().unwrap();
    let DiscoveryConfig::Static(s) = &d.discovery else {
        panic!("default discovery is static")
    };
    assert_eq!(s.nodes, [NodeSpec::new("local", "http://127.0.0.1:8080")]);
    assert_eq!(d.gateway.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(d.gateway.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(d.routing.strategy, LoadBalanceStrategy::CacheAware);
    assert_eq!(d.cache.max_prefixes_per_node, 10);
}

#[test]
fn example_config_parses() {
    let path = docs_dir().join("example-config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = ClusterConfig::parse(&text, ConfigFormat::from_path(&path).unwrap()).unwrap();
    let DiscoveryConfig::Static(s) = &config.discovery else {
        panic!("example uses static discovery")
    };
    let ids: Vec<_> = s.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["studio", "mini-1", "mini-2"]);
    assert_eq!(s.nodes[0].weight, 2);
    assert_eq!(s.nodes[0].tags["chip"], "m2-ultra");
    assert_eq!(config.cache.warmup_prompts.len(), 1);
    // Apart from the marked examples, the file states the defaults.
    let mut expected = ClusterConfig {
        discovery: config.discovery.clone(),
        ..ClusterConfig::default()
    };
    expected.cache.warmup_prompts = config.cache.warmup_prompts.clone();
    assert_eq!(config, expected);
}

#[test]
fn three_mistakes_give_three_messages_with_paths() {
    let text = r#"
        [discovery]
        nodes = [
          { id = "a", url = "http://10.0.0.1:8080" },
          { id = "b", url = "http://10.0.0.2:8080" },
          { id = "c", url = "10.0.0.3:8080" },
        ]
        [health]
        timeout = "10s"
        [backoff]
        jitter = 1.5
    "#;
    let err = ClusterConfig::parse(text, ConfigFormat::Toml).unwrap_err();
    assert_eq!(
        err.to_string(),
        "discovery.nodes[2].url: not an http(s) URL\n\
         health.timeout: must be shorter than health.check_interval (5s)\n\
         backoff.jitter: must be between 0 and 1 (got 1.5)"
    );
    assert_eq!(err.len(), 3);
    assert!(err.has_path("health.timeout"));
}

#[test]
fn structural_errors_do_not_hide_other_sections() {
    let text = r#"
        [discovery]
        nodes = [
          { id = "a", url = "http://a:1" },
          { id = "b", url = "http://b:1", wieght = 3 },
          { id = "a", url = "http://c:1" },
        ]
        [health]
        check_interval = 5
        timeout = "fast"
        bogus = true
        unhealthy_threshold = 0.9
        [routing]
        strategy = "fastest"
        [gateway]
        listen = "nope"
        [extra]
    "#;
    let got = problems(text, ConfigFormat::Toml);
    let want = [
        "discovery.nodes[1].wieght: unknown key (expected one of: id, url, weight, tags, api_key, tls)",
        "discovery.nodes[2].id: duplicate node id \"a\" (also discovery.nodes[0].id)",
        "health.bogus: unknown key (expected one of: check_interval, timeout, max_consecutive_failures, unhealthy_threshold, degraded_threshold, recovery_successes, probe_path, window, max_samples)",
        "health.timeout: expected a number at byte 0 of \"fast\" (durations look like \"5s\", \"250ms\", \"1m30s\")",
        "health.unhealthy_threshold: must not be greater than health.degraded_threshold (0.8)",
        "routing.strategy: unknown variant fastest, expected one of round-robin, least-loaded, latency-based, cache-aware, cache-score",
        "gateway.listen: invalid socket address syntax (expected ip:port, e.g. \"127.0.0.1:8000\")",
        "extra: unknown key (expected one of: discovery, health, backoff, cache, routing, gateway, node_tls, observability)",
    ];
    assert_eq!(got, want, "{got:#?}");
}

/// (config in TOML, expected problem paths).
const INVALID: &[(&str, &[&str])] = &[
    ("[discovery]\nnodes = []", &["discovery.nodes"]),
    (
        "[discovery]\nnodes = [{ id = \"\", url = \"http://a\" }, { id = \"x y\", url = \"http://b\" }]",
        &["discovery.nodes[0].id", "discovery.nodes[1].id"],
    ),
    (
        "[discovery]\nnodes = [{ id = \"a\", url = \"http://h:1\" }, { id = \"b\", url = \"http://H:1\" }]",
        &["discovery.nodes[1].url"],
    ),
    (
        "[discovery]\nnodes = [{ id = \"a\", url = \"http://h:1/v1\", weight = 0, api_key = \"\" }]",
        &[
            "discovery.nodes[0].url",
            "discovery.nodes[0].weight",
            "discovery.nodes[0].api_key",
        ],
    ),
    (
        "[discovery]\nrefresh_interval = \"0s\"\nvalidation_timeout = 0",
        &["discovery.refresh_interval", "discovery.validation_timeout"],
    ),
    ("[discovery]\nnodes = 3", &["discovery.nodes"]),
    ("[discovery]\nmode = 1", &["discovery.mode"]),
    ("[discovery]\nmode = \"dns\"", &["discovery.srv_name"]),
    (
        "[discovery]\nmode = \"dns\"\nsrv_name = \"bad name\"\nport_override = 0\nmin_refresh = \"10s\"\nmax_refresh = \"5s\"\nnameserver = \"127.0.0.1:0\"",
        &[
            "discovery.srv_name",
            "discovery.port_override",
            "discovery.nameserver",
            "discovery.max_refresh",
        ],
    ),
    (
        "[discovery]\nmode = \"kubernetes\"\nservice_name = \"a\"\nlabel_selector = \"app=a\"",
        &["discovery.service_name"],
    ),
    (
        "[discovery]\nmode = \"kubernetes\"\nnamespace = \"Prod\"\nlabel_selector = \" \"\nport_name = \"\"",
        &[
            "discovery.namespace",
            "discovery.label_selector",
            "discovery.port_name",
        ],
    ),
    (
        "[discovery]\nmode = \"mdns\"\nservice_types = [\"_mlx-lm._udp.local.\", \"_openai._tcp.local\", \"_openai._tcp.local.\"]\ninterfaces = [\"\"]\nport = 0\nvalidation_timeout = \"0s\"",
        &[
            "discovery.service_types[0]",
            "discovery.service_types[2]",
            "discovery.interfaces[0]",
            "discovery.port",
            "discovery.validation_timeout",
        ],
    ),
    (
        "[discovery]\nmode = \"mdns\"\nservice_types = []",
        &["discovery.service_types"],
    ),
    (
        "[health]\ncheck_interval = \"0s\"\ntimeout = \"0s\"\nmax_consecutive_failures = 0\nrecovery_successes = 0\nwindow = \"0s\"\nmax_samples = 0",
        &[
            "health.check_interval",
            "health.timeout",
            "health.max_consecutive_failures",
            "health.recovery_successes",
            "health.window",
            "health.max_samples",
        ],
    ),
    (
        "[health]\nunhealthy_threshold = -0.1\ndegraded_threshold = 1.5\nprobe_path = \"v1/models\"",
        &[
            "health.unhealthy_threshold",
            "health.degraded_threshold",
            "health.probe_path",
        ],
    ),
    (
        "[backoff]\ninitial = \"0s\"\nmultiplier = 0.9\njitter = -1.0",
        &["backoff.initial", "backoff.multiplier", "backoff.jitter"],
    ),
    (
        "[backoff]\ninitial = \"10s\"\nmax = \"5s\"",
        &["backoff.max"],
    ),
    (
        "[cache]\nmax_prefixes_per_node = 0\nmax_tokens_per_node = 0\nentry_ttl = \"0s\"\nfingerprint_block_bytes = 8\nsync_interval = \"0s\"\nwarmup_prompts = [\"ok\", \"  \"]\nwarmup_concurrency = 0\nwarmup_timeout = \"0s\"",
        &[
            "cache.max_prefixes_per_node",
            "cache.max_tokens_per_node",
            "cache.entry_ttl",
            "cache.fingerprint_block_bytes",
            "cache.sync_interval",
            "cache.warmup_prompts[1]",
            "cache.warmup_concurrency",
            "cache.warmup_timeout",
        ],
    ),
    (
        "[routing]\nmax_retries = 11\nsession_ttl = \"0s\"\nsession_header = \"X-Session\"\nmax_sessions = 0",
        &[
            "routing.max_retries",
            "routing.session_ttl",
            "routing.session_header",
            "routing.max_sessions",
        ],
    ),
    (
        "[routing]\nsession_header = \"\"",
        &["routing.session_header"],
    ),
    (
        "[gateway]\nadmin_token = \"\"\nconnect_timeout = \"0s\"\nfirst_byte_timeout = \"0s\"\nidle_timeout = \"0s\"\nmax_body_bytes = 10",
        &[
            "gateway.admin_token",
            "gateway.connect_timeout",
            "gateway.first_byte_timeout",
            "gateway.idle_timeout",
            "gateway.max_body_bytes",
        ],
    ),
    (
        "[gateway]\nrequest_timeout = \"10s\"",
        &["gateway.request_timeout"],
    ),
    ("health = 3", &["health"]),
    ("discovery = []", &["discovery"]),
    (
        "[discovery]\nnodes = [{ id = \"a\", url = \"http://a:1\", tags = { api = \"claude\", max_output_tokens = \"-1\" } }]",
        &[
            "discovery.nodes[0].tags.api",
            "discovery.nodes[0].tags.max_output_tokens",
        ],
    ),
    (
        "[gateway]\ndefault_model = \" \"\n[gateway.model_aliases]\n\"claude-*-x\" = \"m\"\n\"c\" = \"\"",
        &[
            "gateway.default_model",
            "gateway.model_aliases.\"c\"",
            "gateway.model_aliases.\"claude-*-x\"",
        ],
    ),
];

#[test]
fn every_validation_rule_reports_its_path() {
    for (text, paths) in INVALID {
        let err = ClusterConfig::parse(text, ConfigFormat::Toml).unwrap_err();
        let got: Vec<&str> = err.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(&got, paths, "for config:\n{text}\n\ngot:\n{err}");
        for p in err.problems() {
            assert!(!p.message.is_empty());
        }
    }
}

#[test]
fn valid_alternative_modes() {
    let dns = ClusterConfig::parse(
        "discovery:\n  mode: dns\n  srv_name: _mlx._tcp.lab.internal.\n  nameserver: 127.0.0.1:5353\n  port_override: 8080\n  scheme: https\n",
        ConfigFormat::Yaml,
    )
    .unwrap();
    let DiscoveryConfig::Dns(d) = &dns.discovery else {
        panic!("dns")
    };
    assert_eq!(d.port_override, Some(8080));
    assert_eq!(d.scheme, Scheme::Https);
    assert_eq!(dns.discovery.mode(), "dns");
    let k8s = ClusterConfig::parse(
        r#"{"discovery": {"mode": "kubernetes", "label_selector": "app=mlx", "validation_timeout": 1500}}"#,
        ConfigFormat::Json,
    )
    .unwrap();
    assert_eq!(
        k8s.discovery.validation_timeout(),
        Duration::from_millis(1500)
    );
    let err = ClusterConfig::parse(
        "[discovery]\nmode = \"dns\"\nsrv_name = \"x\"\nnodes = []",
        ConfigFormat::Toml,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("discovery.nodes: unknown key for mode \"dns\""),
        "{err}"
    );
}

#[test]
fn formats_agree() {
    let toml = r#"
        [discovery]
        nodes = [{ id = "a", url = "http://a:1", weight = 3, tags = { rack = "r1" } }]
        [health]
        check_interval = "10s"
        [routing]
        strategy = "least-loaded"
        [gateway]
        listen = "0.0.0.0:9000"
        request_timeout = "1h"
        log_format = "json"
    "#;
    let json = r#"{
        "discovery": {"nodes": [{"id": "a", "url": "http://a:1", "weight": 3, "tags": {"rack": "r1"}}]},
        "health": {"check_interval": "10s"},
        "routing": {"strategy": "least-loaded"},
        "gateway": {"listen": "0.0.0.0:9000", "request_timeout": "1h", "log_format": "json"}
    }"#;
    let yaml = "
discovery:
  nodes:
    - id: a
      url: http://a:1
      weight: 3
      tags: { rack: r1 }
health:
  check_interval: 10s
routing:
  strategy: least-loaded
gateway:
  listen: 0.0.0.0:9000
  request_timeout: 1h
  log_format: json
";
    let a = ClusterConfig::parse(toml, ConfigFormat::Toml).unwrap();
    let b = ClusterConfig::parse(json, ConfigFormat::Json).unwrap();
    let c = ClusterConfig::parse(yaml, ConfigFormat::Yaml).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.gateway.log_format, LogFormat::Json);
    assert_eq!(a.gateway.request_timeout, Some(Duration::from_secs(3600)));
}

#[test]
fn syntax_errors_have_positions() {
    let toml = problems("[health\ncheck_interval = 1", ConfigFormat::Toml);
    assert_eq!(toml.len(), 1);
    assert!(toml[0].starts_with("invalid TOML at line 1"), "{toml:?}");
    let json = problems("{\"health\": }", ConfigFormat::Json);
    assert!(
        json[0].starts_with("invalid JSON") && json[0].contains("line 1"),
        "{json:?}"
    );
    let yaml = problems("health: [1\n", ConfigFormat::Yaml);
    assert!(yaml[0].starts_with("invalid YAML"), "{yaml:?}");
    let top = problems("[1, 2]", ConfigFormat::Json);
    assert_eq!(
        top,
        ["expected a table of sections at the top level, found an array"]
    );
}

#[test]
fn format_from_extension() {
    assert_eq!(
        ConfigFormat::from_extension("toml"),
        Some(ConfigFormat::Toml)
    );
    assert_eq!(
        ConfigFormat::from_extension(".JSON"),
        Some(ConfigFormat::Json)
    );
    assert_eq!(
        ConfigFormat::from_extension("yml"),
        Some(ConfigFormat::Yaml)
    );
    assert_eq!(
        ConfigFormat::from_extension("yaml"),
        Some(ConfigFormat::Yaml)
    );
    assert_eq!(ConfigFormat::from_extension("ini"), None);
    assert_eq!(
        ConfigFormat::from_path(std::path::Path::new("/etc/mlx/cluster.yaml")),
        Some(ConfigFormat::Yaml)
    );
    assert_eq!(
        ConfigFormat::from_path(std::path::Path::new("cluster")),
        None
    );
}

#[test]
fn env_overrides_apply_on_top_of_the_file() {
    let text = "[discovery]\nnodes = [{ id = \"a\", url = \"http://a:1\" }]\n[health]\nprobe_path = \"/health\"";
    let env = [
        ("MLX_CLUSTER_HEALTH__CHECK_INTERVAL", "10s"),
        ("MLX_CLUSTER_HEALTH__TIMEOUT", "3000"),
        ("MLX_CLUSTER_DISCOVERY__NODES__0__WEIGHT", "4"),
        ("MLX_CLUSTER_DISCOVERY__NODES__1__ID", "b"),
        ("MLX_CLUSTER_DISCOVERY__NODES__1__URL", "http://b:1"),
        ("MLX_CLUSTER_ROUTING__STRATEGY", "round-robin"),
        ("MLX_CLUSTER_GATEWAY__ADMIN_TOKEN", "123456"),
        ("MLX_CLUSTER_GATEWAY__LISTEN", "0.0.0.0:80"),
        ("MLX_CLUSTER_VENV", "/opt/venv"),
        ("HOME", "/root"),
    ];
    let c = ClusterConfig::parse_with_env(text, ConfigFormat::Toml, env).unwrap();
    assert_eq!(c.health.check_interval, Duration::from_secs(10));
    assert_eq!(c.health.timeout, Duration::from_secs(3));
    assert_eq!(c.health.probe_path.as_deref(), Some("/health"));
    let DiscoveryConfig::Static(s) = &c.discovery else {
        panic!("static")
    };
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(s.nodes[0].weight, 4);
    assert_eq!(s.nodes[1].url, "http://b:1");
    assert_eq!(c.routing.strategy, LoadBalanceStrategy::RoundRobin);
    assert_eq!(c.gateway.admin_token.as_ref().unwrap().expose(), "123456");
    assert_eq!(c.gateway.listen.port(), 80);
}

#[test]
fn env_problems_are_reported_with_file_problems() {
    let env = [
        ("MLX_CLUSTER_HEALTH__TIMEOUT", "1 minute"),
        ("MLX_CLUSTER_HEALHT__TIMEOUT", "1s"),
    ];
    let err = ClusterConfig::parse_with_env("[backoff]\njitter = 3.0", ConfigFormat::Toml, env)
        .unwrap_err();
    let paths: Vec<_> = err.problems().iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "health.timeout",
            "backoff.jitter",
            "MLX_CLUSTER_HEALHT__TIMEOUT"
        ],
        "{err}"
    );
}

#[test]
fn serialization_round_trips() {
    let mut c = ClusterConfig::default();
    c.gateway.request_timeout = Some(Duration::from_secs(3601));
    c.health.window = Duration::from_secs(90);
    c.cache.warmup_prompts = vec!["sys".into()];
    for text in [
        toml::to_string(&c).unwrap(),
        serde_json::to_string_pretty(&c).unwrap(),
    ] {
        let format = if text.starts_with('{') {
            ConfigFormat::Json
        } else {
            ConfigFormat::Toml
        };
        assert_eq!(ClusterConfig::parse(&text, format).unwrap(), c, "{text}");
    }
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["gateway"]["request_timeout"], "1h1s");
    assert_eq!(v["health"]["window"], "90s");
    assert_eq!(v["discovery"]["mode"], "static");
    // Plain serde decoding (without the path-reporting parser) works too.
    assert_eq!(serde_json::from_value::<ClusterConfig>(v).unwrap(), c);
    // Secrets never serialize.
    c.gateway.admin_token = Some(ApiKey::new("hunter2"));
    assert!(!toml::to_string(&c).unwrap().contains("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
}

// ---- the generated reference -------------------------------------------

#[test]
fn configuration_md_is_up_to_date() {
    let path = docs_dir().join("configuration.md");
    let want = config_reference_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration.md is out of date with cluster_types::config_reference_markdown(); \
         regenerate it with `UPDATE_DOCS=1 cargo test -p cluster-types --test config`"
    );
}

/// Leaf paths of a serialized config (`[]` for array elements that are
/// tables; empty tables and other arrays are leaves).
fn leaves(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) if !map.is_empty() && prefix != "discovery.nodes[].tags" => {
            for (k, v) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &p, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            out.insert(prefix.to_owned());
            for item in items {
                leaves(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

/// A config of the given mode with every optional key set.
fn full_config(mode: &str) -> ClusterConfig {
    let discovery = match mode {
        "dns" => DiscoveryConfig::Dns(DnsDiscovery {
            nameserver: Some("127.0.0.1:53".parse().unwrap()),
            port_override: Some(8080),
            ..DnsDiscovery::default()
        }),
        "kubernetes" => DiscoveryConfig::Kubernetes(KubernetesDiscovery {
            service_name: Some("mlx".into()),
            label_selector: Some("app=mlx".into()),
            ..KubernetesDiscovery::default()
        }),
        "mdns" => DiscoveryConfig::Mdns(MdnsDiscovery {
            interfaces: vec!["en0".into()],
            ..MdnsDiscovery::default()
        }),
        _ => {
            let mut s = StaticDiscovery::default();
            s.nodes[0].api_key = Some(ApiKey::new("k"));
            s.nodes[0].tags.insert("rack".into(), "a".into());
            s.nodes[0].tls = cluster_types::NodeTls {
                ca_file: Some("/etc/lab-ca.pem".into()),
                insecure_skip_verify: true,
            };
            DiscoveryConfig::Static(s)
        }
    };
    let mut c = ClusterConfig {
        discovery,
        ..ClusterConfig::default()
    };
    c.gateway.admin_token = Some(ApiKey::new("t"));
    c.gateway.request_timeout = Some(Duration::from_secs(600));
    c.node_tls = cluster_types::NodeTls {
        ca_file: Some("/etc/lab-ca.pem".into()),
        insecure_skip_verify: true,
    };
    let mut key = cluster_types::ClientKey::secret("alice", "k");
    key.key_sha256 = Some("0".repeat(64));
    key.requests_per_minute = Some(60);
    key.max_concurrent = Some(4);
    c.gateway.api_keys = vec![key];
    c.gateway.api_keys_file = Some("/etc/mlx-cluster/keys".into());
    c.gateway.tls = Some(cluster_types::TlsConfig {
        cert: "/etc/mlx-cluster/cert.pem".into(),
        key: "/etc/mlx-cluster/key.pem".into(),
    });
    c.observability.otlp_endpoint = Some("http://127.0.0.1:4318/v1/traces".into());
    c
}

#[test]
fn reference_lists_exactly_the_serialized_keys() {
    let reference = config_reference();
    for mode in ["static", "dns", "kubernetes", "mdns"] {
        let mut serialized = BTreeSet::new();
        leaves(
            &serde_json::to_value(full_config(mode)).unwrap(),
            "",
            &mut serialized,
        );
        let documented: BTreeSet<String> = reference
            .iter()
            .filter(|e| e.mode.is_none_or(|m| m == mode))
            .map(|e| e.path.to_owned())
            .collect();
        let missing: Vec<_> = serialized.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&serialized).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "mode {mode}: undocumented keys {missing:?}, documented but absent {extra:?}"
        );
    }
}

#[test]
fn reference_defaults_come_from_default_impls() {
    let find = |path: &str, mode: Option<&str>| -> ReferenceEntry {
        config_reference()
            .into_iter()
            .find(|e| e.path == path && e.mode == mode)
            .unwrap()
    };
    assert_eq!(find("health.check_interval", None).default, "`\"5s\"`");
    assert_eq!(find("backoff.multiplier", None).default, "`2.0`");
    assert_eq!(find("gateway.request_timeout", None).default, "none");
    assert_eq!(find("gateway.max_body_bytes", None).default, "`33554432`");
    assert_eq!(
        find("discovery.nodes[].weight", Some("static")).default,
        "`1`"
    );
    assert_eq!(
        find("discovery.nodes[].id", Some("static")).default,
        "required"
    );
    assert_eq!(
        find("discovery.nodes", Some("static")).default,
        "`[{ id = \"local\", tags = {}, url = \"http://127.0.0.1:8080\", weight = 1 }]`"
    );
    assert_eq!(
        find("discovery.namespace", Some("kubernetes")).default,
        "`\"default\"`"
    );
    assert_eq!(find("discovery.mode", None).default, "`\"static\"`");
}

// ---- never panic ----------------------------------------------------------

#[test]
fn deeply_nested_input_is_an_error_not_a_crash() {
    let depth = 100_000;
    let json = "[".repeat(depth);
    assert!(ClusterConfig::parse(&json, ConfigFormat::Json).is_err());
    let yaml = "[".repeat(depth);
    assert!(ClusterConfig::parse(&yaml, ConfigFormat::Yaml).is_err());
    let toml = format!("a = {}", "[".repeat(depth));
    assert!(ClusterConfig::parse(&toml, ConfigFormat::Toml).is_err());
    let toml = format!("a = {}", "{b = ".repeat(depth));
    assert!(ClusterConfig::parse(&toml, ConfigFormat::Toml).is_err());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9_:/.]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("5s"),
            Just("0s"),
            Just("http://a:1"),
            Just("static"),
            Just("dns"),
            Just("kubernetes"),
            Just("mdns"),
            Just("127.0.0.1:80"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    let keys = prop_oneof![
        Just("discovery".to_owned()),
        Just("health".to_owned()),
        Just("mode".to_owned()),
        Just("nodes".to_owned()),
        Just("id".to_owned()),
        Just("url".to_owned()),
        Just("timeout".to_owned()),
        Just("check_interval".to_owned()),
        Just("jitter".to_owned()),
        Just("backoff".to_owned()),
        Just("gateway".to_owned()),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(keys.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        for format in [ConfigFormat::Toml, ConfigFormat::Json, ConfigFormat::Yaml] {
            let _ = ClusterConfig::parse(&text, format);
        }
    }

    #[test]
    fn config_like_text_never_panics(text in "[\\[\\]{}=:,\"\\n a-z0-9._-]{0,120}") {
        for format in [ConfigFormat::Toml, ConfigFormat::Json, ConfigFormat::Yaml] {
            let _ = ClusterConfig::parse(&text, format);
        }
    }

    #[test]
    fn random_documents_never_panic(doc in arb_json()) {
        let wrapped = json!({ "discovery": doc.clone(), "health": doc.clone(), "gateway": doc.clone() });
        for v in [doc, wrapped] {
            let text = v.to_string();
            match ClusterConfig::parse(&text, ConfigFormat::Json) {
                Ok(c) => prop_assert!(c.validate().is_ok()),
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }

    #[test]
    fn random_env_never_panics(
        doc in arb_json(),
        vars in proptest::collection::vec(
            ("MLX_CLUSTER_[A-Z0-9_]{0,30}", "[a-z0-9\\[\\]{}\".:]{0,10}"),
            0..6,
        ),
    ) {
        let _ = ClusterConfig::parse_with_env(&doc.to_string(), ConfigFormat::Json, vars);
    }
}

#[test]
fn yaml_alias_bombs_are_rejected() {
    // "Billion laughs": 9^9 strings from a few hundred bytes.
    let mut text = String::from(
        "a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(", ");
        text.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
    }
    let err = ClusterConfig::parse(&text, ConfigFormat::Yaml).unwrap_err();
    assert!(err.to_string().starts_with("invalid YAML"), "{err}");
}

#[test]
fn client_keys_and_listener_limits_are_validated() {
    let text = r#"
        [gateway]
        max_connections = 0
        max_header_bytes = 100
        header_read_timeout = "0s"
        api_keys = [
            { name = "alice", key = "s3cret", requests_per_minute = 0 },
            { name = "alice", key_sha256 = "abc" },
            { name = "bob" },
        ]
        tls = { cert = "", key = "/k.pem" }
    "#;
    let err = ClusterConfig::parse(text, ConfigFormat::Toml).unwrap_err();
    let paths: Vec<_> = err.problems().iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "gateway.api_keys[0].requests_per_minute",
            "gateway.api_keys[1].name",
            "gateway.api_keys[1].key_sha256",
            "gateway.api_keys[2]",
            "gateway.tls.cert",
            "gateway.header_read_timeout",
            "gateway.max_connections",
            "gateway.max_header_bytes",
        ],
        "{err}"
    );
    // The secret never shows in the problems.
    assert!(!err.to_string().contains("s3cret"));
}
