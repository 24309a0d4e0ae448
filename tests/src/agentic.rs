//! Agentic sessions driven through the real OpenAI Python SDK.
//!
//! A [`SessionPlan`] is a list of sessions — a shared system prompt and a
//! few turns of user messages — drawn from cluster-sim's agentic workload
//! generator ([`plan_sessions`]). [`run_client`] hands it to
//! `scripts/agentic_client.py`, which runs the sessions with the venv's
//! `openai` package against any OpenAI-compatible base URL (a gateway, a peer
//! router, a node), streaming with `stream_options.include_usage` and
//! appending the model's real replies to the history, and returns one
//! [`RequestRecord`] per request. [`Summary`] turns records into the figures
//! the routing benchmark reports.
//!
//! Used by the real-node routing benchmark (`cargo xtask bench
//! real-routing`, `tests/examples/real_routing.rs`) and the simulator
//! calibration test (`tests/tests/sim_calibration.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_sim::workload::{Arrival, Expander, WorkloadConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::FixtureError;

/// The client script, relative to the workspace root.
pub const CLIENT_SCRIPT: &str = "scripts/agentic_client.py";

/// The workspace root (parent of this package's directory).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// One turn of a planned session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanTurn {
    /// The user message of the turn.
    pub user: String,
    /// `max_tokens` of the request.
    pub max_tokens: u32,
    /// Seconds the session waits after this turn's reply before its next turn.
    pub think_s: f64,
}

/// One planned session: a system prompt and its turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSession {
    /// Session id (also the session header's value when one is sent).
    pub id: String,
    /// Seconds after the run's start before which the session does not start.
    pub start_s: f64,
    /// Index of the shared system prompt this session uses.
    pub prompt: u32,
    /// The system message (shared with the other sessions of its prompt).
    pub system: String,
    /// The turns, in order.
    pub turns: Vec<PlanTurn>,
}

/// What `scripts/agentic_client.py` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPlan {
    /// OpenAI base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// `model` of every request.
    pub model: String,
    /// Sessions running at once.
    pub concurrency: usize,
    /// One request at a time in turn-major order (every session's turn 0,
    /// then every turn 1, …) instead of concurrent sessions.
    #[serde(default)]
    pub lockstep: bool,
    /// Header carrying the session id, or `None` to send none.
    pub session_header: Option<String>,
    /// Per-request timeout, seconds.
    pub timeout_s: f64,
    /// The sessions, in start order.
    pub sessions: Vec<PlanSession>,
}

/// Shape of a planned workload. Sizes are in cluster-sim tokens (4 bytes of
/// text each, about 2.8 tokens of the tiny test model's tokenizer); reply
/// lengths are real `max_tokens`.
///
/// Defaults: seed 7, 24 sessions of 5 turns over 3 shared prompts of 400–700
/// sim tokens, a first message of 60–200 and later ones of 30–120 sim tokens,
/// replies of 16–48 tokens, think time mean 0.5 s (at most 2 s).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadShape {
    /// Seed of the generator. Default 7.
    pub seed: u64,
    /// Sessions. Default 24.
    pub sessions: usize,
    /// Turns per session. Default 5.
    pub turns: u32,
    /// Distinct shared system prompts. Default 3.
    pub shared_prompts: usize,
    /// Shared prompt size range, sim tokens. Default 400–700.
    pub prompt_tokens: (u32, u32),
    /// First user message range, sim tokens. Default 60–200.
    pub first_message_tokens: (u32, u32),
    /// Later user message range, sim tokens. Default 30–120.
    pub message_tokens: (u32, u32),
    /// Reply length range (`max_tokens`). Default 16–48.
    pub reply_tokens: (u32, u32),
    /// Mean think time, seconds. Default 0.5.
    pub think_mean_s: f64,
    /// Longest think time, seconds. Default 2.
    pub think_max_s: f64,
}

impl Default for WorkloadShape {
    fn default() -> Self {
        Self {
            seed: 7,
            sessions: 24,
            turns: 5,
            shared_prompts: 3,
            prompt_tokens: (400, 700),
            first_message_tokens: (60, 200),
            message_tokens: (30, 120),
            reply_tokens: (16, 48),
            think_mean_s: 0.5,
            think_max_s: 2.0,
        }
    }
}

