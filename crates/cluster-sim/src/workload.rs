//! Agentic-coding workload generator and its compact JSONL trace format.
//!
//! # The workload
//!
//! Modelled on coding agents such as Claude Code: a few *shared prompts*
//! (a system prompt plus tool definitions, 10–30k tokens together) and many
//! *sessions*. A session picks one shared prompt (the first ones are more
//! popular: weight `1/(k+1)`), then runs a number of turns; each turn resends
//! the whole conversation so far plus a new user message (the task at first,
//! then tool results of a few hundred to a few thousand tokens) and asks for
//! a reply of tens to hundreds of tokens. Between turns the agent "thinks"
//! (runs tools) for an exponentially distributed time. Sessions arrive as a
//! Poisson process or in bursts. Everything is drawn from one seeded
//! generator: the same [`WorkloadConfig`] always yields the same [`Trace`].
//!
//! # The trace
//!
//! A trace is JSON Lines: one [`TraceHeader`] line, then one
//! [`TraceRequest`] line per request, sorted by arrival offset. Lines carry
//! token *counts*, not text; [`Expander`] turns a line back into the exact
//! chat request body, deterministically, from the header's seed. Assistant
//! messages in the history are the simulator's own deterministic replies to
//! the earlier turns, so a simulated node's cache entry for turn `t` (prompt
//! plus reply) is an exact prefix of turn `t + 1`, as with a real server that
//! is sent its own answers back.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ChatMessage, ChatRequest, DEFAULT_MODEL, RawJson, StreamOptions};
use crate::error::SimError;
use crate::model::NodeModelConfig;
use crate::tokenizer::{
    MessageText, output_seed, output_seed_for_last_message, output_text, splitmix64,
};

/// Trace format version written by this crate: 1.
pub const TRACE_VERSION: u32 = 1;

/// How sessions arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrival {
    /// A Poisson process.
    Poisson {
        /// Mean sessions started per simulated minute.
        sessions_per_minute: f64,
    },
    /// Bursts of sessions at a fixed period.
    Bursty {
        /// Sessions per burst.
        burst_sessions: usize,
        /// Simulated seconds between bursts.
        every_seconds: f64,
        /// Sessions of one burst start uniformly within this many seconds.
        spread_seconds: f64,
    },
}

impl Default for Arrival {
    fn default() -> Self {
        Self::Poisson {
            sessions_per_minute: 4.0,
        }
    }
}

/// Parameters of the workload generator. All token counts are inclusive
/// ranges; sizes are drawn log-uniformly, so small values are as common per
/// octave as large ones.
///
/// Defaults: seed 1, 200 sessions, 3 shared prompts of 10–30k tokens of
/// which 70% are 16 tool definitions, 4–24 turns, a first message of
/// 500–4000 tokens, later messages of 200–3000 tokens, replies of 30–800
/// tokens, think time mean 5 s (at most 60 s), Poisson arrivals of 4 sessions
/// a minute, sessions end before 100k tokens, model `default_model`,
/// streaming with usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Seed of every random draw and of the generated text.
    pub seed: u64,
    /// Number of sessions.
    pub sessions: usize,
    /// Number of distinct shared system+tools prompts.
    pub shared_prompts: usize,
    /// Smallest shared prompt, tokens.
    pub prompt_tokens_min: u32,
    /// Largest shared prompt, tokens.
    pub prompt_tokens_max: u32,
    /// Fraction of a shared prompt that is tool definitions (0 = no tools).
    pub tools_fraction: f64,
    /// Tool definitions per shared prompt.
    pub tools_per_prompt: u32,
    /// Fewest turns per session.
    pub turns_min: u32,
    /// Most turns per session.
    pub turns_max: u32,
    /// Smallest first user message, tokens.
    pub first_message_tokens_min: u32,
    /// Largest first user message, tokens.
    pub first_message_tokens_max: u32,
    /// Smallest later user message (tool results), tokens.
    pub message_tokens_min: u32,
    /// Largest later user message, tokens.
    pub message_tokens_max: u32,
    /// Smallest reply, tokens.
    pub output_tokens_min: u32,
    /// Largest reply, tokens.
    pub output_tokens_max: u32,
    /// Mean think time between a reply and the next turn, simulated seconds.
    pub think_mean_seconds: f64,
    /// Cap on one think time, simulated seconds.
    pub think_max_seconds: f64,
    /// Session arrival process.
    pub arrival: Arrival,
    /// A session ends before its prompt would exceed this many tokens.
    pub max_context_tokens: u32,
    /// `model` field of the requests.
    pub model: String,
    /// Whether requests stream (with `stream_options.include_usage`).
    pub stream: bool,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            sessions: 200,
            shared_prompts: 3,
            prompt_tokens_min: 10_000,
            prompt_tokens_max: 30_000,
            tools_fraction: 0.7,
            tools_per_prompt: 16,
            turns_min: 4,
            turns_max: 24,
            first_message_tokens_min: 500,
            first_message_tokens_max: 4000,
            message_tokens_min: 200,
            message_tokens_max: 3000,
            output_tokens_min: 30,
            output_tokens_max: 800,
            think_mean_seconds: 5.0,
            think_max_seconds: 60.0,
            arrival: Arrival::default(),
            max_context_tokens: 100_000,
            model: DEFAULT_MODEL.to_owned(),
            stream: true,
        }
    }
}

