//! `mlx-cluster`: the gateway binary.

fn main() {}