/// Draws the sessions of `shape` from cluster-sim's workload generator:
/// the same shape always gives the same plan. Tool definitions are folded
/// into the system text (servers whose chat template ignores `tools` would
/// otherwise not see them). `start_s` is 0 for every session (closed loop:
/// each starts when a slot is free).
///
/// # Errors
/// [`FixtureError::Plan`] when the shape is invalid for the generator.
pub fn plan_sessions(shape: &WorkloadShape) -> Result<Vec<PlanSession>, FixtureError> {
    let config = WorkloadConfig {
        seed: shape.seed,
        sessions: shape.sessions,
        shared_prompts: shape.shared_prompts,
        prompt_tokens_min: shape.prompt_tokens.0,
        prompt_tokens_max: shape.prompt_tokens.1,
        tools_fraction: 0.5,
        tools_per_prompt: 6,
        turns_min: shape.turns,
        turns_max: shape.turns,
        first_message_tokens_min: shape.first_message_tokens.0,
        first_message_tokens_max: shape.first_message_tokens.1,
        message_tokens_min: shape.message_tokens.0,
        message_tokens_max: shape.message_tokens.1,
        output_tokens_min: shape.reply_tokens.0,
        output_tokens_max: shape.reply_tokens.1,
        think_mean_seconds: shape.think_mean_s,
        think_max_seconds: shape.think_max_s,
        arrival: Arrival::Poisson {
            sessions_per_minute: 60.0,
        },
        max_context_tokens: u32::MAX,
        model: "default_model".to_owned(),
        stream: true,
    };
    let trace = config
        .generate()
        .map_err(|e| FixtureError::Plan(e.to_string()))?;
    let expander = Expander::new(&trace.header);
    // The last request of each session carries every user message.
    let mut last = BTreeMap::new();
    for request in &trace.requests {
        let entry = last.entry(request.session).or_insert(request);
        if request.turn > entry.turn {
            *entry = request;
        }
    }
    let mut thinks: BTreeMap<(u32, u32), f64> = BTreeMap::new();
    for request in &trace.requests {
        thinks.insert((request.session, request.turn), request.think);
    }
    let mut sessions = Vec::with_capacity(last.len());
    for (session, request) in last {
        let chat = expander.chat_request(request);
        let mut system = String::new();
        let mut users = Vec::new();
        for message in &chat.messages {
            let text = match &message.content {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match message.role.as_str() {
                "system" => system = text,
                "user" => users.push(text),
                _ => {}
            }
        }
        if let Some(tools) = &chat.tools {
            system.push_str("\n\n# Tools\n");
            system.push_str(tools.as_str());
        }
        let turns = users
            .into_iter()
            .enumerate()
            .map(|(turn, user)| {
                let turn = u32::try_from(turn).unwrap_or(u32::MAX);
                PlanTurn {
                    user,
                    max_tokens: request
                        .assistant
                        .get(turn as usize)
                        .copied()
                        .unwrap_or(request.max_tokens),
                    // Think time *after* this turn = the next turn's think.
                    think_s: thinks.get(&(session, turn + 1)).copied().unwrap_or(0.0),
                }
            })
            .collect();
        sessions.push(PlanSession {
            id: format!("s{session}"),
            start_s: 0.0,
            prompt: request.prompt,
            system,
            turns,
        });
    }
    Ok(sessions)
}

/// One request as the client saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Session id.
    pub session: String,
    /// Turn number from 0.
    pub turn: u32,
    /// When the request was sent, seconds since the run began.
    pub start: f64,
    /// Seconds to the first content token (`None` if none came).
    pub ttft: Option<f64>,
    /// Seconds to the end of the stream.
    pub total: Option<f64>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// Characters of every message sent (system, history, new message).
    #[serde(default)]
    pub prompt_chars: u64,
    /// The `x-mlx-cluster-node` response header, if the router sent one.
    pub node: Option<String>,
    /// Why the request failed; `None` on success.
    pub error: Option<String>,
}

