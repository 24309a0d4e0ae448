//! Pure snapshot arithmetic: dedupe a snapshot, diff it against the nodes
//! already announced. No I/O, no time.

use std::collections::{BTreeMap, HashSet};

use cluster_types::NodeId;

use crate::{DiscoveredNode, ValidatedNode};

/// Why a node of a snapshot was dropped by [`dedupe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Duplicate {
    /// An earlier node of the snapshot has the same id.
    Id,
    /// An earlier node of the snapshot has the same base URL.
    Url,
}

/// The comparison key of a URL: case-insensitive, trailing slash ignored.
pub(crate) fn url_key(url: &str) -> String {
    url.trim_end_matches('/').to_ascii_lowercase()
}

/// Keeps the first node of each id and of each URL, in snapshot order.
/// Returns the kept nodes and the dropped ones with the reason.
pub(crate) fn dedupe(
    nodes: Vec<DiscoveredNode>,
) -> (Vec<DiscoveredNode>, Vec<(DiscoveredNode, Duplicate)>) {
    let mut ids = HashSet::new();
    let mut urls = HashSet::new();
    let mut kept = Vec::with_capacity(nodes.len());
    let mut dropped = Vec::new();
    for node in nodes {
        if ids.contains(node.id()) {
            dropped.push((node, Duplicate::Id));
        } else if urls.contains(&url_key(node.url())) {
            dropped.push((node, Duplicate::Url));
        } else {
            ids.insert(node.id().clone());
            urls.insert(url_key(node.url()));
            kept.push(node);
        }
    }
    (kept, dropped)
}

/// What a deduplicated snapshot changes in the announced set.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    /// Announced nodes that are gone, or whose URL changed (a different
    /// server under the same id: lost, then validated again as new).
    pub(crate) lost: Vec<ValidatedNode>,
    /// Announced nodes whose weight, tags, API key or origin changed; the
    /// URL is the same, so no new validation. `(previous, current)`.
    pub(crate) updated: Vec<(ValidatedNode, ValidatedNode)>,
    /// Nodes not announced yet: to validate.
    pub(crate) new: Vec<DiscoveredNode>,
}

/// Diffs `snapshot` (deduplicated) against the `announced` nodes. Every
/// list comes out sorted by node id.
pub(crate) fn diff(
    announced: &BTreeMap<NodeId, ValidatedNode>,
    snapshot: &[DiscoveredNode],
) -> Diff {
    let mut out = Diff::default();
    let mut seen = HashSet::new();
    for node in snapshot {
        seen.insert(node.id());
        match announced.get(node.id()) {
            None => out.new.push(node.clone()),
            Some(known) if url_key(known.url()) != url_key(node.url()) => {
                out.lost.push(known.clone());
                out.new.push(node.clone());
            }
            Some(known) if known.node != *node => {
                // Models, kind and slots are kept; a `kind` tag that
                // changed forces the new kind.
                let current = ValidatedNode {
                    node: node.clone(),
                    models: known.models.clone(),
                    kind: cluster_types::NodeKind::from_tags(&node.spec.tags).unwrap_or(known.kind),
                    slots: known.slots,
                };
                out.updated.push((known.clone(), current));
            }
            Some(_) => {}
        }
    }
    out.lost.extend(
        announced
            .iter()
            .filter(|(id, _)| !seen.contains(id))
            .map(|(_, node)| node.clone()),
    );
    out.lost.sort_by(|a, b| a.id().cmp(b.id()));
    out.updated.sort_by(|a, b| a.0.id().cmp(b.0.id()));
    out.new.sort_by(|a, b| a.id().cmp(b.id()));
    out
}

#[cfg(test)]
mod tests {
    use cluster_types::NodeSpec;

    use super::*;
    use crate::NodeOrigin;

    fn node(id: &str, url: &str) -> DiscoveredNode {
        DiscoveredNode::new(NodeSpec::new(id, url), NodeOrigin::Static)
    }

    fn announced(nodes: &[DiscoveredNode]) -> BTreeMap<NodeId, ValidatedNode> {
        nodes
            .iter()
            .map(|n| {
                (
                    n.id().clone(),
                    ValidatedNode::new(n.clone(), vec!["m".to_owned()].into()),
                )
            })
            .collect()
    }

    fn ids<'a>(it: impl IntoIterator<Item = &'a NodeId>) -> Vec<&'a str> {
        it.into_iter().map(NodeId::as_str).collect()
    }

    #[test]
    fn dedupe_keeps_first_of_each_id_and_url() {
        let (kept, dropped) = dedupe(vec![
            node("a", "http://h:1"),
            node("a", "http://h:2"),
            node("b", "http://H:1/"),
            node("c", "http://h:3"),
        ]);
        assert_eq!(ids(kept.iter().map(DiscoveredNode::id)), ["a", "c"]);
        assert_eq!(dropped.len(), 2);
        assert_eq!(dropped[0].1, Duplicate::Id);
        assert_eq!(dropped[0].0.url(), "http://h:2");
        assert_eq!(dropped[1].1, Duplicate::Url);
        assert_eq!(dropped[1].0.id().as_str(), "b");
    }

    #[test]
    fn diff_finds_new_lost_updated() {
        let before = announced(&[
            node("a", "http://h:1"),
            node("b", "http://h:2"),
            node("c", "http://h:3"),
        ]);
        let mut c = node("c", "http://h:3");
        c.spec.weight = 5;
        let snapshot = vec![node("d", "http://h:4"), c, node("a", "http://h:1")];
        let d = diff(&before, &snapshot);
        assert_eq!(ids(d.lost.iter().map(ValidatedNode::id)), ["b"]);
        assert_eq!(ids(d.new.iter().map(DiscoveredNode::id)), ["d"]);
        assert_eq!(d.updated.len(), 1);
        let (prev, cur) = &d.updated[0];
        assert_eq!(prev.spec().weight, 1);
        assert_eq!(cur.spec().weight, 5);
        assert_eq!(cur.models, ["m"], "an update keeps the validated models");
    }

    #[test]
    fn url_change_is_lost_then_new() {
        let before = announced(&[node("a", "http://h:1")]);
        let d = diff(&before, &[node("a", "http://h:9")]);
        assert_eq!(ids(d.lost.iter().map(ValidatedNode::id)), ["a"]);
        assert_eq!(d.new.len(), 1);
        assert_eq!(d.new[0].url(), "http://h:9");
        assert!(d.updated.is_empty());
    }

    #[test]
    fn unchanged_snapshot_is_empty_diff() {
        let nodes = [node("a", "http://h:1"), node("b", "http://h:2")];
        assert_eq!(diff(&announced(&nodes), &nodes), Diff::default());
        assert_eq!(diff(&BTreeMap::new(), &[]), Diff::default());
    }

    #[test]
    fn empty_snapshot_loses_everything() {
        let before = announced(&[node("b", "http://h:2"), node("a", "http://h:1")]);
        let d = diff(&before, &[]);
        assert_eq!(ids(d.lost.iter().map(ValidatedNode::id)), ["a", "b"]);
    }
}
