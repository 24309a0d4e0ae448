//! `cargo xtask setup`: everything the tests need that cargo does not build.
//!
//! - Debian packages (installed with apt-get only when missing; `apt-get
//!   update` runs once first);
//! - a Python venv with mlx-lm, tokenizers and the OpenAI SDK, pinned in
//!   `scripts/requirements-mlx.txt`;
//! - a tiny random-weight model built offline by `scripts/make_tiny_model.py`,
//!   and its variant that ends its answers after a few tokens (`--ends-turns`,
//!   for clients that expect a model to finish its turn: Claude Code);
//! - the npm packages of `scripts/requirements-npm.txt` (the Claude Code
//!   CLI), installed with npm from the registry;
//! - a small venv with python-zeroconf (`scripts/requirements-mdns.txt`), a
//!   real mDNS responder for the interoperability tests, and one with
//!   kubernetes-validate and hadolint (`scripts/requirements-deploy.txt`)
//!   for the deployment manifests and the Containerfile;
//! - cargo-afl (the fuzz driver of `cargo xtask fuzz`), with the AFL++ it
//!   builds from its bundled sources;
//! - llama.cpp's `llama-server` built from source and a tiny GGUF model
//!   (see [`crate::llama`]).
//!
//! The venv and the model live under `~/.cache/mlx-cluster/` (or
//! `$MLX_CLUSTER_CACHE`), in directories named by a hash of the files that
//! define them, so a second run on the same machine reuses them and a change
//! to the pins or the script rebuilds them. A directory counts only once it
//! holds a `.complete` marker: an interrupted build is redone, never reused.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{fnv1a, have_program, output, run_step, workspace_root};

/// Debian packages the tests and benchmarks use: (file that proves it is
/// installed, package, what for).
const APT_PACKAGES: &[(&str, &str, &str)] = &[
    ("/usr/bin/curl", "curl", "SSE streaming checks"),
    (
        "/usr/sbin/dnsmasq",
        "dnsmasq-base",
        "real DNS server for SRV discovery tests",
    ),
    ("/usr/bin/git", "git", "tidy checks"),
    (
        "/usr/bin/promtool",
        "prometheus",
        "promtool checks the /metrics exposition",
    ),
    (
        "/usr/sbin/nginx",
        "nginx-light",
        "reverse-proxy baseline in the proxy benchmark",
    ),
    (
        "/usr/bin/wrk",
        "wrk",
        "load generator for the proxy benchmark",
    ),
    (
        "/usr/bin/chromium",
        "chromium",
        "headless browser test of the dashboard",
    ),
    (
        "/usr/sbin/ip",
        "iproute2",
        "network namespaces and veth pairs for the mDNS tests",
    ),
    ("/usr/bin/cmake", "cmake", "builds llama.cpp's llama-server"),
    ("/usr/bin/g++", "g++", "builds llama.cpp's llama-server"),
    (
        "/usr/bin/kubectl",
        "kubernetes-client",
        "kubectl reads the Kubernetes API-server fixture",
    ),
];

/// What the tests read to find the fixtures.
#[derive(Debug, Clone)]
pub(crate) struct TestEnv {
    venv: PathBuf,
    model: PathBuf,
    mdns_venv: PathBuf,
    deploy_venv: PathBuf,
    chat_model: PathBuf,
    claude_code: PathBuf,
    llama: crate::llama::LlamaEnv,
}

impl TestEnv {
    /// Environment variables for `cargo test`.
    pub(crate) fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MLX_CLUSTER_VENV", self.venv.display().to_string()),
            ("MLX_CLUSTER_TINY_MODEL", self.model.display().to_string()),
            (
                "MLX_CLUSTER_MDNS_VENV",
                self.mdns_venv.display().to_string(),
            ),
            (
                "MLX_CLUSTER_DEPLOY_VENV",
                self.deploy_venv.display().to_string(),
            ),
            (
                "MLX_CLUSTER_TINY_CHAT_MODEL",
                self.chat_model.display().to_string(),
            ),
            (
                "MLX_CLUSTER_CLAUDE_CODE",
                self.claude_code.display().to_string(),
            ),
            (
                "MLX_CLUSTER_LLAMA_SERVER",
                self.llama.server.display().to_string(),
            ),
            (
                "MLX_CLUSTER_TINY_GGUF",
                self.llama.model.display().to_string(),
            ),
        ]
    }
}

