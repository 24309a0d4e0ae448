//! Text → [`ClusterConfig`]: formats, structural decoding with paths, and the
//! error type that lists every problem.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{
    ClusterConfig, DiscoveryConfig, DnsDiscovery, KubernetesDiscovery, MdnsDiscovery,
    StaticDiscovery,
};
use crate::node::NodeSpec;

/// Text format of a config file. No default; see
/// [`ConfigFormat::from_extension`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigFormat {
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
}

impl ConfigFormat {
    /// The format for a file extension (`"toml"`, `"json"`, `"yaml"`,
    /// `"yml"`; case-insensitive, a leading dot is ignored).
    #[must_use]
    pub fn from_extension(ext: &str) -> Option<Self> {
        let ext = ext.strip_prefix('.').unwrap_or(ext);
        match ext.to_ascii_lowercase().as_str() {
            "toml" => Some(Self::Toml),
            "json" => Some(Self::Json),
            "yaml" | "yml" => Some(Self::Yaml),
            _ => None,
        }
    }

    /// The format for a file path, from its extension.
    #[must_use]
    pub fn from_path(path: &Path) -> Option<Self> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Self::from_extension)
    }

    /// Parses `text` into a generic JSON value (no schema applied).
    /// Empty or whitespace-only text is an empty table.
    ///
    /// # Errors
    /// One [`ConfigProblem`] with an empty path describing the syntax error
    /// (with line and column).
    pub fn parse_value(self, text: &str) -> Result<Value, ConfigErrors> {
        if text.trim().is_empty() {
            return Ok(Value::Object(Map::new()));
        }
        let syntax = |message: String| ConfigErrors(vec![ConfigProblem::new("", message)]);
        match self {
            Self::Json => {
                serde_json::from_str(text).map_err(|e| syntax(format!("invalid JSON: {e}")))
            }
            Self::Yaml => {
                serde_norway::from_str(text).map_err(|e| syntax(format!("invalid YAML: {e}")))
            }
            Self::Toml => toml::from_str::<Value>(text).map_err(|e| {
                let at = e.span().map_or_else(String::new, |span| {
                    let (line, col) = line_col(text, span.start);
                    format!(" at line {line} column {col}")
                });
                syntax(format!("invalid TOML{at}: {}", e.message().trim()))
            }),
        }
    }
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Toml => "toml",
            Self::Json => "json",
            Self::Yaml => "yaml",
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One problem in a configuration: where (`health.timeout`,
/// `discovery.nodes[2].url`; empty for the document itself or a syntax
/// error; an environment variable name for a bad override) and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigProblem {
    /// Dotted path of the offending key, arrays indexed `[i]`.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration (never empty when returned as an
/// error). `Display` writes one problem per line, in document order of the
/// sections (discovery, health, backoff, cache, routing, gateway,
/// node_tls).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    /// The problems.
    #[must_use]
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.0
    }

    /// Number of problems.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some problem is at exactly `path`.
    #[must_use]
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|p| p.path == path)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigProblem;
    type IntoIter = std::vec::IntoIter<ConfigProblem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The top-level sections, in document order.
pub(crate) const SECTIONS: [&str; 8] = [
    "discovery",
    "health",
    "backoff",
    "cache",
    "routing",
    "gateway",
    "node_tls",
    "observability",
];

impl ClusterConfig {
    /// Parses, decodes and validates a configuration text.
    ///
    /// Equivalent to [`parse_with_env`](Self::parse_with_env) with no
    /// environment variables. Empty text gives the default configuration.
    ///
    /// # Errors
    /// [`ConfigErrors`] listing every problem found, each with its path.
    pub fn parse(text: &str, format: ConfigFormat) -> Result<Self, ConfigErrors> {
        Self::parse_with_env(text, format, std::iter::empty::<(String, String)>())
    }

