//! cluster-metrics
