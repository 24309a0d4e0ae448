//! Prefix fingerprints: chained block hashes over a canonical prompt.
//!
//! # Canonical prompt
//! A prompt is fed as a sequence of *segments* — by convention the model id,
//! the system prompt, the tool list, then each message (role + content) in
//! order. Each segment is framed in a byte stream as
//!
//! ```text
//! tag:u8  [role_len:u64le role]  text_len:u64le  text
//! ```
//!
//! with `tag` = 1 model, 2 system, 3 tools, 4 message (only messages carry a
//! role). The length framing makes the encoding injective: `"ab"+"c"` and
//! `"a"+"bc"` give different streams, and a segment boundary can never be
//! faked by text content.
//!
//! # Blocks and hashes
//! The stream is cut into fixed-size blocks of `block_bytes` bytes (default
//! [`DEFAULT_BLOCK_BYTES`] = 256, about 64 tokens of English). Block `i`
//! has the chained hash
//!
//! ```text
//! h_i = chain(h_{i-1}, xxh64(block_i, seed 0)),   h_{-1} = block_bytes
//! chain(p, b) = avalanche(rotl((p + b * P2), 31) * P1)
//! ```
//!
//! where `P1`, `P2` and `avalanche` are XXH64's primes and final mix (all
//! arithmetic wrapping mod 2^64). So `h_i` depends on the whole stream up to
//! the end of block `i`; for a fixed `h_{i-1}`, `chain` is a bijection of the
//! block hash, so it adds no collisions. Two prompts therefore share their
//! first `k` hashes exactly when their streams share the first `k` blocks (up
//! to 64-bit collisions), and fingerprints built with different block sizes
//! never match. Blocks are hashed independently and only the cheap `chain`
//! step is sequential, so the CPU overlaps the work of consecutive blocks. A
//! trailing partial block is hashed too (so short prompts still have a
//! fingerprint); it only matches an identical tail.
//!
//! The block hash is XXH64 (xxHash, 64-bit variant, as specified at
//! <https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md>), from
//! the `xxhash-rust` crate (checked against the reference vectors in the
//! tests). It is deterministic across processes,
//! machines and versions of this crate; replicas of the gateway compute the
//! same fingerprints. It is not cryptographic.
//!
//! Only hashes are stored, never text. Building is one pass over the input;
//! bytes are copied only for the (at most one per segment boundary) block
//! that straddles two segments.
//!
//! ```
//! use cluster_types::{PrefixFingerprint, SegmentKind};
//!
//! let system = "You are a helpful assistant. ".repeat(40);
//! let fp = |question: &str| {
//!     let mut b = PrefixFingerprint::builder(256);
//!     b.push_segment(SegmentKind::Model, "qwen")
//!         .push_segment(SegmentKind::System, &system)
//!         .push_segment(SegmentKind::Message { role: "user" }, question);
//!     b.finish()
//! };
//! let a = fp("What is Rust?");
//! let b = fp("What is Go?");
//! // The long shared system prompt gives shared leading blocks.
//! assert!(a.common_prefix_len(&b) >= 4);
//! assert_ne!(a.blocks().last(), b.blocks().last());
//! ```

use serde::{Deserialize, Serialize};

/// Default block size of a fingerprint, in bytes of canonical prompt
/// (256 bytes ≈ 64 tokens of English text).
pub const DEFAULT_BLOCK_BYTES: u32 = 256;

/// XXH64's primes, for the chain step.
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;

#[inline(always)]
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// The sequential step of the fingerprint chain (see the module docs).
#[inline(always)]
fn chain(prev: u64, block_hash: u64) -> u64 {
    avalanche(round(prev, block_hash))
}

/// XXH64 of `data` with `seed`: the stable, non-cryptographic 64-bit hash
/// used for fingerprints. Also usable for other stable hashes (system prompt,
/// tool list, rendezvous hashing): the value never changes between runs,
/// machines or versions.
///
/// ```
/// assert_eq!(cluster_types::fingerprint::xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
/// ```
#[must_use]
pub fn xxh64(data: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(data, seed)
}

/// Kind of a prompt segment fed to [`PrefixFingerprintBuilder::push_segment`].
///
/// Feed segments in the conventional order: model, system, tools, then
/// messages. No default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind<'a> {
    /// The requested model id (so different models never share a prefix).
    Model,
    /// The system prompt (or each system content block, in order).
    System,
    /// The tool/function list, canonically serialized by the caller.
    Tools,
    /// One message (or one content part of it) with its role
    /// (`"user"`, `"assistant"`, `"tool"`, ...).
    Message {
        /// The message role.
        role: &'a str,
    },
}

impl SegmentKind<'_> {
    const fn tag(self) -> u8 {
        match self {
            Self::Model => 1,
            Self::System => 2,
            Self::Tools => 3,
            Self::Message { .. } => 4,
        }
    }
}

