//! `cargo xtask ci`: the whole check, in the order CI runs it.
//!
//! 1. setup (apt packages, mlx venv, tiny model) — fails loudly, never skips;
//! 2. `cargo fmt --check`;
//! 3. clippy on all targets with all features, `-D warnings`;
//! 4. tests for the whole workspace with all features (the fixtures' paths
//!    come from step 1 through the environment);
//! 5. `cargo doc` with `-D warnings`;
//! 6. `cargo check` of each crate alone, with no default features, with each
//!    feature alone and with all features (so a crate never builds only
//!    because a neighbour switched a feature on);
//! 7. tidy;
//! 8. reliability, with short budgets: every fuzz target for 15 s
//!    (coverage-guided, cargo afl), the chaos run (hostile clients and
//!    misbehaving nodes) and a 3-minute soak, through the release binary.
//!
//! Steps 3 to 6 share one target directory; 6 only re-checks what a feature
//! set changes.

use std::time::Instant;

use crate::util::{cargo, run_step, workspace_root};
use crate::{setup, tidy};

pub(crate) fn run() -> Result<(), String> {
    let started = Instant::now();
    let env = setup::run()?;

    run_step("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;

    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features", "--locked"]);
    for (key, value) in env.vars() {
        test.env(key, value);
    }
    run_step("test", &mut test)?;

    run_step(
        "doc",
        cargo()
            .args([
                "doc",
                "--workspace",
                "--no-deps",
                "--all-features",
                "--locked",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;

    for check in feature_matrix()? {
        let mut cmd = cargo();
        cmd.args(["check", "--locked", "-p", &check.package]);
        cmd.args(&check.args);
        run_step(&format!("check {}", check.label), &mut cmd)?;
    }

    tidy::run()?;

    crate::fuzz::run(&["--seconds".to_owned(), "15".to_owned()])?;
    crate::reliability::chaos(&["--seconds".to_owned(), "2".to_owned()])?;
    crate::reliability::soak(&["--minutes".to_owned(), "3".to_owned()])?;
    list_artifacts();
    eprintln!(
        "\nxtask ci: all steps passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Names what the tests kept in `target/artifacts/` (the dashboard's
/// screenshot and DOM from headless Chromium, ...).
fn list_artifacts() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from);
    let dir = target.join("artifacts");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if !names.is_empty() {
        eprintln!(
            "\nxtask ci: test artifacts in {}: {}",
            dir.display(),
            names.join(", ")
        );
    }
}

/// One `cargo check` invocation of the feature matrix.
struct FeatureCheck {
    package: String,
    label: String,
    args: Vec<String>,
}

/// Each crate under `crates/` alone; for crates with features: no default
/// features, each feature alone, all features.
fn feature_matrix() -> Result<Vec<FeatureCheck>, String> {
    let mut checks = Vec::new();
    for manifest in crate_manifests()? {
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
        let package = package_name(&text)
            .ok_or_else(|| format!("{}: no package name", manifest.display()))?;
        let features = feature_names(&text);
        // A crate that can switch on k8s-openapi must pick its API version
        // when checked alone (libraries leave the choice to the leaf).
        let k8s_pin = |set: &[&str]| -> Vec<String> {
            if text.contains("k8s-openapi") && set.iter().any(|f| *f == "k8s" || *f == "*") {
                vec!["k8s-openapi/latest".to_owned()]
            } else {
                Vec::new()
            }
        };
        checks.push(FeatureCheck {
            package: package.clone(),
            label: format!("{package} (default features)"),
            args: features_args(false, &k8s_pin(&["default"])),
        });
        if features.is_empty() {
            continue;
        }
        checks.push(FeatureCheck {
            package: package.clone(),
            label: format!("{package} --no-default-features"),
            args: vec!["--no-default-features".to_owned()],
        });
        for feature in &features {
            let mut set = vec![feature.clone()];
            set.extend(k8s_pin(&[feature]));
            checks.push(FeatureCheck {
                package: package.clone(),
                label: format!("{package} --features {feature}"),
                args: features_args(true, &set),
            });
        }
        let mut all = vec!["--all-features".to_owned()];
        for pin in k8s_pin(&["*"]) {
            all.push("--features".to_owned());
            all.push(pin);
        }
        checks.push(FeatureCheck {
            package: package.clone(),
            label: format!("{package} --all-features"),
            args: all,
        });
    }
    Ok(checks)
}

fn features_args(no_default: bool, features: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    if no_default {
        args.push("--no-default-features".to_owned());
    }
    if !features.is_empty() {
        args.push("--features".to_owned());
        args.push(features.join(","));
    }
    args
}

pub(crate) fn crate_manifests() -> Result<Vec<std::path::PathBuf>, String> {
    let dir = workspace_root().join("crates");
    let mut manifests: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("Cargo.toml"))
        .filter(|path| path.is_file())
        .collect();
    manifests.sort();
    Ok(manifests)
}

pub(crate) fn package_name(manifest: &str) -> Option<String> {
    section(manifest, "package")
        .into_iter()
        .find_map(|(key, value)| (key == "name").then(|| value.trim_matches('"').to_owned()))
}

/// Feature names declared in `[features]`, except `default`.
fn feature_names(manifest: &str) -> Vec<String> {
    section(manifest, "features")
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key != "default")
        .collect()
}

/// `key = value` lines of a top-level TOML table (enough for our manifests).
pub(crate) fn section(manifest: &str, name: &str) -> Vec<(String, String)> {
    let header = format!("[{name}]");
    let mut inside = false;
    let mut entries = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if !inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            entries.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    entries
}
