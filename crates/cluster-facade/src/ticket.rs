//! The cache-ticket protocol, in one place: what `select` inserts into the
//! cache model for one request ([`CacheTicket::open`]), and how the request's
//! end settles it — corrected by what the node reported
//! ([`CacheTicket::settle`]) or rolled back when the node never answered
//! ([`CacheTicket::roll_back`]).

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::cache_model::{CacheModel, Held, Inserted};
use crate::live::{NodeLive, as_f64};
use crate::shared::CacheState;
use crate::strategy::Pick;
use crate::strategy::cache_aware::Prompt;

/// Cache-model bookkeeping of one request: inserted at select, confirmed
/// or rolled back at finish.
#[derive(Debug)]
pub(crate) struct CacheTicket {
    pub(crate) slot: u32,
    pub(crate) chain: Arc<[u64]>,
    pub(crate) inserted: Option<Inserted>,
    /// Prompt tokens the node was predicted to serve from its cache.
    pub(crate) predicted_cached: Option<u64>,
    /// The entry the request extends exactly (its conversation's last
    /// turn on the node), when the prediction rests on one.
    pub(crate) held: Option<Held>,
    /// Canonical prompt bytes and bytes per block (to convert reports).
    pub(crate) prompt_bytes: u64,
    pub(crate) block_bytes: u64,
}

impl CacheTicket {
    /// Inserts what the node will hold once it has the prompt (`select`,
    /// under the model lock it decided under). `None` for an empty prompt.
    pub(crate) fn open(
        model: &mut CacheModel,
        slot: u32,
        prompt: &Prompt<'_>,
        pick: &Pick,
        prompt_tokens: u64,
        now: Instant,
    ) -> Option<Self> {
        if prompt.chain.is_empty() {
            return None;
        }
        let held = model.held(slot, prompt.chain, pick.cached_blocks);
        let chain: Arc<[u64]> = Arc::from(prompt.chain);
        let inserted = model.insert(slot, Arc::clone(&chain), prompt_tokens, now);
        Some(Self {
            slot,
            chain,
            inserted,
            predicted_cached: pick.predicted_cached,
            held,
            prompt_bytes: prompt.bytes,
            block_bytes: prompt.block_bytes,
        })
    }

    /// The node never took the prompt: undoes the insertion.
    pub(crate) fn roll_back(self, cache: &Mutex<CacheState>) {
        if let Some(ins) = self.inserted {
            cache.lock().rollback(self.slot, ins);
        }
    }

    /// The node answered, reporting `prompt` tokens of which `cached` came
    /// from its cache, and a `reply` of that many tokens: learns the node's
    /// tokens per byte and reply reuse, scores the prediction, and confirms
    /// the entry with what the node really kept. Returns the prediction's
    /// error in blocks (absolute), when there was a prediction.
    pub(crate) fn settle(
        self,
        cache: &Mutex<CacheState>,
        live: &NodeLive,
        prompt: u64,
        cached: u64,
        reply: u64,
    ) -> Option<f64> {
        let tpb = as_f64(prompt) / as_f64(self.prompt_bytes.max(1));
        live.tokens_per_byte.blend(tpb, 0.2);
        let block_tokens = (as_f64(self.block_bytes) * tpb).max(1.0);
        if let Some(held) = self.held
            && held.reply > 0
        {
            let from_prompt = held.tokens - held.reply;
            // Only a cache that kept the whole prompt says how much of the
            // reply it reuses.
            if cached + 1 >= from_prompt {
                let reused = (as_f64(cached) - as_f64(from_prompt)).max(0.0) / as_f64(held.reply);
                live.reply_reuse.blend(reused.clamp(0.0, 1.0), 0.2);
            }
        }
        let mut model = cache.lock();
        let mut kept = None;
        let mut abs_error = None;
        if let Some(predicted) = self.predicted_cached {
            let error = (as_f64(predicted) - as_f64(cached)) / block_tokens;
            live.counters.observe_cache_prediction(error.abs());
            abs_error = Some(error.abs());
            if error > 1.0 {
                // The node had evicted part of what the model believed.
                let blocks = (as_f64(cached) / block_tokens).floor() as usize;
                kept = Some(blocks.min(self.chain.len()));
                model.feedback(self.slot, false);
            } else if predicted > 0 {
                model.feedback(self.slot, true);
            }
        }
        let own = self.inserted.map(|i| i.id);
        model.confirm(self.slot, own, &self.chain, kept, prompt, reply);
        abs_error
    }
}
