//! Environment overrides (`MLX_CLUSTER_…`) as a pure function over key/value
//! pairs.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::ConfigProblem;
use super::parse::{SECTIONS, kind};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "MLX_CLUSTER_";

/// Applies `MLX_CLUSTER_…` overrides from `vars` to a parsed document
/// (before it is decoded), returning the problems found (empty = all
/// applied).
///
/// # Rules
/// - The name after [`ENV_PREFIX`] is split on `__` (double underscore)
///   into path segments and lowercased; a single `_` stays inside a key:
///   `MLX_CLUSTER_HEALTH__CHECK_INTERVAL=10s` sets `health.check_interval`.
/// - A numeric segment indexes an array: `MLX_CLUSTER_DISCOVERY__NODES__0__URL`
///   sets `discovery.nodes[0].url`. An index equal to the array length
///   appends an element; larger indices are an error. Missing tables and
///   arrays on the way are created.
/// - Variables are applied in path order (numeric segments compared as
///   numbers), so the result does not depend on the order of `vars`.
/// - Value typing: if the key is a string in the document, or the reference
///   documents it as a string, the value stays a string. Otherwise
///   `true`/`false` become booleans, integers and finite decimals numbers,
///   text starting with `[` or `{` that parses as JSON becomes that array or
///   table, and anything else a string. (Durations accept both `"10s"` and
///   an integer of milliseconds.)
/// - Variables without `__` whose name is not a section (e.g.
///   `MLX_CLUSTER_VENV`, used by tooling) are ignored, as are variables
///   without the prefix. A variable whose first segment is not a section
///   (`MLX_CLUSTER_HEALHT__TIMEOUT`) is a problem, as is an empty segment.
///
/// Problems carry the variable name as their path.
///
/// ```
/// use cluster_types::{ClusterConfig, ConfigFormat};
///
/// let env = [("MLX_CLUSTER_HEALTH__CHECK_INTERVAL", "10s"), ("HOME", "/root")];
/// let config = ClusterConfig::parse_with_env("", ConfigFormat::Toml, env).unwrap();
/// assert_eq!(config.health.check_interval.as_secs(), 10);
/// ```
pub fn apply_env_overrides<I, K, V>(doc: &mut Value, vars: I) -> Vec<ConfigProblem>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut problems = Vec::new();
    let mut overrides: Vec<(Vec<String>, String, String)> = Vec::new();
    for (key, value) in vars {
        let key = key.as_ref();
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let Some(first) = segments.first() else {
            continue;
        };
        let is_section = SECTIONS.contains(&first.as_str());
        if segments.len() == 1 {
            if is_section {
                problems.push(ConfigProblem::new(
                    key,
                    format!(
                        "names a whole section; name a key inside it, e.g. {ENV_PREFIX}{}__<KEY>",
                        first.to_ascii_uppercase()
                    ),
                ));
            }
            continue;
        }
        if segments.iter().any(String::is_empty) {
            problems.push(ConfigProblem::new(
                key,
                "empty path segment (use '__' only between keys)",
            ));
            continue;
        }
        if !is_section {
            problems.push(ConfigProblem::new(
                key,
                format!(
                    "unknown section {first:?} (expected one of: {})",
                    SECTIONS.join(", ")
                ),
            ));
            continue;
        }
        overrides.push((segments, key.to_owned(), value.as_ref().to_owned()));
    }
    overrides.sort_by(|a, b| compare_paths(&a.0, &b.0));

    if doc.is_null() {
        *doc = Value::Object(Map::new());
    }
    for (segments, key, value) in overrides {
        if let Err(message) = set_path(doc, &segments, &value) {
            problems.push(ConfigProblem::new(key, message));
        }
    }
    problems
}

fn compare_paths(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

fn display_path(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.parse::<u64>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

fn container_for(next: &str) -> Value {
    if next.parse::<usize>().is_ok() {
        Value::Array(Vec::new())
    } else {
        Value::Object(Map::new())
    }
}

/// Walks (and creates) `segments[..n-1]` and sets the leaf.
fn set_path(doc: &mut Value, segments: &[String], raw: &str) -> Result<(), String> {
    let Some((leaf, parents)) = segments.split_last() else {
        return Err("empty path".to_owned());
    };
    let mut cur = doc;
    for (i, seg) in parents.iter().enumerate() {
        let next = segments.get(i + 1).map_or("", String::as_str);
        cur = child(cur, seg, || container_for(next), &segments[..=i])?;
        if cur.is_null() {
            *cur = container_for(next);
        }
    }
    let string_typed = super::reference::is_string_path(segments);
    let slot = child(cur, leaf, || Value::Null, segments)?;
    let value = if slot.is_string() || string_typed {
        Value::String(raw.to_owned())
    } else {
        guess(raw)
    };
    *slot = value;
    Ok(())
}

fn child<'a>(
    cur: &'a mut Value,
    seg: &str,
    make: impl FnOnce() -> Value,
    so_far: &[String],
) -> Result<&'a mut Value, String> {
    let parent_path = display_path(&so_far[..so_far.len() - 1]);
    match cur {
        Value::Object(map) => Ok(map.entry(seg.to_owned()).or_insert_with(make)),
        Value::Array(items) => {
            let Ok(index) = seg.parse::<usize>() else {
                return Err(format!(
                    "{parent_path} is an array; expected a numeric index, got {seg:?}"
                ));
            };
            let len = items.len();
            match index.cmp(&len) {
                Ordering::Less => Ok(&mut items[index]),
                Ordering::Equal => {
                    items.push(make());
                    Ok(&mut items[index])
                }
                Ordering::Greater => Err(format!(
                    "index {index} is past the end of {parent_path} ({len} element{})",
                    if len == 1 { "" } else { "s" }
                )),
            }
        }
        other => Err(format!(
            "cannot set {}: {} is {}",
            display_path(so_far),
            if parent_path.is_empty() {
                "the document"
            } else {
                &parent_path
            },
            kind(other)
        )),
    }
}

