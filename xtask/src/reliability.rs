//! `cargo xtask chaos | soak | fuzz`: the reliability runs of
//! `docs/reliability.md`.
//!
//! - `chaos [--seconds N] [--only CASE]`: hostile clients and misbehaving
//!   nodes against the release `mlx-cluster` binary (the `chaos` example of
//!   cluster-gateway).
//! - `soak [--minutes N]`: steady mixed load through the release binary
//!   with a node killed and restarted every minute; RSS and open file
//!   descriptors sampled every second and plotted (the `soak` example).
//! - `fuzz [--minutes N]`: every fuzz target (see [`crate::fuzz`]).
//!
//! The release build is shared: `mlx-cluster` and the examples are built
//! once with `--locked`.

use std::time::Instant;

use crate::util::{cargo, run_step, workspace_root};

/// Builds the release binary and the reliability examples.
pub(crate) fn build_release() -> Result<(), String> {
    run_step(
        "build release",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "cluster-gateway",
            "--bin",
            "mlx-cluster",
            "--example",
            "chaos",
            "--example",
            "soak",
        ]),
    )
}

fn example(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("examples").join(name)
}

/// `cargo xtask chaos [ARGS]`: ARGS go to the chaos example.
pub(crate) fn chaos(args: &[String]) -> Result<(), String> {
    build_release()?;
    let started = Instant::now();
    let result = run_step(
        "chaos",
        std::process::Command::new(example("chaos"))
            .args(args)
            .current_dir(workspace_root()),
    );
    eprintln!(
        "xtask chaos: {:.0}s (report in target/reliability/chaos/report.md)",
        started.elapsed().as_secs_f64()
    );
    result
}

/// `cargo xtask soak [--minutes N] [ARGS]`: ARGS go to the soak example.
pub(crate) fn soak(args: &[String]) -> Result<(), String> {
    build_release()?;
    run_step(
        "soak",
        std::process::Command::new(example("soak"))
            .args(args)
            .current_dir(workspace_root()),
    )
}
