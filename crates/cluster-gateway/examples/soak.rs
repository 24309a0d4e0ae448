//! `cargo xtask soak [--minutes N]`: steady mixed load through the release
//! `mlx-cluster` binary for N minutes, with a node killed and restarted
//! every minute.
//!
//! Three simulated mlx_lm.server nodes (cluster-sim, in this process, time
//! scale 50) sit behind the gateway (a child process). `--workers` clients
//! (default 8) send requests back to back: half streamed, half not, each
//! from one of 32 agent sessions whose conversation grows turn by turn (so
//! the cache model fills and evicts). At every minute mark one node (in
//! turn) is crashed and restarted 5 s later: requests in flight on it fail
//! and retries go elsewhere.
//!
//! Every second the gateway's resident set size (`VmRSS`) and open file
//! descriptors (`/proc/PID/fd`) are sampled. The run passes when
//!
//! - after the warm-up (the first 20 % of the run, at least 20 s), RSS stays
//!   within ±10 % of its median over the first 10 s after the warm-up;
//! - once the load stops, open descriptors come back to at most their
//!   median over that same window (the gateway's idle pooled node
//!   connections included);
//! - no request is lost: each got a complete answer (a JSON body that
//!   parses, or a stream ending in `data: [DONE]`) or a clean error (an
//!   error status with an OpenAI-shaped body, or a stream ending in an error
//!   event).
//!
//! RSS and descriptors over time are plotted to an SVG (plotters), with the
//! node restarts marked; the summary goes to stdout and, with the samples
//! as CSV, to `target/reliability/soak/`.
//!
//! ```text
//! target/release/examples/soak [--minutes 3] [--workers 8] [--figure PATH]
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use cluster_sim::{SimNode, SimNodeConfig};
use plotters::prelude::*;
use support::{GatewayProcess, free_port, out_dir};

/// Options of the soak run.
#[derive(Debug, Parser)]
#[command(name = "soak", about = "Steady load through the mlx-cluster gateway")]
struct Options {
    /// Length of the run.
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Where to write the SVG (default target/reliability/soak/soak.svg).
    #[arg(long)]
    figure: Option<PathBuf>,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    clean_errors: AtomicU64,
    lost: AtomicU64,
}

