//! Who may use the gateway and how it is reached: client API keys
//! ([`ClientKey`], inline or from a file of hashed keys), TLS files
//! ([`TlsConfig`]), and the pure parser of the key file format
//! ([`parse_api_keys_file`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;
use crate::node::ApiKey;

/// One client API key of the gateway (`gateway.api_keys[]`, or a line of
/// `gateway.api_keys_file`).
///
/// Exactly one of `key` (the secret itself) and `key_sha256` (the
/// lowercase hex SHA-256 of the secret) is set. Defaults: no rate limit
/// (`requests_per_minute` none), no concurrency limit (`max_concurrent`
/// none). `name` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKey {
    /// Name of the key's holder: the label of its metrics and logs (the key
    /// itself never appears). 1–64 characters of `A-Z a-z 0-9 _ - .`;
    /// unique.
    pub name: String,
    /// The secret, as clients send it (`Authorization: Bearer …` or
    /// `x-api-key: …`). Never printed or serialized. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ApiKey>,
    /// Lowercase hex SHA-256 of the secret (64 hex digits), so the config
    /// need not hold the secret (`mlx-cluster hash-key` prints it).
    /// Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// Most requests per minute (a token bucket of this size refilled
    /// continuously); beyond it 429 with `Retry-After`. Default none (no
    /// limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Most requests in flight at once (streams count until they end);
    /// beyond it 429 with `Retry-After`. Default none (no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl ClientKey {
    /// A key named `name` given as its SHA-256 hex digest, without limits.
    #[must_use]
    pub fn hashed(name: impl Into<String>, sha256_hex: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: None,
            key_sha256: Some(sha256_hex.into()),
            requests_per_minute: None,
            max_concurrent: None,
        }
    }

    /// A key named `name` given as its secret, without limits.
    #[must_use]
    pub fn secret(name: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: Some(ApiKey::new(secret)),
            key_sha256: None,
            requests_per_minute: None,
            max_concurrent: None,
        }
    }
}

/// Serving TLS to clients (`gateway.tls`): PEM files of the certificate
/// chain and its private key (PKCS#8, PKCS#1 or SEC1). No defaults: both are
/// required when the table is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then its chain.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// Whether `name` is a valid key name (see [`ClientKey::name`]).
#[must_use]
pub fn is_valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether `hex` is a lowercase hex SHA-256 digest (64 digits).
#[must_use]
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Problems of a list of client keys; `at(i)` names entry `i` in paths.
pub(crate) fn client_key_problems(
    keys: &[ClientKey],
    at: &dyn Fn(usize) -> String,
) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut names: Vec<&str> = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let path = at(i);
        if !is_valid_key_name(&k.name) {
            problems.push(ConfigProblem::new(
                format!("{path}.name"),
                format!(
                    "must be 1-64 characters of A-Z a-z 0-9 _ - . (got {:?})",
                    k.name
                ),
            ));
        } else if names.contains(&k.name.as_str()) {
            problems.push(ConfigProblem::new(
                format!("{path}.name"),
                format!("duplicate key name {:?}", k.name),
            ));
        }
        names.push(&k.name);
        match (&k.key, &k.key_sha256) {
            (Some(_), Some(_)) => problems.push(ConfigProblem::new(
                path.clone(),
                "set either key or key_sha256, not both",
            )),
            (None, None) => {
                problems.push(ConfigProblem::new(path.clone(), "needs key or key_sha256"))
            }
            (Some(key), None) if key.is_empty() => {
                problems.push(ConfigProblem::new(
                    format!("{path}.key"),
                    "must not be empty",
                ));
            }
            (None, Some(hex)) if !is_sha256_hex(hex) => problems.push(ConfigProblem::new(
                format!("{path}.key_sha256"),
                "must be 64 lowercase hex digits (the SHA-256 of the key)",
            )),
            _ => {}
        }
        if k.requests_per_minute == Some(0) {
            problems.push(ConfigProblem::new(
                format!("{path}.requests_per_minute"),
                "must be at least 1 (omit it for no limit)",
            ));
        }
        if k.max_concurrent == Some(0) {
            problems.push(ConfigProblem::new(
                format!("{path}.max_concurrent"),
                "must be at least 1 (omit it for no limit)",
            ));
        }
    }
    problems
}

