//! Sticky sessions: session key → node, with a TTL and sweeping.
//!
//! A request carrying a session id goes to the node that served the session
//! last, as long as that node is a usable candidate (routable, serving the
//! model, not excluded, not saturated); otherwise the strategy chooses and
//! the session moves. Entries unused for `ttl` are forgotten: lazily on
//! lookup, by [`SessionTable::sweep`] (run periodically by the cluster's
//! background task), and when the table exceeds its capacity (the least
//! recently used goes, which is also the first to expire).
//!
//! The table is an LRU list threaded through a slab, indexed by a hash map:
//! lookup, pin and eviction are O(1) under the table's short mutex (a pin
//! made out of order walks back past the few later ones); a sweep costs
//! only the entries it drops; only a node leaving the cluster scans every
//! entry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster_types::NodeId;
use parking_lot::Mutex;

/// "No slot" in the LRU links.
const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Sticky {
    key: String,
    node: NodeId,
    last_used: Instant,
    /// Less recently used neighbour (towards `head`).
    prev: usize,
    /// More recently used neighbour (towards `tail`).
    next: usize,
}

/// The LRU: `head` is the least recently used pin, `tail` the most; the
/// list is kept in `last_used` order, so the oldest pin is also the first
/// to expire.
#[derive(Debug)]
struct Lru {
    index: HashMap<String, usize>,
    slots: Vec<Sticky>,
    /// Slots of removed pins, reused first.
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Lru {
    fn new() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].prev = prev;
        }
    }

    /// Links slot `i` in `last_used` order: at the tail, unless pins made
    /// later are already there (concurrent requests may pin slightly out of
    /// order; the walk is as long as that disorder, not the table).
    fn link(&mut self, i: usize) {
        let at = self.slots[i].last_used;
        let mut prev = self.tail;
        while prev != NIL && self.slots[prev].last_used > at {
            prev = self.slots[prev].prev;
        }
        let next = if prev == NIL {
            self.head
        } else {
            self.slots[prev].next
        };
        self.slots[i].prev = prev;
        self.slots[i].next = next;
        if prev == NIL {
            self.head = i;
        } else {
            self.slots[prev].next = i;
        }
        if next == NIL {
            self.tail = i;
        } else {
            self.slots[next].prev = i;
        }
    }

    fn remove(&mut self, i: usize) {
        self.unlink(i);
        let key = std::mem::take(&mut self.slots[i].key);
        self.index.remove(&key);
        self.free.push(i);
    }

    fn insert(&mut self, key: &str, node: &NodeId, now: Instant) {
        let sticky = Sticky {
            key: key.to_owned(),
            node: node.clone(),
            last_used: now,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = sticky;
                i
            }
            None => {
                self.slots.push(sticky);
                self.slots.len() - 1
            }
        };
        self.index.insert(key.to_owned(), i);
        self.link(i);
    }
}

/// The session map (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct SessionTable {
    ttl: Duration,
    max: usize,
    lru: Mutex<Lru>,
}

