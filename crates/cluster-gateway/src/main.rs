//! `mlx-cluster`: the gateway binary (see `docs/gateway.md`).

use std::process::ExitCode;

use clap::Parser;
use cluster_gateway::{Cli, run};

/// mimalloc: the proxy path allocates many small short-lived objects
/// (header maps, buffers); glibc's malloc costs measurably more there
/// (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    run(Cli::parse())
}
