//! heartbeat-bench: a fleet of simulated workers heartbeats the real operator on
//! tests/testenv with real bound tokens. The fleet grows in steps (default 1,000 then 10,000
//! workers); at each step it reports heartbeats/s handled, operator CPU and RSS, handler
//! latency (p50/p99), TokenReviews and status writes per heartbeat. At the first step it
//! stops a random 1% of the workers and measures how long after `staleAfterSeconds` each
//! is marked Stale. Writes JSON; a benchmark, not a test: it asserts nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt as _};
use rbee_api::RbeeWorker;
use rbee_testkit::bench::{self, CpuWindow, Scrape};
use rbee_testkit::operator::OperatorProcess;
use rbee_testkit::{TempNamespace, client};

/// Heartbeat ingest, operator memory and stale detection against the real operator.
#[derive(Parser, Debug)]
struct Args {
    /// Fleet sizes to grow through, comma separated; each is measured once it heartbeats.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    steps: Vec<usize>,
    /// Heartbeat interval of every worker, seconds.
    #[arg(long, default_value_t = 10)]
    interval_seconds: u64,
    /// staleAfterSeconds of every worker.
    #[arg(long, default_value_t = 20)]
    stale_after_seconds: u64,
    /// Measured window at the largest step, seconds. Status writes per heartbeat come in
    /// waves of the operator's report period (120 s): keep windows whole multiples of it.
    #[arg(long, default_value_t = 240)]
    duration_seconds: u64,
    /// Measured window at the smaller steps, seconds.
    #[arg(long, default_value_t = 120)]
    step_duration_seconds: u64,
    /// Percent of the first step's workers stopped to time stale detection (0: skip).
    #[arg(long, default_value_t = 1.0)]
    stale_percent: f64,
    /// Create requests (RbeeWorkers, TokenRequests) in flight at once.
    #[arg(long, default_value_t = 16)]
    client_concurrency: usize,
    #[command(flatten)]
    nodes: bench::BenchNodes,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/heartbeat.json")]
    out: std::path::PathBuf,
}

/// One heartbeat as the load generator saw it.
struct Sample {
    at: Instant,
    seconds: f64,
    code: u16,
}

type Samples = Arc<Mutex<Vec<Sample>>>;

/// A simulated worker's heartbeat loop.
struct Sender {
    stop: Arc<AtomicBool>,
    last_accepted_sent_at: Arc<Mutex<Option<jiff::Timestamp>>>,
}

struct Fleet {
    client: Client,
    ns: String,
    url: String,
    http: reqwest::Client,
    interval: Duration,
    stale_after_s: u64,
    samples: Samples,
    senders: BTreeMap<String, Sender>,
}

fn heartbeat_body(ns: &str, worker: &str, pod: &Pod, seq: u64) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "worker": {"namespace": ns, "name": worker, "podName": pod.metadata.name, "podUid": pod.metadata.uid},
        "sequence": seq, "sentAt": jiff::Timestamp::now().to_string(), "health": "healthy", "state": "ready", "loadProgressPercent": 100,
        "backend": "cpu", "vram": {"usedBytes": 8_000_000_000_u64 + (seq % 64) * 1_000_000, "totalBytes": 24_000_000_000_u64},
        "memoryRssBytes": 700_000_000_u64 + seq, "diskFreeBytes": 50_000_000_000_u64, "inFlightRequests": 0})
}