/// Installs what is missing and returns where the fixtures are.
pub(crate) fn run() -> Result<TestEnv, String> {
    install_apt_packages()?;
    let python = ensure_python_venv_support()?;
    let cache = cache_dir()?;
    let venv = ensure_venv(&python, &cache)?;
    let model = ensure_tiny_model(&venv, &cache, None)?;
    let chat_model = ensure_tiny_model(&venv, &cache, Some(CHAT_MODEL_ENDS_TURNS))?;
    let claude_code = ensure_npm_packages(&cache)?;
    let mdns_venv = ensure_small_venv(&python, &cache, "mdns")?;
    let deploy_venv = ensure_small_venv(&python, &cache, "deploy")?;
    ensure_cargo_afl()?;
    let llama = crate::llama::ensure(&python, &cache)?;
    Ok(TestEnv {
        venv,
        model,
        mdns_venv,
        deploy_venv,
        chat_model,
        claude_code,
        llama,
    })
}

/// The cargo-afl release `cargo xtask fuzz` uses (matches the `afl` crate
/// pinned in `fuzz/afl/Cargo.toml`).
pub(crate) const CARGO_AFL_VERSION: &str = "0.18.2";

/// Where cargo-afl lives.
pub(crate) struct AflEnv {
    /// `~/.cache/mlx-cluster` (or `$MLX_CLUSTER_CACHE`).
    pub(crate) cache: PathBuf,
    /// `cargo-afl-VERSION/` under it: `bin/cargo-afl` and `data/` (AFL++).
    pub(crate) root: PathBuf,
}

impl AflEnv {
    /// The `cargo` to run `cargo afl` with: cargo itself, with cargo-afl's
    /// directory first on `PATH` (see [`cargo_afl_env`]).
    pub(crate) fn cargo_afl(&self) -> String {
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
    }
}

/// Whether a file named `name` is somewhere under `dir`.
fn contains_file(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                contains_file(&path, name)
            } else {
                path.file_name().is_some_and(|n| n == name)
            }
        })
}

/// Puts cargo-afl on `PATH` and points it at its AFL++ build.
pub(crate) fn cargo_afl_env(cmd: &mut Command, env: &AflEnv) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![env.root.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(dirs) {
        cmd.env("PATH", joined);
    }
    cmd.env("XDG_DATA_HOME", env.root.join("data"));
}

/// Installs cargo-afl under the cache (once per version): `cargo install`
/// builds it and, while installing, AFL++ from its bundled sources (make
/// and a C compiler, both on the machine).
pub(crate) fn ensure_cargo_afl() -> Result<AflEnv, String> {
    let cache = cache_dir()?;
    let root = cache.join(format!("cargo-afl-{CARGO_AFL_VERSION}"));
    let env = AflEnv {
        cache: cache.clone(),
        root: root.clone(),
    };
    if root.join(".complete").exists() {
        eprintln!("setup: cargo-afl ready at {}", root.display());
        return Ok(env);
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .map_err(|e| format!("cannot remove half-built {}: {e}", root.display()))?;
    }
    std::fs::create_dir_all(root.join("data"))
        .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let mut install = Command::new(env.cargo_afl());
    install
        .args([
            "install",
            "--locked",
            "cargo-afl",
            "--version",
            CARGO_AFL_VERSION,
            "--root",
        ])
        .arg(&root)
        .env("CARGO_TARGET_DIR", root.join("build"));
    cargo_afl_env(&mut install, &env);
    run_step("cargo install cargo-afl", &mut install)?;
    // `cargo install` builds AFL++ only when it can; make sure its runtime
    // is there.
    if !contains_file(&root.join("data"), "afl-compiler-rt.o") {
        let mut config = Command::new(env.cargo_afl());
        config.args(["afl", "config", "--build"]);
        cargo_afl_env(&mut config, &env);
        run_step("cargo afl config --build", &mut config)?;
    }
    let _ = std::fs::remove_dir_all(root.join("build"));
    mark_complete(&root)?;
    Ok(env)
}