/// One shared system+tools prompt of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedPrompt {
    /// Tokens of the system message text.
    pub system_tokens: u32,
    /// Number of tool definitions.
    pub tools: u32,
    /// Tokens of each tool's description.
    pub tool_description_tokens: u32,
}

/// First line of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceHeader {
    /// Format version ([`TRACE_VERSION`]).
    pub version: u32,
    /// Seed of the generated text.
    pub seed: u64,
    /// `model` field of the requests.
    pub model: String,
    /// Whether requests stream (with usage).
    pub stream: bool,
    /// The shared prompts, indexed by [`TraceRequest::prompt`].
    pub shared_prompts: Vec<SharedPrompt>,
    /// Number of sessions.
    pub sessions: usize,
    /// Number of request lines.
    pub requests: usize,
    /// The generator configuration, for provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<WorkloadConfig>,
}

/// One request of a trace, in compact form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Session number.
    pub session: u32,
    /// Turn number within the session, from 0.
    pub turn: u32,
    /// Planned arrival, simulated seconds from the start of the trace
    /// (assuming each earlier turn of the session was answered as fast as a
    /// default node with a warm cache would).
    pub at: f64,
    /// Think time before this turn, after the previous reply (0 for turn 0).
    pub think: f64,
    /// Index of the shared prompt.
    pub prompt: u32,
    /// Token counts of the user messages, turns `0..=turn`.
    pub user: Vec<u32>,
    /// Token counts of the assistant replies, turns `0..turn`.
    pub assistant: Vec<u32>,
    /// Reply length asked for (`max_tokens`).
    pub max_tokens: u32,
}

impl TraceRequest {
    /// A stable key for the request: `"{session}/{turn}"`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.session, self.turn)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TraceLine {
    Header(TraceHeader),
    Request(TraceRequest),
}

/// A whole trace: header and requests sorted by `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The header.
    pub header: TraceHeader,
    /// The requests, sorted by arrival offset.
    pub requests: Vec<TraceRequest>,
}

fn log_uniform(rng: &mut StdRng, min: u32, max: u32) -> u32 {
    let (lo, hi) = (f64::from(min.max(1)), f64::from(max.max(min).max(1)));
    if hi <= lo {
        return min.max(1);
    }
    let x = rng.random_range(lo.ln()..=hi.ln()).exp();
    let v = x.round() as u32;
    v.clamp(min.max(1), max.max(min).max(1))
}

fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    let u: f64 = rng.random();
    -mean * (1.0 - u).ln()
}

/// Rough token size of one tool definition's JSON beyond its description.
const TOOL_OVERHEAD_TOKENS: u32 = 24;

