//! What kind of server a node is: [`HttpHealthChecker::profile`].
//!
//! Detection uses only what each server answers on its own documented
//! endpoints, cheapest first, and stops at the first clear answer:
//!
//! 1. `GET /v1/models` (required; its ids are the node's models): an
//!    `owned_by` of `llamacpp`, `vllm` or `sglang` names the server;
//! 2. `GET /props` (llama.cpp) with `total_slots` → llama.cpp, and its
//!    slot count (read for a llama.cpp node found in step 1 too);
//! 3. `GET /version` answering `{"version": …}` → vLLM;
//! 4. `GET /get_server_info` with `tp_size` → SGLang;
//! 5. model entries without `owned_by` and `GET /health` answering
//!    `{"status": …}` → mlx_lm.server (and the simulator, which imitates it);
//! 6. otherwise generic.
//!
//! A node's `kind` tag skips steps 1–6 (a llama.cpp node still has its
//! slots read). Only step 1 can fail validation; the optional probes that
//! fail (404, timeout, junk) just mean "not this kind".

use cluster_types::{NodeKind, NodeProfile, NodeSpec};
use serde::Deserialize;
use serde_json::Value;

use crate::http::MODELS_PATH;
use crate::{HealthError, HttpHealthChecker};

#[derive(Deserialize)]
struct ModelListWithOwners {
    data: Vec<ModelEntryWithOwner>,
}

#[derive(Deserialize)]
struct ModelEntryWithOwner {
    id: String,
    #[serde(default)]
    owned_by: Option<String>,
}

impl HttpHealthChecker {
    /// Validates `node` and tells what it is: its models (as
    /// [`list_models`](Self::list_models)), its [`NodeKind`] (see the module
    /// docs; forced by a valid `kind` tag) and, for llama.cpp, its number of
    /// slots. Each request has the checker's timeout.
    ///
    /// # Errors
    /// As [`list_models`](Self::list_models): only the model list is
    /// required.
    pub async fn profile(&self, node: &NodeSpec) -> Result<NodeProfile, HealthError> {
        let (_, body) = self.fetch(node, MODELS_PATH).await?;
        let models = self.parse_models(node, &body)?;
        let ids = models.data.iter().map(|m| m.id.clone()).collect();
        let forced = NodeKind::from_tags(&node.tags);
        let owned = forced.or_else(|| owner_kind(&models));
        let kind = match owned {
            Some(kind) => kind,
            None => self.probe_kind(node, &models).await,
        };
        let slots = if kind == NodeKind::LlamaCpp {
            self.get_json(node, "/props")
                .await
                .as_ref()
                .and_then(llama_slots)
        } else {
            None
        };
        Ok(NodeProfile::new(ids, kind).with_slots(slots))
    }

    fn parse_models(
        &self,
        node: &NodeSpec,
        body: &[u8],
    ) -> Result<ModelListWithOwners, HealthError> {
        // The strict parser gives the error messages the validator shows.
        crate::http::parse_model_list(&node.id, body)?;
        serde_json::from_slice(body).map_err(|e| HealthError::InvalidResponse {
            node: node.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Steps 2–6 of the module docs.
    async fn probe_kind(&self, node: &NodeSpec, models: &ModelListWithOwners) -> NodeKind {
        if self
            .get_json(node, "/props")
            .await
            .as_ref()
            .and_then(llama_slots)
            .is_some()
        {
            return NodeKind::LlamaCpp;
        }
        if self
            .get_json(node, "/version")
            .await
            .is_some_and(|v| v.get("version").is_some_and(Value::is_string))
        {
            return NodeKind::Vllm;
        }
        if self
            .get_json(node, "/get_server_info")
            .await
            .is_some_and(|v| v.get("tp_size").is_some())
        {
            return NodeKind::Sglang;
        }
        let unowned = models.data.iter().all(|m| m.owned_by.is_none());
        if unowned
            && self
                .get_json(node, "/health")
                .await
                .is_some_and(|v| v.get("status").is_some_and(Value::is_string))
        {
            return NodeKind::MlxLm;
        }
        NodeKind::Generic
    }

    /// `GET path` as JSON; `None` for any failure.
    async fn get_json(&self, node: &NodeSpec, path: &str) -> Option<Value> {
        let (_, body) = self.fetch(node, path).await.ok()?;
        serde_json::from_slice(&body).ok()
    }
}

fn owner_kind(models: &ModelListWithOwners) -> Option<NodeKind> {
    models
        .data
        .iter()
        .find_map(|m| match m.owned_by.as_deref()? {
            "llamacpp" => Some(NodeKind::LlamaCpp),
            "vllm" => Some(NodeKind::Vllm),
            "sglang" => Some(NodeKind::Sglang),
            _ => None,
        })
}

/// `total_slots` of llama.cpp's `/props`.
fn llama_slots(props: &Value) -> Option<u32> {
    props
        .get("total_slots")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: &str) -> ModelListWithOwners {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn owners_name_servers() {
        assert_eq!(
            owner_kind(&list(r#"{"data":[{"id":"a","owned_by":"llamacpp"}]}"#)),
            Some(NodeKind::LlamaCpp)
        );
        assert_eq!(
            owner_kind(&list(r#"{"data":[{"id":"a","owned_by":"vllm"}]}"#)),
            Some(NodeKind::Vllm)
        );
        assert_eq!(
            owner_kind(&list(r#"{"data":[{"id":"a","owned_by":"sglang"}]}"#)),
            Some(NodeKind::Sglang)
        );
        assert_eq!(
            owner_kind(&list(r#"{"data":[{"id":"a","owned_by":"openai"}]}"#)),
            None
        );
        assert_eq!(owner_kind(&list(r#"{"data":[{"id":"a"}]}"#)), None);
    }

    #[test]
    fn slots_from_props() {
        let props: Value = serde_json::from_str(r#"{"total_slots": 4, "x": 1}"#).unwrap();
        assert_eq!(llama_slots(&props), Some(4));
        assert_eq!(llama_slots(&serde_json::json!({"total_slots": -1})), None);
        assert_eq!(llama_slots(&serde_json::json!({})), None);
    }
}
