//! Sticky sessions: session key → node, with a TTL and sweeping.
//!
//! A request carrying a session id goes to the node that served the session
//! last, as long as that node is a usable candidate (routable, serving the
//! model, not excluded, not saturated); otherwise the strategy chooses and
//! the session moves. Entries unused for `ttl` are forgotten: lazily on
//! lookup, by [`SessionTable::sweep`] (run periodically by the cluster's
//! background task), and when the table exceeds its capacity (expired
//! entries first, then the least recently used).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster_types::NodeId;
use parking_lot::Mutex;

#[derive(Debug, Clone)]
struct Sticky {
    node: NodeId,
    last_used: Instant,
}

/// The session map (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct SessionTable {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, Sticky>>,
}

impl SessionTable {
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The node pinned for `key`, if the pin has not expired.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<NodeId> {
        let map = self.map.lock();
        let s = map.get(key)?;
        (now.saturating_duration_since(s.last_used) <= self.ttl).then(|| s.node.clone())
    }

    /// Pins `key` to `node` as of `now`.
    pub(crate) fn put(&self, key: &str, node: &NodeId, now: Instant) {
        let mut map = self.map.lock();
        if let Some(s) = map.get_mut(key) {
            if s.node != *node {
                s.node = node.clone();
            }
            s.last_used = now;
            return;
        }
        if map.len() >= self.max {
            let ttl = self.ttl;
            map.retain(|_, s| now.saturating_duration_since(s.last_used) <= ttl);
            if map.len() >= self.max
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            key.to_owned(),
            Sticky {
                node: node.clone(),
                last_used: now,
            },
        );
    }

    /// Forgets every session unused for `ttl`; returns how many.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let mut map = self.map.lock();
        let before = map.len();
        let ttl = self.ttl;
        map.retain(|_, s| now.saturating_duration_since(s.last_used) <= ttl);
        before - map.len()
    }

    /// Forgets the sessions pinned to `node` (it left the cluster).
    pub(crate) fn forget_node(&self, node: &NodeId) {
        self.map.lock().retain(|_, s| s.node != *node);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
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
}