impl WorkloadConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field, message: &str| {
            Err(SimError::InvalidConfig {
                field,
                message: message.to_owned(),
            })
        };
        if self.shared_prompts == 0 {
            return bad("shared_prompts", "at least one shared prompt is needed");
        }
        if self.turns_min == 0 || self.turns_max < self.turns_min {
            return bad("turns_min", "need 1 <= turns_min <= turns_max");
        }
        if self.prompt_tokens_max < self.prompt_tokens_min
            || self.message_tokens_max < self.message_tokens_min
            || self.first_message_tokens_max < self.first_message_tokens_min
            || self.output_tokens_max < self.output_tokens_min
        {
            return bad("tokens", "every *_max must be at least its *_min");
        }
        if !(0.0..=0.95).contains(&self.tools_fraction) {
            return bad("tools_fraction", "must be within 0..=0.95");
        }
        if !(self.think_mean_seconds >= 0.0 && self.think_max_seconds >= 0.0) {
            return bad("think_mean_seconds", "think times must be non-negative");
        }
        match self.arrival {
            Arrival::Poisson {
                sessions_per_minute,
            } if !(sessions_per_minute > 0.0 && sessions_per_minute.is_finite()) => {
                bad("arrival", "sessions_per_minute must be positive")
            }
            Arrival::Bursty {
                burst_sessions,
                every_seconds,
                spread_seconds,
            } if burst_sessions == 0 || every_seconds < 0.0 || spread_seconds < 0.0 => {
                bad("arrival", "bursts need sessions and non-negative periods")
            }
            _ => Ok(()),
        }
    }

    /// Generates the trace (deterministic in the configuration).
    ///
    /// # Errors
    /// [`SimError::InvalidConfig`] when the configuration does not validate.
    pub fn generate(&self) -> Result<Trace, SimError> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let shared: Vec<SharedPrompt> = (0..self.shared_prompts)
            .map(|_| {
                let total = rng.random_range(self.prompt_tokens_min..=self.prompt_tokens_max);
                let tool_total = (f64::from(total) * self.tools_fraction) as u32;
                let tools = if tool_total == 0 {
                    0
                } else {
                    self.tools_per_prompt
                };
                let per_tool = tool_total
                    .checked_div(tools)
                    .map_or(0, |t| t.saturating_sub(TOOL_OVERHEAD_TOKENS).max(1));
                SharedPrompt {
                    system_tokens: total - tool_total,
                    tools,
                    tool_description_tokens: per_tool,
                }
            })
            .collect();
        let shared_sizes: Vec<u32> = shared
            .iter()
            .map(|p| p.system_tokens + p.tools * (p.tool_description_tokens + TOOL_OVERHEAD_TOKENS))
            .collect();
        let weights: Vec<f64> = (0..shared.len()).map(|k| 1.0 / (k as f64 + 1.0)).collect();
        let weight_sum: f64 = weights.iter().sum();
        let nominal = NodeModelConfig::default().cost();

        let mut requests = Vec::new();
        let mut start = 0.0_f64;
        for session in 0..self.sessions {
            start = self.session_start(&mut rng, session, start);
            let mut pick = rng.random_range(0.0..weight_sum);
            let mut prompt = 0usize;
            for (k, w) in weights.iter().enumerate() {
                if pick < *w {
                    prompt = k;
                    break;
                }
                pick -= w;
                prompt = k;
            }
            let turns = rng.random_range(self.turns_min..=self.turns_max);
            let mut user = Vec::new();
            let mut assistant = Vec::new();
            let mut context = u64::from(shared_sizes[prompt]);
            let mut at = start;
            let mut think = 0.0;
            for turn in 0..turns {
                let size = if turn == 0 {
                    log_uniform(
                        &mut rng,
                        self.first_message_tokens_min,
                        self.first_message_tokens_max,
                    )
                } else {
                    log_uniform(&mut rng, self.message_tokens_min, self.message_tokens_max)
                };
                let output = log_uniform(&mut rng, self.output_tokens_min, self.output_tokens_max);
                let next_context = context + u64::from(size) + u64::from(output) + 8;
                if turn > 0 && next_context > u64::from(self.max_context_tokens) {
                    break;
                }
                user.push(size);
                requests.push(TraceRequest {
                    session: u32::try_from(session).unwrap_or(u32::MAX),
                    turn,
                    at: round_ms(at),
                    think: round_ms(think),
                    prompt: u32::try_from(prompt).unwrap_or(0),
                    user: user.clone(),
                    assistant: assistant.clone(),
                    max_tokens: output,
                });
                let prompt_len = usize::try_from(context + u64::from(size)).unwrap_or(usize::MAX);
                let new = usize::try_from(size).unwrap_or(0) + 8;
                let warm = nominal.request_overhead_seconds
                    + nominal.prefill_seconds(prompt_len.saturating_sub(new), prompt_len)
                    + nominal.decode_seconds(prompt_len, output as usize);
                assistant.push(output);
                context = next_context;
                think = exponential(&mut rng, self.think_mean_seconds).min(self.think_max_seconds);
                at += warm + think;
            }
        }
        requests.sort_by(|a, b| {
            a.at.total_cmp(&b.at)
                .then(a.session.cmp(&b.session))
                .then(a.turn.cmp(&b.turn))
        });
        let header = TraceHeader {
            version: TRACE_VERSION,
            seed: self.seed,
            model: self.model.clone(),
            stream: self.stream,
            shared_prompts: shared,
            sessions: self.sessions,
            requests: requests.len(),
            config: Some(self.clone()),
        };
        Ok(Trace { header, requests })
    }

    fn session_start(&self, rng: &mut StdRng, session: usize, previous: f64) -> f64 {
        match self.arrival {
            Arrival::Poisson {
                sessions_per_minute,
            } => {
                if session == 0 {
                    0.0
                } else {
                    previous + exponential(rng, 60.0 / sessions_per_minute)
                }
            }
            Arrival::Bursty {
                burst_sessions,
                every_seconds,
                spread_seconds,
            } => {
                let burst = (session / burst_sessions.max(1)) as f64;
                let jitter = if spread_seconds > 0.0 {
                    rng.random_range(0.0..spread_seconds)
                } else {
                    0.0
                };
                burst * every_seconds + jitter
            }
        }
    }
}