impl Fleet {
    /// Starts heartbeating for `worker` (whose pod runs) at a phase spread over the interval.
    fn spawn(&mut self, worker: String, pod: Pod, token: String, index: usize) {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(None));
        let (http, url, ns, samples) =
            (self.http.clone(), self.url.clone(), self.ns.clone(), self.samples.clone());
        let interval = self.interval;
        // The first beat goes out at once (as a worker's does when its model is loaded), the
        // second after 55–100% of an interval, which spreads the fleet over the interval.
        let second = interval.mul_f64(0.55 + 0.45 * (index as f64 * 0.618_033_988_75).fract());
        let (stop2, last2, name) = (stop.clone(), last.clone(), worker.clone());
        tokio::spawn(async move {
            let mut next = Instant::now();
            let mut seq = 1;
            while !stop2.load(Ordering::Relaxed) {
                let sent_at = jiff::Timestamp::now();
                let t = Instant::now();
                let req = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&heartbeat_body(&ns, &name, &pod, seq));
                let code = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                if code == 200
                    && let Ok(mut l) = last2.lock()
                {
                    *l = Some(sent_at);
                }
                if let Ok(mut s) = samples.lock() {
                    s.push(Sample { at: t, seconds: t.elapsed().as_secs_f64(), code });
                }
                next += if seq == 1 { second } else { interval };
                seq += 1;
                tokio::time::sleep_until(next.into()).await;
            }
        });
        self.senders.insert(worker, Sender { stop, last_accepted_sent_at: last });
    }

    /// Creates workers until there are `target`, and starts each one's heartbeats as soon as
    /// its pod runs (with a bound token, as kubelet would project it).
    async fn grow(
        &mut self,
        target: usize,
        concurrency: usize,
        pods: &Store<Pod>,
    ) -> anyhow::Result<f64> {
        let start = Instant::now();
        let from = self.senders.len();
        let workers: Api<RbeeWorker> = Api::namespaced(self.client.clone(), &self.ns);
        let objects = (from..target)
            .map(|i| {
                bench::bench_worker(&format!("w{i}"), self.interval.as_secs(), self.stale_after_s)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let creating =
            tokio::spawn(async move { bench::create_all(&workers, objects, concurrency).await });
        let deadline = Instant::now() + Duration::from_secs(1800);
        while self.senders.len() < target {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}/{target} workers heartbeating after 30 min",
                self.senders.len()
            );
            let running: Vec<Pod> = pods
                .state()
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter(|p| !self.senders.contains_key(p.name_any().trim_end_matches("-worker")))
                .map(|p| (**p).clone())
                .collect();
            let (client, ns) = (self.client.clone(), self.ns.clone());
            let minted: Vec<anyhow::Result<(Pod, String)>> = stream::iter(running)
                .map(|pod| {
                    let (client, ns) = (client.clone(), ns.clone());
                    async move {
                        let token = rbee_testkit::bound_token(&client, &ns, &pod).await?;
                        Ok((pod, token))
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
            for m in minted {
                let (pod, token) = m?;
                let worker = pod.name_any().trim_end_matches("-worker").to_string();
                let index = self.senders.len();
                self.spawn(worker, pod, token, index);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        creating.await??;
        Ok(start.elapsed().as_secs_f64())
    }
}

/// Measures one window of steady heartbeating.
async fn measure(
    op: &OperatorProcess,
    fleet: &Fleet,
    window: Duration,
) -> anyhow::Result<serde_json::Value> {
    let pid = op.pid().context("operator pid")?;
    let before = Scrape(op.metrics().await?);
    let cpu = CpuWindow::start(pid);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let end = Instant::now();
    let cores = cpu.cores();
    let wall = cpu.wall();
    let after = Scrape(op.metrics().await?);
    let (mut latencies, mut codes) = (Vec::new(), BTreeMap::<u16, u64>::new());
    if let Ok(s) = fleet.samples.lock() {
        for x in s.iter().filter(|x| x.at >= start && x.at < end) {
            latencies.push(x.seconds * 1000.0);
            *codes.entry(x.code).or_default() += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let delta = |series: &str| after.value(series) - before.value(series);
    let accepted = delta("rbee_operator_heartbeats_total{result=\"accepted\"}");
    let per_beat = |v: f64| if accepted > 0.0 { v / accepted } else { f64::NAN };
    let hist = "rbee_operator_heartbeat_duration_seconds";
    let pid = pid.to_string();
    Ok(serde_json::json!({
        "workers": fleet.senders.values().filter(|s| !s.stop.load(Ordering::Relaxed)).count(),
        "status_writes_per_s": delta("rbee_operator_status_writes_total") / wall,
        "window_s": wall,
        "heartbeats_sent": latencies.len(),
        "responses_by_status": codes,
        "heartbeats_accepted_per_s": accepted / wall,
        "cpu_cores": cores,
        "handler_p50_ms_upper_bound": bench::quantile_between(&before, &after, hist, 0.5) * 1000.0,
        "handler_p99_ms_upper_bound": bench::quantile_between(&before, &after, hist, 0.99) * 1000.0,
        "handler_mean_ms": delta(&format!("{hist}_sum")) / delta(&format!("{hist}_count")).max(1.0) * 1000.0,
        "client_round_trip_p50_ms": bench::percentile(&latencies, 0.5),
        "client_round_trip_p99_ms": bench::percentile(&latencies, 0.99),
        "token_reviews_per_heartbeat": per_beat(delta("rbee_operator_token_reviews_total")),
        "status_writes_per_heartbeat": per_beat(delta("rbee_operator_status_writes_total")),
        "operator_rss_mib": bench::status_mib(&pid, "VmRSS"),
        "operator_peak_rss_mib": bench::status_mib(&pid, "VmHWM"),
    }))
}

/// Stops `percent` of the fleet and times, per stopped worker, (first seen Stale by a watch
/// − last accepted heartbeat sent) − staleAfterSeconds.
async fn stale_detection(
    op: &OperatorProcess,
    fleet: &Fleet,
    percent: f64,
    stale_after: u64,
    seen: &Mutex<HashMap<String, jiff::Timestamp>>,
) -> anyhow::Result<serde_json::Value> {
    let names: Vec<&String> = fleet.senders.keys().collect();
    let k = ((names.len() as f64) * percent / 100.0).ceil().max(1.0) as usize;
    let mut x = jiff::Timestamp::now().as_nanosecond() as u64 | 1;
    let mut chosen = std::collections::BTreeSet::new();
    while chosen.len() < k.min(names.len()) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chosen.insert(names[(x % names.len() as u64) as usize].clone());
    }
    let before = Scrape(op.metrics().await?);
    let started = Instant::now();
    for name in &chosen {
        fleet.senders[name].stop.store(true, Ordering::Relaxed);
    }
    let timeout = Duration::from_secs(stale_after + 2 * fleet.interval.as_secs() + 60);
    let _ = bench::poll_until(timeout, Duration::from_millis(100), "stopped workers Stale", || {
        let seen = seen.lock().map_err(|e| e.to_string())?;
        let n = chosen.iter().filter(|c| seen.contains_key(*c)).count();
        if n == chosen.len() { Ok(()) } else { Err(format!("{n}/{} Stale", chosen.len())) }
    })
    .await;
    // Stale workers stay in the fleet until every stopped one was seen; the status writes
    // per second meanwhile show what a Stale worker costs.
    let waited = started.elapsed().as_secs_f64();
    let writes_per_s = (Scrape(op.metrics().await?).value("rbee_operator_status_writes_total")
        - before.value("rbee_operator_status_writes_total"))
        / waited;
    let workers: Api<RbeeWorker> = Api::namespaced(fleet.client.clone(), &fleet.ns);
    for name in &chosen {
        workers.delete(name, &Default::default()).await?;
    }
    let seen = seen.lock().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut deltas: Vec<f64> = chosen
        .iter()
        .filter_map(|c| {
            let last = (*fleet.senders[c].last_accepted_sent_at.lock().ok()?)?;
            let stale = seen.get(c)?;
            Some(stale.duration_since(last).as_secs_f64() - stale_after as f64)
        })
        .collect();
    deltas.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "fleet": names.len(), "stopped": chosen.len(), "detected": deltas.len(),
        "stale_after_seconds": stale_after,
        "over_threshold_s": deltas,
        "p50_over_threshold_s": bench::percentile(&deltas, 0.5),
        "p99_over_threshold_s": bench::percentile(&deltas, 0.99),
        "status_writes_per_s_while_stopped": writes_per_s,
        "seconds_until_all_seen": waited,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = client().await?;
    args.nodes.ensure(&client).await?;
    let ns = TempNamespace::create(&client, "bench-heartbeat", &[]).await?;
    let result = run(&args, &client, &ns.name).await;
    eprintln!("heartbeat-bench: deleting namespace {}", ns.name);
    bench::delete_namespace_and_wait(&client, &ns.name, Duration::from_secs(1800)).await?;
    let results = result?;
    bench::write_results(&args.out, &results)
}

async fn run(args: &Args, client: &Client, ns: &str) -> anyhow::Result<serde_json::Value> {
    let op = OperatorProcess::start(ns, &[])?;
    bench::wait_leader(&op).await?;
    let pid = op.pid().context("operator pid")?.to_string();
    let pods = bench::watch_store(Api::<Pod>::namespaced(client.clone(), ns));
    pods.wait_until_ready().await?;
    let stale_seen = bench::watch_first_phase(Api::namespaced(client.clone(), ns), "Stale");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_at_0 = bench::status_mib(&pid, "VmRSS");
    let mut fleet = Fleet {
        client: client.clone(),
        ns: ns.into(),
        url: op.heartbeat_url(),
        http: reqwest::Client::builder().pool_max_idle_per_host(1024).build()?,
        interval: Duration::from_secs(args.interval_seconds),
        stale_after_s: args.stale_after_seconds,
        samples: Arc::default(),
        senders: BTreeMap::new(),
    };
    let (mut steps, mut stale) = (Vec::new(), serde_json::Value::Null);
    let largest = args.steps.iter().copied().max().unwrap_or(0);
    for (i, &n) in args.steps.iter().enumerate() {
        eprintln!("heartbeat-bench: growing the fleet to {n} workers");
        let grow_s = fleet.grow(n, args.client_concurrency, &pods).await?;
        let warmup = Duration::from_secs(2 * args.interval_seconds);
        eprintln!(
            "heartbeat-bench: {n} workers heartbeating after {grow_s:.0}s; warm-up {warmup:?}"
        );
        tokio::time::sleep(warmup).await;
        let window = if n == largest { args.duration_seconds } else { args.step_duration_seconds };
        let mut m = measure(&op, &fleet, Duration::from_secs(window)).await?;
        m["grow_seconds"] = serde_json::json!(grow_s);
        eprintln!("heartbeat-bench: {n} workers: {m}");
        steps.push(m);
        if i == 0 && args.stale_percent > 0.0 {
            eprintln!("heartbeat-bench: stopping {}% of {n} workers", args.stale_percent);
            stale = stale_detection(
                &op,
                &fleet,
                args.stale_percent,
                args.stale_after_seconds,
                &stale_seen,
            )
            .await?;
            eprintln!("heartbeat-bench: stale detection: {stale}");
        }
    }
    for s in fleet.senders.values() {
        s.stop.store(true, Ordering::Relaxed);
    }
    Ok(serde_json::json!({
        "machine": bench::machine(),
        "note": "operator, API server, etcd, scheduler, kwok and this load generator share the machine",
        "interval_seconds": args.interval_seconds,
        "stale_after_seconds": args.stale_after_seconds,
        "status_report_period_seconds": rbee_operator::cli::DEFAULT_STATUS_REPORT_PERIOD_SECONDS,
        "operator_rss_mib_at_0": rss_at_0,
        "steps": steps,
        "stale_detection": stale,
    }))
}
