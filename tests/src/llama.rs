//! A real llama.cpp `llama-server` on loopback, serving the tiny GGUF model.
//!
//! [`LlamaFixture::locate`] finds the `llama-server` binary that
//! `cargo xtask setup` builds from source (recipe in
//! `scripts/llama-server.txt`) and the tiny random-weight GGUF model it makes
//! with `scripts/make_tiny_gguf.py`. [`LlamaServer::start`] spawns the server
//! on a free 127.0.0.1 port with `--parallel 2` (slots), prompt caching,
//! `/slots` and `/metrics` on, and the model's Jinja chat template, then
//! waits until `GET /health` answers 200 (it answers 503 `Loading model`
//! before).
//!
//! What the server does with the tiny model:
//! - start-up to ready takes well under a second;
//! - the model is listed by `GET /v1/models` under the alias
//!   [`LLAMA_MODEL_ID`] (`owned_by: "llamacpp"`);
//! - `GET /props` has `total_slots` (the `--parallel` value);
//! - `GET /slots` lists what each slot holds (`n_prompt_tokens`, `id_task`,
//!   the prompt text); `GET /metrics` has the `llamacpp:` gauges.
//!
//! The server's output goes to `server.log` in a per-server temporary
//! directory, deleted when the [`LlamaServer`] is dropped unless a test is
//! failing (the thread is panicking).

use std::ffi::OsString;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::process::{create_dir, free_port, make_work_dir, tail};
use crate::{FixtureError, cache_dir_from, fnv1a};

/// Environment variable naming the `llama-server` executable.
pub const LLAMA_SERVER_ENV: &str = "MLX_CLUSTER_LLAMA_SERVER";
/// Environment variable naming the tiny GGUF model file.
pub const TINY_GGUF_ENV: &str = "MLX_CLUSTER_TINY_GGUF";
/// The model id the server lists (its `--alias`).
pub const LLAMA_MODEL_ID: &str = "tiny-llama";

const RECIPE: &[u8] = include_bytes!("../../scripts/llama-server.txt");
const GGUF_SCRIPT: &[u8] = include_bytes!("../../scripts/make_tiny_gguf.py");
const GGUF_REQUIREMENTS: &[u8] = include_bytes!("../../scripts/requirements-gguf.txt");

/// Name of the build directory under the cache dir:
/// `llama-server-<fnv1a(scripts/llama-server.txt)>`.
pub fn default_server_dir_name() -> String {
    format!("llama-server-{}", fnv1a(&[RECIPE]))
}

/// Name of the model directory under the cache dir:
/// `tiny-gguf-<fnv1a(make_tiny_gguf.py, requirements-gguf.txt)>`.
pub fn default_gguf_dir_name() -> String {
    format!("tiny-gguf-{}", fnv1a(&[GGUF_SCRIPT, GGUF_REQUIREMENTS]))
}

/// Where the `llama-server` binary and the tiny GGUF model are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaFixture {
    server: PathBuf,
    model: PathBuf,
}

impl LlamaFixture {
    /// Finds the binary and the model: `$MLX_CLUSTER_LLAMA_SERVER`, else
    /// `<cache_dir>/llama-server-<key>/llama-server`; `$MLX_CLUSTER_TINY_GGUF`,
    /// else `<cache_dir>/tiny-gguf-<key>/model.gguf`. A default location
    /// counts only with `cargo xtask setup`'s `.complete` marker.
    ///
    /// # Errors
    /// [`FixtureError::Missing`] (telling to run `cargo xtask setup`) when
    /// either is absent, [`FixtureError::NoCacheDir`] when no default can be
    /// computed.
    pub fn locate() -> Result<Self, FixtureError> {
        Self::locate_from(|name| std::env::var_os(name))
    }

    fn locate_from(env: impl Fn(&str) -> Option<OsString>) -> Result<Self, FixtureError> {
        let explicit = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let server = match explicit(LLAMA_SERVER_ENV) {
            Some(path) => path,
            None => {
                let dir = cache_dir_from(&env)?.join(default_server_dir_name());
                require_marker(&dir, "llama-server build", LLAMA_SERVER_ENV)?;
                dir.join("llama-server")
            }
        };
        require_file(&server, "llama-server", LLAMA_SERVER_ENV)?;
        let model = match explicit(TINY_GGUF_ENV) {
            Some(path) => path,
            None => {
                let dir = cache_dir_from(&env)?.join(default_gguf_dir_name());
                require_marker(&dir, "tiny GGUF model", TINY_GGUF_ENV)?;
                dir.join("model.gguf")
            }
        };
        require_file(&model, "tiny GGUF model", TINY_GGUF_ENV)?;
        Ok(Self { server, model })
    }

