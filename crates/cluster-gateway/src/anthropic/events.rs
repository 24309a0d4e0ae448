//! The Messages stream's events as they are written: `event: NAME` and
//! `data: JSON` lines.

use serde::Serialize;

use super::response::MessageUsage;

#[derive(Serialize)]
pub(super) struct MessageStart<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) message: StartMessage<'a>,
}

#[derive(Serialize)]
pub(super) struct StartMessage<'a> {
    pub(super) id: &'a str,
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) role: &'static str,
    pub(super) model: &'a str,
    pub(super) content: [(); 0],
    pub(super) stop_reason: Option<()>,
    pub(super) stop_sequence: Option<()>,
    pub(super) usage: MessageUsage,
}

#[derive(Serialize)]
pub(super) struct BlockStart<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) index: usize,
    pub(super) content_block: StartBlock<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum StartBlock<'a> {
    Text {
        text: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Empty,
    },
}

#[derive(Serialize)]
pub(super) struct Empty {}

#[derive(Serialize)]
pub(super) struct BlockDelta<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) index: usize,
    pub(super) delta: DeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
pub(super) struct BlockStop {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) index: usize,
}

#[derive(Serialize)]
pub(super) struct MessageDelta<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) delta: StopDelta<'a>,
    pub(super) usage: MessageUsage,
}

#[derive(Serialize)]
pub(super) struct StopDelta<'a> {
    pub(super) stop_reason: &'static str,
    pub(super) stop_sequence: Option<&'a str>,
}

pub(super) fn event(out: &mut Vec<u8>, name: &str, data: &impl Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Plain structs of strings and numbers: cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

pub(super) const PING: &[u8] = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";