#[derive(Clone, Copy)]
struct Sample {
    t: f64,
    rss_mib: f64,
    fds: usize,
    done: u64,
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match runtime.block_on(run(&options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One request of session `session`, turn `turn`.
fn request_body(session: usize, turn: usize, stream: bool) -> String {
    let mut messages = vec![serde_json::json!({
        "role": "system",
        "content": format!("You are agent {session}. {}", "Follow the tool protocol. ".repeat(40)),
    })];
    for t in 0..=turn % 12 {
        messages.push(serde_json::json!({"role": "user", "content": format!("Step {t} of task {session}: read the file and fix the bug.")}));
        messages.push(
            serde_json::json!({"role": "assistant", "content": format!("Done with step {t}.")}),
        );
    }
    messages.pop();
    serde_json::json!({
        "model": "default_model",
        "stream": stream,
        "max_tokens": 16,
        "messages": messages,
    })
    .to_string()
}

/// Sends one request; classifies it.
async fn one(client: &reqwest::Client, url: &str, body: String, stream: bool, tally: &Tally) {
    let outcome = async {
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| format!("body: {e}"))?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|_| "error without a JSON body".to_owned())?;
            return if v["error"].is_object() {
                Ok(false)
            } else {
                Err("error body not in the OpenAI shape".to_owned())
            };
        }
        if stream {
            let text = String::from_utf8_lossy(&bytes);
            let last = text
                .trim_end()
                .lines()
                .last()
                .unwrap_or_default()
                .to_owned();
            if last == "data: [DONE]" {
                Ok(true)
            } else if last.starts_with("data: {\"error\"") {
                Ok(false)
            } else {
                Err(format!("stream ended with {last:?}"))
            }
        } else {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map(|_| true)
                .map_err(|e| format!("incomplete JSON answer: {e}"))
        }
    }
    .await;
    match outcome {
        Ok(true) => tally.ok.fetch_add(1, Ordering::Relaxed),
        Ok(false) => tally.clean_errors.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            eprintln!("soak: lost request: {e}");
            tally.lost.fetch_add(1, Ordering::Relaxed)
        }
    };
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn run(options: &Options) -> Result<bool, String> {
    let total = Duration::from_secs_f64(options.minutes * 60.0);
    let warmup = total.mul_f64(0.2).max(Duration::from_secs(20));
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            SimNode::start(SimNodeConfig {
                id: format!("sim-{i}"),
                time_scale: 50.0,
                ..SimNodeConfig::default()
            })
            .await
            .map_err(|e| e.to_string())?,
        );
    }
    let nodes = Arc::new(nodes);
    let port = free_port();
    let node_list: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{{ id = \"sim-{i}\", url = \"{}\" }}", n.base_url()))
        .collect();
    let config = format!(
        r#"
[discovery]
mode = "static"
nodes = [{}]
[health]
check_interval = "1s"
timeout = "500ms"
[routing]
retry_delay = "20ms"
[gateway]
listen = "127.0.0.1:{port}"
request_timeout = "30s"
first_byte_timeout = "10s"
"#,
        node_list.join(", ")
    );
    let dir = out_dir("soak");
    let gw = GatewayProcess::start(&dir, &config, port).await?;
    let url = format!("{}/v1/chat/completions", gw.base);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..options.workers {
        let (url, tally, stop) = (url.clone(), Arc::clone(&tally), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let mut turn = w;
            while !stop.load(Ordering::Relaxed) {
                let session = (turn * 7 + w) % 32;
                let stream = turn % 2 == 0;
                one(
                    &client,
                    &url,
                    request_body(session, turn, stream),
                    stream,
                    &tally,
                )
                .await;
                turn += 1;
            }
        }));
    }

    // Node restarts, one per minute, in turn.
    let restarts = {
        let (nodes, stop) = (Arc::clone(&nodes), Arc::clone(&stop));
        let started = Instant::now();
        tokio::spawn(async move {
            let mut marks = Vec::new();
            let mut k = 0usize;
            loop {
                let next = Duration::from_secs(60 * (k as u64 + 1));
                while started.elapsed() < next {
                    if stop.load(Ordering::Relaxed) {
                        return marks;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let node = &nodes[k % nodes.len()];
                marks.push(started.elapsed().as_secs_f64());
                eprintln!(
                    "soak: crashing {} at {:.0} s",
                    node.id(),
                    started.elapsed().as_secs_f64()
                );
                node.crash().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = node.restart().await;
                k += 1;
            }
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < total {
        let done = tally.ok.load(Ordering::Relaxed)
            + tally.clean_errors.load(Ordering::Relaxed)
            + tally.lost.load(Ordering::Relaxed);
        samples.push(Sample {
            t: started.elapsed().as_secs_f64(),
            rss_mib: gw.rss_bytes() as f64 / (1024.0 * 1024.0),
            fds: gw.fds(),
            done,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let marks = restarts.await.unwrap_or_default();
    for node in nodes.iter() {
        let _ = node.restart().await;
    }
    // Idle: client connections close; pooled node connections may stay.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let final_fds = gw.fds();
    let final_rss = gw.rss_bytes() as f64 / (1024.0 * 1024.0);

    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= warmup.as_secs_f64())
        .collect();
    let window: Vec<&&Sample> = after
        .iter()
        .filter(|s| s.t < warmup.as_secs_f64() + 10.0)
        .collect();
    let rss_ref = median(window.iter().map(|s| s.rss_mib).collect());
    let fds_ref = median(window.iter().map(|s| s.fds as f64).collect());
    let rss_min = after
        .iter()
        .map(|s| s.rss_mib)
        .fold(f64::INFINITY, f64::min);
    let rss_max = after.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let (ok, clean, lost) = (
        tally.ok.load(Ordering::Relaxed),
        tally.clean_errors.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
    );
    let mut problems = Vec::new();
    if rss_min < rss_ref * 0.9 || rss_max > rss_ref * 1.1 {
        problems.push(format!(
            "RSS left ±10 % of {rss_ref:.1} MiB: {rss_min:.1}..{rss_max:.1} MiB"
        ));
    }
    if final_fds as f64 > fds_ref {
        problems.push(format!(
            "open fds {final_fds} after the load, reference {fds_ref}"
        ));
    }
    if lost > 0 {
        problems.push(format!("{lost} requests lost"));
    }
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "| minutes | workers | requests | complete | clean errors | lost | node restarts | RSS after warm-up (MiB) | RSS reference | fds max / reference / after | result |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        summary,
        "| {:.1} | {} | {} | {ok} | {clean} | {lost} | {} | {rss_min:.1}..{rss_max:.1} (end {final_rss:.1}) | {rss_ref:.1} | {fds_max} / {fds_ref} / {final_fds} | {} |",
        options.minutes,
        options.workers,
        ok + clean + lost,
        marks.len(),
        if problems.is_empty() {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", problems.join("; "))
        }
    );
    print!("{summary}");
    std::fs::write(dir.join("summary.md"), &summary).map_err(|e| e.to_string())?;
    let mut csv = String::from("seconds,rss_mib,open_fds,requests_done\n");
    for s in &samples {
        let _ = writeln!(csv, "{:.1},{:.2},{},{}", s.t, s.rss_mib, s.fds, s.done);
    }
    std::fs::write(dir.join("samples.csv"), csv).map_err(|e| e.to_string())?;
    let figure = options
        .figure
        .clone()
        .unwrap_or_else(|| dir.join("soak.svg"));
    plot(&figure, &samples, &marks, warmup.as_secs_f64()).map_err(|e| format!("plot: {e}"))?;
    eprintln!("soak: figure {}", figure.display());
    drop(gw);
    Ok(problems.is_empty())
}

fn plot(
    path: &std::path::Path,
    samples: &[Sample],
    restarts: &[f64],
    warmup: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(280);
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let rss_max = samples.iter().map(|s| s.rss_mib).fold(1.0, f64::max) * 1.15;
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(1) as f64 * 1.15;
    for (area, title, y_max, unit, pick) in [
        (
            &top,
            "gateway resident memory (RSS)",
            rss_max,
            "MiB",
            (|s: &Sample| s.rss_mib) as fn(&Sample) -> f64,
        ),
        (
            &bottom,
            "gateway open file descriptors",
            fds_max,
            "fds",
            |s: &Sample| s.fds as f64,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        chart.draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, pick(s))),
            BLUE.stroke_width(2),
        ))?;
        for &t in restarts {
            chart.draw_series(LineSeries::new(
                [(t, 0.0), (t, y_max)],
                RED.mix(0.6).stroke_width(1),
            ))?;
        }
        chart.draw_series(LineSeries::new(
            [(warmup, 0.0), (warmup, y_max)],
            BLACK.mix(0.4).stroke_width(1),
        ))?;
    }
    root.present()?;
    Ok(())
}
