//! A local pod runner for end-to-end tests: plays the kubelet of one node (`rbee-local-0`),
//! running each pod bound to it as a local `llm-worker-rbee` process on its own IP (on `lo`),
//! with the projected token minted through the TokenRequest API and the pod status reported
//! as the node identity. Not product code.

mod launch;
mod pod_task;
mod status;
mod token;

pub use launch::{LaunchPlan, ReadinessProbe, TokenPlan, WORKER_COMMAND, plan_launch};
pub use status::{ContainerState, PodReport, Termination, readiness_gates_pass, status_patch};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;

use pod_task::{Pids, PodTask, Stop};

/// Name of the node the runner plays by default.
pub const LOCAL_NODE: &str = "rbee-local-0";

/// What the runner runs and where.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Node whose pods it runs.
    pub node: String,
    /// Only pods of this namespace (for tests running side by side), or all.
    pub namespace: Option<String>,
    /// The local `llm-worker-rbee`.
    pub worker_bin: PathBuf,
    /// PVC claim name → local directory.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Root of the per-pod directories.
    pub state_dir: PathBuf,
}

/// The testenv kubeconfig of `node`'s kubelet identity.
pub fn node_kubeconfig(node: &str) -> PathBuf {
    let state = std::env::var_os("RBEE_TESTENV_STATE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".local/state/rbee-testenv")
    });
    state.join(format!("node-{node}.kubeconfig"))
}

/// Pod IPs in use by pods of any runner in this process (last octet).
fn taken_ips() -> &'static Mutex<BTreeSet<u8>> {
    static TAKEN: OnceLock<Mutex<BTreeSet<u8>>> = OnceLock::new();
    TAKEN.get_or_init(Mutex::default)
}

/// The first three octets of pod IPs. Not loopback: the API server refuses loopback
/// addresses in EndpointSlices, and Services must see these pods.
pub const POD_NETWORK: [u8; 3] = [10, 254, 0];

/// Puts `ip/32` on `lo` (as a CNI plugin would give the pod an address); already there is fine.
fn ensure_local_address(ip: Ipv4Addr) -> Result<(), String> {
    if TcpListener::bind((ip, 0)).is_ok() {
        return Ok(());
    }
    let out = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .output()
        .map_err(|e| format!("running `ip addr add {ip}/32 dev lo`: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("File exists") {
        Ok(())
    } else {
        Err(format!(
            "`ip addr add {ip}/32 dev lo` failed (the runner needs CAP_NET_ADMIN): {stderr}"
        ))
    }
}

/// 10.254.0.N, N from 2 up: the lowest one free in this process whose port 8080 is also free
/// (another runner process may hold it).
fn allocate_ip() -> Result<Ipv4Addr, String> {
    let mut taken = taken_ips().lock().map_err(|_| "IP table poisoned".to_string())?;
    for n in 2..=254u8 {
        let [a, b, c] = POD_NETWORK;
        let ip = Ipv4Addr::new(a, b, c, n);
        if taken.contains(&n) {
            continue;
        }
        ensure_local_address(ip)?;
        if TcpListener::bind((ip, 8080)).is_ok() {
            taken.insert(n);
            return Ok(ip);
        }
    }
    Err("all 253 pod IPs are taken".into())
}

fn release_ip(ip: Ipv4Addr) {
    if let Ok(mut taken) = taken_ips().lock() {
        taken.remove(&ip.octets()[3]);
    }
}

/// A running local kubelet. Dropping it kills every process it started.
pub struct LocalKubelet {
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    pids: Pids,
    /// The configuration it runs with.
    pub config: RunnerConfig,
}

struct PodEntry {
    pod: watch::Sender<Pod>,
    stop: watch::Sender<Stop>,
}

impl LocalKubelet {
    /// Starts watching the node's pods with `client` (the node identity).
    pub fn start(client: Client, config: RunnerConfig) -> Self {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let pids = Pids::default();
        let task = tokio::spawn(run(client, config.clone(), pids.clone(), shutdown_rx));
        Self { shutdown, task: Some(task), pids, config }
    }

    /// Pid of the running process of pod `namespace/name`.
    pub fn pid(&self, namespace: &str, name: &str) -> Option<u32> {
        self.pids.lock().ok()?.get(&format!("{namespace}/{name}")).copied()
    }

    /// Stops every process (SIGTERM, SIGKILL after 5 s) and returns when all are gone.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LocalKubelet {
    fn drop(&mut self) {
        // Aborting drops the JoinSet of pod tasks, which drops each Child: kill_on_drop.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    client: Client,
    config: RunnerConfig,
    pids: Pids,
    mut shutdown: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let selector = format!("spec.nodeName={}", config.node);
    let mut events = watcher(pods, watcher::Config::default().fields(&selector)).boxed();
    let mut entries: HashMap<String, PodEntry> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut tasks = JoinSet::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(uid) = finished {
                    entries.remove(&uid);
                    done.insert(uid);
                }
                continue;
            }
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                on_pod(&client, &config, &pids, pod, &mut entries, &done, &mut tasks);
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some(entry) = pod.metadata.uid.as_ref().and_then(|uid| entries.get(uid)) {
                    let _ = entry.stop.send(Stop::Gone);
                }
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            None => break,
        }
    }
    for entry in entries.values() {
        let _ = entry.stop.send(Stop::Shutdown);
    }
    while tasks.join_next().await.is_some() {}
}

fn on_pod(
    client: &Client,
    config: &RunnerConfig,
    pids: &Pids,
    pod: Pod,
    entries: &mut HashMap<String, PodEntry>,
    done: &HashSet<String>,
    tasks: &mut JoinSet<String>,
) {
    let Some(uid) = pod.metadata.uid.clone() else { return };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let grace_seconds =
        pod.metadata.deletion_grace_period_seconds.and_then(|g| u64::try_from(g).ok()).unwrap_or(0);
    if let Some(entry) = entries.get(&uid) {
        if deleting {
            let _ = entry.stop.send(Stop::Deleted { grace_seconds });
        }
        let _ = entry.pod.send(pod);
        return;
    }
    if done.contains(&uid) {
        return;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ip = match allocate_ip() {
        Ok(ip) => ip,
        Err(why) => {
            tracing::warn!(pod = %name, "no pod IP ({why}); pod not started");
            return;
        }
    };
    let (pod_tx, pod_rx) = watch::channel(pod);
    let initial = if deleting { Stop::Deleted { grace_seconds } } else { Stop::No };
    let (stop_tx, stop_rx) = watch::channel(initial);
    let task = PodTask {
        pods: Api::namespaced(client.clone(), &namespace),
        accounts: Api::<ServiceAccount>::namespaced(client.clone(), &namespace),
        pod: pod_rx,
        stop: stop_rx,
        ip,
        dir: config.state_dir.join(format!("{namespace}_{name}_{uid}")),
        worker_bin: config.worker_bin.clone(),
        volumes: config.volumes.clone(),
        pids: pids.clone(),
    };
    tracing::info!(pod = %name, %namespace, %ip, "taking pod");
    let lease = IpLease(ip);
    let key = uid.clone();
    tasks.spawn(async move {
        task.run().await;
        drop(lease);
        key
    });
    entries.insert(uid, PodEntry { pod: pod_tx, stop: stop_tx });
}

/// Gives the IP back when the pod's task ends or is aborted.
struct IpLease(Ipv4Addr);

impl Drop for IpLease {
    fn drop(&mut self) {
        release_ip(self.0);
    }
}
