//! Fleets: several simulated nodes on ephemeral loopback ports, in this
//! process ([`Fleet`]) or as child processes of the `cluster-sim` binary
//! ([`ProcessFleet`]).

use std::path::Path;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::error::SimError;
use crate::server::{SimNode, SimNodeConfig};

/// Configuration of a fleet: one [`SimNodeConfig`] per node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FleetConfig {
    /// The nodes.
    pub nodes: Vec<SimNodeConfig>,
}

impl FleetConfig {
    /// `n` copies of `base`, named `sim-0` … `sim-{n-1}`, with seeds
    /// `base.seed + i`.
    #[must_use]
    pub fn uniform(n: usize, base: &SimNodeConfig) -> Self {
        Self::heterogeneous(n, base, &[], &[])
    }

    /// `n` nodes from `base`, node `i` made `speeds[i % len]` times faster
    /// and given `cache_entries[i % len]` cache entries (an empty slice
    /// leaves `base`'s value).
    #[must_use]
    pub fn heterogeneous(
        n: usize,
        base: &SimNodeConfig,
        speeds: &[f64],
        cache_entries: &[usize],
    ) -> Self {
        let nodes = (0..n)
            .map(|i| {
                let mut node = base.clone();
                node.id = format!("sim-{i}");
                node.seed = base.seed.wrapping_add(i as u64);
                if !speeds.is_empty() {
                    node.model = node.model.with_speed(speeds[i % speeds.len()]);
                }
                if !cache_entries.is_empty() {
                    node.model.cache_entries = cache_entries[i % cache_entries.len()];
                }
                node
            })
            .collect();
        Self { nodes }
    }
}

/// Nodes running in this process.
#[derive(Debug)]
pub struct Fleet {
    nodes: Vec<SimNode>,
}

impl Fleet {
    /// Starts every node of `config`.
    ///
    /// # Errors
    /// The first node's start error (nodes already started are stopped).
    pub async fn start(config: FleetConfig) -> Result<Self, SimError> {
        let mut nodes = Vec::with_capacity(config.nodes.len());
        for node in config.nodes {
            nodes.push(SimNode::start(node).await?);
        }
        Ok(Self { nodes })
    }

    /// The nodes.
    #[must_use]
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// Node `i`, if any.
    #[must_use]
    pub fn node(&self, i: usize) -> Option<&SimNode> {
        self.nodes.get(i)
    }

    /// Base URLs of the nodes, in order.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(SimNode::base_url).collect()
    }

    /// Number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the fleet has no node.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

/// The line a `cluster-sim node` process prints on stdout once it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnnouncement {
    /// The node's id.
    pub id: String,
    /// Its base URL.
    pub url: String,
}

/// Nodes running as child processes (`cluster-sim node --config-json ...`).
/// Dropping it kills the children.
#[derive(Debug)]
pub struct ProcessFleet {
    children: Vec<Child>,
    nodes: Vec<NodeAnnouncement>,
}

impl ProcessFleet {
    /// Spawns one `program node --config-json <json>` per node and waits
    /// for each to announce its URL.
    ///
    /// # Errors
    /// [`SimError::Process`] when a child cannot be spawned or exits before
    /// announcing itself.
    pub async fn spawn(program: &Path, config: &FleetConfig) -> Result<Self, SimError> {
        let mut fleet = Self {
            children: Vec::new(),
            nodes: Vec::new(),
        };
        for (index, node) in config.nodes.iter().enumerate() {
            let process = |message: String| SimError::Process { index, message };
            let json = serde_json::to_string(node).map_err(|e| process(e.to_string()))?;
            let mut child = Command::new(program)
                .arg("node")
                .arg("--config-json")
                .arg(json)
                .stdout(Stdio::piped())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| process(format!("cannot spawn {}: {e}", program.display())))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| process("no stdout".to_owned()))?;
            let mut lines = BufReader::new(stdout).lines();
            let line = lines
                .next_line()
                .await
                .map_err(|e| process(e.to_string()))?
                .ok_or_else(|| process("exited before announcing its URL".to_owned()))?;
            let announcement: NodeAnnouncement = serde_json::from_str(&line)
                .map_err(|e| process(format!("bad announcement {line:?}: {e}")))?;
            // Keep draining stdout so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            fleet.children.push(child);
            fleet.nodes.push(announcement);
        }
        Ok(fleet)
    }

    /// The nodes' announcements (id and URL), in order.
    #[must_use]
    pub fn nodes(&self) -> &[NodeAnnouncement] {
        &self.nodes
    }

    /// Base URLs of the nodes.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// Kills node `i` (a hard crash); returns whether it was running.
    pub async fn kill(&mut self, i: usize) -> bool {
        match self.children.get_mut(i) {
            Some(child) => child.kill().await.is_ok(),
            None => false,
        }
    }

    /// Kills every child and waits for them.
    pub async fn shutdown(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}
