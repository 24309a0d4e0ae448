//! `cargo xtask bench proxy`: what the gateway costs on the request path,
//! next to nginx.
//!
//! One run starts, as separate processes, a simulated node (cluster-sim,
//! answering instantly: time scale 10⁶, 8 output tokens, keep-alive), the
//! gateway (`mlx-cluster serve`'s exact code path, one static node) and
//! nginx (Debian's `nginx-light`, keep-alive to the node, see
//! `scripts/bench-proxy/nginx.conf.template`), then drives the same small
//! non-streamed chat completion with wrk against
//!
//! - (a) the node directly,
//! - (b) the gateway in front of it,
//! - (c) nginx in front of it,
//!
//! twice: at a fixed concurrency for throughput (requests/s, p50/p99, CPU
//! time per request of the proxy process read from `/proc/PID/stat`), and
//! with one connection for the latency a hop adds when nothing queues.
//! Each measurement is repeated (`--rounds`, targets interleaved) and the
//! median is reported, as a Markdown table for `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p cluster-gateway --example proxy_bench -- [--concurrency 32]
//!     [--duration 10] [--latency-duration 5] [--rounds 3] [--threads 1]
//! ```
//!
//! The example re-runs itself for the child processes (`__node`,
//! `__gateway CONFIG`), so one build holds everything.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

/// The same allocator as the `mlx-cluster` binary (the gateway child runs
/// in this process image).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NGINX_TEMPLATE: &str = include_str!("../../../scripts/bench-proxy/nginx.conf.template");
const WRK_SCRIPT: &str = include_str!("../../../scripts/bench-proxy/post.lua");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__node") => child_node(),
        Some("__gateway") => {
            let config = args.get(2).cloned().unwrap_or_default();
            let cli =
                cluster_gateway::Cli::parse_from(["mlx-cluster", "serve", "--config", &config]);
            cluster_gateway::run(cli)
        }
        _ => match parent(&Options::parse()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("proxy-bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Options of the proxy benchmark.
#[derive(Debug, Parser)]
#[command(name = "proxy-bench", about = "Gateway vs nginx vs direct, with wrk")]
struct Options {
    /// Connections for the throughput runs.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Seconds of each one-connection latency run.
    #[arg(long, default_value_t = 5)]
    latency_duration: u32,
    /// Repetitions of every measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// nginx worker processes and gateway worker threads (default: CPUs).
    #[arg(long)]
    workers: Option<usize>,
}

fn child_node() -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = cluster_sim::SimNodeConfig {
            id: "bench-node".into(),
            time_scale: 1e6,
            keep_alive: true,
            default_max_tokens: 8,
            stream_chunk_interval_ms: 0.0,
            ..cluster_sim::SimNodeConfig::default()
        };
        let node = cluster_sim::SimNode::start(config).await.unwrap();
        println!("{}", node.base_url());
        std::io::stdout().flush().unwrap();
        // Exit when the parent closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .unwrap();
        node.shutdown().await;
    });
    ExitCode::SUCCESS
}

/// A child process that is stopped (SIGTERM, then killed) on drop.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "proxy-bench: {} did not stop on SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `GET path` over HTTP/1.0 with std only; the status code.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn wait_ready(addr: SocketAddr, path: &str, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_status(addr, path) == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{what} at {addr} did not answer {path} with 200 within 30 s"
    ))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (ppid, utime + stime in ticks) of a process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU ticks of `pid` and its direct children (nginx workers).
fn cpu_ticks(pid: u32) -> u64 {
    let mut total = proc_stat(pid).map_or(0, |(_, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && let Some((ppid, t)) = proc_stat(child)
                && ppid == pid
            {
                total += t;
            }
        }
    }
    total
}

