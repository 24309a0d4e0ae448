//! Project automation for mlx-cluster, in the style of rust-analyzer's xtask:
//! one binary, `std::process` only, no dependencies.
//!
//! ```text
//! cargo xtask ci            # everything CI checks, in order (installs what is missing)
//! cargo xtask setup         # install apt packages, the mlx venv, llama-server and the tiny models
//! cargo xtask bench [NAME]  # run benchmarks (all, or one of the names listed by `bench --list`)
//! cargo xtask tidy          # the repository's own conventions
//! cargo xtask chaos         # hostile clients and misbehaving nodes (docs/reliability.md)
//! cargo xtask soak          # steady load with node restarts; RSS and fds plotted
//! cargo xtask fuzz          # every fuzz target for a fixed budget
//! ```

mod bench;
mod ci;
mod fuzz;
mod llama;
mod reliability;
mod setup;
mod tidy;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci               fmt check, clippy -D warnings, tests, docs -D warnings, per-crate and
                   per-feature build checks, tidy. Installs what it needs first (see setup).
  setup            install missing apt packages, the Python venv with mlx-lm and the
                   tiny random-weight model, llama.cpp's llama-server (built from
                   source) and a tiny GGUF model, used by the real-node tests; prints
                   the environment the tests read.
  bench [NAME..]   run benchmarks; `bench --list` names them. Figures go to stdout and
                   target/criterion.
  tidy             check the repository's conventions (layering, lints, docs).
  chaos [--seconds N] [--only CASE]
                   hostile clients and misbehaving nodes against the release binary,
                   with a well-behaved client alongside; report in target/reliability/.
  soak [--minutes N]
                   steady mixed load through the release binary, a node restarted every
                   minute; RSS and open fds sampled every second and plotted.
  fuzz [--minutes N] [TARGET..]
                   run every fuzz target (cargo afl, coverage-guided) for N minutes
                   each (default 1); findings in target/fuzz/.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("setup") => setup::run().map(|env| {
            for (key, value) in env.vars() {
                println!("export {key}={value}");
            }
        }),
        Some("bench") => bench::run(&args[1..]),
        Some("tidy") => tidy::run(),
        Some("chaos") => reliability::chaos(&args[1..]),
        Some("soak") => reliability::soak(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}
