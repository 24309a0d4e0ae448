//! Deterministic stand-in tokenizer, chat template and text generator.
//!
//! The simulator never loads a real vocabulary. Text is cut into chunks of
//! [`BYTES_PER_TOKEN`] bytes (4, about one token of English or code) and every
//! chunk becomes one [`Token`] whose id is the chunk's bytes. Two texts
//! therefore share a token prefix exactly when they share the byte prefix
//! (rounded down to a chunk), which is what makes prefix-cache matching exact.
//!
//! Chat requests are rendered with a ChatML-like template in which every
//! message is framed by special tokens and its content is tokenized on its
//! own, so a message boundary is always a token boundary (as with real chat
//! templates): see [`tokenize_chat`].
//!
//! Output text is deterministic: [`output_text`] draws `n` four-byte words
//! from a fixed vocabulary with a generator seeded from the prompt's last
//! tokens ([`output_seed`]), so the same prompt always yields the same reply
//! and the reply is exactly `n` tokens long when tokenized again.

use serde_json::Value;

/// One token id.
pub type Token = u32;

/// Bytes of text per token: 4.
pub const BYTES_PER_TOKEN: usize = 4;

/// How many trailing prompt tokens seed the deterministic reply: 8.
pub const OUTPUT_SEED_TOKENS: usize = 8;

// Special tokens have a zero low byte, which no chunk of text has (text holds
// no NUL bytes in practice), so they never collide with text tokens.
const SPECIAL_BASE: Token = 0x5300_0000;
const END_OF_MESSAGE: Token = SPECIAL_BASE | 0x0100;
const TOOLS_START: Token = SPECIAL_BASE | 0x0200;
const ROLE_SYSTEM: Token = SPECIAL_BASE | 0x1000;
const ROLE_USER: Token = SPECIAL_BASE | 0x1100;
const ROLE_ASSISTANT: Token = SPECIAL_BASE | 0x1200;
const ROLE_TOOL: Token = SPECIAL_BASE | 0x1300;
const ROLE_OTHER: Token = SPECIAL_BASE | 0x1400;
const TOOL_CALLS_START: Token = SPECIAL_BASE | 0x0300;
/// Beginning-of-sequence token, first in every prompt (as mlx_lm's tokenizer
/// and chat templates add one).
pub const BOS: Token = SPECIAL_BASE | 0x0400;
/// Stands for the first generated token in a prompt-cache entry when replies
/// are not reusable (see `NodeModelConfig::reuse_reply_tokens`).
pub const REPLY_MARK: Token = SPECIAL_BASE | 0x0500;

/// Number of tokens [`tokenize_text`] produces for `text`: `ceil(bytes / 4)`.
#[must_use]
pub fn token_count(text: &str) -> usize {
    text.len().div_ceil(BYTES_PER_TOKEN)
}

/// Appends the tokens of `text` to `out`: one token per 4-byte chunk, the
/// last chunk zero-padded. (Plain prompts get a [`BOS`] first: see
/// [`tokenize_prompt`].)
pub fn tokenize_text(text: &str, out: &mut Vec<Token>) {
    let (chunks, rest) = text.as_bytes().as_chunks::<BYTES_PER_TOKEN>();
    out.reserve(chunks.len() + 1);
    out.extend(chunks.iter().map(|c| Token::from_le_bytes(*c)));
    if !rest.is_empty() {
        let mut buf = [0u8; BYTES_PER_TOKEN];
        buf[..rest.len()].copy_from_slice(rest);
        out.push(Token::from_le_bytes(buf));
    }
}

/// Tokens of a plain-text (`/v1/completions`) prompt: [`BOS`] then the text.
#[must_use]
pub fn tokenize_prompt(text: &str) -> Vec<Token> {
    let mut tokens = vec![BOS];
    tokenize_text(text, &mut tokens);
    tokens
}