    /// The `llama-server` executable.
    pub fn server_program(&self) -> &Path {
        &self.server
    }

    /// The GGUF model file.
    pub fn model_path(&self) -> &Path {
        &self.model
    }
}

fn require_marker(
    dir: &Path,
    what: &'static str,
    env_var: &'static str,
) -> Result<(), FixtureError> {
    if dir.join(".complete").is_file() {
        return Ok(());
    }
    Err(FixtureError::Missing {
        what,
        path: dir.to_path_buf(),
        problem: ".complete is missing".to_owned(),
        env_var,
    })
}

fn require_file(
    path: &Path,
    what: &'static str,
    env_var: &'static str,
) -> Result<(), FixtureError> {
    if path.is_file() {
        return Ok(());
    }
    Err(FixtureError::Missing {
        what,
        path: path.to_path_buf(),
        problem: "no such file".to_owned(),
        env_var,
    })
}

/// How to start a server. `Default`: 2 slots, context 4096 tokens (2048 per
/// slot), 120 s start-up deadline, no extra arguments.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LlamaServerOptions {
    /// `--parallel`: the number of slots. Default 2.
    pub slots: u32,
    /// `--ctx-size`: context of the whole server, shared by the slots.
    /// Default 4096.
    pub context: u32,
    /// How long to wait for `GET /health` to answer 200. Default 120 s.
    pub startup_timeout: Duration,
    /// Extra `llama-server` arguments. Default none.
    pub extra_args: Vec<String>,
}

impl Default for LlamaServerOptions {
    fn default() -> Self {
        Self {
            slots: 2,
            context: 4096,
            startup_timeout: Duration::from_secs(120),
            extra_args: Vec::new(),
        }
    }
}

impl LlamaServerOptions {
    /// Sets [`Self::slots`].
    #[must_use]
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// Appends to [`Self::extra_args`].
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// A running `llama-server` on 127.0.0.1, killed (SIGKILL) when dropped.
pub struct LlamaServer {
    fixture: LlamaFixture,
    options: LlamaServerOptions,
    port: u16,
    work_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    client: reqwest::Client,
}

impl fmt::Debug for LlamaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlamaServer")
            .field("base_url", &self.base_url())
            .field("pid", &self.child.as_ref().and_then(Child::id))
            .field("log", &self.log_path)
            .finish_non_exhaustive()
    }
}

const PORT_ATTEMPTS: u32 = 3;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const POLL_TIMEOUT: Duration = Duration::from_secs(2);
const LOG_TAIL_LINES: usize = 40;

impl LlamaServer {
    /// Starts a server with [`LlamaServerOptions::default()`].
    ///
    /// # Errors
    /// As [`Self::start_with`].
    pub async fn start(fixture: &LlamaFixture) -> Result<Self, FixtureError> {
        Self::start_with(fixture, LlamaServerOptions::default()).await
    }

