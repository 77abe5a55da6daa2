//! End to end: the real operator binary and real `llm-worker-rbee` processes, run on the
//! local node `rbee-local-0` by the in-process local kubelet (rbee_testkit::runner), with the
//! real SmolLM2-135M model on a PVC mapped to the directory fetch-model puts it in.
//!
//! Needs `cargo build --release -p rbee-operator -p llm-worker-rbee` first; the tests run one
//! at a time (they share two CPU cores and time heartbeats of 1 s).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use rbee_api::RbeeWorker;
use rbee_testkit::node::model_dir;
use rbee_testkit::operator::OperatorProcess;
use rbee_testkit::runner::{LOCAL_NODE, LocalKubelet, RunnerConfig, node_kubeconfig};
use rbee_testkit::{
    TempNamespace, client, client_for, eventually, kubectl, kubectl_with_stdin, repo_root,
};

const CLAIM: &str = "model";
const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The served name, which examples/pool-service.yaml selects.
const MODEL_NAME: &str = "smollm2-135m-instruct";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("RBEE_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary has no profile dir")?
        .join("llm-worker-rbee");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p llm-worker-rbee`",
            bin.display()
        );
    }
    Ok(bin)
}

/// One scenario's world: namespace, operator, PV/PVC with the model, local kubelet.
struct E2e {
    client: Client,
    ns: String,
    temp: Option<TempNamespace>,
    operator: OperatorProcess,
    kubelet: Option<LocalKubelet>,
    pv: String,
    state_dir: PathBuf,
    forward: tokio::task::JoinHandle<()>,
    /// Where the heartbeat port forwards to: the leader, as the chart's heartbeat Service.
    forward_to: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
    /// The `--heartbeat-url` flag every operator of this scenario gets: the forwarding port.
    heartbeat_url_flag: String,
    workers: Api<RbeeWorker>,
    pods: Api<Pod>,
}

impl E2e {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        let model_dir = model_dir()?;
        let worker_bin = worker_binary()?;
        let client = client().await?;
        let temp = TempNamespace::create(&client, prefix, &[]).await?;
        let ns = temp.name.clone();
        // OperatorProcess picks its heartbeat port itself, so workers are pointed at a
        // port of ours that forwards to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let heartbeat = listener.local_addr()?;
        let url = format!("--heartbeat-url=http://{heartbeat}{}", rbee_api::names::HEARTBEAT_PATH);
        // RBEE_E2E_OPERATOR_AS_ADMIN=1 runs the operator as cluster admin instead of with
        // the chart's RBAC, to tell an RBAC gap from a behaviour bug.
        let operator = if std::env::var_os("RBEE_E2E_OPERATOR_AS_ADMIN").is_some() {
            OperatorProcess::start_with_kubeconfig(
                &ns,
                &rbee_testkit::testenv()?.kubeconfig,
                &[&url],
            )?
        } else {
            OperatorProcess::start(&ns, &[&url])?
        };
        let forward_to = std::sync::Arc::new(std::sync::Mutex::new(operator.heartbeat_addr));
        let forward = tokio::spawn(forward(listener, forward_to.clone()));
        let pv = format!("{ns}-model");
        let manifest = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                      "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                      "hostPath": {"path": model_dir}, "claimRef": {"namespace": ns, "name": CLAIM}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": ns},
             "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                      "resources": {"requests": {"storage": "1Gi"}}}},
        ]});
        let out = kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest.to_string()))?;
        if !out.status.success() {
            bail!("applying PV/PVC: {}", String::from_utf8_lossy(&out.stderr));
        }
        let state_dir = std::env::temp_dir().join(format!("rbee-e2e-{ns}"));
        std::fs::create_dir_all(&state_dir)?;
        let node_client = client_for(&node_kubeconfig(LOCAL_NODE)).await?;
        let kubelet = LocalKubelet::start(
            node_client,
            RunnerConfig {
                node: LOCAL_NODE.into(),
                namespace: Some(ns.clone()),
                worker_bin,
                volumes: BTreeMap::from([(CLAIM.to_string(), model_dir)]),
                state_dir: state_dir.clone(),
            },
        );
        Ok(Self {
            workers: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            temp: Some(temp),
            operator,
            kubelet: Some(kubelet),
            pv,
            state_dir,
            forward,
            forward_to,
            heartbeat_url_flag: url,
        })
    }

    async fn apply_worker(
        &self,
        name: &str,
        model_file: &str,
        restart: serde_json::Value,
    ) -> anyhow::Result<()> {
        let worker: RbeeWorker = serde_json::from_value(serde_json::json!({
            "apiVersion": "rbee.dev/v1alpha1", "kind": "RbeeWorker",
            "metadata": {"name": name},
            "spec": {
                "backend": "cpu", "threads": 1,
                "model": {"pvc": CLAIM, "path": model_file, "name": MODEL_NAME},
                "nodeSelector": {"rbee.dev/local-node": "true"},
                "heartbeat": {"intervalSeconds": 1, "staleAfterSeconds": 3},
                "restartPolicy": restart,
            }
        }))?;
        self.workers.create(&PostParams::default(), &worker).await?;
        Ok(())
    }

    /// Sends heartbeats to another operator from now on.
    fn route_heartbeats_to(&self, addr: std::net::SocketAddr) {
        if let Ok(mut to) = self.forward_to.lock() {
            *to = addr;
        }
    }

    fn kubelet(&self) -> anyhow::Result<&LocalKubelet> {
        self.kubelet.as_ref().context("kubelet stopped")
    }

    async fn worker(&self, name: &str) -> anyhow::Result<RbeeWorker> {
        Ok(self.workers.get(name).await?)
    }

    /// Objects, operator log and worker logs, for a failure message.
    fn dump(&self) -> String {
        let mut text = String::new();
        for args in [
            vec!["get", "rbeeworkers", "-o", "wide", "-n", &self.ns],
            vec!["get", "rbeeworkers,pods", "-o", "yaml", "-n", &self.ns],
            vec!["get", "events", "-n", &self.ns],
        ] {
            if let Ok(out) = kubectl(&args) {
                text += &format!(
                    "---- kubectl {} ----\n{}{}\n",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        text += &format!(
            "---- operator log {} ----\n{}\n",
            self.operator.log.display(),
            tail(&self.operator.log_text(), 150)
        );
        for entry in std::fs::read_dir(&self.state_dir).into_iter().flatten().flatten() {
            let log = entry.path().join("worker.log");
            let body = std::fs::read_to_string(&log).unwrap_or_default();
            text += &format!("---- {} ----\n{}\n", log.display(), tail(&body, 60));
        }
        text
    }

    /// Tears everything down; on failure prints the dump first.
    async fn finish(mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        if result.is_err() {
            eprintln!("{}", self.dump());
        }
        self.operator.kill();
        self.forward.abort();
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.shutdown().await;
        }
        // No kubelet is left to make the final delete of the pods; without this the
        // namespace would stay Terminating.
        let force = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        let _ = self.pods.delete_collection(&force, &ListParams::default()).await;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let _ = pvs.delete(&self.pv, &DeleteParams::default()).await;
        if let Some(temp) = self.temp.take() {
            let _ = temp.delete().await;
        }
        result
    }
}

async fn forward(
    listener: tokio::net::TcpListener,
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let Ok(to) = target.lock().map(|t| *t) else { return };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn condition<'a>(
    w: &'a RbeeWorker,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    w.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn phase(w: &RbeeWorker) -> String {
    w.status
        .as_ref()
        .and_then(|s| s.phase.as_ref())
        .map(|p| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

fn restarts(w: &RbeeWorker) -> (i32, Option<String>) {
    w.status
        .as_ref()
        .and_then(|s| s.restarts.as_ref())
        .map(|r| (r.count, r.last_restart_reason.clone()))
        .unwrap_or((0, None))
}

async fn wait_ready(env: &E2e, name: &str, timeout: Duration) -> anyhow::Result<RbeeWorker> {
    eventually(timeout, &format!("{name} Ready"), || async {
        let w = env.worker(name).await.map_err(|e| e.to_string())?;
        if phase(&w) == "Ready" { Ok(w) } else { Err(format!("phase {:?}", phase(&w))) }
    })
    .await
}

/// Ready addresses in the EndpointSlices of `service`: where kube-proxy and cluster DNS send
/// its traffic.
async fn ready_addresses(env: &E2e, service: &str) -> anyhow::Result<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), &env.ns);
    let selector = format!("kubernetes.io/service-name={service}");
    let list = slices.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.clone())
        .collect())
}

/// A URL of one ready endpoint of `service`, once there is one.
async fn service_url(env: &E2e, service: &str, port: u16) -> anyhow::Result<String> {
    eventually(
        Duration::from_secs(60),
        &format!("a ready endpoint of Service {service}"),
        || async {
            match ready_addresses(env, service).await.map_err(|e| e.to_string())?.first() {
                Some(ip) => Ok(format!("http://{ip}:{port}")),
                None => Err("none".into()),
            }
        },
    )
    .await
}

/// Waits until worker `name` is Ready on a pod other than `old_uid`.
async fn ready_on_a_new_pod(
    env: &E2e,
    name: &str,
    old_uid: &str,
    timeout: Duration,
) -> anyhow::Result<RbeeWorker> {
    eventually(timeout, &format!("{name} Ready on a new pod"), || async {
        let w = env.worker(name).await.map_err(|e| e.to_string())?;
        let pod = env.pods.get_opt(&format!("{name}-worker")).await.map_err(|e| e.to_string())?;
        let new_pod = pod.and_then(|p| p.uid()).is_some_and(|uid| uid != old_uid);
        if new_pod && phase(&w) == "Ready" {
            Ok(w)
        } else {
            Err(format!("new pod {new_pod}, phase {}", phase(&w)))
        }
    })
    .await
}

/// Ends a worker process a scenario stopped with SIGSTOP, if it still runs.
fn kill_stopped(pid: u32) {
    if alive(pid) {
        let _ = signal(pid, "CONT");
        let _ = signal(pid, "KILL");
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status =
        std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

/// Unix seconds of the last heartbeat the operator accepted from `worker` (its metric).
async fn last_accepted_heartbeat(env: &E2e, worker: &str) -> Option<f64> {
    last_accepted_by(&env.operator, worker).await
}

async fn last_accepted_by(operator: &OperatorProcess, worker: &str) -> Option<f64> {
    let text = operator.metrics().await.ok()?;
    text.lines()
        .filter(|l| l.starts_with("rbee_worker_last_heartbeat_timestamp_seconds{"))
        .find(|l| l.contains(&format!("worker=\"{worker}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn default_restart() -> serde_json::Value {
    serde_json::json!({"mode": "Always", "maxRestarts": 3,
                       "backoff": {"initialSeconds": 2, "maxSeconds": 10, "jitterPercent": 0}})
}

type Body = for<'a> fn(&'a E2e) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;

async fn scenario(prefix: &str, body: Body) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let env = E2e::start(prefix).await?;
    let result = tokio::time::timeout(Duration::from_secs(300), body(&env))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("scenario {prefix} ran past its 300 s deadline")));
    env.finish(result).await
}

async fn completion(endpoint: &str) -> anyhow::Result<serde_json::Value> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let models: serde_json::Value =
        http.get(format!("{endpoint}/v1/models")).send().await?.json().await?;
    let model = models["data"][0]["id"].as_str().unwrap_or("default").to_string();
    let response = http
        .post(format!("{endpoint}/v1/completions"))
        .json(&serde_json::json!({"model": model, "prompt": "The capital of France is", "max_tokens": 8}))
        .send()
        .await?;
    let code = response.status();
    let body: serde_json::Value = response.json().await?;
    if !code.is_success() {
        bail!("POST /v1/completions answered {code}: {body}");
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_worker_gets_ready_serves_a_completion_and_stops_on_delete() -> anyhow::Result<()> {
    scenario("e2e-ready", |env| {
        Box::pin(cpu_worker_gets_ready_serves_a_completion_and_stops_on_delete_body(env))
    })
    .await
}

async fn cpu_worker_gets_ready_serves_a_completion_and_stops_on_delete_body(
    env: &E2e,
) -> anyhow::Result<()> {
    let start = Instant::now();
    env.apply_worker("smol", MODEL_FILE, default_restart()).await?;
    let w = wait_ready(env, "smol", Duration::from_secs(180)).await?;
    eprintln!("smol Ready after {:.1}s", start.elapsed().as_secs_f64());
    let status = w.status.clone().context("no status")?;
    let hb = status.heartbeat.as_ref().and_then(|h| h.last_heartbeat_time.as_ref());
    anyhow::ensure!(hb.is_some(), "status.heartbeat.lastHeartbeatTime is empty");
    let rss = status.memory.as_ref().and_then(|m| m.rss_bytes);
    anyhow::ensure!(rss.is_some_and(|b| b > 0), "status.memory.rssBytes is {rss:?}");
    anyhow::ensure!(
        status.backend == Some(rbee_api::Backend::Cpu),
        "observed backend {:?}",
        status.backend
    );
    let out = kubectl(&["get", "rbeeworkers", "-n", &env.ns])?;
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{table}");
    let row = table.lines().find(|l| l.starts_with("smol ")).context("no row for smol")?;
    for want in ["Ready", "cpu"] {
        anyhow::ensure!(row.contains(want), "row lacks {want}: {row}");
    }
    anyhow::ensure!(!row.contains("<none>"), "empty column in: {row}");
    let stable = format!("http://smol.{}.svc:8080", env.ns);
    anyhow::ensure!(status.endpoint.as_deref() == Some(stable.as_str()), "{:?}", status.endpoint);
    // What the worker's Service resolves to, as cluster DNS would.
    let endpoint = service_url(env, "smol", 8080).await?;
    let answer = completion(&endpoint).await?;
    let text = answer["choices"][0]["text"].as_str().unwrap_or_default();
    eprintln!("completion via {endpoint}: {text:?}");
    anyhow::ensure!(!text.is_empty(), "empty completion: {answer}");

    let pid = env.kubelet()?.pid(&env.ns, "smol-worker").context("no worker pid")?;
    let deleted = Instant::now();
    env.workers.delete("smol", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), "worker process stopped and pod gone", || async {
        let pod = env.pods.get_opt("smol-worker").await.map_err(|e| e.to_string())?;
        match (alive(pid), pod) {
            (false, None) => Ok(()),
            (running, pod) => {
                Err(format!("process alive {running}, pod present {}", pod.is_some()))
            }
        }
    })
    .await?;
    eprintln!(
        "process {pid} stopped and pod gone {:.1}s after the delete",
        deleted.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_worker_goes_stale_and_is_restarted_by_the_operator() -> anyhow::Result<()> {
    scenario("e2e-hung", |env| {
        Box::pin(hung_worker_goes_stale_and_is_restarted_by_the_operator_body(env))
    })
    .await
}

async fn hung_worker_goes_stale_and_is_restarted_by_the_operator_body(
    env: &E2e,
) -> anyhow::Result<()> {
    env.apply_worker("hung", MODEL_FILE, default_restart()).await?;
    wait_ready(env, "hung", Duration::from_secs(180)).await?;
    let old_uid = env.pods.get("hung-worker").await?.uid().context("pod without uid")?;
    let pid = env.kubelet()?.pid(&env.ns, "hung-worker").context("no worker pid")?;
    signal(pid, "STOP")?;
    let stale =
        eventually(Duration::from_secs(30), "Heartbeating=False/HeartbeatStale", || async {
            let w = env.worker("hung").await.map_err(|e| e.to_string())?;
            match condition(&w, "Heartbeating") {
                Some(c) if c.status == "False" && c.reason == "HeartbeatStale" => Ok(unix_now()),
                c => Err(format!("{c:?}")),
            }
        })
        .await;
    let last = last_accepted_heartbeat(env, "hung").await;
    let result = async {
        let seen = stale?;
        let last = last.context("no rbee_worker_last_heartbeat_timestamp_seconds for hung")?;
        let latency = seen - last;
        eprintln!("stale seen {latency:.2}s after the last accepted heartbeat (staleAfter 3 s)");
        anyhow::ensure!(
            latency >= 3.0,
            "marked stale {latency:.2}s after a heartbeat, before staleAfter"
        );
        let restarted = ready_on_a_new_pod(env, "hung", &old_uid, Duration::from_secs(120)).await?;
        eprintln!("Ready again {:.1}s after stale detection", unix_now() - seen);
        let (count, reason) = restarts(&restarted);
        anyhow::ensure!(count == 1, "restarts.count {count}");
        anyhow::ensure!(
            reason.as_deref() == Some("HeartbeatStale"),
            "lastRestartReason {reason:?}"
        );
        Ok(())
    }
    .await;
    kill_stopped(pid);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_restarted_in_place_by_the_kubelet() -> anyhow::Result<()> {
    scenario("e2e-kill", |env| {
        Box::pin(killed_worker_is_restarted_in_place_by_the_kubelet_body(env))
    })
    .await
}

async fn killed_worker_is_restarted_in_place_by_the_kubelet_body(env: &E2e) -> anyhow::Result<()> {
    env.apply_worker("crash", MODEL_FILE, default_restart()).await?;
    wait_ready(env, "crash", Duration::from_secs(180)).await?;
    let uid = env.pods.get("crash-worker").await?.uid();
    let pid = env.kubelet()?.pid(&env.ns, "crash-worker").context("no worker pid")?;
    let before = last_accepted_heartbeat(env, "crash").await.unwrap_or(0.0);
    let killed = Instant::now();
    let killed_at = unix_now();
    signal(pid, "KILL")?;
    let restarted = eventually(Duration::from_secs(60), "pod restartCount 1, Ready", || async {
        let pod = env.pods.get("crash-worker").await.map_err(|e| e.to_string())?;
        let cs = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first().cloned());
        match cs {
            Some(cs) if cs.restart_count == 1 && cs.ready => Ok(pod),
            cs => Err(format!("{:?}", cs.map(|c| (c.restart_count, c.ready)))),
        }
    })
    .await?;
    eprintln!("pod Ready again with restartCount 1 after {:.1}s", killed.elapsed().as_secs_f64());
    anyhow::ensure!(restarted.uid() == uid, "the pod was replaced, not restarted in place");
    let w = wait_ready(env, "crash", Duration::from_secs(60)).await?;
    let (count, reason) = restarts(&w);
    let hb = condition(&w, "Heartbeating").map(|c| (c.status.clone(), c.reason.clone()));
    eprintln!(
        "operator view after the kubelet restart: restarts.count {count}, reason {reason:?}, Heartbeating {hb:?}"
    );
    let resumed = eventually(Duration::from_secs(30), "a heartbeat after the kill", || async {
        match last_accepted_heartbeat(env, "crash").await {
            Some(t) if t > killed_at => Ok(t),
            t => Err(format!("last heartbeat {t:?}")),
        }
    })
    .await?;
    let gap = resumed - before;
    eprintln!("heartbeat gap across the kubelet restart: {gap:.2}s (staleAfter 3 s)");
    if gap < 3.0 {
        anyhow::ensure!(
            count == 0,
            "heartbeats resumed within staleAfter ({gap:.2}s) yet the operator counted a restart ({reason:?})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_model_ends_degraded_after_max_restarts() -> anyhow::Result<()> {
    scenario("e2e-nomodel", |env| {
        Box::pin(missing_model_ends_degraded_after_max_restarts_body(env))
    })
    .await
}

async fn missing_model_ends_degraded_after_max_restarts_body(env: &E2e) -> anyhow::Result<()> {
    let restart = serde_json::json!({"mode": "Always", "maxRestarts": 1,
                                     "backoff": {"initialSeconds": 2, "maxSeconds": 4, "jitterPercent": 0}});
    env.apply_worker("nomodel", "missing.gguf", restart).await?;
    let reason =
        eventually(Duration::from_secs(120), "ModelLoaded=False naming missing.gguf", || async {
            let w = env.worker("nomodel").await.map_err(|e| e.to_string())?;
            match condition(&w, "ModelLoaded") {
                Some(c) if c.status == "False" && c.message.contains("missing.gguf") => {
                    Ok(format!("{}: {}", c.reason, c.message))
                }
                c => Err(format!("{c:?}")),
            }
        })
        .await?;
    eprintln!("ModelLoaded=False {reason}");
    let w = eventually(Duration::from_secs(180), "Degraded/RestartLimitExceeded", || async {
        let w = env.worker("nomodel").await.map_err(|e| e.to_string())?;
        match condition(&w, "Degraded") {
            Some(c) if c.status == "True" && c.reason == "RestartLimitExceeded" => Ok(w),
            c => Err(format!("phase {}, {c:?}", phase(&w))),
        }
    })
    .await?;
    let (count, last) = restarts(&w);
    eprintln!("Degraded after {count} operator restart(s), last {last:?}, phase {}", phase(&w));
    anyhow::ensure!(count <= 1, "restarts.count {count} > maxRestarts 1");
    Ok(())
}

/// Two workers behind examples/pool-service.yaml, both Ready and in its endpoints.
async fn pool_of_two(env: &E2e) -> anyhow::Result<()> {
    let example = repo_root().join("examples/pool-service.yaml");
    let out = kubectl(&["apply", "-n", &env.ns, "-f", &example.to_string_lossy()])?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["pool-a", "pool-b"] {
        env.apply_worker(name, MODEL_FILE, default_restart()).await?;
    }
    for name in ["pool-a", "pool-b"] {
        wait_ready(env, name, Duration::from_secs(180)).await?;
    }
    eventually(Duration::from_secs(30), "both workers in the pool's endpoints", || async {
        let ready = ready_addresses(env, MODEL_NAME).await.map_err(|e| e.to_string())?;
        if ready.len() == 2 { Ok(()) } else { Err(format!("ready {ready:?}")) }
    })
    .await
}

async fn pod_ip(env: &E2e, pod: &str) -> anyhow::Result<String> {
    env.pods
        .get(pod)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .with_context(|| format!("pod {pod} has no IP"))
}

/// Requests through the pool's endpoints, as kube-proxy would spread them: each one goes to
/// the next ready address of the moment.
struct Router {
    sent: std::sync::atomic::AtomicU32,
    answered: std::sync::atomic::AtomicU32,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Router {
    fn new() -> Self {
        Self { sent: 0.into(), answered: 0.into(), failures: std::sync::Mutex::default() }
    }

    async fn send(&self, env: &E2e, turn: usize) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let ready = ready_addresses(env, MODEL_NAME).await?;
        let Some(ip) = ready.get(turn % ready.len().max(1)) else {
            bail!("the pool has no ready endpoint");
        };
        self.sent.fetch_add(1, SeqCst);
        match completion(&format!("http://{ip}:8080")).await {
            Ok(_) => {
                self.answered.fetch_add(1, SeqCst);
            }
            Err(e) => {
                if let Ok(mut f) = self.failures.lock() {
                    f.push(format!("{ip}: {e:#}"));
                }
            }
        }
        Ok(())
    }

    fn report(&self) -> (u32, u32, Vec<String>) {
        use std::sync::atomic::Ordering::SeqCst;
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        (self.sent.load(SeqCst), self.answered.load(SeqCst), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_leaves_the_pool_endpoints_and_the_other_serves() -> anyhow::Result<()> {
    scenario("e2e-pool", |env| {
        Box::pin(a_hung_worker_leaves_the_pool_endpoints_and_the_other_serves_body(env))
    })
    .await
}

async fn a_hung_worker_leaves_the_pool_endpoints_and_the_other_serves_body(
    env: &E2e,
) -> anyhow::Result<()> {
    pool_of_two(env).await?;
    let hung_ip = pod_ip(env, "pool-a-worker").await?;
    let pid = env.kubelet()?.pid(&env.ns, "pool-a-worker").context("no worker pid")?;
    signal(pid, "STOP")?;
    let left =
        eventually(Duration::from_secs(30), "pool-a out of the pool's endpoints", || async {
            let ready = ready_addresses(env, MODEL_NAME).await.map_err(|e| e.to_string())?;
            if ready.contains(&hung_ip) { Err(format!("ready {ready:?}")) } else { Ok(unix_now()) }
        })
        .await;
    let last = last_accepted_heartbeat(env, "pool-a").await;
    let result = async {
        let left = left?;
        let last = last.context("no last heartbeat metric for pool-a")?;
        let latency = left - last;
        eprintln!(
            "pool-a left the EndpointSlice {latency:.2}s after its last heartbeat (staleAfter 3 s)"
        );
        anyhow::ensure!(latency >= 3.0, "left {latency:.2}s after a heartbeat, before staleAfter");
        let w = env.worker("pool-a").await?;
        let (_, reason) = restarts(&w);
        let heartbeating = condition(&w, "Heartbeating").map(|c| c.reason.as_str());
        anyhow::ensure!(
            heartbeating == Some("HeartbeatStale") || reason.as_deref() == Some("HeartbeatStale"),
            "pool-a left the pool, but its status names no stale heartbeat: Heartbeating \
             {heartbeating:?}, lastRestartReason {reason:?}"
        );
        let router = Router::new();
        for turn in 0..6 {
            router.send(env, turn).await?;
        }
        let (sent, answered, failures) = router.report();
        eprintln!("through the pool after pool-a left: {answered} of {sent} answered");
        anyhow::ensure!(failures.is_empty() && sent == 6, "{failures:?}");
        Ok(())
    }
    .await;
    kill_stopped(pid);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_under_load_drains_and_loses_no_request() -> anyhow::Result<()> {
    scenario("e2e-drain", |env| {
        Box::pin(a_spec_change_under_load_drains_and_loses_no_request_body(env))
    })
    .await
}

async fn a_spec_change_under_load_drains_and_loses_no_request_body(
    env: &E2e,
) -> anyhow::Result<()> {
    pool_of_two(env).await?;
    let old_uid = env.pods.get("pool-a-worker").await?.uid().context("pod without uid")?;
    let router = Router::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let mut turn = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            router.send(env, turn).await?;
            turn += 1;
        }
        anyhow::Ok(())
    };
    let change = async {
        let result = async {
            // Let the load reach both workers before the change.
            eventually(Duration::from_secs(60), "requests answered", || async {
                let (_, answered, _) = router.report();
                if answered >= 4 { Ok(()) } else { Err(format!("{answered} answered")) }
            })
            .await?;
            let changed = Instant::now();
            let patch = serde_json::json!({"spec": {"threads": 2}});
            env.workers
                .patch(
                    "pool-a",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await?;
            let replaced =
                eventually(Duration::from_secs(180), "pool-a replaced and Ready", || async {
                    let w = env.worker("pool-a").await.map_err(|e| e.to_string())?;
                    let pod = env.pods.get_opt("pool-a-worker").await.map_err(|e| e.to_string())?;
                    let new_pod = pod.and_then(|p| p.uid()).is_some_and(|uid| uid != old_uid);
                    let current = w.status.as_ref().and_then(|s| s.observed_generation) == Some(2);
                    if new_pod && current && phase(&w) == "Ready" {
                        Ok(())
                    } else {
                        Err(format!(
                            "new pod {new_pod}, observed gen 2 {current}, phase {}",
                            phase(&w)
                        ))
                    }
                })
                .await;
            eprintln!(
                "pool-a replaced and Ready {:.1}s after the spec change",
                changed.elapsed().as_secs_f64()
            );
            replaced?;
            let out = kubectl(&[
                "get",
                "events",
                "-n",
                &env.ns,
                "--field-selector",
                "reason=Draining,involvedObject.name=pool-a",
                "-o",
                "name",
            ])?;
            anyhow::ensure!(!out.stdout.is_empty(), "no Draining event for pool-a");
            anyhow::Ok(())
        }
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        result
    };
    let (load, change) = tokio::join!(load, change);
    change?;
    load?;
    let (sent, answered, failures) = router.report();
    eprintln!("under load through the pool: {answered} of {sent} requests answered");
    anyhow::ensure!(failures.is_empty(), "{} lost: {failures:?}", failures.len());
    anyhow::ensure!(sent == answered && sent >= 8, "sent {sent}, answered {answered}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rides_out_a_control_plane_restart() -> anyhow::Result<()> {
    scenario("e2e-restart-cp", |env| Box::pin(a_worker_rides_out_a_control_plane_restart_body(env)))
        .await
}

async fn a_worker_rides_out_a_control_plane_restart_body(env: &E2e) -> anyhow::Result<()> {
    env.apply_worker("steady", MODEL_FILE, default_restart()).await?;
    wait_ready(env, "steady", Duration::from_secs(180)).await?;
    let uid = env.pods.get("steady-worker").await?.uid().context("pod without uid")?;
    let before = jiff::Timestamp::now();

    let restart = Instant::now();
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(rbee_testkit::testenv_script())
            .args(["restart", "etcd", "kube-apiserver"])
            .output()
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "testenv restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restarted = unix_now();
    eprintln!("etcd and kube-apiserver restarted in {:.1}s", restart.elapsed().as_secs_f64());

    // Heartbeats accepted again by a leading operator...
    eventually(Duration::from_secs(90), "a heartbeat accepted after the restart", || async {
        match last_accepted_heartbeat(env, "steady").await {
            Some(t) if t > restarted => Ok(()),
            t => Err(format!("last accepted {t:?}, restart done at {restarted:.1}")),
        }
    })
    .await?;
    eprintln!("heartbeats accepted again {:.1}s after the restart", unix_now() - restarted);
    // ...and for two stale periods more nothing turns stale or restarts.
    let watch_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < watch_until {
        let w = env.worker("steady").await?;
        anyhow::ensure!(phase(&w) == "Ready", "phase {} after the restart", phase(&w));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let w = env.worker("steady").await?;
    let (count, reason) = restarts(&w);
    anyhow::ensure!(count == 0, "restarted {count} times ({reason:?})");
    let heartbeating = condition(&w, "Heartbeating").context("no Heartbeating condition")?;
    anyhow::ensure!(
        heartbeating.status == "True" && heartbeating.last_transition_time.0 <= before,
        "Heartbeating changed during the restart: {heartbeating:?}"
    );
    let pods = env.pods.list(&ListParams::default()).await?;
    let uids: Vec<_> = pods.items.iter().filter_map(|p| p.uid()).collect();
    anyhow::ensure!(uids == [uid.clone()], "pods after the restart: {uids:?}, before: {uid}");
    let out = kubectl(&[
        "get",
        "events",
        "-n",
        &env.ns,
        "--field-selector",
        "reason=HeartbeatStale",
        "-o",
        "name",
    ])?;
    anyhow::ensure!(
        out.stdout.is_empty(),
        "HeartbeatStale events: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_operator_takes_over_a_restart_when_the_leader_is_killed() -> anyhow::Result<()>
{
    scenario("e2e-failover", |env| {
        Box::pin(the_standby_operator_takes_over_a_restart_when_the_leader_is_killed_body(env))
    })
    .await
}

async fn the_standby_operator_takes_over_a_restart_when_the_leader_is_killed_body(
    env: &E2e,
) -> anyhow::Result<()> {
    // A backoff long enough to kill the leader while the restart is pending.
    let restart = serde_json::json!({"mode": "Always", "maxRestarts": 3,
        "backoff": {"initialSeconds": 6, "maxSeconds": 10, "jitterPercent": 0}});
    env.apply_worker("ha", MODEL_FILE, restart).await?;
    wait_ready(env, "ha", Duration::from_secs(180)).await?;
    let standby = OperatorProcess::start(&env.ns, &[&env.heartbeat_url_flag])?;
    let leaders = eventually(Duration::from_secs(30), "standby up as follower", || async {
        let a = env.operator.metric("rbee_operator_leader ").await;
        let b = standby.metric("rbee_operator_leader ").await;
        match (a, b) {
            (Some(a), Some(b)) => Ok((a, b)),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    anyhow::ensure!(leaders == (1.0, 0.0), "leader gauges (first, standby) {leaders:?}");

    let old_uid = env.pods.get("ha-worker").await?.uid().context("pod without uid")?;
    let pid = env.kubelet()?.pid(&env.ns, "ha-worker").context("no worker pid")?;
    signal(pid, "STOP")?;
    let result = async {
        eventually(Duration::from_secs(30), "a pending restart in status", || async {
            let w = env.worker("ha").await.map_err(|e| e.to_string())?;
            let pending = w
                .status
                .as_ref()
                .and_then(|s| s.restarts.as_ref())
                .and_then(|r| r.next_restart_time.clone());
            if phase(&w) == "Stale" && pending.is_some() { Ok(()) } else { Err(phase(&w)) }
        })
        .await?;
        let killed = Instant::now();
        signal(env.operator.pid().context("operator not running")?, "KILL")?;
        env.route_heartbeats_to(standby.heartbeat_addr);
        eventually(Duration::from_secs(30), "the standby leads", || async {
            match standby.metric("rbee_operator_leader ").await {
                Some(1.0) => Ok(()),
                l => Err(format!("{l:?}")),
            }
        })
        .await?;
        eprintln!(
            "standby leads {:.1}s after the leader was killed (lease 4 s)",
            killed.elapsed().as_secs_f64()
        );
        let w = ready_on_a_new_pod(env, "ha", &old_uid, Duration::from_secs(120)).await?;
        eprintln!(
            "Ready again on a new pod {:.1}s after the leader was killed",
            killed.elapsed().as_secs_f64()
        );
        let (count, reason) = restarts(&w);
        anyhow::ensure!(count == 1, "restarts.count {count} ({reason:?})");
        let history = w.status.as_ref().and_then(|s| s.restarts.as_ref()).map(|r| r.history.len());
        anyhow::ensure!(history == Some(1), "restart history {history:?}");
        let pods = env.pods.list(&ListParams::default()).await?;
        anyhow::ensure!(pods.items.len() == 1, "{} pods", pods.items.len());
        // The new pod's heartbeats reach the new leader.
        let hb = last_accepted_by(&standby, "ha").await;
        anyhow::ensure!(hb.is_some(), "the standby accepted no heartbeat of ha");
        Ok(())
    }
    .await;
    kill_stopped(pid);
    if result.is_err() {
        eprintln!("---- standby operator log ----\n{}", tail(&standby.log_text(), 150));
    }
    result
}
