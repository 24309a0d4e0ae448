//! `cargo xtask fuzz [--minutes N | --seconds N] [TARGET..]`: every fuzz
//! target of `fuzz/` (or the named ones), coverage-guided with AFL++
//! through `cargo afl`, each for a fixed budget (default 1 minute),
//! starting from its checked-in seed corpus (`fuzz/corpus/TARGET/`).
//!
//! cargo-afl is installed by `cargo xtask setup` under
//! `~/.cache/mlx-cluster/cargo-afl-VERSION/` (with the AFL++ it builds
//! from its bundled sources, through `XDG_DATA_HOME` there); the
//! instrumented build goes to `~/.cache/mlx-cluster/afl-target-KEY/`, keyed
//! by cargo-afl's and rustc's versions, so a second run rebuilds only what
//! changed. Findings and AFL++'s queues are under `target/fuzz/TARGET/`;
//! `target/fuzz/summary.md` has one row per target (execs, paths, crashes,
//! hangs). Any crash or hang fails the run, listing the inputs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::setup::{CARGO_AFL_VERSION, cargo_afl_env};
use crate::util::{output, run_step, workspace_root};

/// The fuzz targets (`cluster_fuzz::TARGETS`).
pub(crate) const TARGETS: &[&str] = &[
    "config",
    "request",
    "sse",
    "probe_response",
    "srv_answer",
    "endpoint_slices",
    "anthropic",
];

struct Stats {
    target: String,
    seconds: u64,
    execs: u64,
    corpus: u64,
    edges: String,
    crashes: u64,
    hangs: u64,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = 60u64;
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--minutes" | "--seconds" => {
                let n: f64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("{arg} needs a number"))?;
                seconds = if arg == "--minutes" {
                    (n * 60.0) as u64
                } else {
                    n as u64
                }
                .max(1);
            }
            name if TARGETS.contains(&name) => targets.push(name.to_owned()),
            other => {
                return Err(format!(
                    "unknown fuzz argument `{other}`; targets: {TARGETS:?}"
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    let env = crate::setup::ensure_cargo_afl()?;
    let root = workspace_root();
    let manifest = root.join("fuzz/afl/Cargo.toml");
    let rustc = output(Command::new("rustc").arg("--version"))?;
    let target_dir = env.cache.join(format!(
        "afl-target-{}",
        crate::util::fnv1a(&[CARGO_AFL_VERSION.as_bytes(), rustc.trim().as_bytes()])
    ));
    // The driver's own workspace takes the main lock file's versions (and
    // adds afl's few dependencies), so it never goes stale when the main
    // workspace's dependencies change.
    std::fs::copy(root.join("Cargo.lock"), root.join("fuzz/afl/Cargo.lock"))
        .map_err(|e| format!("cannot copy Cargo.lock to fuzz/afl: {e}"))?;
    let mut build = Command::new(env.cargo_afl());
    build
        .args(["afl", "build", "--release", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&root);
    cargo_afl_env(&mut build, &env);
    run_step("cargo afl build", &mut build)?;
    let binary = target_dir.join("release/cluster-fuzz-afl");

    let out_root = root.join("target/fuzz");
    std::fs::create_dir_all(&out_root).map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    for target in &targets {
        let out = out_root.join(target);
        let _ = std::fs::remove_dir_all(&out);
        let started = Instant::now();
        let mut fuzz = Command::new(env.cargo_afl());
        fuzz.args(["afl", "fuzz", "-i"])
            .arg(root.join("fuzz/corpus").join(target))
            .arg("-o")
            .arg(&out)
            .args(["-V", &seconds.to_string(), "-t", "5000", "-m", "none", "--"])
            .arg(&binary)
            .arg(target)
            .env("AFL_NO_UI", "1")
            .env("AFL_SKIP_CPUFREQ", "1")
            .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
            .env("AFL_NO_AFFINITY", "1")
            .env("AFL_QUIET", "1")
            .stdout(std::process::Stdio::null());
        cargo_afl_env(&mut fuzz, &env);
        run_step(&format!("fuzz {target} ({seconds} s)"), &mut fuzz)?;
        let mut stats = read_stats(&out, target)?;
        stats.seconds = started.elapsed().as_secs();
        all.push(stats);
    }
    let mut summary = String::from(
        "| target | seconds | execs | corpus | edges covered | crashes | hangs |\n|---|---|---|---|---|---|---|\n",
    );
    for s in &all {
        summary.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            s.target, s.seconds, s.execs, s.corpus, s.edges, s.crashes, s.hangs
        ));
    }
    print!("{summary}");
    std::fs::write(out_root.join("summary.md"), &summary).map_err(|e| e.to_string())?;
    let bad: Vec<String> = all
        .iter()
        .filter(|s| s.crashes > 0 || s.hangs > 0)
        .map(|s| {
            let dir = out_root.join(&s.target).join("default");
            format!(
                "{}: {} crashes in {}, {} hangs in {}",
                s.target,
                s.crashes,
                dir.join("crashes").display(),
                s.hangs,
                dir.join("hangs").display()
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzzing found problems:\n{}", bad.join("\n")))
    }
}

fn read_stats(out: &Path, target: &str) -> Result<Stats, String> {
    let path: PathBuf = out.join("default/fuzzer_stats");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (did afl-fuzz start?)", path.display()))?;
    let field = |name: &str| -> String {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let number = |name: &str| field(name).parse::<u64>().unwrap_or(0);
    Ok(Stats {
        target: target.to_owned(),
        seconds: 0,
        execs: number("execs_done"),
        corpus: number("corpus_count"),
        edges: field("bitmap_cvg"),
        crashes: number("saved_crashes"),
        hangs: number("saved_hangs"),
    })
}
