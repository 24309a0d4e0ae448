//! The configuration reference: one table of every key, from which
//! `docs/configuration.md` is generated. Defaults come from the real
//! `Default` impls, so the page cannot drift from the code.

use std::fmt::Write as _;

use serde_json::Value;

use super::{
    ClusterConfig, DiscoveryConfig, DnsDiscovery, KubernetesDiscovery, MdnsDiscovery,
    StaticDiscovery,
};

/// One documented configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceEntry {
    /// Dotted path; array elements as `[]` (`discovery.nodes[].url`).
    pub path: &'static str,
    /// Discovery mode the key belongs to (`static`, `dns`, `kubernetes`,
    /// `mdns`),
    /// or none for keys valid in every configuration.
    pub mode: Option<&'static str>,
    /// Value type in words (`duration`, `integer`, `string`, ...).
    pub ty: &'static str,
    /// Default, rendered as a TOML value in backticks (from the `Default`
    /// impls), or `none` / `required`.
    pub default: String,
    /// What the key means.
    pub doc: &'static str,
}

/// (path, mode, type, doc, default override)
type Raw = (
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    Option<&'static str>,
);

const S: Option<&str> = Some("static");
const D: Option<&str> = Some("dns");
const K: Option<&str> = Some("kubernetes");
const M: Option<&str> = Some("mdns");
const REQUIRED: Option<&str> = Some("required");

