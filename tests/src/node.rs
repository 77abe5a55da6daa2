//! The real node `rbee-node-0` of tests/testenv (kubelet, containerd, kube-proxy, cluster
//! DNS) and the images tests/images/build loads into it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::{eventually, kubectl, kubectl_with_stdin, repo_root, testenv};

/// The node's name.
pub const NODE: &str = "rbee-node-0";
/// The worker image tests/images/build makes from Dockerfile.worker (VARIANT=cpu).
pub const WORKER_IMAGE: &str = "localhost/llm-worker-rbee:dev-cpu";
/// The operator image tests/images/build makes from operator/Dockerfile.
pub const OPERATOR_IMAGE: &str = "localhost/rbee-operator:dev";
/// busybox (sh, wget, nslookup), built by testenv for looking at the cluster from a pod.
pub const TOOLBOX_IMAGE: &str = "localhost/rbee-toolbox:dev";
/// The GGUF fetch-model provides.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Fails, saying why, when testenv has no node (the host cannot run containers, or testenv
/// was started without it): what `testenv up` recorded in its state directory.
pub fn require_node() -> anyhow::Result<()> {
    let env = testenv()?;
    let state = env.kubeconfig.parent().context("kubeconfig has no directory")?;
    match std::fs::read_to_string(state.join("node-unavailable")) {
        Ok(reason) => {
            bail!("this test needs the node {NODE}, and testenv has none: {}", reason.trim())
        }
        Err(_) => Ok(()),
    }
}

/// The directory holding the fetched GGUF (fetch-model runs once per test process).
pub fn model_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = std::process::Command::new(repo_root().join("worker-image/scripts/fetch-model"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("running fetch-model: {e}"))?;
        if !out.status.success() {
            return Err(format!("fetch-model failed: {}", out.status));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        path.parent()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} has no directory", path.display()))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// A local PersistentVolume on the node holding `dir`, bound to the claim `claim` in
/// `namespace`, read-only many: how the model reaches worker pods.
pub fn apply_model_volume(
    namespace: &str,
    pv: &str,
    claim: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let manifest = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "local": {"path": dir},
                  "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE]}]}]}},
                  "claimRef": {"namespace": namespace, "name": claim}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]});
    let out = kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest.to_string()))?;
    if !out.status.success() {
        bail!("applying the model PV/PVC: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Why the pod's first container waits, when the kubelet says it cannot run it at all
/// (a missing image, a bad configuration): no point in waiting longer.
fn hopeless(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|cs| {
        let waiting = cs.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        let fatal = matches!(
            reason,
            "ErrImageNeverPull" | "CreateContainerConfigError" | "CreateContainerError"
        );
        let hint = if reason == "ErrImageNeverPull" {
            " (build and load the images: tests/images/build)"
        } else {
            ""
        };
        fatal.then(|| {
            format!("{}: {reason}: {}{hint}", cs.name, waiting.message.as_deref().unwrap_or(""))
        })
    })
}

/// Waits until `name` reaches `phase` (or, for "Ready", its Ready condition), failing at
/// once when the kubelet reports it cannot start the container.
pub async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    phase: &str,
    timeout: Duration,
) -> anyhow::Result<Pod> {
    eventually(timeout, &format!("pod {name} {phase}"), || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        if let Some(why) = hopeless(&pod) {
            return Ok(Err(why));
        }
        let status = pod.status.clone().unwrap_or_default();
        let reached = match phase {
            "Ready" => {
                status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
            }
            _ => status.phase.as_deref() == Some(phase),
        };
        if reached {
            Ok(Ok(pod))
        } else {
            Err(format!("phase {:?}, containers {:?}", status.phase, status.container_statuses))
        }
    })
    .await?
    .map_err(|why| anyhow::anyhow!("pod {name} cannot start: {why}"))
}

/// `kubectl logs` of a pod's container (through the API server and the kubelet).
pub fn pod_logs(namespace: &str, pod: &str) -> anyhow::Result<String> {
    let out = kubectl(&["logs", "-n", namespace, pod])?;
    if !out.status.success() {
        bail!("kubectl logs {pod}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
