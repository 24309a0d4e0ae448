//! `mlx-cluster`: the gateway binary (see `docs/gateway.md`).

use std::process::ExitCode;

use clap::Parser;
use cluster_gateway::cli::{Cli, run};

fn main() -> ExitCode {
    run(Cli::parse())
}
