//! A real DNS-SD responder nobody here wrote: python-zeroconf (PyPI
//! `zeroconf`, what Home Assistant uses), driven by
//! `tests/mdns_responder.py` inside a network namespace.
//!
//! The venv comes from `cargo xtask setup` (pins in
//! `scripts/requirements-mdns.txt`): `$MLX_CLUSTER_MDNS_VENV`, else
//! `<cache_dir>/venv-mdns-<key>`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::netns::Netns;
use crate::{FixtureError, fnv1a};

/// Environment variable naming the venv holding python-zeroconf.
pub const MDNS_VENV_ENV: &str = "MLX_CLUSTER_MDNS_VENV";
const REQUIREMENTS: &[u8] = include_bytes!("../../scripts/requirements-mdns.txt");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mdns_responder.py");
/// Longest wait for the responder's answer to one command (registering
/// probes for about a second).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Name of the venv directory under the cache dir:
/// `venv-mdns-<fnv1a(requirements-mdns.txt)>` (as `cargo xtask setup`
/// names it).
#[must_use]
pub fn default_venv_name() -> String {
    format!("venv-mdns-{}", fnv1a(&[REQUIREMENTS]))
}

/// The venv's python, found the way [`default_venv_name`] says.
///
/// # Errors
/// [`FixtureError::Missing`] when the venv is not there (run `cargo xtask
/// setup`).
pub fn python() -> Result<PathBuf, FixtureError> {
    python_from(|name| std::env::var_os(name))
}

fn python_from(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, FixtureError> {
    crate::small_venv_bin_from("mdns", MDNS_VENV_ENV, REQUIREMENTS, env)
        .map(|bin| bin.join("python"))
}

/// One service the responder announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroconfService {
    /// Instance name, e.g. `zc-node`.
    pub name: String,
    /// Service type, e.g. `_mlx-lm._tcp.local.`.
    pub service_type: String,
    /// SRV target host, e.g. `zc-node.local.`.
    pub host: String,
    /// IPv4 address of the A record.
    pub address: std::net::Ipv4Addr,
    /// SRV port.
    pub port: u16,
    /// TXT entries.
    pub txt: BTreeMap<String, String>,
    /// TTL of every record, seconds.
    pub ttl: u32,
}

impl ZeroconfService {
    fn command(&self, op: &str) -> Value {
        json!({
            "op": op,
            "name": self.name,
            "type": self.service_type,
            "host": self.host,
            "address": self.address.to_string(),
            "port": self.port,
            "txt": self.txt,
            "ttl": self.ttl,
        })
    }
}

/// A running python-zeroconf responder inside a namespace. Killed (without
/// goodbye) when dropped.
#[derive(Debug)]
pub struct ZeroconfResponder {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ZeroconfResponder {
    /// Starts the responder in `ns`, on its veth address, and waits until
    /// it is up.
    ///
    /// # Errors
    /// [`FixtureError::Missing`] without the venv; [`FixtureError::Spawn`];
    /// [`FixtureError::Unexpected`] when it does not start.
    pub async fn start(ns: &Netns) -> Result<Self, FixtureError> {
        let python = python()?;
        let mut command = tokio::process::Command::from(ns.command(&python));
        command
            .arg(SCRIPT)
            .arg(ns.addr().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| FixtureError::Spawn {
            program: python.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(FixtureError::Unexpected {
                url: SCRIPT.to_owned(),
                detail: "no stdin/stdout pipes".to_owned(),
            });
        };
        let mut responder = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        responder.answer("start").await?;
        Ok(responder)
    }

    async fn answer(&mut self, op: &str) -> Result<(), FixtureError> {
        let unexpected = |detail: String| FixtureError::Unexpected {
            url: SCRIPT.to_owned(),
            detail,
        };
        let line = tokio::time::timeout(COMMAND_TIMEOUT, self.stdout.next_line())
            .await
            .map_err(|_| unexpected(format!("no answer to {op} within {COMMAND_TIMEOUT:?}")))?
            .map_err(|e| unexpected(format!("reading its answer to {op}: {e}")))?
            .ok_or_else(|| unexpected(format!("exited before answering {op}")))?;
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| unexpected(format!("answer {line:?} is not JSON: {e}")))?;
        if value.get("ok").and_then(Value::as_str) == Some(op) {
            Ok(())
        } else {
            Err(unexpected(format!("{op} answered {line}")))
        }
    }

    async fn send(&mut self, command: Value) -> Result<(), FixtureError> {
        let op = command["op"].as_str().unwrap_or_default().to_owned();
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| FixtureError::Unexpected {
                url: SCRIPT.to_owned(),
                detail: format!("writing {op}: {e}"),
            })?;
        self.answer(&op).await
    }

    /// Registers (probes, then announces) `service`; returns once it is
    /// announced.
    ///
    /// # Errors
    /// [`FixtureError::Unexpected`] when zeroconf refuses or does not
    /// answer.
    pub async fn register(&mut self, service: &ZeroconfService) -> Result<(), FixtureError> {
        self.send(service.command("register")).await
    }

    /// Announces new records (TXT, port) for an already registered name.
    ///
    /// # Errors
    /// As [`register`](Self::register).
    pub async fn update(&mut self, service: &ZeroconfService) -> Result<(), FixtureError> {
        self.send(service.command("update")).await
    }

    /// Withdraws `name` with goodbye packets.
    ///
    /// # Errors
    /// As [`register`](Self::register).
    pub async fn unregister(&mut self, name: &str) -> Result<(), FixtureError> {
        self.send(json!({"op": "unregister", "name": name})).await
    }

    /// Kills the responder with SIGKILL: no goodbye, its records expire by
    /// TTL at the browsers.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venv_is_found_by_env_or_cache_key() {
        let err = python_from(|n| (n == "HOME").then(|| "/nonexistent-home".into())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&default_venv_name()), "{text}");
        assert!(text.contains(MDNS_VENV_ENV), "{text}");
        assert!(default_venv_name().starts_with("venv-mdns-"));
    }
}