/// `$MLX_CLUSTER_CACHE`, else `~/.cache/mlx-cluster`.
fn cache_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("MLX_CLUSTER_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home =
        std::env::var_os("HOME").ok_or("HOME is not set and MLX_CLUSTER_CACHE is not set")?;
    Ok(PathBuf::from(home).join(".cache").join("mlx-cluster"))
}

fn install_apt_packages() -> Result<(), String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(proof, _, _)| !Path::new(proof).exists())
        .map(|(_, package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages present");
        return Ok(());
    }
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    if !have_program("apt-get") {
        return Err(format!(
            "missing packages {packages:?} and no apt-get to install them; install them by hand"
        ));
    }
    eprintln!("setup: installing {packages:?}");
    run_step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    run_step(
        "apt-get install",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages),
    )
}

/// Finds a python3 that can make venvs, installing Debian's venv module if
/// that is what is missing.
fn ensure_python_venv_support() -> Result<String, String> {
    let python = std::env::var("MLX_CLUSTER_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if !have_program(&python) {
        apt_install(&["python3", "python3-venv"])?;
    }
    let probe = Command::new(&python)
        .args(["-c", "import venv, ensurepip"])
        .status();
    if !matches!(probe, Ok(status) if status.success()) {
        apt_install(&["python3-venv"])?;
    }
    Ok(python)
}

fn ensure_venv(python: &str, cache: &Path) -> Result<PathBuf, String> {
    ensure_venv_from(python, cache, "venv", "scripts/requirements-mlx.txt")
}

/// A venv named `<prefix>-<key>` under `cache` with the pinned packages of
/// `requirements` (relative to the workspace root; the key is a hash of its
/// bytes), built once and reused while the file is unchanged.
pub(crate) fn ensure_venv_from(
    python: &str,
    cache: &Path,
    prefix: &str,
    requirements: &str,
) -> Result<PathBuf, String> {
    let requirements = workspace_root().join(requirements);
    let pins = std::fs::read(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let venv = cache.join(format!("{prefix}-{}", fnv1a(&[&pins])));
    if venv.join(".complete").exists() {
        eprintln!("setup: venv ready at {}", venv.display());
        return Ok(venv);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("cannot remove half-built {}: {e}", venv.display()))?;
    }
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    run_step(
        "venv",
        Command::new(python).arg("-m").arg("venv").arg(&venv),
    )?;
    let pip = venv.join("bin/pip");
    run_step(
        "pip install",
        Command::new(&pip)
            .args(["install", "--disable-pip-version-check", "-q", "-r"])
            .arg(&requirements),
    )?;
    mark_complete(&venv)?;
    Ok(venv)
}

/// A venv of `scripts/requirements-NAME.txt` at `venv-NAME-<key>`
/// (python-zeroconf for the mDNS tests, SMG for the routing benchmark, ...).
pub(crate) fn ensure_small_venv(python: &str, cache: &Path, name: &str) -> Result<PathBuf, String> {
    ensure_venv_from(
        python,
        cache,
        &format!("venv-{name}"),
        &format!("scripts/requirements-{name}.txt"),
    )
}

/// The venv with SMG (`scripts/requirements-smg.txt`), for the real-node
/// routing benchmark.
pub(crate) fn ensure_smg_venv() -> Result<PathBuf, String> {
    let python = ensure_python_venv_support()?;
    ensure_small_venv(&python, &cache_dir()?, "smg")
}

/// Answers of the chat variant of the tiny model end after this many tokens
/// (`make_tiny_model.py --ends-turns`); the tests' fixture names the same.
const CHAT_MODEL_ENDS_TURNS: u32 = 8;

