//! A real `mlx_lm.server` on loopback, serving the tiny random-weight model.
//!
//! [`MlxFixture::locate`] finds the Python venv (with `mlx[cpu]` and `mlx-lm`)
//! and the tiny Llama model directory that `cargo xtask setup` builds from
//! `scripts/requirements-mlx.txt` and `scripts/make_tiny_model.py`.
//! [`MlxServer::start`] spawns `mlx_lm.server` on a free 127.0.0.1 port and
//! waits until `GET /v1/models` lists the model.
//!
//! What the server does (HTTP/1.0, one connection per request, SSE details,
//! prompt-cache accounting) is recorded in `scripts/mlx-server-responses.md`.
//! In short, with the tiny model:
//! - start-up to ready takes about 2.5–3 s on the 2-core CI machine;
//! - greedy decoding (the server default, temperature 0) is deterministic
//!   and never emits the end-of-sequence token, so every completion runs to
//!   `max_tokens` with `finish_reason: "length"`;
//! - sending the same prompt twice gives `usage.prompt_tokens_details.
//!   cached_tokens == prompt_tokens - 1` the second time (LRU of 10 prompt
//!   caches per process; a restart empties it);
//! - [`MlxServer::break_generation`] turns it into a process that still
//!   listens and lists its model but fails `/health` and every completion,
//!   as a real mlx-lm bug does.
//!
//! The server runs with `HF_HUB_OFFLINE=1`, and `HF_HUB_CACHE` / `HF_HOME`
//! in a per-server temporary directory (with a missing `HF_HUB_CACHE`
//! directory, `/v1/models` answers 200 with an empty body). Its stdout and
//! stderr go to `server.log` in that directory, which is deleted when the
//! [`MlxServer`] is dropped, except when the thread is panicking (a failing
//! test), so the log stays for a look.
//!
//! Start-up polls the real process in real time: do not call
//! [`MlxServer::start`] or [`MlxServer::restart`] while tokio time is paused.

use std::ffi::OsString;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::process::{canonical, create_dir, free_port, make_work_dir, require, tail};
use crate::{FixtureError, cache_dir_from, fnv1a};

/// Environment variable naming the venv directory (holding `bin/mlx_lm.server`).
pub const VENV_ENV: &str = "MLX_CLUSTER_VENV";
/// Environment variable naming the tiny model directory (holding `config.json`).
pub const TINY_MODEL_ENV: &str = "MLX_CLUSTER_TINY_MODEL";
/// Environment variable naming the tiny model variant that ends its turns.
pub const TINY_CHAT_MODEL_ENV: &str = "MLX_CLUSTER_TINY_CHAT_MODEL";

/// Answers of the chat variant end after this many tokens (the same number
/// `cargo xtask setup` passes to `make_tiny_model.py --ends-turns`).
pub const CHAT_MODEL_ENDS_TURNS: u32 = 8;

/// Marker file `cargo xtask setup` writes into a venv or model directory once
/// it is completely built.
const COMPLETE_MARKER: &str = ".complete";

const REQUIREMENTS: &[u8] = include_bytes!("../../scripts/requirements-mlx.txt");
const MODEL_SCRIPT: &[u8] = include_bytes!("../../scripts/make_tiny_model.py");

/// Name of the venv directory under the cache dir: `venv-<fnv1a(requirements)>`.
pub fn default_venv_name() -> String {
    format!("venv-{}", fnv1a(&[REQUIREMENTS]))
}

/// Name of the model directory under the cache dir:
/// `tiny-model-<fnv1a(make_tiny_model.py, requirements)>`.
pub fn default_tiny_model_name() -> String {
    format!("tiny-model-{}", fnv1a(&[MODEL_SCRIPT, REQUIREMENTS]))
}

/// Name of the chat variant's directory under the cache dir:
/// `tiny-chat-model-<fnv1a(make_tiny_model.py, requirements, "ends-turns N")>`.
pub fn default_tiny_chat_model_name() -> String {
    let variant = format!("ends-turns {CHAT_MODEL_ENDS_TURNS}");
    format!(
        "tiny-chat-model-{}",
        fnv1a(&[MODEL_SCRIPT, REQUIREMENTS, variant.as_bytes()])
    )
}