/// Tokens of a chat prompt, with the boundary of its leading system block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatTokens {
    /// All prompt tokens, generation prompt included.
    pub tokens: Vec<Token>,
    /// Length of the leading system block (system messages and tools); 0 when
    /// the prompt has none.
    pub system_len: usize,
    /// Whether the last message has the `user` role (mlx_lm only caches the
    /// system block separately in that case).
    pub last_is_user: bool,
}

/// One chat message as the tokenizer sees it: role, text content and the
/// serialized tool calls (if any).
#[derive(Debug, Clone, Copy)]
pub struct MessageText<'a> {
    /// The message role (`system`, `user`, `assistant`, `tool`, ...).
    pub role: &'a str,
    /// The text content (parts already concatenated).
    pub content: &'a str,
    /// Tool calls serialized as JSON, when the message has any.
    pub tool_calls: Option<&'a str>,
}

fn role_token(role: &str) -> Token {
    match role {
        "system" | "developer" => ROLE_SYSTEM,
        "user" => ROLE_USER,
        "assistant" => ROLE_ASSISTANT,
        "tool" => ROLE_TOOL,
        _ => ROLE_OTHER,
    }
}

fn push_message(message: &MessageText<'_>, out: &mut Vec<Token>) {
    out.push(role_token(message.role));
    tokenize_text(message.content, out);
    if let Some(calls) = message.tool_calls {
        out.push(TOOL_CALLS_START);
        tokenize_text(calls, out);
    }
    out.push(END_OF_MESSAGE);
}

