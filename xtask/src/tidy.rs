//! `cargo xtask tidy`: the repository's own conventions, checked.
//!
//! - every member inherits the workspace lints and package fields;
//! - library crates depend strictly downward (the layer order of
//!   `docs/architecture.md`), and
//!   only the gateway may depend on cluster-sim outside dev-dependencies, and
//!   nothing on test-support;
//! - every crate has crate-level docs;
//! - no stub macros (`todo`, `unimplemented`) and no ignored tests in the sources;
//! - README.md names the test command and `.ci/run` runs it.
//!
//! Every problem is listed, then the step fails.

use std::path::Path;

use crate::ci::{crate_manifests, package_name, section};
use crate::util::workspace_root;

/// Stubs and ignored tests: a stub is not done, and CI does not run an
/// ignored test. Spelled with `concat!` so this file does not match itself.
const FORBIDDEN_MARKERS: [&str; 3] = [
    concat!("todo", "!("),
    concat!("unimplemented", "!("),
    concat!("#[", "ignore"),
];

/// Layer order, bottom first.
const LAYERS: &[&str] = &[
    "cluster-types",
    "cluster-metrics",
    "cluster-health",
    "cluster-discovery",
    "cluster-facade",
    "cluster-gateway",
];

pub(crate) fn run() -> Result<(), String> {
    let root = workspace_root();
    let mut problems = Vec::new();

    let mut manifests = crate_manifests()?;
    manifests.push(root.join("xtask/Cargo.toml"));
    manifests.push(root.join("tests/Cargo.toml"));
    for manifest in &manifests {
        check_manifest(manifest, &mut problems);
    }
    for manifest in crate_manifests()? {
        let dir = manifest.parent().unwrap_or(&root).to_path_buf();
        check_crate_docs(&dir, &mut problems);
        check_sources(&dir.join("src"), &mut problems);
    }
    check_sources(&root.join("tests"), &mut problems);

    let readme = std::fs::read_to_string(root.join("README.md")).unwrap_or_default();
    if !readme.contains("cargo xtask ci") {
        problems.push("README.md: does not show the test command `cargo xtask ci`".to_owned());
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap_or_default();
    if !ci.contains("cargo xtask ci") {
        problems.push(".ci/run: does not run `cargo xtask ci`".to_owned());
    }

    if problems.is_empty() {
        eprintln!("tidy: ok");
        Ok(())
    } else {
        Err(format!(
            "tidy found {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ))
    }
}

fn check_manifest(manifest: &Path, problems: &mut Vec<String>) {
    let shown = manifest
        .strip_prefix(workspace_root())
        .unwrap_or(manifest)
        .display()
        .to_string();
    let Ok(text) = std::fs::read_to_string(manifest) else {
        problems.push(format!("{shown}: cannot read"));
        return;
    };
    let lints = section(&text, "lints");
    if !lints
        .iter()
        .any(|(key, value)| key == "workspace" && value == "true")
    {
        problems.push(format!("{shown}: missing `[lints] workspace = true`"));
    }
    for field in ["version", "edition", "rust-version", "license", "publish"] {
        let inherited = format!("{field}.workspace");
        if !section(&text, "package")
            .iter()
            .any(|(key, value)| key == &inherited && value == "true")
        {
            problems.push(format!(
                "{shown}: `{field}` is not inherited from the workspace"
            ));
        }
    }
    let Some(name) = package_name(&text) else {
        problems.push(format!("{shown}: no package name"));
        return;
    };
    let deps = section(&text, "dependencies");
    if let Some(level) = LAYERS.iter().position(|layer| *layer == name) {
        for (dep, _) in &deps {
            if let Some(dep_level) = LAYERS.iter().position(|layer| layer == dep)
                && dep_level >= level
            {
                problems.push(format!(
                    "{shown}: {name} depends on {dep}, which does not sit below it"
                ));
            }
        }
    }
    if name != "cluster-gateway"
        && name != "cluster-tests"
        && deps.iter().any(|(dep, _)| dep == "cluster-sim")
    {
        problems.push(format!(
            "{shown}: {name} depends on cluster-sim outside dev-dependencies"
        ));
    }
    if deps.iter().any(|(dep, _)| dep == "test-support") {
        problems.push(format!(
            "{shown}: {name} depends on test-support outside dev-dependencies"
        ));
    }
}

fn check_crate_docs(dir: &Path, problems: &mut Vec<String>) {
    for root_file in ["src/lib.rs", "src/main.rs"] {
        let path = dir.join(root_file);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if !text.trim_start().starts_with("//!") {
                problems.push(format!("{}: no crate-level docs (`//!`)", path.display()));
            }
            return;
        }
    }
}

fn check_sources(dir: &Path, problems: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            check_sources(&path, problems);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (number, line) in text.lines().enumerate() {
                for marker in FORBIDDEN_MARKERS {
                    if line.contains(marker) {
                        problems.push(format!(
                            "{}:{}: `{marker}` — finish it or leave it out",
                            path.display(),
                            number + 1
                        ));
                    }
                }
            }
        }
    }
}
