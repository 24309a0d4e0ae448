//! The real Claude Code CLI, run headless against a base URL.
//!
//! [`ClaudeCode::locate`] finds the `claude` program that `cargo xtask setup`
//! installs with npm (`@anthropic-ai/claude-code`, the version pinned in
//! `scripts/requirements-npm.txt`, under `<cache_dir>/npm-<key>`).
//! [`ClaudeCode::session`] makes a throw-away home and working directory;
//! [`ClaudeSession::prompt`] runs `claude -p PROMPT --output-format json`
//! there, with only the environment it needs:
//!
//! - `ANTHROPIC_BASE_URL` = the gateway, `ANTHROPIC_API_KEY` = a dummy key
//!   ([`DUMMY_API_KEY`], so a test can check it never reaches a node);
//! - `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1` and
//!   `DISABLE_AUTOUPDATER=1`: no traffic but to the gateway;
//! - `HOME` = the session's home (its conversation history lives there, so
//!   `--continue` resumes the session's last conversation).
//!
//! Claude Code retries failed requests for minutes: every run is bounded by
//! a timeout, after which the process is killed and the run is an error.
//! The session directory is removed on drop, except when the thread is
//! panicking (a failing test), so its transcripts stay for a look.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::process::{create_dir, make_work_dir};
use crate::{FixtureError, cache_dir_from, fnv1a};

/// Environment variable naming the `claude` program.
pub const CLAUDE_CODE_ENV: &str = "MLX_CLUSTER_CLAUDE_CODE";

/// The API key every run sends (never a real one).
pub const DUMMY_API_KEY: &str = "sk-ant-mlx-cluster-test-dummy";

const REQUIREMENTS: &[u8] = include_bytes!("../../scripts/requirements-npm.txt");

/// Name of the npm install under the cache dir: `npm-<fnv1a(requirements)>`.
pub fn default_npm_dir_name() -> String {
    format!("npm-{}", fnv1a(&[REQUIREMENTS]))
}

/// The Claude Code version pinned in `scripts/requirements-npm.txt`.
pub fn pinned_version() -> String {
    String::from_utf8_lossy(REQUIREMENTS)
        .lines()
        .find_map(|l| l.trim().strip_prefix("@anthropic-ai/claude-code@"))
        .unwrap_or_default()
        .to_owned()
}

/// Where the `claude` program is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaudeCode {
    program: PathBuf,
}

impl ClaudeCode {
    /// `$MLX_CLUSTER_CLAUDE_CODE`, else
    /// `<cache_dir>/npm-<key>/node_modules/.bin/claude` (that directory must
    /// carry `cargo xtask setup`'s `.complete` marker).
    ///
    /// # Errors
    /// [`FixtureError::Missing`] (telling to run `cargo xtask setup`).
    pub fn locate() -> Result<Self, FixtureError> {
        Self::locate_from(|name| std::env::var_os(name))
    }

    fn locate_from(env: impl Fn(&str) -> Option<OsString>) -> Result<Self, FixtureError> {
        let missing = |path: &Path, problem: &str| FixtureError::Missing {
            what: "Claude Code CLI",
            path: path.to_path_buf(),
            problem: problem.to_owned(),
            env_var: CLAUDE_CODE_ENV,
        };
        if let Some(program) = env(CLAUDE_CODE_ENV).filter(|v| !v.is_empty()) {
            let program = PathBuf::from(program);
            if !program.is_file() {
                return Err(missing(&program, "no such file"));
            }
            return Ok(Self { program });
        }
        let dir = cache_dir_from(&env)?.join(default_npm_dir_name());
        if !dir.join(".complete").exists() {
            return Err(missing(&dir, ".complete is missing"));
        }
        let program = dir.join("node_modules/.bin/claude");
        if !program.exists() {
            return Err(missing(&program, "no such file"));
        }
        Ok(Self { program })
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// A session against `base_url` (the gateway, no `/v1`), in a fresh
    /// home and working directory.
    ///
    /// # Errors
    /// [`FixtureError::Io`] when the directories cannot be made.
    pub fn session(&self, base_url: &str) -> Result<ClaudeSession, FixtureError> {
        let dir = make_work_dir()?;
        let home = dir.join("home");
        let work = dir.join("project");
        create_dir(&home)?;
        create_dir(&work)?;
        Ok(ClaudeSession {
            program: self.program.clone(),
            base_url: base_url.to_owned(),
            dir,
            home,
            work,
        })
    }
}

/// A throw-away home and working directory for `claude` runs (removed on
/// drop unless the thread panics).
#[derive(Debug)]
pub struct ClaudeSession {
    program: PathBuf,
    base_url: String,
    dir: PathBuf,
    home: PathBuf,
    work: PathBuf,
}

/// What one `claude -p` run did.
#[derive(Debug, Clone)]
pub struct ClaudeRun {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit status, as text.
    pub status: String,
    /// Its standard output (the JSON result with `--output-format json`).
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl ClaudeRun {
    /// The JSON result (`result`, `is_error`, `usage`, `session_id`, ...),
    /// if stdout holds one.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }
}

impl ClaudeSession {
    /// The working directory `claude` runs in.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Runs `claude -p PROMPT --output-format json` (with `--continue`
    /// when `resume`: the session's last conversation goes on), killed
    /// after `timeout`.
    ///
    /// # Errors
    /// [`FixtureError::Spawn`] when it cannot start,
    /// [`FixtureError::Unexpected`] when it runs past `timeout`.
    pub async fn prompt(
        &self,
        prompt: &str,
        resume: bool,
        timeout: Duration,
    ) -> Result<ClaudeRun, FixtureError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg("-p").arg(prompt).args(["--output-format", "json"]);
        if resume {
            cmd.arg("--continue");
        }
        cmd.current_dir(&self.work)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("ANTHROPIC_BASE_URL", &self.base_url)
            .env("ANTHROPIC_API_KEY", DUMMY_API_KEY)
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| FixtureError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(ClaudeRun {
                success: out.status.success(),
                status: out.status.to_string(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
            Ok(Err(source)) => Err(FixtureError::Io {
                action: "wait for",
                path: self.program.clone(),
                source,
            }),
            // Dropping the future dropped the child: killed.
            Err(_) => Err(FixtureError::Unexpected {
                url: self.base_url.clone(),
                detail: format!("claude -p {prompt:?} ran longer than {timeout:?} and was killed"),
            }),
        }
    }
}

impl Drop for ClaudeSession {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("Claude Code session kept at {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_version_is_read_from_the_requirements() {
        let v = pinned_version();
        assert!(v.starts_with("2."), "{v}");
        assert_eq!(default_npm_dir_name().len(), "npm-".len() + 12);
    }

    #[test]
    fn missing_install_says_to_run_setup() {
        let empty = std::env::temp_dir().join("mlx-cluster-no-such-cache");
        let err = ClaudeCode::locate_from(|name| {
            (name == crate::CACHE_DIR_ENV).then(|| empty.clone().into_os_string())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cargo xtask setup") && text.contains(CLAUDE_CODE_ENV),
            "{text}"
        );
    }
}