#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn parse_duration_us(text: &str) -> Option<f64> {
    let (num, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Result<WrkResult, String> {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_us = parse_duration_us(v).unwrap_or(0.0),
            ["99%", v] => r.p99_us = parse_duration_us(v).unwrap_or(0.0),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if r.requests == 0 {
        return Err(format!("cannot read wrk's output:\n{out}"));
    }
    Ok(r)
}

fn wrk(
    script: &Path,
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u32,
) -> Result<WrkResult, String> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", threads.min(connections)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .map_err(|e| {
            format!("cannot run wrk ({e}); run `cargo xtask setup` (Debian package wrk)")
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&text)
}

struct Target {
    name: &'static str,
    url: String,
    /// The proxy process to account CPU to (none for the direct run).
    proxy_pid: Option<u32>,
}

#[derive(Debug, Default, Clone)]
struct Samples {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu_us: Vec<f64>,
    node_cpu_us: Vec<f64>,
    lat_p50: Vec<f64>,
    lat_p99: Vec<f64>,
    errors: u64,
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn parent(opts: &Options) -> Result<(), String> {
    for (program, package) in [("wrk", "wrk"), ("nginx", "nginx-light")] {
        let found = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {program} || test -x /usr/sbin/{program}"),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!(
                "{program} not found: run `cargo xtask setup` (Debian package {package})"
            ));
        }
    }
    let workers = opts
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let dir = std::env::temp_dir().join(format!("mlx-cluster-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = run_all(opts, &dir, workers);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_all(opts: &Options, dir: &Path, workers: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let script = dir.join("post.lua");
    std::fs::write(&script, WRK_SCRIPT).map_err(|e| e.to_string())?;

    // (a) the node.
    let mut node_child = Command::new(&exe)
        .arg("__node")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .map_err(|e| format!("cannot start the node: {e}"))?;
    let node_url = {
        let stdout = node_child.stdout.take().ok_or("node stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim().to_owned()
    };
    let node = Proc {
        child: node_child,
        name: "node",
    };
    let node_addr: SocketAddr = node_url
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("node URL {node_url:?}: {e}"))?;
    wait_ready(node_addr, "/v1/models", "the simulated node")?;

    // (b) the gateway. Without the prefill gate: it admits one prompt per
    // node at a time, a policy for inference servers that batch prefills
    // (routing.prefill_concurrency); in front of a node that answers at
    // once it would serialise the connections and measure the node's
    // round trip, not what the proxy costs.
    let gw_port = free_port()?;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[discovery]\nmode = \"static\"\nnodes = [{{ id = \"node\", url = \"{node_url}\" }}]\n\n[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\n\n[routing]\nprefill_concurrency = 0\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let gateway = Proc {
        child: Command::new(&exe)
            .arg("__gateway")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env("TOKIO_WORKER_THREADS", workers.to_string())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the gateway: {e}"))?,
        name: "gateway",
    };
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], gw_port));
    wait_ready(gw_addr, "/readyz", "the gateway")?;

    // (c) nginx.
    let nginx_port = free_port()?;
    let conf = NGINX_TEMPLATE
        .replace("{{DIR}}", &dir.display().to_string())
        .replace("{{LISTEN}}", &format!("127.0.0.1:{nginx_port}"))
        .replace("{{UPSTREAM}}", &node_addr.to_string())
        .replace("{{WORKERS}}", &workers.to_string());
    let conf_path: PathBuf = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let nginx_bin = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let nginx = Proc {
        child: Command::new(nginx_bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nginx: {e}"))?,
        name: "nginx",
    };
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    wait_ready(nginx_addr, "/v1/models", "nginx")?;

    let path = "/v1/chat/completions";
    let targets = [
        Target {
            name: "direct",
            url: format!("{node_url}{path}"),
            proxy_pid: None,
        },
        Target {
            name: "gateway",
            url: format!("http://{gw_addr}{path}"),
            proxy_pid: Some(gateway.pid()),
        },
        Target {
            name: "nginx",
            url: format!("http://{nginx_addr}{path}"),
            proxy_pid: Some(nginx.pid()),
        },
    ];
    let ticks = clock_ticks();
    let mut samples = vec![Samples::default(); targets.len()];
    eprintln!(
        "proxy-bench: {} rounds; throughput at {} connections for {} s, latency at 1 connection for {} s; {workers} workers",
        opts.rounds, opts.concurrency, opts.duration, opts.latency_duration
    );
    for round in 0..opts.rounds {
        for (t, s) in targets.iter().zip(samples.iter_mut()) {
            // Warm-up (connections, pools, caches), not measured.
            wrk(&script, &t.url, opts.threads, opts.concurrency, 1)?;
            let node_before = cpu_ticks(node.pid());
            let proxy_before = t.proxy_pid.map(cpu_ticks);
            let r = wrk(
                &script,
                &t.url,
                opts.threads,
                opts.concurrency,
                opts.duration,
            )?;
            let node_after = cpu_ticks(node.pid());
            let per_request = |ticks_used: u64| 1e6 * ticks_used as f64 / ticks / r.requests as f64;
            if let (Some(pid), Some(before)) = (t.proxy_pid, proxy_before) {
                s.cpu_us
                    .push(per_request(cpu_ticks(pid).saturating_sub(before)));
            }
            s.node_cpu_us
                .push(per_request(node_after.saturating_sub(node_before)));
            s.rps.push(r.rps);
            s.p50.push(r.p50_us);
            s.p99.push(r.p99_us);
            s.errors += r.errors;
            let l = wrk(&script, &t.url, 1, 1, opts.latency_duration)?;
            s.lat_p50.push(l.p50_us);
            s.lat_p99.push(l.p99_us);
            s.errors += l.errors;
            eprintln!(
                "  round {} {:<8} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs | 1 conn p50 {:>5.0} µs p99 {:>6.0} µs",
                round + 1,
                t.name,
                r.rps,
                r.p50_us,
                r.p99_us,
                l.p50_us,
                l.p99_us
            );
        }
    }
    drop(nginx);
    drop(gateway);
    drop(node);

    let direct = &samples[0];
    let (d_p50, d_lat50, d_lat99) = (
        median(&direct.p50),
        median(&direct.lat_p50),
        median(&direct.lat_p99),
    );
    let nginx_rps = median(&samples[2].rps);
    println!(
        "| target | req/s ({} conn) | p50 | p99 | added p50 | 1-conn p50 | 1-conn p99 | added 1-conn p50 / p99 | proxy CPU / req | node CPU / req | errors |",
        opts.concurrency
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (t, s) in targets.iter().zip(&samples) {
        let added = |v: f64, base: f64| {
            if t.proxy_pid.is_some() {
                format!("{:+.0} µs", v - base)
            } else {
                "–".to_owned()
            }
        };
        let rel = if t.name == "gateway" {
            format!(" ({:.2}× nginx)", median(&s.rps) / nginx_rps)
        } else {
            String::new()
        };
        println!(
            "| {} | {:.0}{rel} | {:.0} µs | {:.0} µs | {} | {:.0} µs | {:.0} µs | {} / {} | {} | {:.1} µs | {} |",
            t.name,
            median(&s.rps),
            median(&s.p50),
            median(&s.p99),
            added(median(&s.p50), d_p50),
            median(&s.lat_p50),
            median(&s.lat_p99),
            added(median(&s.lat_p50), d_lat50),
            added(median(&s.lat_p99), d_lat99),
            if s.cpu_us.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.1} µs", median(&s.cpu_us))
            },
            median(&s.node_cpu_us),
            s.errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 1s test @ http://x\n  1 threads and 1 connections\n  Latency Distribution\n     50%  425.00us\n     75%  500.00us\n     90%    1.00ms\n     99%    1.20ms\n  2345 requests in 1.00s, 1.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:   2345.67\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 2345);
        assert!((r.p50_us - 425.0).abs() < 1e-9);
        assert!((r.p99_us - 1200.0).abs() < 1e-9);
        assert!((r.rps - 2345.67).abs() < 1e-9);
        assert_eq!(r.errors, 3);
    }
}
