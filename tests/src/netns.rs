//! Two network namespaces joined by a veth pair: a private link for
//! multicast (mDNS) tests, so nothing reaches the machine's real
//! interfaces.
//!
//! [`NetnsPair::create`] makes namespaces `mlxc-<pid>-<n>-a` and `-b`, each
//! with `lo` up and one end of a veth pair named `veth0` (created directly
//! inside the namespaces), addresses [`NetnsPair::ADDR_A`] and
//! [`NetnsPair::ADDR_B`] (link-local, /24) and a multicast route on the
//! veth. Dropping the pair deletes both namespaces (which destroys the
//! veth). Namespaces left behind by a test process that died are deleted
//! on the next creation.
//!
//! Code runs inside a namespace in two ways:
//! - [`Netns::command`]: a program under `ip netns exec NAME`;
//! - [`Netns::runtime`]: a tokio runtime whose every thread (workers and
//!   blocking pool) entered the namespace first — sockets opened by tasks
//!   spawned on it, and threads they start (mdns-sd's daemon), live there.
//!
//! Needs root (CI runs as root) and iproute2's `ip`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::FixtureError;

/// iproute2's `ip`.
pub const IP: &str = "/usr/sbin/ip";

static NEXT: AtomicUsize = AtomicUsize::new(0);
const PREFIX: &str = "mlxc-";

/// One network namespace of a [`NetnsPair`].
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
    addr: Ipv4Addr,
}

impl Netns {
    /// The namespace's name (as `ip netns list` shows it).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IPv4 address of its `veth0`.
    #[must_use]
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The name of its end of the link: `veth0`.
    #[must_use]
    pub fn interface(&self) -> &'static str {
        "veth0"
    }

    /// `ip netns exec NAME program`: a command that runs `program` inside
    /// the namespace (add arguments, then spawn it).
    #[must_use]
    pub fn command(&self, program: impl Into<PathBuf>) -> Command {
        let mut cmd = Command::new(IP);
        cmd.arg("netns")
            .arg("exec")
            .arg(&self.name)
            .arg(program.into());
        cmd
    }

    /// Moves the calling thread into the namespace (for threads this
    /// fixture starts; the thread stays there until it exits).
    ///
    /// # Errors
    /// [`FixtureError::Io`] when the namespace file cannot be opened or
    /// `setns` fails.
    pub fn enter_current_thread(&self) -> Result<(), FixtureError> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        let file = File::open(&path).map_err(|source| FixtureError::Io {
            action: "open network namespace",
            path: path.clone(),
            source,
        })?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| FixtureError::Io {
            action: "setns into",
            path,
            source: e.into(),
        })
    }

    /// A tokio runtime (2 workers) whose threads all run inside the
    /// namespace. Spawn the code under test on its handle; drop it (outside
    /// of any runtime, or with `shutdown_background`) to stop.
    ///
    /// # Errors
    /// [`FixtureError::Io`] when the runtime cannot be built or a thread
    /// cannot enter the namespace (then the thread panics on start).
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, FixtureError> {
        let ns = self.clone();
        // Fail early with a clear error rather than in a worker thread.
        File::open(PathBuf::from("/run/netns").join(&self.name)).map_err(|source| {
            FixtureError::Io {
                action: "open network namespace",
                path: PathBuf::from("/run/netns").join(&self.name),
                source,
            }
        })?;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name(format!("netns-{}", self.name))
            .on_thread_start(move || {
                if let Err(e) = ns.enter_current_thread() {
                    panic!("cannot enter network namespace {}: {e}", ns.name);
                }
            })
            .build()
            .map_err(|source| FixtureError::Io {
                action: "build runtime in",
                path: PathBuf::from("/run/netns").join(&self.name),
                source,
            })
    }
}

/// Two namespaces joined by a veth pair. See the [module docs](self).
#[derive(Debug)]
pub struct NetnsPair {
    /// The first namespace (`ADDR_A`).
    pub a: Netns,
    /// The second namespace (`ADDR_B`).
    pub b: Netns,
}

impl NetnsPair {
    /// Address of `veth0` in namespace `a`.
    pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
    /// Address of `veth0` in namespace `b`.
    pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);

    /// Creates the namespaces and the link (see the [module docs](self)).
    ///
    /// # Errors
    /// [`FixtureError::Missing`] without `ip`; [`FixtureError::CommandFailed`]
    /// when an `ip` command fails (e.g. not root).
    pub fn create() -> Result<Self, FixtureError> {
        if !std::path::Path::new(IP).exists() {
            return Err(FixtureError::Missing {
                what: "iproute2's ip",
                path: PathBuf::from(IP),
                problem: "not installed".to_owned(),
                env_var: "PATH",
            });
        }
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{n}", std::process::id());
        let pair = Self {
            a: Netns {
                name: format!("{base}-a"),
                addr: Self::ADDR_A,
            },
            b: Netns {
                name: format!("{base}-b"),
                addr: Self::ADDR_B,
            },
        };
        // From here on, Drop deletes whatever was made.
        for ns in [&pair.a, &pair.b] {
            ip(&["netns", "add", &ns.name])?;
        }
        ip(&[
            "link",
            "add",
            "veth0",
            "netns",
            &pair.a.name,
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &pair.b.name,
        ])?;
        for ns in [&pair.a, &pair.b] {
            let n = ns.name.as_str();
            ip(&["-n", n, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{}/24", ns.addr),
                "dev",
                "veth0",
            ])?;
            ip(&["-n", n, "link", "set", "veth0", "up"])?;
            ip(&["-n", n, "route", "add", "224.0.0.0/4", "dev", "veth0"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = ip(&["netns", "del", &ns.name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<String, FixtureError> {
    let out = Command::new(IP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FixtureError::Spawn {
            program: PathBuf::from(IP),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FixtureError::CommandFailed {
            command: format!("ip {}", args.join(" ")),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Deletes `mlxc-<pid>-…` namespaces whose process is gone.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}
