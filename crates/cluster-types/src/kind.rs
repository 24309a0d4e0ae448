//! What kind of inference server a node is, and what follows from it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::node::{UnknownVariant, string_enum};

/// The node tag that forces a node's kind (`tags = { kind = "llama_cpp" }`);
/// without it the kind is detected when the node is validated.
pub const KIND_TAG: &str = "kind";

/// The inference server behind a node, detected at validation (or forced by
/// the [`KIND_TAG`] tag). Serialized snake case. Default
/// [`NodeKind::Generic`].
///
/// Detection (cluster-health's `HttpHealthChecker::profile`), in order:
/// `owned_by` of the `GET /v1/models` entries (`llamacpp`, `vllm`,
/// `sglang`); `GET /props` with `total_slots` (llama.cpp); `GET /version`
/// with a `version` (vLLM); `GET /get_server_info` with `tp_size`
/// (SGLang); entries without `owned_by` and a `GET /health` answering
/// `{"status": …}` (mlx_lm.server); else generic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Anything else that speaks the OpenAI API.
    #[default]
    Generic,
    /// `mlx_lm.server`: `/health` answers 503 once its generation thread
    /// died; its prompt cache is an LRU of whole sequences
    /// (`--prompt-cache-size`, 10 by default); no metrics endpoint.
    MlxLm,
    /// llama.cpp's `llama-server`: `/health` answers 503 while loading;
    /// one cached prompt per slot (`total_slots` of `/props`); `/slots` and
    /// `/metrics` tell what the slots hold and how many requests wait.
    LlamaCpp,
    /// vLLM: `/health`; Prometheus `/metrics` with KV usage and waiting
    /// requests.
    Vllm,
    /// SGLang: `/health`; Prometheus `/metrics` with token usage and queued
    /// requests.
    Sglang,
}

string_enum!(NodeKind, "node kind", [
    Generic => "generic",
    MlxLm => "mlx_lm",
    LlamaCpp => "llama_cpp",
    Vllm => "vllm",
    Sglang => "sglang",
]);

impl NodeKind {
    /// The health probe path used when `health.probe_path` is not set:
    /// `/health` for every known server (mlx_lm.server's answers 503 when
    /// its generation thread died, llama.cpp's while it loads), `/v1/models`
    /// for generic nodes.
    #[must_use]
    pub const fn default_probe_path(self) -> &'static str {
        match self {
            Self::Generic => "/v1/models",
            Self::MlxLm | Self::LlamaCpp | Self::Vllm | Self::Sglang => "/health",
        }
    }

    /// Whether the node publishes Prometheus `/metrics` worth reading for
    /// its cache and queue (llama.cpp with `--metrics`, vLLM, SGLang).
    #[must_use]
    pub const fn publishes_metrics(self) -> bool {
        matches!(self, Self::LlamaCpp | Self::Vllm | Self::Sglang)
    }

    /// The kind a node's [`KIND_TAG`] forces, if it has a valid one.
    #[must_use]
    pub fn from_tags(tags: &std::collections::BTreeMap<String, String>) -> Option<Self> {
        tags.get(KIND_TAG).and_then(|v| v.parse().ok())
    }
}

/// What validating a node found out: the models it lists, its kind and,
/// for llama.cpp, its number of slots. Defaults: no models, generic, no
/// slot count.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeProfile {
    /// Model ids from `GET /v1/models`, in the node's order.
    pub models: Vec<String>,
    /// The detected (or forced) kind.
    pub kind: NodeKind,
    /// llama.cpp: `total_slots` of `GET /props`. `None` for other kinds.
    pub slots: Option<u32>,
}

impl NodeProfile {
    /// A profile of `kind` serving `models`, without a slot count.
    #[must_use]
    pub fn new(models: Vec<String>, kind: NodeKind) -> Self {
        Self {
            models,
            kind,
            slots: None,
        }
    }

    /// Sets [`Self::slots`].
    #[must_use]
    pub fn with_slots(mut self, slots: Option<u32>) -> Self {
        self.slots = slots;
        self
    }
}

impl From<Vec<String>> for NodeProfile {
    /// A generic node serving `models`.
    fn from(models: Vec<String>) -> Self {
        Self::new(models, NodeKind::Generic)
    }
}

impl fmt::Display for NodeProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} serving {:?}", self.kind, self.models)?;
        if let Some(slots) = self.slots {
            write!(f, " with {slots} slots")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in NodeKind::ALL {
            assert_eq!(kind.as_str().parse::<NodeKind>().ok(), Some(*kind));
            let json = serde_json::to_string(kind).expect("serializes");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        let err = "ollama".parse::<NodeKind>().unwrap_err();
        assert!(err.to_string().contains("llama_cpp"), "{err}");
    }

    #[test]
    fn probe_paths_and_tags() {
        assert_eq!(NodeKind::MlxLm.default_probe_path(), "/health");
        assert_eq!(NodeKind::Generic.default_probe_path(), "/v1/models");
        let mut tags = std::collections::BTreeMap::new();
        assert_eq!(NodeKind::from_tags(&tags), None);
        tags.insert(KIND_TAG.to_owned(), "vllm".to_owned());
        assert_eq!(NodeKind::from_tags(&tags), Some(NodeKind::Vllm));
        let p = NodeProfile::from(vec!["m".to_owned()]).with_slots(Some(2));
        assert_eq!(p.to_string(), "generic serving [\"m\"] with 2 slots");
    }
}
