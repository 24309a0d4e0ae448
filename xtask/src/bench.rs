//! `cargo xtask bench [NAME..]`: the project's benchmarks, by name.
//!
//! Criterion benches run with a short warm-up and measurement so the whole
//! set fits in a few minutes on 2 cores; pass `--full` for criterion's
//! defaults. Figures print to stdout; criterion also keeps them under
//! `target/criterion/` for comparison with the next run.

use std::process::Command;

use crate::util::{cargo, run_step};

/// A named benchmark: what it measures and the cargo arguments that run it.
struct Bench {
    name: &'static str,
    about: &'static str,
    package: &'static str,
    /// `Some(target)` for a single bench target of the package.
    target: Option<&'static str>,
    /// Whether it is a criterion bench (takes the short-run flags).
    criterion: bool,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "health-scale",
        about: "10,000 loopback endpoints checked every second for a minute: CPU and peak RSS",
        package: "cluster-health",
        target: Some("scale"),
        criterion: false,
    },
    Bench {
        name: "fingerprint",
        about: "prefix fingerprint of prompts from 1 KB to 100 KB, raw XXH64",
        package: "cluster-types",
        target: Some("fingerprint"),
        criterion: true,
    },
    Bench {
        name: "metrics",
        about: "RollingWindow record/snapshot, EWMA and peak-EWMA updates, in-flight guard",
        package: "cluster-metrics",
        target: Some("metrics"),
        criterion: true,
    },
    Bench {
        name: "select",
        about: "Cluster select at 8..10,000 nodes per strategy; 100 KB fingerprint + cache-aware decision",
        package: "cluster-facade",
        target: Some("select"),
        criterion: true,
    },
    Bench {
        name: "routing",
        about: "routing quality in simulated time: hit ratio, TTFT and load per strategy (about a minute)",
        package: "cluster-facade",
        target: Some("routing"),
        criterion: false,
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
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
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
        cmd.args(["bench", "--locked", "-p", bench.package]);
        if let Some(target) = bench.target {
            cmd.args(["--bench", target]);
        }
        if bench.criterion && !full {
            cmd.args(["--", "--warm-up-time", "1", "--measurement-time", "3"]);
        }
        run_step(&format!("bench {}", bench.name), &mut cmd)?;
    }
    Ok(())
}