impl SessionTable {
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            lru: Mutex::new(Lru::new()),
        }
    }

    fn expired(&self, s: &Sticky, now: Instant) -> bool {
        now.saturating_duration_since(s.last_used) > self.ttl
    }

    /// The node pinned for `key`, if the pin has not expired.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<NodeId> {
        let lru = self.lru.lock();
        let s = &lru.slots[*lru.index.get(key)?];
        (!self.expired(s, now)).then(|| s.node.clone())
    }

    /// Pins `key` to `node` as of `now` (the most recently used pin).
    pub(crate) fn put(&self, key: &str, node: &NodeId, now: Instant) {
        let mut lru = self.lru.lock();
        if let Some(&i) = lru.index.get(key) {
            let s = &mut lru.slots[i];
            if s.node != *node {
                s.node = node.clone();
            }
            s.last_used = now;
            lru.unlink(i);
            lru.link(i);
            return;
        }
        if lru.index.len() >= self.max && lru.head != NIL {
            let oldest = lru.head;
            lru.remove(oldest);
        }
        lru.insert(key, node, now);
    }

    /// Forgets every session unused for `ttl`; returns how many.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let mut lru = self.lru.lock();
        let mut dropped = 0;
        while lru.head != NIL && self.expired(&lru.slots[lru.head], now) {
            let oldest = lru.head;
            lru.remove(oldest);
            dropped += 1;
        }
        dropped
    }

    /// Forgets the sessions pinned to `node` (it left the cluster).
    pub(crate) fn forget_node(&self, node: &NodeId) {
        let mut lru = self.lru.lock();
        let mut i = lru.head;
        while i != NIL {
            let next = lru.slots[i].next;
            if lru.slots[i].node == *node {
                lru.remove(i);
            }
            i = next;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lru.lock().index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_expire_after_ttl() {
        let t0 = Instant::now();
        let s = SessionTable::new(Duration::from_secs(60), 10);
        s.put("a", &"n1".into(), t0);
        assert_eq!(s.get("a", t0 + Duration::from_secs(60)), Some("n1".into()));
        assert_eq!(s.get("a", t0 + Duration::from_secs(61)), None);
        assert_eq!(s.get("zz", t0), None);
        // Use refreshes the pin; a move replaces the node.
        s.put("a", &"n2".into(), t0 + Duration::from_secs(50));
        assert_eq!(s.get("a", t0 + Duration::from_secs(100)), Some("n2".into()));
        s.put("b", &"n1".into(), t0);
        assert_eq!(s.sweep(t0 + Duration::from_secs(90)), 1);
        assert_eq!(s.len(), 1);
        s.forget_node(&"n2".into());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn capacity_evicts_expired_then_oldest() {
        let t0 = Instant::now();
        let s = SessionTable::new(Duration::from_secs(10), 2);
        s.put("a", &"n".into(), t0);
        s.put("b", &"n".into(), t0 + Duration::from_secs(5));
        s.put("c", &"n".into(), t0 + Duration::from_secs(6));
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("a", t0 + Duration::from_secs(6)), None);
        // Nothing expired: the least recently used goes.
        s.put("d", &"n".into(), t0 + Duration::from_secs(7));
        assert_eq!(s.get("b", t0 + Duration::from_secs(7)), None);
        assert!(s.get("c", t0 + Duration::from_secs(7)).is_some());
        assert!(s.get("d", t0 + Duration::from_secs(7)).is_some());
    }

    #[test]
    fn reuse_refreshes_the_order_and_slots_are_recycled() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let s = SessionTable::new(Duration::from_secs(100), 3);
        for (k, key) in ["a", "b", "c"].into_iter().enumerate() {
            s.put(key, &"n1".into(), at(k as u64));
        }
        // "a" used again: "b" is now the least recently used.
        s.put("a", &"n1".into(), at(3));
        s.put("d", &"n2".into(), at(4));
        assert_eq!(s.get("b", at(4)), None);
        for key in ["a", "c", "d"] {
            assert!(s.get(key, at(4)).is_some(), "{key}");
        }
        // Forgetting a node in the middle keeps the list whole.
        s.forget_node(&"n2".into());
        assert_eq!(s.len(), 2);
        s.put("e", &"n3".into(), at(5));
        s.put("f", &"n3".into(), at(6));
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("c", at(6)), None, "c was the least recently used");
        // A sweep drops from the old end only what expired.
        assert_eq!(s.sweep(at(104)), 1);
        assert_eq!(s.len(), 2);
        assert_eq!(s.sweep(at(200)), 2);
        assert_eq!(s.len(), 0);
        s.put("g", &"n1".into(), at(201));
        assert_eq!(s.get("g", at(201)), Some("n1".into()));
    }

    proptest::proptest! {
        /// Any sequence of pins (times out of order too), sweeps and node
        /// removals answers like a plain map with "evict the oldest".
        #[test]
        fn matches_a_plain_map(ops in proptest::collection::vec((0u8..4, 0u8..6, 0u8..3, 0u64..40), 1..120)) {
            let t0 = Instant::now();
            let ttl = Duration::from_secs(10);
            let table = SessionTable::new(ttl, 4);
            let mut model: HashMap<String, (NodeId, Instant)> = HashMap::new();
            let mut clock = 0u64;
            for (step, (op, key, node, dt)) in ops.into_iter().enumerate() {
                let key = format!("k{key}");
                let node = NodeId::from(format!("n{node}"));
                // Mostly forward, sometimes a little back.
                clock = (clock + dt).saturating_sub(if dt % 7 == 0 { 3 } else { 0 });
                // Distinct instants (no ties for "the oldest").
                let now = t0 + Duration::from_secs(clock) + Duration::from_nanos(step as u64);
                match op {
                    0 | 1 => {
                        table.put(&key, &node, now);
                        if let Some(e) = model.get_mut(&key) {
                            *e = (node, now);
                        } else {
                            if model.len() >= 4 {
                                let oldest = model
                                    .iter()
                                    .min_by_key(|(_, (_, t))| *t)
                                    .map(|(k, _)| k.clone())
                                    .unwrap();
                                model.remove(&oldest);
                            }
                            model.insert(key.clone(), (node, now));
                        }
                    }
                    2 => {
                        let dropped = table.sweep(now);
                        let before = model.len();
                        model.retain(|_, (_, t)| now.saturating_duration_since(*t) <= ttl);
                        proptest::prop_assert_eq!(dropped, before - model.len());
                    }
                    _ => {
                        table.forget_node(&node);
                        model.retain(|_, (n, _)| *n != node);
                    }
                }
                proptest::prop_assert_eq!(table.len(), model.len());
                for k in 0..6 {
                    let k = format!("k{k}");
                    let want = model
                        .get(&k)
                        .filter(|(_, t)| now.saturating_duration_since(*t) <= ttl)
                        .map(|(n, _)| n.clone());
                    proptest::prop_assert_eq!(table.get(&k, now), want);
                }
            }
        }
    }
}
