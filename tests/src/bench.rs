//! Shared parts of the scale benchmarks (`reconcile-bench`, `heartbeat-bench`): fake kwok
//! nodes that only benchmark workers land on, benchmark `RbeeWorker`s, bulk creation,
//! operator /metrics and /proc sampling, and the machine the numbers came from.
//! Benchmarks measure and report; nothing here asserts a timing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, Resource};
use rbee_api::RbeeWorker;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Label (and taint key) of the benchmark's fake nodes: only workers that tolerate the taint
/// land there, so tests that select `rbee-gpu-0` or `rbee-local-0` never meet them.
pub const BENCH_NODE_LABEL: &str = "rbee.dev/bench";

/// The benchmark nodes, as command-line flags.
#[derive(clap::Args, Debug)]
pub struct BenchNodes {
    /// Fake kwok nodes `rbee-bench-<i>` to create (tainted; only benchmark workers land there).
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Pod capacity of each benchmark node.
    #[arg(long, default_value_t = 3000)]
    pub pods_per_node: u32,
}

impl BenchNodes {
    /// Creates the nodes that do not exist yet.
    pub async fn ensure(&self, client: &Client) -> anyhow::Result<()> {
        ensure_bench_nodes(client, self.nodes, self.pods_per_node).await
    }
}

/// Prints the results and writes them to `out`.
pub fn write_results(out: &std::path::Path, results: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(results)?;
    println!("{text}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, text)?;
    Ok(())
}

/// Ensures `count` kwok-managed nodes `rbee-bench-<i>` with room for `pods_each` pods each.
pub async fn ensure_bench_nodes(
    client: &Client,
    count: usize,
    pods_each: u32,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..count {
        let name = format!("rbee-bench-{i}");
        if nodes.get_opt(&name).await?.is_some() {
            continue;
        }
        let capacity =
            serde_json::json!({"cpu": "100000", "memory": "100Ti", "pods": pods_each.to_string()});
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "type": "kwok", BENCH_NODE_LABEL: "true"}},
            "spec": {"taints": [{"key": BENCH_NODE_LABEL, "value": "true", "effect": "NoSchedule"}]},
            "status": {"capacity": capacity, "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": format!("10.241.0.{}", 10 + i)}]}
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
    }
    crate::eventually(Duration::from_secs(120), "benchmark nodes Ready", || {
        let nodes = nodes.clone();
        async move {
            let lp = ListParams::default().labels(&format!("{BENCH_NODE_LABEL}=true"));
            let list = nodes.list(&lp).await.map_err(|e| e.to_string())?.items;
            let ready = list.iter().filter(|n| node_schedulable(n)).count();
            if ready >= count { Ok(()) } else { Err(format!("{ready}/{count} Ready")) }
        }
    })
    .await
}

fn node_schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let only_bench_taint = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_none_or(|t| t.iter().all(|t| t.key == BENCH_NODE_LABEL));
    ready && only_bench_taint
}

/// A CPU `RbeeWorker` pinned to the benchmark nodes, never restarted by the operator.
pub fn bench_worker(name: &str, interval_s: u64, stale_after_s: u64) -> anyhow::Result<RbeeWorker> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "rbee.dev/v1alpha1", "kind": "RbeeWorker", "metadata": {"name": name},
        "spec": {"backend": "cpu", "model": {"path": "/models/m.gguf"},
            "nodeSelector": {BENCH_NODE_LABEL: "true"},
            "tolerations": [{"key": BENCH_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "heartbeat": {"intervalSeconds": interval_s, "staleAfterSeconds": stale_after_s},
            "restartPolicy": {"mode": "Never"}}
    }))?)
}

/// Creates every object with at most `concurrency` requests in flight.
pub async fn create_all<K>(api: &Api<K>, objects: Vec<K>, concurrency: usize) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &o).await }
        })
        .buffer_unordered(concurrency.max(1))
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// A watch-fed cache of one kind in one namespace (reads cost the API server nothing).
pub fn watch_store<K>(api: Api<K>) -> reflector::Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(stream.touched_objects().for_each(|_| async {}));
    reader
}

