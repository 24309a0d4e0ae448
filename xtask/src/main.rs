//! Project automation for mlx-cluster.
fn main() {}