fn guess(raw: &str) -> Value {
    match raw {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(n) = raw.parse::<u64>() {
        return Value::from(n);
    }
    if let Ok(n) = raw.parse::<i64>() {
        return Value::from(n);
    }
    let numeric = raw.bytes().any(|b| b.is_ascii_digit())
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if numeric
        && let Ok(f) = raw.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    if (raw.starts_with('[') || raw.starts_with('{'))
        && let Ok(v) = serde_json::from_str::<Value>(raw)
    {
        return v;
    }
    Value::String(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(doc: Value, vars: &[(&str, &str)]) -> (Value, Vec<ConfigProblem>) {
        let mut doc = doc;
        let problems = apply_env_overrides(&mut doc, vars.iter().copied());
        (doc, problems)
    }

    #[test]
    fn sets_nested_keys_with_typing() {
        let (doc, problems) = apply(
            json!({"health": {"probe_path": "/x"}}),
            &[
                ("MLX_CLUSTER_HEALTH__CHECK_INTERVAL", "10s"),
                ("MLX_CLUSTER_HEALTH__MAX_SAMPLES", "50"),
                ("MLX_CLUSTER_HEALTH__DEGRADED_THRESHOLD", "0.9"),
                ("MLX_CLUSTER_HEALTH__PROBE_PATH", "/health"),
                ("MLX_CLUSTER_GATEWAY__ADMIN_TOKEN", "12345"),
                ("MLX_CLUSTER_ROUTING__SESSION_HEADER", "true"),
                ("MLX_CLUSTER_CACHE__WARMUP_PROMPTS", r#"["a","b"]"#),
                ("MLX_CLUSTER_VENV", "/opt/venv"),
                ("MLX_CLUSTER_TINY_MODEL", "/m"),
                ("PATH", "/bin"),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            doc,
            json!({
                "health": {"probe_path": "/health", "check_interval": "10s", "max_samples": 50, "degraded_threshold": 0.9},
                "gateway": {"admin_token": "12345"},
                "routing": {"session_header": "true"},
                "cache": {"warmup_prompts": ["a", "b"]},
            })
        );
    }

    #[test]
    fn indexes_arrays_in_numeric_order() {
        let mut vars = vec![];
        for i in (0..12).rev() {
            vars.push((
                format!("MLX_CLUSTER_DISCOVERY__NODES__{i}__URL"),
                format!("http://h{i}:1"),
            ));
            vars.push((
                format!("MLX_CLUSTER_DISCOVERY__NODES__{i}__ID"),
                format!("n{i}"),
            ));
        }
        let mut doc = Value::Null;
        let problems = apply_env_overrides(&mut doc, vars);
        assert!(problems.is_empty(), "{problems:?}");
        let nodes = doc["discovery"]["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 12);
        assert_eq!(nodes[10], json!({"id": "n10", "url": "http://h10:1"}));
    }

    #[test]
    fn overrides_existing_array_elements() {
        let (doc, problems) = apply(
            json!({"discovery": {"nodes": [{"id": "a", "url": "http://a:1", "weight": 1}]}}),
            &[("MLX_CLUSTER_DISCOVERY__NODES__0__WEIGHT", "3")],
        );
        assert!(problems.is_empty());
        assert_eq!(doc["discovery"]["nodes"][0]["weight"], 3);
    }

    #[test]
    fn reports_bad_variables() {
        let (_, problems) = apply(
            json!({"health": {"timeout": "1s"}, "discovery": {"nodes": []}}),
            &[
                ("MLX_CLUSTER_HEALHT__TIMEOUT", "1s"),
                ("MLX_CLUSTER_HEALTH", "x"),
                ("MLX_CLUSTER_HEALTH____X", "x"),
                ("MLX_CLUSTER_HEALTH__TIMEOUT__X", "1"),
                ("MLX_CLUSTER_DISCOVERY__NODES__5__ID", "x"),
                ("MLX_CLUSTER_DISCOVERY__NODES__ID", "x"),
            ],
        );
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "MLX_CLUSTER_HEALHT__TIMEOUT",
                "MLX_CLUSTER_HEALTH",
                "MLX_CLUSTER_HEALTH____X",
                "MLX_CLUSTER_DISCOVERY__NODES__5__ID",
                "MLX_CLUSTER_DISCOVERY__NODES__ID",
                "MLX_CLUSTER_HEALTH__TIMEOUT__X",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[3].message.contains("past the end"),
            "{}",
            problems[3].message
        );
        assert!(
            problems[5].message.contains("health.timeout is a string"),
            "{}",
            problems[5].message
        );
    }

    #[test]
    fn guesses_types() {
        assert_eq!(guess("true"), json!(true));
        assert_eq!(guess("-3"), json!(-3));
        assert_eq!(guess("1.5"), json!(1.5));
        assert_eq!(guess("1e3"), json!(1000.0));
        assert_eq!(guess("inf"), json!("inf"));
        assert_eq!(guess("NaN"), json!("NaN"));
        assert_eq!(guess("5s"), json!("5s"));
        assert_eq!(guess("[oops"), json!("[oops"));
        assert_eq!(guess(""), json!(""));
    }
}
