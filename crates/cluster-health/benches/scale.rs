//! Scale benchmark: active checks of many endpoints on loopback.
//!
//! `cargo bench -p cluster-health --bench scale -- [--endpoints N]
//! [--seconds S] [--interval-ms I] [--per-responder K] [--keepalive 0|1]
//! [--null-checker 0|1] [--reqwest 0|1]` (defaults: 10 000 endpoints, 60 s,
//! 1000 ms, 4000, keep-alive on; `--null-checker 1` replaces HTTP with a checker that does
//! no I/O, to measure the orchestrator alone; `--reqwest 1` probes through
//! reqwest, the transport of `https://` nodes, instead of the crate's
//! minimal HTTP/1.1 client).
//!
//! The endpoints are served by child processes of this same binary
//! (`--responder K`), each listening on K ports of 127.0.0.1 and answering
//! every `GET` with a small OpenAI model list over keep-alive HTTP/1.1. They
//! run in separate processes so that the figures below are those of the
//! checker alone, and so that no process needs more than about 2 K file
//! descriptors per listener group (the `ulimit -n` on the build machines is
//! 20 000: one process holding 10 000 listeners plus 10 000 accepted
//! connections would not fit; the checker itself needs one per node).
//! Every endpoint is a distinct `host:port`, so the checker keeps one
//! pooled connection per node, as it would with real nodes.
//!
//! The parent builds a `ClusterHealth` with the default `HttpHealthChecker`
//! (`GET /v1/models`, 2 s timeout, body validated), `check_interval` = I,
//! starts it on a 2-worker tokio runtime, lets it run S seconds, and
//! reports: checks completed (and per second), failures, process CPU time
//! (user + system from `/proc/self/stat`) as a fraction of one core over
//! the run, and peak RSS (`VmHWM` in `/proc/self/status`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_health::{ClusterHealth, HealthChecker, HealthError, HttpHealthChecker};
use cluster_types::{HealthConfig, NodeSpec, NodeStatus};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BODY: &str = r#"{"object":"list","data":[{"id":"tiny-llama","object":"model"}]}"#;

/// A checker that does no I/O, to measure the orchestrator alone.
struct NullChecker;

#[async_trait::async_trait]
impl HealthChecker for NullChecker {
    async fn check(&self, _node: &NodeSpec) -> Result<Duration, HealthError> {
        Ok(Duration::from_micros(100))
    }
}

struct Args {
    endpoints: usize,
    seconds: u64,
    interval: Duration,
    per_responder: usize,
    keepalive: bool,
    null_checker: bool,
    reqwest: bool,
    responder: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        endpoints: 10_000,
        seconds: 60,
        interval: Duration::from_millis(1000),
        per_responder: 4000,
        keepalive: true,
        null_checker: false,
        reqwest: false,
        responder: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| usage(&arg))
        };
        match arg.as_str() {
            "--endpoints" => args.endpoints = usize::try_from(value()).unwrap(),
            "--seconds" => args.seconds = value(),
            "--interval-ms" => args.interval = Duration::from_millis(value()),
            "--per-responder" => args.per_responder = usize::try_from(value()).unwrap().max(1),
            "--keepalive" => args.keepalive = value() != 0,
            "--null-checker" => args.null_checker = value() != 0,
            "--reqwest" => args.reqwest = value() != 0,
            "--responder" => args.responder = Some(usize::try_from(value()).unwrap()),
            // `cargo bench` passes `--bench`; ignore it and other harness flags.
            _ => {}
        }
    }
    args
}

fn usage(flag: &str) -> ! {
    eprintln!("scale: {flag} needs a number");
    std::process::exit(2);
}

fn main() {
    let args = parse_args();
    if let Some(count) = args.responder {
        responder(count);
        return;
    }
    checker(&args);
}

/// Child mode: `count` listeners, ports printed one per line, then `READY`;
/// exits when stdin closes (the parent went away).
fn responder(count: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut stdout = std::io::stdout().lock();
        for _ in 0..count {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            writeln!(stdout, "{}", listener.local_addr().unwrap().port()).unwrap();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                            BODY.len()
                        );
                        let mut buf = [0u8; 2048];
                        let mut filled = 0;
                        loop {
                            let Ok(n) = stream.read(&mut buf[filled..]).await else { return };
                            if n == 0 {
                                return;
                            }
                            filled += n;
                            // One request per head; the probe has no body.
                            while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                                if stream.write_all(response.as_bytes()).await.is_err() {
                                    return;
                                }
                                buf.copy_within(end + 4..filled, 0);
                                filled -= end + 4;
                            }
                            if filled == buf.len() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        writeln!(stdout, "READY").unwrap();
        drop(stdout);
        // Exit when the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        })
        .await;
    });
}

/// CPU time (user + system) of this process so far.
fn cpu_time(ticks_per_sec: f64) -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    Duration::from_secs_f64((utime + stime) / ticks_per_sec)
}

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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