/// The tiny model at `tiny-model-<key>`, or with `ends_turns` its variant
/// that ends its answers at `tiny-chat-model-<key>`.
fn ensure_tiny_model(
    venv: &Path,
    cache: &Path,
    ends_turns: Option<u32>,
) -> Result<PathBuf, String> {
    let root = workspace_root();
    let script_path = root.join("scripts/make_tiny_model.py");
    let script = std::fs::read(&script_path)
        .map_err(|e| format!("cannot read {}: {e}", script_path.display()))?;
    let pins = std::fs::read(root.join("scripts/requirements-mlx.txt")).unwrap_or_default();
    let (name, step, variant) = match ends_turns {
        None => ("tiny-model", "tiny model".to_owned(), Vec::new()),
        Some(n) => (
            "tiny-chat-model",
            format!("tiny model ending turns after {n} tokens"),
            format!("ends-turns {n}").into_bytes(),
        ),
    };
    let key = if variant.is_empty() {
        fnv1a(&[&script, &pins])
    } else {
        fnv1a(&[&script, &pins, &variant])
    };
    let model = cache.join(format!("{name}-{key}"));
    if model.join(".complete").exists() {
        eprintln!("setup: {step} ready at {}", model.display());
        return Ok(model);
    }
    if model.exists() {
        std::fs::remove_dir_all(&model)
            .map_err(|e| format!("cannot remove half-built {}: {e}", model.display()))?;
    }
    let mut build = Command::new(venv.join("bin/python"));
    build
        .arg(&script_path)
        .arg(&model)
        .env("HF_HUB_OFFLINE", "1");
    if let Some(n) = ends_turns {
        build.arg("--ends-turns").arg(n.to_string());
    }
    run_step(&step, &mut build)?;
    let listing = output(Command::new("ls").arg(&model))?;
    if !listing.contains("config.json") {
        return Err(format!(
            "{} did not produce a model in {} (found: {listing})",
            script_path.display(),
            model.display()
        ));
    }
    mark_complete(&model)?;
    Ok(model)
}

/// The npm packages of `scripts/requirements-npm.txt` under `npm-<key>`;
/// returns the Claude Code CLI (`node_modules/.bin/claude`), checked to run
/// and to be the pinned version.
fn ensure_npm_packages(cache: &Path) -> Result<PathBuf, String> {
    let requirements = workspace_root().join("scripts/requirements-npm.txt");
    let text = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let packages: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let claude_version = packages
        .iter()
        .find_map(|p| p.strip_prefix("@anthropic-ai/claude-code@"))
        .ok_or_else(|| {
            format!(
                "{} pins no @anthropic-ai/claude-code",
                requirements.display()
            )
        })?;
    let dir = cache.join(format!("npm-{}", fnv1a(&[text.as_bytes()])));
    let claude = dir.join("node_modules/.bin/claude");
    if dir.join(".complete").exists() {
        eprintln!("setup: npm packages ready at {}", dir.display());
        return Ok(claude);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot remove half-built {}: {e}", dir.display()))?;
    }
    if !have_program("npm") {
        apt_install(&["npm"])?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    run_step(
        "npm install",
        Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&dir)
            .args(["--no-audit", "--no-fund", "--no-save", "--loglevel=error"])
            .args(&packages)
            .env("npm_config_update_notifier", "false"),
    )?;
    // `--version` must not touch the real home directory.
    let home = dir.join("home");
    std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    let version = output(
        Command::new(&claude)
            .arg("--version")
            .env("HOME", &home)
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    )?;
    if !version.contains(claude_version) {
        return Err(format!(
            "{} --version says {:?}, expected {claude_version}",
            claude.display(),
            version.trim()
        ));
    }
    mark_complete(&dir)?;
    Ok(claude)
}

fn mark_complete(dir: &Path) -> Result<(), String> {
    std::fs::write(dir.join(".complete"), b"ok\n")
        .map_err(|e| format!("cannot write marker in {}: {e}", dir.display()))
}