/// Chained block hashes of a canonical prompt (see the [module
/// docs](crate::fingerprint)). Holds hashes only, never text.
///
/// `Default` is the empty fingerprint with block size
/// [`DEFAULT_BLOCK_BYTES`] (no blocks; matches nothing).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrefixFingerprint {
    block_bytes: u32,
    blocks: Vec<u64>,
    total_bytes: u64,
    partial_tail: bool,
}

impl Default for PrefixFingerprint {
    fn default() -> Self {
        Self {
            block_bytes: DEFAULT_BLOCK_BYTES,
            blocks: Vec::new(),
            total_bytes: 0,
            partial_tail: false,
        }
    }
}

impl PrefixFingerprint {
    /// Starts a fingerprint with blocks of `block_bytes` bytes of canonical
    /// stream (clamped to at least 1; the config's
    /// `cache.fingerprint_block_bytes` is validated to 16..=1 MiB).
    #[must_use]
    pub fn builder(block_bytes: u32) -> PrefixFingerprintBuilder {
        let block_bytes = block_bytes.max(1);
        PrefixFingerprintBuilder {
            block_bytes,
            block: block_bytes as usize,
            buf: Vec::new(),
            blocks: Vec::new(),
            prev: u64::from(block_bytes),
            total_bytes: 0,
        }
    }

    /// Block hashes, first block first; the last one covers a partial block
    /// when [`has_partial_tail`](Self::has_partial_tail).
    #[must_use]
    pub fn blocks(&self) -> &[u64] {
        &self.blocks
    }

    /// Hashes of complete blocks only (what a node's cache can be said to
    /// hold a prefix of).
    #[must_use]
    pub fn full_blocks(&self) -> &[u64] {
        match self.blocks.split_last() {
            Some((_, full)) if self.partial_tail => full,
            _ => &self.blocks,
        }
    }

    /// Number of block hashes (including a partial tail).
    #[must_use]
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there are no blocks (nothing was pushed).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether the last block is shorter than the block size.
    #[must_use]
    pub fn has_partial_tail(&self) -> bool {
        self.partial_tail
    }

    /// Block size in bytes of canonical stream.
    #[must_use]
    pub fn block_bytes(&self) -> u32 {
        self.block_bytes
    }

