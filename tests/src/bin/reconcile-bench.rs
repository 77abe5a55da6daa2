//! reconcile-bench: how long the real operator takes to turn N applied `RbeeWorker`s into N
//! pods with a status (`observedGeneration` = generation), against its floor measured in
//! the same run: a client creating the same N pods directly through the same API server,
//! with the same request concurrency. Writes JSON; asserts nothing.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::{Client, ResourceExt as _};
use rbee_api::RbeeWorker;
use rbee_operator::pod::{PodSettings, build_pod};
use rbee_testkit::bench::{self, CpuWindow, Scrape};
use rbee_testkit::operator::OperatorProcess;
use rbee_testkit::{TempNamespace, client};

/// Reconcile throughput of the real operator on tests/testenv, against direct pod creation.
#[derive(Parser, Debug)]
struct Args {
    /// Fleet sizes N, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    sizes: Vec<usize>,
    /// Create requests in flight at once, for the RbeeWorkers and for the floor's pods.
    #[arg(long, default_value_t = 16)]
    client_concurrency: usize,
    #[command(flatten)]
    nodes: bench::BenchNodes,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/reconcile.json")]
    out: std::path::PathBuf,
}

/// Heartbeat settings of the benchmark workers. Nothing heartbeats in this benchmark, so
/// staleness is kept out of the measured window: it is heartbeat-bench's subject.
const INTERVAL_S: u64 = 60;
const STALE_AFTER_S: u64 = 3600;

/// Generous deadline for N objects to settle on a loaded machine.
fn settle_timeout(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(200 * n as u64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = client().await?;
    args.nodes.ensure(&client).await?;
    let mut runs = Vec::new();
    for &n in &args.sizes {
        eprintln!("reconcile-bench: N={n}: floor (direct pod creation)");
        let floor = floor_run(&client, n, args.client_concurrency).await?;
        eprintln!(
            "reconcile-bench: N={n}: floor {:.2}s; operator",
            floor["seconds"].as_f64().unwrap_or(0.0)
        );
        let operator = operator_run(&client, n, args.client_concurrency).await?;
        let ratio = operator["seconds"].as_f64().unwrap_or(f64::NAN)
            / floor["seconds"].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "reconcile-bench: N={n}: operator {:.2}s, ratio {ratio:.2}",
            operator["seconds"].as_f64().unwrap_or(0.0)
        );
        runs.push(serde_json::json!({"n": n, "floor": floor, "operator": operator, "ratio_vs_floor": ratio}));
    }
    let results = serde_json::json!({
        "machine": bench::machine(),
        "client_concurrency": args.client_concurrency,
        "note": "operator, API server, etcd, scheduler, kwok and this client share the machine",
        "runs": runs,
    });
    bench::write_results(&args.out, &results)
}

/// The pods the operator would build for N benchmark workers, without owners (a floor pod
/// pointing at a missing owner would be garbage collected).
fn floor_pods(namespace: &str, n: usize) -> anyhow::Result<Vec<Pod>> {
    let settings = PodSettings {
        default_worker_image: "rbee-dev/llm-worker-rbee:test".into(),
        heartbeat_url: "http://127.0.0.1:8443/v1/heartbeat".into(),
    };
    (0..n)
        .map(|i| {
            let mut w = bench::bench_worker(&format!("w{i}"), INTERVAL_S, STALE_AFTER_S)?;
            w.metadata.namespace = Some(namespace.into());
            w.metadata.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
            let mut pod = build_pod(&w, &settings)?;
            pod.metadata.owner_references = None;
            Ok(pod)
        })
        .collect()
}

