//! The real operator against the real API server: pods from RbeeWorkers, status, events,
//! replacement, garbage collection, crash safety and metrics.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rbee_api::RbeeWorker;
use rbee_operator::pod::{PodSettings, build_pod};
use rbee_testkit::operator::OperatorProcess;
use rbee_testkit::{TempNamespace, client, eventually, kubectl, kwok_worker as worker, wait_for};

const RESTRICTED: &[(&str, &str)] = &[("pod-security.kubernetes.io/enforce", "restricted")];

fn condition(w: &RbeeWorker, t: &str) -> Option<(String, String)> {
    w.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn events(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test]
async fn examples_become_restricted_gpu_pods_with_matching_status() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-examples", RESTRICTED).await?;
    let _op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut names = Vec::new();
    for file in ["cpu-worker.yaml", "cuda-worker.yaml"] {
        let text = std::fs::read_to_string(rbee_testkit::repo_root().join("examples").join(file))?;
        let mut w: RbeeWorker = serde_yaml::from_str(&text)?;
        // Run on the fake GPU node, without a claim, and without heartbeat-driven restarts.
        w.spec.model.pvc = None;
        w.spec.model.path = format!("/models/{}", w.spec.model.path);
        w.spec.node_selector =
            Some([("kubernetes.io/hostname".to_string(), "rbee-gpu-0".to_string())].into());
        w.spec.tolerations = None;
        w.spec.restart_policy.mode = rbee_api::RestartMode::Never;
        names.push((w.metadata.name.clone().unwrap_or_default(), w.spec.backend));
        workers.create(&PostParams::default(), &w).await?;
    }
    for (name, backend) in &names {
        let pod_name = format!("{name}-worker");
        let pod = wait_for(&pods, &pod_name, Duration::from_secs(60), "Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await?;
        let owner = &pod.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("RbeeWorker", name.as_str()));
        let spec = pod.spec.clone().unwrap_or_default();
        let limits =
            spec.containers[0].resources.clone().unwrap_or_default().limits.unwrap_or_default();
        let gpus = limits.get("nvidia.com/gpu").map(|q| q.0.clone());
        match backend {
            rbee_api::Backend::Cuda => assert_eq!(gpus.as_deref(), Some("1")),
            rbee_api::Backend::Cpu => assert_eq!(gpus, None),
        }
        let token = spec
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find_map(|v| v.projected)
            .and_then(|p| p.sources)
            .unwrap_or_default();
        assert_eq!(
            token[0].service_account_token.as_ref().and_then(|t| t.audience.as_deref()),
            Some("rbee-operator")
        );
        let sc = spec.containers[0].security_context.clone().unwrap_or_default();
        assert_eq!(sc.read_only_root_filesystem, Some(true));

        // kwok runs the pod and marks it Ready; with no heartbeat yet the worker is Loading.
        let w = wait_for(&workers, name, Duration::from_secs(30), "scheduled with status", |w| {
            condition(w, "Scheduled").is_some_and(|c| c.0 == "True")
                && condition(w, "ModelLoaded").is_some_and(|c| c.0 == "True")
        })
        .await?;
        let status = w.status.clone().unwrap_or_default();
        assert_eq!(status.node_name.as_deref(), Some("rbee-gpu-0"));
        assert_eq!(status.pod_name.as_deref(), Some(pod_name.as_str()));
        assert_eq!(status.phase, Some(rbee_api::WorkerPhase::Loading));
        assert_eq!(condition(&w, "Ready").map(|c| c.1).as_deref(), Some("AwaitingFirstHeartbeat"));
        assert_eq!(status.observed_generation, w.metadata.generation);
    }
    let out = kubectl(&["get", "rbeeworkers", "-n", &ns.name])?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("PHASE") && table.contains("HEARTBEAT") && table.contains("VRAM"),
        "{table}"
    );
    for (name, _) in &names {
        let line = table.lines().find(|l| l.starts_with(name.as_str())).unwrap_or_default();
        assert!(line.contains("Loading") && line.contains("False"), "{table}");
    }
    let wide =
        String::from_utf8_lossy(&kubectl(&["get", "rbw", "-n", &ns.name, "-o", "wide"])?.stdout)
            .to_string();
    assert!(wide.contains("rbee-gpu-0") && wide.contains("AwaitingFirstHeartbeat"), "{wide}");
    ns.delete().await
}

