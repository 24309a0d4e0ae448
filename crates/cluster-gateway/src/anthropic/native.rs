//! The client's own body for a node that serves Messages itself.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::AnthropicError;

/// The client's Messages body for a node that serves Messages itself, with
/// `model` and `max_tokens` replaced by the given values (every other
/// member byte for byte, in the client's order).
///
/// # Errors
/// 400 when the body is not a JSON object (it was parsed before, so only a
/// caller passing another body sees this).
pub(super) fn rewrite_native_body(
    body: &[u8],
    model: &str,
    max_tokens: Option<u64>,
) -> Result<Vec<u8>, AnthropicError> {
    let members: Members<'_> = serde_json::from_slice(body).map_err(|e| {
        AnthropicError::invalid_request(format!("the body is not a JSON object: {e}"))
    })?;
    let mut out = Vec::with_capacity(body.len() + 16);
    out.push(b'{');
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, key: &str, value: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        // Keys and model names are strings: serializing cannot fail.
        out.extend_from_slice(&serde_json::to_vec(key).unwrap_or_default());
        out.push(b':');
        out.extend_from_slice(value);
    };
    let model_json = serde_json::to_vec(model).unwrap_or_default();
    let max_json = max_tokens.map(|m| m.to_string());
    let mut saw_max = false;
    for (key, value) in &members.0 {
        match &**key {
            "model" => put(&mut out, key, &model_json),
            "max_tokens" => {
                saw_max = true;
                match &max_json {
                    Some(m) => put(&mut out, key, m.as_bytes()),
                    None => put(&mut out, key, value.get().as_bytes()),
                }
            }
            _ => put(&mut out, key, value.get().as_bytes()),
        }
    }
    if !saw_max && let Some(m) = &max_json {
        put(&mut out, "max_tokens", m.as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// The members of a JSON object in order, values raw.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    members.push((key, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_rewrite_keeps_everything_else() {
        let body = br#"{"max_tokens": 128000, "model":"claude-x","messages":[{"role":"user","content":"hi"}],"thinking":{"type":"adaptive"}}"#;
        let out = rewrite_native_body(body, "local", Some(64)).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"max_tokens":64,"model":"local","messages":[{"role":"user","content":"hi"}],"thinking":{"type":"adaptive"}}"#
        );
        let no_max = rewrite_native_body(br#"{"model":"a"}"#, "b", Some(3)).unwrap();
        assert_eq!(no_max, br#"{"model":"b","max_tokens":3}"#);
        assert!(rewrite_native_body(b"[1]", "b", None).is_err());
    }
}
