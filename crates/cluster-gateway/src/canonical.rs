//! Canonical text of the JSON parts of a prompt — tool definitions and
//! tool calls — for the fingerprint (see [`crate::request`]).
//!
//! The same tool list reaches the gateway in OpenAI's shape
//! (`{"type":"function","function":{"name","description","parameters"}}`)
//! or Anthropic's (`{"name","description","input_schema"}`, translated to
//! OpenAI's by [`crate::anthropic`]), with members in any order and with or
//! without whitespace. Its canonical text depends on none of that: per tool
//! `name`, `description` and the schema, whitespace between JSON tokens
//! removed; per tool call `id`, `name` and the arguments likewise. Two
//! requests for the same conversation therefore share their prefix blocks
//! whichever API and client sent them.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// JSON text without whitespace between tokens (strings untouched);
/// borrowed when there was none.
pub(crate) fn minify_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut first_space = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            first_space = Some(i);
            break;
        }
    }
    let Some(start) = first_space else {
        return Cow::Borrowed(text);
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..start]);
    for &b in &bytes[start..] {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    // Only ASCII bytes were removed: still UTF-8.
    String::from_utf8(out).map_or(Cow::Borrowed(text), Cow::Owned)
}

#[derive(Deserialize)]
struct WireTool<'a> {
    #[serde(borrow, default)]
    function: Option<WireFunction<'a>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

fn joined(pieces: &[&str]) -> String {
    let mut out = String::with_capacity(pieces.iter().map(|p| p.len() + 1).sum());
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(p);
    }
    out
}

/// One canonical text per tool of a `tools` value (a JSON array; anything
/// else is one piece, minified).
pub(crate) fn tools(raw: &RawValue) -> Vec<Cow<'_, str>> {
    let Ok(list) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return vec![minify_json(raw.get())];
    };
    list.into_iter()
        .map(|tool| {
            let Ok(t) = serde_json::from_str::<WireTool<'_>>(tool.get()) else {
                return minify_json(tool.get());
            };
            let (name, description, schema) = match t.function {
                Some(f) => (f.name, f.description, f.parameters),
                None => (t.name, t.description, t.input_schema),
            };
            match name {
                Some(name) => Cow::Owned(joined(&[
                    &name,
                    description.as_deref().unwrap_or(""),
                    &schema.map_or(Cow::Borrowed("{}"), |s| minify_json(s.get())),
                ])),
                None => minify_json(tool.get()),
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct WireToolCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<WireCallFunction<'a>>,
}

#[derive(Deserialize)]
struct WireCallFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// One canonical text per call of an OpenAI `tool_calls` value.
pub(crate) fn tool_calls(raw: &RawValue) -> Vec<Cow<'_, str>> {
    let Ok(list) = serde_json::from_str::<Vec<WireToolCall<'_>>>(raw.get()) else {
        return vec![minify_json(raw.get())];
    };
    list.into_iter()
        .map(|call| {
            let (name, arguments) = call
                .function
                .map_or((None, None), |f| (f.name, f.arguments));
            Cow::Owned(joined(&[
                call.id.as_deref().unwrap_or(""),
                name.as_deref().unwrap_or(""),
                &minify_json(arguments.as_deref().unwrap_or("")),
            ]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn minify() {
        assert!(matches!(minify_json(r#"{"a":[1,2]}"#), Cow::Borrowed(_)));
        assert_eq!(
            minify_json("{ \"a b\" : [ 1 ,\n 2 ], \"c\\\" d\": \"x  y\" }"),
            r#"{"a b":[1,2],"c\" d":"x  y"}"#
        );
        assert_eq!(minify_json(" 7 "), "7");
    }

    #[test]
    fn tools_in_either_shape_and_any_order_agree() {
        let openai = raw(
            r#"[{"type":"function","function":{"name":"Read","description":"Read a file","parameters":{"type":"object"}}}]"#,
        );
        let reordered = raw(
            r#"[ {"function": {"parameters": { "type": "object" }, "description": "Read a file", "name": "Read"}, "type": "function"} ]"#,
        );
        let anthropic = raw(
            r#"[{"name":"Read","input_schema":{"type":"object"},"description":"Read a file","cache_control":{"type":"ephemeral"}}]"#,
        );
        let want = vec!["Read\nRead a file\n{\"type\":\"object\"}"];
        assert_eq!(tools(openai), want);
        assert_eq!(tools(reordered), want);
        assert_eq!(tools(anthropic), want);
        assert_eq!(tools(raw(r#"{"odd": 1}"#)), vec![r#"{"odd":1}"#]);
        assert_eq!(tools(raw(r#"[3, {"x": 1}]"#)), vec!["3", r#"{"x":1}"#]);
    }

    #[test]
    fn tool_calls_in_any_order_agree() {
        let a = raw(
            r#"[{"id":"t1","type":"function","function":{"name":"Bash","arguments":"{\"cmd\":\"ls\"}"}}]"#,
        );
        let b = raw(
            r#"[{"function":{"arguments":"{\"cmd\": \"ls\"}","name":"Bash"},"id":"t1","type":"function"}]"#,
        );
        assert_eq!(tool_calls(a), tool_calls(b));
        assert_eq!(tool_calls(a), vec!["t1\nBash\n{\"cmd\":\"ls\"}"]);
        assert_eq!(tool_calls(raw(r#"{"x": 1}"#)), vec![r#"{"x":1}"#]);
    }
}