    /// Parses `text`, applies environment overrides from `env` (see
    /// [`apply_env_overrides`](super::apply_env_overrides); pass
    /// `std::env::vars()` in a binary), then decodes and validates.
    ///
    /// Each top-level section (and each static node) is decoded on its own,
    /// so a structural error in one does not hide problems in the others;
    /// unknown keys are errors. Semantic validation then runs on the
    /// sections that decoded.
    ///
    /// # Errors
    /// [`ConfigErrors`] listing every problem found, each with its path.
    pub fn parse_with_env<I, K, V>(
        text: &str,
        format: ConfigFormat,
        env: I,
    ) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut value = format.parse_value(text)?;
        let env_problems = super::apply_env_overrides(&mut value, env);
        match Self::from_value(value) {
            Ok(config) if env_problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigErrors(env_problems)),
            Err(ConfigErrors(mut problems)) => {
                problems.extend(env_problems);
                Err(ConfigErrors(problems))
            }
        }
    }

    /// Decodes and validates an already-parsed document (a JSON object;
    /// `null` is an empty one).
    ///
    /// # Errors
    /// [`ConfigErrors`] listing every problem found, each with its path.
    pub fn from_value(value: Value) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        let map = match value {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => {
                return Err(ConfigErrors(vec![ConfigProblem::new(
                    "",
                    format!(
                        "expected a table of sections at the top level, found {}",
                        kind(&other)
                    ),
                )]));
            }
        };
        let mut config = Self::default();
        let mut node_indices = None;
        for (key, v) in map {
            match key.as_str() {
                "discovery" => {
                    if let Some((d, indices)) = decode_discovery(v, &mut problems) {
                        config.discovery = d;
                        node_indices = indices;
                    }
                }
                "health" => set(
                    &mut config.health,
                    decode_section("health", v, &mut problems),
                ),
                "backoff" => set(
                    &mut config.backoff,
                    decode_section("backoff", v, &mut problems),
                ),
                "cache" => set(&mut config.cache, decode_section("cache", v, &mut problems)),
                "routing" => set(
                    &mut config.routing,
                    decode_section("routing", v, &mut problems),
                ),
                "gateway" => set(
                    &mut config.gateway,
                    decode_section("gateway", v, &mut problems),
                ),
                "node_tls" => set(
                    &mut config.node_tls,
                    decode_section("node_tls", v, &mut problems),
                ),
                "observability" => set(
                    &mut config.observability,
                    decode_section("observability", v, &mut problems),
                ),
                _ => problems.push(ConfigProblem::new(
                    key.clone(),
                    format!("unknown key (expected one of: {})", SECTIONS.join(", ")),
                )),
            }
        }
        // Structural problems in a stable order whatever the map order.
        problems.sort_by_cached_key(|p| sort_key(&p.path));
        // Semantic checks run on whatever decoded (bad keys left at their
        // defaults); a key that already has a structural problem is not
        // reported twice.
        let structural: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
        let covered = |path: &str| {
            structural.iter().any(|s| {
                path.strip_prefix(s.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
        };
        problems.extend(
            config
                .problems_with_node_indices(node_indices.as_deref())
                .into_iter()
                .filter(|p| !covered(&p.path)),
        );
        if problems.is_empty() {
            Ok(config)
        } else {
            // Stable sort: sections in document order, unknown keys last.
            problems.sort_by_key(|p| {
                let head = p.path.split(['.', '[']).next().unwrap_or("");
                SECTIONS
                    .iter()
                    .position(|s| *s == head)
                    .unwrap_or(SECTIONS.len())
            });
            Err(ConfigErrors(problems))
        }
    }
}

/// (section position, path segments with numbers compared as numbers).
fn sort_key(path: &str) -> (usize, Vec<(u64, String)>) {
    let head = path.split(['.', '[']).next().unwrap_or("");
    let section = SECTIONS
        .iter()
        .position(|s| *s == head)
        .unwrap_or(SECTIONS.len());
    let segments = path
        .split(['.', '[', ']'])
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_or((u64::MAX, s.to_owned()), |n| (n, String::new()))
        })
        .collect();
    (section, segments)
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// Decodes `value` as `T`, recording the first error with its full path.
fn decode_at<T: DeserializeOwned>(
    prefix: &str,
    value: Value,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let mut path = prefix.to_owned();
            for segment in e.path().iter() {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                    Segment::Map { key } => push_key(&mut path, key),
                    Segment::Enum { variant } => push_key(&mut path, variant),
                    Segment::Unknown => push_key(&mut path, "?"),
                }
            }
            problems.push(humanize(path, &e.into_inner().to_string()));
            None
        }
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Rewrites serde's messages into the config's vocabulary:
/// "unknown field `x`, expected one of `a`, `b`" becomes
/// `<path>.x: unknown key (expected one of: a, b)`.
fn humanize(path: String, message: &str) -> ConfigProblem {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        // serde_path_to_error may or may not already include the field.
        let mut full = path.clone();
        if !full.ends_with(&format!(".{field}")) && full != field {
            push_key(&mut full, field);
        }
        let expected = tail
            .trim_start_matches(", ")
            .trim_start_matches("expected one of ")
            .trim_start_matches("expected ")
            .replace('`', "");
        let message = if expected.is_empty() || expected == "there are no fields" {
            "unknown key".to_owned()
        } else {
            format!("unknown key (expected one of: {expected})")
        };
        return ConfigProblem::new(full, message);
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        let mut full = path;
        push_key(&mut full, field);
        return ConfigProblem::new(full, "missing (required)");
    }
    let mut message = message.replace('`', "");
    if message == "invalid socket address syntax" {
        message.push_str(" (expected ip:port, e.g. \"127.0.0.1:8000\")");
    }
    ConfigProblem::new(path, message)
}