/// Which tiny model a fixture serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelVariant {
    /// Answers run to `max_tokens`.
    Default,
    /// Answers end after [`CHAT_MODEL_ENDS_TURNS`] tokens with
    /// `finish_reason: "stop"`, whatever the prompt.
    EndsTurns,
}

/// Where the venv and the tiny model are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlxFixture {
    venv: PathBuf,
    model_dir: PathBuf,
}

impl MlxFixture {
    /// Finds the venv and the tiny model.
    ///
    /// The venv is `$MLX_CLUSTER_VENV`, else `<cache_dir>/venv-<key>`; the
    /// model is `$MLX_CLUSTER_TINY_MODEL`, else
    /// `<cache_dir>/tiny-model-<key>` (see [`crate::cache_dir()`],
    /// [`default_venv_name`], [`default_tiny_model_name`]). A directory found
    /// by default must carry `cargo xtask setup`'s `.complete` marker; one
    /// named by an environment variable only needs `bin/mlx_lm.server` or
    /// `config.json` + `model.safetensors`.
    ///
    /// # Errors
    /// [`FixtureError::Missing`] (telling to run `cargo xtask setup`) when
    /// either is absent, [`FixtureError::NoCacheDir`] when no default can be
    /// computed.
    pub fn locate() -> Result<Self, FixtureError> {
        Self::locate_from(|name| std::env::var_os(name))
    }

    /// Like [`Self::locate`], with the tiny model's variant that ends every
    /// answer after [`CHAT_MODEL_ENDS_TURNS`] tokens (`finish_reason:
    /// "stop"`, the same text whatever the prompt), as a chat model ends
    /// its turn: for clients that treat an answer cut at `max_tokens` as
    /// an error (Claude Code). `$MLX_CLUSTER_TINY_CHAT_MODEL`, else
    /// `<cache_dir>/`[`default_tiny_chat_model_name`]. Prompt processing and
    /// the prompt cache are those of the default model.
    ///
    /// # Errors
    /// As [`Self::locate`].
    pub fn locate_chat() -> Result<Self, FixtureError> {
        Self::locate_variant(|name| std::env::var_os(name), ModelVariant::EndsTurns)
    }

    fn locate_from(env: impl Fn(&str) -> Option<OsString>) -> Result<Self, FixtureError> {
        Self::locate_variant(env, ModelVariant::Default)
    }

    fn locate_variant(
        env: impl Fn(&str) -> Option<OsString>,
        variant: ModelVariant,
    ) -> Result<Self, FixtureError> {
        let (model_env, model_name, model_what) = match variant {
            ModelVariant::Default => (TINY_MODEL_ENV, default_tiny_model_name(), "tiny mlx model"),
            ModelVariant::EndsTurns => (
                TINY_CHAT_MODEL_ENV,
                default_tiny_chat_model_name(),
                "tiny mlx model that ends its turns",
            ),
        };
        let explicit = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (venv, venv_default) = match explicit(VENV_ENV) {
            Some(path) => (path, false),
            None => (cache_dir_from(&env)?.join(default_venv_name()), true),
        };
        let (model_dir, model_default) = match explicit(model_env) {
            Some(path) => (path, false),
            None => (cache_dir_from(&env)?.join(model_name), true),
        };
        let venv_files: &[&str] = if venv_default {
            &[COMPLETE_MARKER, "bin/mlx_lm.server"]
        } else {
            &["bin/mlx_lm.server"]
        };
        require(&venv, "mlx venv", VENV_ENV, venv_files)?;
        let model_files: &[&str] = if model_default {
            &[COMPLETE_MARKER, "config.json", "model.safetensors"]
        } else {
            &["config.json", "model.safetensors"]
        };
        require(&model_dir, model_what, model_env, model_files)?;
        let model_dir = canonical(&model_dir)?;
        Ok(Self { venv, model_dir })
    }

    /// The venv directory.
    pub fn venv(&self) -> &Path {
        &self.venv
    }