    /// Bytes of text pushed (segment texts and roles, excluding framing):
    /// a cheap basis for token estimates (≈ 4 bytes per token for English).
    #[doc(alias = "total_chars")]
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Number of leading blocks the two fingerprints share; 0 when their
    /// block sizes differ.
    #[must_use]
    pub fn common_prefix_len(&self, other: &Self) -> usize {
        if self.block_bytes != other.block_bytes {
            return 0;
        }
        self.blocks
            .iter()
            .zip(&other.blocks)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// Incremental builder of a [`PrefixFingerprint`]; see
/// [`PrefixFingerprint::builder`].
#[derive(Debug, Clone)]
pub struct PrefixFingerprintBuilder {
    block_bytes: u32,
    block: usize,
    buf: Vec<u8>,
    blocks: Vec<u64>,
    prev: u64,
    total_bytes: u64,
}

impl PrefixFingerprintBuilder {
    /// Appends one segment (see the module docs for the framing).
    pub fn push_segment(&mut self, kind: SegmentKind<'_>, text: &str) -> &mut Self {
        self.feed(&[kind.tag()]);
        if let SegmentKind::Message { role } = kind {
            self.feed(&(role.len() as u64).to_le_bytes());
            self.feed(role.as_bytes());
            self.total_bytes += role.len() as u64;
        }
        self.feed(&(text.len() as u64).to_le_bytes());
        self.feed(text.as_bytes());
        self.total_bytes += text.len() as u64;
        self
    }

    /// Finishes: hashes a trailing partial block, if any.
    #[must_use]
    pub fn finish(mut self) -> PrefixFingerprint {
        let partial_tail = !self.buf.is_empty();
        if partial_tail {
            let buf = std::mem::take(&mut self.buf);
            self.emit(&buf);
        }
        PrefixFingerprint {
            block_bytes: self.block_bytes,
            blocks: self.blocks,
            total_bytes: self.total_bytes,
            partial_tail,
        }
    }

    #[inline]
    fn emit(&mut self, block: &[u8]) {
        self.prev = chain(self.prev, xxh64(block, 0));
        self.blocks.push(self.prev);
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        if !self.buf.is_empty() {
            let take = (self.block - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() < self.block {
                return;
            }
            let buf = std::mem::take(&mut self.buf);
            self.emit(&buf);
            self.buf = buf;
            self.buf.clear();
        }
        if bytes.len() >= self.block {
            self.blocks.reserve(bytes.len() / self.block);
            let mut chunks = bytes.chunks_exact(self.block);
            for c in &mut chunks {
                self.emit(c);
            }
            bytes = chunks.remainder();
        }
        if !bytes.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.block);
            }
            self.buf.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xxh64_reference_vectors() {
        // Values from the reference implementation (xxhsum -H64).
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        // Past 32 bytes (the four-lane path); python-xxhash's example.
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    fn fp(block: u32, segs: &[(SegmentKind<'_>, &str)]) -> PrefixFingerprint {
        let mut b = PrefixFingerprint::builder(block);
        for (k, t) in segs {
            b.push_segment(*k, t);
        }
        b.finish()
    }

    #[test]
    fn separators_matter() {
        let u = SegmentKind::Message { role: "user" };
        let a = fp(4, &[(u, "ab"), (u, "c")]);
        let b = fp(4, &[(u, "a"), (u, "bc")]);
        assert_ne!(a.blocks(), b.blocks());
        let c = fp(4, &[(SegmentKind::System, "x")]);
        let d = fp(4, &[(SegmentKind::Tools, "x")]);
        assert_ne!(c.blocks()[0], d.blocks()[0]);
        let e = fp(64, &[(SegmentKind::Message { role: "user" }, "x")]);
        let f = fp(64, &[(SegmentKind::Message { role: "assistant" }, "x")]);
        assert_ne!(e, f);
    }

    #[test]
    fn shared_prefix_shares_blocks() {
        let sys = "s".repeat(1000);
        let a = fp(
            256,
            &[
                (SegmentKind::System, &sys),
                (SegmentKind::Message { role: "user" }, "hello"),
            ],
        );
        let b = fp(
            256,
            &[
                (SegmentKind::System, &sys),
                (SegmentKind::Message { role: "user" }, "hello"),
                (SegmentKind::Message { role: "assistant" }, "hi"),
                (SegmentKind::Message { role: "user" }, "more"),
            ],
        );
        // stream of a: 1 + 8 + 1000 + 1 + 8 + 4 + 8 + 8 + 5 = 1043 bytes -> 4 full + tail
        assert_eq!(a.len(), 5);
        assert!(a.has_partial_tail());
        assert_eq!(a.full_blocks().len(), 4);
        assert_eq!(a.common_prefix_len(&b), 4);
        assert_eq!(a.common_prefix_len(&a), 5);
        assert_eq!(a.total_bytes(), 1000 + 4 + 5);
        // different block sizes never match
        let c = fp(128, &[(SegmentKind::System, &sys)]);
        assert_eq!(a.common_prefix_len(&c), 0);
    }

    #[test]
    fn empty_and_degenerate() {
        let e = PrefixFingerprint::builder(256).finish();
        assert!(e.is_empty());
        assert_eq!(e, PrefixFingerprint::default());
        let z = fp(0, &[(SegmentKind::Model, "m")]);
        assert_eq!(z.block_bytes(), 1);
        assert_eq!(z.len(), 1 + 8 + 1);
    }

    #[test]
    fn inconsistent_deserialized_fingerprint_does_not_panic() {
        let odd: PrefixFingerprint = serde_json::from_str(
            r#"{"block_bytes":0,"blocks":[],"total_bytes":0,"partial_tail":true}"#,
        )
        .unwrap();
        assert!(odd.full_blocks().is_empty());
        assert_eq!(odd.common_prefix_len(&PrefixFingerprint::default()), 0);
    }

    #[test]
    fn serde_round_trip() {
        let a = fp(
            32,
            &[(SegmentKind::System, "hello world, this is long enough")],
        );
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("hello"));
        let back: PrefixFingerprint = serde_json::from_str(&json).unwrap();
        assert_eq!(a, back);
    }

    /// Reference: hash the whole canonical stream block by block.
    fn reference(block: usize, segs: &[(u8, String)]) -> Vec<u64> {
        let mut stream = Vec::new();
        for (tag, text) in segs {
            stream.push(*tag);
            stream.extend_from_slice(&(text.len() as u64).to_le_bytes());
            stream.extend_from_slice(text.as_bytes());
        }
        let mut prev = block as u64;
        stream
            .chunks(block)
            .map(|c| {
                prev = chain(prev, xxh64(c, 0));
                prev
            })
            .collect()
    }

    proptest! {
        #[test]
        fn streaming_equals_reference(
            block in 1u32..80,
            segs in proptest::collection::vec((1u8..4, ".{0,200}"), 0..8),
        ) {
            let mut b = PrefixFingerprint::builder(block);
            for (tag, text) in &segs {
                let kind = match tag { 1 => SegmentKind::Model, 2 => SegmentKind::System, _ => SegmentKind::Tools };
                b.push_segment(kind, text);
            }
            let got = b.finish();
            let want = reference(block as usize, &segs);
            prop_assert_eq!(got.blocks(), want.as_slice());
        }

        #[test]
        fn prefix_property(
            common in ".{0,300}",
            x in ".{1,100}",
            y in ".{1,100}",
        ) {
            let a = fp(16, &[(SegmentKind::System, &common), (SegmentKind::Message { role: "user" }, &x)]);
            let b = fp(16, &[(SegmentKind::System, &common), (SegmentKind::Message { role: "user" }, &y)]);
            // every full block inside the shared system segment matches
            let shared_stream = 1 + 8 + common.len();
            prop_assert!(a.common_prefix_len(&b) >= shared_stream / 16);
            if x != y {
                prop_assert!(a.common_prefix_len(&b) < a.len().max(b.len()));
            }
        }
    }
}