const ENTRIES: &[Raw] = &[
    (
        "discovery.mode",
        None,
        "enum: static | dns | kubernetes | mdns",
        "Where nodes come from. Selects which of the keys below apply.",
        None,
    ),
    (
        "discovery.nodes",
        S,
        "array of tables",
        "The nodes. At least one; ids and URLs must be unique.",
        None,
    ),
    (
        "discovery.nodes[].id",
        S,
        "string",
        "Unique node id (no whitespace).",
        REQUIRED,
    ),
    (
        "discovery.nodes[].url",
        S,
        "string",
        "Base URL of the OpenAI-compatible server: `http(s)://host[:port][/prefix]`, without a trailing `/` and without `/v1`.",
        REQUIRED,
    ),
    (
        "discovery.nodes[].weight",
        S,
        "integer",
        "Relative capacity for weighted strategies, at least 1.",
        None,
    ),
    (
        "discovery.nodes[].tags",
        S,
        "table of strings",
        "Free-form labels, e.g. `{ rack = \"a\" }`. The gateway reads two: `api` (`openai`: `/v1/messages` is translated to chat completions for this node; `anthropic`: the node serves `/v1/messages` itself, passed through; default `openai`) and `max_output_tokens` (cap of `max_tokens` of Messages requests for this node, overriding `gateway.max_output_tokens`; 0 = no cap).",
        None,
    ),
    (
        "discovery.nodes[].api_key",
        S,
        "secret string (optional)",
        "Bearer token sent to this node. Never printed or serialized.",
        None,
    ),
    (
        "discovery.nodes[].tls.ca_file",
        S,
        "path (optional)",
        "For an `https://` node: PEM file of CA certificates trusted on top of the system roots (wins over `node_tls.ca_file`).",
        None,
    ),
    (
        "discovery.nodes[].tls.insecure_skip_verify",
        S,
        "boolean",
        "For an `https://` node: accept any certificate (self-signed lab setups; logged as a warning).",
        Some("`false`"),
    ),
    (
        "discovery.refresh_interval",
        S,
        "duration",
        "How often the static list is re-validated.",
        None,
    ),
    (
        "discovery.validation_timeout",
        S,
        "duration",
        "Timeout of a new node's `GET /v1/models` validation.",
        None,
    ),
    (
        "discovery.srv_name",
        D,
        "string",
        "SRV record name, e.g. `_mlx._tcp.example.internal`. Each target:port is a node with id `target:port`.",
        REQUIRED,
    ),
    (
        "discovery.nameserver",
        D,
        "socket address (optional)",
        "DNS server `ip:port` to ask instead of the system resolver.",
        None,
    ),
    (
        "discovery.port_override",
        D,
        "integer (optional)",
        "Port used instead of the SRV records' ports (1-65535).",
        None,
    ),
    (
        "discovery.scheme",
        D,
        "enum: http | https",
        "Scheme of the node URLs built from SRV targets.",
        None,
    ),
    (
        "discovery.min_refresh",
        D,
        "duration",
        "Shortest time between resolutions (records' TTL is clamped to [min_refresh, max_refresh]).",
        None,
    ),
    (
        "discovery.max_refresh",
        D,
        "duration",
        "Longest time between resolutions; at least `min_refresh`.",
        None,
    ),
    (
        "discovery.validation_timeout",
        D,
        "duration",
        "Timeout of a new node's `GET /v1/models` validation.",
        None,
    ),
    (
        "discovery.namespace",
        K,
        "string",
        "Namespace to watch (a DNS label).",
        None,
    ),
    (
        "discovery.service_name",
        K,
        "string (optional)",
        "Service whose EndpointSlices are watched. Exactly one of `service_name` and `label_selector`.",
        None,
    ),
    (
        "discovery.label_selector",
        K,
        "string (optional)",
        "Label selector for EndpointSlices, e.g. `app=mlx`. Exactly one of `service_name` and `label_selector`.",
        None,
    ),
    (
        "discovery.port_name",
        K,
        "string",
        "Name of the endpoint port to use.",
        None,
    ),
    (
        "discovery.scheme",
        K,
        "enum: http | https",
        "Scheme of the node URLs built from endpoints.",
        None,
    ),
    (
        "discovery.validation_timeout",
        K,
        "duration",
        "Timeout of a new node's `GET /v1/models` validation.",
        None,
    ),
    (
        "discovery.service_types",
        M,
        "array of strings",
        "DNS-SD service types browsed, each `_name._tcp.local.`. Every instance is a node: id = instance name, URL from its address and port, weight / model / kind / tags from TXT keys (docs/discovery.md).",
        None,
    ),
    (
        "discovery.interfaces",
        M,
        "array of strings",
        "Network interfaces to browse on, by name (e.g. `en0`); empty = every interface that can multicast.",
        None,
    ),
    (
        "discovery.port",
        M,
        "integer",
        "UDP port of mDNS. Another port than 5353 only reaches peers configured alike.",
        None,
    ),
    (
        "discovery.scheme",
        M,
        "enum: http | https",
        "Scheme of node URLs, unless an instance's TXT `scheme` says otherwise.",
        None,
    ),
    (
        "discovery.validation_timeout",
        M,
        "duration",
        "Timeout of a new node's `GET /v1/models` validation.",
        None,
    ),
    (
        "health.check_interval",
        None,
        "duration",
        "Time between active probes of a node.",
        None,
    ),
    (
        "health.timeout",
        None,
        "duration",
        "Timeout of one probe; shorter than `check_interval`.",
        None,
    ),
    (
        "health.max_consecutive_failures",
        None,
        "integer",
        "Consecutive failures that make a node unhealthy regardless of its success rate (at least 1).",
        None,
    ),
    (
        "health.unhealthy_threshold",
        None,
        "float",
        "Success rate below which a node is unhealthy (0-1, at most `degraded_threshold`).",
        None,
    ),
    (
        "health.degraded_threshold",
        None,
        "float",
        "Success rate below which a node is degraded (0-1).",
        None,
    ),
    (
        "health.recovery_successes",
        None,
        "integer",
        "Consecutive successes that bring a node back to healthy (at least 1).",
        None,
    ),
    (
        "health.probe_path",
        None,
        "string (optional)",
        "Path probed on each node, appended to its base URL (starts with `/`). Unset: by node kind, `/health` for mlx_lm.server, llama.cpp, vLLM and SGLang (it fails when mlx_lm.server's generation thread died), `/v1/models` for generic nodes.",
        Some("by node kind"),
    ),
    (
        "health.window",
        None,
        "duration",
        "Rolling window over which success rate and latency are computed.",
        None,
    ),
    (
        "health.max_samples",
        None,
        "integer",
        "Most samples kept in the rolling window (at least 1).",
        None,
    ),
    (
        "backoff.initial",
        None,
        "duration",
        "First delay before re-probing an unhealthy node.",
        None,
    ),
    (
        "backoff.max",
        None,
        "duration",
        "Largest delay; at least `initial`.",
        None,
    ),
    (
        "backoff.multiplier",
        None,
        "float",
        "Growth factor per failed attempt (at least 1).",
        None,
    ),
    (
        "backoff.jitter",
        None,
        "float",
        "Relative random spread of each delay, 0-1 (0.2 = ±20%).",
        None,
    ),
    (
        "cache.max_prefixes_per_node",
        None,
        "integer",
        "Prompt prefixes a node's cache holds (mlx_lm.server keeps 10); the router forgets the least recently used beyond this.",
        None,
    ),
    (
        "cache.max_tokens_per_node",
        None,
        "integer",
        "Prompt tokens a node's cache is assumed to hold in total.",
        None,
    ),
    (
        "cache.entry_ttl",
        None,
        "duration",
        "A cached prefix unused for this long is assumed evicted.",
        None,
    ),
    (
        "cache.fingerprint_block_bytes",
        None,
        "integer",
        "Block size of prompt fingerprints in bytes of canonical prompt text (about 4 bytes per token), 16-1048576.",
        None,
    ),
    (
        "cache.sync_interval",
        None,
        "duration",
        "How often the per-node cache model is pruned (TTL) and republished.",
        None,
    ),
    (
        "cache.warmup_prompts",
        None,
        "array of strings",
        "System prompts sent to each new node (1-token completions) so its cache is warm before real traffic.",
        None,
    ),
    (
        "cache.warmup_concurrency",
        None,
        "integer",
        "Warm-up requests in flight at once per node (at least 1).",
        None,
    ),
    (
        "cache.warmup_timeout",
        None,
        "duration",
        "Timeout of one warm-up request.",
        None,
    ),
    (
        "cache.warmup_retries",
        None,
        "integer",
        "Retries of a failed warm-up request.",
        None,
    ),
    (
        "routing.strategy",
        None,
        "enum: round-robin | least-loaded | latency-based | cache-aware | cache-score",
        "Load-balancing strategy.",
        None,
    ),
    (
        "routing.max_retries",
        None,
        "integer",
        "Retries on another node when a request fails before its first byte (at most 10).",
        None,
    ),
    (
        "routing.retry_delay",
        None,
        "duration",
        "Pause before a retry.",
        None,
    ),
    (
        "routing.session_ttl",
        None,
        "duration",
        "How long a session stays pinned to its node after its last request.",
        None,
    ),
    (
        "routing.session_header",
        None,
        "string",
        "Request header carrying the session key (lowercase).",
        None,
    ),
    (
        "routing.max_sessions",
        None,
        "integer",
        "Most sessions remembered; the least recently used are dropped.",
        None,
    ),
    (
        "routing.sticky_sessions",
        None,
        "boolean",
        "Send a request with a session key back to the node that served its session (a hard pin for round-robin, least-loaded, latency-based and cache-score; a tie-break for cache-aware).",
        None,
    ),
    (
        "routing.prefill_concurrency",
        None,
        "integer",
        "Requests each node prefills at once; more wait in the gateway until one has its first token, because servers that batch prompt processing (mlx_lm.server) make every prompt in the batch wait for all of it. 0 = unlimited; node tag `prefill_concurrency` overrides it.",
        None,
    ),
    (
        "routing.consistent_replicas",
        None,
        "boolean",
        "Route from what every gateway replica sees alike (the conversation key of the request, node health), so replicas behind a load balancer choose the same node without sharing state; a single gateway routes better without it.",
        None,
    ),
    (
        "gateway.listen",
        None,
        "socket address",
        "Address the gateway listens on.",
        None,
    ),
    (
        "gateway.admin_token",
        None,
        "secret string (optional)",
        "Bearer token required by the admin API (drain, undrain, discovery refresh); without it the admin API is disabled and answers 403.",
        None,
    ),
    (
        "gateway.connect_timeout",
        None,
        "duration",
        "Timeout to connect to a node.",
        None,
    ),
    (
        "gateway.first_byte_timeout",
        None,
        "duration",
        "Timeout until a node's first response byte (prefill of a long cold prompt is slow).",
        None,
    ),
    (
        "gateway.idle_timeout",
        None,
        "duration",
        "Longest gap between two chunks of a streamed response.",
        None,
    ),
    (
        "gateway.request_timeout",
        None,
        "duration (optional)",
        "Overall limit per request; unset = no limit. At least `first_byte_timeout`.",
        None,
    ),
    (
        "gateway.max_body_bytes",
        None,
        "integer",
        "Largest request body accepted, in bytes (at least 1024).",
        None,
    ),
    (
        "gateway.shutdown_grace",
        None,
        "duration",
        "On shutdown, how long in-flight requests may finish.",
        None,
    ),
    (
        "gateway.log_format",
        None,
        "enum: human | json",
        "Log output format.",
        None,
    ),
    (
        "gateway.api_keys",
        None,
        "array of tables",
        "Client API keys, sent as `Authorization: Bearer KEY` or `x-api-key: KEY`. When any key is configured (here or in `api_keys_file`), every endpoint except `/healthz`, `/readyz`, the dashboard page and the admin API answers 401 without a valid key. Empty = open.",
        None,
    ),
    (
        "gateway.api_keys[].name",
        None,
        "string",
        "Name of the key's holder, 1-64 characters of `A-Z a-z 0-9 _ - .`, unique: the label of its metrics (the key itself never appears).",
        REQUIRED,
    ),
    (
        "gateway.api_keys[].key",
        None,
        "secret string (optional)",
        "The key itself. Never printed or serialized. Set this or `key_sha256`.",
        None,
    ),
    (
        "gateway.api_keys[].key_sha256",
        None,
        "string (optional)",
        "Lowercase hex SHA-256 of the key (`mlx-cluster hash-key` prints it), so the config need not hold the secret. Set this or `key`.",
        None,
    ),
    (
        "gateway.api_keys[].requests_per_minute",
        None,
        "integer (optional)",
        "Most requests per minute (token bucket); beyond it 429 with `Retry-After`. Unset = no limit.",
        None,
    ),
    (
        "gateway.api_keys[].max_concurrent",
        None,
        "integer (optional)",
        "Most requests in flight at once (a stream counts until it ends); beyond it 429 with `Retry-After`. Unset = no limit.",
        None,
    ),
    (
        "gateway.api_keys_file",
        None,
        "path (optional)",
        "File of hashed client keys read at start-up, one `NAME sha256:HEX [requests_per_minute=N] [max_concurrent=N]` per line (`#` comments). Adds to `api_keys`; names must be unique across both.",
        None,
    ),
    (
        "gateway.tls.cert",
        None,
        "path",
        "Serve HTTPS: PEM file with the certificate chain (server certificate first). Without a `[gateway.tls]` table the gateway speaks plain HTTP.",
        REQUIRED,
    ),
    (
        "gateway.tls.key",
        None,
        "path",
        "PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).",
        REQUIRED,
    ),
    (
        "gateway.header_read_timeout",
        None,
        "duration",
        "Time a client has to send a request's headers (and to finish the TLS handshake); also how long an idle kept-alive connection stays open.",
        None,
    ),
    (
        "gateway.body_read_timeout",
        None,
        "duration",
        "Time a client has to send a whole request body; beyond it 408.",
        None,
    ),
    (
        "gateway.max_connections",
        None,
        "integer",
        "Most client connections open at once; a connection beyond it is answered 503 (`connection_limit`) and closed.",
        None,
    ),
    (
        "gateway.max_header_bytes",
        None,
        "integer",
        "Largest request head (request line and headers) in bytes, at least 8192; beyond it 431.",
        None,
    ),
    (
        "gateway.max_output_tokens",
        None,
        "integer",
        "Largest `max_tokens` an Anthropic Messages request (`/v1/messages`) may ask of a node; larger requests are capped (Claude Code asks for 64k–128k tokens: minutes of decoding on a Mac). A node's `max_output_tokens` tag overrides it; 0 = no cap.",
        None,
    ),
    (
        "gateway.default_model",
        None,
        "string",
        "Model sent to the nodes for a Messages request whose model matches no `model_aliases` entry and is listed by no node (Claude Code sends `claude-…` names). The default is mlx_lm.server's name for the model it loaded.",
        None,
    ),
    (
        "gateway.model_aliases",
        None,
        "table of strings",
        "Model names of Messages requests rewritten before routing: an exact name or a prefix ending in `*`, e.g. `{ \"claude-*\" = \"qwen3-coder\" }`. The exact name wins, then the longest prefix.",
        None,
    ),
    (
        "node_tls.ca_file",
        None,
        "path (optional)",
        "PEM file of CA certificates trusted for every `https://` node on top of the system roots.",
        None,
    ),
    (
        "node_tls.insecure_skip_verify",
        None,
        "boolean",
        "Accept any certificate from every `https://` node (self-signed lab setups; logged as a warning).",
        None,
    ),
    (
        "observability.decision_log_size",
        None,
        "integer",
        "Decision records kept in memory (the most recent requests: node, reason, predicted and reported cached tokens, cost terms, runner-up, timings, outcome; never prompt text), served by `GET /v1/cluster/decisions`. 0 = off; at most 1000000.",
        None,
    ),
    (
        "observability.topology_headers",
        None,
        "boolean",
        "Whether proxied answers carry `x-mlx-cluster-node` (the node that answered) and `x-mlx-cluster-reason` (why it was chosen). Turn off to hide the cluster's topology from clients.",
        None,
    ),
    (
        "observability.sample_interval",
        None,
        "duration",
        "How often the gateway samples the dashboard's time series (requests/s, TTFT p50/p99, cache hit ratio, in flight per node, node status). At least 100ms.",
        None,
    ),
    (
        "observability.history",
        None,
        "duration",
        "How much of the time series the gateway keeps in memory (at least `sample_interval`, at most 100000 samples).",
        None,
    ),
    (
        "observability.otlp_endpoint",
        None,
        "URL (optional)",
        "OTLP/HTTP (protobuf) endpoint for OpenTelemetry traces, e.g. `http://127.0.0.1:4318/v1/traces`: a span per request with children for select, each upstream attempt, first byte and stream end; W3C `traceparent` is then sent to the nodes (and a client's is continued). Unset = no traces.",
        None,
    ),
];