    /// The model directory, canonicalized (as the server resolves it).
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The model id that `GET /v1/models` lists: the canonical model path.
    /// Requests may name it, or `"default_model"`, as their `model`.
    pub fn model_id(&self) -> String {
        self.model_dir.display().to_string()
    }

    /// `<venv>/bin/mlx_lm.server`.
    pub fn server_program(&self) -> PathBuf {
        self.venv.join("bin").join("mlx_lm.server")
    }

    /// `<venv>/bin/python`, e.g. to run the OpenAI SDK against a server.
    pub fn python(&self) -> PathBuf {
        self.venv.join("bin").join("python")
    }
}

/// How to start a server. `Default`: 120 s start-up deadline, no extra
/// arguments.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MlxServerOptions {
    /// How long to wait for `GET /v1/models` to list the model. Default
    /// 120 s (it takes about 3 s; the margin is for a busy CI machine).
    pub startup_timeout: Duration,
    /// Extra `mlx_lm.server` arguments, e.g. `["--prompt-cache-size", "2"]`.
    /// Default none.
    pub extra_args: Vec<String>,
}

impl Default for MlxServerOptions {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(120),
            extra_args: Vec::new(),
        }
    }
}

impl MlxServerOptions {
    /// Sets [`Self::startup_timeout`].
    #[must_use]
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Appends to [`Self::extra_args`].
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// A running `mlx_lm.server` on 127.0.0.1. The process is killed (SIGKILL)
/// when this is dropped.
pub struct MlxServer {
    fixture: MlxFixture,
    options: MlxServerOptions,
    port: u16,
    work_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    client: reqwest::Client,
}

impl fmt::Debug for MlxServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlxServer")
            .field("base_url", &self.base_url())
            .field("pid", &self.child.as_ref().and_then(Child::id))
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

/// How many times [`MlxServer::start`] tries fresh ports when the one it
/// picked was taken between picking and binding.
const PORT_ATTEMPTS: u32 = 3;
/// Delay between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one readiness poll.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of [`MlxServer::break_generation`].
const BREAK_TIMEOUT: Duration = Duration::from_secs(10);
/// How many log lines errors quote.
const LOG_TAIL_LINES: usize = 40;

impl MlxServer {
    /// Starts a server with [`MlxServerOptions::default()`]; see
    /// [`Self::start_with`].
    ///
    /// # Errors
    /// As [`Self::start_with`].
    pub async fn start(fixture: &MlxFixture) -> Result<Self, FixtureError> {
        Self::start_with(fixture, MlxServerOptions::default()).await
    }

    /// Picks a free port on 127.0.0.1, spawns `mlx_lm.server --model <dir>
    /// --host 127.0.0.1 --port <port>` (plus `options.extra_args`), and
    /// waits until `GET /v1/models` answers 200 listing the model.
    ///
    /// # Errors
    /// [`FixtureError::Exited`] if the process dies first,
    /// [`FixtureError::StartupTimeout`] past `options.startup_timeout`,
    /// [`FixtureError::PortInUse`] if three picked ports were all taken,
    /// [`FixtureError::Spawn`] / [`FixtureError::Io`] for OS errors.
    pub async fn start_with(
        fixture: &MlxFixture,
        options: MlxServerOptions,
    ) -> Result<Self, FixtureError> {
        let work_dir = make_work_dir()?;
        let hf_cache = work_dir.join("hf-cache");
        create_dir(&hf_cache)?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(FixtureError::Client)?;
        let mut server = Self {
            fixture: fixture.clone(),
            options,
            port: 0,
            log_path: work_dir.join("server.log"),
            work_dir,
            child: None,
            client,
        };
        let mut attempt = 1;
        loop {
            server.port = free_port()?;
            match server.spawn_and_wait().await {
                Err(FixtureError::PortInUse { .. }) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
                Ok(()) => return Ok(server),
            }
        }
    }

    /// `http://127.0.0.1:<port>`: no trailing slash, no `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port, kept across [`Self::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The fixture this server runs.
    pub fn fixture(&self) -> &MlxFixture {
        &self.fixture
    }

