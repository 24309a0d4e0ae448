//! Node tags the gateway reads: which HTTP API a node serves for Anthropic
//! Messages requests, and a per-node cap of generated tokens.
//!
//! Tags are free-form labels on a [`NodeSpec`] (`tags = { rack = "a" }` in a
//! static config; discovery sources that carry labels map them to tags too),
//! so these settings reach the gateway from any discovery source. Two keys
//! have a meaning:
//!
//! | tag | values | default |
//! |---|---|---|
//! | [`API_TAG`] `api` | `openai`: the node speaks only OpenAI's API, `/v1/messages` requests are translated to `/v1/chat/completions`; `anthropic`: the node also serves `/v1/messages` itself (recent llama.cpp `llama-server`), requests are passed through | `openai` |
//! | [`MAX_OUTPUT_TOKENS_TAG`] `max_output_tokens` | a positive integer: the largest `max_tokens` a `/v1/messages` request may ask of this node; `0` = no cap | `gateway.max_output_tokens` |
//!
//! Static configs are validated (`discovery.nodes[i].tags.api`, ...);
//! a discovered node with an unusable value falls back to the default.
//!
//! ```
//! use cluster_types::{NodeApi, NodeSpec};
//!
//! let mut spec = NodeSpec::new("studio", "http://10.0.0.2:8080");
//! assert_eq!(spec.api(), Ok(NodeApi::OpenAi));
//! spec.tags.insert("api".into(), "anthropic".into());
//! spec.tags.insert("max_output_tokens".into(), "4096".into());
//! assert_eq!(spec.api(), Ok(NodeApi::Anthropic));
//! assert_eq!(spec.max_output_tokens(), Ok(Some(4096)));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::node::{NodeSpec, UnknownVariant, string_enum};

/// Tag naming the API a node serves for Anthropic Messages requests (see
/// [`NodeApi`]).
pub const API_TAG: &str = "api";

/// Tag capping `max_tokens` of Anthropic Messages requests sent to a node
/// (a positive integer; `0` = no cap).
pub const MAX_OUTPUT_TOKENS_TAG: &str = "max_output_tokens";

/// What a node does with `POST /v1/messages`. Serialized lowercase.
/// Default: [`NodeApi::OpenAi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NodeApi {
    /// `"openai"`: only OpenAI's API (mlx_lm.server); the gateway translates
    /// Messages requests to chat completions and the answers back.
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    /// `"anthropic"`: the node serves `/v1/messages` itself; the gateway
    /// passes Messages requests through.
    Anthropic,
}

string_enum!(NodeApi, "node api", [
    OpenAi => "openai",
    Anthropic => "anthropic",
]);

impl NodeApi {
    /// The [`API_TAG`] of a node's `tags` (default [`NodeApi::OpenAi`]
    /// when absent).
    ///
    /// # Errors
    /// The unknown value, when the tag holds neither `openai` nor `anthropic`.
    pub fn from_tags(tags: &BTreeMap<String, String>) -> Result<Self, UnknownVariant> {
        tags.get(API_TAG).map_or(Ok(Self::OpenAi), |v| v.parse())
    }
}

/// The [`MAX_OUTPUT_TOKENS_TAG`] of a node's `tags`: `None` when absent
/// (the gateway's `gateway.max_output_tokens` applies), `Some(0)` for no
/// cap.
///
/// # Errors
/// A message when the tag is not a non-negative integer below 2^32.
pub fn max_output_tokens_tag(tags: &BTreeMap<String, String>) -> Result<Option<u32>, String> {
    match tags.get(MAX_OUTPUT_TOKENS_TAG) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| format!("must be a whole number of tokens, 0 for no cap (got {v:?})")),
    }
}

impl NodeSpec {
    /// The node's [`API_TAG`] (see [`NodeApi::from_tags`]).
    ///
    /// # Errors
    /// The unknown value, when the tag holds neither `openai` nor `anthropic`.
    pub fn api(&self) -> Result<NodeApi, UnknownVariant> {
        NodeApi::from_tags(&self.tags)
    }

    /// The node's [`MAX_OUTPUT_TOKENS_TAG`] (see [`max_output_tokens_tag`]).
    ///
    /// # Errors
    /// A message when the tag is not a non-negative integer below 2^32.
    pub fn max_output_tokens(&self) -> Result<Option<u32>, String> {
        max_output_tokens_tag(&self.tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tag_values() {
        let mut spec = NodeSpec::new("a", "http://a:1");
        assert_eq!(spec.api(), Ok(NodeApi::OpenAi));
        spec.tags.insert(API_TAG.into(), "openai".into());
        assert_eq!(spec.api(), Ok(NodeApi::OpenAi));
        spec.tags.insert(API_TAG.into(), "anthropic".into());
        assert_eq!(spec.api(), Ok(NodeApi::Anthropic));
        spec.tags.insert(API_TAG.into(), "claude".into());
        let err = spec.api().unwrap_err().to_string();
        assert!(err.contains("openai") && err.contains("anthropic"), "{err}");
        assert_eq!(
            serde_json::to_string(&NodeApi::OpenAi).unwrap(),
            "\"openai\""
        );
    }

    #[test]
    fn max_output_tokens_tag() {
        let mut spec = NodeSpec::new("a", "http://a:1");
        assert_eq!(spec.max_output_tokens(), Ok(None));
        spec.tags.insert(MAX_OUTPUT_TOKENS_TAG.into(), "0".into());
        assert_eq!(spec.max_output_tokens(), Ok(Some(0)));
        spec.tags
            .insert(MAX_OUTPUT_TOKENS_TAG.into(), " 512 ".into());
        assert_eq!(spec.max_output_tokens(), Ok(Some(512)));
        spec.tags
            .insert(MAX_OUTPUT_TOKENS_TAG.into(), "lots".into());
        assert!(spec.max_output_tokens().unwrap_err().contains("lots"));
    }
}