fn checker(args: &Args) {
    let ticks = clock_ticks();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<Child> = Vec::new();
    let mut ports: Vec<u16> = Vec::with_capacity(args.endpoints);
    let mut remaining = args.endpoints;
    while remaining > 0 {
        let count = remaining.min(args.per_responder);
        remaining -= count;
        let mut child = Command::new(&exe)
            .args(["--responder", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            if line == "READY" {
                break;
            }
            ports.push(line.parse().unwrap());
        }
        children.push(child);
    }
    assert_eq!(ports.len(), args.endpoints, "responders did not start");
    println!(
        "scale: {} endpoints on 127.0.0.1 served by {} responder processes; interval {:?}; {} s",
        args.endpoints,
        children.len(),
        args.interval,
        args.seconds
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let kinds: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let kinds2 = Arc::clone(&kinds);
    let (ok2, failed2, ok3) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&ok));
    let report = runtime.block_on(async move {
        let ok = ok3;
        let config = HealthConfig {
            check_interval: args.interval,
            ..HealthConfig::default()
        };
        let mut checker = HttpHealthChecker::builder().timeout(config.timeout);
        if !args.keepalive {
            checker = checker.pool_max_idle_per_host(0);
        }
        if args.reqwest {
            checker = checker.lean_http1(false);
        }
        let health = ClusterHealth::builder()
            .checker(if args.null_checker {
                Arc::new(NullChecker)
            } else {
                Arc::new(checker.build().unwrap())
            })
            .config(config)
            .seed(42)
            .on_health_check(move |report| match &report.result {
                Ok(_) => {
                    ok2.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    failed2.fetch_add(1, Ordering::Relaxed);
                    let kind = match &**error {
                        HealthError::Timeout { .. } => "timeout",
                        HealthError::Network { .. } => "network",
                        HealthError::FailedStatus { .. } => "status",
                        HealthError::InvalidResponse { .. } => "invalid",
                        _ => "other",
                    };
                    *kinds2.lock().entry(kind).or_default() += 1;
                }
            })
            .build()
            .unwrap();
        let nodes = ports.iter().enumerate().map(|(i, port)| {
            NodeSpec::new(format!("node-{i:05}"), format!("http://127.0.0.1:{port}"))
        });
        for node in nodes {
            health.add_node(node);
        }
        println!(
            "  {} nodes tracked, not yet checked: rss {} MB",
            health.node_ids().len(),
            status_kib("VmRSS:") / 1024
        );
        let cpu0 = cpu_time(ticks);
        let t0 = Instant::now();
        health.start([]).unwrap();
        let mut last = (Instant::now(), cpu_time(ticks), 0u64);
        for second in 1..=args.seconds {
            tokio::time::sleep_until(tokio::time::Instant::from_std(
                t0 + Duration::from_secs(second),
            ))
            .await;
            if second % 10 == 0 || second == args.seconds {
                let now = (Instant::now(), cpu_time(ticks), ok.load(Ordering::Relaxed));
                let wall = (now.0 - last.0).as_secs_f64();
                println!(
                    "  t={second:>3}s  checks/s {:>7.0}  cpu {:>5.1}% of one core  rss {:>4} MB",
                    (now.2 - last.2) as f64 / wall,
                    (now.1 - last.1).as_secs_f64() / wall * 100.0,
                    status_kib("VmRSS:") / 1024
                );
                last = now;
            }
        }
        let wall = t0.elapsed();
        let cpu = cpu_time(ticks) - cpu0;
        let table = health.routing_table();
        let healthy = table
            .iter()
            .filter(|(_, v)| v.status == NodeStatus::Healthy)
            .count();
        health.stop();
        (wall, cpu, healthy)
    });
    let (wall, cpu, healthy) = report;
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.kill();
        let _ = child.wait();
    }
    let checks = ok.load(Ordering::Relaxed);
    let failures = failed.load(Ordering::Relaxed);
    println!("scale: results");
    println!("  endpoints            {}", args.endpoints);
    println!("  healthy at the end   {healthy}");
    println!(
        "  checks ok / failed   {checks} / {failures}  ({:.0} checks/s, expected {:.0})",
        checks as f64 / wall.as_secs_f64(),
        args.endpoints as f64 / args.interval.as_secs_f64()
    );
    println!(
        "  CPU                  {:.1} s over {:.1} s = {:.1}% of one core (target <= 100%)",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    println!("  failures by kind     {:?}", kinds.lock());
    println!("  keep-alive           {}", args.keepalive);
    println!(
        "  transport            {}",
        if args.null_checker {
            "none (null checker)"
        } else if args.reqwest {
            "reqwest"
        } else {
            "minimal HTTP/1.1 (default for http://)"
        }
    );
    println!(
        "  peak RSS (VmHWM)     {} MB (target <= 200 MB)",
        status_kib("VmHWM:") / 1024
    );
}
