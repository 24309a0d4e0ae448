//! The simulator against the real server: the same agentic trace, routed the
//! same way (session `k` to node `k mod 2`), through two real
//! `mlx_lm.server` nodes and two cluster-sim nodes, driven by the OpenAI
//! SDK. For every request the part of the prompt each node did *not* serve
//! from its cache, in characters, must agree within one fingerprint block
//! (256 bytes) for at least 95 % of the requests — once one request at a
//! time (turn-major, with a 2-entry prompt cache so that eviction happens)
//! and once with every session of a node running at once (default cache).
//!
//! The comparison is in characters because the two tokenizers count
//! differently (the tiny model's BPE ~1.4 characters a token, the
//! simulator's 4); each record converts its own `cached_tokens /
//! prompt_tokens` with its own prompt's length.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cluster_sim::model::NodeModelConfig;
use cluster_sim::{SimNode, SimNodeConfig};
use cluster_tests::agentic::{
    PlanSession, RequestRecord, SessionPlan, WorkloadShape, plan_sessions, run_client,
};
use cluster_tests::mlx::{MlxFixture, MlxServer, MlxServerOptions};

/// One fingerprint block of prompt text.
const BLOCK_CHARS: f64 = 256.0;

fn shape() -> WorkloadShape {
    WorkloadShape {
        seed: 11,
        sessions: 6,
        turns: 5,
        shared_prompts: 2,
        prompt_tokens: (250, 400),
        first_message_tokens: (40, 120),
        message_tokens: (20, 80),
        // Short replies: the two servers' replies differ in text.
        reply_tokens: (6, 12),
        think_mean_s: 0.0,
        think_max_s: 0.0,
    }
}

fn plans(
    sessions: &[PlanSession],
    urls: &[String; 2],
    model: &str,
    lockstep: bool,
) -> Vec<SessionPlan> {
    (0..2)
        .map(|node| {
            let mine: Vec<PlanSession> = sessions
                .iter()
                .enumerate()
                .filter(|(k, _)| k % 2 == node)
                .map(|(_, s)| s.clone())
                .collect();
            SessionPlan {
                base_url: format!("{}/v1", urls[node]),
                model: model.to_owned(),
                concurrency: mine.len(),
                lockstep,
                session_header: None,
                timeout_s: 300.0,
                sessions: mine,
            }
        })
        .collect()
}

async fn run(
    python: &Path,
    plans: Vec<SessionPlan>,
    work: &Path,
) -> BTreeMap<(String, u32), RequestRecord> {
    let runs = plans.iter().enumerate().map(|(i, plan)| {
        let dir = work.join(format!("node{i}"));
        async move { run_client(python, plan, &dir, Duration::from_secs(900)).await }
    });
    let mut out = BTreeMap::new();
    for result in futures::future::join_all(runs).await {
        for r in result.unwrap_or_else(|e| panic!("client: {e}")) {
            assert!(
                r.error.is_none(),
                "{}/{} failed: {:?}",
                r.session,
                r.turn,
                r.error
            );
            out.insert((r.session.clone(), r.turn), r);
        }
    }
    out
}

fn sim_config(cache_entries: usize) -> SimNodeConfig {
    SimNodeConfig {
        model_id: "default_model".to_owned(),
        // Prefill of the short prompts takes tens of milliseconds.
        time_scale: 2.0,
        model: NodeModelConfig {
            cache_entries,
            ..NodeModelConfig::default()
        },
        ..SimNodeConfig::default()
    }
}

/// Share of requests whose uncached characters agree within one block;
/// prints the ones that do not.
fn agreement(
    label: &str,
    real: &BTreeMap<(String, u32), RequestRecord>,
    sim: &BTreeMap<(String, u32), RequestRecord>,
) -> f64 {
    assert_eq!(real.len(), sim.len(), "{label}: same requests answered");
    let mut within = 0;
    for (key, r) in real {
        let s = &sim[key];
        let (ur, us) = (r.uncached_chars().unwrap(), s.uncached_chars().unwrap());
        let blocks = (ur - us).abs() / BLOCK_CHARS;
        if blocks <= 1.0 {
            within += 1;
        } else {
            eprintln!(
                "{label} {}/{}: real {}/{} cached ({ur:.0} chars uncached), sim {}/{} ({us:.0}): {blocks:.1} blocks apart",
                key.0,
                key.1,
                r.cached_tokens.unwrap_or(0),
                r.prompt_tokens.unwrap_or(0),
                s.cached_tokens.unwrap_or(0),
                s.prompt_tokens.unwrap_or(0),
            );
        }
    }
    let share = f64::from(within) / real.len() as f64;
    eprintln!(
        "{label}: {within}/{} within one block ({share:.3})",
        real.len()
    );
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_caches_like_mlx_lm_server() {
    let fixture = MlxFixture::locate().unwrap_or_else(|e| panic!("{e}"));
    let sessions = plan_sessions(&shape()).unwrap();
    let work = std::env::temp_dir().join(format!("sim-calibration-{}", std::process::id()));
    let python = fixture.python();

    // 1. One request at a time, turn-major, 2-entry caches for 3 sessions.
    let small = || {
        MlxServerOptions::default()
            .arg("--prompt-cache-size")
            .arg("2")
    };
    let mut real = Vec::new();
    for _ in 0..2 {
        real.push(
            MlxServer::start_with(&fixture, small())
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let real_urls = [real[0].base_url(), real[1].base_url()];
    let sim_a = SimNode::start(sim_config(2)).await.unwrap();
    let sim_b = SimNode::start(sim_config(2)).await.unwrap();
    let sim_urls = [sim_a.base_url(), sim_b.base_url()];
    let model = fixture.model_id();
    let real_seq = run(
        &python,
        plans(&sessions, &real_urls, &model, true),
        &work.join("real-seq"),
    )
    .await;
    let sim_seq = run(
        &python,
        plans(&sessions, &sim_urls, "default_model", true),
        &work.join("sim-seq"),
    )
    .await;
    // Eviction happened: some later turn lost its conversation on the
    // real server (only the shared system prompt was left).
    assert!(
        real_seq
            .values()
            .any(|r| r.turn > 0 && r.uncached_chars().unwrap_or(0.0) > 2.0 * BLOCK_CHARS),
        "the 2-entry caches should have evicted something"
    );
    let seq_share = agreement("lockstep", &real_seq, &sim_seq);
    sim_a.shutdown().await;
    sim_b.shutdown().await;

    // 2. Every session of a node at once, default caches.
    for server in &mut real {
        server.kill().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut real = Vec::new();
    for _ in 0..2 {
        real.push(
            MlxServer::start(&fixture)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let real_urls = [real[0].base_url(), real[1].base_url()];
    let sim_a = SimNode::start(sim_config(10)).await.unwrap();
    let sim_b = SimNode::start(sim_config(10)).await.unwrap();
    let sim_urls = [sim_a.base_url(), sim_b.base_url()];
    let real_con = run(
        &python,
        plans(&sessions, &real_urls, &model, false),
        &work.join("real-con"),
    )
    .await;
    let sim_con = run(
        &python,
        plans(&sessions, &sim_urls, "default_model", false),
        &work.join("sim-con"),
    )
    .await;
    let con_share = agreement("concurrent", &real_con, &sim_con);
    sim_a.shutdown().await;
    sim_b.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);

    assert!(
        seq_share >= 0.95,
        "lockstep agreement {seq_share:.3} < 0.95"
    );
    assert!(
        con_share >= 0.95,
        "concurrent agreement {con_share:.3} < 0.95"
    );
}