    /// Picks a free port, spawns `llama-server` on it and waits until
    /// `GET /health` answers 200.
    ///
    /// # Errors
    /// [`FixtureError::Exited`] if the process dies first,
    /// [`FixtureError::StartupTimeout`] past the start-up deadline,
    /// [`FixtureError::PortInUse`] if three picked ports were all taken,
    /// [`FixtureError::Spawn`] / [`FixtureError::Io`] for OS errors.
    pub async fn start_with(
        fixture: &LlamaFixture,
        options: LlamaServerOptions,
    ) -> Result<Self, FixtureError> {
        let work_dir = make_work_dir()?;
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

    /// Starts a server that stays in its "Loading model" state: its model
    /// path is a FIFO nobody writes to, so the real server has bound its
    /// port and answers `/health` (and every endpoint) 503 `Loading model`
    /// while its loader waits. Returns once `/health` says so.
    ///
    /// # Errors
    /// As [`Self::start_with`]; [`FixtureError::Io`] if the FIFO cannot be
    /// made.
    pub async fn start_loading(fixture: &LlamaFixture) -> Result<Self, FixtureError> {
        let work_dir = make_work_dir()?;
        let fifo = work_dir.join("loading.gguf");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .map_err(|source| FixtureError::Io {
                action: "mkfifo",
                path: fifo.clone(),
                source,
            })?;
        if !made.success() {
            return Err(FixtureError::Io {
                action: "mkfifo",
                path: fifo,
                source: std::io::Error::other(made.to_string()),
            });
        }
        let loading = LlamaFixture {
            server: fixture.server.clone(),
            model: fifo,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(FixtureError::Client)?;
        let mut server = Self {
            fixture: loading,
            options: LlamaServerOptions::default(),
            port: free_port()?,
            log_path: work_dir.join("server.log"),
            work_dir,
            child: None,
            client,
        };
        server.spawn()?;
        let url = format!("{}/health", server.base_url());
        let deadline = tokio::time::Instant::now() + server.options.startup_timeout;
        loop {
            if let Ok(response) = server.client.get(&url).timeout(POLL_TIMEOUT).send().await
                && response.status().as_u16() == 503
                && response
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("Loading model")
            {
                return Ok(server);
            }
            if let Some(status) = server.exit_status() {
                return Err(FixtureError::Exited {
                    port: server.port,
                    status: status.to_string(),
                    log: server.log_path.clone(),
                    log_tail: server.log_tail(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FixtureError::StartupTimeout {
                    url,
                    timeout: server.options.startup_timeout,
                    last: "no 503 Loading model".to_owned(),
                    log: server.log_path.clone(),
                    log_tail: server.log_tail(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
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

    /// The model id `GET /v1/models` lists: [`LLAMA_MODEL_ID`].
    pub fn model_id(&self) -> String {
        LLAMA_MODEL_ID.to_owned()
    }

    /// The number of slots (`--parallel`).
    pub fn slots(&self) -> u32 {
        self.options.slots
    }

    /// The last 40 lines of the server log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, LOG_TAIL_LINES)
    }

    /// Kills the process (SIGKILL) and waits for it; does nothing if it is
    /// not running.
    ///
    /// # Errors
    /// [`FixtureError::Io`] if the process cannot be killed or reaped.
    pub async fn kill(&mut self) -> Result<(), FixtureError> {
        if let Some(mut child) = self.child.take() {
            let io = |source| FixtureError::Io {
                action: "kill llama-server logging to",
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

    /// Kills the process if it runs and starts a new one on the same port
    /// (empty slots), waiting until it is ready.
    ///
    /// # Errors
    /// As [`Self::start_with`].
    pub async fn restart(&mut self) -> Result<(), FixtureError> {
        self.kill().await?;
        self.spawn_and_wait().await
    }

    /// `GET <path>` on the server, returning the status and the body text.
    ///
    /// # Errors
    /// [`FixtureError::Http`] if the request fails.
    pub async fn get(&self, path: &str) -> Result<(u16, String), FixtureError> {
        let url = format!("{}{path}", self.base_url());
        let http = |source| FixtureError::Http {
            url: url.clone(),
            source,
        };
        let response = self
            .client
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(http)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(http)?;
        Ok((status, body))
    }

    async fn spawn_and_wait(&mut self) -> Result<(), FixtureError> {
        self.spawn()?;
        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(e) => {
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
        let program = self.fixture.server_program().to_path_buf();
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
        let lib_dir = program.parent().map(Path::to_path_buf).unwrap_or_default();
        let home = self.work_dir.join("home");
        create_dir(&home)?;
        let mut command = Command::new(&program);
        command
            .arg("--model")
            .arg(self.fixture.model_path())
            .args(["--alias", LLAMA_MODEL_ID])
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--parallel")
            .arg(self.options.slots.to_string())
            .arg("--ctx-size")
            .arg(self.options.context.to_string())
            .args([
                "--cache-prompt",
                "--slots",
                "--metrics",
                "--jinja",
                "--no-webui",
            ])
            .args(["--threads", "1", "--threads-http", "4"])
            .args(&self.options.extra_args)
            .env("LD_LIBRARY_PATH", lib_dir)
            .env("HOME", home)
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
        let url = format!("{}/health", self.base_url());
        let timeout = self.options.startup_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                let log_tail = self.log_tail();
                if log_tail.contains("bind") && log_tail.contains("in use") {
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
            let last = match self.client.get(&url).timeout(POLL_TIMEOUT).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => format!("status {}", response.status()),
                Err(e) => format!("request failed: {e}"),
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
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "llama-server fixture kept its log at {}",
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

    #[test]
    fn missing_fixture_says_to_run_setup() {
        let empty = std::env::temp_dir().join(format!("llama-fixture-none-{}", std::process::id()));
        let env = move |name: &str| {
            (name == crate::CACHE_DIR_ENV).then(|| empty.clone().into_os_string())
        };
        let err = LlamaFixture::locate_from(env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cargo xtask setup"), "{text}");
        assert!(text.contains(&default_server_dir_name()), "{text}");
    }

    #[test]
    fn default_names_are_keyed_by_content() {
        assert_eq!(default_server_dir_name().len(), "llama-server-".len() + 12);
        assert_eq!(default_gguf_dir_name().len(), "tiny-gguf-".len() + 12);
    }
}