fn round_ms(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Trace {
    /// Writes the trace as JSON Lines.
    ///
    /// # Errors
    /// The writer's I/O error.
    pub fn write_jsonl(&self, mut out: impl Write) -> std::io::Result<()> {
        let header = TraceLine::Header(self.header.clone());
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        for request in &self.requests {
            serde_json::to_writer(&mut out, &TraceLine::Request(request.clone()))?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// The trace as a JSON Lines string.
    #[must_use]
    pub fn to_jsonl(&self) -> String {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_jsonl(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Reads a JSON Lines trace; `source_name` labels errors.
    ///
    /// # Errors
    /// [`SimError::Trace`] for a malformed line, a missing header or an
    /// unknown version; [`SimError::Io`] when reading fails.
    pub fn read_jsonl(input: impl BufRead, source_name: &str) -> Result<Self, SimError> {
        let mut header = None;
        let mut requests = Vec::new();
        let trace_error = |line: usize, message: String| SimError::Trace {
            source_name: source_name.to_owned(),
            line,
            message,
        };
        for (i, line) in input.lines().enumerate() {
            let line = line.map_err(|source| SimError::Io {
                path: source_name.to_owned(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: TraceLine =
                serde_json::from_str(&line).map_err(|e| trace_error(i + 1, e.to_string()))?;
            match parsed {
                TraceLine::Header(h) => {
                    if header.is_some() {
                        return Err(trace_error(i + 1, "second header line".to_owned()));
                    }
                    if h.version != TRACE_VERSION {
                        return Err(trace_error(
                            i + 1,
                            format!("unsupported version {}", h.version),
                        ));
                    }
                    header = Some(h);
                }
                TraceLine::Request(r) => {
                    let Some(h) = &header else {
                        return Err(trace_error(i + 1, "request before the header".to_owned()));
                    };
                    if r.prompt as usize >= h.shared_prompts.len()
                        || r.user.len() != r.turn as usize + 1
                        || r.assistant.len() != r.turn as usize
                        || !(r.at.is_finite() && r.at >= 0.0 && r.think >= 0.0)
                    {
                        return Err(trace_error(i + 1, "inconsistent request".to_owned()));
                    }
                    requests.push(r);
                }
            }
        }
        let header = header.ok_or_else(|| trace_error(0, "no header line".to_owned()))?;
        requests.sort_by(|a, b| a.at.total_cmp(&b.at));
        Ok(Self { header, requests })
    }

    /// Reads a trace file.
    ///
    /// # Errors
    /// As [`Trace::read_jsonl`].
    pub fn read_file(path: &std::path::Path) -> Result<Self, SimError> {
        let file = std::fs::File::open(path).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::read_jsonl(std::io::BufReader::new(file), &path.display().to_string())
    }

    /// Writes a trace file.
    ///
    /// # Errors
    /// [`SimError::Io`] when the file cannot be written.
    pub fn write_file(&self, path: &std::path::Path) -> Result<(), SimError> {
        let io = |source| SimError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        self.write_jsonl(std::io::BufWriter::new(file)).map_err(io)
    }

    /// Number of distinct sessions in the requests.
    #[must_use]
    pub fn session_count(&self) -> usize {
        let mut sessions: Vec<u32> = self.requests.iter().map(|r| r.session).collect();
        sessions.sort_unstable();
        sessions.dedup();
        sessions.len()
    }
}

/// Turns compact [`TraceRequest`]s back into full chat requests (see the
/// module docs). Shared prompts are generated once; [`Expander::body`] also
/// keeps each session's serialized history, so producing turn `t + 1` only
/// generates and serializes the new messages (memory: one serialized
/// conversation per session seen).
#[derive(Debug)]
pub struct Expander {
    header: TraceHeader,
    system: Vec<Arc<str>>,
    system_json: Vec<String>,
    tools: Vec<Option<RawJson>>,
    sessions: Mutex<HashMap<u32, SessionJson>>,
}

#[derive(Debug, Default)]
struct SessionJson {
    prompt: u32,
    /// Complete user + assistant pairs serialized in `json`.
    pairs: usize,
    /// `,{user},{assistant}` for every pair.
    json: String,
}

fn text_seed(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix64(seed), |h, &p| splitmix64(h ^ p))
}

const TAG_SYSTEM: u64 = 1;
const TAG_TOOL: u64 = 2;
const TAG_USER: u64 = 3;

fn message_json(role: &str, content: String) -> String {
    serde_json::to_string(&ChatMessage::text(role, content)).unwrap_or_default()
}

impl Expander {
    /// Prepares the shared prompts of `header`.
    #[must_use]
    pub fn new(header: &TraceHeader) -> Self {
        let mut system = Vec::new();
        let mut system_json = Vec::new();
        let mut tools = Vec::new();
        for (k, p) in header.shared_prompts.iter().enumerate() {
            let k = k as u64;
            let text = output_text(
                text_seed(header.seed, &[TAG_SYSTEM, k]),
                p.system_tokens as usize,
            );
            system_json.push(message_json("system", text.clone()));
            system.push(Arc::from(text));
            let defs: Vec<Value> = (0..p.tools)
                .map(|i| {
                    let description = output_text(
                        text_seed(header.seed, &[TAG_TOOL, k, u64::from(i)]),
                        p.tool_description_tokens as usize,
                    );
                    json!({
                        "type": "function",
                        "function": {
                            "name": format!("tool_{k}_{i}"),
                            "description": description,
                            "parameters": {
                                "type": "object",
                                "properties": {"input": {"type": "string"}},
                                "required": ["input"]
                            }
                        }
                    })
                })
                .collect();
            let raw = (!defs.is_empty())
                .then(|| RawJson::from_value(&Value::Array(defs)).ok())
                .flatten();
            tools.push(raw);
        }
        Self {
            header: header.clone(),
            system,
            system_json,
            tools,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The header this expander was built from.
    #[must_use]
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    fn user_text(&self, session: u32, turn: usize, tokens: u32) -> String {
        let seed = text_seed(
            self.header.seed,
            &[TAG_USER, u64::from(session), turn as u64],
        );
        output_text(seed, tokens as usize)
    }

    /// The simulator's reply to turn `turn` of `request`'s session, whose
    /// user message is `user`.
    fn reply_text(&self, request: &TraceRequest, turn: usize, user: &str) -> String {
        let tokens = request.assistant.get(turn).copied().unwrap_or(0) as usize;
        let last = MessageText {
            role: "user",
            content: user,
            tool_calls: None,
        };
        let seed = output_seed_for_last_message(&last).unwrap_or_else(|| {
            // A short message: render the whole conversation up to it.
            let earlier = TraceRequest {
                turn: u32::try_from(turn).unwrap_or(u32::MAX),
                user: request.user[..=turn].to_vec(),
                assistant: request.assistant[..turn].to_vec(),
                ..request.clone()
            };
            output_seed(&self.chat_request(&earlier).prompt_tokens().tokens)
        });
        output_text(seed, tokens)
    }

    /// The full chat request of a trace line.
    #[must_use]
    pub fn chat_request(&self, request: &TraceRequest) -> ChatRequest {
        let prompt = request.prompt as usize;
        let mut messages = Vec::with_capacity(request.user.len() * 2 + 1);
        let system = self.system.get(prompt).map_or("", |s| s);
        messages.push(ChatMessage::text("system", system.to_owned()));
        for (turn, &size) in request.user.iter().enumerate() {
            let user = self.user_text(request.session, turn, size);
            let reply =
                (turn < request.assistant.len()).then(|| self.reply_text(request, turn, &user));
            messages.push(ChatMessage::text("user", user));
            if let Some(reply) = reply {
                messages.push(ChatMessage::text("assistant", reply));
            }
        }
        ChatRequest {
            model: self.header.model.clone(),
            messages,
            tools: self.tools.get(prompt).cloned().flatten(),
            max_completion_tokens: None,
            max_tokens: Some(request.max_tokens),
            stream: self.header.stream,
            stream_options: self.header.stream.then_some(StreamOptions {
                include_usage: Some(true),
            }),
        }
    }

    /// The JSON body of a trace line's request: the serialization of
    /// [`Expander::chat_request`], built incrementally per session.
    #[must_use]
    pub fn body(&self, request: &TraceRequest) -> Vec<u8> {
        let turn = request.turn as usize;
        let prompt = request.prompt as usize;
        let user = self.user_text(
            request.session,
            turn,
            request.user.get(turn).copied().unwrap_or(0),
        );
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"model\":");
        body.extend_from_slice(
            serde_json::to_string(&self.header.model)
                .unwrap_or_default()
                .as_bytes(),
        );
        body.extend_from_slice(b",\"messages\":[");
        body.extend_from_slice(
            self.system_json
                .get(prompt)
                .map_or("", String::as_str)
                .as_bytes(),
        );
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = sessions.entry(request.session).or_default();
            if entry.pairs > turn || entry.prompt != request.prompt {
                *entry = SessionJson {
                    prompt: request.prompt,
                    ..SessionJson::default()
                };
            }
            while entry.pairs < turn {
                let j = entry.pairs;
                let size = request.user.get(j).copied().unwrap_or(0);
                let user_j = self.user_text(request.session, j, size);
                let reply = self.reply_text(request, j, &user_j);
                entry.json.push(',');
                entry.json.push_str(&message_json("user", user_j));
                entry.json.push(',');
                entry.json.push_str(&message_json("assistant", reply));
                entry.pairs += 1;
            }
            body.extend_from_slice(entry.json.as_bytes());
        }
        body.push(b',');
        body.extend_from_slice(message_json("user", user).as_bytes());
        body.push(b']');
        if let Some(tools) = self.tools.get(prompt).and_then(Option::as_ref) {
            body.extend_from_slice(b",\"tools\":");
            body.extend_from_slice(tools.as_str().as_bytes());
        }
        body.extend_from_slice(format!(",\"max_tokens\":{}", request.max_tokens).as_bytes());
        if self.header.stream {
            body.extend_from_slice(
                b",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            );
        } else {
            body.extend_from_slice(b",\"stream\":false}");
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadConfig {
        WorkloadConfig {
            sessions: 12,
            prompt_tokens_min: 1000,
            prompt_tokens_max: 2000,
            turns_max: 6,
            ..WorkloadConfig::default()
        }
    }

    #[test]
    fn same_seed_same_trace() {
        let a = small().generate().unwrap_or_else(|e| panic!("{e}"));
        let b = small().generate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.to_jsonl(), b.to_jsonl());
        let other = WorkloadConfig { seed: 2, ..small() }
            .generate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.to_jsonl(), other.to_jsonl());
    }

    #[test]
    fn trace_round_trips() {
        let trace = small().generate().unwrap_or_else(|e| panic!("{e}"));
        let text = trace.to_jsonl();
        let back = Trace::read_jsonl(text.as_bytes(), "<memory>").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, trace);
        assert_eq!(back.session_count(), 12);
    }

    #[test]
    fn turns_grow_and_arrive_in_order() {
        let trace = small().generate().unwrap_or_else(|e| panic!("{e}"));
        assert!(trace.requests.windows(2).all(|w| w[0].at <= w[1].at));
        for r in &trace.requests {
            assert_eq!(r.user.len(), r.turn as usize + 1);
            assert_eq!(r.assistant.len(), r.turn as usize);
        }
        let s0: Vec<_> = trace.requests.iter().filter(|r| r.session == 0).collect();
        assert!(
            s0.windows(2)
                .all(|w| w[1].at > w[0].at && w[1].turn == w[0].turn + 1)
        );
    }

    #[test]
    fn expansion_is_deterministic_and_extends_previous_turn() {
        let trace = small().generate().unwrap_or_else(|e| panic!("{e}"));
        let expander = Expander::new(&trace.header);
        let turns: Vec<_> = trace.requests.iter().filter(|r| r.session == 3).collect();
        assert!(turns.len() >= 2);
        let first = expander.chat_request(turns[0]);
        assert_eq!(first, expander.chat_request(turns[0]));
        let second = expander.chat_request(turns[1]);
        let t1 = first.prompt_tokens();
        let t2 = second.prompt_tokens();
        let reply = crate::model::SimRequest::from_chat(t1.clone(), turns[0].max_tokens as usize)
            .reply_text();
        assert_eq!(second.messages[2].content.as_str(), Some(reply.as_str()));
        let mut cached = t1.tokens.clone();
        crate::tokenizer::tokenize_text(&reply, &mut cached);
        assert_eq!(&t2.tokens[..cached.len()], cached.as_slice());
        let shared = &trace.header.shared_prompts[turns[0].prompt as usize];
        let approx = shared.system_tokens
            + shared.tools * (shared.tool_description_tokens + TOOL_OVERHEAD_TOKENS);
        let system_len = t1.system_len as f64;
        assert!(
            (system_len / f64::from(approx) - 1.0).abs() < 0.2,
            "{system_len} vs {approx}"
        );
    }

    #[test]
    fn incremental_body_equals_serialized_request() {
        let trace = small().generate().unwrap_or_else(|e| panic!("{e}"));
        let expander = Expander::new(&trace.header);
        for r in &trace.requests {
            let body = expander.body(r);
            let parsed: ChatRequest =
                serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed, expander.chat_request(r), "{}", r.key());
        }
        // Out of order (a restarted session) is rebuilt, not corrupted.
        let last = trace
            .requests
            .iter()
            .rev()
            .find(|r| r.turn > 1)
            .unwrap_or_else(|| panic!("no long session"));
        let first = trace
            .requests
            .iter()
            .find(|r| r.session == last.session)
            .unwrap_or_else(|| panic!("no first"));
        let parsed: ChatRequest =
            serde_json::from_slice(&expander.body(first)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, expander.chat_request(first));
    }

    #[test]
    fn bursty_arrivals() {
        let config = WorkloadConfig {
            arrival: Arrival::Bursty {
                burst_sessions: 4,
                every_seconds: 100.0,
                spread_seconds: 1.0,
            },
            ..small()
        };
        let trace = config.generate().unwrap_or_else(|e| panic!("{e}"));
        let starts: Vec<f64> = trace
            .requests
            .iter()
            .filter(|r| r.turn == 0)
            .map(|r| r.at)
            .collect();
        assert!(starts.iter().all(|s| (s % 100.0) < 1.0));
    }
}
