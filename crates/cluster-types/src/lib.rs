//! cluster-types
