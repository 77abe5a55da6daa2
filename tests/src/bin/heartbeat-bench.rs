//! heartbeat-bench: N simulated workers heartbeat the real operator on tests/testenv with
//! real bound tokens; reports heartbeats/s handled, operator CPU, handler latency (p50/p99),
//! TokenReviews and status writes per heartbeat, and writes them as JSON. A benchmark, not a
//! test: it asserts nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use rbee_api::RbeeWorker;
use rbee_testkit::operator::OperatorProcess;
use rbee_testkit::{TempNamespace, client, eventually};

/// Heartbeat ingest benchmark against the real operator on tests/testenv.
#[derive(Parser, Debug)]
struct Args {
    /// Simulated workers (each a real RbeeWorker with a kwok pod; the fake node holds 110 pods).
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Heartbeat interval of every worker, seconds.
    #[arg(long, default_value_t = 1)]
    interval_seconds: u64,
    /// Measured duration, seconds (after one warm-up round).
    #[arg(long, default_value_t = 60)]
    duration_seconds: u64,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/heartbeat-bench.json")]
    out: std::path::PathBuf,
}

fn scrape_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Upper bound of the bucket holding quantile `q` of the observations between two scrapes.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b)))
        .collect();
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    delta.iter().find(|(_, c)| *c >= q * total).map_or(f64::NAN, |(le, _)| *le)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = client().await?;
    let ns = TempNamespace::create(&client, "hb-bench", &[]).await?;
    let op = OperatorProcess::start(&ns.name, &["--concurrency=32"])?;
    let pid = op.pid().context("operator pid")?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let stale = args.interval_seconds * 5;
    eprintln!("creating {} workers", args.workers);
    for i in 0..args.workers {
        let w: RbeeWorker = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbee.dev/v1alpha1", "kind": "RbeeWorker", "metadata": {"name": format!("w{i}")},
            "spec": {"backend": "cpu", "model": {"path": "/m.gguf"}, "nodeSelector": {"kubernetes.io/hostname": "rbee-gpu-0"},
                "heartbeat": {"intervalSeconds": args.interval_seconds, "staleAfterSeconds": stale}, "restartPolicy": {"mode": "Never"}}
        }))?;
        workers.create(&PostParams::default(), &w).await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let running = eventually(Duration::from_secs(300), "all pods Running", || {
        let pods = pods.clone();
        let n = args.workers;
        async move {
            let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
            let up: Vec<Pod> = list
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            if up.len() == n { Ok(up) } else { Err(format!("{}/{n} running", up.len())) }
        }
    })
    .await?;
    let mut senders = Vec::new();
    for pod in &running {
        let token = rbee_testkit::bound_token(&client, &ns.name, pod).await?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        senders.push((name.trim_end_matches("-worker").to_string(), pod.clone(), token));
    }
    let url = op.heartbeat_url();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let beat = |worker: &str, pod: &Pod, seq: u64| {
        serde_json::json!({
        "version": 1, "worker": {"namespace": ns.name, "name": worker, "podName": pod.metadata.name, "podUid": pod.metadata.uid},
        "sequence": seq, "sentAt": jiff::Timestamp::now().to_string(), "health": "healthy", "state": "ready", "loadProgressPercent": 100,
        "backend": "cpu", "vram": {"usedBytes": 8_000_000_000_u64 + seq * 1_000_000, "totalBytes": 24_000_000_000_u64},
        "memoryRssBytes": 700_000_000_u64 + seq, "diskFreeBytes": 50_000_000_000_u64, "inFlightRequests": 0})
    };
    // Warm-up: one beat each fills the TokenReview cache.
    for (worker, pod, token) in &senders {
        http.post(&url).bearer_auth(token).json(&beat(worker, pod, 1)).send().await?;
    }
    tokio::time::sleep(Duration::from_secs(args.interval_seconds)).await;

    let before = op.metrics().await?;
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration_seconds);
    let mut tasks = Vec::new();
    for (i, (worker, pod, token)) in senders.into_iter().enumerate() {
        let (http, url, interval) =
            (http.clone(), url.clone(), Duration::from_secs(args.interval_seconds));
        let ns_name = ns.name.clone();
        let phase = interval.mul_f64(i as f64 / args.workers.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
            tokio::time::sleep(phase).await;
            let mut next = Instant::now();
            let mut seq = 2;
            while Instant::now() < deadline {
                let body = serde_json::json!({
                    "version": 1, "worker": {"namespace": ns_name, "name": worker, "podName": pod.metadata.name, "podUid": pod.metadata.uid},
                    "sequence": seq, "sentAt": jiff::Timestamp::now().to_string(), "health": "healthy", "state": "ready", "loadProgressPercent": 100,
                    "backend": "cpu", "vram": {"usedBytes": 8_000_000_000_u64 + seq * 1_000_000, "totalBytes": 24_000_000_000_u64},
                    "memoryRssBytes": 700_000_000_u64 + seq, "diskFreeBytes": 50_000_000_000_u64, "inFlightRequests": 0});
                let t = Instant::now();
                let code = http.post(&url).bearer_auth(&token).json(&body).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                latencies.push(t.elapsed().as_secs_f64());
                *codes.entry(code).or_default() += 1;
                seq += 1;
                next += interval;
                tokio::time::sleep_until(next.into()).await;
            }
            (latencies, codes)
        }));
    }
    let mut latencies = Vec::new();
    let mut codes: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        let (l, c) = t.await?;
        latencies.extend(l);
        for (k, v) in c {
            *codes.entry(k).or_default() += v;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let after = op.metrics().await?;
    let accepted = scrape_value(&after, "rbee_operator_heartbeats_total{result=\"accepted\"} ")
        - scrape_value(&before, "rbee_operator_heartbeats_total{result=\"accepted\"} ");
    let writes = scrape_value(&after, "rbee_operator_status_writes_total ")
        - scrape_value(&before, "rbee_operator_status_writes_total ");
    let reviews = scrape_value(&after, "rbee_operator_token_reviews_total ")
        - scrape_value(&before, "rbee_operator_token_reviews_total ");
    let (hb, ha) = (
        histogram(&before, "rbee_operator_heartbeat_duration_seconds"),
        histogram(&after, "rbee_operator_heartbeat_duration_seconds"),
    );
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(f64::NAN)
            * 1000.0
    };
    let rss_kib: f64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let results = serde_json::json!({
        "workers": args.workers,
        "interval_seconds": args.interval_seconds,
        "duration_seconds": wall,
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "note": "operator, API server and load generator share the machine"},
        "heartbeats_sent": latencies.len(),
        "responses_by_status": codes,
        "heartbeats_accepted_per_s": accepted / wall,
        "operator_cpu_cores": cpu / wall,
        "handler_p50_ms_upper_bound": quantile(&hb, &ha, 0.5) * 1000.0,
        "handler_p99_ms_upper_bound": quantile(&hb, &ha, 0.99) * 1000.0,
        "client_round_trip_p50_ms": pct(0.5),
        "client_round_trip_p99_ms": pct(0.99),
        "token_reviews_per_heartbeat": if accepted > 0.0 { reviews / accepted } else { f64::NAN },
        "status_writes_per_heartbeat": if accepted > 0.0 { writes / accepted } else { f64::NAN },
        "kubelet_lease_writes_per_heartbeat_reference": 1.0,
        "operator_rss_mib": rss_kib / 1024.0,
    });
    let text = serde_json::to_string_pretty(&results)?;
    println!("{text}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, text)?;
    drop(op);
    ns.delete().await?;
    Ok(())
}
