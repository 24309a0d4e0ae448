//! Shared by the `Cluster` tests against real nodes (`facade_mlx.rs`: a
//! real mlx_lm.server; `facade_sim.rs`: simulated nodes): the request a
//! gateway would build, sending it where the cluster said and reporting
//! the outcome, and waiting for a cluster event.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use cluster_facade::{ClusterEvent, FailureKind, RequestOutcome, Selection};
use cluster_types::{PrefixFingerprint, RoutingContext, SegmentKind};
use serde_json::{Value, json};
use tokio::sync::broadcast::Receiver;

/// A chat body for `model` (system prompt, then `turns` of `(role, text)`,
/// at most `max_tokens` generated) and the routing context the gateway
/// would build for it.
pub fn chat(
    model: &str,
    system: &str,
    turns: &[(&str, &str)],
    max_tokens: u32,
) -> (Value, RoutingContext) {
    let mut messages = vec![json!({"role": "system", "content": system})];
    let mut fp = PrefixFingerprint::builder(256);
    fp.push_segment(SegmentKind::Model, model)
        .push_segment(SegmentKind::System, system);
    for (role, text) in turns {
        messages.push(json!({"role": role, "content": text}));
        fp.push_segment(SegmentKind::Message { role }, text);
    }
    let fingerprint = fp.finish();
    let tokens = u32::try_from(fingerprint.total_bytes() / 4).unwrap();
    let body = json!({"model": model, "messages": messages, "max_tokens": max_tokens});
    let ctx = RoutingContext {
        model: Some(model.to_owned()),
        fingerprint,
        prompt_tokens_estimate: tokens,
        ..RoutingContext::default()
    };
    (body, ctx)
}

/// Sends the request where the cluster said (60 s at most), reports the
/// outcome to its guard, and returns the answer's usage `(prompt, cached)`
/// on success.
pub async fn send(http: &reqwest::Client, sel: Selection, body: &Value) -> Option<(u64, u64)> {
    let Selection {
        target, mut guard, ..
    } = sel;
    let resp = match http
        .post(format!("{}/v1/chat/completions", target.base_url))
        .json(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            guard.finish(RequestOutcome::Failed {
                kind: FailureKind::Connect,
            });
            return None;
        }
    };
    guard.first_byte();
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        guard.finish(RequestOutcome::Failed {
            kind: FailureKind::ServerError { status },
        });
        return None;
    }
    let v: Value = resp.json().await.unwrap();
    let usage = &v["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    let u = |x: u64| u32::try_from(x).unwrap();
    guard.finish(RequestOutcome::success_with_usage(
        u(prompt),
        u(cached),
        u(completion),
    ));
    Some((prompt, cached))
}

/// The next event `f` accepts; panics after `deadline` without one.
pub async fn wait_for(
    rx: &mut Receiver<ClusterEvent>,
    deadline: Duration,
    what: &str,
    mut f: impl FnMut(&ClusterEvent) -> bool,
) -> ClusterEvent {
    loop {
        match tokio::time::timeout(deadline, rx.recv()).await {
            Ok(Ok(e)) if f(&e) => return e,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream broke waiting for {what}: {e}"),
            Err(_) => panic!("no event within {deadline:?} waiting for {what}"),
        }
    }
}
