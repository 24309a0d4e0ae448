//! The Messages request as it is on the wire: every field optional, strings
//! borrowed from the body where they have no escapes. [`super::parse`]
//! checks it into a [`super::MessagesRequest`].

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Deserialize)]
pub(super) struct WireRequest<'a> {
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) max_tokens: Option<u64>,
    #[serde(borrow, default)]
    pub(super) messages: Option<Vec<WireMessage<'a>>>,
    #[serde(borrow, default)]
    pub(super) system: Option<WireContent<'a>>,
    #[serde(borrow, default)]
    pub(super) tools: Option<Vec<WireTool<'a>>>,
    #[serde(borrow, default)]
    pub(super) tool_choice: Option<WireToolChoice<'a>>,
    #[serde(default)]
    pub(super) temperature: Option<f64>,
    #[serde(default)]
    pub(super) top_p: Option<f64>,
    #[serde(default)]
    pub(super) top_k: Option<u64>,
    #[serde(borrow, default)]
    pub(super) stop_sequences: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    pub(super) stream: Option<bool>,
    #[serde(borrow, default)]
    pub(super) metadata: Option<WireMetadata<'a>>,
}

#[derive(Deserialize)]
pub(super) struct WireMessage<'a> {
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) content: Option<WireContent<'a>>,
}

/// A string or an array of blocks.
pub(super) enum WireContent<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<WireBlock<'a>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireContent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ContentVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
            type Value = WireContent<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireContent::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireContent::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(WireContent::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(block) = seq.next_element()? {
                    blocks.push(block);
                }
                Ok(WireContent::Blocks(blocks))
            }
        }
        d.deserialize_any(ContentVisitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
pub(super) struct WireBlock<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "cow")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) source: Option<WireSource<'a>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) input: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) content: Option<WireContent<'a>>,
    #[serde(default)]
    pub(super) is_error: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct WireSource<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "cow")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) media_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) data: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct WireTool<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "cow")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) input_schema: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) defer_loading: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct WireToolChoice<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "cow")]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct WireMetadata<'a> {
    #[serde(borrow, default, deserialize_with = "cow")]
    pub(super) user_id: Option<Cow<'a, str>>,
}

/// A string borrowed from the body when it has no escapes. (serde's own
/// `Cow<str>` borrows only as a direct field, not inside an `Option`.)
pub(super) fn cow<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    struct CowStr<'a>(Cow<'a, str>);
    impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = CowStr<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(CowStr(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(CowStr(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(CowStr(Cow::Owned(v)))
                }
            }
            d.deserialize_str(V(std::marker::PhantomData))
        }
    }
    Ok(Option::<CowStr<'a>>::deserialize(d)?.map(|c| c.0))
}