/// Decodes one section whose fields all have defaults. On failure, decodes
/// each key alone to report every bad key, not just the first, and returns
/// the section built from the good keys only (bad ones at their defaults),
/// or `None` when not even that decodes.
fn decode_section<T: DeserializeOwned>(
    name: &str,
    value: Value,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    let map = match value {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        other => {
            problems.push(ConfigProblem::new(
                name,
                format!("expected a table, found {}", kind(&other)),
            ));
            return None;
        }
    };
    let mut first = Vec::new();
    if let Some(t) = decode_at::<T>(name, Value::Object(map.clone()), &mut first) {
        return Some(t);
    }
    let before = problems.len();
    let mut good = Map::new();
    for (k, v) in map {
        let mut single = Map::new();
        single.insert(k.clone(), v.clone());
        if decode_at::<T>(name, Value::Object(single), problems).is_some() {
            good.insert(k, v);
        }
    }
    if problems.len() == before {
        // Every key is fine alone but not together.
        problems.extend(first);
        return None;
    }
    decode_at::<T>(name, Value::Object(good), &mut Vec::new())
}

/// Decodes the discovery section. Returns the (possibly partial) config and,
/// when some static nodes failed to decode, the original index of each node
/// that did.
fn decode_discovery(
    value: Value,
    problems: &mut Vec<ConfigProblem>,
) -> Option<(DiscoveryConfig, Option<Vec<usize>>)> {
    let mut map = match value {
        Value::Null => return Some((DiscoveryConfig::default(), None)),
        Value::Object(map) => map,
        other => {
            problems.push(ConfigProblem::new(
                "discovery",
                format!("expected a table, found {}", kind(&other)),
            ));
            return None;
        }
    };
    let mode = match map.remove("mode") {
        None => "static".to_owned(),
        Some(Value::String(s)) => s,
        Some(other) => {
            problems.push(ConfigProblem::new(
                "discovery.mode",
                format!(
                    "expected a string (static, dns, kubernetes or mdns), found {}",
                    kind(&other)
                ),
            ));
            return None;
        }
    };
    let before = problems.len();
    let result = match mode.as_str() {
        "static" => {
            // Decode each node alone so every bad node is reported.
            let mut nodes = None;
            let mut indices = None;
            let mut nodes_bad = false;
            if let Some(v) = map.remove("nodes") {
                match v {
                    Value::Array(items) => {
                        let total = items.len();
                        let mut decoded = Vec::with_capacity(total);
                        let mut kept = Vec::with_capacity(total);
                        for (i, item) in items.into_iter().enumerate() {
                            let path = format!("discovery.nodes[{i}]");
                            if let Some(n) = decode_at::<NodeSpec>(&path, item, problems) {
                                decoded.push(n);
                                kept.push(i);
                            }
                        }
                        if kept.len() < total {
                            indices = Some(kept);
                        }
                        nodes = Some(decoded);
                    }
                    other => {
                        problems.push(ConfigProblem::new(
                            "discovery.nodes",
                            format!("expected an array of nodes, found {}", kind(&other)),
                        ));
                        nodes_bad = true;
                    }
                }
            }
            decode_section::<StaticDiscovery>("discovery", Value::Object(map), problems).map(
                |mut s| {
                    if let Some(nodes) = nodes {
                        s.nodes = nodes;
                    } else if nodes_bad {
                        s.nodes = Vec::new();
                        indices = Some(Vec::new());
                    }
                    (DiscoveryConfig::Static(s), indices)
                },
            )
        }
        "dns" => decode_section::<DnsDiscovery>("discovery", Value::Object(map), problems)
            .map(|d| (DiscoveryConfig::Dns(d), None)),
        "kubernetes" => {
            decode_section::<KubernetesDiscovery>("discovery", Value::Object(map), problems)
                .map(|k| (DiscoveryConfig::Kubernetes(k), None))
        }
        "mdns" => decode_section::<MdnsDiscovery>("discovery", Value::Object(map), problems)
            .map(|m| (DiscoveryConfig::Mdns(m), None)),
        other => {
            problems.push(ConfigProblem::new(
                "discovery.mode",
                format!("unknown mode {other:?} (expected static, dns, kubernetes or mdns)"),
            ));
            None
        }
    };
    for p in &mut problems[before..] {
        if p.message.starts_with("unknown key") && !p.path.starts_with("discovery.nodes[") {
            p.message =
                p.message
                    .replacen("unknown key", &format!("unknown key for mode {mode:?}"), 1);
        }
    }
    result
}
