//! Fixtures shared by the integration tests of mlx-cluster.