/// The default document for a discovery mode (None = the default mode).
fn defaults_for(mode: Option<&str>) -> Value {
    let discovery = match mode {
        Some("dns") => DiscoveryConfig::Dns(DnsDiscovery::default()),
        Some("kubernetes") => DiscoveryConfig::Kubernetes(KubernetesDiscovery::default()),
        Some("mdns") => DiscoveryConfig::Mdns(MdnsDiscovery::default()),
        _ => DiscoveryConfig::Static(StaticDiscovery::default()),
    };
    let config = ClusterConfig {
        discovery,
        ..ClusterConfig::default()
    };
    serde_json::to_value(config).unwrap_or(Value::Null)
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = root;
    for seg in path.split('.') {
        let (key, elem) = match seg.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (seg, false),
        };
        cur = cur.get(key)?;
        if elem {
            cur = cur.get(0)?;
        }
    }
    Some(cur)
}

/// Renders a JSON value as an inline TOML value.
fn toml_inline(v: &Value) -> String {
    match v {
        Value::Null => "none".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(toml_inline).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".to_owned(),
        Value::Object(map) => {
            // Sorted, so the output does not depend on serde_json's
            // `preserve_order` feature being enabled by another crate.
            let mut map: Vec<(&String, &Value)> = map.iter().collect();
            map.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_inline(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
    }
}

/// Every documented key with its type, default and meaning, in document
/// order. Defaults are taken from the `Default` impls.
#[must_use]
pub fn config_reference() -> Vec<ReferenceEntry> {
    ENTRIES
        .iter()
        .map(|&(path, mode, ty, doc, default_override)| {
            let default = default_override.map_or_else(
                || {
                    let root = defaults_for(mode);
                    lookup(&root, path)
                        .map_or_else(|| "none".to_owned(), |v| format!("`{}`", toml_inline(v)))
                },
                str::to_owned,
            );
            ReferenceEntry {
                path,
                mode,
                ty,
                default,
                doc,
            }
        })
        .collect()
}

/// Whether the key at `segments` (lowercase, numeric = array index) is
/// documented as string-typed, so an environment override keeps its value
/// as a string.
pub(crate) fn is_string_path(segments: &[String]) -> bool {
    let mut path = String::new();
    for s in segments {
        if s.parse::<usize>().is_ok() {
            path.push_str("[]");
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(s);
        }
    }
    ENTRIES.iter().any(|(p, _, ty, _, _)| {
        *p == path
            && (ty.starts_with("string")
                || ty.starts_with("secret")
                || ty.starts_with("socket")
                || ty.starts_with("path")
                || ty.starts_with("enum"))
    })
}

const INTRO: &str = r#"# Configuration reference

<!-- Generated by `cluster_types::config_reference_markdown()`; do not edit.
     Regenerate with `UPDATE_DOCS=1 cargo test -p cluster-types`. -->

The gateway reads one configuration file in TOML, JSON or YAML (chosen by
its extension: `.toml`, `.json`, `.yaml`/`.yml`). Every key is optional and
takes the default listed below; an empty file is a valid configuration (one
static node at `http://127.0.0.1:8080`). See
[`example-config.toml`](example-config.toml) for an annotated example.

## Rules

- **Unknown keys are errors**, reported with their path.
- **Durations** are strings of `<integer><unit>` parts, largest first:
  `"250ms"`, `"5s"`, `"1m30s"`, `"2h"`. Units: `d`, `h`, `m`, `s`, `ms`,
  `us`, `ns`; `"0"` is zero. A plain integer is a number of milliseconds.
- **Validation reports every problem at once**, one per line, each with its
  path, e.g.
  `health.timeout: must be shorter than health.check_interval (5s)` or
  `discovery.nodes[2].url: not an http(s) URL`. Each section (and each
  static node) is decoded on its own, so a mistake in one does not hide
  mistakes in another.
- **Secrets** (`api_key`, `admin_token`) are never printed: logs and
  serialized configs show `<redacted>`.

## Environment overrides

Any key can be set from the environment, on top of the file:
`MLX_CLUSTER_` + the path in upper case, with `__` (double underscore)
between path segments; a single `_` stays part of a key name.

| Variable | Sets |
|---|---|
| `MLX_CLUSTER_HEALTH__CHECK_INTERVAL=10s` | `health.check_interval = "10s"` |
| `MLX_CLUSTER_ROUTING__STRATEGY=least-loaded` | `routing.strategy = "least-loaded"` |
| `MLX_CLUSTER_DISCOVERY__NODES__0__URL=http://10.0.0.2:8080` | `discovery.nodes[0].url` |
| `MLX_CLUSTER_CACHE__WARMUP_PROMPTS=["You are a coding agent."]` | `cache.warmup_prompts` (JSON array) |

- A numeric segment indexes an array; the index equal to the array's length
  appends an element. Missing tables are created.
- Typing: keys documented as strings (and keys holding a string in the file)
  keep the value as a string; otherwise `true`/`false` are booleans, numbers
  are numbers, text starting with `[` or `{` that parses as JSON is that
  value, and anything else is a string.
- Variables whose first segment is not a section (`discovery`, `health`,
  `backoff`, `cache`, `routing`, `gateway`, `node_tls`, `observability`)
  are an error when they contain `__`, and ignored otherwise (so tooling
  variables such as `MLX_CLUSTER_VENV` do not interfere).
- Changing `discovery.mode` from the environment does not remove the keys of
  the file's mode; set the mode in the file.
"#;

const SECTION_DOCS: &[(&str, &str)] = &[
    (
        "discovery",
        "Where nodes come from. `mode` selects one of four sources; the keys of the other modes are rejected.",
    ),
    (
        "health",
        "Active health checks and the thresholds of the node state machine (initializing → healthy ⇄ degraded ⇄ unhealthy → offline).",
    ),
    (
        "backoff",
        "Jittered exponential backoff before an unhealthy node is probed again: delay n = min(max, initial × multiplier^n) × a random factor in [1 − jitter, 1 + jitter].",
    ),
    (
        "cache",
        "The router's model of each node's prompt (KV) cache, prompt fingerprints, and cache warm-up.",
    ),
    ("routing", "Load balancing, retries and sticky sessions."),
    ("gateway", "The HTTP front end."),
    (
        "node_tls",
        "Certificate verification toward `https://` nodes: system roots, plus an optional CA file; a node's own `tls` table wins field by field.",
    ),
    (
        "observability",
        "What the gateway records and exposes about its routing: decision records, topology headers, the dashboard's time series and OpenTelemetry traces (see `docs/observability.md`).",
    ),
];

fn table_row(out: &mut String, e: &ReferenceEntry) {
    // A `|` inside a cell would end it.
    let cell = |s: &str| s.replace('|', "\\|");
    let _ = writeln!(
        out,
        "| `{}` | {} | {} | {} |",
        e.path,
        cell(e.ty),
        cell(&e.default),
        cell(e.doc)
    );
}

/// The full Markdown of `docs/configuration.md`: rules, environment
/// overrides, and a table per section with every key's type, default and
/// meaning (from [`config_reference`]).
#[must_use]
pub fn config_reference_markdown() -> String {
    let entries = config_reference();
    let mut out = String::from(INTRO);
    for (section, doc) in SECTION_DOCS {
        let _ = write!(out, "\n## `[{section}]`\n\n{doc}\n");
        let in_section: Vec<&ReferenceEntry> = entries
            .iter()
            .filter(|e| e.path.split('.').next() == Some(section))
            .collect();
        let mut modes: Vec<Option<&str>> = Vec::new();
        for e in &in_section {
            if !modes.contains(&e.mode) {
                modes.push(e.mode);
            }
        }
        for mode in modes {
            if let Some(m) = mode {
                let _ = write!(out, "\n### `mode = \"{m}\"`\n");
            }
            out.push_str("\n| Key | Type | Default | Description |\n|---|---|---|---|\n");
            for e in in_section.iter().filter(|e| e.mode == mode) {
                table_row(&mut out, e);
            }
        }
    }
    out
}