#[tokio::test]
async fn too_many_gpus_is_reported_as_insufficient_gpu() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-gpus", RESTRICTED).await?;
    let _op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    workers
        .create(
            &PostParams::default(),
            &worker("greedy", serde_json::json!({"gpus": 16, "nodeSelector": null})),
        )
        .await?;
    let w = wait_for(&workers, "greedy", Duration::from_secs(60), "unschedulable", |w| {
        condition(w, "Scheduled").is_some_and(|c| c.0 == "False" && c.1 == "InsufficientGPU")
    })
    .await?;
    assert_eq!(w.status.and_then(|s| s.phase), Some(rbee_api::WorkerPhase::Pending));
    eventually(Duration::from_secs(20), "an InsufficientGPU event", || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            let found = events(&client, &ns, "InsufficientGPU").await;
            if found.iter().any(|e| e.type_.as_deref() == Some("Warning")) {
                Ok(())
            } else {
                Err(format!("{found:?}"))
            }
        }
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn a_spec_change_replaces_the_pod_exactly_once() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-replace", RESTRICTED).await?;
    let _op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    workers.create(&PostParams::default(), &worker("w", serde_json::json!({}))).await?;
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let first = wait_for(&pods, "w-worker", Duration::from_secs(60), "Running", running).await?;
    let first_uid = first.metadata.uid.clone().unwrap_or_default();

    let patch = serde_json::json!({"spec": {"heartbeat": {"intervalSeconds": 20}}});
    workers.patch("w", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let mut uids = BTreeSet::from([first_uid.clone()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(p) = pods.get_opt("w-worker").await? {
            uids.insert(p.metadata.uid.clone().unwrap_or_default());
            let w = workers.get("w").await?;
            let done = running(&p)
                && p.metadata.uid.as_deref() != Some(first_uid.as_str())
                && w.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
                && condition(&w, "Progressing").is_some_and(|c| c.0 == "False");
            if done {
                break;
            }
        }
        assert!(Instant::now() < deadline, "pod not replaced; uids seen {uids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(uids.len(), 2, "pods seen: {uids:?}");
    assert_eq!(events(&client, &ns.name, "PodReplaced").await.len(), 1);
    let all = pods.list(&ListParams::default()).await?;
    assert_eq!(all.items.len(), 1);
    ns.delete().await
}

#[tokio::test]
async fn deleting_a_worker_removes_its_pod() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-delete", RESTRICTED).await?;
    let _op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    workers.create(&PostParams::default(), &worker("gone", serde_json::json!({}))).await?;
    wait_for(&pods, "gone-worker", Duration::from_secs(60), "created", |_| true).await?;
    workers.delete("gone", &DeleteParams::background()).await?;
    eventually(Duration::from_secs(60), "the pod to be garbage-collected", || {
        let pods = pods.clone();
        async move {
            match pods.get_opt("gone-worker").await {
                Ok(None) => Ok(()),
                Ok(Some(p)) => Err(format!("still there: {:?}", p.metadata.deletion_timestamp)),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn a_crash_between_pod_and_status_leaves_one_pod_and_a_correct_status() -> anyhow::Result<()>
{
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-crash", RESTRICTED).await?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // What a dead operator left: the pod it created, and no status.
    let created =
        workers.create(&PostParams::default(), &worker("w", serde_json::json!({}))).await?;
    let settings = PodSettings {
        default_worker_image: "rbee-dev/llm-worker-rbee:test".into(),
        heartbeat_url: "http://127.0.0.1:1/v1/heartbeat".into(),
    };
    let pod = build_pod(&created, &settings)?;
    let orphan_uid = pods
        .patch("w-worker", &PatchParams::apply("rbee-operator").force(), &Patch::Apply(&pod))
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    assert!(created.status.is_none());

    let op =
        OperatorProcess::start(&ns.name, &["--heartbeat-url=http://127.0.0.1:1/v1/heartbeat"])?;
    let w = wait_for(&workers, "w", Duration::from_secs(60), "reconciled", |w| {
        w.status.as_ref().is_some_and(|s| s.pod_name.is_some() && s.observed_generation == Some(1))
    })
    .await?;
    let all = pods.list(&ListParams::default()).await?;
    assert_eq!(
        all.items.len(),
        1,
        "{:?}",
        all.items.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
    );
    assert_eq!(
        all.items[0].metadata.uid.as_deref(),
        Some(orphan_uid.as_str()),
        "the pod was kept, not recreated"
    );
    assert_eq!(w.status.and_then(|s| s.pod_name).as_deref(), Some("w-worker"));
    drop(op);
    ns.delete().await
}

/// Families in an OpenMetrics scrape, counters with their `_total` suffix (as PromQL sees them).
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, kind) = (parts.next()?, parts.next()?);
            let counter = kind == "counter" && !name.ends_with("_total");
            Some(if counter { format!("{name}_total") } else { name.to_string() })
        })
        .collect()
}

/// The operator part of charts/rbee-operator/metrics.txt, which alerts and dashboards may use.
fn documented_operator_families() -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(
        rbee_testkit::repo_root().join("charts/rbee-operator/metrics.txt"),
    )?;
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            section = comment.trim().to_string();
        } else if section.starts_with("operator") && !line.trim().is_empty() {
            out.insert(line.trim().to_string());
        }
    }
    Ok(out)
}

#[tokio::test]
async fn metrics_scrape_passes_promtool_and_matches_the_documented_families() -> anyhow::Result<()>
{
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-metrics", RESTRICTED).await?;
    let op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    workers
        .create(
            &PostParams::default(),
            &worker("m", serde_json::json!({"limits": {"vramBytes": 1000}})),
        )
        .await?;
    wait_for(&workers, "m", Duration::from_secs(30), "reconciled", |w| w.status.is_some()).await?;
    // A refused heartbeat puts the heartbeat families on the page too.
    let _ = reqwest::Client::new().post(op.heartbeat_url()).body("{}").send().await?;
    let scrape = eventually(Duration::from_secs(10), "per-worker series", || async {
        let text = op.metrics().await.map_err(|e| e.to_string())?;
        if text.contains("rbee_worker_ready{") && text.contains("rbee_operator_heartbeats_total{") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await?;

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = promtool.stdin.take() {
        use std::io::Write;
        stdin.write_all(scrape.as_bytes())?;
    }
    let out = promtool.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Families without samples yet are not printed; the metrics unit test covers all of them.
    let exported: BTreeSet<String> =
        families(&scrape).into_iter().filter(|f| f.starts_with("rbee_")).collect();
    let documented = documented_operator_families()?;
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in charts/rbee-operator/metrics.txt: {undocumented:?}"
    );
    assert!(exported.len() >= 12, "{exported:?}");
    ns.delete().await
}