/// Parses the text of a `gateway.api_keys_file`: one key per line,
///
/// ```text
/// # name   sha256 of the key                                                  optional limits
/// alice    sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b  requests_per_minute=60 max_concurrent=4
/// ci-bot   sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9
/// ```
///
/// Blank lines and lines starting with `#` are ignored. Every problem is
/// reported, with the path `gateway.api_keys_file:LINE`; names must be
/// unique and follow [`ClientKey::name`]'s rules.
///
/// # Errors
/// Every problem found (the valid lines are not returned then).
pub fn parse_api_keys_file(text: &str) -> Result<Vec<ClientKey>, Vec<ConfigProblem>> {
    let mut keys = Vec::new();
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = format!("gateway.api_keys_file:{}", n + 1);
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap_or_default();
        let Some(digest) = fields.next() else {
            problems.push(ConfigProblem::new(path, "expected `NAME sha256:HEX`"));
            continue;
        };
        let Some(hex) = digest.strip_prefix("sha256:") else {
            problems.push(ConfigProblem::new(
                path,
                "the second field must be `sha256:` and the key's hex SHA-256",
            ));
            continue;
        };
        let mut key = ClientKey::hashed(name, hex);
        for option in fields {
            let parsed = option.split_once('=').and_then(|(k, v)| {
                let v = v.parse::<u32>().ok()?;
                match k {
                    "requests_per_minute" => key.requests_per_minute = Some(v),
                    "max_concurrent" => key.max_concurrent = Some(v),
                    _ => return None,
                }
                Some(())
            });
            if parsed.is_none() {
                problems.push(ConfigProblem::new(
                    path.clone(),
                    format!(
                        "unknown option {option:?} (expected requests_per_minute=N or max_concurrent=N)"
                    ),
                ));
            }
        }
        keys.push(key);
        lines.push(path);
    }
    problems.extend(client_key_problems(&keys, &|i| lines[i].clone()));
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    #[test]
    fn key_file_lines_and_options() {
        let text = format!(
            "# comment\n\nalice sha256:{HEX} requests_per_minute=60 max_concurrent=4\n  bob   sha256:{HEX}\n"
        );
        let keys = parse_api_keys_file(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "alice");
        assert_eq!(keys[0].requests_per_minute, Some(60));
        assert_eq!(keys[0].max_concurrent, Some(4));
        assert_eq!(keys[1].key_sha256.as_deref(), Some(HEX));
        assert_eq!(keys[1].requests_per_minute, None);
    }

    #[test]
    fn key_file_reports_every_problem_with_its_line() {
        let text = format!(
            "alice\nbob md5:abc\ncarol sha256:{HEX} burst=3\ndave sha256:XYZ\ncarol sha256:{HEX}\nb@d sha256:{HEX}\nerin sha256:{HEX} max_concurrent=0\n"
        );
        let problems = parse_api_keys_file(&text).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "gateway.api_keys_file:1",
                "gateway.api_keys_file:2",
                "gateway.api_keys_file:3",
                "gateway.api_keys_file:4.key_sha256",
                "gateway.api_keys_file:5.name",
                "gateway.api_keys_file:6.name",
                "gateway.api_keys_file:7.max_concurrent",
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn names_and_digests() {
        assert!(is_valid_key_name("ci-bot.2_x"));
        assert!(!is_valid_key_name(""));
        assert!(!is_valid_key_name("a b"));
        assert!(!is_valid_key_name(&"x".repeat(65)));
        assert!(is_sha256_hex(HEX));
        assert!(!is_sha256_hex(&HEX.to_uppercase()));
        assert!(!is_sha256_hex(&HEX[1..]));
    }
}