    /// The model id `GET /v1/models` lists (see [`MlxFixture::model_id`]).
    pub fn model_id(&self) -> String {
        self.fixture.model_id()
    }

    /// The file the server's stdout and stderr go to (appended across
    /// restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last 40 lines of the server log, for diagnostics.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, LOG_TAIL_LINES)
    }

    /// The process id, while a process is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process is alive (it may have died on its own).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) | None => false,
        }
    }

    /// Kills the process with SIGKILL (as a crash would) and waits for it
    /// to exit; connections to the port are then refused. Does nothing if
    /// it is not running.
    ///
    /// # Errors
    /// [`FixtureError::Io`] if the process cannot be killed or reaped.
    pub async fn kill(&mut self) -> Result<(), FixtureError> {
        if let Some(mut child) = self.child.take() {
            let io = |source| FixtureError::Io {
                action: "kill mlx_lm.server logging to",
                path: self.log_path.clone(),
                source,
            };
            if child.try_wait().map_err(io)?.is_none() {
                child.start_kill().map_err(io)?;
            }
            child.wait().await.map_err(io)?;
        }
        Ok(())
    }

    /// Kills the process if it runs, then starts a new one on the same port
    /// and waits until it is ready. The new process has an empty prompt
    /// cache.
    ///
    /// # Errors
    /// As [`Self::start_with`]; [`FixtureError::PortInUse`] if another
    /// process took the port meanwhile.
    pub async fn restart(&mut self) -> Result<(), FixtureError> {
        self.kill().await?;
        self.spawn_and_wait().await
    }

    /// Sends the server one short chat completion (one output token), as
    /// traffic would: the first request to a fresh process pays one-time
    /// costs (several times slower than the next), which would otherwise
    /// skew whatever a test measures first — e.g. the prefill rate the
    /// gateway's router learns from it.
    ///
    /// # Errors
    /// [`FixtureError::Http`] if the request fails,
    /// [`FixtureError::Unexpected`] if it is not answered 200.
    pub async fn warm_up(&self) -> Result<(), FixtureError> {
        let url = format!("{}/v1/chat/completions", self.base_url());
        let body = serde_json::json!({
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "warm up: ".repeat(64)}],
        });
        let response = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|source| FixtureError::Http {
                url: url.clone(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(FixtureError::Unexpected {
                url,
                detail: format!("warm-up answered {}", response.status()),
            });
        }
        let _ = response.bytes().await;
        Ok(())
    }

    /// Makes the server's generation thread die while the process keeps
    /// listening, using a real mlx-lm 0.32.2 bug: `POST /v1/completions`
    /// with a list as `prompt`. Afterwards `GET /v1/models` still answers
    /// 200, `GET /health` answers 503 `{"status": "unavailable"}`, and every
    /// completion answers 404 `{"error": "generation thread died"}` until
    /// [`Self::restart`]. Waits until `/health` says 503.
    ///
    /// # Errors
    /// [`FixtureError::Http`] if a request fails, [`FixtureError::Unexpected`]
    /// if `/health` still answers 200 afterwards (a fixed mlx-lm).
    pub async fn break_generation(&self) -> Result<(), FixtureError> {
        let url = format!("{}/v1/completions", self.base_url());
        let body = serde_json::json!({"prompt": ["a", "b"], "max_tokens": 1});
        // Depending on the prompt cache's state the poisoned request gets a
        // 404 `generation thread died` or a 200 whose body is cut off: its
        // outcome does not matter, only /health's afterwards.
        let sent = self
            .client
            .post(&url)
            .json(&body)
            .timeout(BREAK_TIMEOUT)
            .send()
            .await;
        if let Ok(response) = sent {
            let _ = response.bytes().await;
        }
        let url = format!("{}/health", self.base_url());
        let deadline = tokio::time::Instant::now() + BREAK_TIMEOUT;
        loop {
            let response = self
                .client
                .get(&url)
                .timeout(POLL_TIMEOUT)
                .send()
                .await
                .map_err(|source| FixtureError::Http {
                    url: url.clone(),
                    source,
                })?;
            let status = response.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FixtureError::Unexpected {
                    url,
                    detail: format!(
                        "expected 503 after breaking the generation thread, still {status}; log:\n{}",
                        self.log_tail()
                    ),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), FixtureError> {
        self.spawn()?;
        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Leave nothing running behind a failed start.
                let _ = self.kill().await;
                Err(e)
            }
        }
    }

    fn spawn(&mut self) -> Result<(), FixtureError> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|source| FixtureError::Io {
                action: "open log",
                path: self.log_path.clone(),
                source,
            })?;
        let program = self.fixture.server_program();
        let _ = writeln!(
            log,
            "==== fixture: starting {} on 127.0.0.1:{} ====",
            program.display(),
            self.port
        );
        let stdout = log.try_clone().map_err(|source| FixtureError::Io {
            action: "duplicate log handle",
            path: self.log_path.clone(),
            source,
        })?;
        let mut command = Command::new(&program);
        command
            .arg("--model")
            .arg(self.fixture.model_dir())
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(&self.options.extra_args)
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("HF_HUB_CACHE", self.work_dir.join("hf-cache"))
            .env("HF_HOME", self.work_dir.join("hf-home"))
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| FixtureError::Spawn {
            program: program.clone(),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), FixtureError> {
        let url = format!("{}/v1/models", self.base_url());
        let timeout = self.options.startup_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let model_id = self.model_id();
        loop {
            if let Some(status) = self.exit_status() {
                let log_tail = self.log_tail();
                if log_tail.contains("Address already in use") {
                    return Err(FixtureError::PortInUse {
                        port: self.port,
                        log: self.log_path.clone(),
                        log_tail,
                    });
                }
                return Err(FixtureError::Exited {
                    port: self.port,
                    status: status.to_string(),
                    log: self.log_path.clone(),
                    log_tail,
                });
            }
            let last = match self.poll_models(&url, &model_id).await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(FixtureError::StartupTimeout {
                    url,
                    timeout,
                    last,
                    log: self.log_path.clone(),
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// One readiness poll: `Ok` when `/v1/models` is 200 and lists the model.
    async fn poll_models(&self, url: &str, model_id: &str) -> Result<(), String> {
        let response = self
            .client
            .get(url)
            .timeout(POLL_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{status}, body unreadable: {e}"))?;
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "{status} with a body that is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        })?;
        let listed = json["data"]
            .as_array()
            .is_some_and(|models| models.iter().any(|m| m["id"] == model_id));
        if listed {
            Ok(())
        } else {
            Err(format!("model {model_id} not listed in {json}"))
        }
    }
}

impl Drop for MlxServer {
    fn drop(&mut self) {
        // The child is killed by kill_on_drop; tokio reaps it.
        if std::thread::panicking() {
            eprintln!(
                "mlx_lm.server fixture kept its log at {}",
                self.log_path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: Vec<(&'static str, PathBuf)>) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone().into_os_string())
        }
    }

    #[test]
    fn missing_fixture_says_to_run_setup() {
        let empty = std::env::temp_dir().join(format!("mlx-fixture-none-{}", std::process::id()));
        let err = MlxFixture::locate_from(env_of(vec![(crate::CACHE_DIR_ENV, empty.clone())]))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cargo xtask setup"), "{text}");
        assert!(text.contains(&default_venv_name()), "{text}");
        assert!(matches!(
            err,
            FixtureError::Missing {
                what: "mlx venv",
                ..
            }
        ));
    }

    #[test]
    fn explicit_paths_are_checked_too() {
        let dir = std::env::temp_dir();
        let err =
            MlxFixture::locate_from(env_of(vec![(VENV_ENV, dir.clone()), (TINY_MODEL_ENV, dir)]))
                .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bin/mlx_lm.server is missing"), "{text}");
        assert!(text.contains(VENV_ENV), "{text}");
    }

    #[test]
    fn default_names_are_keyed_by_content() {
        assert_eq!(default_venv_name().len(), "venv-".len() + 12);
        assert_eq!(default_tiny_model_name().len(), "tiny-model-".len() + 12);
    }

    #[test]
    fn tail_keeps_last_lines() {
        let path = make_work_dir().unwrap().join("log");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&path, 2), "b\nc");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