/// Renders a chat prompt to tokens with the simulator's ChatML-like template.
///
/// Layout: a [`BOS`] token, the leading system messages, then (if `tools` is given) a tools
/// block holding the tools' JSON, form the system block; every other message
/// is `ROLE content END`; the prompt ends with the assistant role token (the
/// generation prompt). A reply of `n` tokens followed by `END` is therefore
/// exactly the token prefix of the next turn that carries that reply as an
/// assistant message.
#[must_use]
pub fn tokenize_chat(messages: &[MessageText<'_>], tools: Option<&str>) -> ChatTokens {
    let mut tokens = vec![BOS];
    let leading_system = messages
        .iter()
        .take_while(|m| role_token(m.role) == ROLE_SYSTEM)
        .count();
    for message in &messages[..leading_system] {
        push_message(message, &mut tokens);
    }
    if let Some(tools) = tools {
        tokens.push(TOOLS_START);
        tokenize_text(tools, &mut tokens);
        tokens.push(END_OF_MESSAGE);
    }
    let system_len = tokens.len();
    for message in &messages[leading_system..] {
        push_message(message, &mut tokens);
    }
    tokens.push(ROLE_ASSISTANT);
    ChatTokens {
        tokens,
        system_len,
        last_is_user: messages.last().is_some_and(|m| m.role == "user"),
    }
}

/// The seed of the deterministic reply to a prompt: a hash of its last
/// [`OUTPUT_SEED_TOKENS`] tokens.
#[must_use]
pub fn output_seed(prompt: &[Token]) -> u64 {
    let tail = &prompt[prompt.len().saturating_sub(OUTPUT_SEED_TOKENS)..];
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for &t in tail {
        h = splitmix64(h ^ u64::from(t));
    }
    h
}

/// The seed of the reply to a chat whose last message is `last` (typically
/// the user turn), computed from that message alone when it is long enough.
///
/// Equal to `output_seed(&tokenize_chat(messages, tools).tokens)` whenever the
/// last message renders to at least [`OUTPUT_SEED_TOKENS`] tokens; returns
/// `None` otherwise (then tokenize the whole chat).
#[must_use]
pub fn output_seed_for_last_message(last: &MessageText<'_>) -> Option<u64> {
    let mut tokens = Vec::new();
    push_message(last, &mut tokens);
    tokens.push(ROLE_ASSISTANT);
    (tokens.len() >= OUTPUT_SEED_TOKENS).then(|| output_seed(&tokens))
}

/// SplitMix64 step: a fast, well-mixed 64-bit hash/generator (Steele et al.).
#[must_use]
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// 64 four-byte words (three letters and a space) of code-review English.
const WORDS: [&str; 64] = [
    "the ", "and ", "for ", "let ", "mut ", "use ", "pub ", "map ", "get ", "set ", "new ", "err ",
    "add ", "fix ", "run ", "log ", "key ", "ids ", "row ", "col ", "max ", "min ", "sum ", "len ",
    "str ", "vec ", "arc ", "box ", "ref ", "dyn ", "impl", " fn ", "now ", "old ", "top ", "end ",
    "way ", "can ", "not ", "but ", "all ", "any ", "one ", "two ", "out ", "off ", "put ", "hit ",
    "try ", "via ", "per ", "low ", "big ", "raw ", "tag ", "doc ", "api ", "cfg ", "env ", "tmp ",
    "src ", "dst ", "buf ", "ok. ",
];

/// Deterministic text of exactly `tokens` tokens (4 bytes each) drawn from a
/// fixed vocabulary with a generator seeded by `seed`.
#[must_use]
pub fn output_text(seed: u64, tokens: usize) -> String {
    let mut text = String::with_capacity(tokens * BYTES_PER_TOKEN);
    let mut state = seed;
    let mut bits = 0u64;
    let mut left = 0u32;
    for _ in 0..tokens {
        if left == 0 {
            state = state.wrapping_add(1);
            bits = splitmix64(state);
            left = 10;
        }
        // 6 bits per word; the table has 64 entries.
        let index = usize::try_from(bits & 63).unwrap_or(0);
        text.push_str(WORDS[index]);
        bits >>= 6;
        left -= 1;
    }
    text
}

/// Concatenates the text of an OpenAI message `content` value: a string, an
/// array of `{"type":"text","text":...}` parts, or null (empty).
#[must_use]
pub fn content_to_text(content: &Value) -> std::borrow::Cow<'_, str> {
    match content {
        Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
            std::borrow::Cow::Owned(text)
        }
        Value::Null => std::borrow::Cow::Borrowed(""),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_counts_four_bytes_per_token() {
        let mut out = Vec::new();
        tokenize_text("abcdefghi", &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(token_count("abcdefghi"), 3);
        assert_eq!(token_count(""), 0);
    }

    #[test]
    fn shared_text_prefix_gives_shared_token_prefix() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        tokenize_text("hello world, this is a test", &mut a);
        tokenize_text("hello world, this is another", &mut b);
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert_eq!(common, 5);
    }

    #[test]
    fn output_text_is_deterministic_and_exact_length() {
        let a = output_text(7, 100);
        let b = output_text(7, 100);
        assert_eq!(a, b);
        assert_eq!(token_count(&a), 100);
        assert_ne!(a, output_text(8, 100));
    }

    #[test]
    fn reply_extends_prompt_as_prefix_of_next_turn() {
        let system = MessageText {
            role: "system",
            content: "You are a helpful coding agent.",
            tool_calls: None,
        };
        let user = MessageText {
            role: "user",
            content: "Please fix the failing test in src/lib.rs now.",
            tool_calls: None,
        };
        let first = tokenize_chat(&[system, user], Some("[{\"name\":\"bash\"}]"));
        assert!(first.system_len > 0 && first.last_is_user);
        let reply = output_text(output_seed(&first.tokens), 20);
        let seed_short = output_seed_for_last_message(&user);
        assert_eq!(seed_short, Some(output_seed(&first.tokens)));
        let assistant = MessageText {
            role: "assistant",
            content: &reply,
            tool_calls: None,
        };
        let next_user = MessageText {
            role: "user",
            content: "ok",
            tool_calls: None,
        };
        let second = tokenize_chat(
            &[system, user, assistant, next_user],
            Some("[{\"name\":\"bash\"}]"),
        );
        let mut cached = first.tokens.clone();
        tokenize_text(&reply, &mut cached);
        assert_eq!(&second.tokens[..cached.len()], cached.as_slice());
    }
}
