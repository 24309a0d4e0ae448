//! Tool calls on demand: a simulated node answers a chat request with an
//! OpenAI tool call when the request offers `tools` and its last message,
//! from the user, contains the trigger [`TRIGGER`] followed by a tool's
//! name (`… sim:call read_file`; without a name or with an unknown one,
//! the first tool). Any other request — in particular one whose last
//! message is the `tool` result — gets the usual text answer, so a client
//! can test a whole round trip: tool call → tool result → final text.
//!
//! The call's arguments are made from the tool's JSON schema: each
//! required property (every property when none is required) gets a value
//! of its type — strings `"sim-<property>"`, numbers `1`, booleans `true`,
//! arrays `[]`, objects `{}`. Streamed, the arguments go out in fragments
//! of [`FRAGMENT_BYTES`] bytes, one chunk per fragment (the first chunk
//! carries the call's id, type and name), as OpenAI and vLLM stream them;
//! the finish reason is `tool_calls`.
//!
//! ```
//! use cluster_sim::api::ChatRequest;
//! use cluster_sim::tool_calls::ToolCallPlan;
//!
//! let request: ChatRequest = serde_json::from_str(r#"{
//!     "messages": [{"role": "user", "content": "Open it. sim:call read_file"}],
//!     "tools": [{"type": "function", "function": {"name": "read_file",
//!         "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]
//! }"#).unwrap();
//! let plan = ToolCallPlan::for_request(&request).unwrap();
//! assert_eq!(plan.name, "read_file");
//! assert_eq!(plan.arguments, r#"{"path":"sim-path"}"#);
//! assert_eq!(plan.fragments().concat(), plan.arguments);
//! ```

use serde_json::{Map, Value};

use crate::api::ChatRequest;
use crate::tokenizer::content_to_text;

/// The text that asks a simulated node for a tool call.
pub const TRIGGER: &str = "sim:call";

/// Bytes of arguments per streamed fragment.
pub const FRAGMENT_BYTES: usize = 8;

/// The tool call a simulated node will answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallPlan {
    /// Call id (`call_` + a hash of the prompt, so replays agree).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, a compact JSON object.
    pub arguments: String,
}

impl ToolCallPlan {
    /// The call for `request`, if it asks for one (see the module docs).
    #[must_use]
    pub fn for_request(request: &ChatRequest) -> Option<Self> {
        let last = request.messages.last()?;
        if last.role != "user" {
            return None;
        }
        let text = content_to_text(&last.content);
        let at = text.find(TRIGGER)?;
        let wanted: String = text[at + TRIGGER.len()..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect();
        let tools: Vec<Value> = serde_json::from_str(request.tools.as_ref()?.as_str()).ok()?;
        let functions: Vec<&Value> = tools
            .iter()
            .map(|t| t.get("function").unwrap_or(t))
            .filter(|f| f.get("name").and_then(Value::as_str).is_some())
            .collect();
        let function = functions
            .iter()
            .find(|f| f.get("name").and_then(Value::as_str) == Some(wanted.as_str()))
            .or(functions.first())?;
        let name = function.get("name").and_then(Value::as_str)?.to_owned();
        let arguments = arguments_for(function.get("parameters"));
        let seed = fnv1a(text.as_bytes());
        Some(Self {
            id: format!("call_{seed:016x}"),
            name,
            arguments,
        })
    }

    /// The arguments cut into streamed fragments (at char boundaries).
    #[must_use]
    pub fn fragments(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = self.arguments.as_str();
        while !rest.is_empty() {
            let mut cut = FRAGMENT_BYTES.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            let (piece, tail) = rest.split_at(cut);
            out.push(piece);
            rest = tail;
        }
        out
    }
}

/// FNV-1a, 64-bit: a stable id seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Arguments for a JSON schema (see the module docs).
fn arguments_for(schema: Option<&Value>) -> String {
    let properties = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let required: Vec<&str> = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Map::new();
    if let Some(properties) = properties {
        for (name, property) in properties {
            if !required.is_empty() && !required.contains(&name.as_str()) {
                continue;
            }
            let value = match property.get("type").and_then(Value::as_str) {
                Some("integer" | "number") => Value::from(1),
                Some("boolean") => Value::Bool(true),
                Some("array") => Value::Array(Vec::new()),
                Some("object") => Value::Object(Map::new()),
                _ => Value::String(format!("sim-{name}")),
            };
            out.insert(name.clone(), value);
        }
    }
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(last_role: &str, text: &str, tools: Option<&str>) -> ChatRequest {
        let tools = tools.map_or(String::new(), |t| format!(r#","tools":{t}"#));
        serde_json::from_str(&format!(
            r#"{{"messages":[{{"role":"{last_role}","content":{}}}]{tools}}}"#,
            serde_json::to_string(text).unwrap()
        ))
        .unwrap()
    }

    const TOOLS: &str = r#"[
        {"type":"function","function":{"name":"grep","parameters":{"type":"object","properties":{"pattern":{"type":"string"},"limit":{"type":"integer"},"all":{"type":"boolean"}}}}},
        {"type":"function","function":{"name":"edit","parameters":{"type":"object","properties":{"path":{"type":"string"},"lines":{"type":"array"},"opts":{"type":"object"}},"required":["path","lines"]}}}
    ]"#;

    #[test]
    fn trigger_picks_the_named_tool_or_the_first() {
        let plan = ToolCallPlan::for_request(&request("user", "do it sim:call edit", Some(TOOLS)))
            .unwrap();
        assert_eq!(plan.name, "edit");
        assert_eq!(plan.arguments, r#"{"lines":[],"path":"sim-path"}"#);
        let first = ToolCallPlan::for_request(&request("user", "sim:call", Some(TOOLS))).unwrap();
        assert_eq!(first.name, "grep");
        assert_eq!(
            first.arguments,
            r#"{"all":true,"limit":1,"pattern":"sim-pattern"}"#
        );
        let unknown =
            ToolCallPlan::for_request(&request("user", "sim:call nope", Some(TOOLS))).unwrap();
        assert_eq!(unknown.name, "grep");
    }

    #[test]
    fn no_trigger_no_tools_or_a_tool_result_means_text() {
        assert!(ToolCallPlan::for_request(&request("user", "hello", Some(TOOLS))).is_none());
        assert!(ToolCallPlan::for_request(&request("user", "sim:call grep", None)).is_none());
        assert!(
            ToolCallPlan::for_request(&request("tool", "sim:call grep", Some(TOOLS))).is_none()
        );
        assert!(ToolCallPlan::for_request(&request("user", "sim:call", Some("[]"))).is_none());
    }

    #[test]
    fn fragments_rebuild_the_arguments() {
        let plan = ToolCallPlan {
            id: "c".into(),
            name: "n".into(),
            arguments: r#"{"text":"héllo wörld, sim"}"#.into(),
        };
        let parts = plan.fragments();
        assert!(parts.len() > 2);
        assert_eq!(parts.concat(), plan.arguments);
        assert!(parts.iter().all(|p| p.len() <= FRAGMENT_BYTES + 3));
    }

    #[test]
    fn ids_are_stable() {
        let a = ToolCallPlan::for_request(&request("user", "x sim:call", Some(TOOLS))).unwrap();
        let b = ToolCallPlan::for_request(&request("user", "x sim:call", Some(TOOLS))).unwrap();
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("call_"));
    }
}
