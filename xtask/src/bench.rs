//! `cargo xtask bench [NAME..]`: the project's benchmarks, by name.
//!
//! Criterion benches run with a short warm-up and measurement so the whole
//! set fits in a few minutes on 2 cores; pass `--full` for criterion's
//! defaults. Figures print to stdout; criterion also keeps them under
//! `target/criterion/` for comparison with the next run.

use std::process::Command;

use crate::setup;
use crate::util::{cargo, run_step, workspace_root};

/// What the real-node routing benchmark needs before it runs: the test
/// fixtures (into `cmd`'s environment), SMG's venv (its `smg` is passed on
/// with `--smg`) and a release build of the gateway.
fn real_routing_prelude(cmd: &mut Command) -> Result<(), String> {
    let env = setup::run()?;
    for (key, value) in env.vars() {
        cmd.env(key, value);
    }
    let smg = setup::ensure_smg_venv()?.join("bin/smg");
    run_step(
        "build gateway",
        cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "cluster-gateway",
            "--bin",
            "mlx-cluster",
        ]),
    )?;
    cmd.env("REAL_ROUTING_SMG", smg);
    Ok(())
}

/// A named benchmark: what it measures and the cargo arguments that run it.
struct Bench {
    name: &'static str,
    about: &'static str,
    package: &'static str,
    /// `Some(target)` for a single bench target of the package.
    target: Option<&'static str>,
    /// How it runs: a criterion bench (takes the short-run flags), a plain
    /// bench target, or a release-built example with fixed arguments.
    kind: Kind,
}

/// How a benchmark is started.
enum Kind {
    Criterion,
    Plain,
    /// `cargo run --release --example NAME -- ARGS`.
    Example(&'static [&'static str]),
    /// The real-node routing benchmark: fixtures, SMG's venv and the release
    /// gateway first, then `cargo run -p cluster-tests --example
    /// real_routing` with every `--flag value` given after the name.
    RealRouting,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "real-routing",
        about: "routers on 3 real mlx_lm.server nodes (ours, SMG, nginx, one node) in one run: hit ratio, TTFT, balance (about 40 min; flags after the name go to the example)",
        package: "cluster-tests",
        target: Some("real_routing"),
        kind: Kind::RealRouting,
    },
    Bench {
        name: "health-scale",
        about: "10,000 loopback endpoints checked every second for a minute: CPU and peak RSS",
        package: "cluster-health",
        target: Some("scale"),
        kind: Kind::Plain,
    },
    Bench {
        name: "fingerprint",
        about: "prefix fingerprint of prompts from 1 KB to 100 KB, raw XXH64",
        package: "cluster-types",
        target: Some("fingerprint"),
        kind: Kind::Criterion,
    },
    Bench {
        name: "metrics",
        about: "RollingWindow record/snapshot, EWMA and peak-EWMA updates, in-flight guard",
        package: "cluster-metrics",
        target: Some("metrics"),
        kind: Kind::Criterion,
    },
    Bench {
        name: "select",
        about: "Cluster select at 8..10,000 nodes per strategy; 100 KB fingerprint + cache-aware decision",
        package: "cluster-facade",
        target: Some("select"),
        kind: Kind::Criterion,
    },
    Bench {
        name: "routing",
        about: "routing quality in simulated time: hit ratio, TTFT and load per strategy (about a minute)",
        package: "cluster-facade",
        target: Some("routing"),
        kind: Kind::Plain,
    },
    Bench {
        name: "proxy",
        about: "wrk through the gateway vs nginx vs the node directly: req/s, added latency, CPU/request",
        package: "cluster-gateway",
        target: Some("proxy_bench"),
        kind: Kind::Example(&[
            "--rounds",
            "3",
            "--duration",
            "8",
            "--latency-duration",
            "4",
        ]),
    },
];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--list") {
        for bench in BENCHES {
            println!("{:<14} {}", bench.name, bench.about);
        }
        return Ok(());
    }
    let full = args.iter().any(|a| a == "--full");
    // `real-routing` takes `--flag value` pairs (and bare `--seed-per-round`)
    // for its example; everything else is a bench name.
    let mut names: Vec<&str> = Vec::new();
    let mut passthrough: Vec<String> = Vec::new();
    let mut it = args.iter().map(String::as_str).peekable();
    while let Some(a) = it.next() {
        if a == "--full" {
            continue;
        }
        if a.starts_with("--") {
            passthrough.push(a.to_owned());
            if let Some(v) = it.next_if(|v| !v.starts_with("--")) {
                passthrough.push(v.to_owned());
            }
        } else {
            names.push(a);
        }
    }
    for name in &names {
        if !BENCHES.iter().any(|b| b.name == *name) {
            let known: Vec<_> = BENCHES.iter().map(|b| b.name).collect();
            return Err(format!("unknown benchmark `{name}`; known: {known:?}"));
        }
    }
    for bench in BENCHES
        .iter()
        .filter(|b| names.is_empty() || names.contains(&b.name))
    {
        let mut cmd: Command = cargo();
        match bench.kind {
            Kind::RealRouting => {
                real_routing_prelude(&mut cmd)?;
                // The driver only starts processes and waits on them: the
                // debug build the tests already have will do (a release
                // build of cluster-tests would compile kube for minutes);
                // the gateway it measures is the release binary.
                cmd.args(["run", "--locked", "-p", bench.package]);
                if let Some(target) = bench.target {
                    cmd.args(["--example", target]);
                }
                let root = workspace_root();
                cmd.arg("--")
                    .arg("--gateway")
                    .arg(root.join("target/release/mlx-cluster"))
                    .arg("--work")
                    .arg(root.join("target/real-routing"))
                    .args(&passthrough);
            }
            Kind::Example(example_args) => {
                cmd.args(["run", "--release", "--locked", "-p", bench.package]);
                if let Some(target) = bench.target {
                    cmd.args(["--example", target]);
                }
                cmd.arg("--").args(example_args);
            }
            Kind::Criterion | Kind::Plain => {
                cmd.args(["bench", "--locked", "-p", bench.package]);
                if let Some(target) = bench.target {
                    cmd.args(["--bench", target]);
                }
                if matches!(bench.kind, Kind::Criterion) && !full {
                    cmd.args(["--", "--warm-up-time", "1", "--measurement-time", "3"]);
                }
            }
        }
        run_step(&format!("bench {}", bench.name), &mut cmd)?;
    }
    Ok(())
}