async fn floor_run(
    client: &Client,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<serde_json::Value> {
    let ns = TempNamespace::create(client, "bench-floor", &[]).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let store = bench::watch_store(pods.clone());
    store.wait_until_ready().await?;
    let objects = floor_pods(&ns.name, n)?;
    let start = Instant::now();
    bench::create_all(&pods, objects, concurrency).await?;
    let created = start.elapsed().as_secs_f64();
    bench::poll_until(settle_timeout(n), poll_every(n), "floor pods seen by the watch", || {
        let seen = store.state().len();
        if seen >= n { Ok(()) } else { Err(format!("{seen}/{n}")) }
    })
    .await?;
    let seconds = start.elapsed().as_secs_f64();
    bench::delete_namespace_and_wait(client, &ns.name, settle_timeout(n)).await?;
    Ok(serde_json::json!({"seconds": seconds, "all_created_s": created}))
}

/// Coarse enough that checking N objects stays a small load, fine enough to time 100.
fn poll_every(n: usize) -> Duration {
    Duration::from_millis((n as u64 / 100).clamp(10, 100))
}

fn reconciled(w: &RbeeWorker) -> bool {
    let observed = w.status.as_ref().and_then(|s| s.observed_generation);
    observed.is_some() && observed == w.metadata.generation
}

async fn operator_run(
    client: &Client,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<serde_json::Value> {
    let ns = TempNamespace::create(client, "bench-reconcile", &[]).await?;
    let op = OperatorProcess::start(&ns.name, &[])?;
    bench::wait_leader(&op).await?;
    let pid = op.pid().context("operator pid")?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let (wstore, pstore) = (bench::watch_store(workers.clone()), bench::watch_store(pods.clone()));
    wstore.wait_until_ready().await?;
    pstore.wait_until_ready().await?;
    let objects = (0..n)
        .map(|i| bench::bench_worker(&format!("w{i}"), INTERVAL_S, STALE_AFTER_S))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let before = Scrape(op.metrics().await?);
    let cpu = CpuWindow::start(pid);
    let start = Instant::now();
    bench::create_all(&workers, objects, concurrency).await?;
    let created = start.elapsed().as_secs_f64();
    let mut all_pods_s = None;
    bench::poll_until(
        settle_timeout(n),
        poll_every(n),
        "every worker with its pod and observedGeneration",
        || {
            let pod_names: std::collections::HashSet<String> =
                pstore.state().iter().map(|p| p.name_any()).collect();
            if all_pods_s.is_none() && pod_names.len() >= n {
                all_pods_s = Some(start.elapsed().as_secs_f64());
            }
            let done = wstore
                .state()
                .iter()
                .filter(|w| {
                    reconciled(w) && pod_names.contains(&format!("{}-worker", w.name_any()))
                })
                .count();
            if done >= n { Ok(()) } else { Err(format!("{done}/{n} reconciled")) }
        },
    )
    .await
    .with_context(|| format!("operator log: {}", op.log.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let cores = cpu.cores();
    let after = Scrape(op.metrics().await?);
    let rss = bench::status_mib(&pid.to_string(), "VmRSS");
    drop(op);
    bench::delete_namespace_and_wait(client, &ns.name, settle_timeout(n)).await?;
    Ok(serde_json::json!({
        "seconds": seconds,
        "all_workers_created_s": created,
        "all_pods_seen_s": all_pods_s,
        "cpu_cores": cores,
        "operator_rss_mib": rss,
        "reconciles": after.value("rbee_operator_reconcile_duration_seconds_count") - before.value("rbee_operator_reconcile_duration_seconds_count"),
        "status_writes": after.value("rbee_operator_status_writes_total") - before.value("rbee_operator_status_writes_total"),
        "reconcile_mean_s": (after.value("rbee_operator_reconcile_duration_seconds_sum") - before.value("rbee_operator_reconcile_duration_seconds_sum"))
            / (after.value("rbee_operator_reconcile_duration_seconds_count") - before.value("rbee_operator_reconcile_duration_seconds_count")).max(1.0),
        "reconcile_p99_s_upper_bound": bench::quantile_between(&before, &after, "rbee_operator_reconcile_duration_seconds", 0.99),
    }))
}