/// Runs `plan` with the OpenAI SDK of the venv whose python is `python`;
/// `work_dir` receives `plan.json` and `records.jsonl`. Gives up after
/// `deadline`.
///
/// # Errors
/// [`FixtureError`] when the client cannot be started, fails, times out or
/// writes unreadable records.
pub async fn run_client(
    python: &Path,
    plan: &SessionPlan,
    work_dir: &Path,
    deadline: Duration,
) -> Result<Vec<RequestRecord>, FixtureError> {
    std::fs::create_dir_all(work_dir).map_err(|source| FixtureError::Io {
        action: "create",
        path: work_dir.to_path_buf(),
        source,
    })?;
    let plan_path = work_dir.join("plan.json");
    let out_path = work_dir.join("records.jsonl");
    let json = serde_json::to_vec(plan).map_err(|e| FixtureError::Plan(e.to_string()))?;
    std::fs::write(&plan_path, json).map_err(|source| FixtureError::Io {
        action: "write",
        path: plan_path.clone(),
        source,
    })?;
    let script = workspace_root().join(CLIENT_SCRIPT);
    let mut command = tokio::process::Command::new(python);
    command
        .arg(&script)
        .arg(&plan_path)
        .arg(&out_path)
        .kill_on_drop(true);
    let output = tokio::time::timeout(deadline, command.output())
        .await
        .map_err(|_| FixtureError::Timeout {
            what: "agentic client",
            after: deadline,
        })?
        .map_err(|source| FixtureError::Io {
            action: "spawn",
            path: script.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(FixtureError::Plan(format!(
            "agentic client failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    read_records(&out_path)
}

/// Reads the client's JSON Lines output.
///
/// # Errors
/// [`FixtureError`] when the file cannot be read or a line does not parse.
pub fn read_records(path: &Path) -> Result<Vec<RequestRecord>, FixtureError> {
    let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| FixtureError::Plan(format!("{}: {e}: {l}", path.display())))
        })
        .collect()
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Cached / prompt tokens over the successful requests.
    pub hit_ratio: f64,
    /// Time to first token: median, mean and 99th percentile, seconds.
    pub ttft_p50: f64,
    /// See `ttft_p50`.
    pub ttft_mean: f64,
    /// See `ttft_p50`.
    pub ttft_p99: f64,
    /// From the first request's start to the last one's end, seconds.
    pub wall: f64,
}

impl RequestRecord {
    /// Characters of the prompt the node did *not* serve from its cache
    /// (`(1 − cached / prompt) × prompt_chars`): comparable between servers
    /// whose tokenizers count differently. `None` for a failed request.
    #[must_use]
    pub fn uncached_chars(&self) -> Option<f64> {
        let prompt = self.prompt_tokens.filter(|&p| p > 0)?;
        let cached = self.cached_tokens.unwrap_or(0).min(prompt);
        Some((1.0 - cached as f64 / prompt as f64) * self.prompt_chars as f64)
    }
}

impl Summary {
    /// Figures over `records`.
    #[must_use]
    pub fn of(records: &[RequestRecord]) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let prompt: u64 = ok.iter().filter_map(|r| r.prompt_tokens).sum();
        let cached: u64 = ok.iter().filter_map(|r| r.cached_tokens).sum();
        let mut ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft).collect();
        ttfts.sort_by(f64::total_cmp);
        let mean = if ttfts.is_empty() {
            0.0
        } else {
            ttfts.iter().sum::<f64>() / ttfts.len() as f64
        };
        let wall = records
            .iter()
            .map(|r| r.start + r.total.unwrap_or(0.0))
            .fold(0.0, f64::max)
            - records
                .iter()
                .map(|r| r.start)
                .fold(f64::INFINITY, f64::min);
        Self {
            requests: records.len(),
            errors: records.len() - ok.len(),
            hit_ratio: if prompt == 0 {
                0.0
            } else {
                cached as f64 / prompt as f64
            },
            ttft_p50: percentile(&ttfts, 0.5),
            ttft_mean: mean,
            ttft_p99: percentile(&ttfts, 0.99),
            wall: if wall.is_finite() { wall } else { 0.0 },
        }
    }
}

/// The `q` quantile of sorted `values` (nearest rank); 0 when empty.
#[must_use]
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_shaped() {
        let shape = WorkloadShape::default();
        let a = plan_sessions(&shape).unwrap();
        let b = plan_sessions(&shape).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.iter().all(|s| s.turns.len() == 5));
        // Sessions of one shared prompt share the system text exactly.
        let first = &a[0];
        let same: Vec<_> = a.iter().filter(|s| s.prompt == first.prompt).collect();
        assert!(same.len() > 1);
        assert!(same.iter().all(|s| s.system == first.system));
        assert!(first.system.contains("# Tools"));
        assert!(
            a.iter()
                .flat_map(|s| &s.turns)
                .all(|t| (16..=48).contains(&t.max_tokens))
        );
    }

    #[test]
    fn summary_figures() {
        let r = |ttft: f64, prompt: u64, cached: u64, error: Option<&str>| RequestRecord {
            session: "s".into(),
            turn: 0,
            start: 1.0,
            ttft: Some(ttft),
            total: Some(2.0),
            prompt_tokens: Some(prompt),
            cached_tokens: Some(cached),
            completion_tokens: Some(1),
            prompt_chars: 400,
            node: None,
            error: error.map(str::to_owned),
        };
        let s = Summary::of(&[
            r(1.0, 100, 50, None),
            r(3.0, 100, 100, None),
            r(9.0, 100, 0, Some("boom")),
        ]);
        assert_eq!(s.requests, 3);
        assert_eq!(s.errors, 1);
        assert!((s.hit_ratio - 0.75).abs() < 1e-9);
        assert!((s.ttft_mean - 2.0).abs() < 1e-9);
        assert!((s.ttft_p50 - 1.0).abs() < 1e-9);
        assert!((s.ttft_p99 - 3.0).abs() < 1e-9);
        assert!((s.wall - 2.0).abs() < 1e-9);
        assert_eq!(r(1.0, 100, 75, None).uncached_chars(), Some(100.0));
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