/// Wall-clock time each `RbeeWorker` was first seen by a watch in phase `phase`.
pub fn watch_first_phase(
    api: Api<RbeeWorker>,
    phase: &'static str,
) -> Arc<Mutex<HashMap<String, jiff::Timestamp>>> {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let out = seen.clone();
    let stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
    tokio::spawn(stream.for_each(move |w| {
        if let Ok(w) = w {
            let p = w.status.as_ref().and_then(|s| s.phase.as_ref()).map(|p| format!("{p:?}"));
            if p.as_deref() == Some(phase) {
                let name = w.metadata.name.clone().unwrap_or_default();
                if let Ok(mut seen) = seen.lock() {
                    seen.entry(name).or_insert_with(jiff::Timestamp::now);
                }
            }
        }
        async {}
    }));
    out
}

/// Polls a cheap in-memory `check` every `every` until it returns `Ok`, or fails after
/// `timeout` with its last answer; fine-grained enough to time sub-second runs.
pub async fn poll_until(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() >= deadline => {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last: {why}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Deletes a namespace and waits until it is gone (its pods deleted by kwok).
pub async fn delete_namespace_and_wait(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    crate::eventually(timeout, &format!("namespace {name} gone"), || {
        let api = api.clone();
        let name = name.to_string();
        async move {
            match api.get_opt(&name).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still terminating".into()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// One scrape of the operator's /metrics text.
pub struct Scrape(pub String);

impl Scrape {
    /// The value of a sample line (`name{labels}` exactly as printed), 0 when absent.
    pub fn value(&self, series: &str) -> f64 {
        let prefix = format!("{series} ");
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// `(le, cumulative count)` of a histogram.
    pub fn histogram(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        self.0
            .lines()
            .filter_map(|l| {
                let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    }
}

/// Upper bound of the histogram bucket holding quantile `q` of the observations made
/// between two scrapes.
pub fn quantile_between(before: &Scrape, after: &Scrape, name: &str, q: f64) -> f64 {
    let b = before.histogram(name);
    let delta: Vec<(f64, f64)> = after
        .histogram(name)
        .into_iter()
        .map(|(le, c)| (le, c - b.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, v)| *v)))
        .collect();
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    delta.iter().find(|(_, c)| *c >= q * total && total > 0.0).map_or(f64::NAN, |(le, _)| *le)
}

/// The `q` quantile of sorted values (nearest rank), NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// User+system CPU seconds of a process (`self` for this one).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/<pid>/status` field in MiB (`VmRSS`, `VmHWM`).
pub fn status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (v.iter().take(8).sum::<f64>() - idle) / 100.0
}

/// CPU time of a process and of the machine over a window.
pub struct CpuWindow {
    pid: String,
    start: Instant,
    process0: f64,
    own0: f64,
    machine0: f64,
}

impl CpuWindow {
    /// Starts measuring `pid`, this process and the machine.
    pub fn start(pid: u32) -> Self {
        let pid = pid.to_string();
        Self {
            process0: cpu_seconds(&pid),
            own0: cpu_seconds("self"),
            machine0: machine_busy_seconds(),
            start: Instant::now(),
            pid,
        }
    }

    /// Seconds since start.
    pub fn wall(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// `{process, load_generator, machine}` busy cores averaged over the window.
    pub fn cores(&self) -> serde_json::Value {
        let wall = self.wall().max(1e-9);
        serde_json::json!({
            "process": (cpu_seconds(&self.pid) - self.process0) / wall,
            "load_generator": (cpu_seconds("self") - self.own0) / wall,
            "machine": (machine_busy_seconds() - self.machine0) / wall,
        })
    }
}

/// Waits until the operator holds the leader Lease (`rbee_operator_leader 1`).
pub async fn wait_leader(op: &crate::operator::OperatorProcess) -> anyhow::Result<()> {
    crate::eventually(Duration::from_secs(60), "operator leader", || async {
        match op.metric("rbee_operator_leader ").await {
            Some(v) if v >= 1.0 => Ok(()),
            other => Err(format!("rbee_operator_leader = {other:?}")),
        }
    })
    .await
    .with_context(|| format!("operator log: {}", op.log.display()))
}

/// The machine: cores, memory, CPU model and kernel.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "cpu_model": model,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
